"""Checks every adapter applies before touching storage, kept in one place so they all agree.

A key or write that one adapter refuses, every adapter refuses: code that works against the
local data directory must not start failing (or, worse, escaping its directory) on AWS.
"""

from __future__ import annotations

import math
import unicodedata
from collections.abc import Collection, Mapping, Sequence
from typing import Any

from .ports import ANY_VERSION, Delete, Increment, InvalidKey, Put, Write

MAX_KEY_BYTES = 1024  # S3's limit on a key's UTF-8 length
MAX_SEGMENT_BYTES = 255  # file systems' limit on a file name, which a segment becomes locally
MAX_TRANSACT_WRITES = 100  # DynamoDB's limit on TransactWriteItems
MAX_BATCH_READ = 100  # keys per BatchGetItem
MAX_BATCH_WRITE = 25  # items per BatchWriteItem
MAX_PARTITION_KEY_BYTES = 2048  # DynamoDB's limits on key attribute values
MAX_SORT_KEY_BYTES = 1024

# Names the local adapter uses for its own files (temporary files, locks); keys may not use them.
INTERNAL_NAME_PREFIX = ".imgsearch-"

# Attributes every item carries; callers cannot set them as ordinary attributes.
ITEM_KEY_ATTRIBUTES = frozenset({"pk", "sk", "version"})


def validate_key(key: str) -> str:
    """Return `key` if it is a safe, portable object key; raise InvalidKey otherwise.

    Keys are '/'-separated relative paths: the local adapter maps them onto files, so anything
    that could name a different file (absolute paths, '.', '..', empty segments, backslashes) is
    refused everywhere, as are control characters, segments too long for a file name and names
    reserved for internal files.
    """
    if not isinstance(key, str) or not key:
        raise InvalidKey(f"key must be a non-empty string: {key!r}")
    try:
        size = len(key.encode("utf-8"))
    except UnicodeEncodeError as error:
        raise InvalidKey(f"key is not valid Unicode: {key!r}") from error
    if size > MAX_KEY_BYTES:
        raise InvalidKey(f"key is {size} bytes long, more than {MAX_KEY_BYTES}")
    if any(unicodedata.category(char) == "Cc" for char in key):
        raise InvalidKey(f"key contains a control character: {key!r}")
    if "\\" in key:
        raise InvalidKey(f"key contains a backslash: {key!r}")
    if key.startswith("/"):
        raise InvalidKey(f"key is absolute: {key!r}")
    for segment in key.split("/"):
        if segment in ("", ".", ".."):
            raise InvalidKey(f"key has an empty, '.' or '..' segment: {key!r}")
        if len(segment.encode("utf-8")) > MAX_SEGMENT_BYTES:
            raise InvalidKey(f"key has a segment longer than {MAX_SEGMENT_BYTES} bytes: {key!r}")
        if segment.startswith(INTERNAL_NAME_PREFIX):
            raise InvalidKey(f"key segment {segment!r} is reserved for internal files")
    return key


def can_start_a_key(prefix: str) -> bool:
    """Whether a valid key can start with `prefix`: its directory part, before the last '/',
    must be a valid key itself (a local store walks that directory, so "../" must not pass)."""
    directory, _, _ = prefix.rpartition("/")
    if not directory:
        return True
    try:
        validate_key(directory)
    except InvalidKey:
        return False
    return True


def validate_item_key(pk: str, sk: str) -> None:
    """DynamoDB refuses empty and over-long key values, so every table does."""
    validate_partition_key(pk)
    _validate_key_value("sk", sk, MAX_SORT_KEY_BYTES)


def validate_partition_key(pk: str) -> None:
    _validate_key_value("pk", pk, MAX_PARTITION_KEY_BYTES)


def _validate_key_value(name: str, value: str, max_bytes: int) -> None:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{name} must be a non-empty string: {value!r}")
    if len(value.encode("utf-8")) > max_bytes:
        raise ValueError(f"{name} is longer than {max_bytes} bytes")


def validate_put_conditions(if_none_match: bool, if_match: str | None) -> None:
    if if_none_match and if_match is not None:
        raise ValueError("if_none_match and if_match exclude each other")


def validate_expected_version(expected_version: int) -> None:
    if expected_version != ANY_VERSION and expected_version < 0:
        raise ValueError(f"expected_version must be ANY_VERSION, 0 or positive: {expected_version}")


