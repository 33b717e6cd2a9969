"""The worst a small file can make the decoder spend: peak memory and time, per format and mode.

Each bomb of `tests/support/hostile_files.bombs()` (sized for the open reverse search's pixel
limit), the same bombs at the keyed upload's limit (7071 x 7071, just under 50 megapixels), and
a real photo for scale, is decoded in a fresh Python process as a decode worker does it: with the
limits of the open reverse search (`max_search_pixels`) and of the keyed upload, and the
reduction the model asks for. That process runs under an address space cap (--cap-mb) and is
killed after --timeout seconds, so that measuring the code before the fix cannot take the
machine down. Printed per file: bytes in, declared format, mode and size, then per code and
limits the answer (decoded to a size, or the refusal code), wall time, and the process's peak
RSS (of which about 60 MB is the interpreter with Pillow and NumPy: see `baseline`).

    .venv/bin/python bench/decode_worst.py                           # this checkout
    .venv/bin/python bench/decode_worst.py --compare /work/main/src  # and other code, before

The code before the fix had one pixel limit for both endpoints. `measure()` is what
bench/attack.py can call for the same numbers.
"""

from __future__ import annotations

import argparse
import io
import json
import resource
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from support.hostile_files import (  # noqa: E402
    Case,
    animated_webp,
    bmp_rle,
    bombs,
    encode,
    gif_frames,
    jpeg_scan_bomb,
    photo,
    png_zlib_bomb,
    tiff_bomb,
    webp_canvas,
)

# Runs in the child: decode stdin as a worker would, print what it cost. Works with the code
# before the fix too (decode_image took its limits as keywords then).
CHILD = """
import json, resource, sys, time
data = sys.stdin.buffer.read()
from imgsearch import images
from imgsearch.config import Settings
baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
settings = Settings()
started = time.perf_counter()
try:
    if hasattr(images, "DecodeLimits"):
        limits = images.DecodeLimits.from_settings(settings, open_endpoint=OPEN)
        decoded = images.decode_image(data, limits, draft_size=DRAFT)
    else:
        decoded = images.decode_image(
            data,
            max_bytes=settings.max_image_bytes,
            max_pixels=settings.max_image_pixels,
            draft_size=DRAFT,
        )
    answer = "decoded " + "x".join(map(str, decoded.image.size))
except images.ImageRefused as refusal:
    answer = refusal.reason
except MemoryError:
    answer = "MemoryError"
print(json.dumps({
    "answer": answer,
    "seconds": time.perf_counter() - started,
    "peak_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
    "baseline_kib": baseline,
}))
"""
DRAFT = 520  # what the model asks for: twice its input side (Ingestor.decode)


@dataclass(frozen=True)
class Cost:
    answer: str
    seconds: float | None
    peak_mb: float | None
    baseline_mb: float | None = None


def measure(
    data: bytes,
    src: Path,
    *,
    open_endpoint: bool = True,
    cap_mb: int = 3072,
    timeout: float = 60.0,
) -> Cost:
    """Decode `data` with the code under `src` in a fresh capped process, with the limits of
    the open reverse search (or of the keyed upload); what it cost."""

    def cap() -> None:
        limit = cap_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    try:
        done = subprocess.run(
            [
                sys.executable,
                "-c",
                CHILD.replace("DRAFT", str(DRAFT)).replace("OPEN", str(open_endpoint)),
            ],
            input=data,
            capture_output=True,
            timeout=timeout,
            preexec_fn=cap,
            env={"PYTHONPATH": str(src), "PATH": "/usr/bin:/bin"},
        )
    except subprocess.TimeoutExpired:
        return Cost(f"killed after {timeout:.0f} s", None, None)
    if done.returncode != 0:
        tail = done.stderr.decode(errors="replace").strip().splitlines()[-1:]
        return Cost(f"crashed ({done.returncode}): {' '.join(tail)[:60]}", None, None)
    out = json.loads(done.stdout.decode().strip().splitlines()[-1])
    return Cost(out["answer"], out["seconds"], out["peak_kib"] / 1024, out["baseline_kib"] / 1024)


