""" "More like this" and reverse search precision through the HTTP API, expansion on and off.

    nice -n 5 .venv/bin/python bench/http_relevance.py ../shared/data/corel1k ../shared/data/demo

What an outside evaluation does, on labelled folders (a `labels.csv` of `path,label` rows, or
else each file's first folder as its label):
1. a fresh data directory; `imgsearch serve` (as the README starts it) on loopback;
2. every photo uploaded through `POST /api/images` (4 clients at once), its key the relative
   path, until `/api/health` counts them all;
3. each photo's `GET /api/images/{id}/similar?limit=20`, and reverse search
   (`POST /api/search/image`, `limit=21`) of `--reverse` photos drawn at random, the photo's
   own copy (the first result) left out;
4. the same server restarted with `IMGSEARCH_EXPANSION=false`: exact cosine search on the
   model's raw features, the baseline of issue 19.
Prints per set p@5/10/20 of both kinds with expansion off and on, the gain in points, and how
often a photo's reverse search page equals its "more like this" page (issue 19's promise).
"""

from __future__ import annotations

import argparse
import csv
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx2 as httpx  # the HTTP client the dev extra installs
from http_throughput import free_port, stop_server  # bench/ is the script's directory

API_KEY = "relevance-bench-key"
KS = (5, 10, 20)
SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}


def labelled_photos(folder: Path) -> dict[str, str]:
    """{relative POSIX path: label}: labels.csv if the folder has one, else first folders."""
    table = folder / "labels.csv"
    if table.exists():
        with table.open(newline="", encoding="utf-8-sig") as handle:
            rows = [row for row in csv.reader(handle) if len(row) == 2]
        return {path: label for path, label in rows if path != "path"}
    return {
        path.relative_to(folder).as_posix(): path.relative_to(folder).parts[0]
        for path in sorted(folder.rglob("*"))
        if path.suffix.lower() in SUFFIXES and len(path.relative_to(folder).parts) > 1
    }


def start_server(data_dir: Path, port: int, expansion: bool) -> subprocess.Popen[bytes]:
    environment = {
        **os.environ,
        "IMGSEARCH_API_KEY": API_KEY,
        "IMGSEARCH_EXPANSION": "true" if expansion else "false",
    }
    command = [sys.executable, "-m", "imgsearch.cli", "serve", "--data-dir", str(data_dir)]
    server = subprocess.Popen(
        [*command, "--port", str(port)],
        env=environment,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # its own process group, which `stop_server` stops
    )
    for _ in range(1200):
        try:
            answer = httpx.get(f"http://127.0.0.1:{port}/api/health", timeout=1).json()
            if not answer.get("recovering"):
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    server.kill()
    raise SystemExit("the server did not start")


def upload_all(base: str, folder: Path, photos: dict[str, str]) -> dict[str, str]:
    """Upload every photo; {image id: label}. A refused file is reported and left out."""
    ids: dict[str, str] = {}

    def upload(relative: str) -> None:
        with httpx.Client(base_url=base, timeout=300, headers={"X-API-Key": API_KEY}) as client:
            data = (folder / relative).read_bytes()
            for _ in range(20):
                answer = client.post(
                    "/api/images",
                    files={"file": (Path(relative).name, data)},
                    data={"key": relative},
                )
                if answer.status_code != 503:
                    break
                time.sleep(float(answer.headers.get("Retry-After", "1")))
            if answer.status_code in (200, 201):
                ids.setdefault(answer.json()["id"], photos[relative])
            else:
                print(f"  refused {relative}: {answer.status_code} {answer.text[:120]}")

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(upload, sorted(photos)))
    deadline = time.monotonic() + 600
    while httpx.get(f"{base}/api/health").json()["images"] < len(ids):
        if time.monotonic() > deadline:
            raise SystemExit("uploads did not become searchable within 10 minutes")
        time.sleep(1)
    return ids


def precisions(found: list[str], label: str, labels: dict[str, str]) -> list[float]:
    """p@k of each k, out of the most that can be relevant (as `imgsearch eval` counts: a
    label of 12 photos has 11 others to find, so its p@20 is out of 11)."""
    others = sum(other == label for other in labels.values()) - 1
    return [sum(labels.get(i) == label for i in found[:k]) / max(min(k, others), 1) for k in KS]


