"""How the sharded index behaves at 10k, 100k and 1M images.

Vectors are synthesised from real features (the demo photos, plus Corel-1k when it is
beside the project) by perturbing them, so that they keep the clustered, non-negative shape
of real EfficientNet features rather than being uniform noise. Every number comes from the
production code: shard builds written by `write_build` into a local object store, searched
through `Index`, against brute force over the same stored vectors in the same run.

    .venv/bin/python bench/index_scale.py --sizes 10000 100000 1000000

Prints, per size: build time per shard, index bytes, merged-search latency p50/p99,
recall@20 against exact search (brute force over the same vectors held in memory as float32,
also the baseline whose latency is printed), and keyword-query latency.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from imgsearch.bulk import files_under
from imgsearch.catalog import ImageRecord
from imgsearch.config import Settings
from imgsearch.embedding import Embedder, ModelSpec
from imgsearch.images import DecodeLimits, ImageRefused, decode_image
from imgsearch.index.manifest import Manifest, ShardEntry, write_manifest
from imgsearch.index.reader import Index
from imgsearch.index.shards import ShardData, normalise_rows, write_build
from imgsearch.storage.local import LocalObjectStore

REPO = Path(__file__).resolve().parents[1]
SOURCES = [REPO / "demo", REPO.parent / "shared" / "data" / "corel1k"]
CACHE = REPO / "build" / "bench" / "real_embeddings.npz"


def real_embeddings() -> tuple[np.ndarray, np.ndarray]:
    """Features and probabilities of real photos, embedded once and cached."""
    if CACHE.exists():
        with np.load(CACHE) as cached:
            return cached["features"], cached["probabilities"]
    settings = Settings()
    embedder = Embedder(ModelSpec.load(settings.model_path))
    limits = DecodeLimits.from_settings(settings)
    images = []
    for source in SOURCES:
        if source.is_dir():
            for _, path in files_under(source):
                try:
                    images.append(decode_image(path.read_bytes(), limits).image)
                except ImageRefused:
                    continue
    features, probabilities = embedder.embed_batch(images)
    CACHE.parent.mkdir(parents=True, exist_ok=True)
    np.savez(CACHE, features=features, probabilities=probabilities)
    return features, probabilities


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
        count = rows.stop - rows.start
        noise = np.exp(rng.normal(0, 0.35, (count, features.shape[1]))).astype(np.float32)
        mixed = features[base[rows]] * noise + 0.15 * features[other[rows]]
        out[rows] = normalise_rows(mixed)
        logits = np.log(probabilities[base[rows]] + 1e-6) + rng.normal(0, 0.5, (count, 1000))
        soft = np.exp(logits - logits.max(axis=1, keepdims=True))
        probs[rows] = (soft / soft.sum(axis=1, keepdims=True)).astype(np.float16)
    return out, probs


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


def build_index(
    store: LocalObjectStore,
    features: np.ndarray,
    probabilities: np.ndarray,
    shard_size: int,
    trees: int,
) -> tuple[list[float], int]:
    """Sealed shards of `shard_size` (the last one open), as the builder would write them."""
    seconds, shards = [], []
    for number, start in enumerate(range(0, len(features), shard_size)):
        rows = slice(start, start + shard_size)
        ids = [f"{i:016x}" for i in range(rows.start, min(rows.stop, len(features)))]
        data = ShardData(ids, features[rows], probabilities[rows])
        started = time.perf_counter()
        build = write_build(store, f"s{number:06d}", data, trees)
        seconds.append(time.perf_counter() - started)
        shards.append(
            ShardEntry(
                f"s{number:06d}", build.id, len(ids), len(ids) == shard_size, sha256=build.sha256
            )
        )
    manifest = Manifest(
        generation=1,
        shards=tuple(shards),
        next_shard=len(shards),
        model="bench",
        dim=features.shape[1],
        trees=trees,
    )
    write_manifest(store, manifest, None)
    total = sum(info.size for info in store.list("index/shards/"))
    return seconds, total


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q))


def measure(size: int, args: argparse.Namespace, real: tuple[np.ndarray, np.ndarray]) -> None:
    rng = np.random.default_rng(size)
    features, probabilities = synthesise(*real, size, rng)
    queries, _ = synthesise(*real, args.queries, np.random.default_rng(size + 1))
    with tempfile.TemporaryDirectory(dir=args.scratch) as scratch:
        store = LocalObjectStore(Path(scratch))
        build_seconds, total_bytes = build_index(
            store, features, probabilities, args.shard_size, args.trees
        )
        brute, truth = [], []
        for query in queries:  # the baseline: exact search over float32 vectors in memory
            started = time.perf_counter()
            scores = features @ query
            best = np.argpartition(-scores, 20)[:20]
            best = best[np.argsort(-scores[best])]
            brute.append((time.perf_counter() - started) * 1000)
            truth.append({f"{i:016x}" for i in best})
        del features
        for candidates, search_k in args.settings:
            index = Index(store, candidates=candidates, search_k=search_k)
            index.refresh(force=True)
            approximate, recall = [], []
            for query, exact in zip(queries, truth, strict=True):
                started = time.perf_counter()
                found = index.nearest(query, 20)
                approximate.append((time.perf_counter() - started) * 1000)
                recall.append(len({i for i, _ in found} & exact) / 20)
            keyword = []
            for query in range(args.queries):
                classes = np.random.default_rng(query).choice(1000, 118, replace=False)
                started = time.perf_counter()
                index.ranked_by_classes({int(c): 1.0 for c in classes}, 20)
                keyword.append((time.perf_counter() - started) * 1000)
            print(
                f"| {size:>9,} | {len(build_seconds):>4} "
                f"| {statistics.median(build_seconds):6.2f} s "
                f"| {total_bytes / 2**20:9,.0f} MiB | {candidates:>4} | {search_k:>6} "
                f"| {percentile(approximate, 50):7.2f} | {percentile(approximate, 99):7.2f} "
                f"| {statistics.mean(recall):.4f} | {percentile(brute, 50):8.1f} "
                f"| {percentile(brute, 50) / percentile(approximate, 50):6.1f}x "
                f"| {percentile(keyword, 50):6.2f} |",
                flush=True,
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--shard-size", type=int, default=Settings().shard_size)
    parser.add_argument("--trees", type=int, default=Settings().ann_trees)
    parser.add_argument(
        "--settings",
        type=lambda s: tuple(map(int, s.split(":"))),
        nargs="+",
        default=[(Settings().ann_candidates, Settings().ann_search_k)],
        help="candidates:search_k pairs to compare (search_k -1: Annoy's default)",
    )
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--scratch", default=None, help="directory for the index files")
    args = parser.parse_args()
    real = real_embeddings()
    print(
        f"{len(real[0])} real photos; shards of {args.shard_size:,}, {args.trees} trees; "
        f"{args.queries} queries, k=20; times in ms"
    )
    print(
        "| images | shards | build/shard | index bytes | cand. | search_k | p50 | p99 "
        "| recall@20 | brute force p50 | speed-up | keyword p50 |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for size in args.sizes:
        measure(size, args, real)


if __name__ == "__main__":
    main()
