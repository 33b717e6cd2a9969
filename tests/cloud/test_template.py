"""infra/template.yaml: valid, translated by SAM as intended, secure by checkov's standards.

cfn-lint alone misses errors inside AWS::Serverless resources (a Ref to nothing, a bad event),
so the template is also translated with aws-sam-translator, as CloudFormation's SAM transform
does, and the result linted. The translation is then checked for what the design relies on:
the authorizer on exactly the mutating routes, roles that grant only what each function needs,
the queue's retry settings. checkov runs from its own virtualenv (see checkov_path).
"""

from __future__ import annotations

import copy
import json
import subprocess
from pathlib import Path
from typing import Any

import boto3
import pytest
from cfnlint.api import lint
from samtranslator.parser.parser import Parser
from samtranslator.translator.translator import Translator
from support.demo import REPO
from support.openapi import API_KEY_HEADER, routes_needing_the_key, unnamed

from imgsearch.config import Settings
from imgsearch.storage.aws_resources import TEMPLATE_PATH, load_template

CHECKOV_VENV = REPO / ".venv" / "tools" / "checkov"


def translate(template: dict[str, Any]) -> dict[str, Any]:
    """The CloudFormation template SAM's transform makes of `template` (region us-east-1)."""
    template = copy.deepcopy(template)
    for resource in template["Resources"].values():
        properties = resource.get("Properties", {})
        for name in ("CodeUri", "ContentUri"):  # `sam deploy` uploads these and names them
            if name in properties:
                properties[name] = f"s3://deployment-bucket/{Path(properties[name]).name}.zip"
    session = boto3.session.Session(region_name="us-east-1")
    translator = Translator({}, Parser(), boto_session=session)
    return translator.translate(template, parameter_values={"AWS::AccountId": "123456789012"})


@pytest.fixture(scope="module")
def translated() -> dict[str, Any]:
    return translate(load_template())


def test_the_template_lints_clean() -> None:
    matches = lint(TEMPLATE_PATH.read_text())
    assert not matches, "\n".join(str(match) for match in matches)


def test_the_sam_translation_lints_clean(translated: dict[str, Any]) -> None:
    matches = lint(json.dumps(translated))
    assert not matches, "\n".join(str(match) for match in matches)


def test_the_linters_would_catch_a_broken_reference() -> None:
    broken = copy.deepcopy(load_template())
    broken["Resources"]["FeedbackFunction"]["Properties"]["Layers"] = [{"Ref": "NoSuchLayer"}]
    assert lint(json.dumps(translate(broken)))


def test_only_the_routes_that_change_the_collection_or_its_votes_need_the_key(translated) -> None:
    body = translated["Resources"]["Api"]["Properties"]["Body"]
    guarded = {
        (method, unnamed(path))
        for path, operations in body["paths"].items()
        for method, operation in operations.items()
        if operation.get("security")
    }
    # Exactly the routes the app itself guards: those that change the collection, and the
    # owner's view and controls of what votes taught.
    assert guarded == routes_needing_the_key() and guarded
    authorizer = body["components"]["securitySchemes"]["ApiKeyAuthorizer"]
    settings = authorizer["x-amazon-apigateway-authorizer"]
    assert settings["identitySource"] == [f"$request.header.{API_KEY_HEADER}"]
    assert settings["enableSimpleResponses"] is True
    # API Gateway may invoke the authorizer (without this, every guarded request fails).
    permission = translated["Resources"]["ApiApiKeyAuthorizerAuthorizerPermission"]
    assert permission["Properties"]["Principal"] == "apigateway.amazonaws.com"
    # CORS names the configured origins, as a list CloudFormation resolves at deploy time.
    assert body["x-amazon-apigateway-cors"]["allowOrigins"] == {"Ref": "AllowedOrigins"}


LOGS = {"logs:CreateLogStream", "logs:PutLogEvents"}
TABLE_READS = {"dynamodb:GetItem", "dynamodb:BatchGetItem", "dynamodb:Query"}
TABLE_WRITES = TABLE_READS | {
    "dynamodb:PutItem",
    "dynamodb:UpdateItem",
    "dynamodb:DeleteItem",
    "dynamodb:BatchWriteItem",
}
OBJECT_WRITES = {"s3:PutObject", "s3:DeleteObject"}
DERIVED = ("s3:index/*", "s3:embeddings/*", "s3:thumbnails/*")


