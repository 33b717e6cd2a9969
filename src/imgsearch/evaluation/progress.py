"""How measurements report progress: they pass their long loops through a `Track`."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol, TypeVar

T = TypeVar("T")


class Track(Protocol):
    def __call__(self, items: Iterable[T], description: str) -> Iterable[T]: ...


def untracked(items: Iterable[T], description: str) -> Iterable[T]:
    return items
