"""Ways of answering keyword queries, measured side by side in one run, and the sandbox each
measurement runs in.

A method is a vocabulary (its guessing strategies) and, when the service offers a choice of
feedback learning, its name: set as the `feedback_method` setting if `Settings` has one, else
passed as `ImageSearch.search_text(feedback_method=...)` if that takes it. Methods only change
what is handed to the real service; nothing here ranks anything.
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

from pydantic import TypeAdapter, ValidationError

from imgsearch.config import Settings
from imgsearch.evaluation import EvaluationError
from imgsearch.service import ImageSearch
from imgsearch.storage import SqliteTable
from imgsearch.vocabulary import STRATEGIES, Vocabulary

FEEDBACK_METHOD = "feedback_method"  # a Settings field or a search_text parameter


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
    asked = {method.feedback_method for method in wanted} - {None}
    if not asked:
        return
    field = type(service.settings).model_fields.get(FEEDBACK_METHOD)
    if field is None and not _search_takes_method(service):
        raise EvaluationError(
            f"this service offers no choice of feedback method (no {FEEDBACK_METHOD!r} "
            "setting, nor a parameter of ImageSearch.search_text)"
        )
    for name in sorted(asked) if field is not None else ():
        try:
            TypeAdapter(field.annotation).validate_python(name)
        except ValidationError as error:
            raise EvaluationError(f"unknown feedback method {name!r}") from error


def search_options(service: ImageSearch, method: Method) -> dict[str, Any]:
    """Keyword arguments for `search_text` beyond the query, page and session."""
    if method.feedback_method is None or not _search_takes_method(service):
        return {}
    return {FEEDBACK_METHOD: method.feedback_method}


def _search_takes_method(service: ImageSearch) -> bool:
    return FEEDBACK_METHOD in inspect.signature(service.search_text).parameters


def _settings_for(settings: Settings, method: Method) -> Settings:
    if method.feedback_method is None or FEEDBACK_METHOD not in type(settings).model_fields:
        return settings
    return settings.model_copy(update={FEEDBACK_METHOD: method.feedback_method})


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
        """A service with `method`'s vocabulary and feedback method, and no votes."""
        self._tables += 1
        table = SqliteTable(
            Path(self._directory.name) / f"votes-{self._tables}.sqlite3", "feedback"
        )
        fresh = ImageSearch(
            _settings_for(self._service.settings, method),
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
