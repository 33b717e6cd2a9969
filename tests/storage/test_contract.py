"""One contract for every storage adapter: the local directory + SQLite, and S3 + DynamoDB.

Every test taking the `storage`, `objects` or `table` fixture runs against both backends, built
by `open_storage` exactly as the application builds them. The AWS backend runs on moto, with
the bucket and tables created from infra/template.yaml.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

import imgsearch.storage.local
from imgsearch.config import Settings
from imgsearch.storage import (
    ANY_VERSION,
    Delete,
    Increment,
    InvalidKey,
    NotFound,
    ObjectStore,
    PreconditionFailed,
    Put,
    Storage,
    StorageError,
    StoredObject,
    Table,
    in_parallel,
    open_storage,
)
from imgsearch.storage.local import LocalObjectStore, SqliteTable

THREADS = 4
INCREMENTS_PER_WORKER = 5
PROCESSES = 4


@pytest.fixture
def objects(storage: Storage) -> ObjectStore:
    return storage.objects


@pytest.fixture
def table(storage: Storage) -> Table:
    return storage.catalog


# --- Object store ---------------------------------------------------------------------------


def test_put_get_head_round_trip(objects: ObjectStore) -> None:
    key = "photos/été 2024/üñí.jpg"
    etag = objects.put(key, b"jpeg bytes", content_type="image/jpeg")

    stored = objects.get(key)
    info = objects.head(key)
    assert stored.data == b"jpeg bytes"
    assert stored.etag == etag == info.etag
    assert (info.key, info.size) == (key, len(b"jpeg bytes"))
    assert abs(info.last_modified - time.time()) < 60


def test_replacing_an_object_changes_its_etag(objects: ObjectStore) -> None:
    first = objects.put("doc", b"one")
    second = objects.put("doc", b"two")
    assert first != second
    assert objects.get("doc") == StoredObject(data=b"two", etag=second)


def test_a_put_whose_etag_is_not_wanted_stores_the_same_object(objects: ObjectStore) -> None:
    """`etag_wanted=False` may skip computing the ETag it returns, never the write: the object
    reads back with its ETag, the one a put that wanted it got, and conditions hold on it."""
    objects.put("photo.jpg", b"jpeg bytes", content_type="image/jpeg", etag_wanted=False)
    wanted = objects.put("copy.jpg", b"jpeg bytes", content_type="image/jpeg")
    stored = objects.get("photo.jpg")
    assert stored.data == b"jpeg bytes"
    assert stored.etag == objects.head("photo.jpg").etag == wanted
    replaced = objects.put("photo.jpg", b"other", if_match=stored.etag)
    assert replaced == objects.head("photo.jpg").etag
    with pytest.raises(PreconditionFailed):
        objects.put("photo.jpg", b"again", if_none_match=True, etag_wanted=False)


def test_missing_objects_are_not_found(objects: ObjectStore) -> None:
    for read in (objects.get, objects.head, objects.local_path):
        with pytest.raises(NotFound):
            read("no/such/key")


def test_delete_is_idempotent(objects: ObjectStore) -> None:
    objects.put("a/b", b"x")
    objects.delete("a/b")
    objects.delete("a/b")
    objects.delete("never/existed")
    with pytest.raises(NotFound):
        objects.get("a/b")
    assert list(objects.list()) == []


def test_list_filters_by_prefix_in_key_order(objects: ObjectStore) -> None:
    # "img-x" < "img/a.jpg" < "img/a/1.jpg": the order of whole keys, not of a directory walk.
    keys = ["zeta", "img/b.jpg", "index/0", "img/a/1.jpg", "img-x", "img/a.jpg"]
    for key in keys:
        objects.put(key, key.encode())

    def listed(prefix: str = "") -> list[str]:
        return [info.key for info in objects.list(prefix)]

    assert listed() == sorted(keys)
    assert listed("img/") == ["img/a.jpg", "img/a/1.jpg", "img/b.jpg"]
    assert listed("img") == ["img-x", "img/a.jpg", "img/a/1.jpg", "img/b.jpg"]
    assert listed("img/a") == ["img/a.jpg", "img/a/1.jpg"]
    assert listed("nothing/") == []
    assert listed("../") == []
    info = next(objects.list("index/"))
    assert (info.size, info.etag) == (len(b"index/0"), objects.head("index/0").etag)


def test_create_only_put_fails_when_the_key_exists(objects: ObjectStore) -> None:
    etag = objects.put("shard/0", b"first", if_none_match=True)
    with pytest.raises(PreconditionFailed):
        objects.put("shard/0", b"second", if_none_match=True)
    assert objects.get("shard/0").data == b"first"
    assert objects.get("shard/0").etag == etag


def test_compare_and_swap_put_of_an_object(objects: ObjectStore) -> None:
    stale = objects.put("manifest", b"v1")
    current = objects.put("manifest", b"v2", if_match=stale)
    with pytest.raises(PreconditionFailed):
        objects.put("manifest", b"v3", if_match=stale)
    assert objects.get("manifest").data == b"v2"
    assert objects.put("manifest", b"v3", if_match=current) == objects.head("manifest").etag
    with pytest.raises(PreconditionFailed):
        objects.put("missing", b"x", if_match=current)
    with pytest.raises(NotFound):
        objects.get("missing")


INVALID_KEYS = [
    "",
    "../x",
    "a/../../b",
    "a/./b",
    "..",
    "/etc/passwd",
    "a//b",
    "trailing/",
    "nul\x00byte",
    "new\nline",
    "back\\slash",
    "/".join(["x" * 204] * 5) + "x",  # 1025 bytes
    "x" * 256,  # a segment longer than file systems allow a file name
    "a/.imgsearch-locks/0.lock",
]


def test_deleting_a_folders_last_object_leaves_no_empty_folder(tmp_path: Path) -> None:
    objects = LocalObjectStore(tmp_path)
    objects.put("a/b/c/photo.jpg", b"x")
    objects.put("a/other.jpg", b"y")
    objects.delete("a/b/c/photo.jpg")
    assert not (tmp_path / "a" / "b").exists() and (tmp_path / "a" / "other.jpg").is_file()
    objects.delete("a/other.jpg")
    assert not (tmp_path / "a").exists() and tmp_path.is_dir()
    objects.put("a/b/c/photo.jpg", b"z")
    assert objects.get("a/b/c/photo.jpg").data == b"z"


def test_puts_survive_deletes_removing_their_folder(tmp_path: Path) -> None:
    """A delete removes the folders it empties while puts of other keys into them run: each
    put still lands (its folder made again), none fails."""
    objects = LocalObjectStore(tmp_path)
    failures: list[BaseException] = []

    def churn(worker: int) -> None:
        for number in range(150):
            key = f"deep/er/{worker}-{number}.jpg"
            try:
                objects.put(key, b"x")
                assert objects.get(key).data == b"x"
                objects.delete(key)
            except BaseException as error:  # every failure is the finding
                failures.append(error)

    with ThreadPoolExecutor(THREADS) as pool:
        list(pool.map(churn, range(THREADS)))
    assert failures == []
    assert not (tmp_path / "deep").exists()


@pytest.mark.parametrize("key", INVALID_KEYS)
def test_invalid_keys_are_refused(objects: ObjectStore, key: str) -> None:
    operations: list[Callable[[], object]] = [
        lambda: objects.put(key, b"x"),
        lambda: objects.put(key, b"x", if_none_match=True),
        lambda: objects.get(key),
        lambda: objects.head(key),
        lambda: objects.delete(key),
        lambda: objects.local_path(key),
        lambda: objects.url(key),
    ]
    for operation in operations:
        with pytest.raises(InvalidKey):
            operation()
    assert list(objects.list()) == []


def test_a_key_of_1024_utf8_bytes_is_accepted(objects: ObjectStore) -> None:
    key = "/".join(["é" * 102] * 5)  # 5 segments of 204 bytes, 4 slashes
    assert len(key.encode()) == 1024
    objects.put(key, b"x")
    assert objects.get(key).data == b"x"


def test_local_path_holds_the_content(objects: ObjectStore) -> None:
    objects.put("index/shard-0.ann", b"\x00\x01" * 1000)
    path = objects.local_path("index/shard-0.ann")
    assert path.read_bytes() == b"\x00\x01" * 1000
    assert objects.local_path("index/shard-0.ann") == path


def test_url_is_none_or_names_the_key(objects: ObjectStore) -> None:
    objects.put("img/cat.jpg", b"x")
    url = objects.url("img/cat.jpg", expires=60)
    # S3 only accepts Signature Version 4, whose URLs carry X-Amz-Expires.
    assert url is None or ("img/cat.jpg" in url and "X-Amz-Expires=60" in url)


# --- Table ----------------------------------------------------------------------------------


def test_put_and_get_an_item(table: Table) -> None:
    assert table.put("image#1", "meta", {"width": 640, "tags": ["cat"]}) == 1
    assert table.get("image#1", "meta") == {
        "pk": "image#1",
        "sk": "meta",
        "version": 1,
        "width": 640,
        "tags": ["cat"],
    }
    assert table.get("image#1", "other") is None
    assert table.get("image#2", "meta") is None


def test_put_replaces_all_attributes_and_bumps_the_version(table: Table) -> None:
    table.put("p", "s", {"old": 1, "kept": 1})
    assert table.put("p", "s", {"kept": 2}) == 2
    assert table.get("p", "s") == {"pk": "p", "sk": "s", "version": 2, "kept": 2}


def test_tables_are_separate(storage: Storage) -> None:
    storage.catalog.put("p", "s", {"in": "catalog"})
    assert storage.feedback.get("p", "s") is None


def test_create_only_put(table: Table) -> None:
    assert table.put("p", "s", {"n": 1}, expected_version=0) == 1
    with pytest.raises(PreconditionFailed):
        table.put("p", "s", {"n": 2}, expected_version=0)
    assert table.get("p", "s")["n"] == 1  # type: ignore[index]


def test_compare_and_swap_put_of_an_item(table: Table) -> None:
    table.put("p", "s", {"n": 1})
    assert table.put("p", "s", {"n": 2}, expected_version=1) == 2
    with pytest.raises(PreconditionFailed):
        table.put("p", "s", {"n": 3}, expected_version=1)
    with pytest.raises(PreconditionFailed):
        table.put("p", "missing", {"n": 3}, expected_version=1)
    assert table.get("p", "s") == {"pk": "p", "sk": "s", "version": 2, "n": 2}
    assert table.get("p", "missing") is None


def test_delete_with_and_without_expected_version(table: Table) -> None:
    table.put("p", "s", {"n": 1})
    table.put("p", "s", {"n": 2})
    with pytest.raises(PreconditionFailed):
        table.delete("p", "s", expected_version=1)
    assert table.get("p", "s")["version"] == 2  # type: ignore[index]
    table.delete("p", "s", expected_version=2)
    assert table.get("p", "s") is None
    table.delete("p", "s")  # missing is fine...
    with pytest.raises(PreconditionFailed):
        table.delete("p", "s", expected_version=2)  # ...unless a version is expected
    assert table.put("p", "s", {"n": 3}, expected_version=0) == 1


def test_increment_creates_missing_numbers_at_zero(table: Table) -> None:
    item = table.increment("stats", "image#1", {"clicks": 1, "score": 0.5})
    assert item == {"pk": "stats", "sk": "image#1", "version": 1, "clicks": 1, "score": 0.5}
    item = table.increment("stats", "image#1", {"clicks": 2, "views": 3}, {"label": "cat"})
    assert item == {
        "pk": "stats",
        "sk": "image#1",
        "version": 2,
        "clicks": 3,
        "score": 0.5,
        "views": 3,
        "label": "cat",
    }
    assert table.get("stats", "image#1") == item
    assert table.put("stats", "image#1", {"clicks": 0}, expected_version=2) == 3


def test_query_by_prefix_and_limit(table: Table) -> None:
    for sk in ["b/2", "a", "b/1", "c", "b/3", "b/10"]:
        table.put("p", sk, {"sk_copy": sk})
    table.put("other", "b/1", {})

    def sort_keys(**options: Any) -> list[str]:
        return [item["sk"] for item in table.query("p", **options)]

    assert sort_keys() == ["a", "b/1", "b/10", "b/2", "b/3", "c"]
    assert sort_keys(prefix="b/") == ["b/1", "b/10", "b/2", "b/3"]
    assert sort_keys(prefix="b/", limit=2) == ["b/1", "b/10"]
    assert sort_keys(limit=0) == []
    assert sort_keys(prefix="z") == []
    assert list(table.query("nobody")) == []
    first = next(table.query("p", prefix="c"))
    assert first == {"pk": "p", "sk": "c", "version": 1, "sk_copy": "c"}


def test_query_pages_through_many_items(table: Table, monkeypatch: pytest.MonkeyPatch) -> None:
    # 30 items of 40 kB: several SQLite pages of 7 rows, and more than DynamoDB's 1 MB page.
    monkeypatch.setattr(imgsearch.storage.local, "QUERY_PAGE_SIZE", 7)
    sort_keys = [f"item/{index:02d}" for index in range(30)]
    for sk in sort_keys:
        table.put("many", sk, {"blob": "x" * 40_000}, expected_version=0)
    assert [item["sk"] for item in table.query("many")] == sort_keys
    assert [item["sk"] for item in table.query("many", limit=26)] == sort_keys[:26]


def test_get_many_reads_what_exists_in_batches(table: Table) -> None:
    # 230 keys: three BatchGetItem requests of at most 100 keys on DynamoDB.
    for index in range(0, 230, 2):
        table.put("image#many", f"n{index:03d}", {"n": index, "list": [index, 0.5]})
    keys = [("image#many", f"n{index:03d}") for index in range(230)]
    found = table.get_many([*keys, keys[0], ("image#other", "n000")])  # a repeat, a stranger
    assert set(found) == {key for key in keys if int(key[1][1:]) % 2 == 0}
    assert found["image#many", "n042"] == {
        "pk": "image#many",
        "sk": "n042",
        "version": 1,
        "n": 42,
        "list": [42, 0.5],
    }
    assert table.get_many([]) == {}
    with pytest.raises(ValueError):
        table.get_many([("", "s")])


def test_get_many_reads_only_the_attributes_asked_for(table: Table) -> None:
    table.put("image#a", "neighbours", {"ids": "x y", "distances": "0.1 0.2", "n": 7})
    table.put("image#b", "neighbours", {"ids": "z"})  # without one of those asked for
    keys = [("image#a", "neighbours"), ("image#b", "neighbours")]
    found = table.get_many(keys, attributes=("distances", "n", "version"))
    assert found == {
        keys[0]: {
            "pk": "image#a",
            "sk": "neighbours",
            "version": 1,
            "distances": "0.1 0.2",
            "n": 7,
        },
        keys[1]: {"pk": "image#b", "sk": "neighbours", "version": 1},
    }
    assert table.get_many(keys)[keys[0]]["ids"] == "x y"  # all of them without `attributes`
    with pytest.raises(ValueError, match="non-empty names"):
        table.get_many(keys, attributes=[])
    with pytest.raises(ValueError, match="non-empty names"):
        table.get_many(keys, attributes=(n for n in ()))
    with pytest.raises(TypeError, match="not a string"):
        table.get_many(keys, attributes="distances")


@pytest.mark.parametrize("storage", ["aws"], indirect=True)
def test_a_projected_batch_read_asks_once_for_each_name_and_resends_what_was_left(
    table: Table,
) -> None:
    """DynamoDB refuses a name projected twice (moto does not), and answers with the keys it
    left unprocessed, which are sent again with the same projection."""
    for n in range(10):
        table.put(f"image#{n}", "neighbours", {"ids": "a b", "distances": "0.1 0.2"})
    client = table._client  # type: ignore[attr-defined]
    sent: list[dict[str, Any]] = []
    left_some = False

    def record(request: Any, **_: Any) -> None:
        sent.append(json.loads(request.body)["RequestItems"][table.table_name])  # type: ignore[attr-defined]

    def leave_four(response_dict: dict[str, Any], **_: Any) -> None:
        nonlocal left_some
        if left_some or response_dict["status_code"] >= 300:
            return
        left_some = True
        body = json.loads(response_dict["body"])
        items = body["Responses"][table.table_name]  # type: ignore[attr-defined]
        left, body["Responses"][table.table_name] = items[:4], items[4:]  # type: ignore[attr-defined]
        body["UnprocessedKeys"] = {
            table.table_name: {  # type: ignore[attr-defined]
                **sent[-1],
                "Keys": [{"pk": item["pk"], "sk": item["sk"]} for item in left],
            }
        }
        response_dict["body"] = json.dumps(body).encode()

    client.meta.events.register("before-sign.dynamodb.BatchGetItem", record)
    client.meta.events.register_first("before-parse.dynamodb.BatchGetItem", leave_four)
    try:
        keys = [(f"image#{n}", "neighbours") for n in range(10)]
        found = table.get_many(keys, attributes=("distances", "pk", "version", "distances"))
    finally:
        client.meta.events.unregister("before-sign.dynamodb.BatchGetItem", record)
        client.meta.events.unregister("before-parse.dynamodb.BatchGetItem", leave_four)
    assert [len(request["Keys"]) for request in sent] == [10, 4]
    for request in sent:
        names = list(request["ExpressionAttributeNames"].values())
        assert sorted(names) == ["distances", "pk", "sk", "version"]  # each once
        assert request["ProjectionExpression"].count(",") == len(names) - 1
    assert set(found) == set(keys)
    assert all(set(item) == {"pk", "sk", "version", "distances"} for item in found.values())


def test_put_many_writes_every_item_at_the_next_version(table: Table) -> None:
    table.put("p", "old", {"kept": 1, "dropped": 2})
    table.put("p", "old", {"kept": 1, "dropped": 2})
    # 60 items: three BatchWriteItem requests of at most 25 on DynamoDB.
    puts = [Put("p", f"new{index:02d}", {"n": index}, expected_version=0) for index in range(59)]
    table.put_many([*puts, Put("p", "old", {"kept": 3}, expected_version=2)])
    items = {item["sk"]: item for item in table.query("p")}
    assert len(items) == 60
    assert items["new07"] == {"pk": "p", "sk": "new07", "version": 1, "n": 7}
    assert items["old"] == {"pk": "p", "sk": "old", "version": 3, "kept": 3}
    # Versions go on from there for the compare-and-swap writers.
    assert table.put("p", "old", {"kept": 4}, expected_version=3) == 4
    table.put_many([])


def test_put_many_refuses_what_it_cannot_write_as_asked(table: Table) -> None:
    with pytest.raises(ValueError, match="version it was read at"):
        table.put_many([Put("p", "s", {"n": 1})])  # ANY_VERSION: no condition to keep
    with pytest.raises(ValueError, match="twice"):
        table.put_many([Put("p", "s", {}, expected_version=0)] * 2)
    with pytest.raises(ValueError):
        table.put_many([Put("p", "s", {"x": float("nan")}, expected_version=0)])
    with pytest.raises(ValueError):
        table.put_many([Put("p", "s", {"version": 3}, expected_version=0)])
    with pytest.raises(TypeError):
        table.put_many([Delete("p", "s")])  # type: ignore[list-item]
    assert table.get("p", "s") is None


def _transaction_fixture(table: Table) -> None:
    table.put("t", "keep", {"n": 1})
    table.put("t", "gone", {"n": 2})
    table.increment("t", "counter", {"count": 5})


def test_transaction_with_a_failing_condition_changes_nothing(table: Table) -> None:
    _transaction_fixture(table)
    before = list(table.query("t"))
    failing_conditions = [
        Delete("t", "gone", expected_version=9),
        Put("t", "keep", {"n": 0}, expected_version=0),
        Put("t", "absent", {"n": 0}, expected_version=1),
    ]
    for failing in failing_conditions:
        writes = [
            Put("t", "new", {"n": 3}),
            Put("t", "keep", {"n": 10}, expected_version=1),
            Delete("t", "gone"),
            Increment("t", "counter", {"count": 1}),
        ]
        writes = [write for write in writes if write.sk != failing.sk] + [failing]
        with pytest.raises(PreconditionFailed):
            table.transact(writes)
        assert list(table.query("t")) == before


def test_transaction_applies_every_write(table: Table) -> None:
    _transaction_fixture(table)
    table.transact(
        [
            Put("t", "new", {"n": 3}, expected_version=0),
            Put("t", "keep", {"n": 10}, expected_version=1),
            Delete("t", "gone", expected_version=1),
            Increment("t", "counter", {"count": 1}, {"state": "done"}),
            Put("u", "other-partition", {"n": 4}, expected_version=ANY_VERSION),
        ]
    )
    assert table.get("t", "new") == {"pk": "t", "sk": "new", "version": 1, "n": 3}
    assert table.get("t", "keep") == {"pk": "t", "sk": "keep", "version": 2, "n": 10}
    assert table.get("t", "gone") is None
    assert table.get("t", "counter") == {
        "pk": "t",
        "sk": "counter",
        "version": 2,
        "count": 6,
        "state": "done",
    }
    assert table.get("u", "other-partition")["version"] == 1  # type: ignore[index]
    table.transact([Put("u", "other-partition", {"n": 5})])  # unconditional: bumps the version
    assert table.get("u", "other-partition")["version"] == 2  # type: ignore[index]


def test_transactions_refuse_what_dynamodb_refuses(table: Table) -> None:
    with pytest.raises(ValueError):
        table.transact([Put("t", "same", {}), Delete("t", "same")])
    with pytest.raises(ValueError):
        table.transact([Put("t", f"{index}", {}) for index in range(101)])
    table.transact([])


VALUES: dict[str, Any] = {
    "int": 42,
    "negative": -7,
    "big_int": 2**53 + 1,
    "float": 0.1,
    "third": 1 / 3,
    "tiny": 1e-100,
    "negative_float": -2.5,
    "text": "héllo",
    "empty_text": "",
    "true": True,
    "false": False,
    "null": None,
    "list": [1, 2.5, "x", None, False, [], {}],
    "nested": {"embedding": [0.125, -1.5e-7, 3.0e10], "meta": {"deep": {"deeper": [1, 2]}}},
}


def test_values_round_trip(table: Table) -> None:
    table.put("p", "values", VALUES)
    item = table.get("p", "values")
    assert item is not None
    assert {name: item[name] for name in VALUES} == VALUES
    for name in ("int", "negative", "big_int"):
        assert type(item[name]) is int
    for name in ("float", "third", "tiny", "negative_float"):
        assert type(item[name]) is float
    assert [type(value) for value in item["nested"]["embedding"][:2]] == [float, float]
    assert type(item["true"]) is bool
    # DynamoDB trims trailing zeros, so a float with an integral value may come back as an
    # int; it still compares equal.
    table.put("p", "integral", {"value": 2.0})
    assert table.get("p", "integral")["value"] == 2.0  # type: ignore[index]


def test_values_round_trip_through_batch_writes_and_reads(table: Table) -> None:
    # DynamoDB's batches have their items written and read by orjson (aws.py ItemCodec), not
    # botocore: every kind of value comes back as a single put and get give it.
    _batch_round_trip(table, VALUES)


def test_map_keys_are_stored_as_strings_by_every_write(table: Table) -> None:
    table.put("p", "single", {"m": {1: "a"}})
    table.put_many([Put("p", "batch", {"m": {1: "a"}}, expected_version=0)])
    for sk in ("single", "batch"):
        assert table.get("p", sk)["m"] == {"1": "a"}  # type: ignore[index]


@pytest.mark.parametrize("storage", ["aws"], indirect=True)  # (SQLite rows are JSON)
def test_binary_values_round_trip_through_batches_on_dynamodb(table: Table) -> None:
    _batch_round_trip(table, {"bytes": b"\x00\xffraw", "deep": {"b": [b"\x01", "s"]}})


@pytest.mark.parametrize("storage", ["aws"], indirect=True)
def test_a_batch_whose_items_were_not_sent_fails(table: Table) -> None:
    """Without ItemCodec on its client, a batch write (read) would send only the placeholder
    it validates with and succeed having written (read) nothing: it raises instead."""
    import boto3

    plain = boto3.client(
        "dynamodb",
        region_name=table._client.meta.region_name,  # type: ignore[attr-defined]
        endpoint_url=table._client.meta.endpoint_url,  # type: ignore[attr-defined]
    )
    table._client = plain  # type: ignore[attr-defined]
    with pytest.raises(StorageError, match="without its items"):
        table.put_many([Put("p", "lost", {"n": 1}, expected_version=0)])
    with pytest.raises(StorageError, match="without its items"):
        table.get_many([("p", "lost")])


def _batch_round_trip(table: Table, values: dict[str, Any]) -> None:
    table.put_many([Put("p", f"batch{n}", values, expected_version=0) for n in range(30)])
    table.put("p", "single", values)
    found = table.get_many([("p", f"batch{n}") for n in range(30)] + [("p", "single")])
    single = table.get("p", "single")
    assert single is not None
    assert {name: single[name] for name in values} == values
    for n in range(30):
        item = found["p", f"batch{n}"]
        assert item == {**single, "sk": f"batch{n}"}
        assert [type(item[name]) for name in values] == [type(single[name]) for name in values]


def test_values_that_cannot_be_stored_are_refused(table: Table) -> None:
    for value in (float("nan"), float("inf")):
        with pytest.raises(ValueError):
            table.put("p", "bad", {"value": value})
    for reserved in ("pk", "sk", "version"):
        with pytest.raises(ValueError):
            table.put("p", "bad", {reserved: 1})
    with pytest.raises(ValueError):
        table.put("", "bad", {})
    assert table.get("p", "bad") is None


def test_every_write_refuses_values_that_cannot_be_stored(table: Table) -> None:
    writes: list[Callable[[], object]] = [
        lambda: table.increment("p", "bad", {"n": float("nan")}),
        lambda: table.increment("p", "bad", {"n": 1}, {"nested": {"deep": [1.0, float("inf")]}}),
        lambda: table.transact([Put("p", "bad", {"list": [float("-inf")]})]),
        lambda: table.transact([Increment("p", "bad", {"n": 1}, {"x": float("nan")})]),
    ]
    for write in writes:
        with pytest.raises(ValueError):
            write()
    assert table.get("p", "bad") is None


def test_reserved_words_as_attribute_names(table: Table) -> None:
    attrs = {"name": "cat.jpg", "size": 10, "status": "new", "data": [1], "timestamp": 1.5}
    table.put("images", "1", attrs, expected_version=0)
    table.put("images", "1", {**attrs, "status": "indexed"}, expected_version=1)
    item = table.increment("images", "1", {"count": 1, "size": 5}, {"status": "seen", "year": 1})
    expected = {**attrs, "status": "seen", "size": 15, "count": 1, "year": 1}
    assert item == {"pk": "images", "sk": "1", "version": 3, **expected}
    table.transact([Increment("images", "1", {"values": 1}, {"order": "asc"})])
    assert [item["order"] for item in table.query("images", prefix="1")] == ["asc"]


# --- Concurrency ----------------------------------------------------------------------------


def _cas_increment_object(objects: ObjectStore, key: str, times: int) -> None:
    """Add 1 to a counter object `times` times, by compare-and-swap with retries."""
    for _ in range(times):
        while True:
            current = objects.get(key)
            try:
                objects.put(key, b"%d" % (int(current.data) + 1), if_match=current.etag)
                break
            except PreconditionFailed:
                continue


def _cas_increment_item(table: Table, pk: str, sk: str, times: int) -> None:
    """Add 1 to a counter item `times` times, by compare-and-swap on its version."""
    for _ in range(times):
        while True:
            item = table.get(pk, sk)
            assert item is not None
            try:
                table.put(pk, sk, {"count": item["count"] + 1}, expected_version=item["version"])
                break
            except PreconditionFailed:
                continue


def _in_threads(work: Callable[[], None]) -> None:
    """Run `work` in THREADS threads released at once; re-raise any thread's failure."""
    start = threading.Barrier(THREADS)

    def run() -> None:
        start.wait()
        work()

    with ThreadPoolExecutor(THREADS) as pool:
        for future in [pool.submit(run) for _ in range(THREADS)]:
            future.result()


