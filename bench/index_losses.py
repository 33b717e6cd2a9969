"""Where the Annoy index loses recall@20: in the projection, or in Annoy's walk of its forest.

Each shard's Annoy inspects `nodes` leaf entries of its forest (the query's plan,
`reader._plan`); a query's candidates are the images inspected nearest by projected distance
across all shards (with the query's residual under each shard's projection; as many as the
plan's `count`s add up to, `reader._closest_projected`), then re-ranked exactly. Of each
query's true 20 nearest (exact cosine on the stored features), this tells apart, for each
candidate budget C and nodes N:

- **projected**: the share inside the plan's top `count` by exact projected distance in their
  shard: the recall with every node inspected, so what the projection and C allow;
- **recall**: the share inside each shard's own `count` nearest inspected (the rule until
  session 16, each shard proposing its share);
- **not inspected** / **inspected, beyond C**: the share Annoy lost because no tree's leaves
  it walked held them, or because closer projected images filled the `count` before them;
- **Annoy vs projected**: the share of the exact projected top `count` Annoy proposed;
- **distinct**: the images a query inspected (median, all shards): N leaf entries over the
  trees hold fewer distinct images;
- **merged across shards**: the recall of as many candidates taken from all the inspected
  images by projected distance (the index's rule), rather than each shard's share: the index's
  recall@20.

The collection is `--size` images as bench/index_scale.py synthesises them (`--copies`,
`--features`; its index cached under `--cache` as that bench builds it), or with `--size 0` the
real features themselves (`--features`; the demo's and Corel-1k's without it), written in
the builder's layout of `--shard-size` into a temporary store, every other photo a query with
its own id excluded. The floor of nodes (`reader.MIN_QUERY_NODES`) is set to 0
here: N is what a query inspects (grown past 100k images, as `query_nodes` grows it).

    nice -n 5 .venv/bin/python bench/index_losses.py --size 0 --features PHOTOS/*.npz
    nice -n 5 .venv/bin/python bench/index_losses.py --size 50000 --copies 4 --cache /tmp/idx
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import index_scale

from imgsearch.index import reader
from imgsearch.index.manifest import Manifest, ShardEntry, write_manifest
from imgsearch.index.reader import Index
from imgsearch.index.shards import Projection, ShardData, write_build
from imgsearch.storage.local import LocalObjectStore
from imgsearch.vectors import unit_rows

K = 20
NAMES = ("projected", "recall", "missed", "beyond", "annoy", "distinct", "merged")


def build_real(
    store: LocalObjectStore, features: np.ndarray, shard_size: int, trees: int
) -> list[int]:
    """The real `features` as an index in the builder's layout (one projection, the first
    shard's, as bench/index_scale.py builds); the shard sizes."""
    layout = index_scale.tiered_layout(len(features), shard_size)
    entries, start = [], 0
    projection: Projection | None = None
    halves = features.astype(np.float16)
    for number, count in enumerate(layout):
        rows = range(start, start + count)
        data = ShardData(
            [index_scale.image_id(row) for row in rows],
            halves[start : start + count],
            np.zeros((count, 1000), np.float16),
        )
        build = write_build(store, f"s{number:06d}", data, trees, projection=projection)
        projection = build.projection
        sealed = number < len(layout) - 1 or count == shard_size
        entries.append(ShardEntry(f"s{number:06d}", build.id, count, sealed, sha256=build.sha256))
        start += count
    manifest = Manifest(
        generation=1,
        shards=tuple(entries),
        next_shard=len(entries),
        model="bench",
        dim=features.shape[1],
        trees=trees,
    )
    write_manifest(store, manifest, None)
    return layout


def real_truth(features: np.ndarray, queries: np.ndarray) -> list[list[int]]:
    """Each query row's exact 20 nearest other rows (on the float16 features, as stored)."""
    halves = features.astype(np.float16).astype(np.float32)
    truth = []
    for row in queries:
        similar = halves @ halves[row]
        similar[row] = -np.inf
        truth.append(np.argsort(-similar)[:K].tolist())
    return truth


