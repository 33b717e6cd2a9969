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
  expansion), what imgsearch serves (index/expansion.py) before its second query expansion
  (measured by `--methods`);
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
measurements. With `--feedback`, eval's learning rounds (table 4) learning from raw features
against expanded vectors (`learning`). With `--methods`, other uses of the stored graph than
one expansion, against the literature (`methods`), why a set near the top cannot gain 3
points (`corel_ceiling`), the reverse search of photos the collection does not hold
(`new_photos`) and labels smaller than the neighbours averaged (`small_labels`); these read
only the cached features, so `x:y` may stand for folder:labels.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

import numpy as np

from imgsearch.config import Settings
from imgsearch.evaluation.collection import LabelledCollection, ingest_labelled, read_labels
from imgsearch.evaluation.methods import Sandbox, Variant
from imgsearch.evaluation.report import render_expansion, render_feedback, render_production
from imgsearch.evaluation.run import index_settings
from imgsearch.evaluation.similar import production_table, query_images, stored_embeddings
from imgsearch.evaluation.simulated_user import MAX_ROUNDS, MODES, feedback_table
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


def methods(features: np.ndarray, labels_list: list[str]) -> dict[str, float]:
    """p@20 of other ways to use the stored 50-nearest graph (issue 19's sweep against the
    literature), each re-ranking the stored 50 like what is served, with their ceiling:
    - "oracle": the stored 50 with every same-label image first (no re-ranking does better);
    - "alpha-QE k, a": expanded vectors on both sides with k neighbours, weights sim^a
      (Radenovic et al. 2018: larger k with a higher power);
    - "DBA k + QE q": stored expanded vectors (DBA, k=10, power 1), and at query time the
      query's expanded vector averaged again with its q best re-ranked neighbours' expanded
      vectors (Chum et al. 2007's average QE on top of DBA), then re-ranked by it: free, as
      "more like this" has read those vectors already;
    - "mutual K, l": DBA whose neighbours count in full when each is in the other's first K
      (reciprocal), else by l;
    - "diffusion k, a, t, y": Iscen et al. 2017, truncated to t steps over the mutual kNN
      graph of the stored lists' first k (weights sim^3, symmetrically normalised), alpha a,
      started from the query alone (y=1) or the query and its 10 nearest (y=10);
    - "centred": hubness reduction (Suzuki et al. 2013): the set's mean feature taken from
      every vector before the cosine, so the stored lists and expanded vectors are the
      centred vectors' ("exact": centred cosine over the whole set; then DBA 10 + QE 3);
    - "jaccard K[ mutual], l": k-reciprocal re-ranking's Jaccard distance (Zhong et al.
      2017): the served scores (DBA 10 + QE 3) blended, by l, with the Jaccard similarity of
      the query's and each candidate's first K stored neighbours (only mutual ones)."""
    labels = np.array(labels_list)
    n = len(labels)
    ids = [str(i) for i in range(n)]
    rows = np.array([int(i) for i in query_images_of(ids, labels_list)])
    similarity = features @ features.T
    np.fill_diagonal(similarity, -np.inf)
    stored = np.argsort(-similarity, axis=1, kind="stable")[:, :STORED]
    sims = np.take_along_axis(similarity, stored, axis=1)
    candidates = stored[rows]
    same = labels[candidates] == labels[rows][:, None]
    oracle = np.take_along_axis(candidates, np.argsort(~same, axis=1, kind="stable"), axis=1)
    found = {"raw": precision(candidates, labels, rows, PAGE)}
    found["oracle"] = precision(oracle, labels, rows, PAGE)

    def both(expanded: np.ndarray) -> float:
        return precision(_rerank(expanded[rows], expanded, candidates), labels, rows, PAGE)

    for k, power in ((10, 1.0), (10, 3.0), (20, 3.0), (50, 3.0), (50, 5.0)):
        expanded = expand_rows(features, stored[:, :k], sims[:, :k], power)
        found[f"alpha-QE {k}, {power:g}"] = both(expanded)
    for q in (1, 2, 3, 5, 10):
        served = _dba_qe_scores(features, stored, sims, rows, q)
        found[f"DBA 10 + QE {q}"] = precision(_by_scores(candidates, served), labels, rows, PAGE)
    served = _dba_qe_scores(features, stored, sims, rows, 3)
    for within, rest in ((10, 0.0), (10, 0.5), (20, 0.0), (20, 0.5)):
        near = np.zeros((n, n), bool)
        np.put_along_axis(near, stored[:, :within], True, 1)
        mutual = np.take_along_axis(near & near.T, stored[:, :10], 1)
        weights = np.maximum(sims[:, :10], 0.0) * np.where(mutual, 1.0, rest)
        found[f"mutual {within}, {rest:g}"] = both(
            expand_rows(features, stored[:, :10], weights, 1.0)
        )
    centred = features - features.mean(axis=0)
    centred /= np.linalg.norm(centred, axis=1, keepdims=True)
    centred_similarity = centred @ centred.T
    np.fill_diagonal(centred_similarity, -np.inf)
    centred_stored = np.argsort(-centred_similarity, axis=1, kind="stable")[:, :STORED]
    centred_sims = np.take_along_axis(centred_similarity, centred_stored, axis=1)
    found["centred, exact"] = precision(centred_stored[rows], labels, rows, PAGE)
    centred_served = _dba_qe_scores(centred, centred_stored, centred_sims, rows, 3)
    found["centred, DBA 10 + QE 3"] = precision(
        _by_scores(centred_stored[rows], centred_served), labels, rows, PAGE
    )
    for within, mutual_only in itertools.product((10, 20), (False, True)):
        listed = np.zeros((n, n), np.float32)
        np.put_along_axis(listed, stored[:, :within], 1.0, 1)
        if mutual_only:
            listed *= listed.T
        np.fill_diagonal(listed, 1.0)
        shared = np.einsum("qn,qcn->qc", listed[rows], listed[candidates])
        sizes = listed.sum(axis=1)
        jaccard = shared / (sizes[rows][:, None] + sizes[candidates] - shared)
        for blend in (0.1, 0.3):
            scores = (1 - blend) * served + blend * jaccard
            name = f"jaccard {within}{' mutual' if mutual_only else ''}, {blend:g}"
            found[name] = precision(_by_scores(candidates, scores), labels, rows, PAGE)
    for k, alpha, steps, start in itertools.product((10, 50), (0.9, 0.99), (3, 10), (1, 10)):
        scores = _diffused(stored[:, :k], sims[:, :k], rows, alpha, steps, start)
        ranked = _by_scores(candidates, np.take_along_axis(scores, candidates, 1))
        found[f"diffusion {k}, {alpha:g}, {steps}, {start}"] = precision(ranked, labels, rows, PAGE)
    return found


