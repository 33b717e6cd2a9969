"""AWS adapters: objects in S3, tables in DynamoDB.

Conditions are evaluated by the services themselves (S3 conditional writes, DynamoDB condition
expressions), so these adapters hold no locks and are safe from any number of Lambdas at once.
"""

from __future__ import annotations

import base64
import os
import random
import shutil
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, TypedDict, cast

from boto3.dynamodb.types import TypeDeserializer, TypeSerializer
from botocore.exceptions import ClientError

from .base import DirectUploads, LocalCopies, ObjectStore, Table
from .local import atomic_file
from .ports import (
    ANY_VERSION,
    AWS_POOL_CONNECTIONS,
    Delete,
    Increment,
    Item,
    NotFound,
    ObjectInfo,
    PreconditionFailed,
    PresignedPost,
    Put,
    StorageError,
    StoredObject,
    Write,
    in_parallel,
)
from .validation import MAX_BATCH_READ, MAX_BATCH_WRITE
from .wire import HandOff, fill_body, read_answer_part

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient
    from mypy_boto3_dynamodb.literals import ReturnValuesOnConditionCheckFailureType
    from mypy_boto3_dynamodb.type_defs import (
        AttributeValueTypeDef,
        DeleteTypeDef,
        KeysAndAttributesTypeDef,
        QueryInputTypeDef,
        TransactWriteItemTypeDef,
        UniversalAttributeValueTypeDef,
        UpdateTypeDef,
        WriteRequestTypeDef,
    )
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_s3.type_defs import PutObjectRequestTypeDef

    from ..config import Settings
    from . import Storage

# Disk space local_path leaves free besides what it downloads: scratch for index builds.
CACHE_HEADROOM = 128 * 1024 * 1024
TRANSACTION_ATTEMPTS = 8
# A batch request leaves out what DynamoDB had no capacity for; it is sent again, after a
# growing pause, this many times before giving up.
BATCH_ATTEMPTS = 8
# Why DynamoDB cancels a transaction that another one, not a condition, got in the way of.
RETRYABLE_CANCELLATIONS = frozenset({"TransactionConflict", "ThrottlingError"})

_NOT_FOUND_CODES = frozenset({"NoSuchKey", "404", "NotFound"})
# 412: the condition is false; 409: a concurrent conditional write to the key won.
_CONDITION_FAILED_CODES = frozenset({"PreconditionFailed", "412", "ConditionalRequestConflict"})


