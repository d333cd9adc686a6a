"""The leaf-by-leaf gradient comparison catches a wrong gradient on one small leaf that a
single global maximum (the check it replaced) lets through."""

from __future__ import annotations

import math

import numpy as np
import pytest
from gradient_comparison import leaf_differences, worst_leaf

TOLERANCE = 1e-5  # the sharded-step checks' bound


def one_global_maximum(a: dict, b: dict) -> float:
    """The previous check: max |a - b| over all leaves / max |b| over all leaves."""
    scale = max(float(np.max(np.abs(y))) for y in b.values())
    return max(float(np.max(np.abs(a[k] - b[k]))) for k in b) / scale


def gradients() -> dict[str, np.ndarray]:
    """A weight gradient of order 1 beside a layer-norm bias gradient of order 1e-6."""
    rng = np.random.default_rng(0)
    return {
        "weight": rng.normal(0.0, 1.0, (64, 64)).astype(np.float32),
        "norm_bias": rng.normal(0.0, 1e-6, (64,)).astype(np.float32),
    }


def test_a_wrong_bias_gradient_is_caught_leaf_by_leaf():
    reference = gradients()
    wrong = {**reference, "norm_bias": -reference["norm_bias"]}  # every sign flipped
    # the old check: about 4e-6 / 4, inside the bound, so the wrong gradient passed
    assert one_global_maximum(wrong, reference) < TOLERANCE
    path, value = worst_leaf(wrong, reference)
    assert path == "['norm_bias']" and value > 1e-4  # 10 times the bound at least
    assert leaf_differences(wrong, reference)["['weight']"] == 0.0


def test_rounding_passes_and_zero_leaves_are_handled():
    reference = gradients()
    rounded = {k: v * np.float32(1 + 1e-7) for k, v in reference.items()}
    assert worst_leaf(rounded, reference)[1] < TOLERANCE
    # a gradient that is zero in exact arithmetic holds rounding noise of the others' size
    noise = {**reference, "key_bias": np.full(4, 1e-8, np.float32)}
    other_noise = {**reference, "key_bias": np.full(4, -1e-8, np.float32)}
    assert worst_leaf(other_noise, noise)[1] < TOLERANCE
    zeros = {"frozen": np.zeros(3, np.float32)}
    assert leaf_differences(zeros, zeros) == {"['frozen']": 0.0}
    assert math.isinf(leaf_differences({"frozen": np.ones(3)}, zeros)["['frozen']"])
    with pytest.raises(ValueError, match="leaves"):
        leaf_differences({"x": np.ones(1), "y": np.ones(1)}, {"x": np.ones(1)})
