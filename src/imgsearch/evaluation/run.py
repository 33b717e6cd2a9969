"""One evaluation: the four measurements on an ingested, labelled collection."""

from __future__ import annotations

import datetime
import os
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from imgsearch.evaluation.collection import LabelledCollection
from imgsearch.evaluation.keyword import keyword_table
from imgsearch.evaluation.methods import Sandbox, Variant
from imgsearch.evaluation.progress import Track, untracked
from imgsearch.evaluation.report import Report
from imgsearch.evaluation.similar import ann_settings, layer_distance_table, production_table
from imgsearch.evaluation.simulated_user import feedback_table
from imgsearch.service import ImageSearch

SOURCE_DIR = Path(__file__).resolve().parent
# Settings recorded with the numbers, when the running version has them.
RANKING_SETTINGS = (
    "shard_size",
    "neighbours",
    "feedback_method",
    "expansion",
    "expansion_neighbours",
    "expansion_power",
    "expansion_query_neighbours",
    "expansion_learning",
)


def evaluate(
    service: ImageSearch,
    collection: LabelledCollection,
    *,
    directory: Path,
    methods: list[Variant],
    candidates: Sequence[int] = (),
    search_ks: Sequence[int] = (),
    track: Track = untracked,
    started: float | None = None,
) -> Report:
    """Measure `collection` (already ingested into `service`) through the service.

    `candidates`, `search_ks`: Annoy query settings to measure beside production's.
    `started`: the perf_counter time the whole run began (ingest included), for the wall time.
    """
    started = time.perf_counter() if started is None else started
    layer_distance = layer_distance_table(service, collection, track)
    extra = ann_settings(service.index_info(), candidates, search_ks)
    production = production_table(service, collection, extra, track)
    with Sandbox(service) as sandbox:
        keyword = {m.name: keyword_table(sandbox, collection, m, track) for m in methods}
        feedback = {m.name: feedback_table(sandbox, collection, m, track) for m in methods}
    provenance = {
        "directory": str(directory),
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": git_commit(),
        "wall_seconds": time.perf_counter() - started,
        "cpus": os.cpu_count(),
        "data_dir": str(service.settings.data_dir),
        "methods": [m.name for m in methods],
    }
    return Report(
        provenance,
        collection,
        layer_distance,
        production,
        keyword,
        feedback,
        index_settings(service),
    )


def index_settings(service: ImageSearch) -> dict[str, Any]:
    """How the measured index answers, and the settings that shape ranking (those that exist)."""
    index, settings = service.index_info(), service.settings
    return {
        "shards": index.shards,
        "trees": settings.ann_trees,
        "candidates": index.candidates,
        "search_k": index.search_k,
        "model": index.model,
        # An expanded vector as stored with its neighbour list: float16, as base64 text.
        "expanded_bytes": 4 * -(-2 * service.model_info().feature_dim // 3),
        **{name: getattr(settings, name) for name in RANKING_SETTINGS if hasattr(settings, name)},
    }


def git_commit() -> str:
    """The commit the code ran from, "+dirty" if files differ from it; "unknown" outside git."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(SOURCE_DIR), *args], capture_output=True, text=True, check=True
        ).stdout.strip()

    try:
        commit = git("rev-parse", "--short=12", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + ("+dirty" if dirty else "")
