"""The cloud path end to end on moto, through the real handlers with the events AWS sends.

Resources come from infra/template.yaml (tests/support/aws_resources.py), the functions get the
template's environment, S3 delivers its notifications to the queue, a poller feeds them to the
embed function as Lambda's SQS event source mapping would, and API Gateway's routing and
authorizer are played from the template's routes (tests/support/lambda_events.py).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType, SimpleNamespace
from urllib.parse import urljoin

import boto3
import botocore.handlers
import pytest
import requests
from moto import mock_aws
from moto.server import ThreadedMotoServer
from support.aws_resources import (
    FAKE_CREDENTIALS,
    configure_notifications,
    create_queues,
    function_environment,
)
from support.demo import REPO, demo_image
from support.dynamodb import install_cheap_transactions
from support.hostile_files import bombs, corpus
from support.lambda_events import (
    CLIENT_IP,
    ApiGateway,
    FakeContext,
    QueuePoller,
    http_event,
    lambda_logging,
    load_function,
)
from support.openapi import API_KEY_HEADER
from support.s3vectors import create_vector_indexes, install_query_vectors

from imgsearch.cloud.handlers import http_handler
from imgsearch.config import ASSETS_DIR, get_settings
from imgsearch.images import DecodeLimits, ImageRefused, decode_image
from imgsearch.storage.aws import CACHE_HEADROOM, S3ObjectStore
from imgsearch.storage.aws_resources import (
    create_bucket,
    create_tables,
    load_template,
    resource_properties,
)

BUCKET = "imgsearch-test-images"
VECTOR_BUCKET = "imgsearch-test-vectors"
TABLES = {"CatalogTable": "test-catalog", "FeedbackTable": "test-feedback"}
QUEUES = {"ImageQueue": "test-images", "ImageDeadLetterQueue": "test-images-dlq"}
API_KEY = "cloud-test-key-3f9a"
API_KEY_PARAMETER = load_template()["Parameters"]["ApiKeyParameterName"]["Default"]
FUNCTIONS = {
    "EmbedFunction": "embed",
    "SearchFunction": "search",
    "ChangeFunction": "change",
    "FeedbackFunction": "feedback",
    "AuthorizerFunction": "authorizer",
}


@dataclass
class Cloud:
    s3: object
    sqs: object
    queue: QueuePoller
    dead_letters: str  # the DLQ's URL
    api: ApiGateway
    functions: dict[str, ModuleType]

    def upload(self, key: str, data: bytes) -> None:
        self.s3.put_object(Bucket=BUCKET, Key=f"images/{key}", Body=data)

    def delete(self, key: str) -> None:
        """Delete every version of images/<key>. (S3 also notifies a plain delete, which only
        adds a delete marker to a versioned bucket; moto notifies only the last version's.)"""
        listed = self.s3.list_object_versions(Bucket=BUCKET, Prefix=f"images/{key}")
        for version in listed.get("Versions", []) + listed.get("DeleteMarkers", []):
            self.s3.delete_object(Bucket=BUCKET, Key=version["Key"], VersionId=version["VersionId"])

    def search(self, query: str, **params: object) -> list[str]:
        response = self.api.request("GET", "/api/search", params={"q": query, **params})
        assert response.status == 200, response.body
        return [result["key"] for result in response.json()["results"]]


def aws_environment(tmp_path: Path, engine: str = "annoy") -> dict[str, str]:
    """What the template gives the functions, with this test's resource names, and the
    template's VectorEngine parameter set to `engine`."""
    known = {
        "IMGSEARCH_BUCKET": BUCKET,
        "IMGSEARCH_VECTOR_ENGINE": engine,
        "IMGSEARCH_VECTOR_BUCKET": VECTOR_BUCKET,
        "IMGSEARCH_PAGE_ORIGINS": json.dumps([f"https://{BUCKET}.s3.amazonaws.com"]),
        "IMGSEARCH_ASSETS_DIR": str(ASSETS_DIR),  # /opt/assets in Lambda: the layers
        "IMGSEARCH_CACHE_DIR": str(tmp_path / "cache"),
        "IMGSEARCH_TRUSTED_PROXIES": "[]",  # the TrustedProxies parameter's default
        **TABLES,
    }
    environment = {}
    for function in FUNCTIONS:
        environment |= function_environment(function, known)
    return environment | {"POWERTOOLS_SERVICE_NAME": "imgsearch-test"}


@pytest.fixture
def cloud(request, monkeypatch, tmp_path) -> Iterator[Cloud]:
    """The stack on moto; its vector engine is the test's parameter (indirect), else Annoy."""
    engine = getattr(request, "param", "annoy")
    for name, value in {
        **FAKE_CREDENTIALS,
        **aws_environment(tmp_path, engine),
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    get_settings.cache_clear()
    install_cheap_transactions()
    with mock_aws(), lambda_logging():
        s3, sqs = boto3.client("s3"), boto3.client("sqs")
        create_bucket(s3, BUCKET)
        create_tables(boto3.client("dynamodb"), TABLES)
        if engine == "s3vectors":
            install_query_vectors()
            index = os.environ["IMGSEARCH_VECTOR_INDEX"]
            create_vector_indexes(boto3.client("s3vectors"), VECTOR_BUCKET, index)
        queues = create_queues(sqs, QUEUES)
        configure_notifications(s3, BUCKET, {q: arn for q, (_, arn) in queues.items()})
        boto3.client("ssm").put_parameter(
            Name=API_KEY_PARAMETER, Value=API_KEY, Type="SecureString"
        )
        functions = {logical: load_function(name) for logical, name in FUNCTIONS.items()}
        # The search function looks for a new manifest at most every 2 s; the tests look at
        # once, so that they need not wait for what a user would see seconds later anyway.
        functions["SearchFunction"].service.parts.index.refresh_interval = 0
        url, arn = queues["ImageQueue"]
        yield Cloud(
            s3=s3,
            sqs=sqs,
            queue=QueuePoller(sqs, url, arn, functions["EmbedFunction"].handler),
            dead_letters=queues["ImageDeadLetterQueue"][0],
            api=ApiGateway(
                {logical: module.handler for logical, module in functions.items()},
                {"ApiKeyAuthorizer": functions["AuthorizerFunction"].handler},
            ),
            functions=functions,
        )
    get_settings.cache_clear()


def multipart_file(data: bytes, filename: str = "photo.jpg") -> tuple[bytes, dict[str, str]]:
    """A multipart/form-data body with one file field, `file`, and its content type."""
    boundary = "imgsearch-test-boundary"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; '
        f'filename="{filename}"\r\nContent-Type: image/jpeg\r\n\r\n'
    )
    body = head.encode() + data + f"\r\n--{boundary}--\r\n".encode()
    return body, {"content-type": f"multipart/form-data; boundary={boundary}"}


def no_failures(responses: list[dict]) -> bool:
    return all(response.get("batchItemFailures") == [] for response in responses)


@pytest.mark.model  # the functions load the model
@pytest.mark.parametrize("cloud", ["annoy", "s3vectors"], indirect=True)
def test_images_become_searchable_votes_rerank_and_deletions_leave(cloud: Cloud) -> None:
    photos = {
        "holiday 2026/elephant 1.jpg": demo_image("elephant"),
        "elephant 2.jpg": demo_image("elephant", 2),
        "pizza.jpg": demo_image("pizza"),
        "plane.jpg": demo_image("airplanes"),
    }
    for key, data in photos.items():
        cloud.upload(key, data)
    cloud.upload("broken.jpg", b"\xff\xd8 not really a JPEG")
    responses = cloud.queue.drain()  # the s3:TestEvent first, then the images
    assert no_failures(responses)

    health = cloud.api.request("GET", "/api/health")
    assert health.status == 200 and health.json()["images"] == 4
    assert set(cloud.search("elephant")[:2]) == {"holiday 2026/elephant 1.jpg", "elephant 2.jpg"}
    status = cloud.api.request("GET", "/api/uploads/status", params={"key": "broken.jpg"})
    assert status.json()["status"] == "refused" and status.json()["reason"]

    # A vote through the feedback function changes the next search of that session.
    before = cloud.search("elephant", session="s1")
    pizza = cloud.api.request("GET", "/api/images", params={"key": "pizza.jpg"}).json()
    pizza_id = pizza["results"][0]["id"]
    vote = {"query": "elephant", "image_id": pizza_id, "vote": 1, "session": "s1"}
    response = cloud.api.request("POST", "/api/feedback", json_body=vote)
    assert response.status == 200, response.body
    after = cloud.search("elephant", session="s1")
    assert after != before
    assert after.index("pizza.jpg") < (before.index("pizza.jpg") if "pizza.jpg" in before else 99)

    # More like this, and reverse search with a photo, from the engine the template chose.
    elephant = cloud.api.request("GET", "/api/images", params={"key": "elephant 2.jpg"}).json()
    similar = cloud.api.request("GET", f"/api/images/{elephant['results'][0]['id']}/similar")
    assert similar.status == 200, similar.body
    assert similar.json()["results"][0]["key"] == "holiday 2026/elephant 1.jpg"
    body, headers = multipart_file(demo_image("elephant", 2))
    reverse = cloud.api.request("POST", "/api/search/image", body=body, headers=headers)
    assert reverse.status == 200, reverse.body
    assert reverse.json()["results"][0]["key"] == "elephant 2.jpg"
    shard_files = cloud.s3.list_objects_v2(Bucket=BUCKET, Prefix="index/shards/")["KeyCount"]
    assert (shard_files > 0) == (os.environ["IMGSEARCH_VECTOR_ENGINE"] == "annoy")

    # Originals are presigned S3 links (the built bundle serves the page: test_bundles.py);
    # thumbnails are paths of the site, where CloudFront serves the bucket's thumbnails/.
    original = cloud.api.request("GET", f"/api/images/{pizza_id}/file")
    assert original.status == 307 and BUCKET in original.headers["location"]
    thumbnail = cloud.api.request("GET", f"/api/images/{pizza_id}/thumbnail")
    assert thumbnail.status == 307
    assert thumbnail.headers["location"] == pizza["results"][0]["thumbnail"]
    path = thumbnail.headers["location"]
    assert path == f"/thumbnails/{pizza_id}.jpg"
    served = cloud.s3.get_object(Bucket=BUCKET, Key=path.removeprefix("/"))  # as CloudFront
    assert served["ContentType"] == "image/jpeg" and served["Body"].read()[:2] == b"\xff\xd8"

    cloud.delete("pizza.jpg")
    assert no_failures(cloud.queue.drain())
    assert "pizza.jpg" not in cloud.search("elephant", session="s1")
    assert cloud.api.request("GET", f"/api/images/{pizza_id}").status == 404
    assert cloud.api.request("GET", "/api/health").json()["images"] == 3


# Issue 15's bound is 15, amortised over a batch; measured here (2026-12-02): 11.5 and 13.5,
# with a lease renewal or two (one every 5 s of a build, wall clock) of room.
REQUESTS_PER_IMAGE = {"annoy": 12.0, "s3vectors": 14.0}
CATEGORIES = ("elephant", "pizza", "chair", "lotus", "watch", "camera", "accordion", "brain")


def upload_batch(cloud: Cloud, number: int) -> None:
    """Photo `number` of each of CATEGORIES and two more (the template's batch of 10)."""
    for category in CATEGORIES:
        cloud.upload(f"{category}/{number}.jpg", demo_image(category, number))
    for category in CATEGORIES[:2]:
        cloud.upload(f"{category}/{number + 3}.jpg", demo_image(category, number + 3))


@dataclass
class RequestCounter:
    """Every request of the boto3 sessions made after it (each client copies its session's
    hooks when it is made; moto gives its mock a new default session), by operation, while
    `counting`."""

    counting: bool = False
    requests: Counter[str] = field(default_factory=Counter)

    def __call__(self, event_name: str, **_: object) -> None:
        if self.counting:
            self.requests[event_name.rsplit(".", 1)[-1]] += 1


@pytest.fixture
def aws_requests() -> Iterator[RequestCounter]:
    """A RequestCounter in every botocore session made from now on, as moto installs its
    own hook: ask for it before `cloud`."""
    counter = RequestCounter()
    handler = ("before-call", counter)
    botocore.handlers.BUILTIN_HANDLERS.append(handler)
    yield counter
    botocore.handlers.BUILTIN_HANDLERS.remove(handler)


@pytest.mark.model  # the functions load the model
@pytest.mark.parametrize("cloud", ["annoy", "s3vectors"], indirect=True)
def test_a_batch_costs_at_most_12_or_14_aws_requests_per_image(
    aws_requests: RequestCounter, cloud: Cloud
) -> None:
    """Every AWS request the real handlers (and the queue's poller, as Lambda's) send for a
    batch of the template's size, counted at boto3: ingest, the index build, the neighbour
    lists and the expanded vectors, the work queue and the lease."""
    batch = int(load_template()["Parameters"]["EmbedBatchSize"]["Default"])
    assert batch == 10
    for number in (1, 2):  # a collection to join, with neighbour lists of its own
        upload_batch(cloud, number)
        assert no_failures(cloud.queue.drain())

    upload_batch(cloud, 3)
    aws_requests.counting = True
    response = cloud.queue.poll(batch)  # one invocation, the ten images
    aws_requests.counting = False
    counted = aws_requests.requests
    assert response is not None and no_failures([response])
    assert cloud.queue.poll() is None  # nothing left for another invocation
    assert cloud.api.request("GET", "/api/health").json()["images"] == 3 * batch
    per_image = sum(counted.values()) / batch
    bound = REQUESTS_PER_IMAGE[get_settings().vector_engine]
    assert per_image <= bound, dict(counted.most_common())


@pytest.mark.model  # the functions load the model
def test_browser_uploads_through_presigned_forms(cloud: Cloud) -> None:
    headers = {API_KEY_HEADER: API_KEY}
    request = {"filename": "../My Holiday/elephant?.jpg", "content_type": "image/jpeg"}
    response = cloud.api.request("POST", "/api/uploads", json_body=request, headers=headers)
    assert response.status == 201, response.body
    form = response.json()
    key = form["key"]
    assert key.startswith("uploads/elephant_-") and key.endswith(".jpg")
    assert form["fields"]["key"] == f"images/{key}" and form["expires_in"] == 600
    policy = json.loads(__import__("base64").b64decode(form["fields"]["policy"]))
    assert ["content-length-range", 1, 25 * 1024 * 1024] in policy["conditions"]
    assert ["starts-with", "$Content-Type", "image/"] in policy["conditions"]

    status = cloud.api.request("GET", "/api/uploads/status", params={"key": key}).json()
    assert status == {"key": key, "status": "pending", "image_id": None, "reason": None}
    # What the page does: the form's fields, then the file (moto intercepts requests' calls).
    sent = requests.post(
        form["url"],
        data=form["fields"],
        files={"file": ("elephant.jpg", demo_image("elephant"), "image/jpeg")},
        timeout=10,
    )
    assert sent.status_code == 204
    assert no_failures(cloud.queue.drain())
    status = cloud.api.request("GET", "/api/uploads/status", params={"key": key}).json()
    assert status["status"] == "present" and status["image_id"]
    assert cloud.search("elephant")[0] == key

    # A file that is no image is refused by ingest, with the reason, and never retried.
    refused = cloud.api.request(
        "POST",
        "/api/uploads",
        json_body={"filename": "notes.png", "content_type": "image/png"},
        headers=headers,
    ).json()
    requests.post(
        refused["url"],
        data=refused["fields"],
        files={"file": ("notes.png", b"<html>not an image</html>", "image/png")},
        timeout=10,
    )
    assert no_failures(cloud.queue.drain())
    status = cloud.api.request("GET", "/api/uploads/status", params={"key": refused["key"]})
    assert status.json()["status"] == "refused" and "image" in status.json()["reason"]

    wrong_type = {"filename": "notes.txt", "content_type": "text/plain"}
    response = cloud.api.request("POST", "/api/uploads", json_body=wrong_type, headers=headers)
    assert response.status == 422


@pytest.mark.model  # the functions load the model
def test_the_authorizer_guards_only_the_routes_that_change_the_collection(cloud: Cloud) -> None:
    request = {"filename": "a.jpg", "content_type": "image/jpeg"}
    assert cloud.api.request("POST", "/api/uploads", json_body=request).status == 401
    wrong = {API_KEY_HEADER: "guess"}
    assert cloud.api.request("POST", "/api/uploads", json_body=request, headers=wrong).status == 403
    assert cloud.api.request("DELETE", "/api/images/0123456789abcdef", headers=wrong).status == 403
    right = {API_KEY_HEADER: API_KEY}
    assert cloud.api.request("POST", "/api/uploads", json_body=request, headers=right).status == 201
    assert cloud.api.request("DELETE", "/api/images/0123456789abcdef", headers=right).status == 404
    # Reading needs no key; methods without a route never reach a function.
    assert cloud.api.request("GET", "/api/search", params={"q": "dog"}).status == 200
    assert cloud.api.request("PUT", "/api/images").status == 404


@pytest.mark.model  # the functions load the model
def test_the_functions_send_the_security_headers_with_the_bucket_allowed(cloud: Cloud) -> None:
    """The Lambda apps answer with the page's policy, which lets the page show images from
    and upload to the bucket the template names (IMGSEARCH_PAGE_ORIGINS), and nothing else."""
    for method, path in (("GET", "/api/health"), ("POST", "/api/feedback")):
        response = cloud.api.request(method, path, json_body={} if method == "POST" else None)
        policy = response.headers["content-security-policy"]
        assert f"connect-src 'self' https://{BUCKET}.s3.amazonaws.com" in policy, path
        assert "frame-ancestors 'none'" in policy and "script-src 'self';" in policy
        assert response.headers["x-content-type-options"] == "nosniff"


@pytest.mark.model  # the functions load the model
def test_votes_count_against_api_gateways_source_ip_and_the_owner_controls_them(
    cloud: Cloud,
) -> None:
    cloud.upload("elephant.jpg", demo_image("elephant"))
    assert no_failures(cloud.queue.drain())
    image_id = cloud.api.request("GET", "/api/images", params={"key": "elephant.jpg"}).json()
    vote = {"query": "trunks", "image_id": image_id["results"][0]["id"], "vote": 1, "session": "s"}
    spoofed = {"X-Forwarded-For": "1.2.3.4, " + CLIENT_IP}  # what a client may write
    response = cloud.api.request("POST", "/api/feedback", json_body=vote, headers=spoofed)
    assert response.status == 200, response.body
    # The owner's routes: behind the authorizer, served by the feedback function.
    assert cloud.api.request("GET", "/api/terms/trunks").status == 401
    right = {API_KEY_HEADER: API_KEY}
    learned = cloud.api.request("GET", "/api/terms/trunks", headers=right).json()
    assert (learned["votes"], learned["clients"]) == (1, 1)
    assert learned["images"][0]["up_clients"] == 1
    spoofer = cloud.api.request("DELETE", "/api/clients/1.2.3.4/votes", headers=right).json()
    assert spoofer["votes_removed"] == 0  # the header named nobody who voted
    dropped = cloud.api.request("DELETE", f"/api/clients/{CLIENT_IP}/votes", headers=right)
    assert dropped.json()["votes_removed"] == 1  # the vote was API Gateway's sourceIp's
    assert dropped.json()["client"] == learned["voters"][0]["client"]
    reset = cloud.api.request("DELETE", "/api/terms/trunks", headers=right)
    assert reset.status == 200 and reset.json()["term"] == learned["term"]


@pytest.mark.model  # the functions load the model
def test_events_that_keep_failing_are_parked_as_failed_on_the_last_delivery(
    cloud: Cloud, monkeypatch
) -> None:
    embed = cloud.functions["EmbedFunction"].service

    def broken_add(*args: object, **kwargs: object) -> None:
        raise OSError("disk on fire")

    cloud.queue.drain()  # the test event
    attempts = []
    with monkeypatch.context() as patch:
        patch.setattr(embed.parts.ingestor, "add", broken_add)
        cloud.upload("unlucky.jpg", demo_image("pizza"))
        while (response := cloud.queue.poll()) is not None:
            attempts.append(response)
    max_receives = int(load_template()["Parameters"]["MaxReceiveCount"]["Default"])
    assert len(attempts) == max_receives
    assert all(len(r["batchItemFailures"]) == 1 for r in attempts[:-1])
    assert attempts[-1]["batchItemFailures"] == []  # parked: it leaves the queue
    status = cloud.api.request("GET", "/api/uploads/status", params={"key": "unlucky.jpg"})
    assert status.json()["status"] == "failed"
    assert status.json()["reason"] == "OSError: disk on fire"

    # Fixed, the same key uploaded again goes through.
    cloud.upload("unlucky.jpg", demo_image("pizza"))
    assert no_failures(cloud.queue.drain())
    status = cloud.api.request("GET", "/api/uploads/status", params={"key": "unlucky.jpg"})
    assert status.json()["status"] == "present"


@pytest.mark.model  # the functions load the model
def test_messages_that_cannot_be_parked_end_in_the_dead_letter_queue(cloud: Cloud) -> None:
    cloud.queue.drain()  # the test event
    cloud.sqs.send_message(QueueUrl=cloud.queue.queue_url, MessageBody="not json")
    while cloud.queue.poll() is not None:
        pass
    dead = cloud.sqs.receive_message(QueueUrl=cloud.dead_letters).get("Messages", [])
    assert [message["Body"] for message in dead] == ["not json"]


@pytest.mark.model  # the functions load the model
def test_test_events_multipart_uploads_and_foreign_keys(cloud: Cloud) -> None:
    s3 = cloud.s3
    s3.put_object(Bucket=BUCKET, Key="index/not-an-image.json", Body=b"{}")  # not notified
    upload = s3.create_multipart_upload(Bucket=BUCKET, Key="images/big.jpg")
    part = s3.upload_part(
        Bucket=BUCKET,
        Key="images/big.jpg",
        UploadId=upload["UploadId"],
        PartNumber=1,
        Body=demo_image("sunflower"),
    )
    s3.complete_multipart_upload(
        Bucket=BUCKET,
        Key="images/big.jpg",
        UploadId=upload["UploadId"],
        MultipartUpload={"Parts": [{"ETag": part["ETag"], "PartNumber": 1}]},
    )
    responses = cloud.queue.drain()
    assert no_failures(responses)
    assert cloud.api.request("GET", "/api/health").json()["images"] == 1
    assert cloud.search("sunflower")[0] == "big.jpg"


@pytest.mark.model  # the functions load the model
def test_init_aws_creates_the_resources_the_template_defines(cloud: Cloud) -> None:
    from imgsearch.cli import main
    from imgsearch.config import Settings
    from imgsearch.storage.aws_resources import create_missing_resources

    settings = Settings(bucket="fresh-bucket", catalog_table="fresh-c", feedback_table="fresh-f")
    assert sorted(create_missing_resources(settings)) == [
        "bucket fresh-bucket",
        "table fresh-c",
        "table fresh-f",
    ]
    assert create_missing_resources(settings) == []
    described = boto3.client("dynamodb").describe_table(TableName="fresh-c")["Table"]
    template = resource_properties("CatalogTable", "AWS::DynamoDB::Table")
    assert described["KeySchema"] == template["KeySchema"]
    assert described["BillingModeSummary"]["BillingMode"] == template["BillingMode"]
    assert main(["init-aws"]) == 2  # only against an emulator: real AWS gets the template


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.model  # `imgsearch serve` loads the model
def test_serve_with_the_aws_backend_on_a_moto_server(tmp_path) -> None:
    moto_port, api_port = _free_port(), _free_port()
    install_cheap_transactions()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=moto_port, verbose=False)
    server.start()
    environment = os.environ | {
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{moto_port}",
        **FAKE_CREDENTIALS,
        "IMGSEARCH_BUCKET": "served-images",
        "IMGSEARCH_API_KEY": API_KEY,
        "IMGSEARCH_DATA": str(tmp_path / "data"),
        "IMGSEARCH_CACHE_DIR": str(tmp_path / "cache"),
    }
    cli = [sys.executable, "-m", "imgsearch.cli", "--verbose"]
    serve = None
    try:
        subprocess.run([*cli, "init-aws"], env=environment, check=True, timeout=60)
        serve = subprocess.Popen(
            [*cli, "serve", "--backend", "aws", "--port", str(api_port)], env=environment
        )
        base = f"http://127.0.0.1:{api_port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                if requests.get(f"{base}/api/health", timeout=2).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            assert serve.poll() is None and time.monotonic() < deadline, "serve did not start"
            time.sleep(0.2)
        for name in ("elephant", "pizza"):
            uploaded = requests.post(
                f"{base}/api/images",
                files={"file": (f"{name}.jpg", demo_image(name), "image/jpeg")},
                headers={API_KEY_HEADER: API_KEY},
                timeout=60,
            )
            assert uploaded.status_code == 201, uploaded.text
        # The command serves through the guarded protocol: framing errors are answered in JSON.
        with socket.create_connection(("127.0.0.1", api_port), timeout=10) as raw:
            raw.sendall(b"GARBAGE\r\n\r\n")
            answer = raw.recv(65536)
        assert answer.startswith(b"HTTP/1.1 400") and b"application/json" in answer
        search = requests.get(f"{base}/api/search", params={"q": "elephant"}, timeout=10)
        found = search.json()["results"]
        assert found[0]["key"] == "uploads/elephant.jpg"
        # Everything went to the moto server: originals, index and the catalog.
        # A path from the root (no public URL is set): resolved against the server's address.
        thumbnail_url = urljoin(base, found[0]["thumbnail"])
        thumbnail = requests.get(thumbnail_url, timeout=10)  # follows the redirect
        assert thumbnail.status_code == 200
        assert thumbnail.headers["content-type"] == "image/jpeg"
        s3 = boto3.client(
            "s3",
            endpoint_url=environment["AWS_ENDPOINT_URL"],
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )
        keys = [o["Key"] for o in s3.list_objects_v2(Bucket="served-images")["Contents"]]
        assert "images/uploads/elephant.jpg" in keys and "index/manifest.json" in keys
    finally:
        if serve is not None:
            serve.terminate()
            serve.wait(timeout=10)
        server.stop()