def test_compare_and_swap_counters_across_threads(storage: Storage) -> None:
    storage.objects.put("counter", b"0")
    storage.catalog.put("counter", "cas", {"count": 0})

    def work() -> None:
        _cas_increment_object(storage.objects, "counter", INCREMENTS_PER_WORKER)
        _cas_increment_item(storage.catalog, "counter", "cas", INCREMENTS_PER_WORKER)
        for _ in range(INCREMENTS_PER_WORKER):
            storage.catalog.increment("counter", "atomic", {"count": 1})

    _in_threads(work)
    total = THREADS * INCREMENTS_PER_WORKER
    assert storage.objects.get("counter").data == b"%d" % total
    assert storage.catalog.get("counter", "cas")["count"] == total  # type: ignore[index]
    atomic = storage.catalog.get("counter", "atomic")
    assert atomic is not None
    assert (atomic["count"], atomic["version"]) == (total, total)


def test_create_only_races_have_one_winner_across_threads(storage: Storage) -> None:
    object_winners: list[str] = []
    item_winners: list[str] = []

    def work() -> None:
        name = threading.current_thread().name
        with contextlib.suppress(PreconditionFailed):
            storage.objects.put("race", name.encode(), if_none_match=True)
            object_winners.append(name)
        with contextlib.suppress(PreconditionFailed):
            storage.catalog.put("race", "item", {"winner": name}, expected_version=0)
            item_winners.append(name)

    _in_threads(work)
    assert len(object_winners) == len(item_winners) == 1
    assert storage.objects.get("race").data == object_winners[0].encode()
    assert storage.catalog.get("race", "item")["winner"] == item_winners[0]  # type: ignore[index]


