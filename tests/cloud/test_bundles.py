"""The Lambda bundles as they get deployed: built here, measured, and run.

The test builds them (layers/build.py; Python layers are reused while their requirements,
constraints.txt and the build script are unchanged: `make test` installs them before the tests,
a minute of pip the first time, so the build here takes seconds and still reinstalls a layer
whose inputs changed), so it always checks what the current code and pins produce. Then:
- each function's code plus the layers the template gives it stays within Lambda's limit;
- every binary is a manylinux build for Lambda's python3.12 on x86_64;
- every handler runs in a fresh python3.12 that sees only its code and layers (as in Lambda),
  against a moto server, on events like AWS's: an upload gets embedded, searched, voted on,
  and the authorizer checks the key; the feedback function never imports TFLite or Annoy.
"""

from __future__ import annotations

import fcntl
import importlib.util
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from types import ModuleType

import boto3
import pytest
from moto.server import ThreadedMotoServer
from support.aws_resources import (
    FAKE_CREDENTIALS,
    configure_notifications,
    create_queues,
    function_environment,
)
from support.demo import REPO, demo_image
from support.dynamodb import install_cheap_transactions
from support.lambda_events import (
    API_HOST,
    QueuePoller,
    authorizer_event,
    http_event,
    route_for,
    scheduled_event,
)
from support.openapi import API_KEY_HEADER

from imgsearch.storage.aws_resources import create_bucket, create_tables, load_template

pytestmark = pytest.mark.bundles

OUT = REPO / "build" / "lambda"
# Lambda's limit is 250 MB for code and layers unzipped; keep a fifth of it free for growth.
BUDGET = 0.8
# Amazon Linux 2023, the python3.12 runtime's OS, has glibc 2.34.
MAX_GLIBC = (2, 34)


def load_script(name: str) -> ModuleType:
    path = REPO / "layers" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"layers_{name}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


build = load_script("build")
sandbox = load_script("sandbox")
try:
    # Bundles hold .pyc files for Lambda's python3.12, which only a python3.12 can compile.
    PYTHON312 = build.find_python312()
except SystemExit as missing:
    pytest.skip(f"{missing} (README: prerequisites)", allow_module_level=True)


@pytest.fixture(scope="module")
def bundles() -> Iterator[dict]:
    """Build the bundles (once: `make test` runs a file's tests in one process); the manifest
    the build wrote. Other runs in this checkout wait to rebuild them until this module's
    tests are done (layers/build.py's lock)."""
    subprocess.run(
        [sys.executable, str(REPO / "layers" / "build.py"), "--out", str(OUT)], check=True
    )
    with build.locked(OUT, fcntl.LOCK_SH):
        yield json.loads((OUT / "manifest.json").read_text())


def deployed() -> dict[str, tuple[str, list[str]]]:
    """Per function of the template: its bundle and its layers, by directory name."""
    resources = load_template()["Resources"]
    functions = {}
    for properties in (
        r["Properties"] for r in resources.values() if r["Type"] == "AWS::Serverless::Function"
    ):
        layers = [
            Path(resources[ref["Ref"]]["Properties"]["ContentUri"]).name
            for ref in properties["Layers"]
        ]
        functions[Path(properties["CodeUri"]).name] = (properties["CodeUri"], layers)
    return functions


def test_the_template_deploys_what_the_build_builds() -> None:
    template_dir = REPO / "infra"
    for name, (code_uri, layers) in deployed().items():
        assert (template_dir / code_uri).resolve() == OUT / "functions" / name
        assert tuple(layers) == build.FUNCTION_LAYERS[name], name
    resources = load_template()["Resources"].values()
    for layer in (r for r in resources if r["Type"] == "AWS::Serverless::LayerVersion"):
        path = (template_dir / layer["Properties"]["ContentUri"]).resolve()
        assert path.parent == OUT / "layers"
        assert layer["Properties"]["CompatibleArchitectures"] == [build.ARCHITECTURE]
    architectures = load_template()["Globals"]["Function"]["Architectures"]
    assert architectures == [build.ARCHITECTURE]


