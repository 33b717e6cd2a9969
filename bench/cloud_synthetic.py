"""A synthesised collection of any size that moto serves without holding it (bench/cloud_scale.py
`--synthetic-outside`, for the S3 Vectors engine at 100k and 1M images).

moto keeps a DynamoDB item as Python objects (24 KB for an image's record and neighbour list:
24 GB at 1M) and an S3 Vectors vector as a list of Python floats (73 KB an image for both
indexes: 73 GB at 1M). Here the collection is kept compactly instead, as the arrays it is made
of: feature vectors as float16 (2.5 GB at 1M), each image's posted class probabilities (the 32
at most that keyword search scores, shards.posted_probabilities) as indices and float16, and a
128-dimension random projection for neighbour lists (0.5 GB at 1M), searched through an inverted
file (Faiss IVF: about size / CELL_SIZE cells, PROBED_CELLS of them scanned). moto answers from it:
- the catalog: a record or a neighbour list that the table does not hold is made when first
  read (GetItem, BatchGetItem, a transaction's or a conditional write's read), from the same
  functions populate() writes them with (synthetic_record; the K nearest, exact up to
  cloud_scale.EXACT_LISTS_UP_TO images, by the projection above), encoded by the catalog's
  own adapter, and then kept as moto keeps any item (so a later write replaces it);
- the vector indexes: QueryVectors and GetVectors answer from these arrays and from what moto
  holds (the ingested photos' vectors) as from one index (tests/support/s3vectors.py, EXTRA):
  the class index exactly (every row scored), the feature index from the EXACT_CANDIDATES
  nearest by the projection compared in full (approximate, as S3 Vectors is), with each
  vector's metadata as the engine's writer stores it;
- S3 Vectors' state object is written by the writer as after publishing the collection; Annoy's
  shards are published by the writer from these arrays, as populate() publishes them.
So the handlers send the same requests and read the same items as against a collection
written in full, whatever its size: only what they touch exists as moto objects.

Why the inverted file: moto runs in the bench's process, on the same two cores as the handlers
it serves. Scanning every projected row for each list made on read or QueryVectors (512 MB,
about 0.4 s of CPU at 1M; a batch of 100 new images reads thousands of lists' ends) kept both
cores busy with moto's work and inflated the handlers' own CPU time, which the bench counts as
theirs on Lambda. With the cells, moto's work per request is about the same at 100k and 1M,
as S3 Vectors' and DynamoDB's are on AWS, but for the class index's queries (keyword
search), which still score every row (0.4 s of CPU each at 1M).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from index_scale import real_embeddings, synthesise, synthetic_record

from imgsearch.catalog import _neighbour_attrs
from imgsearch.index.base import MATCH_PROBABILITY
from imgsearch.index.s3vectors import NEWEST_KEPT, VectorsState, partition
from imgsearch.index.shards import POSTINGS_PER_IMAGE, SPREAD_SIZE, posted_probabilities, spread

CHUNK = 20_000  # rows synthesised at once
PROJECTED = 128
FEATURE_DIM = 1280  # the model's (checked against the real embeddings when synthesising)
# Synthesised collections are kept here and reused by later runs of the same size and seed
# (1M images take minutes of this machine to synthesise); a new version when the arrays'
# making changes.
CACHE_DIR = Path(__file__).resolve().parents[1] / "build" / "bench" / "cloud-collections"
CACHE_VERSION = 2  # 2: no copy of a demo photo (they are ingested)
ARRAYS = (
    "features",
    "posted_classes",
    "posted_values",
    "projected",
    "norms",
    "parts",
    "classes_count",
)
# Feature rows compared in full for a QueryVectors: 5,000 found the same top 100 as 20,000 did
# at 1M, for a quarter of moto's CPU (converting float16 rows: 0.2 s for 20,000), and leave
# room for the handlers' partition filters (a sixteenth of the rows each).
EXACT_CANDIDATES = 5_000
CELL_SIZE = 1_000  # projected rows an inverted file's cell holds on average
PROBED_CELLS = 64  # cells scanned a search: 64,000 rows (plenty for EXACT_CANDIDATES)


def image_ids(size: int) -> list[str]:
    return [f"{i:016x}" for i in range(size)]


class Collection:
    """`size` synthesised images (the same as cloud_scale.populate's up to CHUNK images),
    synthesised once and then read from CACHE_DIR."""

    def __init__(self, size: int, seed: int, exact_up_to: int, k: int) -> None:
        self.size, self.k, self.exact = size, k, size <= exact_up_to
        self.projection = (
            np.random.default_rng(0).normal(size=(FEATURE_DIM, PROJECTED)).astype(np.float32)
        )
        cached = CACHE_DIR / f"{size}-{seed}-v{CACHE_VERSION}"
        if cached.is_dir():
            for name in ARRAYS:
                setattr(self, name, np.load(cached / f"{name}.npy"))
        else:
            self._synthesise(seed)
            self._save(cached)
        self.classes = int(self.classes_count)
        self.cells = self._cells() if size > min(exact_up_to, EXACT_CANDIDATES) else None

    def _cells(self) -> Any:
        """An inverted file over the projected rows (inner product: they are unit vectors)."""
        import faiss

        cells = max(1, self.size // CELL_SIZE)
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(PROJECTED), PROJECTED, cells)
        index.metric_type = faiss.METRIC_INNER_PRODUCT
        index.cp.max_points_per_centroid = 64  # k-means on a sample: seconds, not minutes
        index.train(self.projected)
        index.add(self.projected)
        index.nprobe = min(PROBED_CELLS, cells)
        return index

    def _nearest_projected(self, vector: np.ndarray, count: int) -> np.ndarray:
        """The rows of the `count` projected rows nearest `vector` (projected), found in
        the inverted file's PROBED_CELLS nearest cells."""
        _, rows = self.cells.search(vector.reshape(1, -1).astype(np.float32), count)
        return rows[0][rows[0] >= 0]

    def _save(self, directory: Path) -> None:
        """The arrays, for the next run of the same size and seed (written whole or not at all:
        a run stopped meanwhile leaves only the temporary directory)."""
        partial = directory.with_name(directory.name + ".partial")
        partial.mkdir(parents=True, exist_ok=True)
        for name in ARRAYS:
            np.save(partial / f"{name}.npy", getattr(self, name))
        partial.rename(directory)

    def _synthesise(self, seed: int) -> None:
        size = self.size
        real = real_embeddings(without_demo=True)
        rng = np.random.default_rng(seed)
        dim, classes = real[0].shape[1], real[1].shape[1]
        assert dim == FEATURE_DIM, dim
        self.classes_count = np.int64(classes)
        self.features = np.empty((size, dim), np.float16)
        self.posted_classes = np.zeros((size, POSTINGS_PER_IMAGE), np.int16)
        self.posted_values = np.zeros((size, POSTINGS_PER_IMAGE), np.float16)
        projection = self.projection
        self.projected = np.empty((size, PROJECTED), np.float32)
        self.norms = np.empty(size, np.float32)
        for start in range(0, size, CHUNK):
            count = min(CHUNK, size - start)
            features, probabilities = synthesise(*real, count, rng)
            rows = slice(start, start + count)
            self.features[rows] = features
            # Of the float16 rows as stored, a chunk at a time (all at once: 5 GB at 1M).
            self.norms[rows] = np.linalg.norm(self.features[rows].astype(np.float32), axis=1)
            projected = features @ projection
            self.projected[rows] = projected / np.linalg.norm(projected, axis=1, keepdims=True)
            posted = posted_probabilities(probabilities)
            top = np.argsort(-posted, axis=1)[:, :POSTINGS_PER_IMAGE]
            self.posted_classes[rows] = top
            self.posted_values[rows] = np.take_along_axis(posted, top, axis=1)
            if start and start % 200_000 == 0:
                print(f"    synthesised {start:,} of {size:,}", flush=True)
        self.parts = np.fromiter((partition(i) for i in image_ids(size)), np.int16, size)

    def row(self, image_id: str) -> int | None:
        try:
            row = int(image_id, 16)
        except ValueError:
            return None
        return row if len(image_id) == 16 and row < self.size else None

    def probabilities(self, row: int) -> np.ndarray:
        dense = np.zeros(self.classes, np.float16)
        dense[self.posted_classes[row]] = self.posted_values[row]
        return dense

    def neighbours(self, row: int) -> list[tuple[str, float]]:
        """The row's K nearest with their cosine distances (see the module's docstring)."""
        if self.exact:
            similarity = self._dot(self.features, self.features[row].astype(np.float32))
            similarity[row] = -np.inf
            nearest = np.argpartition(-similarity, self.k)[: self.k]
        else:
            nearest = self._nearest_projected(self.projected[row], self.k + 1)
            nearest = nearest[nearest != row][: self.k]
        distances = 1.0 - self.features[nearest].astype(np.float32) @ self.features[row].astype(
            np.float32
        )
        order = np.argsort(distances)
        return [(f"{int(nearest[i]):016x}", round(float(distances[i]), 6)) for i in order]

    @staticmethod
    def _dot(matrix: np.ndarray, vector: np.ndarray) -> np.ndarray:
        out = np.empty(len(matrix), np.float32)
        for start in range(0, len(matrix), 100_000):  # float16 converted a block at a time
            out[start : start + 100_000] = (
                matrix[start : start + 100_000].astype(np.float32) @ vector
            )
        return out

    # The catalog ---------------------------------------------------------------------------

    def item_attrs(self, pk: str, sk: str) -> dict[str, Any] | None:
        """The attributes populate() would have stored under (pk, sk), or None."""
        row = self.row(pk.removeprefix("image#")) if pk.startswith("image#") else None
        if row is None:
            return None
        image_id = pk.removeprefix("image#")
        if sk == "meta":
            return synthetic_record(image_id, self.probabilities(row)).attrs()
        if sk == "neighbours":
            return _neighbour_attrs(self.neighbours(row))
        return None

    # The vector indexes ----------------------------------------------------------------------

    def feature_distances(self, query: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(rows, their cosine distances to `query`): every row up to EXACT_CANDIDATES rows;
        above, the EXACT_CANDIDATES nearest by the projection (in the inverted file), compared
        in full (a search of every float16 row costs seconds of this machine's CPU at 1M:
        approximate, as S3 Vectors' own search is; the requests are the same)."""
        query = query.astype(np.float32)
        norm = float(np.linalg.norm(query)) or 1e-12
        if self.size <= EXACT_CANDIDATES:
            rows = np.arange(self.size)
        else:
            projected = query @ self.projection
            rows = self._nearest_projected(projected / np.linalg.norm(projected), EXACT_CANDIDATES)
        exact = self.features[rows].astype(np.float32) @ query
        return rows, 1.0 - exact / (self.norms[rows] * norm)

    def class_distances(self, query: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Cosine distances to the rows' unit class vectors (s3vectors.unit_class_vectors: the
        posted probabilities plus a last component that makes each row a unit vector), of which
        the query's last component is 0 (the engine's keyword query)."""
        weights = query[: self.classes].astype(np.float32)
        norm = float(np.linalg.norm(query)) or 1e-12
        scores = np.zeros(self.size, np.float32)
        for start in range(0, self.size, 100_000):
            rows = slice(start, start + 100_000)
            scores[rows] = (
                weights[self.posted_classes[rows]] * self.posted_values[rows].astype(np.float32)
            ).sum(axis=1)
        return np.arange(self.size), 1.0 - scores / norm

    def class_vector(self, row: int) -> np.ndarray:
        posted = self.probabilities(row).astype(np.float32)
        rest = np.sqrt(max(0.0, 1.0 - float((posted.astype(np.float64) ** 2).sum())))
        return np.append(posted, np.float32(rest))

    def state(self, model: str) -> VectorsState:
        sample = self.features[: min(self.size, CHUNK)].astype(np.float32)
        representatives = spread(sample, SPREAD_SIZE)
        return VectorsState(
            generation=1,
            count=self.size,
            model=model,
            dim=int(self.features.shape[1]),
            classes=self.classes,
            spread=tuple(f"{int(r):016x}" for r in representatives),
            counted=self.counted(),
            # All added by generation 1: the newest are the highest ids, as a listing sorts.
            newest=tuple(image_ids(self.size)[: -NEWEST_KEPT - 1 : -1]),
        )

    def counted(self) -> tuple[int, ...]:
        """Images per class with a posted probability >= the state's cut (as the writer
        counts them: VectorsState.counted)."""
        held = self.posted_values >= MATCH_PROBABILITY
        counts = np.bincount(self.posted_classes[held].astype(np.int64), minlength=self.classes)
        return tuple(int(n) for n in counts)


class Outside:
    """One vector index of the collection, as tests/support/s3vectors.py's EXTRA asks."""

    def __init__(
        self,
        collection: Collection,
        distances: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]],
        vector: Callable[[int], np.ndarray],
        metadata: Callable[[int], dict[str, Any]],
    ) -> None:
        self.collection, self.distances, self.vector = collection, distances, vector
        self.metadata = metadata

    def query(
        self, query: np.ndarray, top_k: int, matches: Callable[[dict[str, Any]], bool]
    ) -> list[tuple[float, str, Any]]:
        rows, distances = self.distances(query)
        hits: list[tuple[float, str, Any]] = []
        for at in self._nearest_first(distances):
            row = int(rows[at])
            metadata = self.metadata(row)
            if matches(metadata):
                hits.append((float(distances[at]), f"{row:016x}", metadata))
                if len(hits) == top_k:
                    break
        return hits

    @staticmethod
    def _nearest_first(distances: np.ndarray) -> Iterator[int]:
        shown = 0
        for depth in (4_096, 65_536, len(distances)):  # a filter may pass few of the nearest
            depth = min(depth, len(distances))
            nearest = np.argpartition(distances, depth - 1)[:depth]
            nearest = nearest[np.argsort(distances[nearest], kind="stable")]
            yield from (int(r) for r in nearest[shown:])
            shown = depth
            if depth == len(distances):
                return

    def get(self, keys: list[str]) -> list[Any]:
        from moto.s3vectors.models import Vector

        found = []
        for key in keys:
            row = self.collection.row(key)
            if row is not None:
                data = {"float32": self.vector(row).astype(np.float32).tolist()}
                found.append(Vector(key=key, data=data, metadata=self.metadata(row)))
        return found


