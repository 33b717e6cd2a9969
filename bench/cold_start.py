"""Cold starts of the built Lambda functions, measured on the bundles themselves.

Each run is a fresh python3.12 that sees only one function's code and layers, laid out as
Lambda unpacks them (layers/sandbox.py), with the shipped .pyc files or without any:
- init: importing the handler module, which also loads what the function loads at cold start
  (model, vocabulary, an empty index), for every function; for the embed function also its
  first inference, which sets up TFLite's XNNPACK kernels;
- index load: `Index.refresh()` on a collection, in the search function's sandbox: the demo
  photos (192) and a synthetic collection of 10,000 images (two sealed 5,000-image shards of
  random unit vectors and sparse class probabilities, built like real ones).
Prints the median of --runs runs, the peak memory, and the index's bytes per image. The index
is read from local files here; on Lambda the shard files are first copied from S3 to /tmp.
The bundles are (re)built first (layers/build.py: seconds when the layers are current); the
collections are cached under build/bench/cold-start, per version of the index code.

    .venv/bin/python bench/cold_start.py [--runs 5]
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import inspect
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType

import numpy as np

from imgsearch.bulk import ingest_tree
from imgsearch.config import Settings
from imgsearch.index import manifest as manifest_code
from imgsearch.index import shards as shard_code
from imgsearch.index.manifest import Manifest, ShardEntry, write_manifest
from imgsearch.index.shards import ShardData, write_build
from imgsearch.service import ImageSearch
from imgsearch.storage import LocalObjectStore
from imgsearch.vectors import unit_rows

REPO = Path(__file__).resolve().parents[1]
BUNDLES = REPO / "build" / "lambda"
# Collections built by another version of the index code may not load: one cache per version.
INDEX_CODE = hashlib.sha256(
    (inspect.getsource(shard_code) + inspect.getsource(manifest_code)).encode()
).hexdigest()[:10]
WORK = REPO / "build" / "bench" / "cold-start" / INDEX_CODE
SHARD_SIZE = 5000
SYNTHETIC_IMAGES = 10_000

INDEX_LOAD = """
import time
from imgsearch.index.reader import Index
from imgsearch.storage.local import LocalObjectStore
started = time.perf_counter()
index = Index(LocalObjectStore(OBJECTS))
index.refresh(force=True)
measured["seconds"] = time.perf_counter() - started
measured["images"] = len(index)
"""


# The embed function's first image also pays for TFLite's XNNPACK setup (weight packing).
FIRST_INFERENCE = """
import time
from PIL import Image
started = time.perf_counter()
app.service.parts.embedder.embed(Image.new("RGB", (400, 300), "gray"))
measured["seconds"] = time.perf_counter() - started
"""


def load_layers_script(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"layers_{name}", REPO / "layers" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


build = load_layers_script("build")
sandbox = load_layers_script("sandbox")


def demo_collection() -> Path:
    """The demo photos, ingested with the local backend once (about half a minute)."""
    data = WORK / "demo"
    if not (data / "objects" / "index" / "manifest.json").exists():
        print("ingesting the demo photos ...", file=sys.stderr)
        ingest_tree(ImageSearch(Settings(data_dir=data)), REPO / "demo")
    return data / "objects"


def synthetic_collection(images: int = SYNTHETIC_IMAGES, dim: int = 1280) -> Path:
    """`images` random images in sealed shards, written like the builder writes them."""
    objects = WORK / f"synthetic-{images}" / "objects"
    if (objects / "index" / "manifest.json").exists():
        return objects
    print(f"building a synthetic index of {images} images ...", file=sys.stderr)
    rng = np.random.default_rng(0)
    store = LocalObjectStore(objects)
    shards = []
    for number, start in enumerate(range(0, images, SHARD_SIZE)):
        count = min(SHARD_SIZE, images - start)
        features = unit_rows(rng.standard_normal((count, dim)).astype(np.float32))
        # Like a classifier's output: most of the mass on a handful of classes.
        probabilities = rng.dirichlet(np.full(1000, 0.02), size=count).astype(np.float16)
        ids = [f"{start + row:016x}" for row in range(count)]
        started = time.perf_counter()
        build = write_build(store, f"s{number:06d}", ShardData(ids, features, probabilities), 20)
        print(
            f"  shard of {count}: built in {time.perf_counter() - started:.1f} s", file=sys.stderr
        )
        shards.append(
            ShardEntry(
                f"s{number:06d}", build.id, count, sealed=count == SHARD_SIZE, sha256=build.sha256
            )
        )
    manifest = Manifest().with_shards(
        shards, next_shard=len(shards), model="synthetic", dim=dim, trees=20
    )
    write_manifest(store, manifest, None)
    return objects


def index_bytes_per_image(objects: Path, images: int) -> float:
    files = (objects / "index" / "shards").rglob("*")
    return sum(f.stat().st_size for f in files if f.is_file()) / images


def median_run(box, python: str, environment: dict, runs: int, measure: str | None = None):
    """Medians over `runs` fresh processes: (init seconds, measured seconds, peak RSS MB)."""
    results = [sandbox.run(box, python, environment, measure=measure) for _ in range(runs)]
    return (
        statistics.median(r["import_seconds"] for r in results),
        statistics.median(r["measured"].get("seconds", 0.0) for r in results),
        statistics.median(r["peak_rss_mb"] for r in results),
    )


def measure_all(runs: int, python: str, root: Path) -> dict[str, dict[str, float]]:
    """Row label -> {"pyc": s, "no pyc": s, "rss": MB} for every function and index."""
    collections = {"demo": demo_collection(), "synthetic 10k": synthetic_collection()}
    empty = root / "empty-collection"
    empty.mkdir()
    rows: dict[str, dict[str, float]] = {}
    for function, layers in build.FUNCTION_LAYERS.items():
        for with_pyc in (True, False):
            mode = "pyc" if with_pyc else "no pyc"
            box = sandbox.assemble(
                function,
                out=BUNDLES,
                layers=list(layers),
                root=root / f"{function}-{mode}",
                with_pyc=with_pyc,
            )
            environment = {
                "IMGSEARCH_BACKEND": "local",
                "IMGSEARCH_DATA": str(empty),
                "IMGSEARCH_ASSETS_DIR": str(box.opt / "assets"),
                "IMGSEARCH_AUTH": "gateway",
                "IMGSEARCH_API_KEY_PARAMETER": "/imgsearch/api-key",
                "POWERTOOLS_SERVICE_NAME": f"imgsearch-{function}",
                "AWS_DEFAULT_REGION": "us-east-1",
            }
            init, _, rss = median_run(box, python, environment, runs)
            row = rows.setdefault(f"{function}: init", {})
            row[mode], row["rss"] = init, max(rss, row.get("rss", 0.0))
            if function == "embed":
                _, seconds, rss = median_run(box, python, environment, runs, FIRST_INFERENCE)
                row = rows.setdefault("embed: first image after init", {})
                row[mode], row["rss"] = seconds, max(rss, row.get("rss", 0.0))
            if function != "search":
                continue
            for name, objects in collections.items():
                code = INDEX_LOAD.replace("OBJECTS", repr(str(objects)))
                _, seconds, rss = median_run(box, python, environment, runs, code)
                row = rows.setdefault(f"search: index load, {name}", {})
                row[mode], row["rss"] = seconds, max(rss, row.get("rss", 0.0))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args(argv)
    build.print_report(build.build(BUNDLES))
    python = build.find_python312()
    with tempfile.TemporaryDirectory() as scratch:
        rows = measure_all(args.runs, python, Path(scratch))
    print(f"\ncold start on the bundles, python3.12 {build.ARCHITECTURE}, medians of {args.runs}:")
    print(f"{'':36} {'with .pyc':>10} {'without':>10} {'peak RSS':>10}")
    for label, row in rows.items():
        print(f"{label:36} {row['pyc']:9.3f}s {row['no pyc']:9.3f}s {row['rss']:8.0f}MB")
    for name, images in (("demo", 192), (f"synthetic-{SYNTHETIC_IMAGES}", SYNTHETIC_IMAGES)):
        objects = WORK / name / "objects"
        print(f"index files, {name}: {index_bytes_per_image(objects, images) / 1024:.1f} KB/image")
    return 0


if __name__ == "__main__":
    sys.exit(main())