def test_functions_are_thin() -> None:
    for name in FUNCTIONS.values():
        source = (REPO / "functions" / name / "app.py").read_text()
        assert len(source.splitlines()) <= 15, name


def test_direct_uploads_are_for_the_cloud_only(client) -> None:
    """Locally there is no bucket to upload into: the page posts files to /api/images."""
    request = {"filename": "a.jpg", "content_type": "image/jpeg"}
    response = client.post("/api/uploads", json=request)
    assert response.status_code == 404 and "/api/images" in response.json()["detail"]
    assert (
        client.post("/api/uploads", json=request, headers={API_KEY_HEADER: "no"}).status_code == 403
    )
    uploaded = client.post(
        "/api/images", files={"file": ("a.jpg", demo_image("pizza"), "image/jpeg")}
    ).json()
    status = client.get("/api/uploads/status", params={"key": uploaded["key"]}).json()
    assert status["status"] == "present" and status["image_id"] == uploaded["id"]
    assert client.get("/api/uploads/status", params={"key": "../x"}).status_code == 422


def test_an_event_body_is_bounded_whatever_its_headers_declare(service) -> None:
    """API Gateway passes the whole body whatever the client declared of it (HTTP/2 needs no
    Content-Length): a vote of 20 KB declared as nothing or as 0 bytes is refused as one of
    20 KB (the guard's limit for JSON is 16 KB), and a small one undeclared still arrives."""
    handler = http_handler(service, routers=("feedback",))
    vote = {"query": "boat", "image_id": "0" * 16, "vote": 1, "session": "s"}

    def status(body: dict[str, object], declared: str | None) -> int:
        event = http_event(
            "POST",
            "/api/feedback",
            headers={"content-type": "application/json"},
            body=json.dumps(body).encode(),
        )
        del event["headers"]["content-length"]
        if declared is not None:
            event["headers"]["content-length"] = declared
        return int(handler(event, FakeContext())["statusCode"])

    padded = vote | {"padding": "x" * 20_000}
    assert [status(padded, declared) for declared in (None, "0", "20")] == [413, 413, 413]
    assert status(vote, None) == 404  # parsed: the image it names does not exist


