"""What a server process keeps of its answers between requests: the JSON of whole "more like
this" pages, and of each image's part of a result object, kept while the engine's
`answers_version` stays the same.

That version changes with every write to the catalog, by any process (a record, a key, a
removal, a neighbour list, a vote), with every index generation this process serves and
whenever the neighbour lists it keeps are dropped. It is read before anything kept under it
is read, so what was read before a write is never kept under that write's version: a removed
image leaves every kept answer at the first request after its removal, in every process, as
it leaves the answers made afresh. Where the catalog cannot tell cheaply (DynamoDB: the
cloud's Lambda functions), the version is None and nothing is kept.

Bounded, least recently used out first (config.py: `http_kept_page_bytes`,
`http_kept_results`).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable, Mapping
from typing import Generic, TypeVar

V = TypeVar("V")
# An image's part of a result object: its JSON before the score and from its width to the
# tier (presenters.results_json); () for an image without a record.
Parts = tuple[str, str] | tuple[()]


class _LRU(Generic[V]):
    """Values up to a total weight of `size` (each weighs `weigh(value)`: 1 by default),
    least recently used out first; thread-safe."""

    def __init__(self, size: int, weigh: Callable[[V], int] = lambda _: 1) -> None:
        self.size = size
        self.weight = 0
        self._weigh = weigh
        self._values: OrderedDict[Hashable, V] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable) -> V | None:
        with self._lock:
            value = self._values.get(key)
            if value is not None:
                self._values.move_to_end(key)
            return value

    def get_many(self, keys: Iterable[Hashable]) -> dict[Hashable, V]:
        found = {}
        with self._lock:
            for key in keys:
                value = self._values.get(key)
                if value is not None:
                    self._values.move_to_end(key)
                    found[key] = value
        return found

    def put_many(self, values: Mapping[Hashable, V]) -> None:
        with self._lock:
            for key, value in values.items():
                old = self._values.pop(key, None)
                if old is not None:
                    self.weight -= self._weigh(old)
                self._values[key] = value
                self.weight += self._weigh(value)
            while self._values and self.weight > self.size:
                self.weight -= self._weigh(self._values.popitem(last=False)[1])

    def __len__(self) -> int:
        return len(self._values)


class Kept:
    """What was kept under one answers version."""

    def __init__(self, version: Hashable, page_bytes: int, results: int) -> None:
        self.version = version
        self.pages: _LRU[bytes] = _LRU(page_bytes, len)
        self.results: _LRU[Parts] = _LRU(results)


class KeptAnswers:
    """Pages and result parts kept under the engine's answers version (module docstring).

    `page_bytes`: whole answers, by their bytes (a page of 20 results is about 7 KB of
    JSON); `results`: an image's part of a result object, by URL base and image id (about
    0.6 KB), or () for an image that has no record (removed)."""

    def __init__(self, page_bytes: int, results: int) -> None:
        self.sizes = (page_bytes, results)
        self._kept = Kept(None, 0, 0)
        self._lock = threading.Lock()

    def under(self, version: Hashable | None) -> Kept | None:
        """What is kept under `version` (dropping what was kept under another); None if
        nothing may be kept (`version` None)."""
        if version is None:
            return None
        kept = self._kept
        if kept.version == version:
            return kept
        with self._lock:
            if self._kept.version != version:
                self._kept = Kept(version, *self.sizes)
            return self._kept
