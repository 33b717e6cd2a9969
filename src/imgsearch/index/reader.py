"""The search side of the Annoy shards (the index port's embedded engine, base.py): all shards
of the current manifest, searched as one.

Nearest-neighbour search shares one budget of Annoy nodes per query among the shards, in
proportion to their live images (a shard of a tenth of the collection walks a tenth of the
nodes), takes the budget's candidates across all shards by projected distance (so a shard that
holds most of a query's neighbours proposes most of them; `_closest_projected`), then re-ranks
them all at once by exact cosine distance on the stored features (one matrix product): the
cost of a query follows its budget, not the number of shards, and approximation costs almost
nothing in precision (bench/index_scale.py, `imgsearch eval`).
"""

from __future__ import annotations

import bisect
import itertools
import math
import os
import threading
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np

from imgsearch.config import Settings
from imgsearch.index.base import SearchIndex
from imgsearch.index.manifest import Manifest, read_manifest
from imgsearch.index.shards import (
    Projection,
    Shard,
    cosine_distances,
    half_dot_of_held_rows,
    serial_matvec,
)
from imgsearch.remembered import Remembered
from imgsearch.storage import ObjectStore

SEARCH_THREADS = min(4, os.cpu_count() or 1)
REFRESH_INTERVAL_SECONDS = 2.0  # how often a reader looks for a new manifest, at most
# A shard's share of `search_k` is at least this many nodes per candidate of its share (it may
# propose more, `_closest_projected`): a small shard's share of the nodes would otherwise let
# Annoy look at no more images than its share of the candidates.
MIN_SEARCH_K_PER_CANDIDATE = 8
# The candidate budget (and search_k) are the settings' up to BUDGET_REFERENCE live images,
# and grow as (images / BUDGET_REFERENCE) ** BUDGET_GROWTH past it: the more images, the more
# of them the projected search must propose for the exact re-rank to keep its recall. Measured
# (bench/index_scale.py, docs/performance.md): the default 120:1500 recalls 0.999 at 100k and,
# grown x5.0 to 601:7518, 0.996 at 1M (a sixth less, 100:1250 grown x5.0, recalled 0.989
# there; 200 candidates not grown recalled 0.83).
BUDGET_REFERENCE = 100_000
BUDGET_GROWTH = 0.7
# ... and up to BUDGET_REFERENCE a query inspects at least MIN_QUERY_NODES nodes, a floor that
# fades out linearly by MIN_QUERY_NODES_GONE_BY images (`query_nodes`). The settings' 1,500
# nodes were chosen at 100k on synthesised copies of 1,192 photos (84 near copies of each,
# whose 20 nearest share a few leaves). Where recall is lost (bench/index_losses.py, 20 trees
# over 128 components): not in the projection (the true 20 nearest are inside the projected
# top 120: 0.998-0.999 at 20k-100k, 0.998 of 3,940 real photos) but in the leaves Annoy
# inspects (1,500 nodes left out 0.013-0.027 of them); more candidates help only by raising
# the nodes. On collections with a few near copies of each point (`bench/index_scale.py
# --copies` 1, 2 or 4 from 3,940 real photos; 1,000 queries) 1,500 nodes recalled
# 0.972-0.986@20 at every size from 10k to 100k, 4,000 nodes 0.9905-0.9959 (3,500: 0.9885 at
# 20k with 2 copies); 3,940 real photos in one shard 0.9923. Past 100k, with 4 copies: 150k
# (six shards) recalled 0.9891 at its grown 1,993 nodes, 0.9927 at the floor's 3,000; 200k
# 0.9957 and 300k 0.9970 at their grown 2,437 and 3,237, above the floor: from 300k on (1M) the
# grown budget alone decides. The floor costs 100k about 0.3 ms a query (one thread, quiet,
# 4 copies: 0.74 -> 1.01 ms; bench/index_steps.py --steps: Annoy's part); 3,000 nodes there
# recalled 0.9908 at 0.90 ms, too near 0.99 for a rule that synthesised sets decide.
MIN_QUERY_NODES = 4_000
MIN_QUERY_NODES_GONE_BY = 3 * BUDGET_REFERENCE
# Keyword rankings kept per index snapshot (see `ranked_by_classes`): the best RANKED_PAGES
# times what was asked, up to RANKED_DEPTH images, of each of the last RANKED_ENTRIES class
# weightings asked (a few KB each); a ranking asked deeper than RANKED_MAX_DEPTH (a far page)
# is worked out each time, not kept.
RANKED_ENTRIES = 256
RANKED_DEPTH = 400
RANKED_PAGES = 4
RANKED_MAX_DEPTH = 4_000
_T = TypeVar("_T")
# A keyword ranking: (image id, score), best first.
_Ranking = list[tuple[str, float]]
# A snapshot's best pages by weighting (sorted (class, weight) pairs): the ranking, and whether
# it lists every image scored.
_Rankings = Remembered[tuple[tuple[int, float], ...], tuple[_Ranking, bool]]