def _race_in_process(
    objects_root: Path,
    tables_path: Path,
    start: Any,
    results: Any,
) -> None:
    """One of several processes racing on the same data directory (run with spawn)."""
    objects = LocalObjectStore(objects_root)
    table = SqliteTable(tables_path, "catalog")
    start.wait()
    outcome = {}
    for name, create in {
        "object": lambda: objects.put("race", b"x", if_none_match=True),
        "item": lambda: table.put("race", "item", {}, expected_version=0),
    }.items():
        try:
            create()
            outcome[name] = True
        except PreconditionFailed:
            outcome[name] = False
    _cas_increment_object(objects, "counter", INCREMENTS_PER_WORKER)
    _cas_increment_item(table, "counter", "cas", INCREMENTS_PER_WORKER)
    for _ in range(INCREMENTS_PER_WORKER):
        table.increment("counter", "atomic", {"count": 1})
    results.put(outcome)


def test_local_adapters_across_processes(tmp_path: Path) -> None:
    objects_root, tables_path = tmp_path / "objects", tmp_path / "tables.sqlite3"
    LocalObjectStore(objects_root).put("counter", b"0")
    SqliteTable(tables_path, "catalog").put("counter", "cas", {"count": 0})

    context = multiprocessing.get_context("spawn")
    start, results = context.Barrier(PROCESSES), context.Queue()
    processes = [
        context.Process(target=_race_in_process, args=(objects_root, tables_path, start, results))
        for _ in range(PROCESSES)
    ]
    for process in processes:
        process.start()
    outcomes = [results.get(timeout=60) for _ in processes]
    for process in processes:
        process.join(timeout=60)
        assert process.exitcode == 0

    assert sum(outcome["object"] for outcome in outcomes) == 1
    assert sum(outcome["item"] for outcome in outcomes) == 1
    total = PROCESSES * INCREMENTS_PER_WORKER
    table = SqliteTable(tables_path, "catalog")
    assert LocalObjectStore(objects_root).get("counter").data == b"%d" % total
    assert table.get("counter", "cas")["count"] == total  # type: ignore[index]
    assert table.get("counter", "atomic")["count"] == total  # type: ignore[index]


