"""The first page on a slow phone: Chromium with network and CPU throttling against a real
server on the demo photos.

The phone is 390x844 at 3 device pixels per CSS pixel, on 1.6 Mbps down / 750 kbps up with
150 ms round trips, its CPU slowed 4x (Chrome DevTools' "Slow 4G" preset, set over CDP), with
an empty cache. Two pages are measured in the same run, alternately, against the same
collection and API:
- "before": web/ at the commit given (main's by default) served as main serves it, as plain
  static files (`--uncompressed`: its requests sent without Accept-Encoding, as the server
  before issue 18 answered them);
- "now": this worktree's web/, as `imgsearch serve` serves it now (imgsearch.api.page).

    nice -n 5 .venv/bin/python bench/page_load.py [--runs 5] [--baseline REF] [--data DIR]
        [--uncompressed] [--waterfall]

Prints, per page, the median over runs: requests and bytes transferred in all, time to the
first 12 thumbnails shown (the tiles' images loaded) and the bytes moved until then, largest
contentful paint, cumulative layout shift; then the ratios now / before.
"""

from __future__ import annotations

import argparse
import socket
import statistics
import subprocess
import tarfile
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import uvicorn
from playwright.sync_api import Browser, sync_playwright
from starlette.staticfiles import StaticFiles

from imgsearch.api.app import create_app
from imgsearch.api.server import server_config
from imgsearch.bulk import ingest_tree
from imgsearch.cli import WEB_DIR
from imgsearch.config import Settings
from imgsearch.service import ImageSearch

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "demo"
PHONE = {
    "viewport": {"width": 390, "height": 844},
    "device_scale_factor": 3,
    "is_mobile": True,
    "has_touch": True,
}
NETWORK = {  # bytes per second
    "offline": False,
    "latency": 150,
    "downloadThroughput": 1.6e6 / 8,
    "uploadThroughput": 750e3 / 8,
}
CPU_SLOWDOWN = 4
FIRST_TILES = 12

# Records, from navigation start: when 12 tiles had their images, LCP, and layout shifts.
PROBE = """
(() => {
  window.__bench = {tiles: null, lcp: 0, cls: 0};
  new PerformanceObserver((list) => {
    for (const entry of list.getEntries()) window.__bench.lcp = entry.startTime;
  }).observe({type: "largest-contentful-paint", buffered: true});
  new PerformanceObserver((list) => {
    for (const entry of list.getEntries()) {
      if (!entry.hadRecentInput) window.__bench.cls += entry.value;
    }
  }).observe({type: "layout-shift", buffered: true});
  const watch = () => {
    const loaded = document.querySelectorAll("#grid > .tile.loaded").length;
    if (loaded >= FIRST_TILES) window.__bench.tiles = performance.now();
    else requestAnimationFrame(watch);
  };
  requestAnimationFrame(watch);
})();
""".replace("FIRST_TILES", str(FIRST_TILES))

MEASURE = """
() => {
  const nav = performance.getEntriesByType("navigation")[0];
  const resources = performance.getEntriesByType("resource");
  const at = window.__bench.tiles;
  const early = resources.filter((entry) => entry.responseEnd <= at);
  const size = (entries) => entries.reduce((sum, entry) => sum + entry.transferSize, 0);
  return {
    requests: resources.length + 1,
    bytes: size(resources) + nav.transferSize,
    tiles: at,
    tilesBytes: size(early) + nav.transferSize,
    waterfall: [nav, ...resources].map((entry) => ({
      name: entry.name.replace(location.origin, ""),
      start: entry.startTime,
      end: entry.responseEnd,
      bytes: entry.transferSize,
    })),
    lcp: window.__bench.lcp,
    cls: window.__bench.cls,
  };
}
"""