@dataclass(frozen=True)
class _Snapshot:
    """One manifest and its loaded shards: swapped whole, so queries never see a mix."""

    manifest: Manifest
    etag: str | None
    shards: tuple[Shard, ...]
    # What every query over these shards needs, worked out once: each shard's share of the
    # live images, and their distinct projections stacked into one matrix, so that a query is
    # projected for every shard by one product (`project_with_residuals`); shards built with
    # one projection (an open shard reuses the newest sealed shard's, a merge its sources'
    # shared one) share its rows.
    shares: tuple[float, ...] = ()
    components: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.float32))
    offsets: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    ends: tuple[int, ...] = ()
    projection_of_shard: tuple[int, ...] = ()  # each shard's position among the distinct ones
    # The distinct projections' means and their squared norms, for a query's residual under
    # each (`project_with_residuals`), where there are several.
    means: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.float32))
    mean_norms: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))

    live_count: int = 0

    @classmethod
    def of(cls, manifest: Manifest, etag: str | None, shards: tuple[Shard, ...]) -> _Snapshot:
        if not shards:
            return cls(manifest, etag, shards)
        live = sum(shard.live_count for shard in shards)
        total = max(1, live)
        distinct: dict[bytes, Projection] = {}  # by digest, in the order shards first use them
        for shard in shards:
            distinct.setdefault(shard.projection.digest, shard.projection)
        position_of = {digest: position for position, digest in enumerate(distinct)}
        projections = list(distinct.values())
        # (v - mean) @ C.T == v @ C.T - mean @ C.T: the means folded into one offset vector.
        return cls(
            manifest,
            etag,
            shards,
            shares=tuple(shard.live_count / total for shard in shards),
            components=np.ascontiguousarray(np.concatenate([p.components for p in projections])),
            offsets=np.concatenate([p.components @ p.mean for p in projections]),
            ends=tuple(itertools.accumulate(p.dims for p in projections)),
            projection_of_shard=tuple(position_of[s.projection.digest] for s in shards),
            means=np.stack([p.mean for p in projections]).astype(np.float32),
            mean_norms=np.array([p.mean @ p.mean for p in projections], np.float32),
            live_count=live,
        )

    def project_with_residuals(self, vector: np.ndarray) -> tuple[list[list[float]], list[float]]:
        """A float32 `vector` projected by each shard's projection, in shard order, as lists
        (Annoy reads a list's floats in 13 us where it reads an array's in 22: per shard), and
        for each shard the query's squared residual under its projection: the part of the
        query's offset from the projection's mean that its components drop (0 for every shard
        where they share one projection, as they mostly do)."""
        product = serial_matvec(self.components, vector) - self.offsets
        projected = product.tolist()
        starts = (0, *self.ends[:-1])
        distinct = [projected[start:end] for start, end in zip(starts, self.ends, strict=True)]
        lists = [distinct[position] for position in self.projection_of_shard]
        if len(self.ends) < 2:
            return lists, [0.0] * len(lists)
        kept = [float(product[a:b] @ product[a:b]) for a, b in zip(starts, self.ends, strict=True)]
        offset = float(vector @ vector) - 2.0 * (self.means @ vector) + self.mean_norms
        residuals = [max(0.0, float(o) - k) for o, k in zip(offset, kept, strict=True)]
        return lists, [residuals[position] for position in self.projection_of_shard]


