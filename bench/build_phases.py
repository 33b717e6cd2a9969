"""Where an index build's time goes: bench/cloud_scale.py's run, with the builder's phases
timed by the same model (the function's CPU + the latency injected along the critical path
of its requests, "as on Lambda"), batch by batch, for the backlogs' batches.

    PYTHONPATH=src .venv/bin/python bench/build_phases.py --sizes 2000 --engines annoy \
        --photos 10 --backlog 100

Prints, for each batch of each backlog, each phase's CPU and waits (seconds as on Lambda) and
what they come to an image. Phases nest (the neighbour lists' reads are inside their update):
a phase's line counts its inner phases too.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
import threading
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import cloud_scale
from cloud_scale import cpu_since, function_cpu

# phase -> [cpu, waits, calls, items], for the batch being applied (items: the length of
# the first argument, where it has one: lists read or written, vectors asked for)
PHASES: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0, 0.0, 0.0])
BATCHES: list[tuple[int, dict[str, list[float]]]] = []
# --profile: the batches' Python profile, their pool threads' tasks included (one profiler a
# task, merged), written to the file given
PROFILES: list[cProfile.Profile] = []
PROFILING = threading.local()


def profile_pool_tasks() -> None:
    """Each task a thread pool runs while a batch is profiled gets a profiler of its own."""
    submit = ThreadPoolExecutor.submit

    def submit_profiled(self: Any, fn: Any, /, *args: Any, **kwargs: Any) -> Any:
        if not getattr(PROFILING, "on", False):
            return submit(self, fn, *args, **kwargs)

        def run(*a: Any, **kw: Any) -> Any:
            profile = cProfile.Profile(time.thread_time)
            PROFILES.append(profile)
            PROFILING.on = True
            try:
                return profile.runcall(fn, *a, **kw)
            finally:
                PROFILING.on = False

        return submit(self, run, *args, **kwargs)

    submit_profiled.follows_chains = getattr(submit, "follows_chains", False)  # type: ignore[attr-defined]
    ThreadPoolExecutor.submit = submit_profiled  # type: ignore[method-assign]


def timed(owner: Any, name: str, phase: str, wire: Any) -> None:
    method = getattr(owner, name)

    def wrapper(*a: Any, **kw: Any) -> Any:
        cpu, mark = function_cpu(), wire.mark()
        try:
            return method(*a, **kw)
        finally:
            spent = PHASES[phase]
            spent[0] += cpu_since(cpu)
            spent[1] += wire.waited_since(mark)
            spent[2] += 1
            if a and hasattr(a[0], "__len__"):
                spent[3] += len(a[0])

    setattr(owner, name, wrapper)


def timed_service(service: Any, result: Any, wire: Any) -> None:
    ORIGINAL(service, result, wire)
    builder = service.parts.builder
    lists = builder.neighbourhoods
    catalog = builder.catalog
    index = builder.index
    # A baseline's sources before removals were recomputed apart (`forget`) had one kind of
    # group for both.
    groups = "_add_group" if hasattr(lists, "_add_group") else "_update_group"
    for owner, name, phase in (
        (index, "refresh", "index.refresh (read back)"),
        (index, "present", "index.present"),
        (builder, "_load_additions", "embeddings read"),
        (builder.writer, "publish", "publication (engine writer)"),
        (catalog, "mark_indexed", "mark_indexed"),
        (lists, "update", "lists: all"),
        *([(lists, "forget", "removals' lists: all")] if hasattr(lists, "forget") else []),
        (index, "vectors", "lists: index.vectors"),
        (lists, groups, "lists: groups"),
        *([(catalog, "list_ends", "lists: read ends")] if hasattr(catalog, "list_ends") else []),
        (
            catalog,
            "stored_lists"
            if hasattr(catalog, "stored_lists")
            else "neighbour_lists_and_expanded",  # before it (a baseline's sources)
            "lists: read lists",
        ),
        (lists, "_expanded", "lists: expanded vectors"),
        (catalog, "put_neighbour_lists", "lists: write lists"),
        (catalog, "mark_lists_changed", "lists: token"),
        (catalog, "clear_pending", "clear_pending"),
    ):
        timed(owner, name, phase, wire)
    apply = builder._apply

    def batch(items: Any, *a: Any, **kw: Any) -> Any:
        PHASES.clear()
        cpu, mark = function_cpu(), wire.mark()
        profile = (
            cProfile.Profile(time.thread_time) if PROFILE_TO and result.logging_batches else None
        )
        try:
            if profile is None:
                return apply(items, *a, **kw)
            PROFILES.append(profile)
            PROFILING.on = True
            try:
                return profile.runcall(apply, items, *a, **kw)
            finally:
                PROFILING.on = False
        finally:
            PHASES["batch"] = [cpu_since(cpu), wire.waited_since(mark), 1, len(items)]
            if result.logging_batches:
                BATCHES.append((len(items), dict(PHASES)))

    builder._apply = batch


PROFILE_TO: list[Path] = []
ORIGINAL = cloud_scale.timed_service
cloud_scale.timed_service = timed_service


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[2000])
    parser.add_argument("--engines", nargs="+", default=["annoy"])
    parser.add_argument("--photos", type=int, default=10)
    parser.add_argument("--backlog", type=int, nargs="*", default=[100])
    parser.add_argument("--outside-from", type=int, default=50_000)
    parser.add_argument("--profile", type=Path, help="write the batches' cProfile stats here")
    args = parser.parse_args()
    if args.profile:
        PROFILE_TO.append(args.profile)
        profile_pool_tasks()
    run_args = argparse.Namespace(
        photos=args.photos,
        backlog=args.backlog,
        queries=1,
        latency_scale=1.0,
        outside_from=args.outside_from,
    )
    import logging

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    for engine in args.engines:
        for size in args.sizes:
            BATCHES.clear()
            cloud_scale.run(engine, size, run_args)
            for images, phases in BATCHES:
                print(f"\n{engine} {size:,}: a batch of {images} (s as on Lambda)")
                print("| phase | calls | items | CPU | waits | all | an image |")
                print("|---|---:|---:|---:|---:|---:|---:|")
                for phase, (cpu, waits, calls, count) in phases.items():
                    print(
                        f"| {phase} | {calls:.0f} | {count:.0f} | {cpu:.3f} | {waits:.3f} | "
                        f"{cpu + waits:.3f} | {(cpu + waits) / images:.4f} |"
                    )
            sys.stdout.flush()
    if PROFILES:
        stats = pstats.Stats(PROFILES[0])
        for profile in PROFILES[1:]:
            stats.add(profile)
        stats.dump_stats(str(args.profile))
        stats.sort_stats("tottime").print_stats(40)


if __name__ == "__main__":
    main()
