"""Leaf-by-leaf comparison of two gradient trees, used by the pretraining step checks.

Each leaf is measured against its own scale, so a wrong gradient on a small leaf (a layer
norm, a bias) is not hidden by the largest gradient entry of the whole model. A leaf's
scale is floored at `FLOOR` times the largest leaf's: some gradients are zero in exact
arithmetic (the attention key bias: softmax ignores a shift shared by all keys) and hold
only rounding noise, which no summation order reproduces.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

FLOOR = 1e-3


def leaf_differences(a: Any, b: Any, *, floor: float = FLOOR) -> dict[str, float]:
    """``max |a - b| / max(max |b|, floor * M)`` for every array leaf, keyed by its PyTree
    path, where ``M`` is the largest ``max |b|`` over all leaves.

    When `b` is zero everywhere, a leaf counts 0 where `a` equals it and infinity otherwise.
    The two trees must have the same number of leaves.
    """
    a_leaves = jax.tree_util.tree_leaves_with_path(jax.device_get(a))
    b_leaves = [np.asarray(y, np.float64) for y in jax.tree.leaves(jax.device_get(b))]
    if len(a_leaves) != len(b_leaves):
        raise ValueError(f"a has {len(a_leaves)} leaves, b has {len(b_leaves)}")
    largest = max(float(np.max(np.abs(y))) for y in b_leaves)
    out = {}
    for (path, x), y in zip(a_leaves, b_leaves, strict=True):
        difference = float(np.max(np.abs(np.asarray(x, np.float64) - y)))
        scale = max(float(np.max(np.abs(y))), floor * largest)
        if scale == 0.0:
            out[jax.tree_util.keystr(path)] = 0.0 if difference == 0.0 else float("inf")
        else:
            out[jax.tree_util.keystr(path)] = difference / scale
    return out


def worst_leaf(a: Any, b: Any) -> tuple[str, float]:
    """The path and value of the largest of `leaf_differences` (a, b)."""
    differences = leaf_differences(a, b)
    path = max(differences, key=differences.__getitem__)
    return path, differences[path]