def _plan(
    snapshot: _Snapshot, candidates: int, search_k: int, wanted: int
) -> tuple[tuple[int, int], ...]:
    """Each shard's share of a query's budget, (candidates, search_k), set for the
    collection's size (`budget_growth`, `query_nodes`) and shared in proportion to the shards'
    live images (measured better than shares favouring small or big shards), at least `wanted`
    candidates and MIN_SEARCH_K_PER_CANDIDATE nodes per candidate each. The candidates
    added up are the query's budget, which `Index.nearest` takes across the shards."""
    budget = max(wanted, math.ceil(candidates * budget_growth(snapshot.live_count)))
    nodes_budget = query_nodes(snapshot.live_count, search_k)
    plan = []
    for share in snapshot.shares:
        count = max(wanted, math.ceil(budget * share))
        nodes = nodes_budget
        if nodes > 0:
            nodes = max(math.ceil(nodes_budget * share), count * MIN_SEARCH_K_PER_CANDIDATE)
        plan.append((count, nodes))
    return tuple(plan)


def query_nodes(live_images: int, search_k: int) -> int:
    """The Annoy nodes (leaf entries over all trees) a query over `live_images` inspects in
    all, before the shards share them: the settings' `search_k` grown past BUDGET_REFERENCE
    (`budget_growth`), at least MIN_QUERY_NODES up to BUDGET_REFERENCE, a floor fading out
    by MIN_QUERY_NODES_GONE_BY; -1 (Annoy's own default, candidates x trees in each shard) is
    left as it is."""
    if search_k <= 0:
        return search_k
    fading = (MIN_QUERY_NODES_GONE_BY - live_images) / (MIN_QUERY_NODES_GONE_BY - BUDGET_REFERENCE)
    fade = min(1.0, max(0.0, fading))
    return math.ceil(max(search_k * budget_growth(live_images), MIN_QUERY_NODES * fade))


def budget_growth(live_images: int) -> float:
    """How many times the settings' candidate budget a query over `live_images` asks for."""
    return float(max(1.0, live_images / BUDGET_REFERENCE) ** BUDGET_GROWTH)