def _dba_qe_scores(
    features: np.ndarray, stored: np.ndarray, sims: np.ndarray, rows: np.ndarray, q: int
) -> np.ndarray:
    """What is served, as scores of each query's stored 50: stored expanded vectors (DBA, k
    10, power 1), the query expanded again by its first `q` results' (QE)."""
    dba = expand_rows(features, stored[:, :10], sims[:, :10], 1.0)
    candidates = stored[rows]
    scores = np.einsum("qd,qcd->qc", dba[rows], dba[candidates])
    order = np.argsort(-scores, axis=1, kind="stable")
    first, best = np.take_along_axis(candidates, order, 1), np.take_along_axis(scores, order, 1)
    query = expand_rows(dba[rows], first[:, :q], best[:, :q], 1.0, base=dba)
    return np.einsum("qd,qcd->qc", query, dba[candidates])


def _by_scores(candidates: np.ndarray, scores: np.ndarray) -> np.ndarray:
    return np.take_along_axis(candidates, np.argsort(-scores, axis=1, kind="stable"), axis=1)


def _diffused(
    stored: np.ndarray, sims: np.ndarray, rows: np.ndarray, alpha: float, steps: int, start: int
) -> np.ndarray:
    """Truncated diffusion scores (queries x images) over the mutual kNN graph."""
    n = len(stored)
    graph = np.zeros((n, n))
    np.put_along_axis(graph, stored, np.maximum(sims, 0.0) ** 3, 1)
    graph = np.minimum(graph, graph.T)
    degree = np.sqrt(np.maximum(graph.sum(1), 1e-12))
    graph /= degree[:, None] * degree[None, :]
    seed = np.zeros((len(rows), n))
    seed[np.arange(len(rows)), rows] = 1.0
    if start > 1:
        np.put_along_axis(seed, stored[rows, :start], np.maximum(sims[rows, :start], 0) ** 3, 1)
    scores = seed.copy()
    for _ in range(steps):
        scores = alpha * scores @ graph + (1 - alpha) * seed
    return scores


