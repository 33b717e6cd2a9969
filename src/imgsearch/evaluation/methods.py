"""Ways of answering keyword queries, measured side by side in one run, and the sandbox each
measurement runs in.

A method is a vocabulary (its guessing strategies) and, when the service offers a choice of
feedback learning, the name passed to `ImageSearch.search_text(feedback_method=...)`. Methods
only change what is handed to the real service; nothing here ranks anything.
"""

from __future__ import annotations

import inspect
import itertools
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from types import TracebackType
from typing import Any

from imgsearch.evaluation import EvaluationError
from imgsearch.service import ImageSearch
from imgsearch.storage import SqliteTable
from imgsearch.vocabulary import STRATEGIES, Vocabulary

FEEDBACK_METHOD_PARAMETER = "feedback_method"


@dataclass(frozen=True)
class Method:
    strategies: frozenset[str] | None = None  # vocabulary guessing strategies; None: configured
    feedback_method: str | None = None  # None: the service's default

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
    feedback_methods: Iterable[str | None] = (None,),
) -> list[Method]:
    """Every combination of the given vocabulary strategies and feedback methods."""
    return [Method(s, f) for s, f in itertools.product(strategies, feedback_methods)]


def check_offered(service: ImageSearch, wanted: Iterable[Method]) -> None:
    """Raise EvaluationError unless the service can run every method."""
    asked = any(method.feedback_method is not None for method in wanted)
    offered = FEEDBACK_METHOD_PARAMETER in inspect.signature(service.search_text).parameters
    if asked and not offered:
        raise EvaluationError(
            f"this service offers no choice of feedback method (ImageSearch.search_text "
            f"has no {FEEDBACK_METHOD_PARAMETER!r} parameter)"
        )


def search_options(method: Method) -> dict[str, Any]:
    """Keyword arguments for `search_text` beyond the query, page and session."""
    if method.feedback_method is None:
        return {}
    return {FEEDBACK_METHOD_PARAMETER: method.feedback_method}


class Sandbox:
    """Services over the collection under evaluation, sharing its index, model and vocabulary,
    each recording votes in a feedback table of its own: votes already in a reused data
    directory cannot sway a measurement, nor one simulated user another."""

    def __init__(self, service: ImageSearch) -> None:
        self._service = service
        self._directory = tempfile.TemporaryDirectory(prefix="imgsearch-eval-")
        self._vocabularies: dict[frozenset[str] | None, Vocabulary] = {None: service.vocabulary}
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

    def service(self, method: Method) -> ImageSearch:
        """A service with `method`'s vocabulary and an empty feedback table."""
        self._tables += 1
        table = SqliteTable(
            Path(self._directory.name) / f"votes-{self._tables}.sqlite3", "feedback"
        )
        fresh = ImageSearch(
            self._service.settings,
            replace(self._service.storage, feedback=table),
            embedder=self._service.embedder,
            vocabulary=self._vocabulary(method.strategies),
        )
        fresh.index = self._service.index  # the loaded shards, not a second copy
        return fresh

    def _vocabulary(self, strategies: frozenset[str] | None) -> Vocabulary:
        if strategies not in self._vocabularies:
            self._vocabularies[strategies] = Vocabulary.load(
                self._service.settings.vocabulary_dir, strategies
            )
        return self._vocabularies[strategies]
