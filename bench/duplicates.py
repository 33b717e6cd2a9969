"""How well a distance threshold finds near-copies: precision and recall on generated pairs.

Every photo of the sets given (by default the demo photos and Corel-1k) gets near-copies made
here: resized to half, re-encoded as JPEG at quality 50, cropped by 5% on each side, and all
three a little at once (75%, 3% crop, quality 70). Everything is embedded by the real model,
and the stored neighbour distance (1 - cosine of the normalised features, as the index keeps
it) is measured between every pair of images. A pair at or under the threshold is called a
near-copy: right if both come from one photo. Photos of a set that are themselves near-copies
of each other count against precision (nothing here can tell them from an error).

    nice -n 5 .venv/bin/python bench/duplicates.py [--limit N] [--sets DIR ...]

Prints, per threshold: precision, recall (over every copy-to-original and copy-to-copy pair)
and recall per kind of copy; the distances of true pairs (median, p95, max) against each
photo's nearest other photo (min, p1, median), which bound any threshold.
"""

from __future__ import annotations

import argparse
import io
import statistics
import time
from pathlib import Path

import numpy as np
from PIL import Image

from imgsearch.bulk import files_under
from imgsearch.config import Settings
from imgsearch.embedding import Embedder, ModelSpec
from imgsearch.images import DecodeLimits, ImageRefused, decode_image
from imgsearch.vectors import unit_rows

REPO = Path(__file__).resolve().parents[1]
SETS = [REPO / "demo", REPO.parent / "shared" / "data" / "corel1k"]
THRESHOLDS = (0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.08, 0.1, 0.12, 0.15)


def _jpeg(image: Image.Image, quality: int) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


def _crop(image: Image.Image, share: float) -> Image.Image:
    w, h = image.size
    dx, dy = round(w * share), round(h * share)
    return image.crop((dx, dy, w - dx, h - dy))


def _scaled(image: Image.Image, factor: float) -> Image.Image:
    w, h = image.size
    return image.resize((max(1, round(w * factor)), max(1, round(h * factor))), Image.LANCZOS)


COPIES = {
    "resized": lambda image: _jpeg(_scaled(image, 0.5), 90),
    "re-encoded": lambda image: _jpeg(image, 50),
    "cropped": lambda image: _jpeg(_crop(image, 0.05), 90),
    "all three": lambda image: _jpeg(_crop(_scaled(image, 0.75), 0.03), 70),
}


def photos(sets: list[Path], limit: int | None) -> list[Image.Image]:
    settings = Settings()
    limits = DecodeLimits.from_settings(settings)
    found = []
    for folder in sets:
        for _, path in files_under(folder):
            try:
                found.append(decode_image(path.read_bytes(), limits).image.convert("RGB"))
            except ImageRefused:
                continue
    if limit and len(found) > limit:
        rng = np.random.default_rng(0)
        found = [found[i] for i in sorted(rng.choice(len(found), limit, replace=False))]
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sets", type=Path, nargs="+", default=SETS)
    parser.add_argument("--limit", type=int, default=None, help="photos at most (a sample)")
    args = parser.parse_args()
    originals = photos([s for s in args.sets if s.is_dir()], args.limit)
    images, source, kind = [], [], []
    for number, image in enumerate(originals):
        images.append(image)
        source.append(number)
        kind.append("original")
        for name, make in COPIES.items():
            images.append(make(image))
            source.append(number)
            kind.append(name)
    embedder = Embedder(ModelSpec.load(Settings().model_path))
    started = time.perf_counter()
    features, _ = embedder.embed_batch(images)
    seconds = time.perf_counter() - started
    units = unit_rows(features.astype(np.float16).astype(np.float32))  # as stored
    distance = np.clip(1.0 - units @ units.T, 0.0, 2.0)
    source_ids, kinds = np.array(source), np.array(kind)
    upper = np.triu(np.ones_like(distance, dtype=bool), k=1)
    same = (source_ids[:, None] == source_ids[None, :]) & upper
    different = (source_ids[:, None] != source_ids[None, :]) & upper
    print(
        f"{len(originals)} photos x {len(COPIES)} copies = {len(images)} images, embedded in "
        f"{seconds:.0f} s; {int(same.sum()):,} true pairs, {int(different.sum()):,} others"
    )
    true_distances = distance[same]
    originals_only = kinds == "original"
    between = distance[np.ix_(originals_only, originals_only)].copy()
    np.fill_diagonal(between, np.inf)
    nearest_other = between.min(axis=1)
    print(
        f"true pairs: median {np.median(true_distances):.4f}, "
        f"p95 {np.percentile(true_distances, 95):.4f}, max {true_distances.max():.4f}; "
        f"nearest other photo: min {nearest_other.min():.4f}, "
        f"p1 {np.percentile(nearest_other, 1):.4f}, median {np.median(nearest_other):.4f}"
    )
    header = " | ".join(f"{name:>10}" for name in COPIES)
    print(f"| threshold | precision | recall | {header} |")
    for threshold in THRESHOLDS:
        called = distance <= threshold
        right = int((called & same).sum())
        wrong = int((called & different).sum())
        precision = right / (right + wrong) if right + wrong else 1.0
        recall = right / int(same.sum())
        per_kind = []
        for name in COPIES:
            rows = np.flatnonzero(kinds == name)
            to_original = distance[rows, rows - list(COPIES).index(name) - 1]
            per_kind.append(f"{float(np.mean(to_original <= threshold)):>10.3f}")
        print(
            f"| {threshold:9.2f} | {precision:9.4f} | {recall:6.3f} | {' | '.join(per_kind)} |"
            f"  ({wrong} wrong pairs)"
        )
    print(f"median seconds per image embedded: {statistics.median([seconds / len(images)]):.3f}")


if __name__ == "__main__":
    main()