def new_photos(features: np.ndarray, labels_list: list[str], folds: int = 5) -> dict[str, float]:
    """Reverse search of photos the collection does not hold: in each of `folds` folds, a
    fifth of the images are the photos and the rest the collection, with its own lists and
    expanded vectors (k 10, power 1). p@20 of each photo's 50 nearest in the collection by
    raw cosine; ranked by expanded vectors (the photo expanded by its 10 nearest); and then
    with the query expanded again by its first 3 results (what is served)."""
    labels = np.array(labels_list)
    order = np.random.default_rng(0).permutation(len(labels))
    found: dict[str, list[float]] = {"raw": [], "expanded": [], "expanded, query again": []}
    for fold in range(folds):
        photos = np.sort(order[fold::folds])
        kept = np.setdiff1d(np.arange(len(labels)), photos)
        vectors, held = features[kept], labels[kept]
        inside = vectors @ vectors.T
        np.fill_diagonal(inside, -np.inf)
        stored = np.argsort(-inside, axis=1, kind="stable")[:, :STORED]
        expanded = expand_rows(
            vectors, stored[:, :10], np.take_along_axis(inside, stored[:, :10], 1), 1.0
        )
        outside = features[photos] @ vectors.T
        nearest = np.argsort(-outside, axis=1, kind="stable")[:, :STORED]
        near_sims = np.take_along_axis(outside, nearest, 1)
        query = expand_rows(features[photos], nearest[:, :10], near_sims[:, :10], 1.0, base=vectors)
        scores = np.einsum("qd,qcd->qc", query, expanded[nearest])
        first = np.argsort(-scores, axis=1, kind="stable")[:, :3]
        again = expand_rows(
            query,
            np.take_along_axis(nearest, first, 1),
            np.take_along_axis(scores, first, 1),
            1.0,
            base=expanded,
        )
        wanted = labels[photos]
        relevant = np.array([(held == label).sum() for label in wanted])
        for name, ranking in (
            ("raw", nearest),
            ("expanded", _rerank(query, expanded, nearest)),
            ("expanded, query again", _rerank(again, expanded, nearest)),
        ):
            hits = (held[ranking[:, :PAGE]] == wanted[:, None]).sum(1)
            found[name] += list(hits[relevant > 0] / np.minimum(PAGE, relevant[relevant > 0]))
    return {name: float(np.mean(values)) for name, values in found.items()}


def small_labels(
    features: np.ndarray, labels_list: list[str], sizes: tuple[int, ...] = (4, 6, 8, 12, 20)
) -> dict[int, dict[str, float]]:
    """Whether expansion holds on labels smaller than the neighbours it averages: every label
    cut to n images (seeded), p@20 of raw exact cosine and of what is served (DBA 10 + QE 3
    over the stored 50, or over all but the query when fewer), for each n of `sizes`."""
    labels = np.array(labels_list)
    rng = np.random.default_rng(0)
    found = {}
    for size in sizes:
        kept = np.sort(
            np.concatenate(
                [
                    rng.choice(np.flatnonzero(labels == label), size, replace=False)
                    if (labels == label).sum() > size
                    else np.flatnonzero(labels == label)
                    for label in np.unique(labels)
                ]
            )
        )
        vectors, held = features[kept], labels[kept]
        rows = np.array(
            [int(i) for i in query_images_of([str(i) for i in range(len(held))], list(held))]
        )
        similarity = vectors @ vectors.T
        np.fill_diagonal(similarity, -np.inf)
        stored = np.argsort(-similarity, axis=1, kind="stable")[:, : min(STORED, len(held) - 1)]
        sims = np.take_along_axis(similarity, stored, axis=1)
        served = _dba_qe_scores(vectors, stored, sims, rows, 3)
        found[size] = {
            "images": len(held),
            "raw": precision(stored[rows], held, rows, PAGE),
            "served": precision(_by_scores(stored[rows], served), held, rows, PAGE),
        }
    return found


def corel_ceiling(features: np.ndarray, labels_list: list[str]) -> dict[str, float]:
    """Why a set near the top cannot gain much: of its queries, how many have another label's
    image on their raw first page, and how many of those the stored 50 could fix at all."""
    labels = np.array(labels_list)
    rows = np.array(
        [int(i) for i in query_images_of([str(i) for i in range(len(labels))], labels_list)]
    )
    similarity = features @ features.T
    np.fill_diagonal(similarity, -np.inf)
    stored = np.argsort(-similarity, axis=1, kind="stable")[rows, :STORED]
    same = labels[stored] == labels[rows][:, None]
    # A page holds at most the label's other images: on a small label the rest is no fault.
    page = np.minimum(PAGE, [(labels == labels[r]).sum() - 1 for r in rows])
    on_page = np.arange(STORED)[None, :] < page[:, None]
    wrong = (on_page & ~same).sum(1)
    fixable = np.minimum(wrong, (~on_page & same).sum(1))
    return {
        "queries": len(rows),
        "with another label on page 1": int((wrong > 0).sum()),
        "wrong images on page 1": int(wrong.sum()),
        "of them, replaceable from the stored 50": int(fixable.sum()),
    }


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
    parser.add_argument(
        "--feedback", action="store_true", help="learning rounds, raw against expanded vectors"
    )
    parser.add_argument(
        "--methods", action="store_true", help="other uses of the graph than expanded vectors"
    )
    args = parser.parse_args()
    if args.methods:
        compare_methods(args.sets, args.json)
        return 0
    if args.served or args.feedback:
        for spec in args.sets:
            (learning if args.feedback else served)(spec)
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


