"""The two storage ports, as base classes: an object store and a key-value table.

Each public method checks its input once, with the rules in validation.py, and then calls a
primitive (`_get`, `_put`, ...) that an adapter fills in: the local adapters (a data
directory, SQLite) in local.py and the AWS adapters (S3, DynamoDB) in aws.py. So every adapter
refuses the same keys and writes, and a primitive may take its input as valid. (Powertools'
idempotency persistence layers are built the same way.) The contract tests in
tests/storage/test_contract.py run against all of them; nothing else in the core knows which
one it is talking to. What the keys and items stored through them are: layout.md.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Collection, Hashable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .ports import ANY_VERSION, Item, ObjectInfo, PresignedPost, Put, StoredObject, Write
from .validation import (
    can_start_a_key,
    validate_attribute_names,
    validate_attrs,
    validate_batch_puts,
    validate_expected_version,
    validate_increment,
    validate_item_key,
    validate_item_keys,
    validate_key,
    validate_limit,
    validate_partition_key,
    validate_put_conditions,
    validate_writes,
)


class ObjectStore(ABC):
    """Flat namespace of immutable-or-replaced blobs under '/'-separated keys."""

    @property
    def overlapping_puts_help(self) -> bool:
        """Whether this context's independent puts gain by being sent at once
        (`in_parallel`): over the network each waits for a round trip."""
        return True

    @property
    def reads_are_requests(self) -> bool:
        """Whether each get is a request over the network (a round trip, and a request's
        CPU): where so, queued images' embeddings travel to the index builder in their work
        items' table rows too, read in batches (catalog.py `queued_embeddings`)."""
        return True

    def get(self, key: str) -> StoredObject:
        """The object's bytes and ETag. Raises NotFound."""
        return self._get(validate_key(key))

    def head(self, key: str) -> ObjectInfo:
        """Size, ETag and modification time without the bytes. Raises NotFound."""
        return self._head(validate_key(key))

    def put(
        self,
        key: str,
        data: bytes,
        *,
        if_none_match: bool = False,
        if_match: str | None = None,
        content_type: str = "application/octet-stream",
        etag_wanted: bool = True,
    ) -> str:
        """Write `data` atomically and return its new ETag.

        `if_none_match=True` creates only (PreconditionFailed if the key exists);
        `if_match=etag` replaces only that version (PreconditionFailed if it changed or is gone).
        `etag_wanted=False`: the caller does not read the ETag, and a store that computes it
        itself may skip that and return "" (the local store: an MD5 of the bytes, 4 ms of a
        12-megapixel original).
        """
        validate_key(key)
        validate_put_conditions(if_none_match, if_match)
        return self._put(key, data, if_none_match, if_match, content_type, etag_wanted)

    def delete(self, key: str) -> None:
        """Remove the object; removing a missing object is not an error."""
        self._delete(validate_key(key))

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Objects whose key starts with `prefix`, in key order.

        A prefix no valid key can start (its directory part, before the last '/', is not a
        valid key: "../", "a//") lists nothing.
        """
        if not can_start_a_key(prefix):
            return iter(())
        return self._list(prefix)

    def local_path(self, key: str) -> Path:
        """A local file holding the object's bytes, for memory-mapping immutable objects.

        Only for keys that are never replaced (index builds): remote adapters cache the file.
        Raises NotFound.
        """
        return self._local_path(validate_key(key))

    def url(self, key: str, *, expires: int = 3600) -> str | None:
        """A URL a browser can fetch the object from directly, or None if there is none."""
        return self._url(validate_key(key), expires)

    @contextmanager
    def deferred_durability(self) -> Iterator[None]:
        """Within the block, the puts of this context (this thread, and the work `in_parallel`
        runs for it) may reach stable storage later, together (a bulk ingest's many small
        files): they are still atomic, and visible at once. They are made durable by
        `make_durable`, and before any put this store makes outside such a block (a shard
        build, the index manifest naming the batch): a batch is durable once what this
        process publishes it with is. Another process's build may publish it before (a
        server on the same data directory): a crash then loses files the index names, which
        `check --repair` finds. Stores whose every put is durable when it returns (S3)
        ignore it."""
        yield

    def make_durable(self) -> None:
        """Make every put deferred so far (`deferred_durability`) durable."""
        return None  # nothing is ever deferred here

    # The primitives: `key` is valid, `prefix` can start a valid key.

    @abstractmethod
    def _get(self, key: str) -> StoredObject: ...

    @abstractmethod
    def _head(self, key: str) -> ObjectInfo: ...

    @abstractmethod
    def _put(
        self,
        key: str,
        data: bytes,
        if_none_match: bool,
        if_match: str | None,
        content_type: str,
        etag_wanted: bool,
    ) -> str: ...

    @abstractmethod
    def _delete(self, key: str) -> None: ...

    @abstractmethod
    def _list(self, prefix: str) -> Iterator[ObjectInfo]: ...

    @abstractmethod
    def _local_path(self, key: str) -> Path: ...

    @abstractmethod
    def _url(self, key: str, expires: int) -> str | None: ...


class LocalCopies(ABC):
    """An optional capability of an object store whose `local_path` is a cached copy (S3):
    a copy found damaged can be dropped, and the next `local_path` fetches it again."""

    def forget_local_copy(self, key: str) -> None:
        """Delete the cached copy of `key`, if there is one."""
        self._forget_local_copy(validate_key(key))

    def keep_local_copy(self, key: str, data: bytes) -> None:
        """Cache `data` as the copy of `key`, an object this process has just stored and
        will read back (an index build it publishes): `local_path` then downloads nothing.
        Only for keys that are never replaced, as `local_path`."""
        self._keep_local_copy(validate_key(key), data)

    @abstractmethod
    def _forget_local_copy(self, key: str) -> None: ...

    @abstractmethod
    def _keep_local_copy(self, key: str, data: bytes) -> None: ...


class DirectUploads(ABC):
    """An optional capability of an object store: browsers upload into it directly, with a
    signed form that expires (S3's presigned POST), so large files never pass through the API.

    The local store has none; there, files are uploaded through the API (POST /api/images).
    """

    def presigned_post(
        self,
        key: str,
        *,
        content_type: str,
        content_type_prefix: str,
        max_bytes: int,
        expires: int,
    ) -> PresignedPost:
        """A form that stores one file of 1..`max_bytes` bytes under exactly `key`, sent with
        `content_type` (or another type starting with `content_type_prefix`), within
        `expires` seconds."""
        validate_key(key)
        if not content_type.startswith(content_type_prefix):
            raise ValueError(f"{content_type!r} does not start with {content_type_prefix!r}")
        return self._presigned_post(key, content_type, content_type_prefix, max_bytes, expires)

    @abstractmethod
    def _presigned_post(
        self, key: str, content_type: str, content_type_prefix: str, max_bytes: int, expires: int
    ) -> PresignedPost: ...


class Table(ABC):
    """Items addressed by (partition key, sort key), each carrying a `version` number.

    Items are returned as dicts with their attributes plus `pk`, `sk` and `version`.
    In a table with a time to live (the feedback table), an item whose `expires_at` (seconds
    since the epoch) has passed may disappear at any time after: readers must not rely on it.
    """

    def get(self, pk: str, sk: str) -> Item | None:
        """The item, read consistently, or None."""
        validate_item_key(pk, sk)
        return self._get(pk, sk)

    def get_many(
        self, keys: Sequence[tuple[str, str]], *, attributes: Collection[str] | None = None
    ) -> dict[tuple[str, str], Item]:
        """The items of these (pk, sk) keys that exist, read consistently, keyed by (pk, sk);
        in as few requests as the table allows (DynamoDB: 100 keys per BatchGetItem).
        With `attributes`, each item holds only those of them it has (and pk, sk, version):
        DynamoDB bills the whole item read, but sends and parses only those."""
        distinct = validate_item_keys(keys)
        wanted = None if attributes is None else validate_attribute_names(attributes)
        return self._get_many(distinct, wanted) if distinct else {}

    def put_many(self, puts: Sequence[Put]) -> None:
        """Replace many items in as few requests as the table allows (DynamoDB: 25 per
        BatchWriteItem), neither atomically nor conditionally: BatchWriteItem takes no
        conditions. Each put names the version its item was read at (0: new) and writes it
        at the next, so versions keep growing for the compare-and-swap writers of other
        items; nothing checks it. Only for items that one writer owns (the index builder's,
        under its lease)."""
        validate_batch_puts(puts)
        if puts:
            self._put_many(puts)

    def put(
        self, pk: str, sk: str, attrs: Mapping[str, Any], *, expected_version: int = ANY_VERSION
    ) -> int:
        """Replace the item's attributes; returns the new version. Raises PreconditionFailed."""
        validate_item_key(pk, sk)
        validate_attrs(attrs)
        validate_expected_version(expected_version)
        return self._put(pk, sk, attrs, expected_version)

    def delete(self, pk: str, sk: str, *, expected_version: int = ANY_VERSION) -> None:
        """Remove the item (missing is fine unless a version is expected)."""
        validate_item_key(pk, sk)
        validate_expected_version(expected_version)
        self._delete(pk, sk, expected_version)

    def increment(
        self,
        pk: str,
        sk: str,
        deltas: Mapping[str, int | float],
        set_attrs: Mapping[str, Any] | None = None,
    ) -> Item:
        """Atomically add to numeric attributes; returns the item after the update."""
        validate_item_key(pk, sk)
        set_attrs = set_attrs or {}
        validate_increment(deltas, set_attrs)
        return self._increment(pk, sk, deltas, set_attrs)

    def query(self, pk: str, *, prefix: str = "", limit: int | None = None) -> Iterator[Item]:
        """Items of one partition whose sort key starts with `prefix`, in sort-key order."""
        validate_partition_key(pk)
        validate_limit(limit)
        return self._query(pk, prefix, limit)

    def transact(self, writes: Sequence[Write]) -> None:
        """Apply all writes or none (at most 100).

        Raises PreconditionFailed if any condition fails.
        """
        validate_writes(writes)
        if writes:
            self._transact(writes)

    def change_token(self) -> Hashable | None:
        """A value that changes whenever any item of the table may have changed (a write
        from this process or another), read cheaply enough to ask on every request: what is
        kept under one token was read before any later write. None: the table cannot tell
        cheaply (DynamoDB), and nothing may be kept on its account."""
        return None

    # The primitives: keys, attributes, versions and writes are valid.

    @abstractmethod
    def _get(self, pk: str, sk: str) -> Item | None: ...

    @abstractmethod
    def _get_many(
        self, keys: list[tuple[str, str]], attributes: frozenset[str] | None
    ) -> dict[tuple[str, str], Item]:
        """Read 1..n distinct keys; of each item only `attributes` (and pk, sk, version),
        all of them if None."""

    @abstractmethod
    def _put_many(self, puts: Sequence[Put]) -> None:
        """Write 1..n puts on distinct items, each at `expected_version` + 1, unconditionally."""

    @abstractmethod
    def _put(self, pk: str, sk: str, attrs: Mapping[str, Any], expected_version: int) -> int: ...

    @abstractmethod
    def _delete(self, pk: str, sk: str, expected_version: int) -> None: ...

    @abstractmethod
    def _increment(
        self, pk: str, sk: str, deltas: Mapping[str, int | float], set_attrs: Mapping[str, Any]
    ) -> Item: ...

    @abstractmethod
    def _query(self, pk: str, prefix: str, limit: int | None) -> Iterator[Item]: ...

    @abstractmethod
    def _transact(self, writes: Sequence[Write]) -> None:
        """Apply 1..100 writes, on distinct items, all or none."""