def _error_code(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code", ""))


def _unquote(etag: str) -> str:
    """S3 returns ETags in quotes; callers get the bare MD5 hex, as from the local store."""
    return etag.strip('"')


class S3ObjectStore(ObjectStore, LocalCopies, DirectUploads):
    """Objects in one S3 bucket. `local_path` caches downloads under `cache_dir`."""

    def __init__(self, client: S3Client, bucket: str, cache_dir: Path) -> None:
        self._client = client
        self.bucket = bucket
        self.cache_dir = Path(cache_dir)

    def _get(self, key: str) -> StoredObject:
        try:
            response = self._client.get_object(Bucket=self.bucket, Key=key)
        except ClientError as error:
            raise self._not_found_or(error, key) from error
        return StoredObject(data=response["Body"].read(), etag=_unquote(response["ETag"]))

    def _head(self, key: str) -> ObjectInfo:
        try:
            response = self._client.head_object(Bucket=self.bucket, Key=key)
        except ClientError as error:
            raise self._not_found_or(error, key) from error
        return ObjectInfo(
            key=key,
            size=response["ContentLength"],
            etag=_unquote(response["ETag"]),
            last_modified=response["LastModified"].timestamp(),
        )

    def _put(
        self,
        key: str,
        data: bytes,
        if_none_match: bool,
        if_match: str | None,
        content_type: str,
        etag_wanted: bool,
    ) -> str:
        request: PutObjectRequestTypeDef = {
            "Bucket": self.bucket,
            "Key": key,
            "Body": data,
            "ContentType": content_type,
        }
        if if_none_match:
            request["IfNoneMatch"] = "*"
        if if_match is not None:
            request["IfMatch"] = f'"{if_match}"'
        conditional = if_none_match or if_match is not None
        try:
            response = self._client.put_object(**request)
        except ClientError as error:
            code = _error_code(error)
            # If-Match on a missing key answers 404 NoSuchKey: the version it names is gone.
            if code in _CONDITION_FAILED_CODES or (conditional and code in _NOT_FOUND_CODES):
                raise PreconditionFailed(f"{key!r}: {code}") from error
            raise
        return _unquote(response["ETag"])

    def _delete(self, key: str) -> None:
        self._client.delete_object(Bucket=self.bucket, Key=key)

    def _list(self, prefix: str) -> Iterator[ObjectInfo]:
        paginator = self._client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
            for entry in page.get("Contents", []):
                yield ObjectInfo(
                    key=entry["Key"],
                    size=entry["Size"],
                    etag=_unquote(entry["ETag"]),
                    last_modified=entry["LastModified"].timestamp(),
                )

    def _forget_local_copy(self, key: str) -> None:
        self._cached(key).unlink(missing_ok=True)

    def _keep_local_copy(self, key: str, data: bytes) -> None:
        with self._cache_file(key, len(data), durable=False) as file:
            file.write(data)

    def _cached(self, key: str) -> Path:
        """Where the cached copy of a valid key lives (it cannot lead outside the cache)."""
        return self.cache_dir.joinpath(self.bucket, *key.split("/"))

    def _local_path(self, key: str) -> Path:
        # Never invalidated, only evicted: local_path is only for keys that are never replaced.
        path = self._cached(key)
        if path.is_file():
            os.utime(path)  # recently used: evicted last
            return path
        try:
            response = self._client.get_object(Bucket=self.bucket, Key=key)
        except ClientError as error:
            raise self._not_found_or(error, key) from error
        with self._cache_file(key, int(response["ContentLength"])) as file:
            shutil.copyfileobj(response["Body"], file, 1 << 20)
        return path

    @contextmanager
    def _cache_file(self, key: str, size: int, *, durable: bool = True) -> Iterator[BinaryIO]:
        """Write the cached copy of `key` (`size` bytes, room made for it first): atomic, so
        a concurrent reader never maps a half-written file."""
        path = self._cached(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        self._make_room(size)
        with atomic_file(path, durable=durable) as file:
            yield file

    def _make_room(self, size: int) -> None:
        """Evict the least recently used cached files until `size` bytes fit on the cache's
        disk with CACHE_HEADROOM to spare.

        A long-lived process (a warm Lambda, whose /tmp is small) caches every build of the
        open shard as the index grows; the old ones are dead weight. A file evicted while an
        index snapshot still maps it stays readable until that snapshot lets go of it.
        """
        needed = size + CACHE_HEADROOM
        if shutil.disk_usage(self.cache_dir).free >= needed:
            return
        cached = sorted(
            (p for p in self.cache_dir.rglob("*") if p.is_file()), key=lambda p: p.stat().st_mtime
        )
        for path in cached:
            path.unlink(missing_ok=True)
            if shutil.disk_usage(self.cache_dir).free >= needed:
                return

    def _url(self, key: str, expires: int) -> str | None:
        return self._client.generate_presigned_url(
            "get_object", Params={"Bucket": self.bucket, "Key": key}, ExpiresIn=expires
        )

    def _presigned_post(
        self, key: str, content_type: str, content_type_prefix: str, max_bytes: int, expires: int
    ) -> PresignedPost:
        # S3 enforces the policy: this key only (boto3 adds the condition), the size range,
        # the content type, the expiry; the signature is the signer's, so the IAM policy of
        # whoever calls this bounds what any form can write.
        form = self._client.generate_presigned_post(
            Bucket=self.bucket,
            Key=key,
            Fields={"Content-Type": content_type},
            Conditions=[
                ["starts-with", "$Content-Type", content_type_prefix],
                ["content-length-range", 1, max_bytes],
            ],
            ExpiresIn=expires,
        )
        return PresignedPost(url=form["url"], fields=dict(form["fields"]))

    @staticmethod
    def _not_found_or(error: ClientError, key: str) -> Exception:
        return NotFound(key) if _error_code(error) in _NOT_FOUND_CODES else error


# DynamoDB has no float type: numbers travel as decimal strings. Floats go out as the decimal
# form of their repr(), which reads back to the identical float.
_serializer = TypeSerializer()
_deserializer = TypeDeserializer()


def _to_dynamo(value: Any) -> Any:
    if isinstance(value, float):  # finite: validate_attrs refuses NaN and infinity
        return Decimal(repr(value))
    if isinstance(value, Mapping):
        return {name: _to_dynamo(inner) for name, inner in value.items()}
    if isinstance(value, list | tuple):
        return [_to_dynamo(inner) for inner in value]
    return value


def _from_dynamo(value: Any) -> Any:
    if isinstance(value, Decimal):
        # A number written without a fractional part was an int. (DynamoDB trims trailing
        # zeros, so a float with an integral value, like 2.0, reads back as the int 2.)
        exponent = value.as_tuple().exponent
        return int(value) if isinstance(exponent, int) and exponent >= 0 else float(value)
    if isinstance(value, dict):
        return {name: _from_dynamo(inner) for name, inner in value.items()}
    if isinstance(value, list):
        return [_from_dynamo(inner) for inner in value]
    return value


def _attribute_value(value: Any) -> AttributeValueTypeDef:
    if type(value) is str:  # most values (packed neighbour lists): no dispatch on the type
        return {"S": value}
    return _serializer.serialize(_to_dynamo(value))


def _decode_item(raw: Mapping[str, AttributeValueTypeDef]) -> Item:
    return {name: _decoded(value) for name, value in raw.items()}


def _decoded(value: AttributeValueTypeDef) -> Any:
    if len(value) == 1:
        text = value.get("S")
        if text is not None:  # a string, as _attribute_value writes most
            return text
        number = value.get("N")
        if number is not None and number.isascii() and number.isdigit():  # a version: an int
            return int(number)
    return _from_dynamo(_deserializer.deserialize(value))


# The items of the batch write, or the keys of the batch read, being made in this thread
# (ItemCodec).
_outgoing_items = HandOff("items")


class ItemCodec:
    """The items of DynamoDB's batch reads and writes, read and written by orjson
    (`storage.wire`).

    botocore serialises a request's and parses an answer's items value by value in Python,
    walking each attribute's shape (about 35 µs each way an item of a neighbour list: most
    of the CPU of reading one, a third of writing one, and the index builder reads and
    writes thousands a batch). An item's wire form is the DynamoDB JSON this
    adapter makes anyway (`DynamoTable._encode_item`), so a batch write is made with no items
    (a batch read with no keys: 100 keys walked cost about 1 ms) and its body written
    just before it is signed (`before-call`, which comes before the checksum and the
    signature: the JSON botocore would have sent), and a batch read's items are read before
    botocore parses the rest of the answer (`before-parse`), binary values decoded from
    base64 as botocore's parser does. The response's CRC-32 is checked on the bytes
    received, as botocore checks it."""

    @classmethod
    def install(cls, client: Any) -> None:
        if getattr(client, "_imgsearch_item_codec", False):
            return
        events = client.meta.events
        events.register("before-call.dynamodb.BatchWriteItem", cls._fill)
        events.register("before-call.dynamodb.BatchGetItem", cls._fill)
        events.register("before-parse.dynamodb.BatchGetItem", cls._read)
        client._imgsearch_item_codec = True

    @staticmethod
    def sending(request_items: Mapping[str, Any]) -> AbstractContextManager[None]:
        """The `RequestItems` of the batch write or read made in the `with` block
        (`HandOff`)."""
        return _outgoing_items.sending(request_items)

    @staticmethod
    def _fill(params: dict[str, Any], **_: Any) -> None:
        items = _outgoing_items.take()
        if items is not None:
            fill_body(params, lambda body: body.update(RequestItems=items), default=_json_binary)

    @staticmethod
    def _read(
        response_dict: dict[str, Any], customized_response_dict: dict[str, Any], **_: Any
    ) -> None:
        read_answer_part(response_dict, customized_response_dict, "Responses", _items_decoded)


def _items_decoded(responses: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """A batch read's items, their binary values decoded from base64."""
    for items in responses.values():
        for item in items:
            for value in item.values():
                if "S" not in value and "N" not in value:
                    _binaries_decoded(value)
    return responses


def _json_binary(value: object) -> str:
    """A binary value as DynamoDB JSON writes it (base64), as botocore's serialiser does."""
    if isinstance(value, bytes | bytearray):
        return base64.b64encode(value).decode("ascii")
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _binaries_decoded(value: dict[str, Any]) -> None:
    """An attribute value of an answer read as JSON, its binaries decoded in place (what
    botocore's parser does for the blobs of the AttributeValue shape), nested ones too."""
    if "B" in value:
        value["B"] = base64.b64decode(value["B"])
    elif "BS" in value:
        value["BS"] = [base64.b64decode(b) for b in value["BS"]]
    elif "L" in value:
        for inner in value["L"]:
            _binaries_decoded(inner)
    elif "M" in value:
        for inner in value["M"].values():
            _binaries_decoded(inner)


class _Condition(TypedDict, total=False):
    """The condition parameters of a DynamoDB write request (typed as the requests have them,
    so that one can be spread into any write request; this code never asks for return values).
    """

    ConditionExpression: str
    ExpressionAttributeNames: Mapping[str, str]
    ExpressionAttributeValues: Mapping[str, UniversalAttributeValueTypeDef]
    ReturnValuesOnConditionCheckFailure: ReturnValuesOnConditionCheckFailureType


def _version_condition(expected_version: int) -> _Condition:
    """Request parameters that make a write conditional on the item's version."""
    if expected_version == ANY_VERSION:
        return {}
    if expected_version == 0:
        return {
            "ConditionExpression": "attribute_not_exists(#pk)",
            "ExpressionAttributeNames": {"#pk": "pk"},
        }
    return {
        "ConditionExpression": "#version = :expected",
        "ExpressionAttributeNames": {"#version": "version"},
        "ExpressionAttributeValues": {":expected": {"N": str(expected_version)}},
    }


def _is_condition_failure(error: ClientError) -> bool:
    return _error_code(error) == "ConditionalCheckFailedException"


class DynamoTable(Table):
    """A DynamoDB table keyed by pk (string, HASH) and sk (string, RANGE).

    Speaks the low-level API of a boto3 DynamoDB client, with every attribute name passed
    through ExpressionAttributeNames so reserved words are fine.
    """

    def __init__(self, client: DynamoDBClient, table_name: str) -> None:
        self._client = client
        self.table_name = table_name
        ItemCodec.install(client)
        # A batch write's items and a batch read's keys as botocore sees them (valid
        # requests, if it validates): ItemCodec writes the real ones into the body it sends.
        self._placeholder: dict[str, list[WriteRequestTypeDef]] = {
            table_name: [{"DeleteRequest": {"Key": self._key("-", "-")}}]
        }
        self._read_placeholder: dict[str, KeysAndAttributesTypeDef] = {
            table_name: {"Keys": [self._key("-", "-")]}
        }

    def _get(self, pk: str, sk: str) -> Item | None:
        response = self._client.get_item(
            TableName=self.table_name, Key=self._key(pk, sk), ConsistentRead=True
        )
        raw = response.get("Item")
        return None if raw is None else _decode_item(raw)

    def _get_many(
        self, keys: list[tuple[str, str]], attributes: frozenset[str] | None
    ) -> dict[tuple[str, str], Item]:
        """One BatchGetItem per MAX_BATCH_READ keys, sent at once (`in_parallel`)."""
        asked: KeysAndAttributesTypeDef = {"Keys": [], "ConsistentRead": True}
        if attributes is not None:
            names = ["pk", "sk", "version", *sorted(attributes)]
            asked["ProjectionExpression"] = ", ".join(f"#a{n}" for n in range(len(names)))
            asked["ExpressionAttributeNames"] = {f"#a{n}": name for n, name in enumerate(names)}
        chunks: list[KeysAndAttributesTypeDef] = [
            {
                **asked,
                "Keys": [self._key(pk, sk) for pk, sk in keys[start : start + MAX_BATCH_READ]],
            }
            for start in range(0, len(keys), MAX_BATCH_READ)
        ]
        found: dict[tuple[str, str], Item] = {}
        for items in in_parallel(self._get_chunk, chunks):
            found.update(items)
        return found

    def _get_chunk(self, asked: KeysAndAttributesTypeDef) -> dict[tuple[str, str], Item]:
        found: dict[tuple[str, str], Item] = {}
        request: dict[str, KeysAndAttributesTypeDef] = {self.table_name: asked}
        for attempt in range(BATCH_ATTEMPTS):
            with ItemCodec.sending(request):  # (the keys go into the body as orjson writes them)
                response = self._client.batch_get_item(RequestItems=self._read_placeholder)
            for raw in response.get("Responses", {}).get(self.table_name, []):
                item = _decode_item(raw)
                found[item["pk"], item["sk"]] = item
            # What it left out, to send again (the same shape as what was sent).
            request = cast(
                dict[str, "KeysAndAttributesTypeDef"], response.get("UnprocessedKeys", {})
            )
            if not request:
                return found
            _pause(attempt)
        raise StorageError(f"{self.table_name}: batch reads kept being left unprocessed")

    def _put_many(self, puts: Sequence[Put]) -> None:
        """One BatchWriteItem per MAX_BATCH_WRITE items, sent at once (`in_parallel`)."""
        chunks = [
            puts[start : start + MAX_BATCH_WRITE] for start in range(0, len(puts), MAX_BATCH_WRITE)
        ]
        in_parallel(self._put_chunk, chunks)

    def _put_chunk(self, puts: Sequence[Put]) -> None:
        chunk: list[WriteRequestTypeDef] = [
            {"PutRequest": {"Item": self._encode_item(p.pk, p.sk, p.expected_version + 1, p.attrs)}}
            for p in puts
        ]
        request = {self.table_name: chunk}
        for attempt in range(BATCH_ATTEMPTS):
            with ItemCodec.sending(request):  # (the items go into the body as orjson writes them)
                response = self._client.batch_write_item(RequestItems=self._placeholder)
            request = cast(
                dict[str, list["WriteRequestTypeDef"]], response.get("UnprocessedItems", {})
            )
            if not request:
                return
            _pause(attempt)
        raise StorageError(f"{self.table_name}: batch writes kept being left unprocessed")

    def _put(self, pk: str, sk: str, attrs: Mapping[str, Any], expected_version: int) -> int:
        while True:
            # DynamoDB cannot compute "current version + 1" in a PutItem, so an unconditional
            # put reads the version and writes conditionally on it, retrying if it lost a race.
            version = (
                self._current_version(pk, sk)
                if expected_version == ANY_VERSION
                else expected_version
            )
            try:
                self._client.put_item(
                    TableName=self.table_name,
                    Item=self._encode_item(pk, sk, version + 1, attrs),
                    **_version_condition(version),
                )
                return version + 1
            except ClientError as error:
                if not _is_condition_failure(error):
                    raise
                if expected_version != ANY_VERSION:
                    raise PreconditionFailed(
                        f"({pk!r}, {sk!r}) is not at version {expected_version}"
                    ) from error

    def _delete(self, pk: str, sk: str, expected_version: int) -> None:
        try:
            self._client.delete_item(
                TableName=self.table_name,
                Key=self._key(pk, sk),
                **_version_condition(expected_version),
            )
        except ClientError as error:
            if _is_condition_failure(error):
                raise PreconditionFailed(
                    f"({pk!r}, {sk!r}) is not at version {expected_version}"
                ) from error
            raise

    def _increment(
        self, pk: str, sk: str, deltas: Mapping[str, int | float], set_attrs: Mapping[str, Any]
    ) -> Item:
        response = self._client.update_item(
            **self._increment_update(pk, sk, deltas, set_attrs), ReturnValues="ALL_NEW"
        )
        return _decode_item(response["Attributes"])

    def _query(self, pk: str, prefix: str, limit: int | None) -> Iterator[Item]:
        names = {"#pk": "pk"}
        values: dict[str, AttributeValueTypeDef] = {":pk": {"S": pk}}
        condition = "#pk = :pk"
        if prefix:
            names["#sk"] = "sk"
            values[":prefix"] = {"S": prefix}
            condition += " AND begins_with(#sk, :prefix)"
        request: QueryInputTypeDef = {
            "TableName": self.table_name,
            "KeyConditionExpression": condition,
            "ExpressionAttributeNames": names,
            "ExpressionAttributeValues": values,
            "ConsistentRead": True,
        }
        remaining = limit
        while remaining is None or remaining > 0:
            if remaining is not None:
                request["Limit"] = remaining
            page = self._client.query(**request)
            for raw in page["Items"]:
                yield _decode_item(raw)
            if remaining is not None:
                remaining -= len(page["Items"])
            if "LastEvaluatedKey" not in page:
                return
            request["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    def _transact(self, writes: Sequence[Write]) -> None:
        for attempt in range(TRANSACTION_ATTEMPTS):
            # Unconditional puts need the current version (see put), so they carry a condition
            # of ours; if only those fail, another writer got in between and we go again. So
            # we do when DynamoDB cancels for a concurrent transaction on the same items.
            items, own_conditions = self._transact_items(writes)
            try:
                self._client.transact_write_items(TransactItems=items)
                return
            except ClientError as error:
                if _error_code(error) != "TransactionCanceledException":
                    raise
                codes = [r.get("Code") for r in error.response.get("CancellationReasons", [])]
                failed = {i for i, code in enumerate(codes) if code == "ConditionalCheckFailed"}
                if failed - own_conditions:
                    raise PreconditionFailed("a condition of the transaction failed") from error
                if not failed and not RETRYABLE_CANCELLATIONS.intersection(codes):
                    raise
                if attempt == TRANSACTION_ATTEMPTS - 1:
                    raise
                time.sleep(random.uniform(0, 0.02 * 2**attempt))  # let the other one finish

    def _transact_items(
        self, writes: Sequence[Write]
    ) -> tuple[list[TransactWriteItemTypeDef], set[int]]:
        items: list[TransactWriteItemTypeDef] = []
        own_conditions: set[int] = set()
        for index, write in enumerate(writes):
            match write:
                case Put(pk=pk, sk=sk, attrs=attrs, expected_version=expected):
                    if expected == ANY_VERSION:
                        expected = self._current_version(pk, sk)
                        own_conditions.add(index)
                    item = self._encode_item(pk, sk, expected + 1, attrs)
                    condition = _version_condition(expected)
                    items.append({"Put": {"TableName": self.table_name, "Item": item, **condition}})
                case Delete(pk=pk, sk=sk, expected_version=expected):
                    key = self._key(pk, sk)
                    condition = _version_condition(expected)
                    delete: DeleteTypeDef = {"TableName": self.table_name, "Key": key, **condition}
                    items.append({"Delete": delete})
                case Increment(pk=pk, sk=sk, deltas=deltas, set_attrs=set_attrs):
                    items.append({"Update": self._increment_update(pk, sk, deltas, set_attrs)})
        return items, own_conditions

    def _increment_update(
        self,
        pk: str,
        sk: str,
        deltas: Mapping[str, int | float],
        set_attrs: Mapping[str, Any],
    ) -> UpdateTypeDef:
        """An UpdateItem request: ADD creates missing numbers at 0, and the version with them."""
        names = {"#version": "version"}
        values: dict[str, AttributeValueTypeDef] = {":one": {"N": "1"}}
        additions = ["#version :one"]
        for index, (name, delta) in enumerate(deltas.items()):
            names[f"#d{index}"] = name
            values[f":d{index}"] = _attribute_value(delta)
            additions.append(f"#d{index} :d{index}")
        assignments = []
        for index, (name, value) in enumerate(set_attrs.items()):
            names[f"#s{index}"] = name
            values[f":s{index}"] = _attribute_value(value)
            assignments.append(f"#s{index} = :s{index}")
        expression = "ADD " + ", ".join(additions)
        if assignments:
            expression = "SET " + ", ".join(assignments) + " " + expression
        return {
            "TableName": self.table_name,
            "Key": self._key(pk, sk),
            "UpdateExpression": expression,
            "ExpressionAttributeNames": names,
            "ExpressionAttributeValues": values,
        }

    def _current_version(self, pk: str, sk: str) -> int:
        response = self._client.get_item(
            TableName=self.table_name,
            Key=self._key(pk, sk),
            ConsistentRead=True,
            ProjectionExpression="#version",
            ExpressionAttributeNames={"#version": "version"},
        )
        item = response.get("Item")
        return 0 if item is None else int(item["version"]["N"])

    @staticmethod
    def _key(pk: str, sk: str) -> dict[str, AttributeValueTypeDef]:
        return {"pk": {"S": pk}, "sk": {"S": sk}}

    @staticmethod
    def _encode_item(
        pk: str, sk: str, version: int, attrs: Mapping[str, Any]
    ) -> dict[str, AttributeValueTypeDef]:
        item = {name: _attribute_value(value) for name, value in attrs.items()}
        return item | DynamoTable._key(pk, sk) | {"version": {"N": str(version)}}


def _pause(attempt: int) -> None:
    """Back off before sending what a batch request left unprocessed (AWS's advice: jittered,
    growing pauses)."""
    time.sleep(random.uniform(0, 0.05 * 2**attempt))


def open_aws_storage(settings: Settings) -> Storage:
    """The bucket and tables `settings` name, through boto3.

    Endpoints and credentials come from boto3's usual sources (AWS_ENDPOINT_URL etc.).
    Presigned URLs must use SigV4 (S3 no longer accepts SigV2 in most regions) and, on AWS,
    the bucket's regional host: the global one redirects a new bucket outside us-east-1,
    which breaks signed links and the browser's upload form.
    """
    import boto3
    from botocore.config import Config

    from . import Storage

    emulated = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    s3 = boto3.client(
        "s3",
        config=Config(
            signature_version="s3v4",
            s3=None if emulated else {"addressing_style": "virtual"},
            max_pool_connections=AWS_POOL_CONNECTIONS,
        ),
    )
    # Without botocore's validation of every request's values (a second walk over a batch's
    # items, about a third of the CPU of writing a batch of neighbour lists): the items are
    # the table's own encoding of attributes `Table` validated, and DynamoDB refuses any
    # malformed request itself (a ValidationException).
    dynamodb = boto3.client(
        "dynamodb",
        config=Config(max_pool_connections=AWS_POOL_CONNECTIONS, parameter_validation=False),
    )
    return Storage(
        objects=S3ObjectStore(s3, settings.bucket, settings.cache_dir),
        catalog=DynamoTable(dynamodb, settings.catalog_table),
        feedback=DynamoTable(dynamodb, settings.feedback_table),
    )