# --- Persistence ----------------------------------------------------------------------------


def test_local_data_survives_a_restart(tmp_path: Path) -> None:
    settings = Settings(backend="local", data_dir=tmp_path)
    before = open_storage(settings)
    etag = before.objects.put("img/1.jpg", b"jpeg")
    before.catalog.put("image#1", "meta", {"score": 0.25})
    before.feedback.increment("image#1", "votes", {"up": 1})

    after = open_storage(settings)
    assert after.objects.get("img/1.jpg").etag == etag
    assert [info.key for info in after.objects.list()] == ["img/1.jpg"]
    assert after.catalog.get("image#1", "meta") == {
        "pk": "image#1",
        "sk": "meta",
        "version": 1,
        "score": 0.25,
    }
    assert after.feedback.get("image#1", "votes")["up"] == 1  # type: ignore[index]
    assert after.feedback.get("image#1", "meta") is None


@pytest.mark.parametrize("storage", ["aws"], indirect=True)  # SQLite writes one at a time
def test_dynamodb_transactions_cancelled_by_another_go_again(table: Table, monkeypatch) -> None:
    """DynamoDB cancels a transaction that meets a concurrent one on the same item
    (`TransactionConflict`): the write goes again rather than failing (votes share an item)."""
    real = table._client.transact_write_items
    calls = []

    def conflicting_once(**request):
        calls.append(request)
        if len(calls) == 1:
            raise ClientError(
                {
                    "Error": {"Code": "TransactionCanceledException", "Message": "conflict"},
                    "CancellationReasons": [{"Code": "TransactionConflict"}],
                },
                "TransactWriteItems",
            )
        return real(**request)

    monkeypatch.setattr(table._client, "transact_write_items", conflicting_once)
    table.transact([Put("t", "voted", {"n": 1}, expected_version=0)])
    assert len(calls) == 2 and table.get("t", "voted")["n"] == 1  # type: ignore[index]


