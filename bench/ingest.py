"""Ingest against the model's pace, and upload latency against the collection's size.

In one run, on this machine:
1. The model-bound rate: the TFLite interpreters alone (two single-threaded ones, one per
   thread, as many as the CPUs) over the same photos, decoded and resized beforehand.
2. End-to-end `imgsearch ingest` (the CLI, in its own process, into a fresh data directory)
   of Corel-1k and of 12-megapixel photos generated from Corel photos (upscaled, with noise,
   JPEG at quality 90, in a temporary directory); its rate is the one the CLI prints
   (images added per second, from its first file to its last index build). Beside the rates,
   the CPU per image of each (the model alone: its threads'; the ingest: its whole process,
   start included), which other jobs on the machine inflate less than the rates.
3. Upload latency through the API (POST /api/images, which answers once the image is
   searchable) on collections of 10k and 100k synthesised indexed images (vectors made from
   the real features of step 1, as bench/index_scale.py makes them).

Each of 1 and 2 is repeated (`--rounds`), alternating (the model alone just before and just
after each ingest, averaged), and the medians are compared: the machine is shared, so only
rates measured side by side mean anything. With `--baseline CHECKOUT` (another checkout of
the project, e.g. a git worktree of main), its `imgsearch ingest` runs in each round next to
this one's, and its upload latency is measured right after this one's at each size (this
bench run again, with the baseline's sources, `--rounds 0`).

`--cache DIR` keeps the 12-MP photos and each synthesised collection (a 100k one takes
minutes to make) for later runs; every measure works on a fresh copy.

    nice -n 5 .venv/bin/python bench/ingest.py --rounds 3 --sizes 10000 100000 \
        --cache build/bench/ingest-cache --baseline build/baseline
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "bench"), str(REPO / "tests")]

from fastapi.testclient import TestClient  # noqa: E402
from http_throughput import cpu_seconds  # noqa: E402
from index_scale import synthesise, synthetic_record  # noqa: E402
from support.openapi import API_KEY_HEADER  # noqa: E402

from imgsearch.api.app import create_app  # noqa: E402
from imgsearch.bulk import files_under  # noqa: E402
from imgsearch.config import Settings  # noqa: E402
from imgsearch.embedding import Embedder, ModelRunner, ModelSpec, default_interpreters  # noqa: E402
from imgsearch.images import DecodeLimits, ImageRefused, decode_image  # noqa: E402
from imgsearch.index.shards import ShardData  # noqa: E402
from imgsearch.service import ImageSearch  # noqa: E402
from imgsearch.storage import Put  # noqa: E402

COREL = REPO.parent / "shared" / "data" / "corel1k"
PHOTO_SIZE = (4240, 2832)  # 12.0 megapixels, 3:2 like Corel's photos and most cameras
API_KEY = "bench-api-key"


# 1. The model alone ---------------------------------------------------------------------------


def model_inputs(folder: Path, spec: ModelSpec) -> list[np.ndarray]:
    """Every photo under `folder` decoded and resized for the model (how far a draft scales
    the decode changes the input's content a little, never the model's work on it)."""
    limits = DecodeLimits.from_settings(Settings())
    embedder = Embedder(spec, interpreters=1)
    inputs = []
    for _, path in files_under(folder):
        try:
            decoded = decode_image(path.read_bytes(), limits, draft_size=spec.input_size * 2)
        except ImageRefused:
            continue
        inputs.append(embedder.preprocess(decoded.image)[np.newaxis])
    return inputs


MODEL_SECONDS = 5.0  # at least, per measure of the model alone (a few photos repeat)


def model_bound(inputs: list[np.ndarray], runners: list[ModelRunner]) -> float:
    """Images per second with each runner in a thread of its own, the inputs split evenly,
    passed over again until `MODEL_SECONDS` have gone by (the CPU each image took is added
    to `MODEL_CPU`)."""
    done = [0] * len(runners)
    cpu = [0.0] * len(runners)
    until = time.perf_counter() + MODEL_SECONDS

    def run(number: int, part: list[np.ndarray]) -> None:
        started = time.thread_time()
        while time.perf_counter() < until:
            for batch in part:
                runners[number].run(batch)
                done[number] += 1
        cpu[number] = time.thread_time() - started

    threads = [
        threading.Thread(target=run, args=(number, inputs[number :: len(runners)]))
        for number in range(len(runners))
    ]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    MODEL_CPU.append(sum(cpu) / sum(done))
    return sum(done) / (time.perf_counter() - started)


# CPU seconds per image of each measure of the model alone: with the ingest's CPU per image,
# what the machine's load inflates less than the rates (other jobs take turns on the cores).
MODEL_CPU: list[float] = []


def real_features(inputs: list[np.ndarray], runner: ModelRunner, spec: ModelSpec):
    """Features and probabilities of the photos, for the synthesised collections."""
    outputs = [runner.run(batch) for batch in inputs]
    features = np.stack([out[spec.features_output].reshape(-1) for out in outputs])
    probabilities = np.stack([out[spec.probabilities_output].reshape(-1) for out in outputs])
    return features.astype(np.float32), probabilities.astype(np.float32)


# 2. imgsearch ingest ------------------------------------------------------------------------


def cli_ingest(folder: Path, scratch: Path, checkout: Path = REPO) -> tuple[float, int, float]:
    """(images added per second, images added) as `imgsearch ingest` of `checkout` reports
    them, into a fresh data directory, and the CPU seconds its process took (its start, the
    imports and the model's load included)."""
    data_dir = Path(tempfile.mkdtemp(dir=scratch, prefix="data-"))
    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    env = {**os.environ, "PYTHONPATH": str(checkout / "src"), "TF_CPP_MIN_LOG_LEVEL": "3"}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "imgsearch.cli",
            "ingest",
            "-q",
            str(folder),
            *("--data-dir", data_dir),
        ],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    now = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = now.ru_utime + now.ru_stime - used.ru_utime - used.ru_stime
    match = re.search(r"in ([\d.]+) s .*?: (\d+) added", done.stdout)
    assert match, done.stdout + done.stderr
    seconds, added = float(match[1]), int(match[2])
    subprocess.run(["rm", "-rf", str(data_dir)], check=True)
    return added / seconds, added, cpu


