"""What keeping expanded vectors current costs the index build on S3 Vectors (issue 19): the
vector engine's requests per new image, all of them and those the expansion makes
(`Neighbourhoods._expanded`: the vectors of the changed lists' images and of their first
`expansion_neighbours`), on moto with the exact QueryVectors of tests/support/s3vectors.py.

A collection of `--size` images (real features, perturbed, as bench/index_scale.py makes
them) is indexed first, uncounted; then `--batches` batches of `--batch` new images (the
template's EmbedBatchSize) are queued and built as the embed function's recovery builds
them, each build counted, by the service that built the collection (warm caches, as a
function that stays warm) or, with `--cold`, by a fresh one each time (a new function). The
catalog is local (SQLite): its neighbour-list requests are the same on both engines, and
bench/writer_cost.py counts them on DynamoDB.

    PYTHONPATH=src .venv/bin/python bench/expansion_cost.py --size 300 --cold
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "bench"), str(REPO / "tests")]

import boto3  # noqa: E402
from index_scale import real_embeddings, synthesise, synthetic_record  # noqa: E402
from moto import mock_aws  # noqa: E402
from support.s3vectors import create_vector_indexes, install_query_vectors  # noqa: E402

from imgsearch.config import Settings  # noqa: E402
from imgsearch.index.neighbourhoods import Neighbourhoods  # noqa: E402
from imgsearch.service import ImageSearch  # noqa: E402

BUCKET, INDEX = "bench-vectors", "images"


class Requests:
    """boto3 calls by operation, and those made while the expansion computes."""

    def __init__(self) -> None:
        self.all: Counter[str] = Counter()
        self.expansion: Counter[str] = Counter()
        self.counting = False
        self.inside = threading.local()

    def after_call(self, model: Any, **_: Any) -> None:
        if self.counting:
            self.all[model.name] += 1
            if getattr(self.inside, "expanding", False):
                self.expansion[model.name] += 1

    @contextmanager
    def expanding(self) -> Iterator[None]:
        self.inside.expanding = True
        try:
            yield
        finally:
            self.inside.expanding = False


def add(service: ImageSearch, ids: list[str], features: np.ndarray, probs: np.ndarray) -> None:
    """Queue images as ingest does (embedding, record, pending), without the model."""
    catalog = service.parts.catalog
    for image_id, vector, probabilities in zip(ids, features, probs, strict=True):
        catalog.put_embedding(image_id, vector, probabilities.astype(np.float32))
        catalog.create_image(replace(synthetic_record(image_id, probabilities), status="pending"))
        catalog.mark_pending(image_id, "add")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=1000)
    parser.add_argument("--batches", type=int, default=3)
    parser.add_argument("--batch", type=int, default=10, help="the template's EmbedBatchSize")
    parser.add_argument("--cold", action="store_true", help="each build by a fresh service")
    args = parser.parse_args()
    total = args.size + args.batches * args.batch
    features, probs = synthesise(*real_embeddings(), total, np.random.default_rng(1))
    ids = [f"{i:016x}" for i in range(total)]
    requests = Requests()
    expanded = Neighbourhoods._expanded

    def counted(self: Neighbourhoods, lists: Any) -> dict[str, np.ndarray]:
        with requests.expanding():
            return expanded(self, lists)

    Neighbourhoods._expanded = counted  # type: ignore[method-assign]
    os.environ.update(
        AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1"
    )
    with mock_aws(), tempfile.TemporaryDirectory() as scratch:
        install_query_vectors()
        boto3.setup_default_session()
        boto3.DEFAULT_SESSION.events.register("after-call", requests.after_call)
        create_vector_indexes(boto3.client("s3vectors"), BUCKET, INDEX)
        settings = Settings(
            data_dir=Path(scratch),
            vector_engine="s3vectors",
            vector_bucket=BUCKET,
            vector_index=INDEX,
        )
        service = ImageSearch(settings)
        service.parts.index.refresh_interval = 0
        add(service, ids[: args.size], features[: args.size], probs[: args.size])
        service.build_index()
        print(f"{args.size} images indexed", file=sys.stderr, flush=True)
        requests.counting = True
        for batch in range(args.batches):
            if args.cold:  # a fresh function: nothing cached of the vectors read before
                service.close()
                service = ImageSearch(settings)
                service.parts.index.refresh_interval = 0
            rows = slice(args.size + batch * args.batch, args.size + (batch + 1) * args.batch)
            add(service, ids[rows], features[rows], probs[rows])
            service.build_index()
        service.close()
    added = args.batches * args.batch
    print(
        f"S3 Vectors, {args.size:,} images, {args.batches} builds of {args.batch} new images"
        + (", each by a fresh service" if args.cold else ", by one service")
    )
    print("requests per new image, all of the builds': " + per_image(requests.all, added))
    print("of them, the expansion's: " + per_image(requests.expansion, added))


def per_image(counts: Counter[str], images: int) -> str:
    total = sum(counts.values()) / images
    return (
        f"{total:.2f} ("
        + ", ".join(f"{op} {n / images:.2f}" for op, n in counts.most_common())
        + ")"
    )


if __name__ == "__main__":
    main()
