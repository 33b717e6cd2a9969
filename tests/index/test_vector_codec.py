"""S3 Vectors' vectors written into requests and read from answers by orjson
(index/s3vectors.py `VectorCodec`): the same requests and answers as botocore's own."""

from __future__ import annotations

import json
from dataclasses import asdict, replace

import boto3
import numpy as np
import pytest
from botocore.awsrequest import AWSResponse
from botocore.exceptions import ClientError, ParamValidationError

from imgsearch.index.s3vectors import VectorBucket, VectorsState, _outgoing_values
from imgsearch.storage.wire import fill_body


class Raw:
    def __init__(self, body: bytes) -> None:
        self.body = body

    def stream(self, **_):
        yield self.body


def client_answering(answer: dict, sent: list[bytes], status: int = 200):
    client = boto3.client(
        "s3vectors",
        region_name="us-east-1",
        aws_access_key_id="test",
        aws_secret_access_key="test",
    )

    def respond(request, **_):
        sent.append(request.body)
        body = json.dumps(answer).encode()
        headers = {"content-type": "application/json"}
        if status >= 300:
            headers["x-amzn-errortype"] = "NotFoundException"
        return AWSResponse(request.url, status, headers, Raw(body))

    client.meta.events.register("before-send.s3vectors", respond)
    return client


def _values_out(request: dict) -> list[list[float]]:
    """The request's vectors' values, taken out of it (replaced by None)."""
    if "queryVector" in request:
        values, request["queryVector"]["float32"] = request["queryVector"]["float32"], None
        return [values]
    taken = []
    for vector in request["vectors"]:
        taken.append(vector["data"]["float32"])
        vector["data"]["float32"] = None
    return taken


def test_vector_codec_sends_and_reads_what_botocore_would() -> None:
    rng = np.random.default_rng(5)
    rows = rng.normal(size=(3, 1280)).astype(np.float32)
    answer = {
        "vectors": [
            {"key": f"k{i}", "data": {"float32": row.tolist()}, "metadata": {"part": i}}
            for i, row in enumerate(rows)
        ]
    }
    plain_sent: list[bytes] = []
    plain = client_answering(answer, plain_sent)
    codec_sent: list[bytes] = []
    bucket = VectorBucket(client_answering(answer, codec_sent), "bucket", "images")

    bucket.query("images", rows[0], 100, [1, 2])
    plain.query_vectors(
        vectorBucketName="bucket",
        indexName="images",
        topK=100,
        queryVector={"float32": rows[0].tolist()},
        returnDistance=True,
        filter={"part": {"$in": [1, 2]}},
    )
    vectors = [{"key": f"k{i}", "data": {"float32": row.tolist()}} for i, row in enumerate(rows)]
    bucket.put("images", vectors)
    plain.put_vectors(vectorBucketName="bucket", indexName="images", vectors=vectors)
    # The same requests, each value the same float32 (written with fewer digits).
    codec_requests, plain_requests = (
        [json.loads(b) for b in codec_sent],
        [json.loads(b) for b in plain_sent],
    )
    assert len(codec_requests) == len(plain_requests) == 2
    for codec_request, plain_request in zip(codec_requests, plain_requests, strict=True):
        codec_values, plain_values = _values_out(codec_request), _values_out(plain_request)
        assert codec_request == plain_request  # but for the values
        assert len(codec_values) == len(plain_values) >= 1
        for written, plain_written in zip(codec_values, plain_values, strict=True):
            assert np.array_equal(np.float32(written), np.float32(plain_written))
            assert len(written) == 1280
    assert len(codec_sent[1]) < 0.75 * len(plain_sent[1])

    found = bucket.get(["k0", "k1", "k2"], data=True)
    assert all(isinstance(found[f"k{i}"], np.ndarray) for i in range(3))
    parsed = plain.get_vectors(
        vectorBucketName="bucket", indexName="images", keys=["k0"], returnData=True
    )
    for vector in parsed["vectors"]:
        key = vector["key"]
        assert np.array_equal(found[key], np.asarray(vector["data"]["float32"], np.float32))
        assert found[key].dtype == np.float32


def test_vector_codec_leaves_error_answers_to_botocore() -> None:
    sent: list[bytes] = []
    bucket = VectorBucket(
        client_answering({"message": "no such index"}, sent, status=404), "bucket", "images"
    )
    with pytest.raises(ClientError) as refused:
        bucket.get(["k"], data=True)
    assert refused.value.response["Error"]["Code"] == "NotFoundException"
    assert refused.value.response["Error"]["Message"] == "no such index"