def serve_from_outside(
    collection: Collection,
    catalog_table: str,
    encode: Callable[[str, str, dict[str, Any]], dict[str, Any]],
    vector_bucket: str | None,
    features_index: str,
    classes_index: str,
) -> None:
    """Make moto (this process's backends) answer from `collection`: the catalog table's
    missing image items, and both vector indexes unless `vector_bucket` is None (Annoy)."""
    from moto.core.models import DEFAULT_ACCOUNT_ID
    from moto.dynamodb.models import dynamodb_backends
    from moto.dynamodb.models.dynamo_type import Item
    from moto.s3vectors.models import s3vectors_backends
    from support.s3vectors import EXTRA

    table = dynamodb_backends[DEFAULT_ACCOUNT_ID]["us-east-1"].get_table(catalog_table)
    deleted: set[tuple[str, str]] = set()

    get_item, delete_item = table.get_item, table.delete_item

    def made_when_read(hash_key: Any, range_key: Any = None, projection: Any = None) -> Any:
        found = get_item(hash_key, range_key, projection)
        if found is not None or range_key is None:
            return found
        key = (str(hash_key.value), str(range_key.value))
        attrs = None if key in deleted else collection.item_attrs(*key)
        if attrs is None:
            return None
        table.items[hash_key][range_key] = Item(hash_key, range_key, encode(*key, attrs))
        return get_item(hash_key, range_key, projection)

    def deleted_for_good(hash_key: Any, range_key: Any) -> Any:
        if range_key is not None:
            deleted.add((str(hash_key.value), str(range_key.value)))
        return delete_item(hash_key, range_key)

    # On the instance: moto's table methods call self.get_item (a put reads the current item).
    table.get_item, table.delete_item = made_when_read, deleted_for_good
    if vector_bucket is None:
        return
    vectors = s3vectors_backends[DEFAULT_ACCOUNT_ID]["aws"]
    features = vectors.get_index(vector_bucket, features_index, None)
    classes = vectors.get_index(vector_bucket, classes_index, None)
    setattr(
        features,
        EXTRA,
        Outside(
            collection,
            collection.feature_distances,
            lambda row: collection.features[row],
            lambda row: {"part": int(collection.parts[row]), "added": 1},
        ),
    )
    setattr(
        classes,
        EXTRA,
        Outside(
            collection,
            collection.class_distances,
            collection.class_vector,
            lambda row: {"part": int(collection.parts[row])},
        ),
    )
