"""The cloud at scale: the real Lambda handlers against a moto server, with AWS's latencies
injected per request, counting requests and bytes by operation.

    PYTHONPATH=src .venv/bin/python bench/cloud_scale.py --sizes 2000 10000

For each vector engine (the template's `VectorEngine`) and collection size:
1. A moto server (`ThreadedMotoServer`, in this process, so that the tests' exact QueryVectors,
   tests/support/s3vectors.py, serves S3 Vectors too) with the template's bucket, tables,
   queues, notifications and vector indexes (tests/support/aws_resources.py).
2. A collection of `size` images is synthesised straight into it, as bench/index_scale.py
   does (real features, perturbed): image records, the index (through the engine's own
   writer) and neighbour lists (exact up to EXACT_LISTS_UP_TO images, nearly exact above).
   No photo is embedded for these. Below `--outside-from` (50,000) every item is written into
   moto's backends; from it, the collection is kept as compact arrays that moto answers from
   when a request touches them (bench/cloud_synthetic.py: moto's own objects would take 24 KB
   of DynamoDB items and 73 KB of S3 Vectors floats an image, 97 GB at 1M), so that 100k and
   1M fit in a few GB; the requests and the items read are the same.
3. A sample of real photos (demo/) is uploaded to the bucket; S3 notifies the queue and a
   poller invokes the embed function (functions/embed/app.py) in batches of the template's
   `EmbedBatchSize`, as Lambda's SQS event source does. Its requests and bytes are counted per
   image, and its time, split into ingest (decode, embed, catalogue: parallel across
   functions) and index build (serialised by the index lease).
4. Fresh search and embed functions are cold-started (their module imported, as Lambda's
   init does) and the search function answers one query: seconds and bytes read until then.
5. Queries through API Gateway's routing (tests/support/lambda_events.py): similar images,
   reverse search (a photo), keyword, and learned (a word with votes): p50 and p99.

Latency is injected in the client (a botocore event hook sleeps before each request is sent
and, for bodies, for their transfer time), on top of moto's own time. The figures, per
request (LATENCY below, `--latency-scale` multiplies them):
- DynamoDB GetItem/PutItem/UpdateItem/DeleteItem/Query: 5 ms. AWS: "single-digit
  millisecond performance at any scale" (DynamoDB's product page); 5 ms is assumed for a
  request from Lambda in the same region. BatchGetItem, BatchWriteItem, TransactWriteItems,
  TransactGetItems: 10 ms (assumed: AWS publishes nothing separate).
- S3 GetObject and HeadObject: 30 ms to the first byte; PutObject, CopyObject, DeleteObject,
  ListObjectsV2: 40 ms. AWS: small-object latency "roughly 100-200 milliseconds" at worst and
  a median "in the range of tens of milliseconds" (Best Practices Design Patterns: Optimizing
  Amazon S3 Performance); 30 and 40 ms are assumed within that range. Transfer: 85 MB/s per
  request (the same paper: "one concurrent request for each 85-90 MB/s").
- S3 Vectors QueryVectors: 100 ms. AWS: "sub-second query performance for cold queries and
  as low as 100 milliseconds for warm queries" (S3 Vectors best practices). GetVectors,
  PutVectors, DeleteVectors, ListVectors: 50 ms (assumed).
- SQS, SSM: 10 ms (assumed).
What moto does not emulate (S3 Vectors' approximate search, throttling, Lambda's CPU) is not
measured: CPU time is this machine's, shared with other jobs (noisy); `--cpu-scale S` counts
it S times over, as on a vCPU S times slower than this machine's core.

Seconds "as on Lambda" = the function's CPU (every thread of this process but the moto
server's: the API's request threads, the lease's heartbeat; all of it, as if on Lambda's one
vCPU) + the latency injected along the critical path of its requests (Chain): requests one
after another add up, requests sent at once from a thread pool count as the longest of them,
and the heartbeat's, which overlap the work, not at all. Not counted: moto's own time. (Runs
saved before 2026-12-02 07:10 counted the union of the wait intervals in wall time instead,
which counted the staggering this machine's load put between requests sent at once.)

Extrapolation to sizes not run (printed as such): requests per image and query requests do
not depend on the collection size for S3 Vectors (checked by running two sizes); Annoy's cold
start reads every shard, so its bytes grow as bytes-per-image x size and its seconds as
bytes / 85 MB/s plus the measured init.
"""

from __future__ import annotations

import argparse
import functools
import io
import json
import logging
import os
import resource
import socket
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures.thread import _worker as pool_worker
from contextlib import contextmanager
from contextvars import ContextVar, Token
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Lambda's 1769 MB is one vCPU: numpy on one thread, so that the handler's thread CPU time
# is all of its CPU (and the model below holds).
os.environ.update(OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "bench"), str(REPO / "tests")]

import boto3  # noqa: E402
import botocore.config  # noqa: E402
from cloud_synthetic import Collection, image_ids, serve_from_outside  # noqa: E402
from index_scale import real_embeddings, synthesise, synthetic_record  # noqa: E402
from moto.server import ThreadedMotoServer  # noqa: E402
from support.aws_resources import (  # noqa: E402
    configure_notifications,
    create_queues,
    function_environment,
)
from support.dynamodb import install_cheap_transactions  # noqa: E402
from support.lambda_events import (  # noqa: E402
    ApiGateway,
    FakeContext,
    QueuePoller,
    lambda_logging,
    load_function,
    scheduled_event,
)
from support.s3vectors import create_vector_indexes, install_query_vectors  # noqa: E402

from imgsearch.bulk import files_under  # noqa: E402
from imgsearch.cloud.handlers import BUILD_SHARE  # noqa: E402
from imgsearch.config import ASSETS_DIR, Settings, get_settings  # noqa: E402
from imgsearch.index.builder import (  # noqa: E402
    BATCH_SIZE,
    FIRST_BATCH,
    LEASE_SECONDS,
    Lease,
)
from imgsearch.index.s3vectors import classes_index_name  # noqa: E402
from imgsearch.index.shards import ShardData  # noqa: E402
from imgsearch.service import ImageSearch  # noqa: E402
from imgsearch.storage import Put  # noqa: E402
from imgsearch.storage.aws_resources import create_bucket, create_tables, load_template  # noqa: E402

# moto (one process) on a loaded machine may take longer than botocore's 60 s to answer one of
# the requests a build sends at once (a backlog's BatchGetItem timed out at a load of 90): the
# clients the functions make wait longer here. Nothing of it is counted as Lambda's time.
botocore.config.Config.OPTION_DEFAULTS["read_timeout"] = 600

BUCKET = "imgsearch-scale"
VECTOR_BUCKET = "imgsearch-scale-vectors"
TABLES = {"CatalogTable": "scale-catalog", "FeedbackTable": "scale-feedback"}
QUEUES = {"ImageQueue": "scale-images", "ImageDeadLetterQueue": "scale-images-dlq"}
API_KEY = "scale-bench-key"
FUNCTIONS = {
    "EmbedFunction": "embed",
    "SearchFunction": "search",
    "FeedbackFunction": "feedback",
    "AuthorizerFunction": "authorizer",
}
K = 50  # neighbours per stored list (Settings.neighbours)

# Seconds per request before it is sent, by operation (see the module's docstring).
DYNAMODB_ITEM, DYNAMODB_BATCH = 0.005, 0.010
LATENCY: dict[str, float] = {
    **dict.fromkeys(
        ("GetItem", "PutItem", "UpdateItem", "DeleteItem", "Query", "Scan"), DYNAMODB_ITEM
    ),
    **dict.fromkeys(
        ("BatchGetItem", "BatchWriteItem", "TransactWriteItems", "TransactGetItems"),
        DYNAMODB_BATCH,
    ),
    **dict.fromkeys(("GetObject", "HeadObject"), 0.030),
    **dict.fromkeys(
        ("PutObject", "CopyObject", "DeleteObject", "DeleteObjects", "ListObjectsV2"), 0.040
    ),
    "QueryVectors": 0.100,
    **dict.fromkeys(("GetVectors", "PutVectors", "DeleteVectors", "ListVectors"), 0.050),
}
OTHER_LATENCY = 0.010  # SQS, SSM, anything else
S3_BYTES_PER_SECOND = 85e6
COLD_START_GOAL, INGEST_GOAL, REQUESTS_GOAL, QUERY_P50_GOAL = 2.0, 50.0, 15.0, 0.300
EXTRAPOLATED = (100_000, 1_000_000)


@dataclass
class Tally:
    requests: Counter[str] = field(default_factory=Counter)
    sent: int = 0
    received: int = 0
    waited: float = 0.0  # seconds of latency injected
    sent_by: Counter[str] = field(default_factory=Counter)  # bytes by operation
    received_by: Counter[str] = field(default_factory=Counter)
    # DynamoDB capacity units as billed on demand, item by item (dynamodb_units); 0 in runs
    # saved before they were counted.
    write_units: float = 0.0
    read_units: float = 0.0

    def add(self, other: Tally) -> None:
        self.requests.update(other.requests)
        self.sent += other.sent
        self.received += other.received
        self.waited += other.waited
        self.write_units += other.write_units
        self.read_units += other.read_units
        self.sent_by.update(other.sent_by)
        self.received_by.update(other.received_by)