def test_the_local_cache_of_index_files_evicts_the_least_recently_used(
    tmp_path, monkeypatch
) -> None:
    """A warm function downloads every new build of the open shard; /tmp must not fill up."""
    megabyte = 1 << 20
    capacity = CACHE_HEADROOM + int(2.5 * megabyte)  # room for two of the files below

    def disk_usage(path: object) -> SimpleNamespace:
        used = sum(f.stat().st_size for f in tmp_path.rglob("*") if f.is_file())
        return SimpleNamespace(total=capacity, used=used, free=capacity - used)

    monkeypatch.setattr("imgsearch.storage.aws.shutil.disk_usage", disk_usage)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    install_cheap_transactions()
    with mock_aws():
        s3 = boto3.client("s3", aws_access_key_id="x", aws_secret_access_key="x")
        s3.create_bucket(Bucket="cache-test")
        for name in "abc":
            s3.put_object(Bucket="cache-test", Key=f"index/{name}", Body=name.encode() * megabyte)
        store = S3ObjectStore(s3, "cache-test", tmp_path)
        first, second = store.local_path("index/a"), store.local_path("index/b")
        with first.open("rb") as still_mapped:
            time.sleep(0.01)
            store.local_path("index/a")  # used again: b is now the least recently used
            third = store.local_path("index/c")
            assert first.is_file() and third.is_file() and not second.exists()
            store.local_path("index/b")  # evicted files come back on demand
            assert not first.exists()
            assert still_mapped.read(1) == b"a"  # a reader keeps what it opened