def test_vector_codec_refuses_values_json_cannot_say() -> None:
    """NaN and infinities are refused before anything is sent (botocore would send them as
    strings, which the service refuses)."""
    sent: list[bytes] = []
    bucket = VectorBucket(client_answering({"vectors": []}, sent), "bucket", "images")
    for bad in (np.nan, np.inf, -np.inf):
        vector = np.zeros(4, np.float32)
        vector[1] = bad
        with pytest.raises(ValueError, match="finite"):
            bucket.query("images", vector, 5, None)
        with pytest.raises(ValueError, match="finite"):
            bucket.put("images", [{"key": "k", "data": {"float32": vector.tolist()}}])
    assert not sent
    assert _outgoing_values.take() is None


def test_vector_codec_sends_the_values_of_rows_of_any_layout() -> None:
    """A strided view, float64 and big-endian rows go out as their float32 values; a row
    that is not one row is refused before anything is sent."""
    rng = np.random.default_rng(3)
    matrix = rng.normal(size=(8, 6))
    rows = [matrix[:, 2], matrix[1], matrix[2].astype(">f4"), np.asfortranarray(matrix)[3]]
    sent: list[bytes] = []
    bucket = VectorBucket(client_answering({"vectors": []}, sent), "bucket", "images")
    for row in rows:
        bucket.query("images", row, 5, None)
        written = json.loads(sent[-1])["queryVector"]["float32"]
        assert np.array_equal(np.float32(written), np.asarray(row, np.float32))
    with pytest.raises(ValueError, match="one row"):
        bucket.query("images", matrix[:2].astype(np.float32), 5, None)
    assert len(sent) == len(rows)


def test_vector_codec_forgets_the_values_of_a_request_that_failed() -> None:
    """A request refused before it is sent leaves no values for this thread's next one."""
    sent: list[bytes] = []
    client = client_answering({"vectors": []}, sent)
    bucket = VectorBucket(client, "bucket", "images")
    with pytest.raises(ParamValidationError):
        bucket.query("images", np.ones(4, np.float32), 0, None)  # topK below 1
    assert _outgoing_values.take() is None
    client.query_vectors(
        vectorBucketName="bucket", indexName="images", topK=5, queryVector={"float32": [0.5] * 4}
    )
    assert json.loads(sent[-1])["queryVector"]["float32"] == [0.5] * 4


def test_a_state_reads_across_versions() -> None:
    """A finished publication's state leaves out the empty `uncounted` (older readers knew no
    such field), and fields a newer writer adds are ignored, so that a deploy or a rollback
    with processes of two versions does not read the other's state as damaged."""
    written = VectorsState(3, 2, "m", 4, 2, ("a",), 1.0, counted=(1, 1))
    state = VectorsState.from_json(json.dumps({**asdict(written), "later": 1}).encode())
    assert state == written
    assert "uncounted" not in json.loads(state.to_json())
    assert VectorsState.from_json(state.to_json()) == state
    announced = replace(state, uncounted=("a", "b"))
    assert VectorsState.from_json(announced.to_json()).uncounted == ("a", "b")


def test_float32_values_are_written_with_digits_that_give_them_back() -> None:
    """Finite float32s of every kind (random bit patterns, the extremes, subnormals, signed
    zeros) read back the same."""
    rng = np.random.default_rng(11)
    values = np.concatenate(
        [
            rng.normal(size=5000).astype(np.float32),
            (rng.normal(size=5000) * 1e-30).astype(np.float32),
            (rng.normal(size=5000) * 1e30).astype(np.float32),
            rng.integers(0, 2**32, 50_000, dtype=np.uint64).astype(np.uint32).view(np.float32),
            np.array(
                [0.0, -0.0, 1.0, -1.0, 0.1, 1 / 3, 1e-45, -1e-45, 3.4028235e38, 1.1754944e-38],
                np.float32,
            ),
        ]
    )
    values = values[np.isfinite(values)]
    for written in (values, np.array([], np.float32)):
        params = {"body": b'{"data": {"float32": [0.0]}}'}
        fill_body(params, lambda body, written=written: body["data"].update(float32=written))
        read = json.loads(params["body"])["data"]["float32"]
        assert np.array_equal(np.array(read, np.float64).astype(np.float32), written)