@dataclass
class Chain:
    """The seconds waited for requests along one chain of work: a thread's requests one after
    another add up; a task handed to a thread pool starts from its submitter's chain, and
    the submitter, when it takes the task's result, continues from the later of both. So
    requests sent at once count once, as the function waits for them at once on Lambda,
    whatever this machine's load and the moto server (in this process, sharing its GIL) do
    to when each thread gets to send. (The union of the wait intervals in wall time, used
    before, counted that staggering: 30 queries sent at once spread over a second here.)"""

    waited: float = 0.0


_chain: ContextVar[Chain | None] = ContextVar("bench_chain", default=None)
# CPU seconds of every task run by a thread pool (follow_chains_into_pools): a pool's threads
# end with it (storage.in_parallel makes a pool per call), and a thread's own clock with them.
POOLS_CPU = [0.0]
POOLS_CPU_LOCK = threading.Lock()
# CPU seconds the bench's own bookkeeping took in the function's threads (Wire: the write
# and read units of each request, a json.loads of each batch written and a json.dumps of
# each item read or written, about 0.03 and 0.02 ms an item of a neighbour list), taken off
# the function's CPU (cpu_since): the function does none of it on Lambda. Counted in the
# function's CPU before 2026-12-02 16:40 (the sixth round's figures and before).
BOOKKEEPING_CPU = [0.0]
BOOKKEEPING = -1  # its key in function_cpu()


@dataclass
class Mark:
    chain: Chain
    outer: Chain | None
    token: Token[Chain | None]


# Per pool thread, the chain its last task continued and where that task's waits ended: a
# pool runs at most its threads' count of tasks at once, and a task queued behind another on
# the same thread starts where that one ended (see follow_chains_into_pools); and the chain
# of the task it runs (`current_chain`).
_lane = threading.local()


def current_chain() -> Chain | None:
    """The chain the current thread's requests wait on: a pool task's own, also where the task
    runs its work in a context of its own (storage.in_parallel runs each item in a copy of
    its caller's context since main's 323577a, and that copy's `_chain` is the caller's: the
    waits of requests sent at once added up on it one after another), else the context's."""
    task = getattr(_lane, "chain", None)
    return task if task is not None else _chain.get()


def follow_chains_into_pools() -> None:
    """Thread pools' tasks continue their submitter's Chain (asyncio and anyio's worker
    threads copy the context, so they share it already; the lease's heartbeat thread does
    not: its requests overlap the work, off the critical path). A pool has a bounded number
    of threads (storage.in_parallel: PARALLEL_REQUESTS): a task starts from the later of its
    submitter's waits and the end of the task its thread ran before for the same submitter,
    so 300 requests through 32 threads count as about 10 in turn, not as one."""
    if getattr(ThreadPoolExecutor.submit, "follows_chains", False):
        return
    submit, result = ThreadPoolExecutor.submit, Future.result

    def submit_on_chain(self: Any, fn: Any, /, *args: Any, **kwargs: Any) -> Any:
        parent = current_chain()
        chain = Chain(parent.waited) if parent is not None else None

        def run() -> Any:
            if chain is not None:
                last = getattr(_lane, "last", None)
                if last is not None and last[0] is parent:
                    chain.waited = max(chain.waited, last[1])
            token = _chain.set(chain) if chain is not None else None
            outer_task, _lane.chain = getattr(_lane, "chain", None), chain
            began = time.thread_time()
            try:
                return fn(*args, **kwargs)
            finally:
                _lane.chain = outer_task
                if token is not None:
                    _chain.reset(token)
                if chain is not None:
                    _lane.last = (parent, chain.waited)
                with POOLS_CPU_LOCK:  # the pool's thread may end before it is read: kept here
                    POOLS_CPU[0] += time.thread_time() - began

        future = submit(self, run)
        future.bench_chain, future.bench_parent = chain, parent
        return future

    def result_on_chain(self: Any, timeout: float | None = None) -> Any:
        # Onto the submitter's chain, wherever the result is taken: asyncio takes an
        # executor's result (run_in_executor: api/deps.off_the_loop) in a callback of its own.
        value = result(self, timeout)
        chain, parent = getattr(self, "bench_chain", None), getattr(self, "bench_parent", None)
        if chain is not None and parent is not None:
            parent.waited = max(parent.waited, chain.waited)
        return value

    submit_on_chain.follows_chains = True  # type: ignore[attr-defined]
    ThreadPoolExecutor.submit = submit_on_chain  # type: ignore[method-assign]
    Future.result = result_on_chain  # type: ignore[method-assign]


# The index lease's heartbeat thread (index/builder.py `Heartbeat`): it renews the lease every
# LEASE_SECONDS / 3 of wall clock, and moto on a loaded machine stretches a build several
# times over what it takes on Lambda. Its requests are counted apart (`Wire.heartbeats`) and
# the ingest is billed, instead, the renewals a build would send in its seconds as on Lambda
# (`heartbeats_on_lambda`).
LEASE_THREAD = "imgsearch-lease"
HEARTBEAT_SECONDS = LEASE_SECONDS / 3