def measure(
    base: str, folder: Path, labels: dict[str, str], keys: dict[str, str], reverse: list[str]
) -> tuple[list[float], list[float], float, dict[str, list[str]]]:
    """(mean p@KS of similar, of reverse, share of reverse pages equal to similar's, pages)."""
    pages: dict[str, list[str]] = {}

    def similar(image_id: str) -> None:
        answer = httpx.get(f"{base}/api/images/{image_id}/similar", params={"limit": 20})
        pages[image_id] = [hit["id"] for hit in answer.raise_for_status().json()["results"]]

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(similar, sorted(labels)))
    similar_p = [
        statistics.fmean(col)
        for col in zip(*(precisions(pages[i], labels[i], labels) for i in labels), strict=True)
    ]

    reverse_rows: list[list[float]] = []
    equal = 0

    def search(image_id: str) -> tuple[str, list[str]]:
        data = (folder / keys[image_id]).read_bytes()
        answer = httpx.post(
            f"{base}/api/search/image",
            files={"file": ("q.jpg", data)},
            data={"limit": 21},
            timeout=120,
        )
        return image_id, [hit["id"] for hit in answer.raise_for_status().json()["results"]]

    with ThreadPoolExecutor(2) as pool:
        for image_id, found in pool.map(search, reverse):
            others = [i for i in found if i != image_id][:20]
            reverse_rows.append(precisions(others, labels[image_id], labels))
            equal += others == pages[image_id]
    reverse_p = [statistics.fmean(col) for col in zip(*reverse_rows, strict=True)]
    return similar_p, reverse_p, equal / max(len(reverse), 1), pages


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("folders", nargs="+", type=Path)
    parser.add_argument("--reverse", type=int, default=200, help="reverse searches per set")
    parser.add_argument("--seed", type=int, default=1)
    arguments = parser.parse_args()
    rows = []
    for folder in arguments.folders:
        photos = labelled_photos(folder)
        with tempfile.TemporaryDirectory(prefix="http-relevance-") as temporary:
            data_dir = Path(temporary)
            port = free_port()
            base = f"http://127.0.0.1:{port}"
            results = {}
            for expansion in (True, False):
                server = start_server(data_dir, port, expansion)
                try:
                    if expansion:
                        started = time.perf_counter()
                        labels = upload_all(base, folder, photos)
                        print(
                            f"{folder.name}: {len(labels)} photos uploaded in "
                            f"{time.perf_counter() - started:.0f} s"
                        )
                        keys = {}
                        for image_id in labels:
                            keys[image_id] = httpx.get(f"{base}/api/images/{image_id}").json()[
                                "key"
                            ]
                        sample = sorted(labels)
                        random.Random(arguments.seed).shuffle(sample)
                        reverse = sample[: arguments.reverse]
                    results[expansion] = measure(base, folder, labels, keys, reverse)
                finally:
                    stop_server(server)
        rows.append((folder.name, len(labels), results[False], results[True]))
        print_row(rows[-1])
    print()
    print(
        "| set | photos | similar raw p@20 | expanded | gain | reverse raw p@20 | expanded "
        "| gain | reverse = similar |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, count, raw, expanded in rows:
        print(
            f"| {name} | {count} | {100 * raw[0][2]:.1f} | {100 * expanded[0][2]:.1f} | "
            f"{100 * (expanded[0][2] - raw[0][2]):+.1f} | {100 * raw[1][2]:.1f} | "
            f"{100 * expanded[1][2]:.1f} | {100 * (expanded[1][2] - raw[1][2]):+.1f} | "
            f"{100 * expanded[2]:.0f}% |"
        )


def print_row(row: tuple) -> None:
    raw, expanded = row[2:]
    for kind, index in (("similar", 0), ("reverse", 1)):
        cells = "  ".join(
            f"p@{k} {100 * r:.1f} -> {100 * e:.1f} ({100 * (e - r):+.1f})"
            for k, r, e in zip(KS, raw[index], expanded[index], strict=True)
        )
        print(f"  {kind:8} {cells}")
    print(
        f"  reverse page = similar page: raw {100 * raw[2]:.0f}%, expanded {100 * expanded[2]:.0f}%"
    )


if __name__ == "__main__":
    main()
