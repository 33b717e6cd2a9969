"""One shard of the index: an Annoy forest over image features, the features themselves for
exact re-ranking, and per-class posting lists for keyword search.

A shard *build* is a set of immutable objects written under a fresh name; a build is never
modified, so readers can cache and memory-map it, and the manifest can switch builds atomically.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import io
import json
import mmap
import secrets
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from imgsearch.blas import one_blas_thread
from imgsearch.index.manifest import MANIFEST_KEY, ShardEntry
from imgsearch.integrity import DamagedFile, read_npy, read_npz, sha256_of_bytes, sha256_of_file
from imgsearch.storage import LocalCopies, NotFound, ObjectStore, in_parallel
from imgsearch.vectors import unit_rows

SHARDS_PREFIX = "index/shards/"
# Each image is listed under its most probable classes only: keyword search then touches the
# images a class could rank, never every image's 1000 probabilities.
POSTINGS_PER_IMAGE = 32
MIN_POSTING_PROBABILITY = 1e-4
# A query's postings fewer than a shard's rows / this are merged row by row listed (np.unique),
# more into an array of every row (np.bincount): measured crossover, see `Shard.class_scores`.
SPARSE_MERGE_RATIO = 200


# float16 -> float32 by integer operations (see `half_dot`): a half's bits shifted 13 places up
# are a single of the same sign and mantissa, 2**-112 times its value (its exponent is 112
# lower), subnormal halves included; the shift pushes the sign (and the sign-extension) to bits
# 28-31, and the mask keeps only bit 31 of them.
_HALF_BITS_SHIFT = 13
_HALF_BITS_MASK = np.int32(-0x70000001)  # 0x8FFFFFFF: the sign and the shifted magnitude
_HALF_BITS_SCALE = np.float32(2.0**112)
_SMALLEST_NORMAL_HALF = np.float16(2.0**-14)


# OpenBLAS multiplies a matrix of more than about 330k elements by a vector in several threads;
# on a busy machine, waking them costs a query tens of milliseconds (measured: 35 ms against
# 35 us for 384 x 1280). Blocks below that size keep each product on the calling thread.
SERIAL_PRODUCT_ELEMENTS = 256 * 1280


def serial_matvec(matrix: np.ndarray, vector: np.ndarray) -> np.ndarray:
    """`matrix @ vector` (float32, C-order `matrix`), computed on the calling thread."""
    block = max(1, SERIAL_PRODUCT_ELEMENTS // max(1, matrix.shape[1]))
    if len(matrix) <= block:
        product: np.ndarray = matrix @ vector
        return product
    out = np.empty(len(matrix), np.result_type(matrix, vector))
    for start in range(0, len(matrix), block):
        np.matmul(matrix[start : start + block], vector, out=out[start : start + block])
    return out


# Rows of float16 features widened at once by `half_dot`: 256 x 1280 as int32 is 1.3 MB, which
# stays in a core's cache (2 MB here) between the widening and the product; a query's 800
# candidates at once would be 4 MB, streamed through memory three times (measured: 0.51 against
# 0.60 ms for 800 rows; the same time up to 256).
HALF_BLOCK_ELEMENTS = 256 * 1280


def half_dot(rows: np.ndarray, vector: np.ndarray) -> np.ndarray:
    """`rows @ vector` (float32) for float16 `rows` [n, d] of finite values and a float32
    `vector` [d]: the exact re-rank's product.

    numpy casts float16 element by element (0.7 ms for a query's 200 candidates of 1280
    dimensions, 90% of the re-rank); widening the bits with three vectorised integer operations
    and scaling the vector instead costs a tenth of that, for the same float32 products. (A
    subnormal half stays subnormal as a single and costs the CPU a microcode assist:
    `_normal_halves` stores none.)"""
    vector = vector.astype(np.float32)
    if rows.dtype != np.float16:
        return serial_matvec(np.ascontiguousarray(rows, np.float32), vector)
    halves = rows.view(np.int16)
    scaled = vector * _HALF_BITS_SCALE
    block = max(1, HALF_BLOCK_ELEMENTS // max(1, rows.shape[1]))
    out = np.empty(len(rows), np.float32)
    # One buffer for every block, widened and shifted in one pass (12% faster for 800 rows
    # than a cast, then a shift, into a new array per block).
    widened = np.empty((min(block, len(rows)), rows.shape[1]), np.int32)
    for start in range(0, len(rows), block):
        bits = widened[: min(block, len(rows) - start)]
        np.left_shift(halves[start : start + block], _HALF_BITS_SHIFT, out=bits, dtype=np.int32)
        bits &= _HALF_BITS_MASK
        np.matmul(bits.view(np.float32), scaled, out=out[start : start + len(bits)])
    return out


# A query's candidates are gathered from the shards' features and widened up to
# `GATHER_BLOCK_ROWS` at a time by `half_dot_of_held_rows`, so that they stay in the CPU's
# caches between the gather, the widening and the product: a 1M query's 600 candidates at once
# (1.5 MB, then 3 MB widened) went out to memory and back, and blocks of 242 of them took 5%
# longer than blocks of 121. Each gather and widening lets go of the GIL, which a second query
# thread may take meanwhile: a 100k query's 136 candidates as one block rather than two
# blocked a query thread a fifth less often (5.2 against 6.5 times a query) and answered 1-2%
# sooner with two query threads, as fast with one.
GATHER_BLOCK_ROWS = 160
# ... and multiplied by the query up to `PRODUCT_BLOCK_ROWS` at a time (blocks of one size, whole
# blocks to a gather): OpenBLAS sums a row's products in an order that depends on its place in
# the block (rows four at a time, the rest one by one), so blocks of other sizes would change
# the last bit of some candidates' distances.
PRODUCT_BLOCK_ROWS = 128


class _RerankBuffers(threading.local):
    """Each query thread's gathered and widened blocks, kept between queries: allocating them
    query by query costs numpy calls (each holding the GIL a second query thread waits for)
    and, for big blocks, fresh pages. A block is at most GATHER_BLOCK_ROWS rows (1.2 MB for
    both)."""

    gathered: np.ndarray = np.empty((0, 0), np.int16)
    widened: np.ndarray = np.empty((0, 0), np.int32)

    def blocks(self, rows: int, dimension: int) -> tuple[np.ndarray, np.ndarray]:
        """[rows, dimension] views of this thread's int16 and int32 blocks, grown as needed."""
        if len(self.gathered) < rows or self.gathered.shape[1] != dimension:
            self.gathered = np.empty((rows, dimension), np.int16)
            self.widened = np.empty((rows, dimension), np.int32)
        return self.gathered[:rows], self.widened[:rows]