def test_signed_links_name_the_buckets_region(monkeypatch, tmp_path) -> None:
    """S3's global host redirects a new bucket outside us-east-1; signed links and upload forms
    must name the regional one (an emulator keeps its own address)."""
    from imgsearch.config import Settings
    from imgsearch.storage import open_storage

    for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "x")
    settings = Settings(backend="aws", bucket="imgsearch-photos", cache_dir=tmp_path)
    url = open_storage(settings).objects.url("thumbnails/a.jpg")
    assert url and url.startswith("https://imgsearch-photos.s3.eu-west-1.amazonaws.com/")


def test_a_stale_etag_is_refused_even_when_the_file_looks_unchanged(tmp_path) -> None:
    """Locally, a replaced file can reuse the inode, and a coarse clock (FAT, HFS+, some
    network mounts) the mtime, so the ETag cache can vouch for an older version of a file:
    the version check must read the file itself."""
    from imgsearch.storage.local import LocalObjectStore

    objects = LocalObjectStore(tmp_path / "objects")
    first = objects.put("manifest.json", b"version 1")
    objects.put("manifest.json", b"version 2", if_match=first)
    objects.head("manifest.json")  # caches the current file's ETag
    # What the cache holds after such a reuse: the current file's identity, an older ETag.
    objects._etags = dict.fromkeys(objects._etags, first)
    with pytest.raises(PreconditionFailed):
        objects.put("manifest.json", b"stale writer", if_match=first)
    assert objects.get("manifest.json").data == b"version 2"


