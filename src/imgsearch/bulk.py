"""Batch work on folders of images: ingest a whole tree with index builds in batches, or
embed one into a file for offline analysis (`imgsearch embed`, `imgsearch neighbours`)."""

from __future__ import annotations

import gc
import os
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from imgsearch.blas import one_blas_thread
from imgsearch.results import Embedding, ImageRefused, IngestResult, InvalidKey
from imgsearch.service import ImageSearch

# New images between index builds: a build publishes a batch (the builder takes 1,000 at most),
# and the open shard is rebuilt for each; fewer, larger builds ingest faster.
BUILD_EVERY = 1000
# The smallest batch built before the end. Builds run beside the workers, but the last one
# runs alone (on one core): once what is left to ingest is no more than what waits for a
# build, that batch is built while the workers ingest the rest, so that the last build gets
# a fraction of the last batch (Corel-1k: 500, 250, 125, then 125 at the end, instead of
# all 1,000 at the end: 3.8 s of CPU on one core while the other idled).
MIN_EARLY_BUILD = 100
Progress = Callable[[IngestResult], object]  # what it returns is ignored


@dataclass
class IngestSummary:
    results: list[IngestResult] = field(default_factory=list)

    @property
    def counts(self) -> Counter[str]:
        return Counter(result.status for result in self.results)

    @property
    def refused(self) -> list[IngestResult]:
        return [r for r in self.results if r.status == "refused"]

    @property
    def replaced(self) -> list[IngestResult]:
        """Keys that held another image until now (a changed file, or another folder's file
        under the same relative path)."""
        return [r for r in self.results if r.replaced]


def files_under(root: Path) -> Iterator[tuple[str, Path]]:
    """(key, path) of every regular file under `root`, keyed by relative POSIX path, sorted."""
    for directory, subdirectories, files in os.walk(root):
        subdirectories.sort()
        for name in sorted(files):
            path = Path(directory) / name
            if path.is_file() and not path.is_symlink():
                yield path.relative_to(root).as_posix(), path


def ingest_tree(
    service: ImageSearch,
    root: Path,
    *,
    prefix: str = "",
    on_result: Progress | None = None,
    workers: int | None = None,
) -> IngestSummary:
    """Ingest every file under `root`, keyed by `prefix` + its path relative to `root`; the
    index is built once per BUILD_EVERY new images, and at the end.

    `workers` threads (by default one more than the model runs at once, so that the model
    never waits for a decode or a write) each read, decode, embed and store one file at a
    time; the model's interpreters, decoding and writing all run outside the GIL. Their files
    reach the disk together before each build publishes them (deferred durability), and the
    builds run in this thread while the workers go on.
    """
    summary = IngestSummary()
    entries = list(files_under(root))
    with _cores_for_inference():
        _ingest_entries(service, entries, summary, prefix, on_result, workers)
    return summary


@contextmanager
def _cores_for_inference() -> Iterator[None]:
    """Within the block, the objects made before it (modules, settings, the model's spec) are
    frozen out of the garbage collector's full passes, which the many small objects of each
    image trigger; unless the caller had frozen some already, whose freeze it keeps. (BLAS
    threads: see `_ingest_entries`.)"""
    mine = not gc.get_freeze_count()
    if mine:
        gc.freeze()
    try:
        yield
    finally:
        if mine:
            gc.unfreeze()


