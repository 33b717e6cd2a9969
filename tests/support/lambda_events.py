"""Lambda events as AWS builds them, and the two AWS services that call our handlers:
an SQS event source mapping (`QueuePoller`) and API Gateway's HTTP API (`ApiGateway`), which
routes requests by the template's routes and asks the authorizer where a route has one.
"""

from __future__ import annotations

import base64
import importlib.util
import json
import logging
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import parse_qsl, quote_plus, urlencode

from imgsearch.vocabulary import STRATEGIES, Vocabulary
from support.aws_resources import Route, route_for
from support.demo import REPO
from support.openapi import API_KEY_HEADER

REGION = "us-east-1"
ACCOUNT = "123456789012"
API_ID = "a1b2c3d4e5"
API_HOST = f"{API_ID}.execute-api.{REGION}.amazonaws.com"
CLIENT_IP = "203.0.113.10"

Handler = Callable[[dict[str, Any], Any], Any]


@dataclass
class FakeContext:
    """The parts of Lambda's context object that Powertools reads."""

    function_name: str = "imgsearch-test"
    memory_limit_in_mb: int = 1769
    invoked_function_arn: str = f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:imgsearch-test"
    aws_request_id: str = field(default_factory=lambda: str(uuid.uuid4()))

    def get_remaining_time_in_millis(self) -> int:
        return 300_000


@contextmanager
def lambda_logging() -> Iterator[None]:
    """Undo, afterwards, what a function's cold start does to the `imgsearch` logger (it sends
    it to Powertools' JSON handler only), so that later tests in this process see its records."""
    package = logging.getLogger("imgsearch")
    saved = (package.handlers[:], package.propagate, package.level)
    try:
        yield
    finally:
        package.handlers[:], package.propagate = saved[0], saved[1]
        package.setLevel(saved[2])


