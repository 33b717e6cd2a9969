"""infra/template.yaml: valid, translated by SAM as intended, secure by checkov's standards.

cfn-lint alone misses errors inside AWS::Serverless resources (a Ref to nothing, a bad event),
so the template is also translated with aws-sam-translator, as CloudFormation's SAM transform
does, and the result linted. The translation is then checked for what the design relies on:
the authorizer on exactly the mutating routes, roles that grant only what each function needs,
the queue's retry settings. checkov runs from its own virtualenv (see checkov_path).
"""

from __future__ import annotations

import copy
import hashlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import boto3
import pytest
from cfnlint.api import lint
from samtranslator.parser.parser import Parser
from samtranslator.translator.translator import Translator
from support.demo import REPO

from imgsearch.config import Settings
from imgsearch.storage.aws_resources import TEMPLATE_PATH, load_template

pytestmark = pytest.mark.xdist_group("template")

CHECKOV_REQUIREMENTS = REPO / "tests" / "checkov-requirements.txt"
CHECKOV_VENV = REPO / ".venv" / "tools" / "checkov"
MUTATING_ROUTES = {
    ("post", "/api/images"),
    ("delete", "/api/images/{id}"),
    ("post", "/api/uploads"),
}
# The owner's view and controls of what votes taught.
OWNER_ROUTES = {
    ("get", "/api/terms/{term}"),
    ("delete", "/api/terms/{term}"),
    ("delete", "/api/clients/{client}/votes"),
}


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
        (method, path)
        for path, operations in body["paths"].items()
        for method, operation in operations.items()
        if operation.get("security")
    }
    assert guarded == MUTATING_ROUTES | OWNER_ROUTES
    authorizer = body["components"]["securitySchemes"]["ApiKeyAuthorizer"]
    settings = authorizer["x-amazon-apigateway-authorizer"]
    assert settings["identitySource"] == ["$request.header.X-API-Key"]
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


# What each function may do, as (action, resource): resources by logical id, the bucket's
# objects by key pattern ("s3:index/*"), the bucket itself as "s3:bucket".
EXPECTED_GRANTS = {
    "EmbedFunction": _grant(LOGS, "EmbedLogs")
    | _grant({"sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:GetQueueAttributes"}, "ImageQueue")
    | _grant(TABLE_WRITES, "CatalogTable")
    | {("s3:GetObject", "s3:*"), ("s3:ListBucket", "s3:bucket")}
    | _grant(OBJECT_WRITES, *DERIVED),
    "ChangeFunction": _grant(LOGS, "ChangeLogs")
    | _grant(TABLE_WRITES, "CatalogTable")
    | {("s3:GetObject", "s3:*"), ("s3:ListBucket", "s3:bucket")}
    | _grant(OBJECT_WRITES, "s3:images/*", *DERIVED),
    "SearchFunction": _grant(LOGS, "SearchLogs")
    | _grant(TABLE_READS, "CatalogTable", "FeedbackTable")
    | _grant({"s3:GetObject"}, "s3:images/*", *DERIVED)
    | {("s3:ListBucket", "s3:bucket")},
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
    """checkov, in a virtualenv of its own: it pins boto3, packaging and networkx to versions
    this project cannot use. Made on first use from the pinned requirements (about a minute),
    then reused while they are unchanged."""
    requirements = CHECKOV_REQUIREMENTS.read_bytes()
    marker = CHECKOV_VENV / ".requirements-sha256"
    digest = hashlib.sha256(requirements).hexdigest()
    if not (marker.is_file() and marker.read_text() == digest):
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(CHECKOV_VENV)], check=True)
        pip = [str(CHECKOV_VENV / "bin" / "python"), "-m", "pip", "install", "--quiet"]
        install = [*pip, "--disable-pip-version-check", "-r", str(CHECKOV_REQUIREMENTS)]
        subprocess.run(install, check=True)
        marker.write_text(digest)
    return CHECKOV_VENV / "bin" / "checkov"


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
