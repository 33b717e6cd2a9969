"""A small deterministic stand-in for the classifier, for the fast tier of the tests.

It has the interface of `imgsearch.embedding.ImageEmbedder` and derives everything from the
decoded pixels, as the model does, but in a millisecond and without TFLite:
- features: the mean colour of each cell of a 4 x 4 grid over the centre square, and a
  4 x 4 x 4 colour histogram of it (so a photo and its recompressed or slightly shifted copy
  get nearly the same vector, and a red photo and a blue one do not);
- probabilities: a softmax over 1000 classes of a fixed random projection of those features
  (so similar photos share their top classes, and each photo has a few classes far above the
  rest, as the model's do).
What it cannot do is know what a photo shows: tests whose assertions rest on that (a query for
"elephant" finds the elephants) are marked `model` and run on the real one.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from imgsearch.embedding import ImageEmbedder, ModelSpec

GRID = 4  # cells per side of the centre square whose mean colours are features
BINS = 4  # levels per channel of the colour histogram
HISTOGRAM_SIDE = 32  # the centre square is reduced to this many pixels a side for the histogram
SHARPNESS = 4.0  # scales the logits: a few classes of each photo well above the rest
SEED = 14


class ColourEmbedder(ImageEmbedder):
    """Colour statistics as features, a fixed projection of them as class probabilities."""

    def __init__(self, input_size: int = 260, num_classes: int = 1000) -> None:
        # The real model's input size by default, so that decoding drafts the same sizes.
        self.spec = ModelSpec(
            name="colour-statistics",
            path=Path("colour-statistics"),
            input_size=input_size,
            input_range=(0.0, 255.0),
            crop_fraction=1.0,
            features_output="features",
            probabilities_output="probabilities",
            sha256="",
        )
        self.feature_dim = GRID * GRID * 3 + BINS**3
        self.num_classes = num_classes
        rng = np.random.default_rng(SEED)
        self._projection = rng.standard_normal((self.feature_dim, num_classes)).astype(np.float32)

    def embed_batch(self, images: Sequence[Image.Image]) -> tuple[np.ndarray, np.ndarray]:
        features = np.stack([self._features(image) for image in images]).astype(np.float32)
        # Centred, so that what all photos share (every feature is positive) favours no class.
        logits = (features - self._centre) @ self._projection * SHARPNESS
        logits -= logits.max(axis=1, keepdims=True)
        exp = np.exp(logits)
        probabilities = (exp / exp.sum(axis=1, keepdims=True)).astype(np.float32)
        return features.reshape(len(images), self.feature_dim), probabilities

    @property
    def _centre(self) -> np.ndarray:
        return np.concatenate([np.full(GRID * GRID * 3, 0.5), np.full(BINS**3, 1 / BINS**3)])

    @staticmethod
    def _features(image: Image.Image) -> np.ndarray:
        image = image.convert("RGB")
        box = _centre_square(image.size)
        cells = np.asarray(_reduced(image, box, GRID), np.float32) / 255
        small = np.asarray(_reduced(image, box, HISTOGRAM_SIDE), np.int64)
        levels = small * BINS // 256
        bins = (levels[..., 0] * BINS + levels[..., 1]) * BINS + levels[..., 2]
        histogram = np.bincount(bins.ravel(), minlength=BINS**3) / bins.size
        return np.concatenate([cells.ravel(), histogram])


def _centre_square(size: tuple[int, int]) -> tuple[int, int, int, int]:
    width, height = size
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    return left, top, left + side, top + side


def _reduced(image: Image.Image, box: tuple[int, int, int, int], side: int) -> Image.Image:
    """`box` of `image` averaged down to side x side pixels (read in the source's coordinates,
    so a huge image costs one pass)."""
    return image.resize((side, side), Image.Resampling.BOX, box=box)
