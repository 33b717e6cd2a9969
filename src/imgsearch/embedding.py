"""ImageNet classifier on TensorFlow Lite: a feature vector and 1000 class probabilities.

A model is a `.tflite` file plus a JSON sidecar of the same name describing how to feed it
and which signature outputs to read, so another classifier (Inception v3, say) drops in by
pointing the configuration at its sidecar.
"""

from __future__ import annotations

import json
import threading
from abc import ABC, abstractmethod
from collections.abc import Sequence
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

    def embed(self, image: Image.Image) -> Embedding:
        features, probabilities = self.embed_batch([image])
        return Embedding(features=features[0], probabilities=probabilities[0])

    @abstractmethod
    def embed_batch(self, images: Sequence[Image.Image]) -> tuple[np.ndarray, np.ndarray]:
        """Features [n, feature_dim] and probabilities [n, num_classes] for `images`, in order."""


class Embedder(ImageEmbedder):
    """Runs the classifier. Thread-safe: one interpreter, invocations serialised."""

    def __init__(self, spec: ModelSpec, num_threads: int | None = None) -> None:
        from ai_edge_litert.interpreter import Interpreter

        self.spec = spec
        self._interpreter = Interpreter(model_path=str(spec.path), num_threads=num_threads)
        self._runner: _SignatureRunner = self._interpreter.get_signature_runner()
        (self._input_name,) = self._runner.get_input_details()
        outputs = self._runner.get_output_details()
        missing = {spec.features_output, spec.probabilities_output} - set(outputs)
        if missing:
            raise ValueError(
                f"{spec.path.name} has no output {sorted(missing)}; has {sorted(outputs)}"
            )
        self.feature_dim = int(outputs[spec.features_output]["shape"][-1])
        self.num_classes = int(outputs[spec.probabilities_output]["shape"][-1])
        self._lock = threading.Lock()

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
            with self._lock:
                out = self._runner(**{self._input_name: batch})
            features[row] = out[self.spec.features_output].reshape(-1)
            probabilities[row] = out[self.spec.probabilities_output].reshape(-1)
        return features, probabilities
