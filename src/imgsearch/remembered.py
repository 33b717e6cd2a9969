"""Bounded memories of computed values, safe for any thread: `Remembered` (least recently
used out first, by count or by weight) and `Expiring` (each value also for a few seconds)."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")

_ABSENT = object()  # not remembered: a remembered None is an answer too ("not indexed", say)


def _one(_: object) -> int:
    return 1


class Remembered(Generic[K, V]):
    """Values by key up to a total weight of `size`, the least recently used dropped first;
    for any thread. Each value weighs `weigh(value)`: 1 by default, so that `size` counts
    values; `len` for bytes, say, bounds their total size instead. A value may be None
    (`get_many` and `in` tell it from one not remembered; `get` does not)."""

    def __init__(self, size: int, weigh: Callable[[V], int] = _one) -> None:
        self.size = size
        self.weight = 0
        self._weigh = weigh
        self._values: OrderedDict[K, V] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._values)

    def __contains__(self, key: object) -> bool:
        return key in self._values

    def get(self, key: K) -> V | None:
        with self._lock:
            value = self._values.get(key, _ABSENT)
            if value is _ABSENT:
                return None
            self._values.move_to_end(key)
            return value  # type: ignore[return-value]

    def get_many(self, keys: Iterable[K]) -> dict[K, V]:
        """Those of `keys` remembered, with their values (under one lock)."""
        found: dict[K, V] = {}
        values = self._values
        get, move_to_end = values.get, values.move_to_end
        with self._lock:
            for key in keys:
                value = get(key, _ABSENT)
                if value is not _ABSENT:
                    move_to_end(key)
                    found[key] = value  # type: ignore[assignment]
        return found

    def items(self) -> list[tuple[K, V]]:
        """Every value remembered, by key, the least recently used first."""
        with self._lock:
            return list(self._values.items())

    def put(self, key: K, value: V) -> V:
        self.put_many({key: value})
        return value

    def put_many(self, values: Mapping[K, V]) -> None:
        with self._lock:
            for key, value in values.items():
                self._drop(key)
                self._values[key] = value
                self.weight += self._weigh(value)
            while self._values and self.weight > self.size:
                self.weight -= self._weigh(self._values.popitem(last=False)[1])

    def forget(self, key: K) -> None:
        with self._lock:
            self._drop(key)

    def clear(self) -> None:
        with self._lock:
            self._values.clear()
            self.weight = 0

    def _drop(self, key: K) -> None:
        old = self._values.pop(key, _ABSENT)
        if old is not _ABSENT:
            self.weight -= self._weigh(old)  # type: ignore[arg-type]


class Expiring(Generic[K, V]):
    """Values by key for `seconds` after each was put (0: none is ever found), at most `size`
    of them, the least recently used dropped first; for any thread. An expired value is not
    found, and leaves when asked for."""

    def __init__(self, size: int, seconds: float) -> None:
        self.seconds = seconds
        self._kept: Remembered[K, tuple[float, V]] = Remembered(size)

    def __len__(self) -> int:
        return len(self._kept)

    def get(self, key: K) -> V | None:
        kept = self._kept.get(key)
        if kept is None:
            return None
        if kept[0] <= time.monotonic():
            self._kept.forget(key)  # not left to push out a live one
            return None
        return kept[1]

    def put(self, key: K, value: V) -> V:
        self._kept.put(key, (time.monotonic() + self.seconds, value))
        return value

    def forget(self, key: K) -> None:
        self._kept.forget(key)

    def clear(self) -> None:
        self._kept.clear()
