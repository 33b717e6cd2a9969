"""The shard projection's fit: the Gram-matrix path for fewer rows than dimensions finds the
covariance's own axes, and the decomposition runs on the calling thread."""

from __future__ import annotations

import numpy as np
from threadpoolctl import threadpool_info, threadpool_limits

from imgsearch.index import shards
from imgsearch.index.shards import Projection


def rows_with_distinct_spread(count: int, dim: int, seed: int = 0) -> np.ndarray:
    """Rows whose principal axes are well separated (a spread falling along the dimensions,
    randomly rotated), as image features are: the axes are then unique up to sign."""
    rng = np.random.default_rng(seed)
    rotation, _ = np.linalg.qr(rng.normal(size=(dim, dim)))
    scaled = rng.normal(size=(count, dim)) * np.geomspace(3.0, 0.01, dim)
    return (scaled @ rotation.T + rng.normal(size=dim)).astype(np.float32)


def covariance_axes(features: np.ndarray, count: int) -> np.ndarray:
    """The reference: the leading eigenvectors of the covariance, as rows."""
    centred = features.astype(np.float64) - features.mean(axis=0, dtype=np.float64)
    _, vectors = np.linalg.eigh(centred.T @ centred)
    axes: np.ndarray = vectors[:, ::-1][:, :count].T
    return axes


def test_a_fit_on_fewer_rows_than_dimensions_finds_the_covariance_axes() -> None:
    features = rows_with_distinct_spread(60, 400)
    fitted = Projection.fit(features, 128)
    assert fitted.components.shape == (60, 400)
    reference = covariance_axes(features, 60)
    # 60 centred rows span 59 directions: those are the covariance's, each up to its sign.
    agreement = np.abs(np.sum(fitted.components[:59] * reference[:59], axis=1))
    assert agreement.min() > 0.999, agreement.min()
    np.testing.assert_allclose(fitted.mean, features.mean(axis=0), atol=1e-6)


def test_a_fit_on_few_rows_keeps_every_distance_among_them() -> None:
    features = rows_with_distinct_spread(30, 300, seed=1)
    fitted = Projection.fit(features, 128)
    components = fitted.components.astype(np.float64)
    np.testing.assert_allclose(components @ components.T, np.eye(30), atol=1e-5)
    projected = fitted.apply(features).astype(np.float64)
    before = np.linalg.norm(features[:, None] - features[None], axis=2)
    after = np.linalg.norm(projected[:, None] - projected[None], axis=2)
    np.testing.assert_allclose(after, before, rtol=1e-4, atol=1e-4)


def test_fits_on_fewer_and_more_rows_than_dimensions_keep_the_leading_axes() -> None:
    # 100 components asked of 150 rows (Gram path) and of 260 rows (covariance path).
    for count in (150, 260):
        features = rows_with_distinct_spread(count, 256, seed=count)
        fitted = Projection.fit(features, 100)
        assert fitted.components.shape == (100, 256)
        agreement = np.abs(np.sum(fitted.components * covariance_axes(features, 100), axis=1))
        assert agreement[:50].min() > 0.99, (count, agreement[:50].min())
        # Together they keep the same share of the spread as the reference axes.
        centred = features - features.mean(axis=0)
        kept = np.sum((centred @ fitted.components.T) ** 2)
        reference = np.sum((centred @ covariance_axes(features, 100).T) ** 2)
        assert abs(kept / reference - 1) < 1e-4


def test_the_decomposition_runs_on_one_blas_thread(monkeypatch) -> None:
    threads_seen: list[int] = []
    eigh = np.linalg.eigh

    def watched(matrix: np.ndarray):
        threads_seen.extend(
            pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"
        )
        return eigh(matrix)

    monkeypatch.setattr(shards.np.linalg, "eigh", watched)
    with threadpool_limits(limits=2, user_api="blas"):  # as on a machine of 2 cores or more
        Projection.fit(rows_with_distinct_spread(40, 64), 16)  # Gram path
        Projection.fit(rows_with_distinct_spread(80, 64), 16)  # covariance path
    assert threads_seen and set(threads_seen) == {1}
