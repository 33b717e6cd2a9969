"""ImageNet classifier on TensorFlow Lite: a feature vector and 1000 class probabilities.

A model is a `.tflite` file plus a JSON sidecar of the same name describing how to feed it
and which signature outputs to read, so another classifier (Inception v3, say) drops in by
pointing the configuration at its sidecar.
"""

from __future__ import annotations

import json
import os
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from PIL import Image


@dataclass(frozen=True)
class ModelSpec:
    """How to run one classifier: read from `<model>.json` next to `<model>.tflite`."""

    name: str
    path: Path
    input_size: int
    input_range: tuple[float, float]
    crop_fraction: float
    features_output: str
    probabilities_output: str
    sha256: str

    @classmethod
    def load(cls, sidecar: str | Path) -> ModelSpec:
        sidecar = Path(sidecar)
        if sidecar.suffix == ".tflite":
            sidecar = sidecar.with_suffix(".json")
        meta = json.loads(sidecar.read_text())
        low, high = meta["input_range"]
        return cls(
            name=meta["name"],
            path=sidecar.with_name(meta["file"]),
            input_size=int(meta["input_size"]),
            input_range=(float(low), float(high)),
            crop_fraction=float(meta.get("crop_fraction", 1.0)),
            features_output=meta["features_output"],
            probabilities_output=meta["probabilities_output"],
            sha256=meta.get("sha256", ""),
        )


class _SignatureRunner(Protocol):
    """What this module uses of LiteRT's SignatureRunner (the package ships no types)."""

    def get_input_details(self) -> dict[str, dict[str, Any]]: ...

    def get_output_details(self) -> dict[str, dict[str, Any]]: ...

    def __call__(self, **inputs: np.ndarray) -> dict[str, np.ndarray]: ...


@dataclass(frozen=True)
class Embedding:
    features: np.ndarray  # float32 [d], the pooled "transfer layer"
    probabilities: np.ndarray  # float32 [1000], softmax over ImageNet classes


class ImageEmbedder(ABC):
    """What the service, ingest and the bulk tools ask of a classifier: its spec (the name an
    index records, the input size decoding drafts for), the sizes of its outputs, and the
    outputs for images. `Embedder` runs the TFLite model; the tests' fast tier runs a small
    deterministic stand-in (tests/support/fake_embedder.py) behind this same interface."""

    spec: ModelSpec
    feature_dim: int
    num_classes: int
    runs_at_once: int = 1  # images it embeds at the same time, from as many threads

    def embed(self, image: Image.Image) -> Embedding:
        features, probabilities = self.embed_batch([image])
        return Embedding(features=features[0], probabilities=probabilities[0])

    @abstractmethod
    def embed_batch(self, images: Sequence[Image.Image]) -> tuple[np.ndarray, np.ndarray]:
        """Features [n, feature_dim] and probabilities [n, num_classes] for `images`, in order."""


class ModelRunner:
    """One TFLite interpreter and its signature runner: for one thread at a time."""

    def __init__(self, spec: ModelSpec, num_threads: int | None) -> None:
        from ai_edge_litert.interpreter import Interpreter

        self.interpreter = Interpreter(model_path=str(spec.path), num_threads=num_threads)
        self.runner: _SignatureRunner = self.interpreter.get_signature_runner()
        (self.input_name,) = self.runner.get_input_details()

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        return self.runner(**{self.input_name: batch})


def default_interpreters() -> int:
    """One interpreter per CPU this process may run on (its affinity, which a container's CPU
    set narrows, unlike `os.cpu_count()`)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, cpus or 1)


class Embedder(ImageEmbedder):
    """Runs the classifier. Thread-safe: up to `interpreters` threads run it at once, each on
    an interpreter of its own (a single interpreter serialises its calls, and a shared one
    behind a lock kept the second worker waiting most of the time). Interpreters are made as
    concurrent callers need them (each holds its own copy of the weights, about 25 MB), and
    run single-threaded when there may be several, so that they do not fight for the cores.
    """

    def __init__(
        self, spec: ModelSpec, num_threads: int | None = None, interpreters: int | None = None
    ) -> None:
        self.spec = spec
        self.runs_at_once = interpreters or default_interpreters()
        if num_threads is None and self.runs_at_once > 1:
            num_threads = 1
        self.num_threads = num_threads
        first = ModelRunner(spec, num_threads)
        outputs = first.runner.get_output_details()
        missing = {spec.features_output, spec.probabilities_output} - set(outputs)
        if missing:
            raise ValueError(
                f"{spec.path.name} has no output {sorted(missing)}; has {sorted(outputs)}"
            )
        self.feature_dim = int(outputs[spec.features_output]["shape"][-1])
        self.num_classes = int(outputs[spec.probabilities_output]["shape"][-1])
        self._idle: list[ModelRunner] = [first]
        self._made = 1
        self._changed = threading.Condition()

    @contextmanager
    def _interpreter(self) -> Iterator[ModelRunner]:
        """An idle interpreter, a new one if all are busy and fewer than the maximum exist,
        or else the first to be freed."""
        with self._changed:
            while not self._idle and self._made >= self.runs_at_once:
                self._changed.wait()
            interpreter = self._idle.pop() if self._idle else None
            if interpreter is None:
                self._made += 1
        if interpreter is None:
            try:
                interpreter = ModelRunner(self.spec, self.num_threads)
            except BaseException:
                with self._changed:
                    self._made -= 1
                    self._changed.notify()
                raise
        try:
            yield interpreter
        finally:
            with self._changed:
                self._idle.append(interpreter)
                self._changed.notify()

    def preprocess(self, image: Image.Image) -> np.ndarray:
        """The centre square (`crop_fraction` of the shorter side) resized to the model's input,
        scaled to its range. Cropped in the source's coordinates, so that the work is bounded
        by the input size whatever the shape (an 8 x 6,000,000 strip is not scaled up first)."""
        size = self.spec.input_size
        width, height = image.size
        side = min(width, height) * self.spec.crop_fraction
        left, top = (width - side) / 2, (height - side) / 2
        cropped = image.resize(
            (size, size),
            Image.Resampling.BICUBIC,
            box=(left, top, left + side, top + side),
            reducing_gap=3.0,
        )
        pixels = np.asarray(cropped, dtype=np.float32)
        low, high = self.spec.input_range
        if (low, high) != (0.0, 255.0):
            pixels = pixels * ((high - low) / 255.0) + low
        return pixels

    def embed_batch(self, images: Sequence[Image.Image]) -> tuple[np.ndarray, np.ndarray]:
        features = np.empty((len(images), self.feature_dim), dtype=np.float32)
        probabilities = np.empty((len(images), self.num_classes), dtype=np.float32)
        for row, image in enumerate(images):
            batch = self.preprocess(image)[np.newaxis]
            with self._interpreter() as interpreter:
                out = interpreter.run(batch)
            features[row] = out[self.spec.features_output].reshape(-1)
            probabilities[row] = out[self.spec.probabilities_output].reshape(-1)
        return features, probabilities
