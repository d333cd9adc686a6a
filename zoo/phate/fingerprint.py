"""Which features a `PHATEGraph` was built on, so that a graph of other cells is refused.

The graph's pattern and landmark clusters index cells by row; given the features of other
cells, JAX's clamped gathers would silently compute an embedding of nothing in particular.
So the graph records the shape of its features and a fingerprint of their values, decided
eagerly when the graph is built, and `DifferentiablePHATE.__call__` compares them.

The fingerprint is ``f_j = u_j^T (X - mean) v_j / sqrt(n d)`` for ``j < 4``, with fixed
random signs ``u_j`` (one per cell) and ``v_j`` (one per feature) and ``X - mean`` the
column-centred features: O(n d) to compute, sensitive to which cells are there and in which
order, and continuous, so features recomputed with rounding differences still match. Two
fingerprints match when every ``f_j`` agrees within ``FINGERPRINT_TOLERANCE`` times the
standard deviation of the graph's features; the same count of other cells, or the same
cells reordered, changes each ``f_j`` by about one standard deviation.
"""

from __future__ import annotations

import numpy as np
from jaxtyping import ArrayLike, Real

FINGERPRINT_SIZE = 4
FINGERPRINT_TOLERANCE = 1e-3
_SEED = 20190101  # any fixed seed: both sides of a comparison draw the same signs


def _signs(rng: np.random.Generator, length: int) -> np.ndarray:
    return rng.choice(np.array([-1.0, 1.0]), size=(length, FINGERPRINT_SIZE))


def feature_fingerprint(features: Real[ArrayLike, "n_cells n_features"]) -> np.ndarray:
    """The fingerprint of a ``(cells, features)`` matrix (module docstring), followed by the
    standard deviation of its centred entries: ``(FINGERPRINT_SIZE + 1,)`` float64."""
    x = np.asarray(features, np.float64)
    centred = x - x.mean(axis=0)
    rng = np.random.default_rng(_SEED)
    cell_signs, feature_signs = _signs(rng, x.shape[0]), _signs(rng, x.shape[1])
    sketch = np.sum(cell_signs * (centred @ feature_signs), axis=0) / np.sqrt(x.size)
    return np.append(sketch, np.sqrt(np.mean(centred**2)))


def same_features(fingerprint: np.ndarray, recorded: np.ndarray) -> bool:
    """Whether `fingerprint` matches the `recorded` one within the tolerance."""
    scale = FINGERPRINT_TOLERANCE * max(float(recorded[-1]), np.finfo(np.float32).tiny)
    return bool(np.all(np.abs(np.asarray(fingerprint) - np.asarray(recorded)) <= scale))