@contextmanager
def serving(service: ImageSearch, web_dir: Path, *, static: bool = False) -> Iterator[str]:
    """A server of the API and the page in `web_dir`: built as the app serves it, or (`static`)
    its files as they are, as the app served them before (Starlette's StaticFiles)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    if static:
        app = create_app(service)
        app.mount("/", StaticFiles(directory=web_dir, html=True), name="web")
    else:
        app = create_app(service, web_dir=web_dir)
    config = server_config(app, service.settings, log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


def baseline_web(ref: str, into: Path) -> Path:
    """web/ as it was at `ref`."""
    archive = into / "web.tar"
    subprocess.run(["git", "-C", str(REPO), "archive", "-o", str(archive), ref, "web"], check=True)
    with tarfile.open(archive) as tar:
        tar.extractall(into, filter="data")
    return into / "web"


def load(browser: Browser, url: str, *, compressed: bool) -> dict[str, Any]:
    context = browser.new_context(**PHONE)
    page = context.new_page()
    cdp = context.new_cdp_session(page)
    cdp.send("Network.enable")
    cdp.send("Network.setCacheDisabled", {"cacheDisabled": True})
    cdp.send("Network.emulateNetworkConditions", NETWORK)
    cdp.send("Emulation.setCPUThrottlingRate", {"rate": CPU_SLOWDOWN})
    if not compressed:
        cdp.send("Network.setExtraHTTPHeaders", {"headers": {"Accept-Encoding": "identity"}})
    page.add_init_script(PROBE)
    page.goto(url)
    page.wait_for_function("() => window.__bench.tiles !== null", timeout=60_000)
    page.wait_for_load_state("networkidle")
    page.wait_for_timeout(500)
    measured = page.evaluate(MEASURE)
    context.close()
    return measured


METRICS = ("requests", "bytes", "tiles", "tilesBytes", "lcp", "cls")


def print_waterfall(name: str, run: dict[str, Any]) -> None:
    """Each request of one load: when it started and ended (ms from navigation), its bytes;
    a * marks those in before the first 12 thumbnails showed."""
    print(f"\n{name}: first 12 thumbnails at {run['tiles']:.0f} ms")
    print("   start     end      KB  request")
    for entry in sorted(run["waterfall"], key=lambda e: e["start"]):
        early = "*" if entry["end"] <= run["tiles"] else " "
        print(
            f"{early}{entry['start']:7.0f} {entry['end']:7.0f} {entry['bytes'] / 1000:7.1f}  "
            f"{entry['name'][:90]}"
        )
    print()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--baseline", default="main", help="git ref of the page before")
    parser.add_argument("--data", type=Path, default=None, help="a data dir with the demo in")
    parser.add_argument(
        "--waterfall", action="store_true", help="print each page's requests in its first run"
    )
    parser.add_argument(
        "--uncompressed", action="store_true", help="the page before asks for nothing compressed"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        data = args.data or Path(scratch) / "data"
        service = ImageSearch(Settings(data_dir=data, decode_workers=0))
        if service.count() == 0:
            started = time.perf_counter()
            ingest_tree(service, DEMO)
            print(f"ingested the demo photos in {time.perf_counter() - started:.0f} s")
        pages = {"before": baseline_web(args.baseline, Path(scratch)), "now": WEB_DIR}
        results: dict[str, list[dict[str, Any]]] = {name: [] for name in pages}
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(
                executable_path="/usr/bin/chromium", args=["--no-sandbox", "--disable-gpu"]
            )
            servers = {
                name: serving(service, web, static=name == "before") for name, web in pages.items()
            }
            urls = {name: server.__enter__() for name, server in servers.items()}
            try:
                for _ in range(args.runs):
                    for name, url in urls.items():
                        compressed = name == "now" or not args.uncompressed
                        results[name].append(load(browser, url, compressed=compressed))
            finally:
                for server in servers.values():
                    server.__exit__(None, None, None)
                browser.close()
    if args.waterfall:
        for name, runs in results.items():
            print_waterfall(name, runs[0])
    medians = {
        name: {key: statistics.median(run[key] for run in runs) for key in METRICS}
        for name, runs in results.items()
    }
    print(
        f"phone 390x844 @3x, {NETWORK['downloadThroughput'] * 8 / 1e6:.1f} Mbps, "
        f"{NETWORK['latency']} ms RTT, CPU / {CPU_SLOWDOWN}; medians of {args.runs} cold loads"
    )
    print("| page | requests | KB | first 12 thumbnails | KB until then | LCP | CLS |")
    print("|---|---|---|---|---|---|---|")
    for name, m in medians.items():
        print(
            f"| {name} | {m['requests']:.0f} | {m['bytes'] / 1000:.0f} | {m['tiles'] / 1000:.2f} s "
            f"| {m['tilesBytes'] / 1000:.0f} | {m['lcp'] / 1000:.2f} s | {m['cls']:.4f} |"
        )
    now, before = medians["now"], medians["before"]
    print(
        "| now / before | "
        + " | ".join(f"{now[k] / before[k]:.2f}" if before[k] else "-" for k in METRICS)
        + " |"
    )


if __name__ == "__main__":
    main()
