"""Compare image models for similar-image search on Corel-1k: speed and precision@k.

Runs in the project venv (ai-edge-litert, numpy, pillow) on models made by
scripts/convert_model.py, e.g. both variants written to build/models/ first:

    build/convert-venv/bin/python scripts/convert_model.py --variant lite0 --variant lite2 \\
        --out-dir build/models/lite
    PYTHONPATH=src .venv/bin/python bench/compare_models.py \\
        --models build/models/lite/efficientnet_lite0.json build/models/lite/efficientnet_lite2.json

For every model x crop fraction it decodes the 1000 photos (`decode_image`, timed separately),
embeds them one by one on one thread (`Embedder`, median ms/image), then scores
leave-one-out retrieval: precision@5/10/20 where relevant means the same Corel class, for
cosine on L2-normalised features, manhattan and euclidean on raw features, and cosine on the
class probabilities. Distances are exact (no index).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import numpy as np

from imgsearch.embedding import Embedder, ModelSpec
from imgsearch.images import decode_image

T = TypeVar("T")
KS = (5, 10, 20)
CORPUS = Path("/work/shared/data/corel1k")


@dataclasses.dataclass
class Run:
    label: str
    model: str
    crop_fraction: float
    decode_ms: float
    preprocess_ms: float
    embed_ms: float  # preprocess + inference, what Embedder.embed costs
    precision: dict[str, dict[int, float]]  # metric -> k -> mean precision@k


def read_labels(corpus: Path) -> tuple[list[Path], np.ndarray]:
    with (corpus / "labels.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    return [corpus / row["path"] for row in rows], np.array([row["label"] for row in rows])


def l2_normalise(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def cosine_distances(x: np.ndarray) -> np.ndarray:
    unit = l2_normalise(x.astype(np.float64))
    return 1.0 - unit @ unit.T


def euclidean_distances(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    squared = (x * x).sum(axis=1)
    return np.sqrt(np.maximum(squared[:, None] + squared[None, :] - 2.0 * x @ x.T, 0.0))


def manhattan_distances(x: np.ndarray, chunk: int = 25) -> np.ndarray:
    x = x.astype(np.float64)
    out = np.empty((len(x), len(x)))
    for start in range(0, len(x), chunk):
        out[start : start + chunk] = np.abs(x[start : start + chunk, None, :] - x[None]).sum(-1)
    return out


def precision_at_k(distances: np.ndarray, labels: np.ndarray) -> dict[int, float]:
    """Mean over queries of the share of same-label images among the k nearest others."""
    distances = distances.copy()
    np.fill_diagonal(distances, np.inf)  # the query itself never counts
    order = np.argsort(distances, axis=1, kind="stable")[:, : max(KS)]
    relevant = labels[order] == labels[:, None]
    return {k: float(relevant[:, :k].mean()) for k in KS}


METRICS: dict[str, tuple[str, Callable[[np.ndarray], np.ndarray]]] = {
    "cosine (L2-normalised features)": ("features", cosine_distances),
    "manhattan (raw features)": ("features", manhattan_distances),
    "euclidean (raw features)": ("features", euclidean_distances),
    "cosine (probabilities)": ("probabilities", cosine_distances),
}


def timed(fn: Callable[[], T]) -> tuple[T, float]:
    start = time.perf_counter()
    result = fn()
    return result, (time.perf_counter() - start) * 1000.0


def evaluate(
    label: str,
    spec: ModelSpec,
    paths: list[Path],
    labels: np.ndarray,
    warmup: int,
    save_dir: Path | None = None,
) -> Run:
    embedder = Embedder(spec, num_threads=1)
    draft = round(spec.input_size / spec.crop_fraction)
    images, decode_ms = [], []
    for path in paths:
        data = path.read_bytes()
        decoded, ms = timed(lambda data=data: decode_image(data, draft_size=draft))
        images.append(decoded.image)
        decode_ms.append(ms)
    for image in images[:warmup]:
        embedder.embed(image)
    preprocess_ms = [timed(lambda image=image: embedder.preprocess(image))[1] for image in images]
    features = np.empty((len(images), embedder.feature_dim), dtype=np.float32)
    probabilities = np.empty((len(images), embedder.num_classes), dtype=np.float32)
    embed_ms = []
    for row, image in enumerate(images):
        embedding, ms = timed(lambda image=image: embedder.embed(image))
        features[row] = embedding.features
        probabilities[row] = embedding.probabilities
        embed_ms.append(ms)
    outputs = {"features": features, "probabilities": probabilities}
    if save_dir is not None:
        save_dir.mkdir(parents=True, exist_ok=True)
        name = f"{spec.path.stem}_{spec.path.parent.name}_crop{spec.crop_fraction:g}.npz"
        np.savez(save_dir / name, labels=labels, **outputs)
    precision = {
        metric: precision_at_k(distance(outputs[output]), labels)
        for metric, (output, distance) in METRICS.items()
    }
    return Run(
        label=label,
        model=spec.name,
        crop_fraction=spec.crop_fraction,
        decode_ms=statistics.median(decode_ms),
        preprocess_ms=statistics.median(preprocess_ms),
        embed_ms=statistics.median(embed_ms),
        precision=precision,
    )


def print_table(runs: list[Run]) -> None:
    print()
    print("median ms/image, single thread (embed = preprocess + inference; decode separate)")
    print(f"{'model':<28} {'crop':>5} {'decode':>7} {'preproc':>8} {'embed':>7}")
    for run in runs:
        print(
            f"{run.label:<28} {run.crop_fraction:>5.3f} {run.decode_ms:>7.2f} "
            f"{run.preprocess_ms:>8.2f} {run.embed_ms:>7.2f}"
        )
    print()
    print("precision@k, leave-one-out over all images (relevant = same label)")
    header = f"{'model':<28} {'crop':>5} {'metric':<33}" + "".join(
        f" {'p@' + str(k):>6}" for k in KS
    )
    print(header)
    print("-" * len(header))
    for run in runs:
        for metric, by_k in run.precision.items():
            cells = "".join(f" {by_k[k]:>6.3f}" for k in KS)
            print(f"{run.label:<28} {run.crop_fraction:>5.3f} {metric:<33}{cells}")
    print()
    best_run, best_metric = max(
        ((run, metric) for run in runs for metric in run.precision),
        key=lambda pair: pair[0].precision[pair[1]][20],
    )
    print(
        f"best p@20: {best_run.label}, crop {best_run.crop_fraction}, {best_metric}: "
        f"{best_run.precision[best_metric][20]:.3f}"
    )
    for run in runs:
        top = max(run.precision, key=lambda metric: run.precision[metric][20])
        print(f"  best p@20 for {run.label} crop {run.crop_fraction}: {top}")
    by_model: dict[str, list[Run]] = {}
    for run in runs:
        by_model.setdefault(run.label, []).append(run)
    names = list(by_model)
    if len(names) >= 2:
        base, other = names[0], names[1]
        for run in by_model[other]:
            ref = next((r for r in by_model[base] if r.crop_fraction == run.crop_fraction), None)
            if ref is not None:
                print(
                    f"cost ratio {other}/{base} at crop {run.crop_fraction}: "
                    f"{run.embed_ms / ref.embed_ms:.2f}x embed ms "
                    f"({run.embed_ms:.2f} / {ref.embed_ms:.2f})"
                )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=Path, nargs="+", required=True, help="sidecar .json")
    parser.add_argument("--crop-fractions", type=float, nargs="+", default=[0.875, 1.0])
    parser.add_argument("--corpus", type=Path, default=CORPUS, help="with labels.csv")
    parser.add_argument("--limit", type=int, default=0, help="first N images only (smoke test)")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--save-dir", type=Path, help="keep the embeddings here as .npz")
    args = parser.parse_args(argv)
    paths, labels = read_labels(args.corpus)
    if args.limit:
        paths, labels = paths[: args.limit], labels[: args.limit]
    print(f"{len(paths)} images, {len(set(labels))} labels from {args.corpus}")
    runs = []
    for sidecar in args.models:
        spec = ModelSpec.load(sidecar)
        label = f"{spec.name} ({sidecar.parent.name})"
        for crop_fraction in args.crop_fractions:
            run_spec = dataclasses.replace(spec, crop_fraction=crop_fraction)
            run, seconds = timed(
                lambda s=run_spec, n=label: evaluate(
                    n, s, paths, labels, args.warmup, args.save_dir
                )
            )
            cosine = run.precision[next(iter(METRICS))][20]
            print(
                f"{label} crop {crop_fraction}: embed {run.embed_ms:.2f} ms/image, "
                f"p@20 cosine {cosine:.3f} ({seconds / 1000:.0f} s)",
                flush=True,
            )
            runs.append(run)
    print_table(runs)


if __name__ == "__main__":
    main()
