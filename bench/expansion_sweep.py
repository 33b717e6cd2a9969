"""Which expansion (issue 19): p@k of "more like this" over the stored embeddings of labelled
sets, raw features against expanded vectors, for every k (neighbours averaged in) and power
(their weight is similarity^power) of a grid, in numpy.

Each set is ingested once into its own data directory with the real model (ingest is
idempotent: a reused directory is only topped up); the sweep then reads the stored features.
Every image with another of its label is a query; relevant = same label; the query itself is
never a result. Three rankings of the stored 50-nearest neighbourhood (the `neighbours`
setting) are measured for each (k, power):
- "query": ranked by the query's expanded vector against its neighbours' raw vectors;
- "both": ranked by expanded vectors on both sides (database-side augmentation + query
  expansion), what imgsearch serves (index/expansion.py);
- "both, everything": the same over the whole collection, not only the stored 50 (the
  ceiling a re-ranking of the neighbourhood gives up).

    nice -n 5 .venv/bin/python bench/expansion_sweep.py \
        corel1k=/tmp/exp/corel1k:/work/shared/data/corel1k:/work/shared/data/corel1k/labels.csv \
        demo=/tmp/exp/demo:demo:demo/labels.csv --json /tmp/exp/sweep.json

It prints, per set, p@20 of raw exact cosine and of each ranking at each (k, power), then the
gain over raw averaged over the sets and its worst set, for choosing one (k, power) for all.

With `--served`, it measures instead what the service answers with the configured expansion
(after `imgsearch reindex --data-dir D` if the directory was ingested before expansion
existed): `imgsearch eval`'s tables 2 and 2b (exact, the stored neighbourhoods raw and
expanded, reverse search, per label, with query times), without its keyword and feedback
measurements.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from imgsearch.config import Settings
from imgsearch.evaluation.collection import LabelledCollection, ingest_labelled, read_labels
from imgsearch.evaluation.report import render_expansion, render_production
from imgsearch.evaluation.run import index_settings
from imgsearch.evaluation.similar import production_table, query_images, stored_embeddings
from imgsearch.index.expansion import expand_rows
from imgsearch.service import ImageSearch

KS = (1, 2, 3, 5, 7, 10, 15, 20)
POWERS = (0.0, 1.0, 3.0, 6.0, 10.0)
PAGE = 20
STORED = 50


def load(spec: str) -> tuple[str, np.ndarray, list[str]]:
    """`name=data_dir:folder:labels` -> (name, unit features of the labelled images, labels)."""
    name, rest = spec.split("=", 1)
    data_dir, folder, labels_file = rest.split(":")
    cached = Path(data_dir) / "sweep-features.npz"  # the sweep's own copy, read in a moment
    if cached.exists():
        saved = np.load(cached)
        return name, saved["features"], [str(label) for label in saved["labels"]]
    service = ImageSearch(Settings(data_dir=Path(data_dir)))
    collection = ingest_labelled(service, Path(folder), read_labels(Path(labels_file)))
    ids = sorted(collection.labels)
    features = stored_embeddings(service, ids)["features"].astype(np.float64)
    features /= np.linalg.norm(features, axis=1, keepdims=True)
    labels = [collection.labels[i] for i in ids]
    np.savez(cached, features=features, labels=np.array(labels))
    return name, features, labels


def precision(ranked: np.ndarray, labels: np.ndarray, rows: np.ndarray, k: int) -> float:
    """Mean p@k of `ranked` (queries x results, row indices) out of what a page could hold."""
    relevant = labels[ranked[:, :k]] == labels[rows][:, None]
    available = np.array([(labels == labels[r]).sum() - 1 for r in rows])
    return float(np.mean(relevant.sum(1) / np.minimum(k, available)))


def sweep(features: np.ndarray, labels_list: list[str]) -> dict[str, object]:
    labels = np.array(labels_list)
    ids = [str(i) for i in range(len(labels))]
    rows = np.array([int(i) for i in query_images_of(ids, labels_list)])
    similarity = features @ features.T
    np.fill_diagonal(similarity, -np.inf)  # never the query itself
    order = np.argsort(-similarity, axis=1, kind="stable")
    stored = order[:, :STORED]
    stored_sims = np.take_along_axis(similarity, stored, axis=1)
    results: dict[str, object] = {
        "raw": {k: precision(order[rows], labels, rows, k) for k in (5, 10, 20)}
    }
    grid = {}
    for k in KS:
        for power in POWERS:
            expanded = expand_rows(features, stored[:, :k], stored_sims[:, :k], power)
            both = _rerank(expanded[rows], expanded, stored[rows])
            query = _rerank(expanded[rows], features, stored[rows])
            everything = expanded[rows] @ expanded.T
            everything[np.arange(len(rows)), rows] = -np.inf
            full = np.argsort(-everything, axis=1, kind="stable")[:, :PAGE]
            grid[f"{k},{power:g}"] = {
                "query": precision(query, labels, rows, PAGE),
                "both": {kk: precision(both, labels, rows, kk) for kk in (5, 10, 20)},
                "both, everything": precision(full, labels, rows, PAGE),
            }
    results["grid"] = grid
    return results


def query_images_of(ids: list[str], labels: list[str]) -> list[str]:
    return query_images(LabelledCollection(dict(zip(ids, labels, strict=True))))


def _rerank(queries: np.ndarray, vectors: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """Each query's candidate rows ordered by dot product with `vectors`, best first."""
    scores = np.einsum("qd,qcd->qc", queries, vectors[candidates])
    return np.take_along_axis(candidates, np.argsort(-scores, axis=1, kind="stable"), axis=1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sets", nargs="+", help="name=data_dir:folder:labels_csv")
    parser.add_argument("--json", help="write every number here")
    parser.add_argument("--served", action="store_true", help="measure what the service serves")
    args = parser.parse_args()
    if args.served:
        for spec in args.sets:
            served(spec)
        return 0
    everything = {}
    for spec in args.sets:
        name, features, labels = load(spec)
        print(f"{name}: {len(labels)} images", file=sys.stderr)
        everything[name] = sweep(features, labels)
    report(everything)
    if args.json:
        Path(args.json).write_text(json.dumps(everything, indent=1))
    return 0


def served(spec: str) -> None:
    """Tables 2 and 2b of `imgsearch eval` for a set already ingested into its directory."""
    name, rest = spec.split("=", 1)
    data_dir, _, labels_file = rest.split(":")
    service = ImageSearch(Settings(data_dir=Path(data_dir)))
    labels = {}
    for relative, label in read_labels(Path(labels_file)).items():
        record = service.find_key(relative)
        if record is not None and service.is_indexed(record.id):
            labels.setdefault(record.id, label)
    collection = LabelledCollection(labels)
    results = production_table(service, collection)
    settings = index_settings(service)
    print(f"# {name}: {len(labels)} images\n")
    print(render_production(results, settings) + "\n")
    print(render_expansion(results, settings) + "\n", flush=True)


def report(everything: dict[str, dict[str, object]]) -> None:
    names = list(everything)
    print(
        "p@20, raw exact cosine: "
        + ", ".join(
            f"{n} {everything[n]['raw'][20]:.3f}"
            for n in names  # type: ignore[index]
        )
    )
    print(f"{'k,power':>8} | " + " | ".join(f"{n:>22}" for n in names) + " | mean gain | worst")
    print(f"{'':>8} | " + " | ".join(f"{'query  both  everything':>22}" for _ in names))
    for key in everything[names[0]]["grid"]:  # type: ignore[attr-defined]
        cells, gains = [], []
        for n in names:
            raw = everything[n]["raw"][20]  # type: ignore[index]
            cell = everything[n]["grid"][key]  # type: ignore[index]
            cells.append(
                f"{cell['query']:.3f} {cell['both'][20]:.3f} {cell['both, everything']:.3f}"
            )
            gains.append(cell["both"][20] - raw)
        print(
            f"{key:>8} | "
            + " | ".join(f"{c:>22}" for c in cells)
            + f" | {100 * np.mean(gains):+5.1f} | {100 * min(gains):+5.1f}"
        )


if __name__ == "__main__":
    raise SystemExit(main())