def heartbeats_on_lambda(build_seconds: float) -> int:
    """Renewals a build of `build_seconds` (as on Lambda) sends: one every third of the lease."""
    return int(build_seconds // HEARTBEAT_SECONDS)


class Wire:
    """A botocore event hook on the default session: injects latency and counts requests and
    bytes per operation into the current phase's Tally (None: not counted, no latency). The
    lease's heartbeat is counted apart (`heartbeats`), and its waits are not the function's."""

    def __init__(self, scale: float) -> None:
        self.scale = scale
        self.tally: Tally | None = None
        self.heartbeats = 0
        self.lock = threading.Lock()

    def install(self, session: Any) -> None:
        session.events.register("before-send", self.before_send)
        session.events.register("after-call", self.after_call)

    def before_send(self, request: Any, **kwargs: Any) -> None:
        tally = self.tally
        if tally is None:
            return
        operation = kwargs["event_name"].rsplit(".", 1)[-1]
        if threading.current_thread().name == LEASE_THREAD:
            with self.lock:
                self.heartbeats += 1
            time.sleep(self.scale * LATENCY.get(operation, OTHER_LATENCY))
            return
        started = time.thread_time()
        body = request.body
        size = len(body) if isinstance(body, bytes | str) else _stream_size(body)
        wait = self.scale * (LATENCY.get(operation, OTHER_LATENCY) + size / S3_BYTES_PER_SECOND)
        units = write_units(operation, body)
        with self.lock:
            BOOKKEEPING_CPU[0] += time.thread_time() - started
            tally.write_units += units
            tally.requests[operation] += 1
            tally.sent += size
            tally.sent_by[operation] += size
            tally.waited += wait
        self.wait(wait)

    def after_call(self, http_response: Any, **kwargs: Any) -> None:
        tally = self.tally
        if (
            tally is None
            or http_response is None
            or threading.current_thread().name == LEASE_THREAD
        ):
            return
        started = time.thread_time()
        size = int(http_response.headers.get("content-length", 0))
        wait = self.scale * size / S3_BYTES_PER_SECOND
        operation = kwargs["event_name"].rsplit(".", 1)[-1]
        parsed = kwargs.get("parsed")
        if operation == "BatchGetItem" and isinstance(parsed, dict):
            parsed = whole_items_read(parsed)
        units = read_units(operation, parsed)
        with self.lock:
            BOOKKEEPING_CPU[0] += time.thread_time() - started
            tally.read_units += units
            tally.received += size
            tally.received_by[kwargs["event_name"].rsplit(".", 1)[-1]] += size
            tally.waited += wait
        self.wait(wait)

    def wait(self, seconds: float) -> None:
        """Sleep `seconds`, counted on the waiting chain of requests (Chain)."""
        chain = current_chain()
        if chain is not None:
            chain.waited += seconds
        time.sleep(seconds)

    def mark(self) -> Mark:
        """Start counting the waits on the critical path of what follows, for `waited_since`
        (marks nest: an inner one's waits count in the outer one's too)."""
        chain = Chain()
        return Mark(chain, _chain.get(), _chain.set(chain))

    def waited_since(self, mark: Mark) -> float:
        """Seconds the function waited for its requests since `mark`, along the critical path:
        requests one after another add up; requests sent at once (threads of a pool) count as
        the longest of them (see Chain)."""
        _chain.reset(mark.token)
        if mark.outer is not None:
            mark.outer.waited += mark.chain.waited
        return mark.chain.waited

    @contextmanager
    def counting(self, tally: Tally) -> Iterator[Tally]:
        outer, self.tally = self.tally, tally
        try:
            yield tally
        finally:
            self.tally = outer


# The moto server's threads (werkzeug names each request's thread after its target): their
# CPU is the emulator's, not the function's.
MOTO_THREADS = ("process_request_thread", "_server_entry")


def function_cpu() -> dict[int, float]:
    """CPU seconds so far of each thread of the function: every thread of this process but
    the moto server's (the API's requests, the lease's heartbeat in its own thread: all of
    them are the function's CPU on Lambda); thread pools' tasks under key 0, as counted when
    each ends (POOLS_CPU)."""
    with POOLS_CPU_LOCK:
        seconds = {0: POOLS_CPU[0], BOOKKEEPING: BOOKKEEPING_CPU[0]}
    for thread in threading.enumerate():
        if thread.ident is None or any(name in thread.name for name in MOTO_THREADS):
            continue
        if getattr(thread, "_target", None) is pool_worker:  # counted task by task
            continue
        try:
            seconds[thread.ident] = time.clock_gettime(time.pthread_getcpuclockid(thread.ident))
        except OSError:  # ended meanwhile
            continue
    return seconds


# Lambda's vCPU against this machine's core (`--cpu-scale`): the function's CPU seconds are
# multiplied by it. Unknown: 1 counts this machine's CPU as Lambda's; a run at 2 says what
# the goals become on a vCPU half as fast.
cpu_scale = 1.0


def cpu_since(before: dict[int, float]) -> float:
    """The function's CPU seconds since `before` (function_cpu()), times `cpu_scale`; threads
    that started since count from zero (pools' tasks are counted as they end)."""
    now = function_cpu()
    threads = sum(
        max(0.0, t - before.get(ident, 0.0)) for ident, t in now.items() if ident != BOOKKEEPING
    )
    bookkeeping = now[BOOKKEEPING] - before.get(BOOKKEEPING, now[BOOKKEEPING])
    return max(0.0, threads - bookkeeping) * cpu_scale


def _kilobytes(value: Any, unit: int) -> int:
    """Billing units of an item: its size (here its JSON's) in `unit` bytes, at least 1."""
    return max(1, -(-len(json.dumps(value, default=str)) // unit))


def write_units(operation: str, body: Any) -> float:
    """DynamoDB on-demand write units of a request: 1 per KB of each item written, twice for
    each item of a transaction (DynamoDB's pricing: transactional writes cost 2 WRU per KB)."""
    if operation not in {"PutItem", "UpdateItem", "DeleteItem", "BatchWriteItem"} | {
        "TransactWriteItems"
    }:
        return 0.0
    request = json.loads(body)
    if operation == "BatchWriteItem":
        return float(
            sum(_kilobytes(w, 1024) for ws in request["RequestItems"].values() for w in ws)
        )
    if operation == "TransactWriteItems":
        return 2.0 * sum(_kilobytes(item, 1024) for item in request["TransactItems"])
    return float(_kilobytes(request.get("Item", request.get("Key")), 1024))


def whole_items_read(parsed: dict[str, Any]) -> dict[str, Any]:
    """A BatchGetItem's answer with each item as the table holds it whole: DynamoDB bills a
    read by the item's size, whatever attributes it asked for (the builder reads most
    neighbour lists' distances alone). From moto's backend in this process."""
    from moto.core.models import DEFAULT_ACCOUNT_ID
    from moto.dynamodb.models import dynamodb_backends
    from moto.dynamodb.models.dynamo_type import DynamoType

    backend = dynamodb_backends[DEFAULT_ACCOUNT_ID][os.environ["AWS_DEFAULT_REGION"]]
    responses: dict[str, list[Any]] = {}
    for name, items in parsed.get("Responses", {}).items():
        table = backend.get_table(name)
        responses[name] = []
        for item in items:
            whole = table.get_item(DynamoType(item["pk"]), DynamoType(item["sk"]))
            responses[name].append(item if whole is None else whole.to_json()["Attributes"])
    return {**parsed, "Responses": responses}


def read_units(operation: str, parsed: Any) -> float:
    """DynamoDB read units of an answer (strongly consistent: 1 per 4 KB of each item read;
    a Query 1 per 4 KB of all it read; a transaction twice)."""
    if not isinstance(parsed, dict):
        return 0.0
    if operation == "GetItem":
        return float(_kilobytes(parsed.get("Item", {}), 4096))
    if operation in ("Query", "Scan"):
        return float(_kilobytes(parsed.get("Items", []), 4096))
    if operation == "BatchGetItem":
        items = [i for found in parsed.get("Responses", {}).values() for i in found]
        return float(sum(_kilobytes(i, 4096) for i in items))
    if operation == "TransactGetItems":
        return 2.0 * sum(_kilobytes(r.get("Item", {}), 4096) for r in parsed.get("Responses", []))
    return 0.0


def _stream_size(body: Any) -> int:
    if body is None:
        return 0
    try:
        position = body.tell()
        size = body.seek(0, io.SEEK_END)
        body.seek(position)
        return int(size - position)
    except (AttributeError, OSError):
        return 0


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def environment(engine: str, scratch: Path) -> dict[str, str]:
    known = {
        "IMGSEARCH_BUCKET": BUCKET,
        "IMGSEARCH_VECTOR_ENGINE": engine,
        "IMGSEARCH_VECTOR_BUCKET": VECTOR_BUCKET,
        "IMGSEARCH_PAGE_ORIGINS": json.dumps([f"https://{BUCKET}.s3.amazonaws.com"]),
        "IMGSEARCH_ASSETS_DIR": str(ASSETS_DIR),
        "IMGSEARCH_CACHE_DIR": str(scratch / "cache"),
        "IMGSEARCH_TRUSTED_PROXIES": "[]",  # the TrustedProxies parameter's default
        **TABLES,
    }
    values: dict[str, str] = {}
    for function in FUNCTIONS:
        values |= function_environment(function, known)
    return values | {
        "POWERTOOLS_SERVICE_NAME": "imgsearch-bench",
        "POWERTOOLS_METRICS_NAMESPACE": "bench",
    }


def template_default(name: str) -> int:
    return int(load_template()["Parameters"][name]["Default"])


# The collection -------------------------------------------------------------------------------


def populate_outside(service: ImageSearch, size: int, seed: int) -> None:
    """`size` indexed images kept outside moto's objects (bench/cloud_synthetic.py): the
    catalog's image items and S3 Vectors' indexes answered from compact arrays; Annoy's shards
    published by the engine's writer from the same arrays."""
    collection = Collection(size, seed, EXACT_LISTS_UP_TO, K)
    near_copy_lists_kept(service)
    settings, writer = service.settings, service.parts.builder.writer
    adapter = service.parts.storage.catalog
    serve_from_outside(
        collection,
        settings.catalog_table,
        lambda pk, sk, attrs: adapter._encode_item(pk, sk, 1, attrs),
        settings.vector_bucket if settings.vector_engine == "s3vectors" else None,
        settings.vector_index,
        classes_index_name(settings.vector_index),
    )
    if settings.vector_engine == "s3vectors":
        writer._write_state(collection.state(writer.model_name), None)
        return
    probabilities = np.zeros((size, collection.classes), np.float16)
    np.put_along_axis(
        probabilities,
        collection.posted_classes.astype(np.int64),
        collection.posted_values,
        axis=1,
    )
    features = collection.features.astype(np.float32)
    publish_all(service, ShardData(image_ids(size), features, probabilities))


def near_copy_lists_kept(service: ImageSearch) -> None:
    """The catalog's mark that near-copy lists were kept from the collection's start (as for
    any collection indexed since they are): without it the first build completes them from
    every image's neighbour list, which for a synthesised 1M is a million reads (and the
    synthesised images are no near-copies of each other: their lists would be empty)."""
    catalog = service.parts.catalog
    if hasattr(catalog, "mark_near_copy_lists_complete"):
        catalog.mark_near_copy_lists_complete()
    else:  # a baseline from before it (ed54c39): the same item
        from imgsearch.config import MAX_DUPLICATE_DISTANCE

        mark = {"at": time.time(), "max_distance": MAX_DUPLICATE_DISTANCE}
        catalog.table.put("near-complete", "complete", mark)


def publish_all(service: ImageSearch, data: ShardData) -> None:
    """One publication of the whole collection (the writer cuts it into shards) from the
    writer's own view of the index."""
    writer = service.parts.builder.writer
    writer.index.refresh(force=True)
    writer.publish(data, [])
    service.parts.index.refresh(force=True)


def populate(service: ImageSearch, size: int, seed: int) -> None:
    """`size` indexed images: records, the engine's index, neighbour lists.

    Written straight into moto's backends, not through its HTTP server (200,000 items at 100k
    images; nothing here is counted), with the items the real adapters encode: the catalog's
    own `put_many` and the engine's own writer, only their last hop replaced. Vectors go into
    moto's S3 Vectors backend with float16 precision, each value one shared Python float: moto
    keeps a vector as a list of floats, 73 KB an image (7 GB at 100k) without that."""
    features, probabilities = synthesise(
        *real_embeddings(without_demo=True), size, np.random.default_rng(seed)
    )
    near_copy_lists_kept(service)
    ids = [f"{i:016x}" for i in range(size)]
    table = service.parts.storage.catalog
    with straight_into_moto(table, getattr(service.parts.builder.writer, "bucket", None)):
        table.put_many(
            [
                Put(f"image#{image_id}", "meta", synthetic_record(image_id, probs).attrs(), 0)
                for image_id, probs in zip(ids, probabilities, strict=True)
            ]
        )
        publish_all(service, ShardData(ids, features, probabilities))
        for first, lists in neighbour_lists(ids, features):
            service.parts.catalog.put_neighbour_lists(lists)
            if first % 100_000 == 0:
                print(f"    lists from {first:,}, {peak_rss_gb():.1f} GB peak", flush=True)


EXACT_LISTS_UP_TO = 20_000  # above: neighbours by a random projection (see neighbour_lists)
PROJECTED_DIMENSIONS = 128


def neighbour_lists(
    ids: list[str], features: np.ndarray
) -> Iterator[tuple[int, dict[str, tuple[list[tuple[str, float]], int]]]]:
    """Each image's K nearest (cosine distance), a block of rows at a time. Exact up to
    EXACT_LISTS_UP_TO images; above, the K nearest by a random projection to
    PROJECTED_DIMENSIONS (the exact comparison of 100k x 100k vectors takes most of an hour
    on one core here), with their exact distances: lists that are nearly the nearest (so a new
    image is offered to a few more of them than with exact lists: if anything, more writes)."""
    size = len(ids)
    search = features
    if size > EXACT_LISTS_UP_TO:
        projection = np.random.default_rng(0).normal(size=(features.shape[1], PROJECTED_DIMENSIONS))
        search = normalise(features @ projection.astype(np.float32))
    rows = min(1000, max(100, 50_000_000 // size))  # a block of similarities <= 200 MB
    for start in range(0, size, rows):
        block = slice(start, start + rows)
        similarity = search[block] @ search.T
        lists = {}
        for row, row_similarity in enumerate(similarity, start):
            row_similarity[row] = -np.inf
            nearest = np.argpartition(-row_similarity, K)[:K]
            distances = 1.0 - features[nearest] @ features[row]
            order = np.argsort(distances)
            lists[ids[row]] = (
                [(ids[nearest[i]], round(float(distances[i]), 6)) for i in order],
                0,
            )
        yield start, lists


def normalise(rows: np.ndarray) -> np.ndarray:
    return rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12)


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


@contextmanager
def straight_into_moto(table: Any, vector_bucket: Any) -> Iterator[None]:
    """The catalog's batched writes and the vector writer's puts go to moto's backends in this
    process, as the same items, without HTTP and JSON (the setup is not measured)."""
    from moto.core.models import DEFAULT_ACCOUNT_ID
    from moto.dynamodb.models import dynamodb_backends
    from moto.s3vectors.models import s3vectors_backends

    from imgsearch.storage.aws import _outgoing_items

    region = os.environ["AWS_DEFAULT_REGION"]
    dynamodb = dynamodb_backends[DEFAULT_ACCOUNT_ID][region]
    client = table._client

    class Direct:
        def __getattr__(self, name: str) -> Any:
            return getattr(client, name)

        def batch_write_item(self, RequestItems: dict[str, Any]) -> dict[str, Any]:
            # The table sends a placeholder and hands its items to botocore's hook (ItemCodec),
            # which this stand-in for the client replaces: it takes them as the hook would.
            for name, writes in (_outgoing_items.take() or RequestItems).items():
                for write in writes:
                    dynamodb.put_item(name, write["PutRequest"]["Item"])
            return {"UnprocessedItems": {}}

    shared: dict[float, float] = {}

    def put(index: str, vectors: list[dict[str, Any]]) -> None:
        for vector in vectors:
            values = np.asarray(vector["data"]["float32"], np.float16).astype(np.float32)
            vector["data"] = {"float32": [shared.setdefault(v, v) for v in values.tolist()]}
        s3vectors_backends[DEFAULT_ACCOUNT_ID]["aws"].put_vectors(  # one per partition
            vector_bucket_name=vector_bucket.bucket,
            index_name=index,
            index_arn=None,
            vectors=vectors,
        )

    table._client = Direct()
    if vector_bucket is not None:
        vector_bucket.put = put
    try:
        yield
    finally:
        table._client = client
        if vector_bucket is not None:
            del vector_bucket.put


@functools.cache
def photos() -> list[tuple[str, bytes]]:
    """The demo photos, then each of them mirrored (other bytes, so another image, near its
    original: more photos for the backlogs than demo/ holds)."""
    originals = [
        (key, path.read_bytes())
        for key, path in files_under(REPO / "demo")
        if path.suffix.lower() in {".jpg", ".jpeg", ".png"}
    ]
    return originals + [(f"mirrored/{key}", mirrored(data)) for key, data in originals]


def mirrored(data: bytes) -> bytes:
    from PIL import Image, ImageOps

    with Image.open(io.BytesIO(data)) as image:
        out = io.BytesIO()
        ImageOps.mirror(image.convert("RGB")).save(out, "JPEG", quality=90)
        return out.getvalue()


# The run ------------------------------------------------------------------------------------


@dataclass
class Run:
    engine: str
    size: int
    images: int = 0
    ingest: Tally = field(default_factory=Tally)
    ingest_seconds: float = 0.0  # apply_event, summed over images
    build_seconds: float = 0.0  # recover (the index build), summed over batches
    # The same as Lambda would see them: the handler's own CPU (its thread) plus the latency
    # injected, without moto's time or this machine's contention.
    ingest_model: float = 0.0
    build_model: float = 0.0
    publish_model: float = 0.0  # of build_model: the engine's writer (a fixed cost per build)
    builds: int = 0
    # The lease's renewals: sent here (wall clock, not counted in `ingest`), and those the
    # builds would send on Lambda (counted in `ingest` as PutItem).
    heartbeats_measured: int = 0
    heartbeats_on_lambda: int = 0
    # The sustained ingest (`sustained_ingest`): a backlog built at once, counted apart.
    backlog: Tally = field(default_factory=Tally)
    backlog_images: int = 0
    backlog_ingest_model: float = 0.0
    backlog_build_model: float = 0.0
    backlog_builds: int = 0
    backlog_invocations: int = 0
    # Every backlog built (--backlog N1 N2 ...): [images, ingest s, build s, invocations]
    # as on Lambda, and each batch the builder applied in them: [images, s as on Lambda]
    # (`IndexBuilder._apply`), for the steady-state model (`steady_state`).
    backlogs: list[list[float]] = field(default_factory=list)
    batch_log: list[list[float]] = field(default_factory=list)
    batches: int = 0
    cold: dict[str, tuple[float, Tally]] = field(default_factory=dict)
    cold_model: dict[str, float] = field(default_factory=dict)
    queries: dict[str, list[float]] = field(default_factory=dict)
    queries_model: dict[str, list[float]] = field(default_factory=dict)
    query_requests: dict[str, Tally] = field(default_factory=dict)
    stored: Counter[str] = field(default_factory=Counter)  # bucket bytes by top prefix
    outside: bool = False  # the collection kept outside moto (bench/cloud_synthetic.py)
    cpu_scale: float = 1.0  # the function's CPU seconds multiplied by this (`cpu_scale`)
    logging_batches: bool = False  # a backlog is being built: batches go to batch_log


def run(engine: str, size: int, args: argparse.Namespace) -> Run:
    result = Run(engine, size, cpu_scale=cpu_scale)
    port = _free_port()
    with tempfile.TemporaryDirectory() as scratch_dir:
        scratch = Path(scratch_dir)
        saved = dict(os.environ)
        os.environ.update(
            AWS_ACCESS_KEY_ID="bench",
            AWS_SECRET_ACCESS_KEY="bench",
            AWS_DEFAULT_REGION="us-east-1",
            AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}",
            **environment(engine, scratch),
        )
        get_settings.cache_clear()
        install_query_vectors()
        install_cheap_transactions()
        follow_chains_into_pools()
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        server.start()
        # moto's backends are this process's: another run's resources are still there.
        urllib.request.urlopen(
            urllib.request.Request(f"http://127.0.0.1:{port}/moto-api/reset", method="POST")
        ).close()
        try:
            boto3.setup_default_session()
            wire = Wire(args.latency_scale)
            wire.install(boto3.DEFAULT_SESSION)
            with lambda_logging():
                _run(result, wire, scratch, args)
        finally:
            server.stop()
            os.environ.clear()
            os.environ.update(saved)
            get_settings.cache_clear()
    return result


def _run(result: Run, wire: Wire, scratch: Path, args: argparse.Namespace) -> None:
    s3, sqs = boto3.client("s3"), boto3.client("sqs")
    create_bucket(s3, BUCKET)
    create_tables(boto3.client("dynamodb"), TABLES)
    if result.engine == "s3vectors":
        create_vector_indexes(
            boto3.client("s3vectors"), VECTOR_BUCKET, os.environ["IMGSEARCH_VECTOR_INDEX"]
        )
    queues = create_queues(sqs, QUEUES)
    configure_notifications(s3, BUCKET, {q: arn for q, (_, arn) in queues.items()})
    # S3 sends an s3:TestEvent when the notifications are configured: once per deployment,
    # not per image (counted, it made the first batch one image short, and a build of its own).
    sqs.purge_queue(QueueUrl=queues["ImageQueue"][0])
    parameter = load_template()["Parameters"]["ApiKeyParameterName"]["Default"]
    boto3.client("ssm").put_parameter(Name=parameter, Value=API_KEY, Type="SecureString")

    started = time.perf_counter()
    settings = Settings()  # the functions' environment
    setup = ImageSearch(settings)
    outside = result.size >= args.outside_from
    (populate_outside if outside else populate)(setup, result.size, seed=result.size)
    setup.close()
    result.outside = outside
    print(
        f"  {result.engine} {result.size}: populated{' (outside moto)' if outside else ''} "
        f"in {time.perf_counter() - started:.0f} s, {peak_rss_gb():.1f} GB peak",
        flush=True,
    )

    # Ingest: photos into the bucket, the embed function through the queue.
    embed = load_function("embed")
    timed_service(embed.service, result, wire)
    url, arn = queues["ImageQueue"]
    poller = QueuePoller(sqs, url, arn, embed.handler)
    batch = template_default("EmbedBatchSize")
    sample = photos()[: args.photos]
    heartbeats = wire.heartbeats
    for start in range(0, len(sample), batch):
        for key, data in sample[start : start + batch]:
            s3.put_object(Bucket=BUCKET, Key=f"images/bench/{key}", Body=data)
        with wire.counting(result.ingest):
            while poller.poll(batch) is not None:
                result.batches += 1
    result.images = len(sample)
    result.heartbeats_measured = wire.heartbeats - heartbeats
    result.ingest.requests["PutItem"] += result.heartbeats_on_lambda
    result.ingest.write_units += result.heartbeats_on_lambda  # a lease row is under 1 KB
    if args.backlog and args.photos:  # --photos 0: cold starts and queries only
        skip = args.photos
        for count in args.backlog:
            sustained_ingest(result, wire, embed, poller, skip, count)
            skip += count

    # Cold starts: a fresh module, as Lambda's init, then (search) one query.
    for name in ("search", "embed"):
        # A new sandbox has an empty /tmp: nothing cached by the functions before it.
        os.environ["IMGSEARCH_CACHE_DIR"] = str(scratch / f"cold-{name}")
        get_settings.cache_clear()
        tally = Tally()
        with wire.counting(tally):
            began, cpu, mark = time.perf_counter(), function_cpu(), wire.mark()
            function = load_function(name)
            if name == "search":
                function.service.parts.index.refresh_interval = 0
                api = gateway(function)
                assert api.request("GET", "/api/search", params={"q": "dog"}).status == 200
            seconds = time.perf_counter() - began
        result.cold[name] = (seconds, tally)
        result.cold_model[name] = cpu_since(cpu) + wire.waited_since(mark)
        if name == "search":
            search = function

    # Queries on the warm search function.
    api = gateway(search, load_function("feedback"))
    ids = [
        r["id"]
        for r in api.request("GET", "/api/search", params={"q": "dog", "limit": 50}).json()[
            "results"
        ]
    ]
    for image_id in ids[:5]:  # votes, so that "dog" has a learned ranking
        vote = {"query": "dog", "image_id": image_id, "vote": 1, "session": f"s{image_id}"}
        api.request("POST", "/api/feedback", json_body=vote)
    body, headers = multipart_file(photos()[0][1])
    words = ["cat", "car", "bird", "boat", "flower", "tree", "house", "chair", "ball", "shoe"]
    kinds = {
        "similar": lambda n: api.request("GET", f"/api/images/{ids[n % len(ids)]}/similar"),
        "reverse": lambda n: api.request("POST", "/api/search/image", body=body, headers=headers),
        "keyword": lambda n: api.request("GET", "/api/search", params={"q": words[n % len(words)]}),
        "learned": lambda n: api.request(
            "GET", "/api/search", params={"q": "dog", "offset": n % 3}
        ),
        # The page's first request (web/js/boot.js): the newest 48, then the next screens,
        # within the newest the state keeps (a deeper page lists the index: not measured).
        "browse": lambda n: api.request(
            "GET", "/api/images", params={"limit": 48, "offset": 48 * (n % 40)}
        ),
    }
    for kind, ask in kinds.items():
        times, modelled, tally = [], [], Tally()
        for n in range(args.queries):
            with wire.counting(tally):
                began, cpu, mark = time.perf_counter(), function_cpu(), wire.mark()
                response = ask(n)
                times.append(time.perf_counter() - began)
                modelled.append(cpu_since(cpu) + wire.waited_since(mark))
            assert response.status == 200, (kind, response.status, response.body[:200])
        result.queries[kind], result.query_requests[kind] = times, tally
        result.queries_model[kind] = modelled
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET):
        for item in page.get("Contents", []):
            result.stored[item["Key"].split("/", 1)[0]] += item["Size"]


def sustained_ingest(
    result: Run, wire: Wire, embed: Any, poller: QueuePoller, skip: int, count: int
) -> None:
    """The template's concurrency, as its builds see it: while one function builds (holding
    the lease), the others ingest their batches and find the lease taken, so what they queue
    waits for one build of the whole backlog. `count` more photos are ingested batch by batch
    while this process holds the lease (its renewals are not counted), then the embed
    function's schedule builds them at once. Counted apart (`result.backlog`: the first
    backlog's requests; every backlog's seconds in `result.backlogs`, each batch's in
    `result.batch_log`)."""
    s3 = boto3.client("s3")
    batch = template_default("EmbedBatchSize")
    sample = photos()[skip : skip + count]
    assert len(sample) == count, f"{count} photos wanted for a backlog, {len(sample)} left"
    first = not result.backlogs
    tally = result.backlog if first else Tally()
    held = Lease(embed.service.parts.catalog.table, "indexer", LEASE_SECONDS)
    assert held.acquire(), "the index lease should be free between batches"
    before = (
        result.ingest_model,
        result.build_model,
        result.heartbeats_on_lambda,
        result.publish_model,
        result.builds,
    )
    with held.heartbeat():
        for start in range(0, len(sample), batch):
            for key, data in sample[start : start + batch]:
                s3.put_object(Bucket=BUCKET, Key=f"images/backlog/{key}", Body=data)
            with wire.counting(tally):
                while poller.poll(batch) is not None:
                    pass
    held.release()
    built, invocations = 0, 0
    result.logging_batches = True
    with wire.counting(tally):
        # The builder ingested at most its own batch of what it builds: the embeddings of the
        # others' images are read from the bucket, not from its memory (here: all of them).
        embed.service.parts.catalog._fresh_embeddings.clear()
        # A build stops within its time budget, which goes by the wall clock (moto's here):
        # what it leaves, the next invocations build, as the schedule's would.
        for _ in range(10):
            report = embed.handler(scheduled_event(), FakeContext())
            built += report["added"]
            invocations += 1
            if not report["out_of_time"]:
                break
    result.logging_batches = False
    if built != len(sample):
        print(f"  backlog: {built} of {len(sample)} built: {report}")
    ingest_model = result.ingest_model - before[0]
    build_model = result.build_model - before[1]
    result.backlogs.append([len(sample), ingest_model, build_model, invocations])
    if first:
        result.backlog_images = len(sample)
        result.backlog_ingest_model, result.backlog_build_model = ingest_model, build_model
        renewals = result.heartbeats_on_lambda - before[2]
        result.backlog.requests["PutItem"] += renewals
        result.backlog.write_units += renewals
        result.backlog_builds = result.builds - before[4]
        result.backlog_invocations = invocations
    (
        result.ingest_model,
        result.build_model,
        result.heartbeats_on_lambda,
        result.publish_model,
        result.builds,
    ) = before


def multipart_file(data: bytes) -> tuple[bytes, dict[str, str]]:
    """A multipart/form-data body with one file field, `file` (as a browser sends it)."""
    boundary = "imgsearch-bench-boundary"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; '
        'filename="photo.jpg"\r\nContent-Type: image/jpeg\r\n\r\n'
    )
    body = head.encode() + data + f"\r\n--{boundary}--\r\n".encode()
    return body, {"content-type": f"multipart/form-data; boundary={boundary}"}


def gateway(search: Any, feedback: Any = None) -> ApiGateway:
    functions = {"SearchFunction": search.handler}
    if feedback is not None:
        functions["FeedbackFunction"] = feedback.handler
    return ApiGateway(functions, {})


def timed_service(service: ImageSearch, result: Run, wire: Wire) -> None:
    """Time the embed function's two phases: each image's ingest, each batch's build."""
    apply, recover = service.apply_event, service.recover

    def timed_apply(*a: Any, **kw: Any) -> Any:
        began, cpu, mark = time.perf_counter(), function_cpu(), wire.mark()
        try:
            return apply(*a, **kw)
        finally:
            result.ingest_seconds += time.perf_counter() - began
            result.ingest_model += cpu_since(cpu) + wire.waited_since(mark)

    def timed_recover(*a: Any, **kw: Any) -> Any:
        began, cpu, mark = time.perf_counter(), function_cpu(), wire.mark()
        report = None
        try:
            report = recover(*a, **kw)
            return report
        finally:
            modelled = cpu_since(cpu) + wire.waited_since(mark)
            if report is not None and report.busy:  # another function builds: this one ingests
                result.ingest_seconds += time.perf_counter() - began
                result.ingest_model += modelled
            else:
                result.build_seconds += time.perf_counter() - began
                result.build_model += modelled
                result.heartbeats_on_lambda += heartbeats_on_lambda(modelled)

    writer = service.parts.builder.writer
    publish = writer.publish

    def timed_publish(*a: Any, **kw: Any) -> Any:
        cpu, mark = function_cpu(), wire.mark()
        try:
            return publish(*a, **kw)
        finally:
            result.publish_model += cpu_since(cpu) + wire.waited_since(mark)
            result.builds += 1

    builder = service.parts.builder
    apply_batch = builder._apply

    def timed_batch(batch: Any, *a: Any, **kw: Any) -> Any:
        cpu, mark = function_cpu(), wire.mark()
        try:
            return apply_batch(batch, *a, **kw)
        finally:
            modelled = cpu_since(cpu) + wire.waited_since(mark)
            if result.logging_batches:
                result.batch_log.append([len(batch), modelled])

    service.apply_event = timed_apply  # type: ignore[method-assign]
    service.recover = timed_recover  # type: ignore[method-assign]
    writer.publish = timed_publish  # type: ignore[method-assign]
    builder._apply = timed_batch  # type: ignore[method-assign]


# The report ---------------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def report(runs: list[Run]) -> None:
    concurrency = template_default("EmbedMaxConcurrency")
    batch = template_default("EmbedBatchSize")
    print(f"\nlatency injected (s): {LATENCY}; others {OTHER_LATENCY}")
    print(f"transfer: {S3_BYTES_PER_SECOND / 1e6:.0f} MB/s a request")
    print(f"template: EmbedBatchSize {batch}, EmbedMaxConcurrency {concurrency}")
    print("seconds: wall clock here / as on Lambda (the handler's CPU + the latency injected)")
    print("\n## Ingest, per image (measured)\n")
    print("| engine | images | requests | sent B | received B | ingest s | build s | images/s |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    ingested = [r for r in runs if r.images]  # --photos 0: cold starts and queries only
    for r in ingested:
        n = r.images
        rate = rate_of(r, concurrency)
        print(
            f"| {r.engine} | {r.size:,} | {sum(r.ingest.requests.values()) / n:.1f} "
            f"| {r.ingest.sent / n:,.0f} | {r.ingest.received / n:,.0f} "
            f"| {r.ingest_seconds / n:.3f} / {r.ingest_model / n:.3f} "
            f"| {r.build_seconds / n:.3f} / {r.build_model / n:.3f} | {rate:.1f} |"
        )
    for r in ingested:
        detail = ", ".join(f"{op} {c / r.images:.2f}" for op, c in r.ingest.requests.most_common())
        print(f"\n{r.engine} {r.size:,}, requests per image: {detail}")
        print(
            f"  lease renewals: {r.heartbeats_on_lambda} as on Lambda (in PutItem above), "
            f"{r.heartbeats_measured} sent here (wall clock, not counted)"
        )
        print(
            f"  builds {r.builds}, publication {r.publish_model / max(r.builds, 1):.3f} s each "
            f"(Lambda), the rest of a build {(r.build_model - r.publish_model) / r.images:.3f}"
            " s per image"
        )
    for r in runs:
        if not r.backlog_images:
            continue
        n = r.backlog_images
        detail = ", ".join(f"{op} {c / n:.2f}" for op, c in r.backlog.requests.most_common())
        print(
            f"\n{r.engine} {r.size:,}, sustained (a backlog of {n}: {r.backlog_builds} builds in "
            f"{r.backlog_invocations} invocations): "
            f"ingest {r.backlog_ingest_model / n:.3f} s, build {r.backlog_build_model / n:.3f} s "
            f"per image (Lambda); steady state (below) {rate_of(r, concurrency):.1f} images/s; "
            f"{sum(r.backlog.requests.values()) / n:.1f} requests per image: {detail}"
        )
    for r in runs:
        for images, ingest, build, invocations in r.backlogs:
            print(
                f"  {r.engine} {r.size:,}: a backlog of {images:.0f} built in {build:.2f} s "
                f"({invocations:.0f} invocations; {build / images:.3f} s an image), ingested "
                f"at {ingest / images:.3f} s an image (Lambda)"
            )
        steady = steady_state(r, concurrency)
        if steady is not None:
            batches = ", ".join(f"{b:.0f}: {t:.2f} s" for b, t in r.batch_log)
            print(
                f"  {r.engine} {r.size:,} steady state: a batch of B takes "
                f"{steady.per_batch:.3f} + {steady.per_image:.4f} x B s, an invocation "
                f"{steady.per_invocation:.3f} s more (batches {batches}); within a budget of "
                f"{steady.budget:.1f} s the builder keeps up with {steady.build_rate:.1f} "
                f"images/s, ingest with {(concurrency - 1) / steady.ingest:.1f} "
                f"-> {steady.rate:.1f} images/s"
            )
    print(
        "\nimages/s: with backlogs of two sizes built (--backlog N1 N2), the steady state: "
        "each batch's seconds fitted as a + b x images, the builder's throughput with a queue "
        "that never empties (its own batch sizing within the invocation's budget), and "
        "min(that, (concurrency - 1) / ingest s). With one backlog, min(concurrency x images "
        "/ ingest s, images / build s) over it. Without, min(concurrency / ingest s, 1 / "
        "(build s - publication s per image)) of the batches."
    )
    print("\n## Cold start: init and (search) the first answer\n")
    print("| engine | images | function | seconds | requests | bytes read | |")
    print("|---|---:|---|---:|---:|---:|---|")
    for r in runs:
        for name, (seconds, tally) in r.cold.items():
            print(
                f"| {r.engine} | {r.size:,} | {name} | {seconds:.2f} / {r.cold_model[name]:.2f} "
                f"| {sum(tally.requests.values())} | {tally.received:,} | measured |"
            )
    for key, (seconds, received, size) in extrapolate_cold(runs).items():
        engine, name = key.split(":")
        for target in EXTRAPOLATED:
            grown, est = received, seconds
            if engine == "annoy":  # every shard is read: bytes grow with the collection
                grown = received / size * target
                est = seconds + (grown - received) / S3_BYTES_PER_SECOND
            print(f"| {engine} | {target:,} | {name} | {est:.2f} | | {grown:,.0f} | extrapolated |")
    print("\n## Queries on a warm search function (seconds: here / as on Lambda)\n")
    print("| engine | images | kind | p50 | p99 | requests a query | by operation |")
    print("|---|---:|---|---:|---:|---:|---|")
    for r in runs:
        for kind, times in r.queries.items():
            tally, model, count = r.query_requests[kind], r.queries_model[kind], len(times)
            detail = ", ".join(f"{op} {c / count:.1f}" for op, c in tally.requests.most_common())
            print(
                f"| {r.engine} | {r.size:,} | {kind} "
                f"| {percentile(times, 50):.3f} / {percentile(model, 50):.3f} "
                f"| {percentile(times, 99):.3f} / {percentile(model, 99):.3f} "
                f"| {sum(tally.requests.values()) / count:.1f} | {detail} |"
            )
    print("\n## Goals (issue 15), as on Lambda\n")
    for r in runs:
        n = r.images
        per_image = sum(r.ingest.requests.values()) / n if n else float("nan")
        rate = rate_of(r, concurrency) if n else float("nan")
        p50 = max(percentile(t, 50) for t in r.queries_model.values())
        cold = r.cold_model["search"]
        scaled = f" (CPU x{r.cpu_scale:g})" if r.cpu_scale != 1 else ""
        print(
            f"- {r.engine} {r.size:,}{scaled}: {per_image:.1f} requests per image "
            f"({_met(per_image <= REQUESTS_GOAL) if n else 'not run'}: <= {REQUESTS_GOAL:.0f}); "
            f"{rate:.1f} images/s ({_met(rate >= INGEST_GOAL) if n else 'not run'}: "
            f">= {INGEST_GOAL:.0f}); slowest p50 {p50:.3f} s "
            f"({_met(p50 <= QUERY_P50_GOAL)}: <= {QUERY_P50_GOAL}); "
            f"search cold start {cold:.2f} s at this size ({_met(cold <= COLD_START_GOAL)})"
        )


def _met(condition: bool) -> str:
    return "met" if condition else "NOT met"


# Prices: us-east-1 list prices, without free tiers (see docs/deploy.md, "Costs", for sources).
GB = 1024**3
LAMBDA_GB_SECOND, LAMBDA_REQUEST, MEMORY_GB = 0.0000166667, 0.20e-6, 1769 / 1024
HTTP_API_REQUEST = 1.00e-6
S3_GB_MONTH, S3_PUT, S3_GET = 0.023, 0.005e-3, 0.0004e-3
DYNAMODB_WRU, DYNAMODB_RRU, DYNAMODB_GB_MONTH, PITR_GB_MONTH = 0.625e-6, 0.125e-6, 0.25, 0.20
SQS_REQUEST = 0.40e-6
VECTORS_GB_MONTH, VECTORS_PUT_GB, VECTORS_QUERY = 0.06, 0.20, 2.50e-6
VECTORS_TB_FIRST_100K, VECTORS_TB_BEYOND = 0.004, 0.002  # per TB a query processes
VECTORS_PUT_MINIMUM = 128 * 1024  # bytes billed per PutVectors at least
CLOUDFRONT_GB, CLOUDFRONT_REQUEST = 0.085, 0.0100e-4  # US, first 10 TB; HTTPS per request
LOGS_GB = 0.50
# Usage assumed (the old table's): photos of 1 MB, thumbnails of 25 KB, 20 thumbnails a
# search; searches a day by collection size; 2.5 KB of DynamoDB items an image; 0.6 KB of
# logs per invocation; a cold start per function per hour plus one per 1,000 invocations.
PHOTO_BYTES, THUMBNAIL_BYTES, THUMBNAILS_PER_SEARCH = 1e6, 25e3, 20
SEARCHES_A_DAY = {10_000: 1_000, 100_000: 10_000, 1_000_000: 100_000}
TABLE_BYTES_PER_IMAGE, LOG_BYTES = 2500, 600
VECTOR_BYTES = {"features": 4 * 1280 + 40, "classes": 4 * 1002 + 24}  # data, key, metadata
WRITES = ("PutItem", "UpdateItem", "DeleteItem", "BatchWriteItem")
READS = ("GetItem", "Query", "Scan", "BatchGetItem")


def request_costs(tally: Tally, per: float, size: int) -> dict[str, float]:
    """Dollars of `tally`'s AWS requests divided by `per`, by service; `size` vectors an index."""
    n = tally.requests

    def units(ops: tuple[str, ...], unit: int, bytes_by: Counter[str]) -> float:
        return sum(max(n[op], bytes_by[op] / unit) for op in ops)

    wru, rru = tally.write_units, tally.read_units
    if not wru:  # a run saved before units were counted: a request or its bytes at least
        wru = units(WRITES, 1024, tally.sent_by) + 2 * max(
            n["TransactWriteItems"], tally.sent_by["TransactWriteItems"] / 1024
        )
        rru = units(READS, 4096, tally.received_by) + 2 * n["TransactGetItems"]
    processed = sum(VECTOR_BYTES.values()) / 2 * size / 1024**4  # TB, either index
    per_tb = (
        min(size, 100_000) * VECTORS_TB_FIRST_100K + max(size - 100_000, 0) * VECTORS_TB_BEYOND
    ) / max(size, 1)
    costs = {
        "DynamoDB": wru * DYNAMODB_WRU + rru * DYNAMODB_RRU,
        "S3 requests": (n["PutObject"] + n["CopyObject"] + n["ListObjectsV2"]) * S3_PUT
        + (n["GetObject"] + n["HeadObject"]) * S3_GET,
        "SQS": (n["ReceiveMessage"] + n["DeleteMessage"] + n["ChangeMessageVisibility"])
        * SQS_REQUEST,
        "S3 Vectors requests": n["QueryVectors"] * (VECTORS_QUERY + processed * per_tb)
        + (n["GetVectors"] + n["ListVectors"] + n["DeleteVectors"]) * VECTORS_QUERY
        + max(n["PutVectors"] * VECTORS_PUT_MINIMUM, tally.sent_by["PutVectors"])
        / GB
        * VECTORS_PUT_GB,
    }
    return {name: dollars / per for name, dollars in costs.items()}


def query_mix(r: Run) -> tuple[Tally, int]:
    """An equal mix of the run's query kinds: their requests, and the queries answered."""
    mix = Tally()
    for kind in r.queries_model:
        mix.add(r.query_requests[kind])
    return mix, sum(len(times) for times in r.queries_model.values())


def monthly_costs(r: Run, size: int, units: Run | None = None) -> dict[str, dict[str, float]]:
    """Dollars: ingesting `size` images once, storing them a month, a month of queries.
    DynamoDB's from `units` (a run that counted capacity units item by item) if `r` did not."""
    batch = template_default("EmbedBatchSize")
    per_image = request_costs(r.ingest, r.images, size)
    if units is not None and not r.ingest.write_units:
        per_image["DynamoDB"] = request_costs(units.ingest, units.images, size)["DynamoDB"]
    embed_seconds = (r.ingest_model + r.build_model) / r.images
    ingest = {name: dollars * size for name, dollars in per_image.items()}
    ingest["SQS"] += size * SQS_REQUEST  # S3's notification, not a client call
    ingest["Lambda (embed)"] = size * (
        embed_seconds * MEMORY_GB * LAMBDA_GB_SECOND + LAMBDA_REQUEST / batch
    )
    # Every photo the run ingested left its thumbnails and embedding in the bucket, the
    # backlogs' too.
    ingested = r.images + (sum(int(b[0]) for b in r.backlogs) or r.backlog_images)
    derived = (r.stored["thumbnails"] + r.stored["embeddings"]) / ingested
    index_bytes = r.stored["index"] / (r.size + ingested)
    storage = {
        "S3 originals": size * PHOTO_BYTES / GB * S3_GB_MONTH,
        "S3 thumbnails, embeddings, index": size * (derived + index_bytes) / GB * S3_GB_MONTH,
        "DynamoDB (with PITR)": size
        * TABLE_BYTES_PER_IMAGE
        / GB
        * (DYNAMODB_GB_MONTH + PITR_GB_MONTH),
    }
    if r.engine == "s3vectors":
        storage["S3 Vectors"] = size * sum(VECTOR_BYTES.values()) / GB * VECTORS_GB_MONTH
    searches = 30 * SEARCHES_A_DAY[size]
    kinds = list(r.queries_model)
    per_query = request_costs(*query_mix(r), size)
    if units is not None and not r.ingest.write_units:
        per_query["DynamoDB"] = request_costs(*query_mix(units), size)["DynamoDB"]
    seconds = statistics.fmean(t for k in kinds for t in r.queries_model[k])
    thumbnails = searches * THUMBNAILS_PER_SEARCH
    invocations = searches + size / batch
    cold_starts = 2 * 720 + invocations / 1000
    init = statistics.fmean(r.cold_model.values())
    queries = {name: dollars * searches for name, dollars in per_query.items()}
    queries |= {
        "HTTP API": searches * HTTP_API_REQUEST,
        "Lambda (search)": searches * (seconds * MEMORY_GB * LAMBDA_GB_SECOND + LAMBDA_REQUEST),
        "Lambda init (billed), search and embed": cold_starts * init * MEMORY_GB * LAMBDA_GB_SECOND,
        "CloudFront thumbnails": thumbnails
        * (CLOUDFRONT_REQUEST + THUMBNAIL_BYTES / GB * CLOUDFRONT_GB)
        + size * S3_GET,  # each thumbnail from the bucket about once a month
        "CloudWatch Logs": invocations * LOG_BYTES / GB * LOGS_GB,
    }
    return {"ingest, once": ingest, "storage, a month": storage, "queries, a month": queries}


def print_costs(runs: list[Run]) -> None:
    print("\n## Costs (us-east-1 list prices; formulas in the code and docs/deploy.md)\n")
    sizes = sorted(SEARCHES_A_DAY)
    print("| engine | part | item | " + " | ".join(f"{s:,} images" for s in sizes) + " |")
    print("|---|---|---|" + "---:|" * len(sizes))
    for engine in dict.fromkeys(r.engine for r in runs):
        priced = (r for r in runs if r.engine == engine and r.images)
        measured = sorted(priced, key=lambda r: r.size)
        if not measured:
            continue
        # Each size priced from its own run, else from the largest run below it (else the
        # smallest): requests per image and per query do not grow with the size.
        units = next((r for r in measured if r.ingest.write_units), None)
        tables = {
            size: monthly_costs(
                next((r for r in reversed(measured) if r.size <= size), measured[0]), size, units
            )
            for size in sizes
        }
        if units is not None:
            print(f"| {engine} | DynamoDB units item by item from the run at | | {units.size:,} |")
        print(
            f"| {engine} | priced from runs at | | "
            + " | ".join(
                f"{next((r for r in reversed(measured) if r.size <= s), measured[0]).size:,}"
                for s in sizes
            )
            + " |"
        )
        for part, items in tables[sizes[0]].items():
            for item in items:
                values = " | ".join(f"${tables[s][part][item]:,.2f}" for s in sizes)
                print(f"| {engine} | {part} | {item} | {values} |")
            totals = " | ".join(f"**${sum(tables[s][part].values()):,.2f}**" for s in sizes)
            print(f"| {engine} | {part} | **total** | {totals} |")


def print_switch(runs: list[Run]) -> None:
    """Where Annoy stops fitting: its search cold start (Lambda's seconds) fitted as a + b x
    images over the measured sizes, and its index bytes against the template's cache."""
    measured = sorted(
        (r for r in runs if r.engine == "annoy" and "search" in r.cold), key=lambda r: r.size
    )
    if len({r.size for r in measured}) < 2:
        return
    sizes = np.array([r.size for r in measured], float)
    seconds = np.array([r.cold_model["search"] for r in measured])
    read = np.array([r.cold["search"][1].received for r in measured], float)
    slope, start = np.polyfit(sizes, seconds, 1)
    per_image = float(np.polyfit(sizes, read, 1)[0])
    cache = template_default("IndexCacheSize") * 1024**2
    print("\n## When to switch from Annoy to S3 Vectors (measured runs, a straight-line fit)\n")
    print(
        f"annoy search cold start = {start:.2f} s + {slope * 1e6:.2f} s per million images; "
        f"{per_image:,.0f} bytes read per image"
    )
    for limit, what in ((COLD_START_GOAL, "the 2 s goal"), (10.0, "Lambda's 10 s init")):
        print(f"- past {what} from {(limit - start) / slope:,.0f} images")
    megabytes = cache / 1024**2
    print(
        f"- past IndexCacheSize ({megabytes:,.0f} MB of /tmp) from {cache / per_image:,.0f} images"
    )


def save(run: Run, path: Path) -> None:
    """Append `run` to `path` (JSON lines), for --combine."""

    def tally(t: Tally) -> dict[str, Any]:
        return {
            **{k: v for k, v in vars(t).items()},
            "requests": dict(t.requests),
            "sent_by": dict(t.sent_by),
            "received_by": dict(t.received_by),
        }

    data = {
        **vars(run),
        "ingest": tally(run.ingest),
        "backlog": tally(run.backlog),
        "cold": {name: [seconds, tally(t)] for name, (seconds, t) in run.cold.items()},
        "query_requests": {kind: tally(t) for kind, t in run.query_requests.items()},
        "stored": dict(run.stored),
    }
    with path.open("a") as out:
        out.write(json.dumps(data) + "\n")


def load(path: Path) -> list[Run]:
    def tally(d: dict[str, Any]) -> Tally:
        counters = {k: Counter(d[k]) for k in ("requests", "sent_by", "received_by")}
        return Tally(**{**d, **counters})

    runs = []
    for line in path.read_text().splitlines():
        d = json.loads(line)
        d["ingest"] = tally(d["ingest"])
        if "backlog" in d:
            d["backlog"] = tally(d["backlog"])
        d["cold"] = {name: (seconds, tally(t)) for name, (seconds, t) in d["cold"].items()}
        d["query_requests"] = {kind: tally(t) for kind, t in d["query_requests"].items()}
        d["stored"] = Counter(d["stored"])
        runs.append(Run(**d))
    return runs


def sustained(ingest: float, build: float, concurrency: int) -> float:
    """Images a second: `concurrency` functions ingest at once, one builds at a time (the
    lease); `build` is a build's cost per image without its fixed part (the engine's
    publication), which a backlog spreads over all that is queued (builds coalesce)."""
    return min(concurrency / ingest, 1 / build) if ingest and build else float("nan")


@dataclass
class SteadyState:
    """The index build's cost as on Lambda, fitted over the batches of the backlogs built
    (`Run.batch_log`): a batch of B images takes `per_batch` + `per_image` x B seconds, an
    invocation's build `per_invocation` more (lease, queue reads, garbage collection)."""

    per_image: float
    per_batch: float
    per_invocation: float
    ingest: float  # seconds an image, as on Lambda, in the functions that ingest
    budget: float  # seconds a build may take in one invocation (handlers.build_budget)
    build_rate: float  # images a second the builder keeps up with, the queue never empty
    rate: float  # the sustained rate: min(ingest side, build_rate)


def steady_state(r: Run, concurrency: int) -> SteadyState | None:
    """The sustained rate, from the backlogs' batches (at least two batch sizes).

    Under a steady load the queue grows while a build runs, so the next build takes a
    bigger batch: a build's fixed part spreads over more images and the rate tends to
    1 / per_image, bounded by what one invocation builds within its budget (the builder's
    own rule: a first batch of FIRST_BATCH, then each sized to half the time left, at most
    BATCH_SIZE; every batch pays `per_batch`). The highest rate the builder keeps up with is
    therefore its throughput with a queue that never empties (`saturated_build_rate`), the
    batch costs extrapolated linearly beyond the sizes measured. Ingest runs in the other
    `concurrency` - 1 functions meanwhile (one of them is the builder)."""
    sizes = np.array([b[0] for b in r.batch_log], float)
    seconds = np.array([b[1] for b in r.batch_log], float)
    if len(set(sizes.tolist())) < 2 or not r.backlogs:
        return None
    per_image, per_batch = (float(x) for x in np.polyfit(sizes, seconds, 1))
    built = sum(b[2] for b in r.backlogs)
    invocations = sum(b[3] for b in r.backlogs)
    per_invocation = max(0.0, (built - float(seconds.sum())) / invocations)
    ingest = sum(b[1] for b in r.backlogs) / sum(b[0] for b in r.backlogs)
    batch = template_default("EmbedBatchSize")
    budget = (embed_timeout() - batch * ingest) * BUILD_SHARE
    build_rate = saturated_build_rate(per_invocation, max(per_batch, 0.0), per_image, budget)
    rate = min((concurrency - 1) / ingest, build_rate)
    return SteadyState(per_image, per_batch, per_invocation, ingest, budget, build_rate, rate)


def saturated_build_rate(
    per_invocation: float, per_batch: float, per_image: float, budget: float
) -> float:
    """Images a second of one invocation's build with the queue never empty, batches sized
    by IndexBuilder._batches' rule within `budget`."""
    spent, images, limit = 0.0, 0, FIRST_BATCH
    while True:
        took = per_batch + per_image * limit
        spent, images = spent + took, images + limit
        fits = int(limit * (budget - spent) / (2 * took)) if took > 0 else BATCH_SIZE
        if fits < 1:
            return images / (per_invocation + spent)
        limit = min(BATCH_SIZE, fits)


def embed_timeout() -> float:
    return float(load_template()["Resources"]["EmbedFunction"]["Properties"]["Timeout"])


def rate_of(r: Run, concurrency: int) -> float:
    """The steady state (`steady_state`) if backlogs of two sizes were built; else measured
    under one backlog (`sustained_ingest`): `concurrency` functions ingest at once, one
    build takes what they queued meanwhile (its publication included); else estimated from
    one batch at a time, its publication left out."""
    steady = steady_state(r, concurrency)
    if steady is not None:
        return steady.rate
    if r.backlog_images:
        n = r.backlog_images
        return min(concurrency * n / r.backlog_ingest_model, n / r.backlog_build_model)
    per_image_build = (r.build_model - r.publish_model) / r.images
    return sustained(r.ingest_model / r.images, per_image_build, concurrency)


def extrapolate_cold(runs: list[Run]) -> dict[str, tuple[float, int, int]]:
    """The largest measured run's cold start per engine and function (Lambda's seconds)."""
    largest: dict[str, tuple[float, int, int]] = {}
    for r in runs:
        for name, (_, tally) in r.cold.items():
            key = f"{r.engine}:{name}"
            if key not in largest or largest[key][2] < r.size:
                largest[key] = (r.cold_model[name], tally.received, r.size)
    return largest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="*", default=[2000, 10_000])
    parser.add_argument("--save", type=Path, help="append each run to this file (JSON lines)")
    parser.add_argument(
        "--combine", type=Path, nargs="*", default=[], help="runs saved before, reported too"
    )
    parser.add_argument("--engines", nargs="+", default=["annoy", "s3vectors"])
    parser.add_argument(
        "--photos",
        type=int,
        default=40,
        help="real photos ingested (0: none, only cold starts and queries are measured)",
    )
    parser.add_argument(
        "--backlog",
        type=int,
        nargs="*",
        default=[60],
        help="more photos ingested while the lease is held, then built, one backlog after "
        "another (sustained ingest: two sizes give the steady state, see steady_state)",
    )
    parser.add_argument("--queries", type=int, default=30, help="per kind")
    parser.add_argument("--latency-scale", type=float, default=1.0)
    parser.add_argument(
        "--cpu-scale",
        type=float,
        default=1.0,
        help="multiply the functions' CPU seconds by this: Lambda's vCPU taken as this many "
        "times slower than this machine's core",
    )
    parser.add_argument(
        "--outside-from",
        type=int,
        default=50_000,
        help="from this size, keep the collection outside moto's objects (cloud_synthetic.py)",
    )
    args = parser.parse_args()
    global cpu_scale
    cpu_scale = args.cpu_scale
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # the moto server's request log
    import imgsearch

    print(f"imgsearch from {Path(imgsearch.__file__).parent}")
    runs = [r for path in args.combine for r in load(path)]
    for engine in args.engines:
        for size in args.sizes:
            runs.append(run(engine, size, args))
            if args.save:
                save(runs[-1], args.save)
            report(runs)  # after each run: what was measured survives a later failure
    if not args.sizes:
        report(runs)
    print_switch(runs)
    print_costs(runs)


if __name__ == "__main__":
    main()
