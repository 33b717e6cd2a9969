"""Ways of answering keyword queries, measured side by side in one run, and the sandbox each
measurement runs in.

A method (a `Variant` of the engine) is a vocabulary (its guessing strategies) and a feedback
learning method (the `feedback_method` setting). Methods only change what the real engine is
given (`ImageSearch.variant`); nothing here ranks anything.
"""

from __future__ import annotations

import itertools
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from imgsearch.config import FeedbackMethod
from imgsearch.evaluation import EvaluationError
from imgsearch.results import STRATEGIES
from imgsearch.service import ImageSearch


@dataclass(frozen=True)
class Variant:
    strategies: frozenset[str] | None = None  # vocabulary guessing strategies; None: configured
    feedback_method: FeedbackMethod | None = None  # None: the service's default

    @property
    def name(self) -> str:
        parts = []
        if self.strategies is not None:
            parts.append(f"strategies={'+'.join(sorted(self.strategies)) or 'none'}")
        if self.feedback_method is not None:
            parts.append(f"feedback={self.feedback_method}")
        return ", ".join(parts) or "default"


def parse_strategies(text: str) -> frozenset[str]:
    """Vocabulary guessing strategies from "relations,glosses"; "none" for no guessing."""
    chosen = frozenset() if text == "none" else frozenset(text.split(","))
    unknown = chosen - STRATEGIES
    if unknown:
        raise EvaluationError(
            f"unknown strategies {', '.join(sorted(unknown))} "
            f"(known: {', '.join(sorted(STRATEGIES))}, or none)"
        )
    return chosen


def methods(
    strategies: Iterable[frozenset[str] | None] = (None,),
    feedback_methods: Iterable[FeedbackMethod | None] = (None,),
) -> list[Variant]:
    """Every combination of the given vocabulary strategies and feedback methods."""
    return [Variant(s, f) for s, f in itertools.product(strategies, feedback_methods)]


class Sandbox:
    """Engines over the collection under evaluation, sharing its index, model and vocabulary,
    each recording votes in a feedback table of its own: votes already in a reused data
    directory cannot sway a measurement, nor one simulated user another."""

    def __init__(self, service: ImageSearch) -> None:
        self._service = service
        self._directory = tempfile.TemporaryDirectory(prefix="imgsearch-eval-")
        # One per vocabulary (loading one takes a while); variants of it share it.
        self._by_strategies: dict[frozenset[str] | None, ImageSearch] = {None: service}
        self._tables = 0

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._directory.cleanup()

    def service(self, method: Variant) -> ImageSearch:
        """An engine with `method`'s vocabulary and feedback method, and no votes."""
        strategies = method.strategies
        if strategies not in self._by_strategies:
            self._by_strategies[strategies] = self._service.variant(strategies=strategies)
        self._tables += 1
        return self._by_strategies[strategies].variant(
            votes_file=Path(self._directory.name) / f"votes-{self._tables}.sqlite3",
            feedback_method=method.feedback_method,
        )