@pytest.mark.model  # the functions load the model
def test_hostile_files_through_the_bucket_are_refused_with_their_reasons(cloud: Cloud) -> None:
    cases = corpus(max_bytes=cloud.functions["EmbedFunction"].service.settings.max_image_bytes)
    for case in cases:
        cloud.upload(f"hostile/{case.name}", case.data)
    cloud.upload("hostile/good.jpg", demo_image("lotus"))
    assert no_failures(cloud.queue.drain(max_invocations=40))  # refusals are not retried
    for case in cases:
        status = cloud.api.request(
            "GET", "/api/uploads/status", params={"key": f"hostile/{case.name}"}
        ).json()
        if case.refusal is None:
            assert status["status"] == "present", (case.name, status)
        else:
            assert status["status"] == "refused" and status["reason"], (case.name, status)
    accepted = 1 + sum(case.refusal is None for case in cases)
    assert cloud.api.request("GET", "/api/health").json()["images"] == accepted
    assert "hostile/good.jpg" in cloud.search("lotus")[:3]


@pytest.mark.model  # the functions load the model
def test_decoding_bombs_through_the_bucket_are_refused_from_their_headers(cloud: Cloud) -> None:
    """The embed function decodes inline (IMGSEARCH_DECODE_WORKERS=0 in the template), under
    the same header checks as the API's workers: each bomb is refused with its reason or
    decoded within bounds (tests/test_decoding.py measures the memory). Every bomb the
    headers refuse, and one accepted bomb per format (each costs a full decode and embed)."""
    formats: set[str] = set()
    cases = []
    for case in bombs():
        extension = case.name.rsplit(".", 1)[-1]
        if case.refusal is not None:
            cases.append(case)
        elif extension not in formats:
            cases.append(case)
            formats.add(extension)
    embed = cloud.functions["EmbedFunction"].service
    limits = DecodeLimits.from_settings(embed.settings)
    for case in cases:
        cloud.upload(f"bombs/{case.name}", case.data)
    assert no_failures(cloud.queue.drain(max_invocations=40))
    for case in cases:
        status = cloud.api.request(
            "GET", "/api/uploads/status", params={"key": f"bombs/{case.name}"}
        ).json()
        if case.refusal is None:
            assert status["status"] == "present", (case.name, status)
        else:
            assert status["status"] == "refused", (case.name, status)
            with pytest.raises(ImageRefused) as expected:  # the same refusal, with its reason
                decode_image(case.data, limits, draft_size=embed.parts.ingestor.draft_box)
            assert status["reason"] == str(expected.value), case.name
    accepted = sum(case.refusal is None for case in cases)
    assert cloud.api.request("GET", "/api/health").json()["images"] == accepted