def test_a_local_read_hashes_its_bytes_only_when_its_etag_is_asked_for(
    tmp_path, monkeypatch
) -> None:
    """Serving an original reads it whole; its MD5 (18 ms for 14 MB) is for the few readers
    that compare versions (the manifest's), not for every read."""
    from imgsearch.storage.local import LocalObjectStore

    objects = LocalObjectStore(tmp_path / "objects")
    etag = objects.put("images/a.jpg", b"x" * 100_000)
    hashed: list[int] = []
    real_md5 = imgsearch.storage.local.hashlib.md5

    def counted_md5(data: bytes = b"", **kwargs: Any) -> Any:
        hashed.append(len(data))
        return real_md5(data, **kwargs)

    monkeypatch.setattr(imgsearch.storage.local.hashlib, "md5", counted_md5)
    stored = objects.get("images/a.jpg")
    assert stored.data == b"x" * 100_000 and hashed == []
    assert stored.etag == etag and stored.etag == etag
    assert hashed == [100_000]  # once, when asked


def test_deferred_puts_are_visible_at_once_and_durable_before_what_follows(
    tmp_path, monkeypatch
) -> None:
    """A bulk ingest's puts skip their fsync (deferred durability) but are readable at once;
    they reach the disk before any later put made outside the block (the manifest naming
    them), whichever thread makes it, or when asked; nothing is flushed twice."""
    from imgsearch.storage.local import LocalObjectStore

    objects = LocalObjectStore(tmp_path / "objects")
    synced: list[str] = []
    real_fsync = imgsearch.storage.local.os.fsync

    def recording(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(imgsearch.storage.local.os, "fsync", recording)
    root = str((tmp_path / "objects").resolve())

    def deferred(key: str) -> None:
        with objects.deferred_durability():
            objects.put(key, key.encode(), if_none_match=True)

    threads = [threading.Thread(target=deferred, args=(f"embeddings/{n}.npz",)) for n in "ab"]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert synced == []
    assert objects.get("embeddings/a.npz").data == b"embeddings/a.npz"

    objects.put("index/manifest.json", b"{}")
    files = [path for path in synced if not os.path.isdir(path)]
    assert sorted(files[:2]) == [f"{root}/embeddings/a.npz", f"{root}/embeddings/b.npz"]
    assert f"{root}/embeddings" in synced[: synced.index(files[2])]  # their renames too
    assert files[2].startswith(f"{root}/index/")  # then its own (a temporary file, renamed)
    synced.clear()
    objects.make_durable()
    assert synced == []  # nothing left to flush

    deferred("embeddings/c.npz")
    objects.make_durable()
    assert [path for path in synced if not os.path.isdir(path)] == [f"{root}/embeddings/c.npz"]


def _put_in_another_process(path: str) -> None:
    SqliteTable(Path(path), "other").put("item#x", "s", {"n": 1})


def test_change_token_follows_every_write_to_the_file(storage: Storage) -> None:
    """SQLite: the token stays while nothing is written, and changes with a write through
    this table, through another table of the same file, and from another process (what a
    server process keeps under it must follow them all), but not with a vote (the feedback
    table is in a file of its own). DynamoDB: None (nothing kept)."""
    table = storage.catalog
    if not isinstance(table, SqliteTable):
        assert table.change_token() is None
        return
    first = table.change_token()
    table.get("image#a", "meta")
    list(table.query("pending"))
    assert table.change_token() == first  # reads change nothing
    table.put("image#a", "meta", {"keys": ["a"]})
    second = table.change_token()
    assert second != first
    assert table.change_token() == second
    storage.feedback.put("vote#y", "s", {"n": 1})  # another file
    assert table.change_token() == second
    SqliteTable(table.path, "other").put("item#y", "s", {"n": 1})  # another table, same file
    third = table.change_token()
    assert third not in (first, second)
    process = multiprocessing.get_context("spawn").Process(
        target=_put_in_another_process, args=(str(table.path),)
    )
    process.start()
    process.join(60)
    assert process.exitcode == 0
    assert table.change_token() not in (first, second, third)


def test_puts_made_in_parallel_for_a_deferring_caller_are_deferred(tmp_path, monkeypatch) -> None:
    """`in_parallel` runs its work as the caller would: the puts it makes for a caller in a
    `deferred_durability` block skip their fsync too (an ingest's embedding, thumbnail and
    tile are written at once), and reach the disk with the caller's batch."""
    from imgsearch.storage.local import LocalObjectStore

    objects = LocalObjectStore(tmp_path / "objects")
    synced: list[str] = []
    real_fsync = imgsearch.storage.local.os.fsync
    monkeypatch.setattr(
        imgsearch.storage.local.os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd))
    )
    keys = [f"thumbnails/{n}.jpg" for n in "abc"]
    with objects.deferred_durability():
        in_parallel(lambda key: objects.put(key, key.encode()), keys)
    assert synced == []
    in_parallel(lambda key: objects.put(key, b"again"), keys[:2])  # not deferred: flushed
    assert len(synced) >= 3 + 2
    synced.clear()
    objects.make_durable()
    assert synced == []


