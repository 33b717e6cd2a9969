"""How far a new image's nearest images must be searched for the lists it enters
(neighbourhoods.REACH), on the stored features of real photo sets.

When an image arrives, the builder asks the index for its REACH nearest images and offers it
to their stored lists (each keeps its k = 50 nearest). An image Y whose list the newcomer X
should enter but which is farther from X than X's REACH-th nearest is never offered it: Y's
list keeps a farther neighbour instead. This replays each set's images arriving one at a time
in a random order, keeping every list as the builder does with exact distances, for each
REACH, and compares the lists with exact ones at the end:
- list recall: the share of the exact 50 (and of the first 20, a page) that the kept lists
  hold;
- reverse ranks: over every pair where X belongs in Y's exact list, the share whose rank
  among X's nearest at X's arrival was beyond each REACH (the offers each REACH misses);
- p@20 of "more like this" (same label, the image itself never a result) from the kept lists
  against exact lists (what the misses cost a user): by raw features (a list's first 20) and
  as served (the list re-ranked by expanded vectors made from each list's first 10,
  index/expansion.py, without the second, query-side expansion).

    nice -n 5 .venv/bin/python bench/neighbour_reach.py --reach 50 99 200 \
        corel1k=/tmp/exp/corel1k:/work/shared/data/corel1k:/work/shared/data/corel1k/labels.csv \
        demo=/tmp/exp/demo:demo:demo/labels.csv

Sets are given as bench/expansion_sweep.py takes them (`name=data_dir:folder:labels`, the
folder ingested into the directory once, its features cached there); `all` (every set in one
collection, as a mixed archive would be) is added when more than one is given.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from expansion_sweep import load, precision

from imgsearch.index.expansion import expand_rows

K = 50
PAGE = 20


def replay(
    features: np.ndarray, labels: np.ndarray, reaches: list[int], seed: int = 0
) -> dict[str, object]:
    """Lists kept as images arrive in a random order, for each reach, against exact lists."""
    n = len(features)
    order = np.random.default_rng(seed).permutation(n)
    vectors = features[order]
    labels = labels[order]
    rows = np.arange(n)
    distances = 1.0 - vectors @ vectors.T
    np.fill_diagonal(distances, np.inf)
    exact = np.argsort(distances, axis=1, kind="stable")[:, :K]
    # X (arriving at t) belongs in the exact list of Y (< t) only if no later image pushes it
    # out, so the misses that matter are counted on the final exact lists.
    belongs = np.zeros((n, n), dtype=bool)
    belongs[np.repeat(np.arange(n), K), exact.ravel()] = True  # belongs[y, x]: x in y's list
    reverse_ranks: list[int] = []
    for t in range(1, n):
        earlier = distances[t, :t]
        ranks = np.empty(t, dtype=np.int64)
        ranks[np.argsort(earlier, kind="stable")] = np.arange(1, t + 1)
        reverse_ranks.extend(ranks[belongs[:t, t]].tolist())
    result: dict[str, object] = {
        "images": n,
        "p@20 exact": precision(exact, labels, rows, PAGE),
        "p@20 exact, expanded": precision(_served(vectors, exact.tolist()), labels, rows, PAGE),
    }
    rank_array = np.array(reverse_ranks)
    for reach in reaches:
        result[f"beyond {reach}"] = float(np.mean(rank_array > reach)) if len(rank_array) else 0.0
        kept = _kept_lists(distances, reach)
        result[f"recall@50 {reach}"] = _recall(kept, exact, K)
        result[f"recall@20 {reach}"] = _recall(kept, exact, PAGE)
        # (a list that was never offered enough images to fill a page counts its gaps as misses)
        pages = np.array([(page[:PAGE] + [-1] * PAGE)[:PAGE] for page in kept])
        result[f"p@20 {reach}"] = precision(pages, np.append(labels, ""), rows, PAGE)
        served = _served(vectors, kept)
        result[f"p@20 {reach}, expanded"] = precision(served, np.append(labels, ""), rows, PAGE)
    result["largest reverse rank"] = int(rank_array.max()) if len(rank_array) else 0
    return result


def _kept_lists(distances: np.ndarray, reach: int) -> list[list[int]]:
    """Every image's list at the end, kept as the builder keeps it (neighbourhoods.py):
    an arrival's own list is its K nearest; it is offered to its `reach` nearest's lists."""
    n = len(distances)
    lists: list[list[int]] = [[] for _ in range(n)]
    for t in range(1, n):
        earlier = distances[t, :t]
        nearest = np.argsort(earlier, kind="stable")
        lists[t] = nearest[:K].tolist()
        for y in nearest[:reach].tolist():
            current = lists[y]
            if len(current) < K or earlier[y] < distances[y, current[-1]]:
                current.append(t)
                current.sort(key=lambda other, y=y: distances[y, other])
                del current[K:]
    return lists


def _served(vectors: np.ndarray, lists: list[list[int]], first: int = 10) -> np.ndarray:
    """Each list's first PAGE when re-ranked by expanded vectors (k 10, power 1, both sides),
    padded with -1 where a list is shorter than a page."""
    padded = np.array([(near[:first] + [-1] * first)[:first] for near in lists])
    similarities = np.where(
        padded >= 0, np.einsum("nd,nkd->nk", vectors, vectors[np.maximum(padded, 0)]), 0.0
    )
    expanded = expand_rows(vectors, np.maximum(padded, 0), similarities, 1.0)
    pages = []
    for row, near in enumerate(lists):
        order = np.argsort(-(expanded[near] @ expanded[row]), kind="stable")
        pages.append(([near[i] for i in order[:PAGE]] + [-1] * PAGE)[:PAGE])
    return np.array(pages)


def _recall(kept: list[list[int]], exact: np.ndarray, depth: int) -> float:
    held = [len(set(kept[i][:depth]) & set(exact[i, :depth].tolist())) for i in range(len(kept))]
    return float(np.sum(held) / (len(kept) * min(depth, len(kept) - 1)))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sets", nargs="+", help="name=data_dir")
    parser.add_argument("--reach", nargs="+", type=int, default=[50, 99, 200])
    parser.add_argument("--seed", type=int, default=0, help="of the order images arrive in")
    args = parser.parse_args()
    loaded = [(name, features, np.array(labels)) for name, features, labels in map(load, args.sets)]
    if len(loaded) > 1:  # labels kept apart by set: "flowers" of two sets are not one label
        loaded.append(
            (
                "all",
                np.concatenate([f for _, f, _ in loaded]),
                np.concatenate(
                    [[f"{name}/{label}" for label in labels] for name, _, labels in loaded]
                ),
            )
        )
    for name, features, labels in loaded:
        row = replay(features, labels, args.reach, args.seed)
        print(
            f"{name}: {row['images']} images, p@20 of exact lists {row['p@20 exact']:.2%} "
            f"(expanded {row['p@20 exact, expanded']:.2%}), "
            f"largest reverse rank {row['largest reverse rank']}"
        )
        for r in args.reach:
            print(
                f"  reach {r:>4}: offers missed {row[f'beyond {r}']:7.3%}  list recall@50 "
                f"{row[f'recall@50 {r}']:7.3%}  @20 {row[f'recall@20 {r}']:7.3%}  "
                f"p@20 {row[f'p@20 {r}']:7.3%} (expanded {row[f'p@20 {r}, expanded']:7.3%})",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