class Index(SearchIndex):
    """Query all shards of the index; `refresh()` follows the manifest as builders move it."""

    def __init__(
        self,
        store: ObjectStore,
        *,
        candidates: int = Settings.model_fields["ann_candidates"].default,
        search_k: int = Settings.model_fields["ann_search_k"].default,
        resident: bool = True,
    ) -> None:
        """`candidates` and `search_k` are the settings' `ann_candidates` and `ann_search_k`
        (their defaults, for an index opened without settings). `resident`: each shard's
        features and forest are mapped into the process when it is loaded
        (`shards.map_resident`); False faults them in as queries touch them (the bench's
        measure of a cold index)."""
        self._store = store
        self.resident = resident
        self.candidates = candidates
        self.search_k = search_k
        self.refresh_interval = REFRESH_INTERVAL_SECONDS
        self._snapshot = _Snapshot(Manifest(), None, ())
        self._checked_at = float("-inf")
        self._lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None
        self._ranked: tuple[_Snapshot, _Rankings] = (self._snapshot, Remembered(RANKED_ENTRIES))
        self._ranked_lock = threading.Lock()  # one snapshot's rankings started at a time

    @property
    def manifest(self) -> Manifest:
        return self._snapshot.manifest

    @property
    def etag(self) -> str | None:
        """The ETag of the loaded manifest (None before any build)."""
        return self._snapshot.etag

    @property
    def manifest_and_etag(self) -> tuple[Manifest, str | None]:
        """The loaded manifest and its ETag, of one snapshot: a refresh in another thread (a
        merge's) between reading `manifest` and `etag` would pair an old manifest with the
        new ETag, and a compare-and-swap on it would overwrite what that refresh loaded."""
        snapshot = self._snapshot
        return snapshot.manifest, snapshot.etag

    @property
    def shards(self) -> tuple[Shard, ...]:
        return self._snapshot.shards

    @property
    def model(self) -> str:
        return self._snapshot.manifest.model

    @property
    def dim(self) -> int:
        return self._snapshot.manifest.dim

    @property
    def generation(self) -> int:
        return self._snapshot.manifest.generation

    @property
    def shard_count(self) -> int:
        return len(self._snapshot.shards)

    def refresh(self, force: bool = False) -> bool:
        """Load the current manifest if it changed (at most every `refresh_interval` s).

        Raises DamagedFile if the manifest or a new shard build fails its checksums (each
        build is verified once, when it is loaded), IndexFormatError for another format."""
        if not force and time.monotonic() - self._checked_at < self.refresh_interval:
            return False
        with self._lock:
            self._checked_at = time.monotonic()
            manifest, etag = read_manifest(self._store)
            current = self._snapshot
            if etag == current.etag:
                return False
            loaded = {(s.shard_id, s.build_id): s for s in current.shards}
            shards = []
            for entry in manifest.shards:
                shard = loaded.get((entry.id, entry.build))
                if shard is None:
                    shard = Shard(entry, self._store, resident=self.resident)
                else:
                    shard.set_deleted(entry.deleted)
                shards.append(shard)
            self._snapshot = _Snapshot.of(manifest, etag, tuple(shards))
            return True

    def __len__(self) -> int:
        return sum(shard.live_count for shard in self._snapshot.shards)

    def __contains__(self, image_id: object) -> bool:
        return self.locate(str(image_id)) is not None

    def present(self, image_ids: Iterable[str]) -> set[str]:
        """`SearchIndex.present` without a call per id ("more like this" asks it of every
        neighbour, on every request)."""
        shards = [(shard.row_of, shard.live) for shard in self._snapshot.shards]
        found = set()
        for image_id in image_ids:
            for row_of, live in shards:
                row = row_of.get(image_id)
                if row is not None and live[row]:
                    found.add(image_id)
                    break
        return found

    def locate(self, image_id: str) -> tuple[Shard, int] | None:
        """The shard and row holding a live image, or None."""
        for shard in self._snapshot.shards:
            row = shard.row_of.get(image_id)
            if row is not None and shard.live[row]:
                return shard, row
        return None

    def vector(self, image_id: str) -> np.ndarray | None:
        """The stored unit feature vector of an indexed image."""
        found = self.locate(image_id)
        if found is None:
            return None
        shard, row = found
        return np.asarray(shard.features[row], dtype=np.float32)

    def nearest(
        self,
        vector: np.ndarray,
        k: int,
        *,
        exclude: Collection[str] = (),
        exact: bool = False,
        candidates: int | None = None,
    ) -> list[tuple[str, float]]:
        """The `k` live images nearest to a unit `vector`: (id, cosine distance), nearest first.

        `exact=True` compares against every stored vector instead of Annoy's candidates.
        """
        vector = np.asarray(vector, dtype=np.float32)
        wanted = k + len(exclude)
        if exact:
            return self._exact_nearest(vector, k, exclude)
        snapshot = self._snapshot
        if not snapshot.shards:
            return []
        plan = _plan(snapshot, candidates or self.candidates, self.search_k, wanted)
        # Each shard walks its share of the nodes but may propose the whole budget, which is
        # then taken across shards by projected distance: a shard holding most of the query's
        # neighbours (uploads come in bursts of one subject) is not capped at its share.
        budget = sum(count for count, _ in plan)
        projected, residuals = snapshot.project_with_residuals(vector)
        proposed = [
            shard.candidates_of_projected(
                projected_here,
                budget,
                # Annoy's default (-1) walks n x trees nodes: the shard's share, not more.
                search_k if search_k > 0 else count * shard.trees,
            )
            for shard, projected_here, (count, search_k) in zip(
                snapshot.shards, projected, plan, strict=True
            )
        ]
        found = _closest_projected(snapshot.shards, proposed, residuals, budget)
        # Every shard's candidates re-ranked together, in blocks that span the shards: the
        # exact re-rank's numpy calls grow with the candidates, not the number of shards.
        cosine = _cosines(found, vector)
        return _best_candidates(cosine, found, k, exclude)

    def _exact_nearest(
        self, vector: np.ndarray, k: int, exclude: Collection[str]
    ) -> list[tuple[str, float]]:
        """Compare against every stored vector, shard by shard (gathering them all at once
        would copy the whole collection)."""
        wanted = k + len(exclude)

        def search(shard: Shard) -> tuple[list[str], np.ndarray]:
            rows = np.flatnonzero(shard.live)
            distances = shard.distances(vector, rows)
            if len(rows) > wanted:
                best = np.argpartition(distances, wanted - 1)[:wanted]
                rows, distances = rows[best], distances[best]
            return [shard.ids[row] for row in rows], distances

        return _nearest(self._map_shards(search), k, exclude)

    def _map_shards(self, work: Callable[[Shard], _T]) -> list[_T]:
        """`work` on every shard, in parallel threads when there are several (Annoy and
        numpy release the GIL while they search)."""
        shards = self._snapshot.shards
        if len(shards) < 2:
            return [work(shard) for shard in shards]
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=SEARCH_THREADS)
        return list(self._pool.map(work, shards))

    def ranked_by_classes(
        self, weights: Mapping[int, float], k: int, *, exclude: Collection[str] = ()
    ) -> list[tuple[str, float]]:
        """The `k` images with the highest sum of weight x class probability (> 0), best first
        (equal scores in shard and row order), `exclude`d ids skipped.

        The best few pages of a weighting are kept with the snapshot they were ranked on
        (LRU, RANKED_ENTRIES): the same weights asked again on the same snapshot (the next
        page, another user's same words, a search's own second look at its classes) skip the
        posting-list merge. A new snapshot (a publication, a removal applied) starts afresh,
        so a kept ranking is never older than the index it answers from."""
        weights = {int(c): float(w) for c, w in weights.items() if w > 0}
        if not weights:
            return []
        snapshot = self._snapshot
        wanted = k + len(exclude)
        key = tuple(sorted(weights.items()))
        kept = self._kept_ranking(snapshot, key)
        if kept is None or (len(kept[0]) < wanted and not kept[1]):
            # Deeper than asked, for the next pages (a first page of 20 keeps four pages);
            # a far page, or a weighting asked once deeper, is merged again.
            depth = max(wanted, min(RANKED_DEPTH, RANKED_PAGES * wanted))
            ranking = _ranked(snapshot.shards, weights, depth)
            kept = (ranking, len(ranking) < depth)
            if depth <= RANKED_MAX_DEPTH:
                self._keep_ranking(snapshot, key, kept)
        best: list[tuple[str, float]] = []
        for image_id, score in kept[0]:
            if image_id in exclude:
                continue
            best.append((image_id, score))
            if len(best) == k:
                break
        return best

    def _kept_ranking(
        self, snapshot: _Snapshot, key: tuple[tuple[int, float], ...]
    ) -> tuple[_Ranking, bool] | None:
        ranked_on, rankings = self._ranked
        return rankings.get(key) if ranked_on is snapshot else None

    def _keep_ranking(
        self,
        snapshot: _Snapshot,
        key: tuple[tuple[int, float], ...],
        kept: tuple[_Ranking, bool],
    ) -> None:
        if RANKED_ENTRIES <= 0:
            return
        with self._ranked_lock:
            if self._ranked[0] is not snapshot:
                if snapshot is not self._snapshot:
                    return  # ranked on a snapshot already replaced: nobody asks it again
                self._ranked = (snapshot, Remembered(RANKED_ENTRIES))
            rankings = self._ranked[1]
        rankings.put(key, kept)

    def class_photo_counts(
        self, classes: Sequence[int], min_probability: float, cap: int
    ) -> dict[int, int]:
        """How many live images give each class at least `min_probability`, up to `cap`:
        read off each shard's posting-list counts (kept until its removals change)."""
        shards = self._snapshot.shards
        if not shards or not classes:
            return {c: 0 for c in classes}
        asked = np.asarray(classes, dtype=np.int64)
        counts = np.sum([s.class_counts(min_probability).counts[asked] for s in shards], axis=0)
        return dict(zip(asked.tolist(), np.minimum(counts, cap).tolist(), strict=True))

    def class_counts(self, min_probability: float) -> list[tuple[int, int, str]]:
        """(class id, images that give it at least `min_probability`, its most probable
        image) of every class some image gives that much, from each shard's posting lists."""
        shards = self._snapshot.shards
        if not shards:
            return []
        per_shard = [shard.class_counts(min_probability) for shard in shards]
        counts = np.sum([c.counts for c in per_shard], axis=0)
        best_shard = np.argmax([c.cover_probabilities for c in per_shard], axis=0)
        found = []
        for class_id in np.flatnonzero(counts):
            shard, counted = shards[best_shard[class_id]], per_shard[best_shard[class_id]]
            cover = int(counted.cover_rows[class_id])
            if cover >= 0:
                found.append((int(class_id), int(counts[class_id]), shard.ids[cover]))
        return found

    def spread(self, k: int, *, exclude: Collection[str] = ()) -> list[str]:
        """`k` images that together cover the collection: each shard's representatives, taken
        in turn across shards."""
        per_shard = [
            [shard.ids[row] for row in shard.spread if shard.live[row]]
            for shard in self._snapshot.shards
        ]
        in_turn = itertools.chain.from_iterable(itertools.zip_longest(*per_shard))
        wanted = (i for i in in_turn if i is not None and i not in exclude)
        return list(itertools.islice(wanted, k))

    def image_ids(self, *, newest_first: bool = True) -> Iterator[str]:
        """Every live image id, by insertion order."""
        shards = self._snapshot.shards
        for shard in reversed(shards) if newest_first else shards:
            rows = np.flatnonzero(shard.live)
            for row in rows[::-1] if newest_first else rows:
                yield shard.ids[row]


