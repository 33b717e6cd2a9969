"""The two vector engines on the same vectors: recall@20 against exact search, keyword
rankings against each other, requests per query, and the size at which a function can no
longer hold the Annoy index.

    .venv/bin/python bench/vector_engines.py --size 5000 --queries 100

Vectors are synthesised from real features as bench/index_scale.py does. Both engines are
written through their production writers (`ShardWriter`, `S3VectorsWriter`) and queried
through their readers; S3 Vectors runs on moto in this process with the exact QueryVectors of
tests/support/s3vectors.py (moto has none), so its recall is 1.0 by construction: what this
measures for S3 Vectors is the adapter (partitions, class vectors), not the service's
approximate search. Annoy's recall is its real one.

The switch size: Annoy shard bytes per image (measured here) against Lambda's /tmp (10,240 MB
at most) and its 10 s init, at an assumed S3 download rate (--mbps, an estimate: Lambda's
throughput from S3 cannot be measured here); the 2 s cold-start goal of issue 15 too.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "bench"), str(REPO / "tests")]

from index_scale import real_embeddings, synthesise  # noqa: E402

from imgsearch.catalog import Catalog  # noqa: E402
from imgsearch.config import Settings  # noqa: E402
from imgsearch.index.reader import Index  # noqa: E402
from imgsearch.index.s3vectors import (  # noqa: E402
    S3VectorsIndex,
    S3VectorsWriter,
    VectorBucket,
)
from imgsearch.index.shard_writer import ShardWriter  # noqa: E402
from imgsearch.index.shards import ShardData, posted_probabilities  # noqa: E402
from imgsearch.storage import open_storage  # noqa: E402

TMP_LIMIT_MB = 10_240
INIT_LIMIT_S = 10.0
COLD_START_GOAL_S = 2.0


def exact_nearest(features: np.ndarray, query: np.ndarray, k: int) -> set[int]:
    return set(np.argsort(1.0 - features @ query, kind="stable")[:k].tolist())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=5000)
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--mbps", type=float, default=100.0, help="assumed S3 MB/s in Lambda")
    args = parser.parse_args()

    import boto3
    from moto import mock_aws
    from support.s3vectors import create_vector_indexes, install_query_vectors

    rng = np.random.default_rng(0)
    features, probabilities = synthesise(*real_embeddings(), args.size, rng)
    ids = [f"{i:016x}" for i in range(args.size)]
    data = ShardData(ids, features, probabilities)
    settings = Settings()
    queries = synthesise(*real_embeddings(), args.queries, np.random.default_rng(1))[0]

    with tempfile.TemporaryDirectory() as scratch, mock_aws():
        install_query_vectors()
        storage = open_storage(Settings(data_dir=Path(scratch) / "annoy"))
        catalog = Catalog(storage)
        annoy = Index(storage.objects, candidates=settings.ann_candidates)
        annoy.search_k = settings.ann_search_k
        annoy.refresh(force=True)
        writer = ShardWriter(
            catalog,
            annoy,
            shard_size=settings.shard_size,
            n_trees=settings.ann_trees,
            model_name="bench",
        )
        started = time.perf_counter()
        writer.publish(data, [])
        annoy_write = time.perf_counter() - started
        annoy.refresh(force=True)
        shard_bytes = sum(info.size for info in storage.objects.list("index/shards/"))
        started = time.perf_counter()
        fresh = Index(storage.objects)
        fresh.refresh(force=True)
        annoy_load = time.perf_counter() - started

        client = boto3.client("s3vectors", region_name="us-east-1")
        create_vector_indexes(client, "bench-vectors", "images", dim=features.shape[1])
        calls: Counter[str] = Counter()
        client.meta.events.register(
            "before-call.s3vectors.*", lambda model, **_: calls.update([model.name])
        )
        vectors_storage = open_storage(Settings(data_dir=Path(scratch) / "s3vectors"))
        s3 = S3VectorsIndex(
            VectorBucket(client, "bench-vectors", "images"), vectors_storage.objects
        )
        s3.refresh(force=True)
        started = time.perf_counter()
        S3VectorsWriter(Catalog(vectors_storage), s3, model_name="bench").publish(data, [])
        s3_write = time.perf_counter() - started
        write_calls = sum(calls.values())
        s3.refresh(force=True)

        recall = {"annoy": [], "s3vectors": []}
        latency = {"annoy": [], "s3vectors": []}
        calls.clear()
        for query in queries:
            exact = exact_nearest(features, query, 20)
            for name, index in (("annoy", annoy), ("s3vectors", s3)):
                started = time.perf_counter()
                found = index.nearest(query, 20)
                latency[name].append(time.perf_counter() - started)
                rows = {int(i, 16) for i, _ in found}
                recall[name].append(len(rows & exact) / 20)
        query_calls = sum(calls.values()) / len(queries)

        posted = posted_probabilities(probabilities)
        agree, exact_agree = [], []
        calls.clear()
        for c in range(0, 1000, 1000 // min(100, args.queries)):
            weights = {c: 1.0, (c * 7 + 3) % 1000: 0.5}
            left = [i for i, _ in annoy.ranked_by_classes(weights, 200)]
            right = [i for i, _ in s3.ranked_by_classes(weights, 200)]
            scores = sum(w * posted[:, k] for k, w in weights.items())
            best = [ids[r] for r in np.argsort(-scores, kind="stable")[:200] if scores[r] > 0]
            agree.append(len(set(left[:20]) & set(right[:20])) / max(1, min(20, len(left))))
            exact_agree.append(right[:20] == best[:20])
        keyword_calls = sum(calls.values()) / len(agree)

    per_image = shard_bytes / args.size
    rate = args.mbps * 1e6
    print(f"{args.size} images of {features.shape[1]} dimensions, {args.queries} queries")
    print(
        f"annoy shards: {shard_bytes / 1e6:.1f} MB, {per_image:.0f} bytes per image; "
        f"written in {annoy_write:.2f} s, loaded (local files) in {annoy_load * 1000:.1f} ms"
    )
    print(
        f"s3vectors: written in {s3_write:.2f} s with {write_calls} requests "
        f"(moto in process); {4 * (features.shape[1] + probabilities.shape[1] + 1)} bytes "
        "of vectors per image stored"
    )
    for name in ("annoy", "s3vectors"):
        print(
            f"recall@20 against exact, {name}: {statistics.mean(recall[name]):.4f} "
            f"(p50 {statistics.median(latency[name]) * 1000:.2f} ms here)"
        )
    print(
        f"s3vectors requests per similar query (k=20): {query_calls:.2f}; per keyword query "
        f"(k=200, over QueryVectors' top-100): {keyword_calls:.2f}"
    )
    print(
        f"keyword top-20 overlap annoy vs s3vectors: {statistics.mean(agree):.4f}; s3vectors "
        f"top-20 identical to brute force: {sum(exact_agree)}/{len(exact_agree)}"
    )
    for label, limit in (
        (f"/tmp ({TMP_LIMIT_MB} MB)", TMP_LIMIT_MB * 1e6 / per_image),
        (f"init {INIT_LIMIT_S:.0f} s at {args.mbps:.0f} MB/s", INIT_LIMIT_S * rate / per_image),
        (
            f"cold start goal {COLD_START_GOAL_S:.0f} s at {args.mbps:.0f} MB/s",
            COLD_START_GOAL_S * rate / per_image,
        ),
    ):
        print(f"annoy outgrows {label} at {limit:,.0f} images")


if __name__ == "__main__":
    main()
