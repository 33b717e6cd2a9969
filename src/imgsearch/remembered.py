"""A bounded memory of computed values, safe for any thread."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


def _one(_: object) -> int:
    return 1


class Remembered(Generic[K, V]):
    """Values by key up to a total weight of `size`, the least recently used dropped first;
    for any thread. Each value weighs `weigh(value)`: 1 by default, so that `size` counts
    values; `len` for bytes, say, bounds their total size instead."""

    def __init__(self, size: int, weigh: Callable[[V], int] = _one) -> None:
        self.size = size
        self.weight = 0
        self._weigh = weigh
        self._values: OrderedDict[K, V] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._values)

    def get(self, key: K) -> V | None:
        with self._lock:
            value = self._values.get(key)
            if value is not None:
                self._values.move_to_end(key)
            return value

    def get_many(self, keys: Iterable[K]) -> dict[K, V]:
        """Those of `keys` remembered, with their values (under one lock)."""
        found: dict[K, V] = {}
        values = self._values
        get, move_to_end = values.get, values.move_to_end
        with self._lock:
            for key in keys:
                value = get(key)
                if value is not None:
                    move_to_end(key)
                    found[key] = value
        return found

    def put(self, key: K, value: V) -> V:
        self.put_many({key: value})
        return value

    def put_many(self, values: Mapping[K, V]) -> None:
        with self._lock:
            for key, value in values.items():
                old = self._values.pop(key, None)
                if old is not None:
                    self.weight -= self._weigh(old)
                self._values[key] = value
                self.weight += self._weigh(value)
            while self._values and self.weight > self.size:
                self.weight -= self._weigh(self._values.popitem(last=False)[1])