def _ranked(shards: tuple[Shard, ...], weights: Mapping[int, float], depth: int) -> _Ranking:
    """The `depth` best images of `shards` by their classes' `weights` (posting lists merged
    in each shard, then across shards in numpy): highest score first, equal scores in shard
    and row order; ids looked up for those kept only."""
    rows, scores = [], []
    for shard in shards:
        shard_rows, shard_scores = shard.class_scores(weights)  # rows ascending
        best = _best_positions(shard_scores, depth)
        rows.append(shard_rows[best])
        scores.append(shard_scores[best])
    merged = np.concatenate(scores) if scores else np.zeros(0, np.float32)
    best = _best_positions(merged, depth)
    order = best[np.lexsort((best, -merged[best]))]
    shard_of = np.repeat(np.arange(len(rows)), [len(r) for r in rows])[order]
    row_of = np.concatenate(rows)[order] if rows else np.zeros(0, np.int64)
    return [
        (shards[shard].ids[row], score)
        for shard, row, score in zip(
            shard_of.tolist(), row_of.tolist(), merged[order].tolist(), strict=True
        )
    ]


def _best_positions(scores: np.ndarray, depth: int) -> np.ndarray:
    """Positions of the `depth` highest `scores`, ascending; of equal scores at the cut, the
    first ones (so that a ranking never depends on how a partition fell)."""
    if len(scores) <= depth:
        return np.arange(len(scores))
    cut = np.partition(scores, len(scores) - depth)[len(scores) - depth]
    above = np.flatnonzero(scores > cut)
    at_cut = np.flatnonzero(scores == cut)[: depth - len(above)]
    return np.sort(np.concatenate([above, at_cut]))


