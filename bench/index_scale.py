"""How the tiered Annoy index behaves at 100k, 300k and 1M images, beside Faiss HNSW.

Vectors are synthesised from real features (the demo photos, plus Corel-1k when it is
beside the project) by perturbing them, so that they keep the clustered, non-negative shape
of real EfficientNet features rather than being uniform noise. They are synthesised chunk by
chunk from seeds, again for each pass, so that no pass holds the whole collection (1M x 1280
float32 is 5 GB). Every number of the project's index comes from the production code: shards
in the layout the builder and its merges reach (tiers.py), written by `write_build` into a
local object store and searched through `Index`. In the same run, on the same vectors and
queries: Faiss HNSW (M 32, efSearch 64, efConstruction 40, float32), the library a user would
pick instead, and exact search (the truth for recall@20, and the brute-force baseline).

    nice -n 5 .venv/bin/python bench/index_scale.py --sizes 100000 300000 1000000

Faiss builds with every core (its own OpenMP threads) and answers with one thread per query,
as each request is served; the build times of a cached index are those of its build.

Prints, per size and engine: shards, build time, bytes per image, query latency p50/p99 with
one query thread and with two (each query's own time) and the p50 of each query's CPU time
(its thread's), recall@20 against exact search, the
ratio of p50 to Faiss's, and the keyword-query latency of the project's index. The project's
index is loaded as a server loads it, its pages mapped into the process at load
(`shards.map_resident`); `--on-demand` adds the first setting again with its pages faulted in
by the queries (`Index(resident=False)`).

By default each vector is a noisy copy of a random real photo, so the number of near copies of
each photo grows with the collection (84 of each of 1,192 photos at 100k: their 20 nearest are
mostly each other, an easy set). `--copies C` holds it fixed instead: the collection is N / C
new points, each a real photo interpolated with one of its 10 nearest real photos at a random
weight, and C noisy copies of each (`synthesise_copies`). `--features FILE...` takes the real
features from .npz files (key `features`) instead of the demo and Corel-1k, for photos that are
not beside the project. Either keeps its chunks, indexes and truths under names of its own.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import os
import shutil
import statistics
import threading
import time
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from imgsearch.bulk import files_under
from imgsearch.catalog import ImageRecord
from imgsearch.config import Settings
from imgsearch.embedding import Embedder, ModelSpec
from imgsearch.images import DecodeLimits, ImageRefused, decode_image
from imgsearch.index.manifest import Manifest, ShardEntry, write_manifest
from imgsearch.index.reader import Index, budget_growth, query_nodes
from imgsearch.index.shards import Projection, ShardData, write_build
from imgsearch.index.tiers import merge_plan
from imgsearch.storage.local import LocalObjectStore
from imgsearch.vectors import unit_rows

REPO = Path(__file__).resolve().parents[1]
SOURCES = [REPO / "demo", REPO.parent / "shared" / "data" / "corel1k"]
CACHE = REPO / "build" / "bench" / "real_embeddings.npz"


def real_embeddings(*, without_demo: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Features and probabilities of real photos, embedded once and cached. `without_demo`:
    those of the other sources only (bench/cloud_scale.py ingests the demo photos, which
    must not be the bases of the synthesised collection: each would be a near copy of the
    dozens of copies made from it, which no real collection holds)."""
    if not CACHE.exists():
        _embed_real_photos()
    with np.load(CACHE) as cached:
        features, probabilities = cached["features"], cached["probabilities"]
        demo = int(cached["per_source"][0]) if "per_source" in cached else None
    if not without_demo:
        return features, probabilities
    if demo is None:  # a cache from before the count was kept
        demo = len(_decodable(SOURCES[0]))
    return features[demo:], probabilities[demo:]


def _decodable(source: Path) -> list[Image.Image]:
    limits = DecodeLimits.from_settings(Settings())
    images = []
    if source.is_dir():
        for _, path in files_under(source):
            try:
                images.append(decode_image(path.read_bytes(), limits).image)
            except ImageRefused:
                continue
    return images