def _ingest_entries(
    service: ImageSearch,
    entries: list[tuple[str, Path]],
    summary: IngestSummary,
    prefix: str,
    on_result: Progress | None,
    workers: int | None,
) -> None:
    since_build = 0

    def ingest_one(entry: tuple[str, Path]) -> IngestResult:
        relative, path = entry
        key = prefix + relative
        try:
            data = path.read_bytes()
        except OSError as error:
            return IngestResult(
                key, "refused", reason=f"cannot read file: {error}", code="unreadable"
            )
        try:
            with service.deferred_durability():
                return service.ingest(key, data)
        except InvalidKey as error:  # a file name no key may have: the others go on
            return IngestResult(key, "refused", reason=str(error), code="invalid_key")

    # OpenBLAS runs on one thread throughout, the last build included: the builds' products
    # are small, and its second thread spun waiting for work, while the workers needed the
    # core (3.6% of an ingest's CPU, about 2 ms an image on Corel-1k: `perf`,
    # docs/performance.md) and in the last build alone (twice that build's CPU, for no less
    # time). A shard's fit runs on one thread anyway (`shards.Projection`).
    runs = workers or service.model_info().runs_at_once + 1
    with one_blas_thread():
        with ThreadPoolExecutor(max_workers=runs) as pool:
            for result in pool.map(ingest_one, entries):
                summary.results.append(result)
                if on_result:
                    on_result(result)
                since_build += result.status == "added"
                if _time_to_build(since_build, len(entries) - len(summary.results)):
                    service.build_index(one_batch=True)
                    since_build = 0
        service.build_index()


def _time_to_build(waiting: int, left: int) -> bool:
    """Whether to build the `waiting` new images now, with `left` files still to ingest: a
    full batch, or a batch at least as large as what is left (see MIN_EARLY_BUILD)."""
    return waiting >= BUILD_EVERY or (waiting >= MIN_EARLY_BUILD and waiting >= left > 0)


@dataclass
class EmbeddedTree:
    """Features and class probabilities of every image under a folder (the batch tools' file)."""

    keys: list[str]
    features: np.ndarray  # float32 [n, d]
    probabilities: np.ndarray  # float32 [n, classes]
    model: str
    refused: dict[str, str] = field(default_factory=dict)  # key -> reason

    def save(self, path: Path) -> None:
        np.savez(
            path,
            keys=np.array(self.keys, dtype=str),
            features=self.features,
            probabilities=self.probabilities,
            model=np.array(self.model),
            refused_keys=np.array(list(self.refused), dtype=str),
            refused_reasons=np.array(list(self.refused.values()), dtype=str),
        )

    @classmethod
    def load(cls, path: Path) -> EmbeddedTree:
        with np.load(path, allow_pickle=False) as data:
            return cls(
                keys=data["keys"].tolist(),
                features=data["features"],
                probabilities=data["probabilities"],
                model=str(data["model"]),
                refused=dict(
                    zip(
                        data["refused_keys"].tolist(), data["refused_reasons"].tolist(), strict=True
                    )
                ),
            )


def embed_tree(
    service: ImageSearch,
    root: Path,
    *,
    on_file: Callable[[str], object] | None = None,
    workers: int = 2,
) -> EmbeddedTree:
    """Decode and embed every file under `root` (nothing is stored): the batch equivalent of
    ingest, for offline analysis. Files that are not usable images are listed with why."""
    keys: list[str] = []
    features: list[np.ndarray] = []
    probabilities: list[np.ndarray] = []
    refused: dict[str, str] = {}

    def embed_one(entry: tuple[str, Path]) -> tuple[str, Embedding | str]:
        key, path = entry
        try:
            return key, service.embed(path.read_bytes())
        except ImageRefused as refusal:
            return key, str(refusal)
        except OSError as error:
            return key, f"cannot read file: {error}"

    with ThreadPoolExecutor(max_workers=workers) as pool:
        for key, result in pool.map(embed_one, files_under(root)):
            if isinstance(result, str):
                refused[key] = result
            else:
                keys.append(key)
                features.append(result.features)
                probabilities.append(result.probabilities)
            if on_file:
                on_file(key)
    model = service.model_info()
    return EmbeddedTree(
        keys=keys,
        features=np.stack(features) if features else np.zeros((0, model.feature_dim), np.float32),
        probabilities=(
            np.stack(probabilities)
            if probabilities
            else np.zeros((0, model.num_classes), np.float32)
        ),
        model=model.name,
        refused=refused,
    )