def describe(data: bytes) -> str:
    """Format, mode and declared size, as Pillow reads them from the header."""
    from PIL import Image

    Image.MAX_IMAGE_PIXELS = None
    try:
        with Image.open(io.BytesIO(data)) as image:
            frames = getattr(image, "n_frames", 1)
            extra = f", {frames} frames" if frames > 1 else ""
            return f"{image.format} {image.mode} {image.width}x{image.height}{extra}"
    except Exception as error:
        return type(error).__name__


UPLOAD_SIDE = 7071  # 49,999,041 pixels: the largest square the keyed upload takes


def at_upload_limit(side: int = UPLOAD_SIDE) -> list[Case]:
    """The bombs that decode at the open endpoint's limit, at the keyed upload's instead."""
    return [
        Case(f"canvas-{side}.webp", webp_canvas(side, side), None),
        Case(f"frames-{side}.webp", animated_webp(side, 20), None),
        Case(f"float-{side}.tif", tiff_bomb(side, side), None),
        Case(f"sixteen-bit-{side}.tif", tiff_bomb(side, side, bits=16, sample_format=1), None),
        Case(f"rgb-{side}.tif", tiff_bomb(side, side, bits=8, sample_format=1, samples=3), None),
        Case(f"scans-{side}.jpg", jpeg_scan_bomb(side, 15000), None),
        Case(f"progressive-{side}.jpg", jpeg_scan_bomb(side, 1), None),
        Case(f"zlib-{side}.png", png_zlib_bomb(side), None),
        Case(f"zlib-grey16-{side}.png", png_zlib_bomb(side, color_type=0), None),
        Case(f"frames-{side}.gif", gif_frames(side, 20), None),
        Case(f"rle-{side}.bmp", bmp_rle(side, side), None),
    ]


def cases() -> list[Case]:
    real = encode(photo(4000, 3000), "JPEG", quality=90)
    return [Case("photo-12mp.jpg", real, None), *bombs(), *at_upload_limit()]


def _cell(cost: Cost) -> str:
    seconds = "-" if cost.seconds is None else f"{cost.seconds:.2f}"
    peak = "-" if cost.peak_mb is None else f"{cost.peak_mb:.0f}"
    return f"{cost.answer} | {seconds} | {peak}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", type=Path, default=REPO / "src", help="the code to measure")
    parser.add_argument("--compare", type=Path, help="also measure this code (before)")
    parser.add_argument("--cap-mb", type=int, default=3072, help="address space cap per decode")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per decode")
    parser.add_argument("--only", nargs="*", help="file names to measure")
    args = parser.parse_args()
    # (label, code, open endpoint's limits?)
    runs = [("before", args.compare, True)] if args.compare else []
    runs += [("reverse search", args.src, True), ("upload", args.src, False)]
    header = "| file | bytes | declared |"
    rule = "|---|---:|---|"
    for label, _, _ in runs:
        header += f" {label}: answer | s | peak MB |"
        rule += "---|---:|---:|"
    print(header)
    print(rule)
    baseline = {}
    for case in cases():
        if args.only and case.name not in args.only:
            continue
        row = f"| {case.name} | {len(case.data):,} | {describe(case.data)} |"
        for label, src, open_endpoint in runs:
            cost = measure(
                case.data,
                src,
                open_endpoint=open_endpoint,
                cap_mb=args.cap_mb,
                timeout=args.timeout,
            )
            if cost.baseline_mb:
                baseline[label] = cost.baseline_mb
            row += f" {_cell(cost)} |"
        print(row, flush=True)
    print(
        "\nbaseline (interpreter, Pillow, NumPy, imgsearch.images loaded): "
        + ", ".join(f"{label} {mb:.0f} MB" for label, mb in baseline.items())
        + f"; cap {args.cap_mb} MB of address space, {args.timeout:.0f} s per decode"
    )


if __name__ == "__main__":
    main()