def validate_attrs(attrs: Mapping[str, Any]) -> None:
    """Attributes a caller may write: none the table maintains, and only values every table
    can store (DynamoDB has no NaN or infinity)."""
    reserved = ITEM_KEY_ATTRIBUTES.intersection(attrs)
    if reserved:
        raise ValueError(f"attributes {sorted(reserved)} are maintained by the table")
    for name, value in attrs.items():
        _validate_value(name, value)


# Values that hold no float, by exact type: most of what is written (a neighbour list holds
# hundreds), answered before the ABC check for Mapping, which cost a build 2 ms an image.
_PLAIN_TYPES = frozenset({str, int, bool, bytes, type(None)})


def _validate_value(name: str, value: object) -> None:
    if type(value) in _PLAIN_TYPES:
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"attribute {name!r} holds {value!r}, which a table cannot store")
    elif isinstance(value, list | tuple):
        for inner in value:
            _validate_value(name, inner)
    elif isinstance(value, Mapping):
        for inner in value.values():
            _validate_value(name, inner)


def validate_limit(limit: int | None) -> None:
    if limit is not None and limit < 0:
        raise ValueError(f"limit must not be negative: {limit}")


def validate_increment(deltas: Mapping[str, int | float], set_attrs: Mapping[str, Any]) -> None:
    validate_attrs(deltas)
    for name, delta in deltas.items():
        if isinstance(delta, bool) or not isinstance(delta, int | float):
            raise TypeError(f"delta of {name!r} is not a number: {delta!r}")
    validate_attrs(set_attrs)
    both = set(deltas).intersection(set_attrs)
    if both:
        raise ValueError(f"attributes {sorted(both)} are both incremented and set")


def validate_writes(writes: Sequence[Write]) -> None:
    """Check a transaction: DynamoDB's limits (<= 100 writes, one write per item) apply to all."""
    if len(writes) > MAX_TRANSACT_WRITES:
        raise ValueError(f"a transaction holds at most {MAX_TRANSACT_WRITES} writes")
    seen: set[tuple[str, str]] = set()
    for write in writes:
        if (write.pk, write.sk) in seen:
            raise ValueError(f"item {(write.pk, write.sk)} is written twice in one transaction")
        seen.add((write.pk, write.sk))
        validate_item_key(write.pk, write.sk)
        match write:
            case Put():
                validate_attrs(write.attrs)
                validate_expected_version(write.expected_version)
            case Delete():
                validate_expected_version(write.expected_version)
            case Increment():
                validate_increment(write.deltas, write.set_attrs)
            case _:
                raise TypeError(f"not a table write: {write!r}")


def validate_item_keys(keys: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    """The distinct keys of a batch read, in their first order (DynamoDB refuses duplicates)."""
    distinct = list(dict.fromkeys((pk, sk) for pk, sk in keys))
    for pk, sk in distinct:
        validate_item_key(pk, sk)
    return distinct


def validate_attribute_names(names: Collection[str]) -> frozenset[str]:
    """The attributes a read asks for: one or more names, without those every item has."""
    if isinstance(names, str):  # one name, not its letters
        raise TypeError("attributes: a collection of names, not a string")
    asked = frozenset(names)
    if not asked or not all(isinstance(n, str) and n for n in asked):
        raise ValueError(f"attributes: non-empty names expected, got {sorted(map(repr, asked))}")
    # (every item has these, and DynamoDB refuses a name projected twice)
    return asked - ITEM_KEY_ATTRIBUTES


def validate_batch_puts(puts: Sequence[Put]) -> None:
    """A batch write: puts only, one per item, each naming the version it was read at (the
    item is written at the next one; nothing is checked, see `Table.put_many`)."""
    seen: set[tuple[str, str]] = set()
    for put in puts:
        if not isinstance(put, Put):
            raise TypeError(f"not a put: {put!r}")
        if (put.pk, put.sk) in seen:
            raise ValueError(f"item {(put.pk, put.sk)} is written twice in one batch")
        seen.add((put.pk, put.sk))
        validate_item_key(put.pk, put.sk)
        validate_attrs(put.attrs)
        if put.expected_version == ANY_VERSION or put.expected_version < 0:
            raise ValueError(
                f"a batch put names the version it was read at (0: new), not {put.expected_version}"
            )
