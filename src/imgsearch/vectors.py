"""Unit vectors: the one way rows are L2-normalised, so that Euclidean order equals cosine
order (Annoy "angular") and a dot product is a cosine."""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, DTypeLike


def unit_rows(rows: ArrayLike, dtype: DTypeLike | None = np.float32) -> np.ndarray:
    """`rows` (or one vector) scaled to length 1 along the last axis, computed in `dtype`
    (None: the array's own); a zero row stays zero."""
    rows = np.asarray(rows, dtype=dtype)
    norms = np.linalg.norm(rows, axis=-1, keepdims=True)
    units: np.ndarray = rows / np.maximum(norms, 1e-12)
    return units
