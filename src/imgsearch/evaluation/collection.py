"""The labelled collection under evaluation: a `path,label` file and the folder it describes,
ingested through the normal bulk path so that what is measured is what users would search.
"""

from __future__ import annotations

import csv
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from imgsearch.bulk import Progress, ingest_tree
from imgsearch.evaluation import EvaluationError
from imgsearch.service import ImageSearch


@dataclass(frozen=True)
class Failure:
    path: str
    reason: str


@dataclass
class LabelledCollection:
    labels: dict[str, str]  # image id -> label, for every labelled image the index serves
    failed: list[Failure] = field(default_factory=list)  # labelled files not evaluated
    unlabelled: int = 0  # served images without a label: never a query, never relevant

    @property
    def by_label(self) -> dict[str, list[str]]:
        """Label -> its image ids, labels sorted."""
        grouped: dict[str, list[str]] = defaultdict(list)
        for image_id, label in self.labels.items():
            grouped[label].append(image_id)
        return {label: grouped[label] for label in sorted(grouped)}

    @property
    def sizes(self) -> dict[str, int]:
        return dict(sorted(Counter(self.labels.values()).items()))

    def relevant(self, label: str) -> set[str]:
        return {image_id for image_id, other in self.labels.items() if other == label}


def read_labels(path: Path) -> dict[str, str]:
    """`path,label` rows -> {relative POSIX path: label}. A first row `path,label` is a header;
    a byte-order mark, Windows line ends and backslashes in paths are taken as meant."""
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            rows = [row for row in csv.reader(handle) if any(cell.strip() for cell in row)]
    except (OSError, UnicodeDecodeError) as error:
        raise EvaluationError(f"cannot read {path}: {error}") from error
    if rows and [cell.strip().lower() for cell in rows[0]] == ["path", "label"]:
        rows = rows[1:]
    if not rows:
        raise EvaluationError(f"{path}: no rows; expected 'path,label', one row per image")
    labels: dict[str, str] = {}
    for number, row in enumerate(rows, start=1):
        cells = [cell.strip() for cell in row]
        if len(cells) != 2 or not all(cells):
            raise EvaluationError(
                f"{path}: row {number} is {row!r}; expected 'path,label', one row per image"
            )
        relative, label = cells
        labels[Path(relative.replace("\\", "/")).as_posix()] = label
    return labels


def ingest_labelled(
    service: ImageSearch,
    root: Path,
    labels: dict[str, str],
    *,
    on_result: Progress | None = None,
) -> LabelledCollection:
    """Ingest every file under `root` (idempotent: a reused data directory is only topped up)
    and find each labelled file's image in the index. Raises EvaluationError if none is."""
    summary = ingest_tree(service, root, on_result=on_result)
    results = {result.key: result for result in summary.results}
    collection = LabelledCollection(labels={})
    for relative, label in sorted(labels.items()):
        result = results.get(relative)
        if result is None:
            collection.failed.append(Failure(relative, "no such file under the folder"))
        elif result.image_id is None:
            collection.failed.append(Failure(relative, result.reason or result.status))
        elif not service.is_indexed(result.image_id):
            collection.failed.append(Failure(relative, "ingested but not in the index"))
        elif collection.labels.setdefault(result.image_id, label) != label:
            # The same bytes under two labels: the image counts under the label it had first.
            first = collection.labels[result.image_id]
            collection.failed.append(Failure(relative, f"same image as one labelled {first!r}"))
    if not collection.labels:
        raise EvaluationError(f"none of the {len(labels)} labelled files is in the index")
    collection.unlabelled = service.count() - len(collection.labels)
    return collection