_rerank_buffers = _RerankBuffers()


def half_dot_of_rows(
    parts: Sequence[tuple[np.ndarray, np.ndarray]],
    vector: np.ndarray,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """`features[rows] @ vector` (float32), as `half_dot` computes it, for each (features,
    rows) of `parts` (a query's candidates in each shard) one after the other; into `out` if
    given. A row outside its features raises IndexError (`half_dot_of_held_rows` trusts
    them)."""
    for features, rows in parts:
        # (what "clip" would turn into a plausible wrong row: a row no shard holds)
        if len(rows) and (int(rows.min()) < 0 or int(rows.max()) >= len(features)):
            raise IndexError(f"rows outside a shard of {len(features)}")
    return half_dot_of_held_rows(parts, vector, out)


def half_dot_of_held_rows(
    parts: Sequence[tuple[np.ndarray, np.ndarray]],
    vector: np.ndarray,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """`half_dot_of_rows` of rows known to be inside their features (numpy's "clip" would read
    the last row for one past the end): a query's candidates, which Annoy takes from a forest
    of as many items as its shard's features have rows (`Shard` checks at load). Checking
    them again, 8 numpy calls for four shards, held the GIL long enough to cost two query
    threads 0.03-0.04 ms a query (p50, 100k).

    Gathered block by block (GATHER_BLOCK_ROWS), a block taking rows of several parts: a
    query's few candidates in four shards are one block, not four (each numpy call holds the
    GIL that a second query thread waits for)."""
    total = sum(len(rows) for _, rows in parts)
    if out is None:
        out = np.empty(total, np.float32)
    if total == 0:
        return out
    if any(features.dtype != np.float16 for features, _ in parts):
        out[:] = np.concatenate([half_dot(features[rows], vector) for features, rows in parts])
        return out
    scaled = np.multiply(vector, _HALF_BITS_SCALE, dtype=np.float32)
    products = -(-total // PRODUCT_BLOCK_ROWS)
    product = -(-total // products)  # blocks of one size: 385 rows as 3 x 129, not 3 x 128 + 1
    rows_per_block = product * max(1, GATHER_BLOCK_ROWS // product)  # whole products
    gathered, widened = _rerank_buffers.blocks(min(rows_per_block, total), parts[0][0].shape[1])
    done = 0  # rows multiplied
    # A block's numpy calls one after the other, the blocks worked out before them: each lets
    # go of the GIL, and Python work between them gives a second query thread more moments
    # to take it.
    for block in _gather_blocks(parts, rows_per_block):
        filled = 0
        for halves, rows in block:
            # mode="clip": numpy checks no bounds (with "raise" it also buffers `out`,
            # 2.5x the time of the gather itself).
            np.take(halves, rows, axis=0, out=gathered[filled : filled + len(rows)], mode="clip")
            filled += len(rows)
        # Widened by a cast, then shifted and masked in place: three passes of vectorised
        # integer work (a shift casting as it goes is a buffered loop, 2x slower).
        bits = widened[:filled]
        np.copyto(bits, gathered[:filled])
        bits <<= _HALF_BITS_SHIFT
        bits &= _HALF_BITS_MASK
        singles = bits.view(np.float32)
        for start in range(0, filled, product):
            at = done + start
            np.matmul(singles[start : start + product], scaled, out=out[at : at + product])
        done += filled
    return out


def _gather_blocks(
    parts: Sequence[tuple[np.ndarray, np.ndarray]], rows_per_block: int
) -> list[list[tuple[np.ndarray, np.ndarray]]]:
    """The rows of `parts` cut into blocks of `rows_per_block` (the last one shorter), each
    block the (halves of features, rows) of the parts it takes rows of."""
    blocks: list[list[tuple[np.ndarray, np.ndarray]]] = [[]]
    filled = 0
    for features, rows in parts:
        halves = features.view(np.int16)
        taken = 0
        while taken < len(rows):
            if filled == rows_per_block:
                blocks.append([])
                filled = 0
            count = min(rows_per_block - filled, len(rows) - taken)
            piece = rows if count == len(rows) else rows[taken : taken + count]
            blocks[-1].append((halves, piece))
            filled, taken = filled + count, taken + count
    return blocks


def cosine_distances(cosine: np.ndarray) -> np.ndarray:
    """1 - cos, in [0, 2]: float16 rounding can put an image's cosine with itself slightly
    above 1."""
    distances: np.ndarray = np.clip(1.0 - cosine, 0.0, 2.0)
    return distances


def _normal_halves(features: np.ndarray) -> np.ndarray:
    """`features` as float16 with values too small for a normal half (below 6.1e-5 in a unit
    vector; about 1% of EfficientNet's) set to 0, which keeps `half_dot` fast. A copy."""
    halves = np.array(features, dtype=np.float16)
    halves[np.abs(halves) < _SMALLEST_NORMAL_HALF] = 0
    return halves


# Linux's madvise advice (5.14+) that maps every page of a range into the process now, reading
# what the page cache lacks, and returns when done; MADV_WILLNEED only starts reading ahead.
_MADV_POPULATE_READ = 22
_MADV_WILLNEED = 3


@functools.cache
def _madvise() -> Callable[[int, int, int], int] | None:
    """libc's madvise (None off Linux), called through ctypes, which lets go of the GIL."""
    if not sys.platform.startswith("linux"):
        return None
    call = ctypes.CDLL(None, use_errno=True).madvise
    call.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    call.restype = ctypes.c_int
    return call


def map_resident(array: np.ndarray) -> bool:
    """Map every page of a memory-mapped `array` into this process now; whether the kernel did
    (or, on a kernel without MADV_POPULATE_READ, was asked to read it ahead).

    A query re-ranks rows scattered over a shard's features (2.5 KB rows over 2.5 GB at 1M): a
    row whose page this process has not touched yet costs a page fault (a few microseconds from
    the page cache, far more from disk), and a query's 800 rows cost it milliseconds until every
    page has been touched once. A server maps them once, when it loads a shard, not query by
    query. The pages stay the page cache's: under memory pressure the kernel may still evict
    them (they come back, a fault at a time)."""
    madvise = _madvise()
    if madvise is None or array.nbytes == 0:
        return False
    address = array.ctypes.data
    start = address - address % mmap.PAGESIZE
    length = address + array.nbytes - start
    if madvise(start, length, _MADV_POPULATE_READ) == 0:
        return True
    return madvise(start, length, _MADV_WILLNEED) == 0


@dataclass
class ShardData:
    """The content of a shard: image ids with their normalised features and probabilities."""

    ids: list[str]
    features: np.ndarray  # float32 [n, d], unit rows
    probabilities: np.ndarray  # float16 [n, classes]

    @classmethod
    def empty(cls, dim: int, classes: int) -> ShardData:
        return cls([], np.zeros((0, dim), np.float32), np.zeros((0, classes), np.float16))

    def __len__(self) -> int:
        return len(self.ids)

    def append(self, other: ShardData) -> ShardData:
        return ShardData(
            self.ids + other.ids,
            np.concatenate([self.features, other.features]),
            np.concatenate([self.probabilities, other.probabilities]),
        )

    def take(self, rows: np.ndarray | slice) -> ShardData:
        ids = np.asarray(self.ids, dtype=object)[rows].tolist()
        return ShardData(ids, self.features[rows], self.probabilities[rows])

    def without(self, removed: Iterable[str]) -> ShardData:
        removed = set(removed)
        keep = np.array([i not in removed for i in self.ids], dtype=bool)
        return self.take(keep)


def build_key(shard_id: str, build_id: str, part: str) -> str:
    return f"{SHARDS_PREFIX}{shard_id}/{build_id}.{part}"


BUILD_PARTS = (
    "ann",
    "projection.npz",
    "features.npy",
    "probabilities.npy",
    "ids.json",
    "postings.npz",
    "spread.npy",
)
# Annoy works on principal components: a 1280-d forest is 5x the bytes of the features it
# indexes and no better at finding candidates, which are re-ranked on the full vectors anyway,
# so the projection only decides which images are looked at (bench/index_scale.py measured
# 128 components as good as 256 at half the forest's bytes and time).
PROJECTED_DIMS = 128
PROJECTION_SAMPLE = 4096  # rows a projection is fitted on
SPREAD_SIZE = 64  # representatives per shard for a first page that covers the collection
SPREAD_ITERATIONS = 8  # k-means steps choosing them
SPREAD_SAMPLE = 16_384  # rows of a big shard its representatives are chosen among


def new_build_id() -> str:
    # Time first so builds sort by age; random suffix so concurrent builders never collide.
    return f"b{time.time_ns():x}{secrets.token_hex(3)}"


@dataclass(frozen=True)
class ShardBuild:
    """A build as written: its id and the sha256 of each part, for the manifest."""

    id: str
    sha256: dict[str, str]
    projection: Projection


def write_build(
    store: ObjectStore,
    shard_id: str,
    data: ShardData,
    n_trees: int,
    *,
    projection: Projection | None = None,
    n_jobs: int = -1,
) -> ShardBuild:
    """Build the Annoy forest and posting lists for `data`; store them under a new build id.

    `projection`: one fitted before (an open shard's rebuilds reuse one: `Projection.fit` is a
    fixed cost of about a second); None fits one on `data`. `n_jobs`: threads building the
    forest (-1: every core; a merge in the background takes one, leaving the others to
    queries and uploads). `data.features` may be float16 (a merge of big shards)."""
    from annoy import AnnoyIndex  # here, not at the top: see Shard.__init__

    build_id = new_build_id()
    if projection is None:
        projection = fit_projection(data.features)
    forest = AnnoyIndex(projection.dims, "euclidean")
    forest.set_seed(1)
    for start in range(0, len(data), PROJECTION_CHUNK):
        projected = projection.apply(data.features[start : start + PROJECTION_CHUNK])
        for row, vector in enumerate(projected, start):
            forest.add_item(row, vector)
    forest.build(n_trees, n_jobs=n_jobs)
    parts: dict[str, Callable[[], bytes]] = {
        "projection.npz": projection.to_bytes,
        "features.npy": lambda: _features_npy_bytes(data.features),
        "probabilities.npy": lambda: _npy_bytes(data.probabilities.astype(np.float16, copy=False)),
        "ids.json": lambda: json.dumps(data.ids).encode(),
        "postings.npz": lambda: _postings_bytes(data.probabilities),
        "spread.npy": lambda: _npy_bytes(_spread_of(data)),
    }

    def put(item: tuple[str, Callable[[], bytes]]) -> tuple[str, str]:
        return item[0], _put(store, build_key(shard_id, build_id, item[0]), item[1]())

    # A small build's parts (the open shard's rebuild, every batch) are stored at once; a big
    # one's one at a time, one part in memory (they are GBs). The forest goes last: a build
    # whose forest exists is complete.
    small = len(data) * data.features.shape[1] <= PARTS_AT_ONCE_UP_TO
    sha256 = dict(in_parallel(put, list(parts.items())) if small else map(put, parts.items()))
    with tempfile.TemporaryDirectory() as scratch:
        ann_path = Path(scratch) / "forest.ann"
        forest.save(str(ann_path))
        forest.unload()
        sha256["ann"] = _put(store, build_key(shard_id, build_id, "ann"), ann_path.read_bytes())
    return ShardBuild(build_id, sha256, projection)


def _put(store: ObjectStore, key: str, data: bytes) -> str:
    """Store a new build's part; its sha256. A store that caches copies (S3) keeps this one:
    the writer loads the build it publishes next, without downloading what it just wrote."""
    store.put(key, data, if_none_match=True)
    if isinstance(store, LocalCopies):
        store.keep_local_copy(key, data)
    return sha256_of_bytes(data)


# Values (images x dimensions) up to which a build's parts are made and stored at once: a
# full open shard's (10,000 x 1,280: 26 MB of float16 features).
PARTS_AT_ONCE_UP_TO = 16_000_000
CLASS_COUNT_THRESHOLDS = 4  # thresholds whose class counts a shard keeps (`class_counts`)
PROJECTION_CHUNK = 8192  # rows projected at once (a float32 copy of a big shard is GBs)


# A decomposition of the fit on several OpenBLAS threads costs 10x the CPU of one thread on a
# busy machine (eigh of 1280 x 1280: 4.4 s against 0.42 s, the threads spinning on each small
# step), and ingest keeps every core busy with inference: the fit runs on the calling thread
# (`one_blas_thread`, which an ingest's inference shares), one fit at a time.
_FIT_LOCK = threading.Lock()


def _principal_axes(centred: np.ndarray, count: int) -> np.ndarray:
    """The `count` leading principal axes [count, d] (orthonormal rows) of centred rows [n, d].

    Of the two square matrices with the same nonzero eigenvalues, the smaller is decomposed:
    the covariance [d, d] when rows outnumber dimensions; otherwise the rows' Gram matrix
    [n, n], whose eigenvectors u give the axes as rows.T @ u (a fit on an open shard's few
    rows then costs milliseconds, not the covariance's fixed ~0.4 s). Its columns are already
    orthogonal; QR normalises them and completes the axes of zero variance (a centred set of
    n rows spans n - 1 directions) with orthonormal ones, which shift every distance to those
    rows by the same amount."""
    if len(centred) >= centred.shape[1]:
        _, vectors = np.linalg.eigh(centred.T @ centred)
        axes: np.ndarray = vectors[:, ::-1][:, :count].T
        return axes
    _, by_row = np.linalg.eigh(centred @ centred.T)
    spanning = centred.T @ by_row[:, ::-1][:, :count]
    orthonormal, triangle = np.linalg.qr(spanning)
    # QR's signs are arbitrary; keep each axis pointing as rows.T @ u does.
    signs = np.where(np.diag(triangle) < 0, -1.0, 1.0)
    return (orthonormal * signs).T


@dataclass(frozen=True)
class Projection:
    """Centre, then project onto the leading principal components of a shard's vectors.

    A shard with no more images than components is projected onto the span of its own
    vectors, which keeps every distance among them: its forest is then exact in ranking.
    """

    mean: np.ndarray  # [d]
    components: np.ndarray  # [k, d], orthonormal rows
    fitted_rows: int = 0  # how many vectors it was fitted on (0: unknown)

    @property
    def dims(self) -> int:
        return int(self.components.shape[0])

    @functools.cached_property
    def digest(self) -> bytes:
        """Equal for equal projections (loaded from different builds, whose files differ in
        their zip timestamps): a reader projects a query once for all shards built with one."""
        return hashlib.blake2b(self.mean.tobytes() + self.components.tobytes()).digest()

    def fits(self, features: np.ndarray) -> bool:
        """Whether it serves a build of `features` as well as a new fit would: of their
        dimension, fitted on its full sample or on at least half as many vectors (an open
        shard refits as it doubles, a few times, rather than at every rebuild)."""
        enough = min(PROJECTION_SAMPLE, max(1, len(features) // 2))
        return self.mean.shape[0] == features.shape[1] and self.fitted_rows >= enough

    def kept_variance(self, sample: np.ndarray) -> float:
        """The share of `sample`'s variance that its components keep (1: all): rows of a
        build's features a fit of them would not sample (`held_out_sample`), read once for
        every projection judged. About their own mean: a forest ranks by distances between
        projected vectors, which the mean subtracted does not change."""
        centred = sample - sample.mean(axis=0)
        total = float(np.einsum("ij,ij->", centred, centred))
        if total == 0:
            return 1.0
        with one_blas_thread():  # see _FIT_LOCK: a merge's, beside queries and inference
            projected = centred @ self.components.T
        return float(np.einsum("ij,ij->", projected, projected)) / total

    @classmethod
    def fit(cls, features: np.ndarray, dims: int) -> Projection:
        if len(features):
            mean = np.mean(features, axis=0, dtype=np.float64)
        else:
            mean = np.zeros(features.shape[1])
        sample = _fit_sample(features)
        centred = np.asarray(sample, dtype=np.float64) - mean
        if len(centred) < 2:  # nothing to learn directions from: any single axis will do
            components = np.eye(1, features.shape[1])
        else:
            with _FIT_LOCK, one_blas_thread():
                components = _principal_axes(centred, min(dims, len(centred)))
        return cls(np.asarray(mean, np.float32), components.astype(np.float32), len(sample))

    def apply(self, vectors: np.ndarray) -> np.ndarray:
        centred = np.asarray(vectors, dtype=np.float32) - self.mean
        if centred.ndim == 1:  # one query: a product kept on this thread
            return serial_matvec(np.ascontiguousarray(self.components), centred)
        projected: np.ndarray = centred @ self.components.T
        return projected

    def to_bytes(self) -> bytes:
        buffer = io.BytesIO()
        np.savez(
            buffer,
            mean=self.mean,
            components=self.components,
            fitted_rows=np.int64(self.fitted_rows),
        )
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> Projection:
        arrays = read_npz(data)
        fitted = int(arrays["fitted_rows"]) if "fitted_rows" in arrays else 0
        return cls(arrays["mean"], arrays["components"], fitted)


def fit_projection(features: np.ndarray) -> Projection:
    """A build's projection of `features`: PROJECTED_DIMS components (fewer for few rows)."""
    return Projection.fit(features, PROJECTED_DIMS)


def _fit_rows(count: int) -> np.ndarray:
    """The rows of `count` a projection is fitted on: all, or PROJECTION_SAMPLE of them (the
    same ones for the same count), ascending."""
    if count <= PROJECTION_SAMPLE:
        return np.arange(count)
    return np.sort(np.random.default_rng(0).choice(count, PROJECTION_SAMPLE, replace=False))


def _fit_sample(features: np.ndarray) -> np.ndarray:
    sample: np.ndarray = features[_fit_rows(len(features))]
    return sample


def held_out_sample(features: np.ndarray) -> np.ndarray:
    """Up to PROJECTION_SAMPLE rows a fit does not sample, as float32, to judge projections
    on (`Projection.kept_variance`): a fit keeps more of its own sample's variance than of
    other rows' (4.5% more of 40k real vectors', its 4,096 rows against others). All rows if
    a fit samples them all."""
    others = np.setdiff1d(np.arange(len(features)), _fit_rows(len(features)))
    if len(others) > PROJECTION_SAMPLE:
        others = np.sort(np.random.default_rng(1).choice(others, PROJECTION_SAMPLE, replace=False))
    held_out = features if len(others) == 0 else features[others]
    return np.asarray(held_out, dtype=np.float32)


def _spread_of(data: ShardData) -> np.ndarray:
    """The shard's spread, the same whatever order its images arrived in (by image id); in a
    big shard, chosen among an even sample of its images (k-means over all would cost a merge
    minutes and GBs)."""
    by_id = np.argsort(np.asarray(data.ids, dtype=object)).astype(np.int64)
    if len(by_id) > SPREAD_SAMPLE:
        by_id = by_id[np.linspace(0, len(by_id) - 1, SPREAD_SAMPLE).astype(np.int64)]
    features = np.asarray(data.features[by_id], dtype=np.float32)
    rows: np.ndarray = by_id[spread(features, SPREAD_SIZE)].astype(np.int32)
    return rows


def spread(features: np.ndarray, count: int) -> np.ndarray:
    """Rows that cover the shard's content: the image nearest each k-means centre, ordered so
    that each next one is far from those before it, big clusters breaking ties.

    A query nobody understands is answered with these, so that its first page shows a bit of
    everything and one vote can start teaching.
    """
    n = len(features)
    count = min(count, n)
    if count == 0:
        return np.zeros(0, np.int32)
    rng = np.random.default_rng(0)
    centres = features[_kmeans_plus_plus(features, count, rng)]
    for _ in range(SPREAD_ITERATIONS):
        # Whole-array steps only: a build shares the process with request threads, and many
        # small numpy calls would each wait for the GIL.
        assignment = np.argmax(features @ centres.T, axis=1)
        members = np.zeros((n, count), dtype=np.float32)
        members[np.arange(n), assignment] = 1.0
        sums = members.T @ features
        filled = members.sum(axis=0) > 0
        centres[filled] = unit_rows(sums[filled])
    similarity = features @ centres.T
    assignment = np.argmax(similarity, axis=1)
    sizes = np.bincount(assignment, minlength=count)
    medoids = np.argmax(similarity, axis=0)  # the image nearest each centre
    order = [int(np.argmax(sizes))]
    nearest_picked = 1.0 - features[medoids] @ features[medoids[order[0]]]
    for _ in range(count - 1):
        gain = nearest_picked * np.log1p(sizes)
        gain[order] = -1.0
        pick = int(np.argmax(gain))
        order.append(pick)
        nearest_picked = np.minimum(
            nearest_picked, 1.0 - features[medoids] @ features[medoids[pick]]
        )
    # Two centres can share their nearest image: keep each image once, in order.
    return np.array(list(dict.fromkeys(medoids[order].tolist())), dtype=np.int32)


def _kmeans_plus_plus(features: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    chosen = [int(rng.integers(len(features)))]
    distance = np.maximum(1.0 - features @ features[chosen[0]], 0.0)
    for _ in range(count - 1):
        total = distance.sum()
        pick = (
            int(rng.choice(len(features), p=distance / total))
            if total > 0
            else int(rng.integers(len(features)))
        )
        chosen.append(pick)
        distance = np.minimum(distance, np.maximum(1.0 - features @ features[pick], 0.0))
    return np.array(chosen)


def _features_npy_bytes(features: np.ndarray) -> bytes:
    """features.npy: float16 rows (`_normal_halves`), converted chunk by chunk into the file's
    bytes (a converted copy of a big shard's features would be GBs)."""
    buffer = io.BytesIO()
    header = {"descr": "<f2", "fortran_order": False, "shape": features.shape}
    np.lib.format.write_array_header_1_0(buffer, header)
    for start in range(0, len(features), PROJECTION_CHUNK):
        buffer.write(_normal_halves(features[start : start + PROJECTION_CHUNK]).tobytes())
    return buffer.getvalue()


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return buffer.getvalue()


def _postings(probabilities: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The (row, class, probability) of every posting: each row's most probable classes."""
    n, classes = probabilities.shape
    top = min(POSTINGS_PER_IMAGE, classes)
    found = [_postings_of_rows(probabilities, start, top) for start in range(0, n, 8192)]
    if not found:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)
    rows, cols, values = (np.concatenate(parts) for parts in zip(*found, strict=True))
    return rows, cols, values


def _postings_of_rows(
    probabilities: np.ndarray, start: int, top: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`_postings` of 8192 rows from `start` (a float32 copy of every row would be GBs)."""
    chunk = probabilities[start : start + 8192].astype(np.float32)
    best = np.argpartition(-chunk, top - 1, axis=1)[:, :top]
    local = np.repeat(np.arange(len(chunk)), top)
    cols = best.reshape(-1)
    values = chunk[local, cols]
    keep = values >= MIN_POSTING_PROBABILITY
    return local[keep] + start, cols[keep], values[keep]


def posted_probabilities(probabilities: np.ndarray) -> np.ndarray:
    """Each row's probabilities as keyword search scores them: its posted classes (float16,
    as stored) and zeros elsewhere. An engine without posting lists stores these."""
    rows, cols, values = _postings(probabilities)
    posted = np.zeros(probabilities.shape, np.float32)
    posted[rows, cols] = values.astype(np.float16)
    return posted


def _postings_bytes(probabilities: np.ndarray) -> bytes:
    """Per class, the rows that list it and their probabilities, most probable first (CSR)."""
    classes = probabilities.shape[1]
    rows, cols, values = _postings(probabilities)
    order = np.lexsort((-values, cols))
    rows, cols, values = rows[order], cols[order], values[order]
    offsets = np.zeros(classes + 1, dtype=np.int64)
    np.cumsum(np.bincount(cols, minlength=classes), out=offsets[1:])
    buffer = io.BytesIO()
    np.savez(
        buffer,
        offsets=offsets,
        rows=rows.astype(np.int32),
        values=values.astype(np.float16),
    )
    return buffer.getvalue()


@dataclass(frozen=True)
class ClassCounts:
    """Per class id: images that give it a high probability, and its most probable image."""

    counts: np.ndarray  # int64
    cover_rows: np.ndarray  # a row of the shard, -1 for none
    cover_probabilities: np.ndarray


class Shard:
    """A loaded, read-only shard build."""

    def __init__(self, entry: ShardEntry, store: ObjectStore, *, resident: bool = True) -> None:
        """Load the build `entry` names, each file checked against its sha256 in the manifest
        before it is parsed or memory-mapped. Raises DamagedFile.

        `resident`: map the features' and the forest's pages into the process now
        (`map_resident`), as a server does, rather than fault them in query by query."""
        # Imported when a shard is first built or loaded, so that code which never touches the
        # index (the feedback function) does not need Annoy installed.
        from annoy import AnnoyIndex

        self.shard_id = shard_id = entry.id
        self.build_id = build_id = entry.build
        self._store = store
        self._sha256 = entry.sha256
        self.ids: list[str] = json.loads(self._read("ids.json"))
        self.row_of: dict[str, int] = {image_id: row for row, image_id in enumerate(self.ids)}
        # A plain array over the mapping (np.memmap adds a Python step to every row lookup).
        self.features = np.asarray(read_npy(self._file("features.npy"), mapped=True))
        if resident:
            map_resident(self.features)
        self.dim = int(self.features.shape[1])
        postings = read_npz(self._read("postings.npz"))
        self._offsets = postings["offsets"]
        self._posting_rows = postings["rows"]
        self._posting_values = postings["values"].astype(np.float32)
        # Class counts by threshold, for one deletion mask (`class_counts`).
        self._class_counts: tuple[np.ndarray, dict[float, ClassCounts]] | None = None
        self.spread = read_npy(self._file("spread.npy"))
        self.projection = Projection.from_bytes(self._read("projection.npz"))
        self._forest = AnnoyIndex(self.projection.dims, "euclidean")
        self._forest.load(str(self._file("ann")), prefault=resident)  # MAP_POPULATE
        self.trees = self._forest.get_n_trees()
        if len(self.ids) != self._forest.get_n_items() or len(self.ids) != len(self.features):
            raise DamagedFile(build_key(shard_id, build_id, "ids.json"), "row counts disagree")
        self.set_deleted(entry.deleted)

    def _read(self, part: str) -> bytes:
        """A part's bytes, verified (from the local copy where the store keeps them: the
        writer's own build is read back from what it kept, `_put`)."""
        if isinstance(self._store, LocalCopies):
            return self._file(part).read_bytes()
        key = build_key(self.shard_id, self.build_id, part)
        try:
            data = self._store.get(key).data
        except NotFound:
            raise DamagedFile(key, "missing") from None
        if sha256_of_bytes(data) != self._expected(key, part):
            raise DamagedFile(key, "its sha256 is not the one in the manifest")
        return data

    def _file(self, part: str) -> Path:
        """A part's local file, verified before it is mapped (never hand Annoy a file it could
        crash on): once per build and process, since builds never change."""
        key = build_key(self.shard_id, self.build_id, part)
        expected = self._expected(key, part)
        for _ in range(2):
            try:
                path = self._store.local_path(key)
            except NotFound:
                raise DamagedFile(key, "missing") from None
            if sha256_of_file(path) == expected:
                return path
            if not isinstance(self._store, LocalCopies):
                break
            # A damaged cached copy (say, a /tmp that filled up): fetch it once more.
            self._store.forget_local_copy(key)
        raise DamagedFile(key, "its sha256 is not the one in the manifest")

    def _expected(self, key: str, part: str) -> str:
        try:
            return self._sha256[part]
        except KeyError:
            raise DamagedFile(MANIFEST_KEY, f"it names no sha256 for {key}") from None

    def set_deleted(self, deleted: Iterable[str]) -> None:
        # A new mask, swapped in whole: queries in other threads see the old one or this one.
        live = np.ones(len(self.ids), dtype=bool)
        rows = [self.row_of[i] for i in deleted if i in self.row_of]
        live[rows] = False
        # The count first: a query that reads the new mask then reads its count too
        # (`live_mask` skips the mask when every row is live).
        self.live_count = int(live.sum())
        self.live = live

    def candidates_of_projected(
        self, projected: np.ndarray | Sequence[float], n: int, search_k: int
    ) -> tuple[list[int], list[float]]:
        """The rows of approximately the `n` nearest images to a vector already projected by
        this shard's projection, and their projected (Euclidean) distances, nearest first, as
        Annoy lists them: deleted images included (`live_mask` tells them apart), and lists
        rather than arrays, so that a query turns every shard's into one array at once."""
        return self._forest.get_nns_by_vector(
            projected, n, search_k=search_k, include_distances=True
        )

    def live_mask(self) -> np.ndarray | None:
        """Which rows hold live images; None when every row does."""
        live, every_row_live = self.live, self.live_count == len(self.ids)
        return None if every_row_live else live

    def distances(self, vector: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """Exact cosine distances from a unit `vector` to `rows` (`cosine_distances`)."""
        cosine = np.zeros(len(rows), np.float32)
        for start in range(0, len(rows), PROJECTION_CHUNK):  # a float32 copy of all is GBs
            part = rows[start : start + PROJECTION_CHUNK]
            chunk = cosine[start : start + len(part)]
            half_dot_of_rows([(self.features, part)], vector, out=chunk)
        return cosine_distances(cosine)

    def class_scores(self, weights: Mapping[int, float]) -> tuple[np.ndarray, np.ndarray]:
        """The live rows listed under any of the weighted classes, ascending, and their sum of
        weight * probability: the classes' posting lists merged in numpy. A merge touching few
        rows for the shard's size (a word of one class in a big shard) sums per row listed
        rather than over an array of every row, so that it costs what it reads."""
        classes = np.fromiter(weights.keys(), dtype=np.int64, count=len(weights))
        class_weights = np.fromiter(weights.values(), dtype=np.float32, count=len(weights))
        starts = self._offsets[classes]
        lengths = self._offsets[classes + 1] - starts
        # Positions of every selected class's postings, gathered in one go.
        first = np.repeat(starts - (np.cumsum(lengths) - lengths), lengths)
        positions = first + np.arange(int(lengths.sum()))
        rows = self._posting_rows[positions]
        contributions = self._posting_values[positions] * np.repeat(class_weights, lengths)
        if len(rows) * SPARSE_MERGE_RATIO < len(self.ids):
            listed, per_listed = np.unique(rows, return_inverse=True)
            sums = np.bincount(per_listed, weights=contributions)
        else:
            sums = np.bincount(rows, weights=contributions, minlength=len(self.ids))
            listed = np.flatnonzero(sums)
            sums = sums[listed]
        keep = self.live[listed] & (sums > 0)
        return listed[keep], sums[keep].astype(np.float32)

    def class_counts(self, min_probability: float) -> ClassCounts:
        """Per class: how many live images give it at least `min_probability`, and its most
        probable live image (row, probability; -1 and 0 if none), read off the posting lists
        (sorted most probable first) and kept until the deletion mask changes."""
        live_mask = self.live
        cached = self._class_counts
        if cached is None or cached[0] is not live_mask:
            cached = self._class_counts = (live_mask, {})
        if min_probability in cached[1]:
            return cached[1][min_probability]
        live = live_mask[self._posting_rows]
        strong = np.concatenate(([0], np.cumsum(live & (self._posting_values >= min_probability))))
        starts, ends = self._offsets[:-1], self._offsets[1:]
        live_positions = np.flatnonzero(live)
        first = np.searchsorted(live_positions, starts)
        found = first < len(live_positions)
        found[found] &= live_positions[first[found]] < ends[found]
        at = live_positions[np.minimum(first, max(len(live_positions) - 1, 0))]
        counts = ClassCounts(
            counts=(strong[ends] - strong[starts]).astype(np.int64),
            cover_rows=np.where(found, self._posting_rows[at] if len(at) else -1, -1),
            cover_probabilities=np.where(found, self._posting_values[at] if len(at) else 0, 0),
        )
        if len(cached[1]) < CLASS_COUNT_THRESHOLDS:  # the start view's, the chips'
            cached[1][min_probability] = counts
        return counts

    def data(self) -> ShardData:
        """The shard's content, to rebuild it with more or fewer images."""
        probabilities = read_npy(self._read("probabilities.npy"))
        return ShardData(list(self.ids), np.asarray(self.features, np.float32), probabilities)

    def live_data(self) -> ShardData:
        """Its live images, features as stored (float16): what a merge copies."""
        rows = np.flatnonzero(self.live)
        probabilities = read_npy(self._file("probabilities.npy"), mapped=True)
        return ShardData([self.ids[row] for row in rows], self.features[rows], probabilities[rows])
