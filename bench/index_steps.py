"""Where a similar-image query's time goes, and what settings cost, on bench/index_scale.py's
cached indexes: each query's wall and CPU time (its thread's), with one and two query
threads, recall@20 against exact search, and (`--steps`) the time of each step of
`Index.nearest`.

Settings (`candidates:search_k`) are asked query by query in turn, in alternating order (the
first one asked brings the rows into the CPU's caches for the next); with `--chunk N`, every
thread asks one setting N queries at a time (so that two query threads contend only with the
same code, as a server's do; the time they wait for each other between chunks counts as off
the run queue). `--baseline CHECKOUT`
adds another checkout's reader, asked the same queries beside them in the same process: its
`src/imgsearch` is copied under the package name `imgsearch_baseline` (imports rewritten) into
the cache directory, so that both versions load side by side; `--baseline-store` has it read
another build of the same images (one that checkout's bench/index_scale.py built), to compare
build rules as well as readers.

    nice -n 5 .venv/bin/python bench/index_steps.py --size 1000000 --queries 300 \\
        --settings 120:1500 --baseline ../main --steps

The index of `--size` images must have been built by bench/index_scale.py with the same
`--cache`, `--copies`, `--features` and `--trees` (and its default shard size); the exact
answers of the queries are kept there too (`truth-SIZE-QUERIES.npy`).
"""

from __future__ import annotations

import argparse
import importlib
import os
import re
import shutil
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import index_scale

from imgsearch.index import reader
from imgsearch.index.reader import Index
from imgsearch.storage.local import LocalObjectStore


def baseline_index(checkout: Path, cache: Path, store_root: Path) -> Any:
    """Another checkout's `Index` over the same store, its package loaded as
    `imgsearch_baseline` (a copy with its imports rewritten)."""
    copy = cache / "baseline-src"
    shutil.rmtree(copy, ignore_errors=True)
    package = copy / "imgsearch_baseline"
    shutil.copytree(checkout / "src" / "imgsearch", package, symlinks=True)
    for path in package.rglob("*.py"):
        text = path.read_text()
        text = re.sub(r"\bimgsearch\.", "imgsearch_baseline.", text)
        text = re.sub(r"\bfrom imgsearch import\b", "from imgsearch_baseline import", text)
        path.write_text(text)
    sys.path.insert(0, str(copy))
    baseline_reader = importlib.import_module("imgsearch_baseline.index.reader")
    local = importlib.import_module("imgsearch_baseline.storage.local")
    config = importlib.import_module("imgsearch_baseline.config")
    settings = config.Settings()
    index = baseline_reader.Index(
        local.LocalObjectStore(store_root),
        candidates=settings.ann_candidates,
        search_k=settings.ann_search_k,
    )
    index.refresh(force=True)
    return index