def compare_methods(specs: list[str], json_path: str | None) -> None:
    """`methods` on every set, printed as one table: p@20 and the gain over raw, its mean over
    the sets and its worst set; then each set's `corel_ceiling` counts and `new_photos`."""
    found, ceilings, photos, small = {}, {}, {}, {}
    for spec in specs:
        name, features, labels = load(spec)
        print(f"{name}: {len(labels)} images", file=sys.stderr, flush=True)
        found[name] = methods(features, labels)
        ceilings[name] = corel_ceiling(features, labels)
        photos[name] = new_photos(features, labels)
        small[name] = small_labels(features, labels)
    names = list(found)
    print(f"{'method':>26} | " + " | ".join(f"{n:>9}" for n in names) + " | mean gain | worst")
    for method in found[names[0]]:
        gains = [100 * (found[n][method] - found[n]["raw"]) for n in names]
        cells = " | ".join(f"{100 * found[n][method]:9.2f}" for n in names)
        print(f"{method:>26} | {cells} | {np.mean(gains):+9.2f} | {min(gains):+5.2f}")
    for name, counts in ceilings.items():
        print(f"{name}: " + ", ".join(f"{key} {value}" for key, value in counts.items()))
    print("reverse search of photos not in the collection (new_photos), p@20:")
    for name, by_ranking in photos.items():
        print(f"{name}: " + ", ".join(f"{k} {100 * v:.2f}" for k, v in by_ranking.items()))
    print("every label cut to n images (small_labels), p@20 raw -> served:")
    for name, by_size in small.items():
        print(
            f"{name}: "
            + "; ".join(
                f"n {size} ({m['images']:g} images) {100 * m['raw']:.1f} -> "
                f"{100 * m['served']:.1f} ({100 * (m['served'] - m['raw']):+.2f})"
                for size, m in by_size.items()
            )
        )
    if json_path:
        numbers = {"methods": found, "ceilings": ceilings, "new photos": photos, "small": small}
        Path(json_path).write_text(json.dumps(numbers, indent=1))


def ingested(spec: str) -> tuple[str, ImageSearch, LabelledCollection]:
    """A set already ingested into its directory: (name, service, its labelled images)."""
    name, rest = spec.split("=", 1)
    data_dir, _, labels_file = rest.split(":")
    service = ImageSearch(Settings(data_dir=Path(data_dir)))
    labels = {}
    for relative, label in read_labels(Path(labels_file)).items():
        record = service.find_key(relative)
        if record is not None and service.is_indexed(record.id):
            labels.setdefault(record.id, label)
    return name, service, LabelledCollection(labels)


def learning(spec: str) -> None:
    """`imgsearch eval`'s learning rounds (table 4: a simulated user per label and mode votes
    on each page) with the configured feedback method learning from raw features, then from
    expanded vectors, and the mean p@20 of each page over the runs (a run that stopped at
    the target keeps its last page)."""
    name, service, collection = ingested(spec)
    by_vectors = {}
    for expanded in (False, True):
        settings = service.settings.model_copy(update={"expansion_learning": expanded})
        with Sandbox(ImageSearch(settings)) as sandbox:
            runs = feedback_table(sandbox, collection, Variant())
        by_vectors["expanded" if expanded else "raw"] = runs
    print(f"# {name}: {len(collection.labels)} images\n")
    print(render_feedback(by_vectors, service.settings.feedback_method) + "\n")
    for vectors, runs in by_vectors.items():
        for mode in MODES:
            pages = [r.precisions for r in runs if r.mode == mode]
            means = [
                100 * float(np.mean([p[min(i, len(p) - 1)] for p in pages]))
                for i in range(MAX_ROUNDS + 1)
            ]
            print(
                f"{vectors:>8} {mode:>7} mean p@20 per page: " + " ".join(f"{m:.1f}" for m in means)
            )
    print(flush=True)


def served(spec: str) -> None:
    """Tables 2 and 2b of `imgsearch eval` for a set already ingested into its directory."""
    name, service, collection = ingested(spec)
    labels = collection.labels
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