@dataclass
class _Candidates:
    """A query's candidates: the rows of every shard, shard after shard in one array (one
    numpy call for all, not one per shard: each holds the GIL that a second query thread
    waits for), and where each shard's rows end."""

    shards: tuple[Shard, ...]
    rows: np.ndarray
    ends: list[int]

    def of_shards(self) -> list[tuple[Shard, np.ndarray]]:
        """Each shard and its rows."""
        starts = (0, *self.ends[:-1])
        return [
            (shard, self.rows[start:end])
            for shard, start, end in zip(self.shards, starts, self.ends, strict=True)
        ]


def _closest_projected(
    shards: tuple[Shard, ...],
    proposed: Sequence[tuple[list[int], list[float]]],
    residuals: Sequence[float],
    budget: int,
) -> _Candidates:
    """Of every shard's proposed live rows (Annoy's rows and projected distances), the
    `budget` nearest across all shards: by projected distance, squared, plus the query's
    squared residual under the shard's projection (`_Snapshot.project_with_residuals`).

    A projection keeps only the part of a query's offset from an image that its components
    span. Where shards have projections of their own (a merge refits one for drifted content:
    tiers._merged_projection), a projection fitted on other content than the query's drops
    most of the query's offset and finds every image of its shard near; the query's residual
    under it puts those distances back on the scale of the others. The images' own residuals
    are not known one by one and are left out: a shard's mean of them, added too, recalled
    less on real features (100k by subject, every shard its own projection: 0.9921 against
    0.9958; the residuals left out altogether 0.9999 there, but 0.70 in the tests' shard of
    other content)."""
    rows, distances, counts = _live_proposals(shards, proposed)
    if len(rows) <= budget:
        return _Candidates(shards, rows, list(itertools.accumulate(counts)))
    if len(shards) == 1:
        return _Candidates(shards, rows[:budget], [budget])  # Annoy's order: nearest first
    squared = np.square(distances)
    if any(residuals):
        squared += np.repeat(np.array(residuals, np.float32), counts)
    # The positions taken, in order: each shard's rows stay together, nearest first.
    taken = np.sort(np.argpartition(squared, budget - 1)[:budget])
    ends = np.searchsorted(taken, list(itertools.accumulate(counts))).tolist()
    return _Candidates(shards, rows[taken], ends)


