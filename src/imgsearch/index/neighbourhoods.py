"""Precomputed nearest neighbours of every image, kept close to exact as images come and go.

"More like this" is answered from these stored lists in one read. When an image arrives it
gets its own list, and it is offered to the lists of its REACH nearest images, which keep it
if they are short or it is nearer than their last neighbour; a list farther down its ranking
that it belongs in keeps a farther neighbour instead. When one leaves, the lists of its
REMOVAL_REACH nearest images are recomputed without it, before the index lets it go
(`forget`: its vector finds those lists, also when a dead writer's batch runs again); a list
beyond keeps the removed id, hidden when read (`get`), one neighbour short. So the lists are
approximate: tests/index/test_index.py checks that their first 10 entries agree with brute
force on at least 99% of entries.

What it costs: the lists a batch of new images touches are read in batched reads and the
changed ones written in batched writes, each list once per group of images however many of
them it gains (DynamoDB: 100 lists a read, 25 a write), not a read and a write per list and
new image, then one write of the catalog's token of list writes (`Catalog.mark_lists_changed`)
a group, which tells readers to drop the lists and expanded vectors they keep (they look at it
at most every index refresh interval: one read). `bench/writer_cost.py` counts the requests
per image.

Each list is stored with its image's expanded vector (index/expansion.py), which depends on
nothing but the list: it is computed again whenever the list is written, so keeping the
expanded vectors current touches no image whose list did not change. It needs the vectors of
the first `expansion.neighbours` images of each list written (one batched read of the engine).
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping

import numpy as np

from imgsearch.catalog import (
    Catalog,
    ListEnd,
    StoredExpanded,
    StoredList,
    StoredNeighbours,
    stored_distance,
)
from imgsearch.index.base import SearchIndex
from imgsearch.index.expansion import Expansion, Ranked
from imgsearch.remembered import Remembered
from imgsearch.storage import in_parallel

Neighbours = list[tuple[str, float]]

# How many of a new image's nearest images are offered it: with the image itself, 100, one
# QueryVectors on S3 Vectors (its top-k limit). A list the newcomer belongs in but which is
# farther down the newcomer's own ranking keeps a farther neighbour instead: on real photo
# sets 13% of such offers at 99 (5% at 200), yet the lists' "more like this" p@20 is no lower
# than exact lists' (those offers are mostly hubs of another label): bench/neighbour_reach.py,
# docs/evaluation.md ("How far a new image reaches"). A list that a removal in the same batch
# recomputes is no exception: it is recomputed before the batch's new images are published
# (`forget`), then offered them like any other.
REACH = 99
# How many of a removed image's nearest images have their lists recomputed: a list beyond
# keeps the removed id (hidden when read, one neighbour short) and an expanded vector made
# partly from it. Removals are rare, so they reach twice as far as additions (on real sets 9%
# of the lists holding a removed image are beyond 200, 22% beyond 99).
REMOVAL_REACH = 200
# New images whose touched lists are read and written together, each list once however many
# of them it is offered: about REACH lists each, so a group holds up to 20,000 lists in memory
# at once (with their stored expanded vectors, about 200 MB at most; far fewer below 100k
# images, where the group's offers overlap). The larger the group, the more of its offers
# fall on the same lists. At 1M they hardly overlap either way.
GROUP = 200
# Removed images whose lists are recomputed together: about REMOVAL_REACH lists each, as many
# lists as a group of new images.
REMOVAL_GROUP = GROUP * REACH // REMOVAL_REACH
# Lists and expanded vectors a query read are kept until the catalog's token of list writes
# changes (`Catalog.mark_lists_changed`), looked at most every index refresh interval; at most
# this many of each, least recently used out first: a list of 50 is about 7.7 KB of Python
# objects, an expanded vector 4 bytes a dimension (5.2 KB at 1,280), so at most about 77 +
# 105 MB a process (a 10k collection's every list and vector fit).
CACHE_LISTS = 10_000
CACHE_VECTORS = 20_000
_KEPT_SERIALS = itertools.count(1)


class Neighbourhoods:
    def __init__(
        self,
        catalog: Catalog,
        index: SearchIndex,
        *,
        k: int,
        expansion: Expansion,
    ) -> None:
        self.catalog = catalog
        self.index = index
        self.k = k
        self.reach = max(REACH, k)
        self.removal_reach = max(REMOVAL_REACH, k)
        self.expansion = expansion
        self._kept = _Kept("", float("-inf"))  # lists and vectors read under one token
        self._kept_lock = threading.Lock()

    def get(self, image_id: str) -> Neighbours:
        """The stored list, without images that left the index since it was written."""
        kept = self._current()
        neighbours = kept.lists.get(image_id)
        if neighbours is None:
            neighbours, expanded = self.catalog.neighbours_and_expanded(image_id)
            kept.lists.put(image_id, neighbours)
            if expanded is not None:  # read with it: the ranking asks for it next
                kept.vectors.put(image_id, expanded)
        # Removals are the index's: those it no longer serves leave every list at once.
        present = self.index.present(i for i, _ in neighbours)
        return [(i, d) for i, d in neighbours if i in present]

    def expanded_ranking(self, image_id: str, neighbours: Neighbours) -> Ranked | None:
        """`neighbours` (the image's stored list) ranked by expanded vectors; None if the
        image's own expanded vector is not stored yet."""
        stored = self.expanded([image_id, *(i for i, _ in neighbours)])
        own = stored.get(image_id)
        if own is None:
            return None
        return self.expansion.rank(own, [i for i, _ in neighbours], stored)

    def expanded(self, image_ids: Iterable[str]) -> dict[str, np.ndarray]:
        """The stored expanded vectors of `image_ids` (those with one), read in one batch
        for those not kept since lists last changed: neighbourhoods overlap, so a process
        answering many queries reads each vector about once."""
        vectors = self._current().vectors
        wanted = list(dict.fromkeys(image_ids))
        found = vectors.get_many(wanted)
        missing = [i for i in wanted if i not in found]
        if missing:
            read = self.catalog.expanded_vectors(missing)
            vectors.put_many(read)
            found.update(read)
        return {i: found[i] for i in wanted if i in found}

    def _current(self) -> _Kept:
        """What is kept under the catalog's current token of list writes. The token is read
        BEFORE the lists and vectors kept under it, so anything read before a write is kept
        under the token that write replaces, and dropped once the new token is seen."""
        kept = self._kept
        if time.monotonic() - kept.checked_at < self.index.refresh_interval:
            return kept
        with self._kept_lock:
            kept = self._kept
            now = time.monotonic()
            if now - kept.checked_at < self.index.refresh_interval:
                return kept  # another thread just looked
            token = self.catalog.lists_changed_token()
            if token == kept.token:
                kept.checked_at = now
            else:
                self._kept = kept = _Kept(token, now)
            return kept

    def kept_version(self) -> int:
        """A number that changes whenever the lists and vectors this process keeps are dropped
        (a new token of list writes seen, or its own write): what was made from them is as
        current as they are while it stays the same."""
        return self._current().serial

    def _drop_kept(self) -> None:
        """Drop what is kept (this process just wrote lists)."""
        with self._kept_lock:
            self._kept = _Kept("", float("-inf"))

    def update(
        self, added: Iterable[str], *, before_write: Callable[[], None] = lambda: None
    ) -> None:
        """Bring every list up to date after `added` joined the index: their own lists, and
        their offers to their neighbours' lists.

        Call it after the index has been refreshed to include them. Idempotent: running it
        again for the same images leaves the lists as they are. `before_write` runs before
        each group's (unconditional) write: the builder's check that it still holds its lease.
        """
        # Only those still in the index: one removed again meanwhile has no vector.
        vectors = self.index.vectors(added)  # in batches on an engine over the network
        ids = list(vectors)
        for start in range(0, len(ids), GROUP):
            self._add_group({i: vectors[i] for i in ids[start : start + GROUP]}, before_write)

    def forget(
        self,
        removed: Mapping[str, np.ndarray],
        *,
        before_write: Callable[[], None] = lambda: None,
    ) -> None:
        """Recompute, without them, the lists that hold `removed` images (id -> vector), and
        delete their own lists, a group of REMOVAL_GROUP at a time.

        Call it BEFORE the index lets them go, with the index still serving them: their
        vectors are then still in it, so a run that dies midway (a Lambda at its timeout, a
        lost lease) does the same again when the batch comes back, and a list a group wrote
        stays right for the next groups (every removed image is left out of every list).
        `before_write` as in `update`."""
        gone = set(removed)
        ids = list(removed)
        for start in range(0, len(ids), REMOVAL_GROUP):
            group = {i: removed[i] for i in ids[start : start + REMOVAL_GROUP]}
            self._forget_group(group, gone, before_write)

    def _add_group(
        self, vectors: Mapping[str, np.ndarray], before_write: Callable[[], None]
    ) -> None:
        """New lists for `vectors`' images and offers of them to their neighbours' lists:
        read together, written together."""
        own: dict[str, Neighbours] = {}
        offers: dict[str, Neighbours] = defaultdict(list)
        # The group's queries at once: on an engine over the network each one waits for it.
        nearest = dict(
            zip(
                vectors,
                in_parallel(
                    lambda item: self.index.nearest(item[1], self.reach, exclude={item[0]}),
                    list(vectors.items()),
                ),
                strict=True,
            )
        )
        for image_id, near in nearest.items():
            own[image_id] = _rounded(near[: self.k])
            for other, distance in near:
                if other not in vectors:
                    offers[other].append((image_id, distance))
        # Most lists take none of their offers: their ends tell, and only the others are
        # read whole (no list yet: it is computed whole).
        ends = self.catalog.list_ends(offers)
        taking = [
            o for o, offered in offers.items() if o in ends and _may_take(ends[o], offered, self.k)
        ]
        stored = self.catalog.stored_lists([*own, *taking])
        lists: dict[str, Neighbours] = dict(own)
        for other in taking:
            if other in stored:
                lists[other] = self._merged(stored[other].neighbours, offers[other])
        self._write(lists, stored, set(own), before_write)

    def _forget_group(
        self,
        removed: Mapping[str, np.ndarray],
        gone: set[str],
        before_write: Callable[[], None],
    ) -> None:
        """The lists near `removed` that hold any `gone` image, recomputed without the `gone`
        images (all of the batch's removals, still in the index); `removed`'s own lists
        deleted."""
        nearest = in_parallel(
            lambda item: self.index.nearest(item[1], self.removal_reach, exclude={item[0]}),
            list(removed.items()),
        )
        reached = {other for near in nearest for other, _ in near if other not in gone}
        stored = self.catalog.stored_lists(reached)
        stale = {  # list -> the gone images it holds
            image_id: held_gone
            for image_id, stored_list in stored.items()
            if (held_gone := sum(i in gone for i in stored_list.ids))
        }
        vectors = self.index.vectors(stale)
        lists = dict(
            zip(
                vectors,
                in_parallel(
                    lambda item: self._nearest_without(item[0], item[1], gone, stale[item[0]]),
                    list(vectors.items()),
                ),
                strict=True,
            )
        )
        self._write(lists, stored, set(), before_write, deleted=list(removed))

    def _nearest_without(
        self, image_id: str, vector: np.ndarray, gone: set[str], expected: int
    ) -> Neighbours:
        """The image's k nearest but for `gone` images, which the index still serves: asked
        `expected` deeper than k (the gone images its list holds), twice as deep again while
        gone images beyond its list took places and the index had more (a removed cluster)."""
        depth = self.k + expected
        while True:
            near = self.index.nearest(vector, depth, exclude={image_id})
            kept = [(i, d) for i, d in near if i not in gone]
            if len(kept) >= self.k or len(near) < depth:
                return _rounded(kept[: self.k])
            depth *= 2

    def _write(
        self,
        lists: Mapping[str, Neighbours],
        stored: Mapping[str, StoredList],
        own: set[str],
        before_write: Callable[[], None],
        *,
        deleted: Iterable[str] = (),
    ) -> None:
        """Write the `lists` that changed from `stored` (and every one of `own`: new images'
        lists) with their expanded vectors, delete the `deleted` images' lists, then write the
        catalog's token of list writes."""
        changed: dict[str, StoredNeighbours] = {}
        for image_id, neighbours in lists.items():
            current = stored.get(image_id)
            # A new image's own list is stored even when empty, and even when one is stored
            # already (a rebuild: `imgsearch reindex` writes every list's expanded vector).
            if image_id in own or current is None or neighbours != current.neighbours:
                changed[image_id] = (neighbours, 0 if current is None else current.version)
        # A list whose first neighbours (those its expanded vector is made of) are as stored
        # keeps its stored vector, written again as it is: the same list would make the same
        # one. A new image enters most lists it joins beyond their first neighbours, so most
        # vectors need not be made again (nor their neighbours' vectors read: on S3 Vectors a
        # GetVectors for each 100). Own lists are made afresh (a rebuild rewrites them all).
        first = self.expansion.neighbours
        kept: dict[str, np.ndarray | StoredExpanded] = {
            image_id: stored_vector
            for image_id, (neighbours, _) in changed.items()
            if image_id not in own
            and (stored_vector := stored[image_id].expanded) is not None
            and neighbours[:first] == stored[image_id].neighbours[:first]
        }
        expanded = kept | self._expanded({i: lists[i] for i in changed if i not in kept})
        before_write()
        self.catalog.put_neighbour_lists(
            changed,
            expanded,
            # (own lists' near copies always written: a rebuild writes them all again)
            replacing={i: stored[i].neighbours for i in changed if i not in own and i in stored},
        )
        for image_id in deleted:
            self.catalog.delete_neighbours(image_id)
        # After the writes (see `_current`), and even when nothing changed here: the re-run
        # of a batch whose process died before this line finds its lists written already.
        self.catalog.mark_lists_changed()
        self._drop_kept()

    def _expanded(self, lists: Mapping[str, Neighbours]) -> dict[str, np.ndarray]:
        """The expanded vectors of the images of `lists`, from their first neighbours."""
        first = {i: neighbours[: self.expansion.neighbours] for i, neighbours in lists.items()}
        vectors = self.index.vectors({*first, *(i for near in first.values() for i, _ in near)})
        return {
            image_id: self.expansion.of(vectors[image_id], near, vectors)
            for image_id, near in first.items()
            if image_id in vectors
        }

    def _merged(self, current: Neighbours, offered: Neighbours) -> Neighbours:
        """The list with offered neighbours that are nearer than its current k-th."""
        merged = dict(current)
        for other, distance in offered:
            merged[other] = min(stored_distance(distance), merged.get(other, np.inf))
        return sorted(merged.items(), key=lambda pair: (pair[1], pair[0]))[: self.k]


def _may_take(end: ListEnd, offered: Neighbours, k: int) -> bool:
    """False where no offer can enter the list (`_merged` would give it back as it is, or
    only its ties reordered): it is full (`k` long) and every offer is farther than its last
    neighbour."""
    if end.length != k:
        return True
    return end.last is None or any(stored_distance(d) <= end.last for _, d in offered)


def _rounded(neighbours: Neighbours) -> Neighbours:
    """Distances as stored, so that an unchanged list is seen as unchanged."""
    return [(i, stored_distance(d)) for i, d in neighbours]


class _Kept:
    """Lists and expanded vectors read while the catalog's token of list writes was `token`."""

    def __init__(self, token: str, checked_at: float) -> None:
        self.token = token
        self.serial = next(_KEPT_SERIALS)
        self.checked_at = checked_at  # when the token was last read (monotonic)
        self.lists: Remembered[str, Neighbours] = Remembered(CACHE_LISTS)
        self.vectors: Remembered[str, np.ndarray] = Remembered(CACHE_VECTORS)
