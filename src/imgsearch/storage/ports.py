"""The two storage ports the core is written against: an object store and a key-value table.

Each has a local adapter (a data directory, SQLite) and an AWS adapter (S3, DynamoDB). The
contract tests in tests/test_storage_contract.py run against all of them; nothing else in the
core knows which one it is talking to.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

# Attribute values are JSON-like: str, int, float, bool, None, and lists/dicts of those.
Item = dict[str, Any]


class StorageError(Exception):
    """Base class of storage errors the core handles."""


class NotFound(StorageError):
    """The object or item does not exist."""


class PreconditionFailed(StorageError):
    """A conditional write lost: the object/item exists, is missing, or changed meanwhile."""


class StorageFull(StorageError):
    """The disk (or quota) holding the data is full: nothing was written. The API answers
    507 Insufficient Storage; freeing space heals it, and no half-written object remains."""


class InvalidKey(StorageError, ValueError):
    """A key that could escape its namespace or that the store cannot hold."""


@dataclass(frozen=True)
class StoredObject:
    data: bytes
    etag: str


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    etag: str
    last_modified: float  # seconds since the epoch


class ObjectStore(Protocol):
    """Flat namespace of immutable-or-replaced blobs under '/'-separated keys."""

    def get(self, key: str) -> StoredObject:
        """The object's bytes and ETag. Raises NotFound."""
        ...

    def head(self, key: str) -> ObjectInfo:
        """Size, ETag and modification time without the bytes. Raises NotFound."""
        ...

    def put(
        self,
        key: str,
        data: bytes,
        *,
        if_none_match: bool = False,
        if_match: str | None = None,
        content_type: str = "application/octet-stream",
    ) -> str:
        """Write `data` atomically and return its new ETag.

        `if_none_match=True` creates only (PreconditionFailed if the key exists);
        `if_match=etag` replaces only that version (PreconditionFailed if it changed or is gone).
        """
        ...

    def delete(self, key: str) -> None:
        """Remove the object; removing a missing object is not an error."""
        ...

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Objects whose key starts with `prefix`, in key order."""
        ...

    def local_path(self, key: str) -> Path:
        """A local file holding the object's bytes, for memory-mapping immutable objects.

        Only for keys that are never replaced (index builds): remote adapters cache the file.
        Raises NotFound.
        """
        ...

    def url(self, key: str, *, expires: int = 3600) -> str | None:
        """A URL a browser can fetch the object from directly, or None if there is none."""
        ...


@runtime_checkable
class LocalCopies(Protocol):
    """An optional capability of an object store whose `local_path` is a cached copy (S3):
    a copy found damaged can be dropped, and the next `local_path` fetches it again."""

    def forget_local_copy(self, key: str) -> None:
        """Delete the cached copy of `key`, if there is one."""
        ...


@dataclass(frozen=True)
class PresignedPost:
    """An HTML form's target and hidden fields: POSTing them with a `file` field uploads it."""

    url: str
    fields: dict[str, str]


@runtime_checkable
class DirectUploads(Protocol):
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
        ...


# A version the table keeps on every item: 0 means "does not exist", so expected_version=0
# is create-only and expected_version=N is compare-and-swap.
ANY_VERSION = -1


@dataclass(frozen=True)
class Put:
    pk: str
    sk: str
    attrs: Mapping[str, Any]
    expected_version: int = ANY_VERSION


@dataclass(frozen=True)
class Delete:
    pk: str
    sk: str
    expected_version: int = ANY_VERSION


@dataclass(frozen=True)
class Increment:
    """Add numbers to attributes (created at 0 if missing); other attributes are set as given."""

    pk: str
    sk: str
    deltas: Mapping[str, int | float]
    set_attrs: Mapping[str, Any] = field(default_factory=dict)


Write = Put | Delete | Increment


class Table(Protocol):
    """Items addressed by (partition key, sort key), each carrying a `version` number.

    Items are returned as dicts with their attributes plus `pk`, `sk` and `version`.
    In a table with a time to live (the feedback table), an item whose `expires_at` (seconds
    since the epoch) has passed may disappear at any time after: readers must not rely on it.
    """

    def get(self, pk: str, sk: str) -> Item | None:
        """The item, read consistently, or None."""
        ...

    def put(
        self, pk: str, sk: str, attrs: Mapping[str, Any], *, expected_version: int = ANY_VERSION
    ) -> int:
        """Replace the item's attributes; returns the new version. Raises PreconditionFailed."""
        ...

    def delete(self, pk: str, sk: str, *, expected_version: int = ANY_VERSION) -> None:
        """Remove the item (missing is fine unless a version is expected)."""
        ...

    def increment(
        self,
        pk: str,
        sk: str,
        deltas: Mapping[str, int | float],
        set_attrs: Mapping[str, Any] | None = None,
    ) -> Item:
        """Atomically add to numeric attributes; returns the item after the update."""
        ...

    def query(
        self, pk: str, *, prefix: str = "", start_after: str | None = None, limit: int | None = None
    ) -> Iterator[Item]:
        """Items of one partition whose sort key starts with `prefix`, in sort-key order."""
        ...

    def transact(self, writes: Sequence[Write]) -> None:
        """Apply all writes or none (at most 100).

        Raises PreconditionFailed if any condition fails.
        """
        ...