def test_each_function_fits_in_lambda_with_room_to_spare(bundles: dict) -> None:
    budget = BUDGET * build.LAMBDA_UNZIPPED_LIMIT
    for name, (_, layers) in deployed().items():
        measured = build.tree_size(OUT / "functions" / name) + sum(
            build.tree_size(OUT / "layers" / layer) for layer in layers
        )
        assert measured == bundles["functions"][name]["total"]  # the printed sizes are true
        assert measured <= budget, f"{name}: {measured / 2**20:.0f} MiB unzipped"
    # Heavy libraries stay where they are needed.
    assert "inference" not in build.FUNCTION_LAYERS["feedback"]
    assert build.FUNCTION_LAYERS["authorizer"] == ("deps",)


def test_binaries_are_manylinux_builds_for_python312_on_x86_64(bundles: dict) -> None:
    libraries = [p for p in (OUT / "layers").rglob("*.so*") if p.is_file()]
    assert libraries
    for library in libraries:
        header = library.read_bytes()
        assert header[:4] == b"\x7fELF" and header[18] == 62, f"{library}: not x86-64"  # EM_X86_64
        needed = {tuple(map(int, v)) for v in re.findall(rb"GLIBC_(\d+)\.(\d+)", header)}
        assert max(needed, default=(2, 0)) <= MAX_GLIBC, f"{library} needs glibc {max(needed)}"
        if ".cpython-" in library.name:
            assert ".cpython-312-x86_64-linux-gnu.so" in library.name, library
    # annoy comes from annoy-mm's wheel, never compiled here.
    assert list((OUT / "layers" / "inference" / "python").glob("annoy_mm-*.dist-info"))
    # Compiled for 3.12, for every module.
    modules = list((OUT / "layers" / "deps" / "python" / "fastapi").glob("*.py"))
    compiled = list((OUT / "layers" / "deps" / "python" / "fastapi" / "__pycache__").iterdir())
    assert len(compiled) == len(modules) and all(".cpython-312." in p.name for p in compiled)


@pytest.fixture(scope="module")
def moto_server():
    install_cheap_transactions()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