def _live_proposals(
    shards: tuple[Shard, ...], proposed: Sequence[tuple[list[int], list[float]]]
) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """Every shard's proposed rows and their projected distances, each in one array, shard
    after shard, without the rows of deleted images; and how many rows of each shard."""
    counts = [len(rows) for rows, _ in proposed]
    # Read straight off Annoy's lists, every shard's in one pass: at 100k `_closest_projected`
    # takes 26 us so, 34 us with an array made of each list.
    total = sum(counts)
    rows = np.fromiter(itertools.chain.from_iterable(r for r, _ in proposed), np.int64, total)
    distances = np.fromiter(
        itertools.chain.from_iterable(d for _, d in proposed), np.float32, total
    )
    masks = [shard.live_mask() for shard in shards]
    if all(mask is None for mask in masks):
        return rows, distances, counts
    ends = itertools.accumulate(counts)
    keep = [
        np.ones(count, bool) if mask is None else mask[rows[end - count : end]]
        for mask, count, end in zip(masks, counts, ends, strict=True)
    ]
    live = np.concatenate(keep)
    return rows[live], distances[live], [int(np.count_nonzero(part)) for part in keep]


def _cosines(found: _Candidates, vector: np.ndarray) -> np.ndarray:
    """`vector`'s products with the stored features of the candidates' rows, in their order
    (`half_dot_of_held_rows`: gathered, widened and multiplied block by block)."""
    parts = [(shard.features, rows) for shard, rows in found.of_shards()]
    return half_dot_of_held_rows(parts, vector)


def _nearest(
    found: list[tuple[list[str], np.ndarray]], k: int, exclude: Collection[str]
) -> list[tuple[str, float]]:
    """The `k` nearest of every shard's (ids, distances), nearest first."""
    ids = [image_id for shard_ids, _ in found for image_id in shard_ids]
    if not ids:
        return []
    merged = np.concatenate([values for _, values in found])
    order = np.argsort(merged, kind="stable")
    best: list[tuple[str, float]] = []
    for position in order:
        image_id = ids[position]
        if image_id in exclude:
            continue
        best.append((image_id, float(merged[position])))
        if len(best) == k:
            break
    return best


def _best_candidates(
    cosine: np.ndarray, found: _Candidates, k: int, exclude: Collection[str]
) -> list[tuple[str, float]]:
    """The `k` nearest of the candidates (`found`, their `cosine`s with the query in that
    order), `exclude`d ids skipped, nearest first by cosine distance (in [0, 2]).

    Only the `k + len(exclude)` highest cosines are kept before anything else is worked out
    (their distances, their shard and row, their ids): this part of a query holds the GIL,
    which a second query thread waits for (half the time of sorting out all 600 candidates
    of a 1M query first: 31-50 against 65-112 us)."""
    wanted = min(len(cosine), k + len(exclude))
    if wanted == 0:
        return []
    best = np.argpartition(cosine, len(cosine) - wanted)[len(cosine) - wanted :]
    distances = cosine_distances(cosine[best])
    order = np.lexsort((best, distances))  # nearest first; ties in shard order
    best, distances = best[order], distances[order]
    result: list[tuple[str, float]] = []
    for position, row, distance in zip(
        best.tolist(), found.rows[best].tolist(), distances.tolist(), strict=True
    ):
        image_id = found.shards[bisect.bisect_right(found.ends, position)].ids[row]
        if image_id not in exclude:
            result.append((image_id, distance))
            if len(result) == k:
                break
    return result
