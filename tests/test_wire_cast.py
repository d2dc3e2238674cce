"""`wire.cast`, which the server sends float16 attention with: bit for bit numpy's own
float32 -> float16 cast (round to nearest even, subnormals, zeros, signs, infinities), without
numpy's slow path for the values float16 holds only as subnormals (most of a layer of attention:
bench section 5 times it)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from neural_attn import wire


def _numpy_cast(values: np.ndarray) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # overflow to inf, as numpy warns
        return values.astype(np.float16)


def _bits(start: float, stop: float, step: int) -> np.ndarray:
    lo, hi = np.array([start, stop], dtype=np.float32).view(np.uint32)
    return np.arange(lo, hi, step, dtype=np.uint32).view(np.float32)


def _softmax_rows() -> np.ndarray:
    scores = np.random.default_rng(0).standard_normal((4, 256, 256)).astype(np.float32) * 4
    e = np.exp(scores - scores.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


@pytest.mark.parametrize(
    "values",
    [
        # every float32 from 2^-26 to 2^-13, in steps of 3 ulps: float16's subnormal range,
        # the values that round to zero, to the smallest normal and to its neighbours
        _bits(2.0**-26, 2.0**-13, 3),
        -_bits(2.0**-26, 2.0**-13, 3),
        # four million random bit patterns: every exponent, both signs, infinities (no NaNs)
        np.random.default_rng(7).integers(0, 2**32, 4_000_000, dtype=np.uint32).view(np.float32),
        _softmax_rows(),
        np.array([0.0, -0.0, 1.0, 65504.0, 65520.0, np.inf, -np.inf, 2.0**-149], np.float32),
    ],
    ids=["subnormal range", "negative subnormal range", "random bits", "softmax", "edges"],
)
def test_float16_is_numpys_cast_bit_for_bit(values: np.ndarray) -> None:
    values = values[~np.isnan(values)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        got = wire.cast(values, np.dtype(np.float16))
    assert got.dtype == np.float16 and got.shape == values.shape
    np.testing.assert_array_equal(got.view(np.uint16), _numpy_cast(values).view(np.uint16))


def test_other_casts_are_numpys_and_a_same_dtype_one_copies_nothing() -> None:
    values = _softmax_rows()
    assert wire.cast(values, np.dtype(np.float32)) is values
    np.testing.assert_array_equal(
        wire.cast(values.astype(np.float64), np.dtype(np.float16)), values.astype(np.float16)
    )
