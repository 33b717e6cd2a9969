"""Batch work on folders of images: ingest a whole tree, with index builds in batches."""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from imgsearch.ingest import IngestResult
from imgsearch.service import ImageSearch

Progress = Callable[[IngestResult], None]


@dataclass
class IngestSummary:
    results: list[IngestResult] = field(default_factory=list)

    @property
    def counts(self) -> Counter[str]:
        return Counter(result.status for result in self.results)

    @property
    def refused(self) -> list[IngestResult]:
        return [r for r in self.results if r.status == "refused"]


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
    on_result: Progress | None = None,
    build_every: int = 500,
    workers: int = 2,
) -> IngestSummary:
    """Ingest every file under `root`; the index is built every `build_every` new images.

    Decoding and storing run in `workers` threads while the model runs one image at a time,
    so a folder is ingested about as fast as the model can embed it.
    """
    summary = IngestSummary()
    since_build = 0

    def ingest_one(entry: tuple[str, Path]) -> IngestResult:
        key, path = entry
        try:
            data = path.read_bytes()
        except OSError as error:
            return IngestResult(
                key, "refused", reason=f"cannot read file: {error}", code="unreadable"
            )
        return service.ingestor.add(key, data)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        for result in pool.map(ingest_one, files_under(root)):
            summary.results.append(result)
            if on_result:
                on_result(result)
            since_build += result.status == "added"
            if since_build >= build_every:
                service.build_index()
                since_build = 0
    service.build_index()
    return summary