def test_a_local_store_overlaps_only_the_puts_that_wait_for_the_disk(tmp_path) -> None:
    """Durable puts wait for their fsyncs, which overlap: a caller sends them at once
    (`Catalog.put_derived`); deferred ones are CPU only, and go one after the other."""
    from imgsearch.storage.local import LocalObjectStore

    objects = LocalObjectStore(tmp_path / "objects")
    assert objects.overlapping_puts_help
    with objects.deferred_durability():
        assert not objects.overlapping_puts_help
        assert in_parallel(lambda _: objects.overlapping_puts_help, [1, 2]) == [False, False]
    assert objects.overlapping_puts_help


def test_deferred_puts_are_flushed_ahead_once_enough_wait(tmp_path, monkeypatch) -> None:
    """Past FLUSH_AHEAD_FILES (or _BYTES) deferred files, a thread flushes them beside the
    writers, so that the flush making the batch durable finds little left."""
    monkeypatch.setattr(imgsearch.storage.local, "FLUSH_AHEAD_FILES", 3)
    objects = LocalObjectStore(tmp_path / "objects")
    synced = _record_fsyncs(monkeypatch)
    for name in "ab":
        _put_deferred(objects, name)
    _wait_for_flush_ahead(objects)
    assert synced == []  # fewer than 3 wait
    _put_deferred(objects, "c")  # 3 wait: flushed ahead
    _wait_for_flush_ahead(objects)
    root = str((tmp_path / "objects").resolve())
    assert sorted(p for p in synced if not os.path.isdir(p)) == [
        f"{root}/thumbnails/{name}.jpg" for name in "abc"
    ]
    assert synced[-1] == f"{root}/thumbnails"  # their renames too
    synced.clear()
    objects.make_durable()
    assert synced == []  # nothing left for the batch's own flush


