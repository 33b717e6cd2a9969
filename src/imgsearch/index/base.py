"""The index port: what search, learning and the builder need of a vector engine, as two base
classes (as storage/base.py does for storage).

`SearchIndex` is the read side: nearest images to a vector, images ranked by class weights, a
spread of the collection, the stored vector of an image. `IndexWriter` is the write side: it
publishes a batch of additions and removals that the builder (builder.py: queue, lease,
neighbourhoods, catalog statuses) took from the work queue. Two engines implement both:
- the Annoy shards (reader.py `Index`, shard_writer.py `ShardWriter`): files in the object
  store, loaded whole by every process; the embedded default, locally and for small clouds;
- Amazon S3 Vectors (s3vectors.py): a managed engine queried over the network, for
  collections a function can no longer load (docs/deploy.md, "Vector engines").
`parts.py` picks one by `Settings.vector_engine`; nothing else knows which it talks to.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from typing import TypeVar

import numpy as np

from imgsearch.index.shards import ShardData

A = TypeVar("A")
B = TypeVar("B")

# An image is a confident match when the classes of a held sense sum to at least this
# probability in it (search.py; its keyword chips count photos at it, and S3 Vectors keeps its
# per-class counts at it alone: s3vectors.py). Chosen by measurement (docs/evaluation.md,
# bench/relevance.py): the lowest cut at which the matches of the four labelled sets stay >= 90%
# relevant together (90.7%; Corel-1k and the demo 99-100%), finding 64% of the relevant photos
# where 0.3 found 52%.
MATCH_PROBABILITY = 0.2


class SearchIndex(ABC):
    """The published index, as a reader sees it; `refresh()` follows what writers publish."""

    candidates: int = 0  # Annoy: candidates per query, shared by the shards (0: the engine's own)
    search_k: int = -1  # Annoy's search_k (-1: the engine's own)
    refresh_interval: float = 2.0  # how often `refresh()` looks for a new publication, at most
    # Whether each query waits for a round trip over the network (S3 Vectors): a search then
    # asks what it will likely need next beside what decides it (search.held_matches), and
    # the engine answers the second asking from the answers it keeps per snapshot.
    round_trips: bool = False

    @abstractmethod
    def refresh(self, force: bool = False) -> bool:
        """Follow the last publication (at most every `refresh_interval` s); whether it
        changed."""

    @property
    @abstractmethod
    def model(self) -> str:
        """The model whose vectors the index holds ("" before any build)."""

    @property
    @abstractmethod
    def dim(self) -> int:
        """The dimension of its vectors (0 before any build)."""

    @property
    @abstractmethod
    def generation(self) -> int:
        """The publication's number: grows with every build (0 before any)."""

    @property
    def shard_count(self) -> int:
        """Shard files a reader loads (0 for an engine that loads none)."""
        return 0

    @abstractmethod
    def __len__(self) -> int:
        """Live images."""

    @abstractmethod
    def __contains__(self, image_id: object) -> bool: ...

    def present(self, image_ids: Iterable[str]) -> set[str]:
        """Those of `image_ids` the index serves (an engine over the network asks once)."""
        return {image_id for image_id in image_ids if image_id in self}

    @abstractmethod
    def vector(self, image_id: str) -> np.ndarray | None:
        """The stored unit feature vector of an indexed image."""

    def vectors(self, image_ids: Iterable[str]) -> dict[str, np.ndarray]:
        """The stored vectors of those of `image_ids` that are indexed (an engine over the
        network asks for them in batches)."""
        found = {image_id: self.vector(image_id) for image_id in image_ids}
        return {image_id: vector for image_id, vector in found.items() if vector is not None}

    @abstractmethod
    def nearest(
        self,
        vector: np.ndarray,
        k: int,
        *,
        exclude: Collection[str] = (),
        exact: bool = False,
        candidates: int | None = None,
    ) -> list[tuple[str, float]]:
        """The `k` live images nearest to a unit `vector`: (id, cosine distance), nearest
        first. `exact=True` asks for exact search where the engine offers it."""

    @abstractmethod
    def ranked_by_classes(
        self, weights: Mapping[int, float], k: int, *, exclude: Collection[str] = ()
    ) -> list[tuple[str, float]]:
        """The `k` images with the highest sum of weight x class probability (> 0), best
        first, over each image's posted classes (shards.posted_probabilities)."""

    def ranked_by_each(
        self, queries: Sequence[Mapping[int, float]], k: int, *, exclude: Collection[str] = ()
    ) -> list[list[tuple[str, float]]]:
        """`ranked_by_classes` of each of `queries`, in order (an engine over the network
        sends them at once)."""
        return [self.ranked_by_classes(weights, k, exclude=exclude) for weights in queries]

    @property
    def class_counts_known(self) -> bool:
        """Whether the chips' per-class counts are answered without a query per class (an
        engine that keeps them may have lost them: see s3vectors.py)."""
        return True

    def counts_cheaply(self, min_probability: float) -> bool:
        """Whether `class_photo_counts` at `min_probability` is answered without a query per
        class (S3 Vectors keeps counts at one cut only, and may have lost them)."""
        return self.class_counts_known

    def class_photo_counts(
        self, classes: Sequence[int], min_probability: float, cap: int
    ) -> dict[int, int]:
        """How many live images give each of `classes` at least `min_probability` (posted
        probability, as `ranked_by_classes` reads it), counted up to `cap`. Here by ranking
        each class; the engines keep counts instead (posting-list counts for the shards,
        per-class counts in its state for S3 Vectors)."""
        each = self.ranked_by_each([{c: 1.0} for c in classes], cap)
        return {
            c: sum(1 for _, p in ranked if p >= min_probability)
            for c, ranked in zip(classes, each, strict=True)
        }

    def together(self, first: Callable[[], A], second: Callable[[], B]) -> tuple[A, B]:
        """Two independent lookups' answers (an engine over the network asks them at once:
        a search's rounds of requests then overlap instead of adding up)."""
        return first(), second()

    def class_counts(self, min_probability: float) -> list[tuple[int, int, str]]:
        """(class id, images that give it at least `min_probability`, its most probable
        image) per class, from posting lists; an engine without them has none to offer."""
        return []

    @abstractmethod
    def spread(self, k: int, *, exclude: Collection[str] = ()) -> list[str]:
        """`k` images that together cover the collection (for queries nobody understands)."""

    @abstractmethod
    def image_ids(self, *, newest_first: bool = True) -> Iterator[str]:
        """Every live image id, by insertion order."""

    def in_order(self, image_ids: Collection[str]) -> list[str]:
        """Those of `image_ids` the index serves, newest first (`image_ids`' order), reading
        that order only as far as the last of them."""
        wanted, found = set(image_ids), []
        if wanted:
            for image_id in self.image_ids():
                if image_id in wanted:
                    found.append(image_id)
                    if len(found) == len(wanted):
                        break
        return found

    def id_pages(self, stop: Callable[[], bool] = lambda: False) -> Iterator[list[str]]:
        """Every live image id, in no particular order, in pages as the engine lists them:
        where listing is round trips (`round_trips`), a round of requests each, sent when the
        page before it has been taken, so that whoever takes them may stop between two."""
        yield list(self.image_ids())

    def listing_seconds(self) -> float:
        """About how long `id_pages` takes to list every id: nothing much for an index in
        memory; the round trips of an engine over the network."""
        return 0.0