def steps(index: Index, vector: np.ndarray, k: int) -> dict[str, float]:
    """`Index.nearest`'s steps, timed (ms): the same calls, in the same order."""
    times = {}
    started = time.perf_counter()
    snapshot = index._snapshot
    plan = reader._plan(snapshot, index.candidates, index.search_k, k)
    projected, residuals = snapshot.project_with_residuals(vector)
    at = time.perf_counter()
    times["project"] = at - started
    proposed, annoy = [], 0.0
    budget = sum(count for count, _ in plan)
    for shard, (count, search_k), vector_of_shard in zip(
        snapshot.shards, plan, projected, strict=True
    ):
        nodes = search_k if search_k > 0 else count * shard.trees
        asked = time.perf_counter()
        proposed.append(shard.candidates_of_projected(vector_of_shard, budget, nodes))
        annoy += time.perf_counter() - asked
    found = reader._closest_projected(snapshot.shards, proposed, residuals, budget)
    times["annoy"], times["annoy_python"] = annoy, time.perf_counter() - at - annoy
    at = time.perf_counter()
    cosine = reader._cosines(found, vector)  # gathered, widened, multiplied
    times["rerank"] = time.perf_counter() - at
    at = time.perf_counter()
    reader._best_candidates(cosine, found, k, ())
    times["best"] = time.perf_counter() - at
    times["total"] = time.perf_counter() - started
    return {name: value * 1000 for name, value in times.items()} | {"rows": len(cosine)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=100_000)
    parser.add_argument("--cache", type=Path, default=REPO_CACHE)
    parser.add_argument("--trees", type=int, default=20, help="the trees the index was built with")
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--settings", nargs="+", default=["120:1500"])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--steps", action="store_true", help="time each step of a query")
    parser.add_argument(
        "--chunk",
        type=int,
        default=0,
        help="with several threads, all of them ask one setting this many queries at a time "
        "(then the next, in alternating order), rather than each thread every setting in turn "
        "query by query: two threads then contend only with the same code, as in a server",
    )
    parser.add_argument("--baseline", type=Path, help="another checkout's reader beside")
    parser.add_argument(
        "--baseline-store",
        type=Path,
        help="the store the baseline reads (default: this checkout's): its own build of the "
        "same images, say as that checkout's bench/index_scale.py built them",
    )
    index_scale.add_synthesis_arguments(parser)
    args = parser.parse_args()
    real = index_scale.configure_synthesis(args)
    index_scale.chunk_cache = args.cache / "chunks"
    queries = index_scale.queries_of(real, args.size, args.queries)
    kept = args.cache / f"truth-{args.size}{index_scale.synthesis.tag}-{args.queries}.npy"
    if kept.exists():
        truth = [set(row.tolist()) for row in np.load(kept)]
    else:
        truth, _ = index_scale.exact_truth(real, args.size, queries, 20)
        np.save(kept, np.array([sorted(row) for row in truth]))
    root = index_scale.tiered_root(args.cache, args.size, 10_000, args.trees) / "store"
    store = LocalObjectStore(root)
    names, indexes = [], []
    for setting in args.settings:
        candidates, search_k = map(int, setting.split(":"))
        index = Index(store, candidates=candidates, search_k=search_k)
        index.refresh(force=True)
        nodes = reader.query_nodes(len(index), search_k)
        names.append(f"{setting} x{reader.budget_growth(len(index)):.2f} ({nodes} nodes)")
        indexes.append(index)
    if args.baseline:
        baseline_root = args.baseline_store.resolve() if args.baseline_store else root
        indexes.append(baseline_index(args.baseline.resolve(), args.cache, baseline_root))
        names.append(f"baseline {args.baseline.name}")
    shard_sizes = "+".join(f"{len(shard.ids) // 1000}k" for shard in indexes[0].shards)
    print(f"{args.size:,} images ({shard_sizes}), {args.queries} queries, k=20; times in ms")
    for index in indexes:
        for query in queries[:20]:
            index.nearest(query, 20)  # warm up
    if args.steps:
        timed: list[list[dict[str, float]]] = [[] for _ in args.settings]
        for query in queries:
            for number, index in enumerate(indexes[: len(args.settings)]):
                timed[number].append(steps(index, query, 20))
        for name, rows in zip(names, timed, strict=False):
            medians = {key: statistics.median(row[key] for row in rows) for key in rows[0]}
            print(f"{name} steps, p50: " + ", ".join(f"{k} {v:.3f}" for k, v in medians.items()))
    for threads in args.threads:
        wall = [[0.0] * len(queries) for _ in indexes]
        cpu = [[0.0] * len(queries) for _ in indexes]
        answers: list[list[set[int]]] = [[set() for _ in queries] for _ in indexes]
        spent: list[tuple[float, ...]] = []  # per thread: wall, on a core, waiting for one

        barrier = threading.Barrier(threads)

        def work(
            offset: int,
            threads: int = threads,
            wall: list[list[float]] = wall,
            cpu: list[list[float]] = cpu,
            answers: list[list[set[int]]] = answers,
            spent: list[tuple[float, ...]] = spent,
            barrier: threading.Barrier = barrier,
        ) -> None:
            def ask(number: int, index: Any, position: int) -> None:
                started, started_cpu = time.perf_counter(), time.thread_time()
                found = index.nearest(queries[position], 20)
                wall[number][position] = (time.perf_counter() - started) * 1000
                cpu[number][position] = (time.thread_time() - started_cpu) * 1000
                answers[number][position] = {int(i, 16) for i, _ in found}

            before = time.perf_counter(), *scheduled()
            if args.chunk:  # every thread on one setting at a time, a chunk of queries each
                for start in range(0, len(queries), args.chunk):
                    order = list(enumerate(indexes))
                    if (start // args.chunk) % 2:
                        order.reverse()
                    for number, index in order:
                        barrier.wait()
                        end = min(start + args.chunk, len(queries))
                        try:
                            for position in range(start + offset, end, threads):
                                ask(number, index, position)
                        except BaseException:
                            barrier.abort()  # the other threads stop too, not wait for ever
                            raise
            else:  # each thread on each setting in turn, query by query
                for position in range(offset, len(queries), threads):
                    order = list(enumerate(indexes))
                    if (position // threads) % 2:
                        order.reverse()
                    for number, index in order:
                        ask(number, index, position)
            after = time.perf_counter(), *scheduled()
            spent.append(tuple((b - a) * 1000 for a, b in zip(before, after, strict=True)))

        workers = [threading.Thread(target=work, args=(offset,)) for offset in range(threads)]
        started = time.perf_counter()
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        rate = len(queries) * len(indexes) / (time.perf_counter() - started)
        for number, name in enumerate(names):
            recall = statistics.mean(
                len(found & exact) / 20 for found, exact in zip(answers[number], truth, strict=True)
            )
            print(
                f"{name}, {threads} thread(s): p50 {np.median(wall[number]):.3f}, "
                f"p90 {np.percentile(wall[number], 90):.3f}, CPU p50 {np.median(cpu[number]):.3f}, "
                f"recall@20 {recall:.4f}; all settings {rate:.0f} queries/s"
            )
        if all(len(times) == 3 for times in spent):
            # Where a query's time went, all settings together (the kernel's accounts lag by
            # up to a tick, so they are read per thread, not per query).
            asked = len(queries) * len(indexes)
            elapsed, running, waiting = (sum(times[n] for times in spent) for n in range(3))
            print(
                f"{threads} thread(s), per query: {elapsed / asked:.3f} ms = on a core "
                f"{running / asked:.3f} + waiting for a core {waiting / asked:.3f} "
                f"+ off the run queue (the GIL, I/O) {(elapsed - running - waiting) / asked:.3f}"
            )
    print(f"load average {os.getloadavg()[0]:.1f}")


def scheduled() -> tuple[float, ...]:
    """This thread's seconds on a core and waiting in the run queue for one (Linux's
    schedstat; empty elsewhere)."""
    try:
        with open(f"/proc/self/task/{threading.get_native_id()}/schedstat") as stats:
            running, waiting, _ = stats.read().split()
    except OSError:
        return ()
    return int(running) / 1e9, int(waiting) / 1e9


REPO_CACHE = index_scale.REPO / "build" / "bench" / "index_scale"

if __name__ == "__main__":
    main()