def test_a_failed_flush_fails_every_later_one(tmp_path, monkeypatch) -> None:
    """Linux reports a writeback error to one fsync only: a file whose flush ahead failed
    must not count as durable when a later fsync of it succeeds. The batch's own flush and
    every durable put raise the first failure; a new process (a new store) starts afresh."""
    monkeypatch.setattr(imgsearch.storage.local, "FLUSH_AHEAD_FILES", 3)
    objects = LocalObjectStore(tmp_path / "objects")
    _record_fsyncs(monkeypatch, failing="a.jpg")
    for name in "abc":  # 3 wait: flushed ahead, and a.jpg fails
        _put_deferred(objects, name)
    _wait_for_flush_ahead(objects)
    with pytest.raises(StorageError, match="Input/output error"):
        objects.make_durable()
    with pytest.raises(StorageError, match="Input/output error"):
        objects.put("index/manifest.json", b"{}")  # what would publish the batch
    assert not (tmp_path / "objects" / "index" / "manifest.json").exists()
    LocalObjectStore(tmp_path / "objects").put("index/manifest.json", b"{}")
    assert (tmp_path / "objects" / "index" / "manifest.json").read_bytes() == b"{}"


def _record_fsyncs(monkeypatch, failing: str | None = None) -> list[str]:
    """The paths fsynced from now on; the first fsync of a path ending in `failing` fails."""
    synced: list[str] = []
    real_fsync = imgsearch.storage.local.os.fsync
    failed: list[str] = []

    def recording(fd: int) -> None:
        path = os.readlink(f"/proc/self/fd/{fd}")
        if failing and path.endswith(failing) and not failed:
            failed.append(path)
            raise OSError(5, "Input/output error")
        real_fsync(fd)
        synced.append(path)

    monkeypatch.setattr(imgsearch.storage.local.os, "fsync", recording)
    return synced


def _put_deferred(objects: LocalObjectStore, name: str) -> None:
    with objects.deferred_durability():
        objects.put(f"thumbnails/{name}.jpg", b"x")


def _wait_for_flush_ahead(objects: LocalObjectStore) -> None:
    time.sleep(0.05)
    for _ in range(200):
        if not objects._flushing_ahead:
            return
        time.sleep(0.05)
    raise AssertionError("the flush ahead did not end")