def _embed_real_photos() -> None:
    embedder = Embedder(ModelSpec.load(Settings().model_path))
    per_source = [_decodable(source) for source in SOURCES]
    features, probabilities = embedder.embed_batch([i for images in per_source for i in images])
    CACHE.parent.mkdir(parents=True, exist_ok=True)
    np.savez(
        CACHE,
        features=features,
        probabilities=probabilities,
        per_source=np.array([len(images) for images in per_source]),
    )


def synthesise(
    features: np.ndarray, probabilities: np.ndarray, n: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """`n` new vectors: a real one, scaled per dimension by log-normal noise, plus a little of
    another real one; probabilities taken from the first, softly perturbed."""
    base = rng.integers(0, len(features), n)
    other = rng.integers(0, len(features), n)
    out = np.empty((n, features.shape[1]), np.float32)
    probs = np.empty((n, probabilities.shape[1]), np.float16)
    for start in range(0, n, 20_000):
        rows = slice(start, min(n, start + 20_000))
        out[rows], probs[rows] = noisy_copies(
            features[base[rows]], probabilities[base[rows]], features[other[rows]], rng
        )
    return out, probs


def noisy_copies(
    points: np.ndarray, probabilities: np.ndarray, others: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """A copy of each of `points`, scaled per dimension by log-normal noise, plus a little of
    the same row of `others`; `probabilities` (the points') softly perturbed."""
    noise = np.exp(rng.normal(0, 0.35, points.shape)).astype(np.float32)
    out = unit_rows(points * noise + 0.15 * others)
    logits = np.log(probabilities + 1e-6) + rng.normal(0, 0.5, probabilities.shape)
    soft = np.exp(logits - logits.max(axis=1, keepdims=True))
    return out, (soft / soft.sum(axis=1, keepdims=True)).astype(np.float16)


# Near copies of each base point (`--copies`): 0 is the default synthesis (`synthesise`).
NEIGHBOURS_INTERPOLATED = 10  # a base point lies between a real photo and one of these nearest


@dataclass(frozen=True)
class Synthesis:
    """How a collection of a size is synthesised from the real features (main sets it from
    the command line): its vectors (`collection_chunk`), its queries (`queries_of`), and the
    tag naming what is cached of it."""

    copies: int = 0  # 0: each vector a noisy copy of any real photo (`synthesise`)
    features_from: tuple[Path, ...] = ()  # () : the demo and Corel-1k (`real_embeddings`)
    topical: bool = False  # shards filled subject by subject (`topical_order`)

    @property
    def tag(self) -> str:
        """What names this synthesis's caches: empty for the default one, so that its caches
        keep the names they have always had."""
        tag = f"-copies{self.copies}" if self.copies else ""
        if self.features_from:
            digest = hashlib.blake2b(digest_size=4)
            for path in self.features_from:
                digest.update(path.read_bytes())
            tag += f"-features{digest.hexdigest()}"
        return tag + ("-topical" if self.topical else "")

    def real(self) -> tuple[np.ndarray, np.ndarray]:
        """The real features and probabilities the collection is made from."""
        if not self.features_from:
            return real_embeddings()
        return features_of_files(self.features_from)


synthesis = Synthesis()
# Each shard built with a projection of its own (`--own-projections`): a build rule, not a
# synthesis (the vectors, queries and exact answers are the same).
own_projections = False


def features_of_files(paths: Collection[Path]) -> tuple[np.ndarray, np.ndarray]:
    """Real features from .npz files (key `features`), L2-normalised, with their class
    probabilities where the files keep them (key `probabilities`); where they do not, made-up
    sparse ones (random, Dirichlet 0.05): keyword timings then describe no real photos, and
    nothing else reads them."""
    features, probabilities = [], []
    for path in paths:
        with np.load(path, allow_pickle=False) as stored:
            features.append(unit_rows(stored["features"].astype(np.float32)))
            if "probabilities" in stored:
                probabilities.append(stored["probabilities"].astype(np.float32))
            else:
                rng = np.random.default_rng(len(probabilities))
                made_up = rng.dirichlet(np.full(1000, 0.05), len(features[-1]))
                probabilities.append(made_up.astype(np.float32))
    return np.concatenate(features), np.concatenate(probabilities)


_Bases = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]
_bases_made: dict[tuple[int, int, int], _Bases] = {}  # by (id of the features, size, copies)


def _bases(features: np.ndarray, size: int, copies: int) -> _Bases:
    """The base points of the collection of `size` with `copies` of each: (real photo, the
    near real photo it is interpolated with, the weight of that one, each row's base), the
    rows' bases shuffled so that a base's copies are spread over the collection as the
    default synthesis spreads a photo's. Made once per process (every chunk reads them)."""
    key = (id(features), size, copies)
    if key not in _bases_made:
        _bases_made[key] = _make_bases(features, size, copies)
    return _bases_made[key]


def _make_bases(features: np.ndarray, size: int, copies: int) -> _Bases:
    rng = np.random.default_rng((size, 2, copies))
    count = -(-size // copies)
    unit = unit_rows(features.astype(np.float32))
    similar = unit @ unit.T
    np.fill_diagonal(similar, -np.inf)
    nearest = np.argsort(-similar, axis=1)[:, :NEIGHBOURS_INTERPOLATED]
    photo = rng.integers(0, len(features), count)
    partner = nearest[photo, rng.integers(0, NEIGHBOURS_INTERPOLATED, count)]
    weight = rng.uniform(0.0, 1.0, count).astype(np.float32)
    base_of_row = rng.permutation(np.arange(size) // copies)
    return photo, partner, weight, base_of_row


def synthesise_copies(
    features: np.ndarray,
    probabilities: np.ndarray,
    size: int,
    copies: int,
    bases: np.ndarray,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """A noisy copy (as `synthesise` makes them) of each of `bases`, base points of the
    collection of `size` with `copies` of each: a real photo interpolated with one of its
    NEIGHBOURS_INTERPOLATED nearest real photos at a random weight, so that the collection
    holds `copies` near copies of each point whatever its size."""
    photo, partner, weight, _ = _bases(features, size, copies)
    photo, partner, weight = photo[bases], partner[bases], weight[bases, np.newaxis]
    points = unit_rows((1 - weight) * features[photo] + weight * features[partner])
    other = rng.integers(0, len(features), len(bases))
    return noisy_copies(points, probabilities[photo], features[other], rng)


def collection_chunk(
    real: tuple[np.ndarray, np.ndarray], size: int, first: int
) -> tuple[np.ndarray, np.ndarray]:
    """Rows [first, first + CHUNK) of the collection of `size` (float32 features, float16
    probabilities; fewer at its end only with `--copies`), as `synthesis` makes them."""
    rng = np.random.default_rng((size, 0, first))
    if not synthesis.copies:
        return synthesise(*real, CHUNK, rng)
    _, _, _, base_of_row = _bases(real[0], size, synthesis.copies)
    return synthesise_copies(*real, size, synthesis.copies, base_of_row[first : first + CHUNK], rng)


def queries_of(real: tuple[np.ndarray, np.ndarray], size: int, count: int) -> np.ndarray:
    """The bench's `count` queries of the collection of `size`: new noisy copies of real
    photos (the default synthesis) or of the collection's base points (`--copies`), so that a
    query has as many near copies in the collection as its images have."""
    rng = np.random.default_rng((size, 1, 0))
    if not synthesis.copies:
        return synthesise(*real, count, rng)[0]
    bases = rng.integers(0, -(-size // synthesis.copies), count)
    return synthesise_copies(*real, size, synthesis.copies, bases, rng)[0]


def synthetic_record(image_id: str, probabilities: np.ndarray) -> ImageRecord:
    """The catalog record of a synthesised, indexed image: its top 5 classes."""
    top = np.argsort(-probabilities.astype(np.float32))[:5]
    return ImageRecord(
        image_id,
        (f"synthetic/{image_id}.jpg",),
        640,
        480,
        "JPEG",
        50_000,
        tuple((int(c), float(probabilities[c])) for c in top),
        status="indexed",
    )


CHUNK = 20_000  # vectors synthesised at once


def chunks(
    real: tuple[np.ndarray, np.ndarray], size: int, start: int = 0, stop: int | None = None
) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """(first row, features float16, probabilities) of rows [start, stop) of the collection of
    `size`, chunk by chunk; each chunk comes from its own seed, so every pass sees the same."""
    stop = size if stop is None else stop
    for first in range(start - start % CHUNK, stop, CHUNK):
        features, probabilities = _chunk(real, size, first)
        lo, hi = max(start, first) - first, min(stop, first + CHUNK) - first
        yield first + lo, features[lo:hi], probabilities[lo:hi]


# Where synthesised chunks are kept between passes and runs (main sets it under `--cache`):
# synthesising costs more CPU than the exact pass and Faiss's queries together.
chunk_cache: Path | None = None


def _chunk(
    real: tuple[np.ndarray, np.ndarray], size: int, first: int
) -> tuple[np.ndarray, np.ndarray]:
    """Chunk `first` of the collection of `size` (features and probabilities, float16)."""
    name = f"chunk-{size}{synthesis.tag}-{first}.npz"
    path = None if chunk_cache is None else chunk_cache / name
    if path is not None and path.exists():
        with np.load(path) as cached:
            features, probabilities = cached["features"], cached["probabilities"]
        forget_pages(path)
        return features, probabilities
    features, probabilities = collection_chunk(real, size, first)
    halves = features.astype(np.float16)
    if path is not None:
        np.savez(path, features=halves, probabilities=probabilities)
        forget_pages(path)
    return halves, probabilities


def forget_pages(path: Path) -> None:
    """Let the kernel drop `path`'s pages from its cache, once read into this process: 4.5 GB
    of chunks and Faiss's 5 GB file read through the page cache would otherwise push the
    project's index (and others' data: the machine is shared) out of memory before it is
    queried."""
    if hasattr(os, "posix_fadvise"):
        descriptor = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(descriptor, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(descriptor)


def image_id(row: int) -> str:
    return f"{row:016x}"


def tiered_layout(size: int, shard_size: int) -> list[int]:
    """The shard sizes the builder and its merges reach for `size` images (oldest first)."""
    shards: list[ShardEntry] = []
    for _ in range(size // shard_size):
        shards.append(ShardEntry("s", "b", shard_size, sealed=True))
        while (plan := merge_plan(shards, shard_size)) is not None:
            merged = sum(entry.count for entry in shards[plan[0] : plan[1]])
            shards[plan[0] : plan[1]] = [ShardEntry("s", "b", merged, sealed=True)]
    sizes = [entry.count for entry in shards]
    return sizes + ([size % shard_size] if size % shard_size else [])


def exact_truth(
    real: tuple[np.ndarray, np.ndarray], size: int, queries: np.ndarray, k: int
) -> tuple[list[set[int]], float]:
    """The exact `k` nearest rows of each query, and brute force's p50 per query (ms) over
    float16 vectors in memory (measured on the first chunk, scaled to the collection)."""
    best_scores = np.full((len(queries), k), -np.inf, np.float32)
    best_rows = np.zeros((len(queries), k), np.int64)
    per_chunk = []
    for first, features, _ in chunks(real, size):
        started = time.perf_counter()
        scores = features.astype(np.float32) @ queries.T  # [rows, queries]
        per_chunk.append((time.perf_counter() - started) / len(queries) / len(features))
        top = np.argpartition(-scores, k - 1, axis=0)[:k].T  # [queries, k]
        rows = top + first
        values = np.take_along_axis(scores.T, top, axis=1)
        all_scores = np.concatenate([best_scores, values], axis=1)
        all_rows = np.concatenate([best_rows, rows], axis=1)
        keep = np.argpartition(-all_scores, k - 1, axis=1)[:, :k]
        best_scores = np.take_along_axis(all_scores, keep, axis=1)
        best_rows = np.take_along_axis(all_rows, keep, axis=1)
    brute_ms = statistics.median(per_chunk) * size * 1000
    return [set(row.tolist()) for row in best_rows], brute_ms


def build_tiered(
    store: LocalObjectStore,
    real: tuple[np.ndarray, np.ndarray],
    size: int,
    shard_size: int,
    trees: int,
) -> tuple[list[int], float]:
    """The project's index in its tiered layout; (shard sizes, seconds building them)."""
    layout = tiered_layout(size, shard_size)
    order = topical_order(real, size) if synthesis.topical else None
    seconds, shards, start = 0.0, [], 0
    # One projection, the first shard's, as the builder's shards share it (the open shard
    # reuses the newest sealed shard's; a merge keeps its shards' shared one while it serves
    # the merged images, as it does vectors synthesised alike: tiers._merged_projection), or
    # with `--own-projections` each shard its own fit (the most a merge's refits can make).
    projection: Projection | None = None
    for number, count in enumerate(layout):
        # Filled chunk by chunk: a 640k shard's features and probabilities are 3 GB.
        rows = range(start, start + count) if order is None else order[start : start + count]
        data = ShardData(
            [image_id(row) for row in rows],
            np.empty((count, real[0].shape[1]), np.float16),
            np.empty((count, real[1].shape[1]), np.float16),
        )
        if order is None:
            for first, features, probabilities in chunks(real, size, start, start + count):
                data.features[first - start : first - start + len(features)] = features
                data.probabilities[first - start : first - start + len(features)] = probabilities
        else:
            for first, features, probabilities in chunks(real, size):
                inside = (rows >= first) & (rows < first + len(features))
                data.features[inside] = features[rows[inside] - first]
                data.probabilities[inside] = probabilities[rows[inside] - first]
        started = time.perf_counter()
        build = write_build(store, f"s{number:06d}", data, trees, projection=projection)
        projection = None if own_projections else build.projection
        seconds += time.perf_counter() - started
        sealed = number < len(layout) - 1 or count == shard_size
        shards.append(ShardEntry(f"s{number:06d}", build.id, count, sealed, sha256=build.sha256))
        start += count
        del data
        gc.collect()
    manifest = Manifest(
        generation=1,
        shards=tuple(shards),
        next_shard=len(shards),
        model="bench",
        dim=real[0].shape[1],
        trees=trees,
    )
    write_manifest(store, manifest, None)
    return layout, seconds


# Subjects of a topical layout (`topical_order`).
TOPICS = 10


def topical_order(real: tuple[np.ndarray, np.ndarray], size: int) -> np.ndarray:
    """The rows of a collection of `size` in the order a topical layout fills its shards: each
    row's subject is the nearest of TOPICS real photos (drawn with a fixed seed), the rows of
    one subject after another, so that a query's neighbours crowd into one or two shards."""
    centres = real[0][np.random.default_rng(7).choice(len(real[0]), TOPICS, replace=False)]
    subject = np.empty(size, np.int64)
    for first, features, _ in chunks(real, size):
        scores = features.astype(np.float32) @ centres.T
        subject[first : first + len(features)] = np.argmax(scores, axis=1)
    return np.argsort(subject, kind="stable")


def tiered_root(cache: Path, size: int, shard_size: int, trees: int) -> Path:
    """Where `cached_tiered` keeps the index of `size` images (named for its build rules: an
    index cached before its shards shared one projection is not reused)."""
    projections = "own-projections" if own_projections else "one-projection"
    return cache / f"imgsearch-{size}{synthesis.tag}-{shard_size}-{trees}-{projections}"


def cached_tiered(
    cache: Path, real: tuple[np.ndarray, np.ndarray], size: int, args: argparse.Namespace
) -> tuple[LocalObjectStore, dict]:
    """The project's index of `size` images, built once into `cache` (a local object store);
    the store and what its build recorded (shard sizes, seconds, bytes, load average)."""
    root = tiered_root(cache, size, args.shard_size, args.trees)
    record = root / "built.json"
    stale = record.exists() and (
        json.loads(record.read_text())["layout"] != tiered_layout(size, args.shard_size)
    )  # cached under other merge rules
    if root.exists() and (args.rebuild or not record.exists() or stale):
        shutil.rmtree(root)
    store = LocalObjectStore(root / "store")
    if not record.exists():
        layout, seconds = build_tiered(store, real, size, args.shard_size, args.trees)
        total_bytes = sum(info.size for info in store.list("index/shards/"))
        built = {"layout": layout, "seconds": seconds, "bytes": total_bytes}
        record.write_text(json.dumps({**built, "load": os.getloadavg()[0]}))
    return store, json.loads(record.read_text())


def cached_faiss(
    cache: Path, real: tuple[np.ndarray, np.ndarray], size: int, rebuild: bool
) -> tuple:
    """Faiss HNSW (M 32, efSearch 64) over the same vectors, added chunk by chunk with every
    core, built once into `cache`; (index, seconds building it, bytes of its file)."""
    import faiss

    path = cache / f"faiss-hnsw32-{size}{synthesis.tag}.index"
    record = path.with_suffix(".json")
    if rebuild or not record.exists():
        faiss.omp_set_num_threads(os.cpu_count() or 1)
        index = faiss.IndexHNSWFlat(real[0].shape[1], 32, faiss.METRIC_INNER_PRODUCT)
        started = time.perf_counter()
        for _, features, _ in chunks(real, size):
            index.add(features.astype(np.float32))
        seconds = time.perf_counter() - started
        faiss.write_index(index, str(path))
        forget_pages(path)
        record.write_text(json.dumps({"seconds": seconds, "load": os.getloadavg()[0]}))
    else:
        index = faiss.read_index(str(path))
        forget_pages(path)  # read into Faiss's own memory
    index.hnsw.efSearch = 64
    faiss.omp_set_num_threads(1)  # one query, one thread: as each request is served
    return index, json.loads(record.read_text())["seconds"], path.stat().st_size


Search = Callable[[np.ndarray], list[int]]


def reference_faiss(
    args: argparse.Namespace, real: tuple[np.ndarray, np.ndarray], size: int
) -> Engine:
    """Faiss HNSW over the smaller collection of `--reference-faiss` images (its cached
    index), asked the same queries: where Faiss at `size` cannot be built in the time there
    is, a same-run measure of the machine's pace to read the project's times against (Faiss's
    p50 grows little with its collection: 0.15 ms at 100k, 0.17 ms at 300k in issue 16)."""
    hnsw, seconds, hnsw_bytes = cached_faiss(args.cache, real, args.reference_faiss, False)

    def search(query: np.ndarray) -> list[int]:
        _, found = hnsw.search(query[np.newaxis], 20)
        return [int(i) for i in found[0]]

    return Engine(
        f"Faiss HNSW of {args.reference_faiss:,} images (reference)",
        1,
        seconds,
        hnsw_bytes * size // args.reference_faiss,  # printed per image of `size`
        search,
        "M 32, efSearch 64; not these vectors: no recall",
        answers_these=False,
    )


def latencies(
    engines: list[Search], queries: np.ndarray, threads: int
) -> tuple[list[list[float]], list[list[float]], list[list[list[int]]]]:
    """Per engine, each query's time and CPU time of its thread (ms) and answer, the queries
    shared among `threads` threads. Each query is asked of every engine in turn, so that a
    machine whose load changes (it is shared) slows them alike and their ratio holds. (On a
    busy machine the time is the CPU time plus the waits for a core: the CPU time says what
    the query costs, the time what a client waited.)"""
    times = [[0.0] * len(queries) for _ in engines]
    cpu = [[0.0] * len(queries) for _ in engines]
    answers: list[list[list[int]]] = [[[] for _ in queries] for _ in engines]

    def work(offset: int) -> None:
        for position in range(offset, len(queries), threads):
            for number, search in enumerate(engines):
                started, started_cpu = time.perf_counter(), time.thread_time()
                answers[number][position] = search(queries[position])
                times[number][position] = (time.perf_counter() - started) * 1000
                cpu[number][position] = (time.thread_time() - started_cpu) * 1000

    workers = [threading.Thread(target=work, args=(offset,)) for offset in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return times, cpu, answers


@dataclass
class Engine:
    name: str
    shards: int
    build_seconds: float
    total_bytes: int
    search: Search
    notes: str = ""
    # False for a reference asked the same queries over another collection (its answers are
    # not of these vectors).
    answers_these: bool = True
    # Measured in a pass of its own beside Faiss: the index mapped on demand reads the same file
    # pages (the same memory) as the default one, and asked right after it would find the rows
    # it faults in already in the CPU's caches.
    apart: bool = False


def compare(size: int, engines: list[Engine], queries: np.ndarray, truth: list[set[int]]) -> None:
    """Measure `engines` side by side with one and two threads; a row each, the first (Faiss,
    when measured) the reference of the ratio column."""
    for engine in engines:
        engine.search(queries[0])  # warm up (the first query pages in what it touches)
    one, one_cpu, answers = latencies([engine.search for engine in engines], queries, 1)
    two, two_cpu, _ = latencies([engine.search for engine in engines], queries, 2)
    # Without Faiss (a size beyond --faiss-up-to) there is no ratio to print.
    faiss_first = engines[0].name.startswith("Faiss")  # this size's, or a reference
    reference = float(np.percentile(one[0], 50)) if faiss_first else None
    reference_two = float(np.percentile(two[0], 50)) if faiss_first else None
    for number, engine in enumerate(engines):
        recall = (
            statistics.mean(
                len(set(found) & exact) / len(exact)
                for found, exact in zip(answers[number], truth, strict=True)
            )
            if engine.answers_these
            else float("nan")
        )
        p50, p50_two = float(np.percentile(one[number], 50)), float(np.percentile(two[number], 50))
        ratios = f"{p50 / reference:.1f}x / {p50_two / reference_two:.1f}x" if reference else "-"
        print(
            f"| {size:>9,} | {engine.name} | {engine.shards} | {engine.build_seconds:7.1f} s "
            f"| {engine.total_bytes / size:7,.0f} B | {p50:6.2f} "
            f"| {np.percentile(one[number], 99):6.2f} | {p50_two:6.2f} "
            f"| {np.percentile(two[number], 99):6.2f} "
            f"| {np.median(one_cpu[number]):.2f} / {np.median(two_cpu[number]):.2f} "
            f"| {recall:.4f} | {ratios} | {engine.notes} |",
            flush=True,
        )


def measure(size: int, args: argparse.Namespace, real: tuple[np.ndarray, np.ndarray]) -> None:
    queries = queries_of(real, size, args.queries)
    truth, brute_ms = exact_truth(real, size, queries, 20)
    # The project's index first: its build holds a shard's vectors (3 GB at 640k) in memory,
    # Faiss's index holds all of them (5 GB at 1M) until the end.
    store, built = cached_tiered(args.cache, real, size, args)
    gc.collect()
    engines = []
    if not args.no_faiss and size <= args.faiss_up_to:
        hnsw, seconds, hnsw_bytes = cached_faiss(args.cache, real, size, args.rebuild)

        def faiss_search(query: np.ndarray) -> list[int]:
            _, found = hnsw.search(query[np.newaxis], 20)
            return [int(i) for i in found[0]]

        engines.append(
            Engine("Faiss HNSW", 1, seconds, hnsw_bytes, faiss_search, "M 32, efSearch 64")
        )
    elif args.reference_faiss:
        engines.append(reference_faiss(args, real, size))
    layout_text = "+".join(f"{count // 1000}k" for count in built["layout"])
    # The index as a server loads it (its pages mapped at load: shards.map_resident), then, for
    # the first setting, as a process that faults them in query by query (`--on-demand`).
    variants = [(candidates, search_k, True) for candidates, search_k in args.settings]
    if args.on_demand:
        variants.append((*args.settings[0], False))
    for candidates, search_k, resident in variants:
        index = Index(store, candidates=candidates, search_k=search_k, resident=resident)
        index.refresh(force=True)

        def ours(query: np.ndarray, index: Index = index) -> list[int]:
            return [int(i, 16) for i, _ in index.nearest(query, 20)]

        keyword = []
        for number in range(args.queries):
            classes = np.random.default_rng(number).choice(1000, 118, replace=False)
            started = time.perf_counter()
            index.ranked_by_classes({int(c): 1.0 for c in classes}, 20)
            keyword.append((time.perf_counter() - started) * 1000)
        engines.append(
            Engine(
                # The budget grows past 100k images (reader.budget_growth) and has a floor of
                # nodes below it (reader.query_nodes): say what a query got.
                f"imgsearch {candidates}:{search_k} x{budget_growth(size):.2f}"
                f" ({query_nodes(size, search_k)} nodes)"
                + ("" if resident else ", mapped on demand"),
                len(built["layout"]),
                built["seconds"],
                built["bytes"],
                ours,
                f"shards {layout_text}; keyword p50 {statistics.median(keyword):.2f} ms",
                apart=not resident,
            )
        )
    print(
        f"{size:,} images: exact search (float16 product, in memory) p50 {brute_ms:.1f} ms; "
        f"load average {os.getloadavg()[0]:.1f}",
        flush=True,
    )
    together = [engine for engine in engines if not engine.apart]
    compare(size, together, queries, truth)
    for engine in engines:
        if engine.apart:  # beside this size's Faiss (or its reference) again, when there is one
            print(f"{size:,} images: {engine.name}, measured apart", flush=True)
            reference = together[:1] if together[0].name.startswith("Faiss") else []
            compare(size, [*reference, engine], queries, truth)
    print(f"{size:,} images: load average after {os.getloadavg()[0]:.1f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 300_000, 1_000_000])
    parser.add_argument("--shard-size", type=int, default=Settings().shard_size)
    parser.add_argument("--trees", type=int, default=Settings().ann_trees)
    parser.add_argument(
        "--settings",
        type=lambda s: tuple(map(int, s.split(":"))),
        nargs="+",
        default=[(Settings().ann_candidates, Settings().ann_search_k)],
        help="candidates:search_k pairs per query to compare (search_k -1: Annoy's default)",
    )
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--no-faiss", action="store_true", help="measure the project's index only")
    parser.add_argument(
        "--faiss-up-to",
        type=int,
        default=10**9,
        help="sizes above this measure the project's index only (Faiss's build takes hours)",
    )
    parser.add_argument(
        "--cache",
        type=Path,
        default=REPO / "build" / "bench" / "index_scale",
        help="directory keeping the synthesised vectors and both built indexes between runs",
    )
    parser.add_argument("--rebuild", action="store_true", help="build both indexes again")
    parser.add_argument(
        "--reference-faiss",
        type=int,
        default=0,
        help="sizes without Faiss measure Faiss over this many images beside them, as a reference",
    )
    parser.add_argument(
        "--on-demand",
        action="store_true",
        help="also measure the first setting with the index's pages faulted in by the queries "
        "(as a process that has not mapped them yet), not mapped at load",
    )
    add_synthesis_arguments(parser)
    args = parser.parse_args()
    real = configure_synthesis(args)
    global chunk_cache
    chunk_cache = args.cache / "chunks"
    chunk_cache.mkdir(parents=True, exist_ok=True)
    copies = f"{synthesis.copies} near copies of each point" if synthesis.copies else "default"
    print(
        f"{len(real[0])} real photos (synthesis: {copies}); "
        f"open shard {args.shard_size:,}, {args.trees} trees; "
        f"{args.queries} queries, k=20; times in ms; {os.cpu_count()} cores"
    )
    print(
        "| images | engine (candidates:search_k) | shards | build | bytes/image | p50 | p99 "
        "| p50, 2 threads | p99, 2 threads | CPU p50 (1 / 2 threads) | recall@20 "
        "| p50 / Faiss (1 / 2 threads) | notes |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for size in args.sizes:
        measure(size, args, real)
        gc.collect()


def add_synthesis_arguments(parser: argparse.ArgumentParser) -> None:
    """The options choosing how collections are synthesised (`Synthesis`)."""
    parser.add_argument(
        "--copies",
        type=int,
        default=0,
        help="near copies of each point, whatever the size: N / COPIES points interpolated "
        "between near real photos, COPIES noisy copies of each (default: each vector a noisy "
        "copy of any real photo, its copies growing with the size)",
    )
    parser.add_argument(
        "--features",
        type=Path,
        nargs="+",
        default=[],
        help=".npz files of real features (key `features`) to synthesise from, instead of the "
        "demo's and Corel-1k's",
    )
    parser.add_argument(
        "--own-projections",
        action="store_true",
        help="fit each shard a projection of its own (as far as a merge's refits for drifted "
        "content can go) instead of one for all",
    )
    parser.add_argument(
        "--topical",
        action="store_true",
        help="fill the shards subject by subject (`topical_order`), as uploads in bursts of one "
        "subject do, instead of in random order",
    )


def configure_synthesis(args: argparse.Namespace) -> tuple[np.ndarray, np.ndarray]:
    """Set `synthesis` and `own_projections` from the command line; the real features and
    probabilities."""
    global synthesis, own_projections
    synthesis = Synthesis(args.copies, tuple(args.features), args.topical)
    own_projections = args.own_projections
    return synthesis.real()


if __name__ == "__main__":
    main()