def load_function(name: str) -> ModuleType:
    """Import functions/<name>/app.py as Lambda would: a fresh module, its own cold start.

    But for the vocabulary: its tables are read-only files of a layer, and loading them takes
    about a second, which the search and feedback functions' cold starts in every test would
    pay again (half a minute over tests/cloud/test_cloud.py). A test process loads each once
    and shares it, as the fixtures do (tests/conftest.py); the bundles' cold starts in fresh
    interpreters (tests/cloud/test_bundles.py) load their own."""
    path = REPO / "functions" / name / "app.py"
    spec = importlib.util.spec_from_file_location(f"{name}_app_{uuid.uuid4().hex}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    with _vocabularies_loaded_once():
        spec.loader.exec_module(module)
    return module


# Loaded by the cold starts, by directory and strategies.
_vocabularies: dict[tuple[Path, frozenset[str]], Vocabulary] = {}


@contextmanager
def _vocabularies_loaded_once() -> Iterator[None]:
    """While the block runs, Vocabulary.load loads a directory (with given strategies) once in
    this process and then gives that vocabulary again."""
    load = Vocabulary.__dict__["load"]

    def load_once(
        cls: type[Vocabulary], directory: str | Path, strategies: Iterable[str] = STRATEGIES
    ) -> Vocabulary:
        key = (Path(directory).resolve(), frozenset(strategies))
        if key not in _vocabularies:
            _vocabularies[key] = load.__func__(cls, directory, strategies)
        return _vocabularies[key]

    Vocabulary.load = classmethod(load_once)
    try:
        yield
    finally:
        Vocabulary.load = load


# SQS ---------------------------------------------------------------------------------------


def sqs_record(message: Mapping[str, Any], queue_arn: str) -> dict[str, Any]:
    """A received SQS message as one record of the event Lambda's poller sends."""
    return {
        "messageId": message["MessageId"],
        "receiptHandle": message["ReceiptHandle"],
        "body": message["Body"],
        "attributes": dict(message.get("Attributes", {})),
        "messageAttributes": {},
        "md5OfBody": message["MD5OfBody"],
        "eventSource": "aws:sqs",
        "eventSourceARN": queue_arn,
        "awsRegion": REGION,
    }


def sqs_event(*notifications: Mapping[str, Any], receive_count: int = 1) -> dict[str, Any]:
    """An SQS event as Lambda's poller sends it: one S3 notification per message (the
    tests' own, without a queue; QueuePoller builds one from received messages)."""
    return {
        "Records": [
            {
                "messageId": str(uuid.uuid4()),
                "receiptHandle": uuid.uuid4().hex,
                "body": json.dumps(notification),
                "attributes": {
                    "ApproximateReceiveCount": str(receive_count),
                    "SentTimestamp": "1795500000000",
                    "SenderId": "AIDAEXAMPLE",
                    "ApproximateFirstReceiveTimestamp": "1795500000001",
                },
                "messageAttributes": {},
                "md5OfBody": "0" * 32,
                "eventSource": "aws:sqs",
                "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:test-images",
                "awsRegion": REGION,
            }
            for notification in notifications
        ]
    }


def s3_record(s3: Any, bucket: str, event_name: str, key: str, sequencer: str) -> dict[str, Any]:
    """One record of an S3 event notification (event structure version 2.1) for `key` in
    `bucket`, its size, ETag and version read from the bucket for a creation."""
    obj: dict[str, Any] = {"key": quote_plus(key), "sequencer": sequencer}
    if event_name.startswith("ObjectCreated"):
        head = s3.head_object(Bucket=bucket, Key=key)
        obj.update(
            size=head["ContentLength"],
            eTag=head["ETag"].strip('"'),
            versionId=head.get("VersionId"),
        )
    return {
        "eventVersion": "2.1",
        "eventSource": "aws:s3",
        "awsRegion": "us-east-1",
        "eventTime": "2026-11-24T10:00:00.000Z",
        "eventName": event_name,
        "userIdentity": {"principalId": "AWS:AIDAEXAMPLE"},
        "requestParameters": {"sourceIPAddress": "203.0.113.10"},
        "responseElements": {"x-amz-request-id": "C3D13FE58DE4C810", "x-amz-id-2": "FMyUVURI"},
        "s3": {
            "s3SchemaVersion": "1.0",
            "configurationId": "ImageUploaded",
            "bucket": {
                "name": bucket,
                "ownerIdentity": {"principalId": "A3NL1KOZZKExample"},
                "arn": f"arn:aws:s3:::{bucket}",
            },
            "object": obj,
        },
    }


class QueuePoller:
    """What Lambda's SQS event source mapping does: receive a batch, invoke the function,
    delete the messages it did not report as failed (ReportBatchItemFailures).

    Failed messages are made visible again at once, as if their visibility timeout had passed,
    so that a test can go through every delivery attempt quickly.
    """

    def __init__(self, sqs: Any, queue_url: str, queue_arn: str, handler: Handler) -> None:
        self.sqs = sqs
        self.queue_url = queue_url
        self.queue_arn = queue_arn
        self.handler = handler

    def poll(self, batch_size: int = 10) -> dict[str, Any] | None:
        """One invocation; None if the queue had nothing visible."""
        messages = self.sqs.receive_message(
            QueueUrl=self.queue_url,
            MaxNumberOfMessages=batch_size,
            AttributeNames=["All"],
        ).get("Messages", [])
        if not messages:
            return None
        event = {"Records": [sqs_record(m, self.queue_arn) for m in messages]}
        try:
            response = self.handler(event, FakeContext())
            failed = {item["itemIdentifier"] for item in response["batchItemFailures"]}
        except Exception:  # the function failed: the whole batch comes back
            response, failed = {"error": True}, {m["MessageId"] for m in messages}
        for message in messages:
            if message["MessageId"] in failed:
                self.sqs.change_message_visibility(
                    QueueUrl=self.queue_url,
                    ReceiptHandle=message["ReceiptHandle"],
                    VisibilityTimeout=0,
                )
            else:
                self.sqs.delete_message(
                    QueueUrl=self.queue_url, ReceiptHandle=message["ReceiptHandle"]
                )
        return response

    def drain(self, max_invocations: int = 20) -> list[dict[str, Any]]:
        """Invoke until the queue is empty; the responses, in order."""
        responses = []
        for _ in range(max_invocations):
            response = self.poll()
            if response is None:
                return responses
            responses.append(response)
        raise AssertionError(f"the queue was not empty after {max_invocations} invocations")


def scheduled_event() -> dict[str, Any]:
    """What EventBridge sends the embed function on its schedule."""
    return {
        "version": "0",
        "id": "53dc4d37-cffa-4f76-80c9-8b7d4a4d2eaa",
        "detail-type": "Scheduled Event",
        "source": "aws.events",
        "account": "123456789012",
        "time": "2026-12-01T22:00:00Z",
        "region": "us-east-1",
        "resources": ["arn:aws:events:us-east-1:123456789012:rule/imgsearch-DrainIndexQueue"],
        "detail": {},
    }


# API Gateway (HTTP API, payload format 2.0) ----------------------------------------------------


def http_event(
    method: str,
    path: str,
    *,
    query: str = "",
    headers: Mapping[str, str] | None = None,
    body: bytes | None = None,
    route_key: str = "$default",
    path_parameters: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """A request as API Gateway passes it to a Lambda integration (payload format 2.0)."""
    now = time.time()
    all_headers = {
        "accept": "*/*",
        "host": API_HOST,
        "user-agent": "pytest",
        "x-amzn-trace-id": f"Root=1-{int(now):08x}-{uuid.uuid4().hex[:24]}",
        "x-forwarded-for": CLIENT_IP,
        "x-forwarded-port": "443",
        "x-forwarded-proto": "https",
    } | {name.lower(): value for name, value in (headers or {}).items()}
    if body is not None:
        all_headers["content-length"] = str(len(body))
    # Repeated query parameters arrive joined by commas; rawQueryString keeps them apart.
    parameters: dict[str, list[str]] = {}
    for name, value in parse_qsl(query, keep_blank_values=True):
        parameters.setdefault(name, []).append(value)
    textual = body is not None and _is_text(all_headers.get("content-type", ""))
    event: dict[str, Any] = {
        "version": "2.0",
        "routeKey": route_key,
        "rawPath": path,
        "rawQueryString": query,
        "headers": all_headers,
        "requestContext": {
            "accountId": ACCOUNT,
            "apiId": API_ID,
            "domainName": API_HOST,
            "domainPrefix": API_ID,
            "http": {
                "method": method,
                "path": path,
                "protocol": "HTTP/1.1",
                "sourceIp": CLIENT_IP,
                "userAgent": all_headers["user-agent"],
            },
            "requestId": uuid.uuid4().hex[:16],
            "routeKey": route_key,
            "stage": "$default",
            "time": time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime(now)),
            "timeEpoch": int(now * 1000),
        },
        "isBase64Encoded": body is not None and not textual,
    }
    if parameters:
        event["queryStringParameters"] = {k: ",".join(v) for k, v in parameters.items()}
    if path_parameters:
        event["pathParameters"] = dict(path_parameters)
    if body is not None:
        event["body"] = body.decode() if textual else base64.b64encode(body).decode()
    return event


def authorizer_event(request: Mapping[str, Any], route: Route, identity: str) -> dict[str, Any]:
    """What API Gateway sends a REQUEST authorizer (payload format 2.0) for `request`."""
    method = request["requestContext"]["http"]["method"]
    path = request["rawPath"]
    return {
        "version": "2.0",
        "type": "REQUEST",
        "routeArn": f"arn:aws:execute-api:{REGION}:{ACCOUNT}:{API_ID}/$default/{method}{path}",
        "identitySource": [identity],
        "routeKey": route.key,
        "rawPath": path,
        "rawQueryString": request["rawQueryString"],
        "cookies": [],
        "headers": request["headers"],
        "queryStringParameters": request.get("queryStringParameters", {}),
        "requestContext": request["requestContext"],
        "pathParameters": request.get("pathParameters", {}),
        "stageVariables": {},
    }


def _is_text(content_type: str) -> bool:
    return content_type.startswith(("application/json", "text/"))


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class ApiGateway:
    """API Gateway in front of the handlers: the template's routes and authorizer."""

    def __init__(self, functions: Mapping[str, Handler], authorizers: Mapping[str, Handler]):
        self.functions = functions  # logical id -> handler
        self.authorizers = authorizers  # authorizer name -> handler

    def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        json_body: Any = None,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Response:
        headers = dict(headers or {})
        if json_body is not None:
            body = json.dumps(json_body).encode()
            headers["content-type"] = "application/json"
        found = route_for(method, path)
        if found is None:
            return Response(404, {}, b'{"message":"Not Found"}')
        route, path_parameters = found
        event = http_event(
            method,
            path,
            query=urlencode(params or {}, doseq=True),
            headers=headers,
            body=body,
            route_key=route.key,
            path_parameters=path_parameters,
        )
        if route.authorizer is not None:
            denied = self._authorize(event, route)
            if denied is not None:
                return denied
        result = self.functions[route.function](event, FakeContext())
        raw = result.get("body", "")
        data = base64.b64decode(raw) if result.get("isBase64Encoded") else raw.encode()
        return Response(result["statusCode"], result.get("headers", {}), data)

    def _authorize(self, event: dict[str, Any], route: Route) -> Response | None:
        # The identity source is the API key header: without it the authorizer is not called.
        identity = event["headers"].get(API_KEY_HEADER.lower())
        if not identity:
            return Response(401, {}, b'{"message":"Unauthorized"}')
        answer = self.authorizers[route.authorizer](
            authorizer_event(event, route, identity), FakeContext()
        )
        if answer.get("isAuthorized") is not True:
            return Response(403, {}, b'{"message":"Forbidden"}')
        return None
