"""What the storage ports speak in: their errors and the values they return and take. The
ports themselves, an object store and a key-value table, and the optional capabilities an
adapter may have besides, are the base classes in base.py.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextvars import copy_context
from dataclasses import dataclass, field
from typing import Any, TypeVar

__all__ = [  # what the storage package re-exports: the ports' vocabulary
    "ANY_VERSION",
    "MAX_CAS_ATTEMPTS",
    "Delete",
    "Increment",
    "InvalidKey",
    "Item",
    "NotFound",
    "ObjectInfo",
    "PreconditionFailed",
    "PresignedPost",
    "Put",
    "StorageError",
    "StorageFull",
    "StoredObject",
    "TooMuchContention",
    "Write",
    "in_parallel",
    "retry_on_conflict",
]

T = TypeVar("T")
R = TypeVar("R")

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


class TooMuchContention(RuntimeError):
    """A read-decide-write kept losing to other writers; see `retry_on_conflict`."""


# Writers of one item are few (a key's events, one term's voters): 50 lost races in a row
# means something is wrong, not busy.
MAX_CAS_ATTEMPTS = 50
# Requests one call sends at once: an index build's batched reads and writes and its queries
# wait for the network, not for the CPU, so their waits overlap. A batch of 100 new images
# asks 100 nearest-image queries (100 ms each on S3 Vectors): 32 at a time wait about 0.4 s
# for them, 16 at a time 0.7 s (bench/build_phases.py; docs/deploy.md, "At scale").
PARALLEL_REQUESTS = 32
# Connections an AWS client keeps (botocore's default is 10): a call's parallel requests may
# each send a few of their own (a keyword ranking 400 deep asks 6 groups of partitions), and
# a connection beyond the pool is opened, used once and closed.
AWS_POOL_CONNECTIONS = 4 * PARALLEL_REQUESTS


def in_parallel(work: Callable[[T], R], items: Sequence[T]) -> list[R]:
    """`work(item)` for each of `items`, up to PARALLEL_REQUESTS at once (in threads, for
    requests over the network), the results in order; the first error is raised. Each runs
    in a copy of the caller's context (its context variables: a local store's deferred
    durability), as if the caller ran it."""
    if len(items) <= 1:
        return [work(item) for item in items]
    contexts = [copy_context() for _ in items]  # a context is entered by one thread at a time
    with ThreadPoolExecutor(min(PARALLEL_REQUESTS, len(items))) as pool:
        return list(pool.map(lambda context, item: context.run(work, item), contexts, items))


def retry_on_conflict(step: Callable[[], T], what: str, attempts: int = MAX_CAS_ATTEMPTS) -> T:
    """Run `step` (read, decide, write conditionally) again each time its conditional write
    loses a race (PreconditionFailed), and return what it returns. After `attempts` lost
    races, raises TooMuchContention naming `what`."""
    for _ in range(attempts):
        try:
            return step()
        except PreconditionFailed:
            continue
    raise TooMuchContention(f"{what}: too much contention")


class StoredObject:
    """An object's bytes and ETag. A store that hashes the bytes for the ETag (the local one)
    may give a function instead, called when the ETag is first asked for: most reads (an
    original served, an embedding) never ask, and a 14 MB original's MD5 takes 18 ms."""

    __slots__ = ("_etag", "data")

    def __init__(self, data: bytes, etag: str | Callable[[], str]) -> None:
        self.data = data
        self._etag = etag

    @property
    def etag(self) -> str:
        if callable(self._etag):
            self._etag = self._etag()  # two threads may both hash: the same answer
        return self._etag

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, StoredObject):
            return NotImplemented
        return (self.data, self.etag) == (other.data, other.etag)

    __hash__ = None  # type: ignore[assignment]  # mutable-looking: compared by value, never keyed

    def __repr__(self) -> str:
        return f"StoredObject({len(self.data)} bytes)"


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    etag: str
    last_modified: float  # seconds since the epoch


@dataclass(frozen=True)
class PresignedPost:
    """An HTML form's target and hidden fields: POSTing them with a `file` field uploads it."""

    url: str
    fields: dict[str, str]


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