class ListingStopped(Exception):
    """`id_pages` was stopped with pages left to list."""


class IndexWriter(ABC):
    """Publishes what the builder took from the work queue. Only the holder of the index
    lease calls it, so a writer needs no lock of its own; a publication that finds another
    one under it raises PreconditionFailed and the builder tries the batch again."""

    @property
    def unfinished(self) -> bool:
        """Whether a publication that died before its end left work that the next one does
        (S3 Vectors: images its state names, to count in or whose class vectors to delete):
        a batch with nothing to put or remove is published all the same then."""
        return False

    @abstractmethod
    def publish(
        self,
        additions: ShardData,
        removed: Collection[str],
        still_held: Callable[[], None] = lambda: None,
    ) -> int:
        """Make `additions` (not yet in the index) searchable and `removed` (in it) gone, in
        one publication. Returns the shard builds written (0 for an engine without shards).
        `still_held` raises if the builder's lease lapsed: called before anything becomes
        visible to readers, so that a builder presumed dead publishes nothing."""

    @abstractmethod
    def clear(self) -> None:
        """Publish an empty index (a rebuild from the stored embeddings follows)."""

    def collect_garbage(self) -> int:
        """Delete what no publication names any more; how many objects."""
        return 0

    def settle(self, *, finish: bool) -> None:
        """The background work this writer started (the Annoy shards' merges): done
        (`finish`: a bulk tool about to exit leaves the layout it promised), or stopped after
        its current step (a server shutting down; what was not published is redone later).
        Engines with no background work of their own have nothing to do."""
        return None
