"""The re-rank's products: float16 features times a float32 query, as numpy would compute
them, and the stored features' halves."""

from __future__ import annotations

import io

import numpy as np
import pytest

from imgsearch.index import shards
from imgsearch.index.shards import _features_npy_bytes, half_dot, serial_matvec


def halves_of_every_kind(rows: int, dim: int) -> np.ndarray:
    """float16 rows with normal values of both signs, zeros of both signs and subnormals."""
    rng = np.random.default_rng(3)
    values = rng.normal(0, 0.05, (rows, dim)).astype(np.float16)
    values[:, ::5] = 0
    values[:, 1::7] = np.float16(-0.0)
    values[:, 2::11] = np.float16(3e-6)  # subnormal
    values[:, 3::13] = np.float16(-4e-7)  # subnormal, negative
    values[0, :4] = [np.float16(65504), np.float16(-65504), np.float16(2**-14), 1]
    return values


def test_half_dot_is_numpy_s_float32_product() -> None:
    rows = halves_of_every_kind(300, 96)
    vector = np.random.default_rng(4).normal(size=96).astype(np.float32)
    expected = rows.astype(np.float32) @ vector
    np.testing.assert_allclose(half_dot(rows, vector), expected, rtol=1e-6, atol=1e-6)
    # Rows already float32 are multiplied as they are.
    np.testing.assert_allclose(
        half_dot(rows.astype(np.float32), vector), expected, rtol=1e-6, atol=1e-6
    )


def test_a_product_bigger_than_a_block_is_computed_block_by_block(monkeypatch) -> None:
    monkeypatch.setattr(shards, "SERIAL_PRODUCT_ELEMENTS", 64 * 10)  # blocks of 10 rows
    rng = np.random.default_rng(5)
    matrix = rng.normal(size=(95, 64)).astype(np.float32)
    vector = rng.normal(size=64).astype(np.float32)
    np.testing.assert_allclose(serial_matvec(matrix, vector), matrix @ vector, rtol=1e-5, atol=1e-5)


def test_stored_features_hold_no_subnormal_halves() -> None:
    features = halves_of_every_kind(70_000, 8).astype(np.float32)  # more than one chunk
    stored = np.load(io.BytesIO(_features_npy_bytes(features)))
    assert stored.dtype == np.float16 and stored.shape == features.shape
    magnitudes = np.abs(stored)
    assert not np.any((magnitudes > 0) & (magnitudes < np.float16(2**-14)))
    # Everything else is the plain float16 rounding.
    normal = np.abs(features) >= 2**-14
    np.testing.assert_array_equal(stored[normal], features[normal].astype(np.float16))
    assert np.all(stored[~normal] == 0)


def test_half_dot_widens_block_by_block(monkeypatch) -> None:
    monkeypatch.setattr(shards, "HALF_BLOCK_ELEMENTS", 96 * 7)  # blocks of 7 rows, one short
    rows = halves_of_every_kind(53, 96)
    vector = np.random.default_rng(6).normal(size=96).astype(np.float32)
    expected = rows.astype(np.float32) @ vector
    np.testing.assert_allclose(half_dot(rows, vector), expected, rtol=1e-6, atol=1e-6)
    assert half_dot(rows[:0], vector).shape == (0,)


def test_rows_gathered_block_by_block_give_half_dot_s_products(monkeypatch) -> None:
    # 21 rows: products of 7 rows, gathered 14 and 7 at a time
    monkeypatch.setattr(shards, "PRODUCT_BLOCK_ROWS", 8)
    monkeypatch.setattr(shards, "GATHER_BLOCK_ROWS", 16)
    features = halves_of_every_kind(200, 96)
    vector = np.random.default_rng(7).normal(size=96).astype(np.float32)
    rows = np.random.default_rng(8).choice(200, 21, replace=False)
    expected = features[rows].astype(np.float32) @ vector
    np.testing.assert_allclose(
        shards.half_dot_of_rows([(features, rows)], vector), expected, rtol=1e-6, atol=1e-6
    )
    # Into a slice of a bigger array.
    out = np.zeros(25, np.float32)
    shards.half_dot_of_rows([(features, rows)], vector, out[2:23])
    np.testing.assert_allclose(out[2:23], expected, rtol=1e-6, atol=1e-6)
    assert not out[:2].any() and not out[23:].any()
    # Several shards' rows (one empty), blocks spanning them: in order, as one product each.
    other = halves_of_every_kind(50, 96)
    other_rows = np.array([3, 49, 0, 17, 5], np.int64)
    parts = [(features, rows[:4]), (other, other_rows), (features, rows[:0]), (features, rows)]
    together = np.concatenate(
        [f[r].astype(np.float32) @ vector if len(r) else np.zeros(0) for f, r in parts]
    )
    np.testing.assert_allclose(
        shards.half_dot_of_rows(parts, vector), together, rtol=1e-6, atol=1e-6
    )
    # float32 features, and no rows.
    np.testing.assert_allclose(
        shards.half_dot_of_rows([(features.astype(np.float32), rows)], vector),
        expected,
        rtol=1e-6,
        atol=1e-6,
    )
    assert shards.half_dot_of_rows([(features, rows[:0])], vector).shape == (0,)
    assert shards.half_dot_of_rows([], vector).shape == (0,)
    # However many rows are gathered at once, the products are the same to the bit: each
    # product block multiplies the same rows.
    one_gather = shards.half_dot_of_rows(parts, vector)
    monkeypatch.setattr(shards, "GATHER_BLOCK_ROWS", 1000)
    np.testing.assert_array_equal(shards.half_dot_of_rows(parts, vector), one_gather)


def test_a_row_no_shard_holds_is_refused_not_clipped() -> None:
    """The gather checks no bounds itself (numpy's "clip" would read the last row for one past
    the end): a row outside the shard raises, as an index would."""
    features = halves_of_every_kind(20, 96)
    vector = np.ones(96, np.float32)
    for bad in (20, -1):
        with pytest.raises(IndexError):
            shards.half_dot_of_rows([(features, np.array([0, bad], np.int64))], vector)