def measure(
    index: Index,
    queries: np.ndarray,
    truth: list[list[int]],
    excluded: list[str | None],
    budgets: list[int],
    nodes_asked: list[int],
) -> None:
    """Print a row per (C, N): the shares of the true 20 nearest described above."""
    snapshot = index._snapshot
    shards = snapshot.shards
    # Every shard's rows projected, and each row's (shard, local row) by global row.
    projected_rows = [
        np.concatenate(
            [
                shard.projection.apply(shard.features[start : start + 8192])
                for start in range(0, len(shard.ids), 8192)
            ]
        )
        for shard in shards
    ]
    where: dict[int, tuple[int, int]] = {}
    for number, shard in enumerate(shards):
        for row, image_id in enumerate(shard.ids):
            where[int(image_id, 16)] = (number, row)
    settings = [(c, n) for c in budgets for n in nodes_asked]
    totals: dict[tuple[int, int], dict[str, list[float]]] = {
        s: {name: [] for name in NAMES} for s in settings
    }
    for query, exact, skipped in zip(queries, truth, excluded, strict=True):
        wanted = K + (skipped is not None)
        query_projected, residuals = snapshot.project_with_residuals(query)
        # Each true neighbour's rank by projected distance in its shard.
        ranks_in_shard = []
        for number, rows in enumerate(projected_rows):
            distances = np.sum((rows - np.asarray(query_projected[number])) ** 2, axis=1)
            rank = np.empty(len(rows), np.int64)
            order = np.argsort(distances, kind="stable")
            rank[order] = np.arange(len(rows))
            ranks_in_shard.append((rank, order))
        located = [where[row] for row in exact]
        # The true neighbours' rows, shard by shard.
        rows_in = [
            np.array([r for s, r in located if s == n], np.int64) for n in range(len(shards))
        ]
        for candidates, nodes in settings:
            plan = reader._plan(snapshot, candidates, nodes, wanted)
            # (squared projected distance + residual, as the index weighs it; shard, row)
            every: list[tuple[float, int, int]] = []
            projected = found = missed = 0
            distinct, proposed_of_top = 0, 0.0
            for number, (shard, (count, search_k)) in enumerate(zip(shards, plan, strict=True)):
                items, item_distances = shard._forest.get_nns_by_vector(
                    query_projected[number],
                    len(shard.ids),
                    # as Index.nearest: Annoy's default (-1) walks the shard's count x trees
                    search_k=search_k if search_k > 0 else count * shard.trees,
                    include_distances=True,
                )
                walked = np.array(items, np.int64)
                distinct += len(walked)
                every.extend(
                    (d * d + residuals[number], number, row)
                    for d, row in zip(item_distances, items, strict=True)
                )
                rank, order = ranks_in_shard[number]
                wanted_here = rows_in[number]
                projected += int(np.sum(rank[wanted_here] < count))
                found += int(np.isin(wanted_here, walked[:count]).sum())
                missed += int((~np.isin(wanted_here, walked)).sum())
                top = order[:count]
                proposed_of_top += np.isin(top, walked[:count]).sum() / len(top) / len(shards)
            share = totals[(candidates, nodes)]
            # The index's rule: the plan's candidates in all, taken across shards by squared
            # projected distance plus the query's residual under each shard's projection.
            budget = sum(count for count, _ in plan)
            merged = {(number, row) for _, number, row in sorted(every)[:budget]}
            share["merged"].append(sum(place in merged for place in located) / K)
            share["projected"].append(projected / K)
            share["recall"].append(found / K)
            share["missed"].append(missed / K)
            share["beyond"].append((K - found - missed) / K)
            share["annoy"].append(proposed_of_top)
            share["distinct"].append(distinct)
    print(
        "| C | N | plan (count:nodes per shard) | projected | recall | not inspected "
        "| inspected, beyond C | Annoy vs projected | distinct | merged across shards |"
    )
    print("|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|")
    for setting in settings:
        mean = {
            name: statistics.mean(values) if values else float("nan")
            for name, values in totals[setting].items()
        }
        plan = reader._plan(snapshot, *setting, K)
        print(
            f"| {setting[0]} | {setting[1]} | {' + '.join(f'{c}:{n}' for c, n in plan)} "
            f"| {mean['projected']:.4f} | {mean['recall']:.4f} | {mean['missed']:.4f} "
            f"| {mean['beyond']:.4f} | {mean['annoy']:.4f} "
            f"| {statistics.median(totals[setting]['distinct']):.0f} "
            f"| {mean['merged']:.4f} |",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=0, help="0: the real features themselves")
    parser.add_argument("--shard-size", type=int, default=10_000)
    parser.add_argument("--trees", type=int, default=20)
    parser.add_argument("--queries", type=int, default=200, help="of a synthesised collection")
    parser.add_argument("--candidates", type=int, nargs="+", default=[120, 240, 480])
    parser.add_argument("--nodes", type=int, nargs="+", default=[1500, 2500, 5000, 10000])
    parser.add_argument(
        "--cache", type=Path, default=index_scale.REPO / "build" / "bench" / "index_scale"
    )
    parser.add_argument("--rebuild", action="store_true")
    parser.add_argument(
        "--shuffle", action="store_true", help="with --size 0: the photos in a random order"
    )
    index_scale.add_synthesis_arguments(parser)
    args = parser.parse_args()
    real = index_scale.configure_synthesis(args)
    reader.MIN_QUERY_NODES = 0  # N is what a query inspects
    with tempfile.TemporaryDirectory() as scratch:
        if args.size == 0:
            features = unit_rows(real[0].astype(np.float32))
            if args.shuffle:  # else in the files' order: shards of one source each, or mixed
                features = features[np.random.default_rng(0).permutation(len(features))]
            store = LocalObjectStore(Path(scratch))
            layout = build_real(store, features, args.shard_size, args.trees)
            rows = np.arange(0, len(features), 2)
            queries = features[rows]
            truth = real_truth(features, rows)
            excluded: list[str | None] = [index_scale.image_id(row) for row in rows]
            described = f"{len(features):,} real photos, every other one a query (itself excluded)"
        else:
            index_scale.chunk_cache = args.cache / "chunks"
            index_scale.chunk_cache.mkdir(parents=True, exist_ok=True)
            store, built = index_scale.cached_tiered(args.cache, real, args.size, args)
            layout = built["layout"]
            queries = index_scale.queries_of(real, args.size, args.queries)
            kept = args.cache / f"truth-{args.size}{index_scale.synthesis.tag}-{args.queries}.npy"
            if kept.exists():
                truth = np.load(kept).tolist()
            else:
                found, _ = index_scale.exact_truth(real, args.size, queries, K)
                truth = [sorted(row) for row in found]
                np.save(kept, np.array(truth))
            excluded = [None] * len(queries)
            copies = index_scale.synthesis.copies
            kind = f"{copies} copies of each point" if copies else "the default synthesis"
            described = f"{args.size:,} synthesised images ({kind}), {len(queries)} queries"
        index = Index(store)
        index.refresh(force=True)
        shards = "+".join(f"{count:,}" for count in layout)
        print(f"{described}; shards {shards}, {args.trees} trees; {len(real[0]):,} real photos")
        measure(index, queries, truth, excluded, args.candidates, args.nodes)


if __name__ == "__main__":
    main()
