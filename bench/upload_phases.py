"""Where an upload's time goes, at two collection sizes in the same minutes.

Times (wall clock and the calling thread's CPU) the phases of `POST /api/images` (decode,
storing, the build's publication, neighbour lists, garbage collection, index refreshes) on
copies of the collections `bench/ingest.py --cache DIR` synthesised, one upload at each size in
turn, so that what grows with the collection shows apart from the machine's load. The first
upload of each (a fresh process: the index loaded, a decode worker started) is printed apart.

    nice -n 5 .venv/bin/python bench/upload_phases.py --cache build/bench/ingest-cache
"""

from __future__ import annotations

import argparse
import collections
import functools
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "tests")]

from fastapi.testclient import TestClient  # noqa: E402
from support.openapi import API_KEY_HEADER  # noqa: E402

from imgsearch import ingest, keys, service  # noqa: E402
from imgsearch.api.app import create_app  # noqa: E402
from imgsearch.config import Settings  # noqa: E402
from imgsearch.index import builder, neighbourhoods, reader, shard_writer  # noqa: E402

API_KEY = "bench-api-key"  # as bench/ingest.py's collections
spent: dict[str, list[float]] = collections.defaultdict(lambda: [0.0, 0.0])

PHASES = [  # (owner, attribute, name)
    (service.ImageSearch, "upload", "upload (all)"),
    (ingest.Ingestor, "add", "store: decode, embed, files, records"),
    (ingest.Ingestor, "decode", "  decode (worker process)"),
    (ingest.Ingestor, "_create", "  embed, thumbnail, tile"),
    (service.ImageSearch, "_wait_indexed", "build until searchable"),
    (builder.IndexBuilder, "_publish", "  publish the open shard"),
    (shard_writer.ShardWriter, "publish", "    writer.publish"),
    (neighbourhoods.Neighbourhoods, "update", "  neighbour lists"),
    (builder.IndexBuilder, "collect_garbage", "  garbage collection"),
    (reader.Index, "refresh", "  index refreshes"),
    (keys, "upload_key", "key from the file name"),
]


def timed(owner: Any, attribute: str, name: str) -> None:
    original = getattr(owner, attribute)

    @functools.wraps(original)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        wall, cpu = time.perf_counter(), time.thread_time()
        try:
            return original(*args, **kwargs)
        finally:
            spent[name][0] += time.perf_counter() - wall
            spent[name][1] += time.thread_time() - cpu

    setattr(owner, attribute, wrapper)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cache", type=Path, required=True, help="bench/ingest.py's --cache")
    parser.add_argument("--sizes", type=int, nargs="*", default=[10_000, 100_000])
    parser.add_argument("--uploads", type=int, default=8, help="per size, after the first")
    args = parser.parse_args()
    for phase in PHASES:
        timed(*phase)
    photos = sorted((args.cache / "photos").glob("*.jpg"))
    scratch = Path(tempfile.mkdtemp(prefix="upload-phases-"))
    clients = {}
    for size in args.sizes:
        shutil.copytree(args.cache / f"collection-{size}", scratch / str(size))
        settings = Settings(data_dir=scratch / str(size), api_key=API_KEY)
        app = create_app(service.ImageSearch(settings))
        clients[size] = TestClient(app, headers={API_KEY_HEADER: API_KEY}).__enter__()
    measured: dict[int, dict[str, list[tuple[float, float]]]] = {
        size: collections.defaultdict(list) for size in args.sizes
    }
    try:
        for number in range(args.uploads + 1):
            for size, client in clients.items():
                photo = photos[(number * len(clients) + len(measured[size])) % len(photos)]
                spent.clear()
                response = client.post(
                    "/api/images",
                    files={"file": (f"{size}-{photo.name}", photo.read_bytes(), "image/jpeg")},
                )
                if response.status_code != 201:  # a decode worker that did not start in time
                    print(f"upload at {size:,} not counted: {response.text}")
                    continue
                if number == 0:
                    print(
                        f"first upload at {size:,}: "
                        + ", ".join(
                            f"{name.strip()} {wall:.2f} s" for name, (wall, _) in spent.items()
                        )
                    )
                    continue
                for name, times in spent.items():
                    measured[size][name].append((times[0], times[1]))
    finally:
        for client in clients.values():
            client.__exit__(None, None, None)
        shutil.rmtree(scratch)
    print(f"\nmedians over {args.uploads} uploads: wall ms / this thread's CPU ms")
    print(f"{'phase':40}" + "".join(f"{size:>20,}" for size in args.sizes))
    for _, _, name in PHASES:
        cells = []
        for size in args.sizes:
            times = measured[size].get(name)
            if not times:
                cells.append(f"{'-':>20}")
                continue
            wall = statistics.median(t[0] for t in times) * 1000
            cpu = statistics.median(t[1] for t in times) * 1000
            cells.append(f"{wall:11.1f} / {cpu:6.1f}")
        print(f"{name:40}" + "".join(cells))


if __name__ == "__main__":
    main()