def _grant(actions: set[str], *resources: str) -> set[tuple[str, str]]:
    return {(action, resource) for action in actions for resource in resources}


VECTOR_READS = {"s3vectors:QueryVectors", "s3vectors:GetVectors", "s3vectors:ListVectors"}
VECTOR_WRITES = VECTOR_READS | {"s3vectors:PutVectors", "s3vectors:DeleteVectors"}
VECTOR_INDEXES = "s3vectors:index/*"  # the stack's vector bucket's indexes (VectorEngine)

# What each function may do, as (action, resource): resources by logical id, the bucket's
# objects by key pattern ("s3:index/*"), the bucket itself as "s3:bucket".
EXPECTED_GRANTS = {
    "EmbedFunction": _grant(LOGS, "EmbedLogs")
    | _grant({"sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:GetQueueAttributes"}, "ImageQueue")
    | _grant(TABLE_WRITES, "CatalogTable")
    | {("s3:GetObject", "s3:*"), ("s3:ListBucket", "s3:bucket")}
    | _grant(OBJECT_WRITES, *DERIVED)
    | _grant(VECTOR_WRITES, VECTOR_INDEXES),
    "ChangeFunction": _grant(LOGS, "ChangeLogs")
    | _grant(TABLE_WRITES, "CatalogTable")
    | {("s3:GetObject", "s3:*"), ("s3:ListBucket", "s3:bucket")}
    | _grant(OBJECT_WRITES, "s3:images/*", *DERIVED)
    | _grant(VECTOR_WRITES, VECTOR_INDEXES),
    "SearchFunction": _grant(LOGS, "SearchLogs")
    | _grant(TABLE_READS, "CatalogTable", "FeedbackTable")
    | _grant({"s3:GetObject"}, "s3:images/*", *DERIVED)
    | {("s3:ListBucket", "s3:bucket")}
    | _grant(VECTOR_READS, VECTOR_INDEXES),
    "FeedbackFunction": _grant(LOGS, "FeedbackLogs")
    | _grant(TABLE_WRITES, "FeedbackTable")
    | _grant({"dynamodb:GetItem", "dynamodb:BatchGetItem"}, "CatalogTable"),
    "AuthorizerFunction": _grant(LOGS, "AuthorizerLogs")
    | {("ssm:GetParameter", "ApiKeyParameterName")},
}


def _resource_name(resource: Any) -> str:
    """A statement's resource as EXPECTED_GRANTS names it."""
    if isinstance(resource, dict) and "Fn::GetAtt" in resource:
        name, attribute = resource["Fn::GetAtt"]
        assert attribute == "Arn"
        return str(name)
    if isinstance(resource, dict) and "Fn::Sub" in resource:
        pattern = resource["Fn::Sub"]
        pattern = pattern[0] if isinstance(pattern, list) else pattern
        if pattern.startswith("arn:${AWS::Partition}:s3:::imgsearch-${StackUuid}"):
            key = pattern.removeprefix("arn:${AWS::Partition}:s3:::imgsearch-${StackUuid}")
            return "s3:" + key.removeprefix("/") if key else "s3:bucket"
        vectors = "arn:${AWS::Partition}:s3vectors:${AWS::Region}:${AWS::AccountId}:bucket/"
        if pattern == vectors + "imgsearch-vectors-${StackUuid}/index/*":
            return VECTOR_INDEXES
        if pattern.endswith(":parameter${ApiKeyParameterName}"):
            return "ApiKeyParameterName"
    return json.dumps(resource)  # anything else ("*" included) matches no expected grant


