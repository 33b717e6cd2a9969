"""AWS requests per ingested image: what the embed function asks of S3 and DynamoDB for each
image it indexes, at a collection of a few thousand images, on moto.

The collection is synthesised as bench/index_scale.py does (real features, perturbed): its
image records, index (shards and manifest, written by `write_build`) and neighbour lists
(exact 50 nearest) are written straight into moto. Then batches of real demo photos arrive
as the embed function takes them: each photo is put in the bucket, applied as its S3 event
(`apply_event`: decode, embed, catalogue, queue), and once per batch `recover` runs (changes
left half-done, then the index build with its neighbour lists). Every boto3 call is counted
by operation, in three phases: ingest, index build, and the neighbour lists within it.

    PYTHONPATH=src .venv/bin/python bench/writer_cost.py --sizes 1000 3000
    PYTHONPATH=/work/main/src .venv/bin/python bench/writer_cost.py   # another version's code

Only the embed function's calls are counted, not the uploader's PutObject. Requests, not
bytes or time: moto answers in microseconds, so latency is bench/cloud_scale.py's business.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import boto3
import numpy as np
from moto import mock_aws

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1] / "tests"))
from index_scale import real_embeddings, synthesise, synthetic_record
from support.dynamodb import install_cheap_transactions

from imgsearch.bulk import files_under
from imgsearch.catalog import Published, _neighbour_attrs
from imgsearch.config import Settings
from imgsearch.index.manifest import Manifest, ShardEntry, write_manifest
from imgsearch.index.neighbourhoods import Neighbourhoods
from imgsearch.index.shards import ShardData, write_build
from imgsearch.ingest import ObjectEvent
from imgsearch.service import ImageSearch
from imgsearch.storage.aws_resources import create_bucket, create_tables

REPO = Path(__file__).resolve().parents[1]
BUCKET = "imgsearch-bench"
TABLES = {"CatalogTable": "bench-catalog", "FeedbackTable": "bench-feedback"}
K = 50


class Calls:
    """boto3 calls by phase and operation (a handler on the default session's events)."""

    def __init__(self) -> None:
        self.phase: str | None = None
        self.counts: dict[str, Counter[str]] = {}

    def __call__(self, event_name: str, params: dict[str, Any], **_: Any) -> None:
        if self.phase is not None:
            _, service, operation = event_name.split(".", 2)
            # The lease's writes (taken, renewed every 5 s by the heartbeat, released) come
            # from another thread, in whatever phase runs; more of them on a slower machine.
            key = (params.get("Key") or params.get("Item") or {}) if service == "dynamodb" else {}
            phase = "index lease" if key.get("pk") == {"S": "lease"} else self.phase
            self.counts.setdefault(phase, Counter())[f"{service}.{operation}"] += 1

    @contextmanager
    def counting(self, phase: str) -> Iterator[None]:
        outer, self.phase = self.phase, phase
        try:
            yield
        finally:
            self.phase = outer


def populate(service: ImageSearch, size: int, seed: int) -> None:
    """`size` indexed images: records, one or more shards, the manifest, neighbour lists."""
    features, probabilities = synthesise(*real_embeddings(), size, np.random.default_rng(seed))
    ids = [f"{i:016x}" for i in range(size)]
    # Near-copy lists kept from the start, as for any collection indexed by this version (the
    # first measured build would otherwise complete them from every list written here).
    service.parts.catalog.mark_near_copy_lists_complete()
    table, store = service.parts.storage.catalog, service.parts.storage.objects
    for image_id, probs in zip(ids, probabilities, strict=True):
        record = synthetic_record(image_id, probs)
        table.put(f"image#{image_id}", "meta", record.attrs(), expected_version=0)
    settings = service.settings
    shards = []
    for number, start in enumerate(range(0, size, settings.shard_size)):
        rows = slice(start, start + settings.shard_size)
        data = ShardData(ids[rows], features[rows], probabilities[rows])
        build = write_build(store, f"s{number:06d}", data, settings.ann_trees)
        sealed = len(data) == settings.shard_size
        shards.append(
            ShardEntry(f"s{number:06d}", build.id, len(data), sealed, sha256=build.sha256)
        )
    manifest = Manifest(
        generation=1,
        shards=tuple(shards),
        next_shard=len(shards),
        model=service.parts.model.name,
        dim=features.shape[1],
        trees=settings.ann_trees,
        updated_at=time.time(),
    )
    write_manifest(store, manifest, None)
    service.parts.catalog.record_published(Published(1, size, len(shards)))
    for start in range(0, size, 1000):  # exact neighbours, 1000 rows at a time
        distances = 1.0 - features[start : start + 1000] @ features.T
        for row, image_distances in enumerate(distances, start):
            image_distances[row] = np.inf
            nearest = np.argsort(image_distances)[:K]
            table.put(
                f"image#{ids[row]}",
                "neighbours",
                _neighbour_attrs([(ids[i], float(image_distances[i])) for i in nearest]),
                expected_version=0,
            )


def photos() -> Iterator[tuple[str, bytes]]:
    for key, path in files_under(REPO / "demo"):
        yield key, path.read_bytes()


def measure(size: int, args: argparse.Namespace) -> tuple[int, dict[str, Counter[str]]]:
    """The images added and the calls made for them."""
    calls = Calls()
    update = Neighbourhoods.update

    def counted_update(self: Neighbourhoods, *a: Any, **kw: Any) -> None:
        with calls.counting("neighbour lists"):
            update(self, *a, **kw)

    Neighbourhoods.update = counted_update  # type: ignore[method-assign]
    install_cheap_transactions()
    with tempfile.TemporaryDirectory() as scratch, mock_aws():
        boto3.setup_default_session()  # after moto's start, which resets it
        boto3.DEFAULT_SESSION.events.register("before-parameter-build", calls)
        settings = Settings(
            backend="aws",
            bucket=BUCKET,
            catalog_table=TABLES["CatalogTable"],
            feedback_table=TABLES["FeedbackTable"],
            cache_dir=Path(scratch),
            decode_workers=0,
        )
        create_bucket(boto3.client("s3"), BUCKET)
        create_tables(boto3.client("dynamodb"), TABLES)
        service = ImageSearch(settings)
        started = time.perf_counter()
        populate(service, size, seed=size)
        print(f"  {size} images populated in {time.perf_counter() - started:.0f} s", flush=True)
        s3 = boto3.client("s3")
        arriving = photos()
        sequencer = added = 0
        for _ in range(args.batches):
            for _ in range(args.batch):
                key, data = next(arriving)
                s3.put_object(Bucket=BUCKET, Key=f"images/{key}", Body=data)
                sequencer += 1
                with calls.counting("ingest"):
                    result = service.apply_event(ObjectEvent("created", key, f"{sequencer:016X}"))
                added += result is not None and result.status == "added"
            with calls.counting("index build"):
                service.recover()
        assert service.count() == size + added, (service.count(), added)
    Neighbourhoods.update = update  # type: ignore[method-assign]
    return added, calls.counts


def report(size: int, images: int, counts: dict[str, Counter[str]]) -> None:
    build = counts.get("index build", Counter())
    lists = counts.get("neighbour lists", Counter())
    ingest = counts.get("ingest", Counter())
    lease = counts.get("index lease", Counter())
    phases = {
        "ingest (apply_event)": ingest,
        "index build, without neighbour lists and lease": build,
        "neighbour lists": lists,
        "index lease (taken, renewed, released)": lease,
    }
    total = sum(phases.values(), Counter())
    print(f"\n{size} images, then {images} new ones in batches; AWS requests per new image:\n")
    print("| phase | requests per image | by operation (per image) |")
    print("|---|---:|---|")
    for name, counter in [*phases.items(), ("all", total)]:
        detail = ", ".join(f"{op} {n / images:.1f}" for op, n in counter.most_common())
        print(f"| {name} | {sum(counter.values()) / images:.1f} | {detail} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[3000])
    parser.add_argument("--batches", type=int, default=3)
    parser.add_argument("--batch", type=int, default=10, help="the template's EmbedBatchSize")
    args = parser.parse_args()
    os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench")
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL_DYNAMODB"):
        os.environ.pop(name, None)
    import imgsearch

    print(f"imgsearch from {Path(imgsearch.__file__).parent}")
    for size in args.sizes:
        report(size, *measure(size, args))


if __name__ == "__main__":
    main()
