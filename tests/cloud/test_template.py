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
from support.openapi import API_KEY_HEADER, routes_needing_the_key, unnamed

from imgsearch.config import Settings
from imgsearch.storage.aws_resources import TEMPLATE_PATH, load_template

pytestmark = pytest.mark.xdist_group("template")

CHECKOV_REQUIREMENTS = REPO / "tests" / "checkov-requirements.txt"
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


def _statements(translated: dict[str, Any], role: str) -> list[dict[str, Any]]:
    properties = translated["Resources"][role]["Properties"]
    return [
        statement
        for policy in properties.get("Policies", [])
        for statement in policy["PolicyDocument"]["Statement"]
    ]


def _resources(statement: dict[str, Any]) -> list[str]:
    resources = statement["Resource"]
    resources = resources if isinstance(resources, list) else [resources]
    return [json.dumps(resource) for resource in resources]


def _actions(statement: dict[str, Any]) -> set[str]:
    actions = statement["Action"]
    return set(actions if isinstance(actions, list) else [actions])


def test_each_role_grants_only_what_its_function_needs(translated) -> None:
    def s3_writes(role: str) -> list[str]:
        return [
            resource
            for statement in _statements(translated, role)
            if _actions(statement) & {"s3:PutObject", "s3:DeleteObject"}
            for resource in _resources(statement)
        ]

    # Embed writes what it derives; the originals under images/ are never its to change.
    assert s3_writes("EmbedFunctionRole")
    assert not any("/images/" in resource for resource in s3_writes("EmbedFunctionRole"))
    # Search writes originals (uploads through the API, presigned forms) and derived files.
    assert any("/images/*" in resource for resource in s3_writes("SearchFunctionRole"))
    # Feedback and the authorizer touch no objects at all.
    for role in ("FeedbackFunctionRole", "AuthorizerFunctionRole"):
        actions = set().union(*(_actions(s) for s in _statements(translated, role)))
        assert not any(action.startswith("s3:") for action in actions), role
    authorizer = _statements(translated, "AuthorizerFunctionRole")
    assert [_actions(s) for s in authorizer] == [{"ssm:GetParameter"}]
    # No statement anywhere grants every action or every resource.
    for name, resource in translated["Resources"].items():
        if resource["Type"] != "AWS::IAM::Role":
            continue
        for statement in _statements(translated, name):
            assert not any(action.endswith(":*") or action == "*" for action in _actions(statement))
            assert statement["Resource"] != "*", name


def test_the_queue_retries_a_bounded_number_of_times_within_the_functions_time() -> None:
    resources = load_template()["Resources"]
    queue = resources["ImageQueue"]["Properties"]
    embed = resources["EmbedFunction"]["Properties"]
    # Lambda's advice for SQS sources: visibility at least six times the function's timeout.
    assert queue["VisibilityTimeout"] >= 6 * embed["Timeout"]
    assert queue["RedrivePolicy"]["maxReceiveCount"] == {"Ref": "MaxReceiveCount"}
    variables = load_template()["Globals"]["Function"]["Environment"]["Variables"]
    assert variables["IMGSEARCH_MAX_RECEIVE_COUNT"] == {"Ref": "MaxReceiveCount"}
    # Run without the template (the handler's own tests), the function counts as deployed.
    default = load_template()["Parameters"]["MaxReceiveCount"]["Default"]
    assert Settings.model_fields["max_receive_count"].default == default
    source = embed["Events"]["ImageEvents"]["Properties"]
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

    def vector_actions(role: str) -> set[str]:
        found = set()
        for statement in _statements(translated, role):
            actions = {a for a in _actions(statement) if a.startswith("s3vectors:")}
            if actions:
                assert all("imgsearch-vectors-" in r for r in _resources(statement)), role
                found |= actions
        return found

    needed = {
        "s3vectors:QueryVectors",
        "s3vectors:GetVectors",
        "s3vectors:ListVectors",
        "s3vectors:PutVectors",
        "s3vectors:DeleteVectors",
    }
    # Embed and search (uploads and deletions through the API) build the index.
    assert vector_actions("EmbedFunctionRole") == vector_actions("SearchFunctionRole") == needed
    assert not vector_actions("FeedbackFunctionRole")
    assert not vector_actions("AuthorizerFunctionRole")


def model_classes(embedder) -> int:
    """How many classes the model tells probabilities of."""
    from PIL import Image

    return len(embedder.embed(Image.new("RGB", (64, 64))).probabilities)