def _listed(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def role_grants(translated: dict[str, Any], function: str) -> set[tuple[str, str]]:
    """Everything the role of `function` (as deployed: the SAM translation) allows."""
    properties = translated["Resources"][function]["Properties"]
    role = translated["Resources"][properties["Role"]["Fn::GetAtt"][0]]
    assert role["Type"] == "AWS::IAM::Role"
    # Managed policies (SAM's included) would grant what no statement here shows.
    assert not role["Properties"].get("ManagedPolicyArns"), function
    assert not role["Properties"].get("PermissionsBoundary"), function
    grants = set()
    for policy in role["Properties"].get("Policies", []):
        for statement in policy["PolicyDocument"]["Statement"]:
            assert statement["Effect"] == "Allow" and "NotAction" not in statement
            assert "NotResource" not in statement
            for action in _listed(statement["Action"]):
                for resource in _listed(statement["Resource"]):
                    grants.add((action, _resource_name(resource)))
    return grants


def test_each_role_grants_only_what_its_function_needs(translated) -> None:
    functions = {
        name
        for name, resource in translated["Resources"].items()
        if resource["Type"] == "AWS::Lambda::Function"
    }
    assert functions == set(EXPECTED_GRANTS)
    for function, expected in EXPECTED_GRANTS.items():
        assert role_grants(translated, function) == expected, function
    # No role beyond the functions' own (SAM makes one per function without `Role`).
    roles = [r for r in translated["Resources"].values() if r["Type"] == "AWS::IAM::Role"]
    assert len(roles) == len(EXPECTED_GRANTS)


def test_the_public_search_function_cannot_change_anything(translated) -> None:
    """It decodes anyone's photos: it must not be able to delete originals, write the index
    or touch the votes."""
    grants = role_grants(translated, "SearchFunction")
    actions = {action for action, _ in grants}
    assert not actions & (OBJECT_WRITES | (TABLE_WRITES - TABLE_READS))
    # The feedback function touches no object; it reads one catalog item per vote.
    feedback = role_grants(translated, "FeedbackFunction")
    assert not any(action.startswith("s3:") for action, _ in feedback)
    assert {a for a, r in feedback if r == "CatalogTable"} <= TABLE_READS
    # The embed function writes what it derives, never the uploaders' originals.
    embed = role_grants(translated, "EmbedFunction")
    assert not {r for a, r in embed if a in OBJECT_WRITES} & {"s3:images/*", "s3:*"}


def test_the_queue_retries_a_bounded_number_of_times_within_the_functions_time() -> None:
    resources = load_template()["Resources"]
    queue = resources["ImageQueue"]["Properties"]
    embed = resources["EmbedFunction"]["Properties"]
    source = embed["Events"]["ImageEvents"]["Properties"]
    # Lambda's advice for SQS sources: visibility at least six times the function's timeout
    # (plus the batching window); and a failed message must come back in minutes, not in
    # half an hour, so the timeout is short (the index writer works within a time budget).
    window = source["MaximumBatchingWindowInSeconds"]
    assert queue["VisibilityTimeout"] >= 6 * embed["Timeout"] + window
    assert queue["VisibilityTimeout"] <= 10 * 60
    assert queue["RedrivePolicy"]["maxReceiveCount"] == {"Ref": "MaxReceiveCount"}
    variables = load_template()["Globals"]["Function"]["Environment"]["Variables"]
    assert variables["IMGSEARCH_MAX_RECEIVE_COUNT"] == {"Ref": "MaxReceiveCount"}
    # Run without the template (the handler's own tests), the function counts as deployed.
    default = load_template()["Parameters"]["MaxReceiveCount"]["Default"]
    assert Settings.model_fields["max_receive_count"].default == default
    assert source["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
    assert "MaximumConcurrency" in source["ScalingConfig"]
    # API Gateway waits 30 s for an integration.
    assert resources["SearchFunction"]["Properties"]["Timeout"] < 30
    assert resources["FeedbackFunction"]["Properties"]["Timeout"] < 30


def test_the_index_writer_is_bounded_and_its_stranded_work_drained_on_a_schedule() -> None:
    embed = load_template()["Resources"]["EmbedFunction"]["Properties"]
    # Each build stops well inside the function's timeout (and within half of what is left
    # of the invocation: cloud/handlers.build_budget), leaving the rest queued...
    budget = float(embed["Environment"]["Variables"]["IMGSEARCH_INDEX_BUILD_SECONDS"])
    assert budget <= embed["Timeout"] / 2
    # ...which the schedule applies within minutes when no image arrives.
    schedule = embed["Events"]["DrainIndexQueue"]
    assert schedule["Type"] == "Schedule"
    assert schedule["Properties"]["Schedule"] == "rate(5 minutes)"


def test_the_page_may_reach_the_bucket_it_uploads_into() -> None:
    """The page's Content-Security-Policy names the bucket the functions use, by the same
    derived name (its images are presigned GETs, its uploads presigned POSTs)."""
    variables = load_template()["Globals"]["Function"]["Environment"]["Variables"]
    bucket, bucket_names = variables["IMGSEARCH_BUCKET"]["Fn::Sub"]
    origins, origin_names = variables["IMGSEARCH_PAGE_ORIGINS"]["Fn::Sub"]
    assert origin_names == bucket_names
    parsed = json.loads(origins)  # a JSON list, as the setting reads it
    assert len(parsed) == 2 and all(o.startswith(f"https://{bucket}.s3.") for o in parsed)


@pytest.fixture(scope="session")
def checkov_path() -> Path:
    """checkov, in a virtualenv of its own (scripts/install-checkov.sh: made on first use, about
    a minute, then reused while its requirements are unchanged; `make test` makes it first)."""
    subprocess.run([str(REPO / "scripts" / "install-checkov.sh")], check=True)
    return CHECKOV_VENV / "bin" / "checkov"


@pytest.mark.slow  # checkov in a virtualenv of its own: half a minute
def test_checkov_finds_nothing_unjustified(checkov_path: Path) -> None:
    completed = subprocess.run(
        [
            str(checkov_path),
            "--skip-download",
            "--framework",
            "cloudformation",
            "--output",
            "json",
            "--file",
            str(TEMPLATE_PATH),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    report = json.loads(completed.stdout)
    results = report["results"]
    failed = [
        f"{check['check_id']} {check['resource']}: {check['check_name']}"
        for check in results.get("failed_checks", [])
    ]
    assert not failed, "\n".join(failed)
    assert report["summary"]["passed"] > 0 and report["summary"]["parsing_errors"] == 0
    # Every skip in the template says why.
    for check in results.get("skipped_checks", []):
        assert len(check["check_result"].get("suppress_comment", "")) > 20, check["check_id"]


def _alarms(resources: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        name: resource["Properties"]
        for name, resource in resources.items()
        if resource["Type"] == "AWS::CloudWatch::Alarm"
    }


def test_alarms_watch_the_queues_every_function_and_the_index_lag() -> None:
    resources = load_template()["Resources"]
    alarms = _alarms(resources)
    watched = {
        (alarm["Namespace"], alarm["MetricName"], json.dumps(alarm["Dimensions"]))
        for alarm in alarms.values()
    }

    def dimension(name: str, value: Any) -> str:
        return json.dumps([{"Name": name, "Value": value}])

    dead_letters = {"Fn::GetAtt": ["ImageDeadLetterQueue", "QueueName"]}
    queue = {"Fn::GetAtt": ["ImageQueue", "QueueName"]}
    assert {
        ("AWS/SQS", "ApproximateNumberOfMessagesVisible", dimension("QueueName", dead_letters)),
        ("AWS/SQS", "ApproximateAgeOfOldestMessage", dimension("QueueName", queue)),
        # The index lag, as the embed function emits it (cloud/metrics.py: EMF, its service).
        ("imgsearch", "PendingImages", dimension("service", "imgsearch-embed")),
    } <= watched
    functions = [n for n, r in resources.items() if r["Type"] == "AWS::Serverless::Function"]
    for function in functions:
        for metric in ("Errors", "Throttles"):
            assert ("AWS/Lambda", metric, dimension("FunctionName", {"Ref": function})) in watched
        service = resources[function]["Properties"]["Environment"]["Variables"]
        assert (
            service["POWERTOOLS_SERVICE_NAME"]
            == f"imgsearch-{function.removesuffix('Function').lower()}"
        )
    # One dead letter is enough to hear of it; every alarm (and its end) reaches the topic.
    dead_letter_alarm = next(
        a for a in alarms.values() if a["Dimensions"][0]["Value"] == dead_letters
    )
    assert dead_letter_alarm["Threshold"] == 1
    assert dead_letter_alarm["ComparisonOperator"] == "GreaterThanOrEqualToThreshold"
    for alarm in alarms.values():
        assert alarm["AlarmActions"] == [{"Ref": "AlarmTopic"}] == alarm["OKActions"]
    subscription = resources["AlarmEmailSubscription"]
    assert subscription["Condition"] == "HasAlarmEmail"


def test_the_dashboard_shows_what_the_functions_measure() -> None:
    """Its body is a Fn::Sub of JSON; with the placeholders filled it must parse, and name
    the metrics cloud/metrics.py emits."""
    import re

    from imgsearch.cloud import metrics

    resources = load_template()["Resources"]
    body = resources["Dashboard"]["Properties"]["DashboardBody"]["Fn::Sub"]
    names = set(re.findall(r"\$\{([^}]+)\}", body))
    for name in names:
        assert name.split(".")[0] in resources or name.startswith("AWS::"), name
    widgets = json.loads(re.sub(r"\$\{[^}]+\}", "x", body))["widgets"]
    shown = {
        (metric[0], metric[1]) for widget in widgets for metric in widget["properties"]["metrics"]
    }
    source = Path(metrics.__file__).read_text()
    for name in ("ImagesIndexed", "ImagesRefused", "BuildSeconds", "PendingImages", "QueryLatency"):
        assert ("imgsearch", name) in shown and f'"{name}"' in source, name
    kinds = {
        metric[metric.index("kind") + 1]
        for widget in widgets
        for metric in widget["properties"]["metrics"]
        if "kind" in metric
    }
    assert kinds == {"keyword", "learned", "similar", "reverse"}


def test_the_static_page_s_hashed_files_are_cached_a_year_and_the_others_are_not() -> None:
    """Every file of the static build (api/page.py) named by its content's hash falls in a
    behaviour that edges and browsers keep a year; index.html, config.js and the rest do not
    (a deploy changes them under the same name)."""
    from fnmatch import fnmatchcase

    from imgsearch.api.page import IMMUTABLE, build_page

    resources = load_template()["Resources"]
    config = resources["Distribution"]["Properties"]["DistributionConfig"]
    built = build_page(REPO / "web", inline=False, config_js="")
    hashed = {path for path, asset in built.files.items() if asset.cache_control == IMMUTABLE}
    assert hashed and "index.html" not in hashed
    for path in built.files:
        matching = [
            b for b in config["CacheBehaviors"] if fnmatchcase(f"/{path}", b["PathPattern"])
        ]
        if path not in hashed:
            assert not matching or matching[0]["TargetOriginId"] != "page", path
            continue
        assert matching and matching[0]["TargetOriginId"] == "page", path
        policy = resources[matching[0]["CachePolicyId"]["Ref"]]["Properties"]
        assert policy["CachePolicyConfig"]["MinTTL"] == 31536000, path
        headers = resources[matching[0]["ResponseHeadersPolicyId"]["Ref"]]["Properties"]
        (cache_control,) = headers["ResponseHeadersPolicyConfig"]["CustomHeadersConfig"]["Items"]
        assert cache_control["Value"] == IMMUTABLE, path


def test_cloudfront_serves_the_page_and_thumbnails_from_the_private_bucket_and_the_api() -> None:
    resources = load_template()["Resources"]
    config = resources["Distribution"]["Properties"]["DistributionConfig"]
    origins = {origin["Id"]: origin for origin in config["Origins"]}
    behaviours = {b["PathPattern"]: b for b in config["CacheBehaviors"]}
    # The bucket is read through the origin access control, never as a public website.
    for name in ("page", "bucket"):
        assert origins[name]["OriginAccessControlId"] == {
            "Fn::GetAtt": ["BucketOriginAccessControl", "Id"]
        }
        assert origins[name]["S3OriginConfig"] == {"OriginAccessIdentity": ""}
    assert origins["page"]["OriginPath"] == "/web" and config["DefaultRootObject"] == "index.html"
    assert config["DefaultCacheBehavior"]["TargetOriginId"] == "page"
    # /api/* is the HTTP API, uncached, every method, every header but Host.
    api = behaviours["/api/*"]
    assert api["TargetOriginId"] == "api" and "Api" in json.dumps(origins["api"]["DomainName"])
    assert {"POST", "DELETE", "OPTIONS"} <= set(api["AllowedMethods"])
    assert api["CachePolicyId"] == "4135ea2d-6df8-44a3-9df3-4b5a84be39ad"  # CachingDisabled
    assert api["OriginRequestPolicyId"] == "b689b0a8-53d0-40ab-baf2-68738e2966ac"
    # Thumbnails: where the functions say they are, a year in browsers, a day at the edges
    # (a removed photo's thumbnail leaves the edges within a day).
    variables = load_template()["Globals"]["Function"]["Environment"]["Variables"]
    base = variables["IMGSEARCH_THUMBNAIL_BASE_URL"]
    thumbnails = behaviours[f"{base}/*"]
    assert thumbnails["TargetOriginId"] == "bucket" and base == "/thumbnails"  # the key prefix
    policy = resources[thumbnails["CachePolicyId"]["Ref"]]["Properties"]["CachePolicyConfig"]
    assert policy["DefaultTTL"] == policy["MaxTTL"] == 86400
    headers = resources[thumbnails["ResponseHeadersPolicyId"]["Ref"]]["Properties"]
    (cache_control,) = headers["ResponseHeadersPolicyConfig"]["CustomHeadersConfig"]["Items"]
    assert cache_control["Value"] == "public, max-age=31536000, immutable"
    # The bucket lets this distribution read the page and the thumbnails, and nothing else.
    statements = resources["ImageBucketPolicy"]["Properties"]["PolicyDocument"]["Statement"]
    cloudfront = [
        s for s in statements if s.get("Principal") == {"Service": "cloudfront.amazonaws.com"}
    ]
    assert len(cloudfront) == 1 and cloudfront[0]["Action"] == "s3:GetObject"
    assert [r["Fn::Sub"] for r in cloudfront[0]["Resource"]] == [
        "${ImageBucket.Arn}/web/*",
        "${ImageBucket.Arn}/thumbnails/*",
    ]
    assert (
        "${Distribution}" in cloudfront[0]["Condition"]["StringEquals"]["AWS:SourceArn"]["Fn::Sub"]
    )
    # The page's own origin may POST presigned uploads into the bucket.
    cors = resources["ImageBucket"]["Properties"]["CorsConfiguration"]["CorsRules"][0]
    joined = cors["AllowedOrigins"]["Fn::Split"][1]["Fn::Join"][1]
    assert {"Fn::Sub": "https://${Distribution.DomainName}"} in joined


@pytest.mark.model  # the indexes' dimensions are the real model's
def test_the_vector_indexes_fit_the_model_and_only_its_users_may_query_them(
    translated, embedder
) -> None:
    template = load_template()
    assert template["Parameters"]["VectorEngine"]["AllowedValues"] == ["annoy", "s3vectors"]
    assert template["Parameters"]["VectorEngine"]["Default"] == Settings().vector_engine
    resources = template["Resources"]
    features, classes = resources["VectorIndex"], resources["ClassVectorIndex"]
    environment = template["Globals"]["Function"]["Environment"]["Variables"]
    assert features["Properties"]["IndexName"] == environment["IMGSEARCH_VECTOR_INDEX"]
    assert classes["Properties"]["IndexName"] == f"{environment['IMGSEARCH_VECTOR_INDEX']}-classes"
    # Features of the model; its 1000 class probabilities and the component that makes each
    # row a unit vector (index/s3vectors.py).
    assert features["Properties"]["Dimension"] == embedder.feature_dim
    assert classes["Properties"]["Dimension"] == model_classes(embedder) + 1
    for resource in (features, classes, resources["VectorBucket"]):
        assert resource["Condition"] == "UseS3Vectors"
        assert resource["DeletionPolicy"] == "Retain"

    def vector_actions(function: str) -> set[str]:
        grants = role_grants(translated, function)
        return {action for action, resource in grants if resource == VECTOR_INDEXES}

    # Embed and change (uploads and deletions through the API) build the index; search only
    # reads it; the others never touch it.
    assert vector_actions("EmbedFunction") == vector_actions("ChangeFunction") == VECTOR_WRITES
    assert vector_actions("SearchFunction") == VECTOR_READS
    assert not vector_actions("FeedbackFunction") and not vector_actions("AuthorizerFunction")


def model_classes(embedder) -> int:
    """How many classes the model tells probabilities of."""
    from PIL import Image

    return len(embedder.embed(Image.new("RGB", (64, 64))).probabilities)