@pytest.mark.model  # the functions load the model
def test_the_search_function_reports_query_latency_by_kind(cloud: Cloud, capsys) -> None:
    """Powertools metrics (EMF lines in the function's log): one QueryLatency per query, with
    its kind, as the template's dashboard reads them."""
    from urllib3.filepost import encode_multipart_formdata

    for key, data in {
        "elephant.jpg": demo_image("elephant"),
        "pizza.jpg": demo_image("pizza"),
    }.items():
        cloud.upload(key, data)
    assert no_failures(cloud.queue.drain())
    pizza = cloud.api.request("GET", "/api/images", params={"key": "pizza.jpg"}).json()
    pizza_id = pizza["results"][0]["id"]
    vote = {"query": "elephant", "image_id": pizza_id, "vote": 1, "session": "s1"}
    assert cloud.api.request("POST", "/api/feedback", json_body=vote).status == 200
    capsys.readouterr()

    cloud.search("elephant")
    cloud.search("elephant", session="s1")  # re-ranked by what the vote taught
    assert cloud.api.request("GET", f"/api/images/{pizza_id}/similar").status == 200
    body, content_type = encode_multipart_formdata(
        {"file": ("photo.jpg", demo_image("elephant"), "image/jpeg")}
    )
    found = cloud.api.request(
        "POST", "/api/search/image", body=body, headers={"content-type": content_type}
    )
    assert found.status == 200, found.body
    assert cloud.api.request("GET", "/api/health").status == 200  # not a query

    latencies = []
    for line in capsys.readouterr().out.splitlines():
        if line.startswith('{"_aws"') and "QueryLatency" in line:
            blob = json.loads(line)
            assert blob["_aws"]["CloudWatchMetrics"][0]["Namespace"] == "imgsearch"
            assert blob["_aws"]["CloudWatchMetrics"][0]["Dimensions"] == [["kind", "service"]]
            latencies.append((blob["kind"], blob["QueryLatency"]))
    assert [kind for kind, _ in latencies] == ["keyword", "learned", "similar", "reverse"]
    assert all(0 < value < 30_000 for _, values in latencies for value in values)