def phone_photos(folder: Path, count: int, seed: int = 7) -> Path:
    """`count` 12-megapixel JPEGs made from Corel photos: upscaled, with sensor-like noise
    so that they compress like photos, not like smooth enlargements (kept if made before)."""
    if folder.is_dir() and len(list(folder.glob("photo_*.jpg"))) == count:
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    sources = [path for _, path in files_under(COREL) if path.suffix.lower() == ".jpg"]
    picked = sources[:: max(1, len(sources) // count)][:count]
    rng = np.random.default_rng(seed)
    noise = rng.normal(0, 6, (PHOTO_SIZE[1], PHOTO_SIZE[0], 3)).astype(np.int16)
    folder.mkdir(parents=True, exist_ok=True)
    for number, source in enumerate(picked):
        with Image.open(source) as image:
            large = image.convert("RGB").resize(PHOTO_SIZE, Image.Resampling.BICUBIC)
        shift = int(rng.integers(0, PHOTO_SIZE[1]))
        pixels = np.asarray(large, dtype=np.int16) + np.roll(noise, shift, axis=0)
        photo = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
        photo.save(folder / f"photo_{number:04d}.jpg", quality=90)
    return folder


# 3. Upload latency --------------------------------------------------------------------------


def synthesised_service(
    data_dir: Path, size: int, real: tuple[np.ndarray, np.ndarray], cache: Path | None
) -> ImageSearch:
    """A local collection of `size` indexed images (records and shards, no neighbour lists:
    an upload computes only its own), copied from `cache` if made there before."""
    kept = cache / f"collection-{size}" if cache else None
    if kept and (kept / "complete").exists():
        shutil.copytree(kept, data_dir)
        return ImageSearch(Settings(data_dir=data_dir, api_key=API_KEY))
    service = _synthesise_service(data_dir, size, real)
    if kept:
        service.close()
        shutil.rmtree(kept, ignore_errors=True)
        shutil.copytree(data_dir, kept)
        (kept / "complete").touch()
        service = ImageSearch(Settings(data_dir=data_dir, api_key=API_KEY))
    return service


def _synthesise_service(data_dir: Path, size: int, real: tuple[np.ndarray, np.ndarray]):
    settings = Settings(data_dir=data_dir, api_key=API_KEY)
    service = ImageSearch(settings)
    features, probabilities = synthesise(*real, size, np.random.default_rng(size))
    ids = [f"{i:016x}" for i in range(size)]
    puts = [
        Put(f"image#{image_id}", "meta", synthetic_record(image_id, probs).attrs(), 0)
        for image_id, probs in zip(ids, probabilities, strict=True)
    ]
    service.parts.storage.catalog.put_many(puts)
    index, writer = service.parts.index, service.parts.builder.writer
    for start in range(0, size, settings.shard_size):
        index.refresh(force=True)
        rows = slice(start, start + settings.shard_size)
        writer.publish(ShardData(ids[rows], features[rows], probabilities[rows]), [])
        writer.settle(finish=True)  # the tier merges it starts, before the next publication
    index.refresh(force=True)
    return service


def upload_latencies(service: ImageSearch, photos: list[Path]) -> tuple[list[float], list[float]]:
    """Seconds per POST /api/images, one after the other (each answers once searchable), and
    the CPU seconds each took (this process and its decode workers: what the machine's load
    does not inflate as it does the wall clock). The first upload is a fresh process's (it
    loads the index, starts a decode worker and an interpreter); it is reported apart and the
    others are the measure."""
    seconds, cpu = [], []
    with TestClient(create_app(service), headers={API_KEY_HEADER: API_KEY}) as client:
        for path in photos:
            started, used = time.perf_counter(), cpu_seconds(os.getpid())
            response = client.post(
                "/api/images", files={"file": (path.name, path.read_bytes(), "image/jpeg")}
            )
            seconds.append(time.perf_counter() - started)
            cpu.append(cpu_seconds(os.getpid()) - used)
            assert response.status_code == 201, response.text
            assert response.json()["status"] == "added", response.text
    return seconds, cpu


# The run ------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="0: upload latency only")
    parser.add_argument("--photos", type=int, default=100, help="12-megapixel photos made")
    parser.add_argument("--sizes", type=int, nargs="*", default=[10_000, 100_000])
    parser.add_argument("--uploads", type=int, default=20, help="per collection size")
    parser.add_argument("--cache", type=Path, help="photos and collections kept for later runs")
    parser.add_argument("--baseline", type=Path, help="another checkout, measured alongside")
    parser.add_argument("--label", default="this", help=argparse.SUPPRESS)
    args = parser.parse_args()
    baseline = args.baseline.resolve() if args.baseline else None
    cache = args.cache.resolve() if args.cache else None

    spec = ModelSpec.load(Settings().model_path)
    workers = default_interpreters()
    print(f"{workers} CPUs; {workers} single-threaded interpreters, one per thread")
    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as scratch_name:
        scratch = Path(scratch_name)
        started = time.perf_counter()
        large = phone_photos((cache or scratch) / "photos", args.photos)
        print(
            f"{args.photos} photos of 12 MP ready in {time.perf_counter() - started:.0f} s",
            flush=True,
        )
        sets = {"Corel-1k": COREL, "12-MP photos": large}
        inputs = {name: model_inputs(folder, spec) for name, folder in sets.items()}
        runners = [ModelRunner(spec, 1) for _ in range(workers)]
        for runner in runners:  # the first call allocates the interpreter's tensors
            runner.run(inputs["Corel-1k"][0])

        checkouts = {"this": REPO, **({"baseline": baseline} if baseline else {})}
        bound: dict[tuple[str, str], list[float]] = {}
        ingest: dict[tuple[str, str], list[float]] = {}
        for round_number in range(args.rounds):
            for name, folder in sets.items():
                for label, checkout in checkouts.items():
                    # The model alone just before and just after the ingest: the machine's
                    # load changes by the minute, and the ratio must compare the same minutes.
                    before = model_bound(inputs[name], runners)
                    rate, added, cpu = cli_ingest(folder, scratch, checkout)
                    model = (before + model_bound(inputs[name], runners)) / 2
                    model_cpu = (MODEL_CPU[-1] + MODEL_CPU[-2]) / 2
                    bound.setdefault((label, name), []).append(model)
                    ingest.setdefault((label, name), []).append(rate)
                    print(
                        f"round {round_number + 1} {label} {name}: model {model:.1f}/s, "
                        f"ingest {rate:.1f}/s ({added} images): {rate / model:.0%}; CPU per "
                        f"image: model {1000 * model_cpu:.1f} ms, ingest {1000 * cpu / added:.1f}"
                        f" ms ({model_cpu * added / cpu:.0%})",
                        flush=True,
                    )
        if args.rounds:
            print("\nmedians                    model-bound/s  ingest/s  ratio  goal")
        goals = {"Corel-1k": 0.70, "12-MP photos": 0.40}
        for label, name in bound:
            ratios = [r / m for r, m in zip(ingest[label, name], bound[label, name], strict=True)]
            ratio = statistics.median(ratios)
            met = "met" if ratio >= goals[name] else "NOT met"
            print(
                f"{label:8} {name:17} {statistics.median(bound[label, name]):13.1f} "
                f"{statistics.median(ingest[label, name]):9.1f} {ratio:6.0%}  "
                f">= {goals[name]:.0%} {met}"
            )

        real = real_features(inputs["Corel-1k"], runners[0], spec)
        uploads = sorted(large.iterdir())
        for size in args.sizes:
            started = time.perf_counter()
            service = synthesised_service(scratch / f"collection-{size}", size, real, cache)
            made = time.perf_counter() - started
            seconds, cpu = upload_latencies(service, uploads[: args.uploads + 1])
            service.close()
            shutil.rmtree(scratch / f"collection-{size}")
            first, first_cpu = seconds.pop(0), cpu.pop(0)
            print(
                f"{args.label}: upload at {size:,} images (ready in {made:.0f} s; first upload "
                f"{first:.2f} s, CPU {first_cpu:.2f} s): "
                f"p50 {statistics.median(seconds):.3f} s, "
                f"p90 {float(np.percentile(seconds, 90)):.3f} s over {len(seconds)} uploads, "
                f"CPU p50 {statistics.median(cpu):.3f} s "
                f"(goal p50 <= 0.5 s: {'met' if statistics.median(seconds) <= 0.5 else 'NOT met'})",
                flush=True,
            )
            if baseline:
                baseline_uploads(baseline, size, args, cache or scratch)


def baseline_uploads(checkout: Path, size: int, args: argparse.Namespace, cache: Path) -> None:
    """The same upload measure, with `checkout`'s sources, right after this one's."""
    env = {**os.environ, "PYTHONPATH": str(checkout / "src"), "TF_CPP_MIN_LOG_LEVEL": "3"}
    subprocess.run(
        [
            sys.executable,
            __file__,
            *("--rounds", "0", "--photos", str(args.photos), "--uploads", str(args.uploads)),
            *("--sizes", str(size), "--cache", str(cache), "--label", "baseline"),
        ],
        env=env,
        check=True,
    )


if __name__ == "__main__":
    main()