def test_every_handler_runs_on_its_own_bundle(bundles: dict, moto_server: str, tmp_path) -> None:
    python = PYTHON312
    credentials = {
        **FAKE_CREDENTIALS,
        "AWS_ENDPOINT_URL": moto_server,
    }
    clients = {name: boto3.client(name, **_client_options(credentials)) for name in ("s3", "sqs")}
    bucket, tables, queues = (
        "sandbox-images",
        {"CatalogTable": "sb-c", "FeedbackTable": "sb-f"},
        {
            "ImageQueue": "sb-images",
            "ImageDeadLetterQueue": "sb-dlq",
        },
    )
    create_bucket(clients["s3"], bucket)
    create_tables(boto3.client("dynamodb", **_client_options(credentials)), tables)
    created = create_queues(clients["sqs"], queues)
    configure_notifications(clients["s3"], bucket, {q: arn for q, (_, arn) in created.items()})
    parameter = load_template()["Parameters"]["ApiKeyParameterName"]["Default"]
    boto3.client("ssm", **_client_options(credentials)).put_parameter(
        Name=parameter, Value="sandbox-key", Type="SecureString"
    )

    @cache
    def assembled(function: str):
        return sandbox.assemble(
            function,
            out=OUT,
            layers=list(build.FUNCTION_LAYERS[function]),
            root=tmp_path / function,
        )

    def invoke(function: str, event: dict | None) -> dict:
        """A cold start of `function` in its sandbox, handling `event`."""
        box = assembled(function)
        known = {
            "IMGSEARCH_BUCKET": bucket,
            "IMGSEARCH_PAGE_ORIGINS": json.dumps([f"https://{bucket}.s3.amazonaws.com"]),
            "IMGSEARCH_ASSETS_DIR": str(box.opt / "assets"),
            "IMGSEARCH_CACHE_DIR": str(tmp_path / function / "tmp"),
            "IMGSEARCH_TRUSTED_PROXIES": "[]",  # the TrustedProxies parameter's default
            "IMGSEARCH_VECTOR_BUCKET": "sandbox-vectors",  # unused: VectorEngine's default
            **tables,
        }
        logical = f"{function.title()}Function"  # the template's logical id
        environment = function_environment(logical, known) | credentials
        environment["PATH"] = os.environ["PATH"]
        return sandbox.run(box, python, environment, event)

    for name in ("elephant", "pizza"):
        clients["s3"].put_object(Bucket=bucket, Key=f"images/{name}.jpg", Body=demo_image(name))
    url, arn = created["ImageQueue"]
    poller = QueuePoller(clients["sqs"], url, arn, lambda e, _: invoke("embed", e)["response"])
    assert all(r == {"batchItemFailures": []} for r in poller.drain())

    found = invoke("search", _request("GET", "/api/search", "q=elephant"))
    assert found["response"]["statusCode"] == 200, found["response"]
    results = json.loads(found["response"]["body"])["results"]
    assert results[0]["key"] == "elephant.jpg"
    page = invoke("search", _request("GET", "/", ""))
    assert page["response"]["statusCode"] == 200 and "<html" in page["response"]["body"].lower()
    config = (OUT / "functions" / "search" / "web" / "config.js").read_text()
    assert 'upload: "presigned"' in config  # the page uploads through presigned forms

    vote = {"query": "elephant", "image_id": results[0]["id"], "vote": 1, "session": "s"}
    voted = invoke("feedback", _request("POST", "/api/feedback", "", json.dumps(vote)))
    assert voted["response"]["statusCode"] == 200, voted["response"]
    assert not {"annoy", "ai_edge_litert"} & set(voted["modules"])

    # The change function (the routes behind the API key): an upload form, a deletion.
    upload = {"filename": "a.jpg", "content_type": "image/jpeg"}
    form = invoke("change", _request("POST", "/api/uploads", "", json.dumps(upload)))
    assert form["response"]["statusCode"] == 201, form["response"]
    listed = invoke("search", _request("GET", "/api/images", "key=pizza.jpg"))
    pizza = json.loads(listed["response"]["body"])["results"][0]["id"]
    deleted = invoke("change", _request("DELETE", f"/api/images/{pizza}", ""))
    assert deleted["response"]["statusCode"] == 204, deleted["response"]
    invoke("embed", scheduled_event())  # the removal is queued; the schedule applies it
    health = invoke("search", _request("GET", "/api/health", ""))
    assert json.loads(health["response"]["body"])["images"] == 1

    request = _request("POST", "/api/uploads", "", "{}", {API_KEY_HEADER.lower(): "sandbox-key"})
    route, _ = route_for("POST", "/api/uploads")
    allowed = invoke("authorizer", authorizer_event(request, route, "sandbox-key"))
    assert allowed["response"] == {"isAuthorized": True}
    request["headers"][API_KEY_HEADER.lower()] = "guess"
    denied = invoke("authorizer", authorizer_event(request, route, "guess"))
    assert denied["response"] == {"isAuthorized": False}
    assert not {"numpy", "pydantic", "PIL"} & set(denied["modules"])


def _request(
    method: str, path: str, query: str, body: str | None = None, headers: dict | None = None
) -> dict:
    found = route_for(method, path)
    assert found is not None, (method, path)
    route, parameters = found
    content = {"content-type": "application/json"} if body is not None else {}
    return http_event(
        method,
        path,
        query=query,
        headers={"host": API_HOST, **content, **(headers or {})},
        body=None if body is None else body.encode(),
        route_key=route.key,
        path_parameters=parameters,
    )


def _client_options(credentials: dict[str, str]) -> dict[str, str]:
    return {
        "endpoint_url": credentials["AWS_ENDPOINT_URL"],
        "region_name": credentials["AWS_DEFAULT_REGION"],
        "aws_access_key_id": credentials["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": credentials["AWS_SECRET_ACCESS_KEY"],
    }
