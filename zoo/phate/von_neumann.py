"""Choosing PHATE's diffusion time ``t`` from the von Neumann entropy of the diffusion
operator (Moon et al., 2019, Methods, "Selecting the diffusion time scale").

For the singular values ``s`` of the operator ``P``, the entropy at step ``t`` is the Shannon
entropy of ``s ** (t + 1) / sum(s ** (t + 1))`` (the phate package's convention: its first
entry already uses ``s`` itself). The entropy falls quickly while diffusion removes noise
and slowly afterwards; ``t`` is the knee of that curve. For each candidate knee ``b`` one
least-squares line is fitted to the points ``0 .. b`` and another to the points
``b - 1 .. end``, and the candidate whose lines leave the smallest total absolute residual
(over ``0 .. b`` and ``b .. end``) wins. Fitting the second line from ``b - 1`` is the phate
package's convention, kept so that the same operator gives the same ``t``.

These are eager NumPy computations in float64: the choice of ``t`` is a discrete decision,
never differentiated. The eigenvalue routine runs on one BLAS thread: LAPACK's
tridiagonalisation synchronises its threads thousands of times, and next to JAX's own
thread pool a multi-threaded run was seen to take 15 s instead of 0.6 s for a 2,000 x 2,000
operator.
"""

from __future__ import annotations

import numpy as np
from threadpoolctl import threadpool_limits


def von_neumann_entropy(operator: np.ndarray, t_max: int) -> np.ndarray:
    """Entropies of the operator's normalised singular values at steps ``0 .. t_max - 1``.

    Args:
        operator: a square (diffusion) matrix.
        t_max: number of steps.

    Returns:
        ``(t_max,)`` float64 entropies.
    """
    operator = np.asarray(operator, dtype=np.float64)
    # singular values of P: square roots of the eigenvalues of the symmetric P P^T
    with threadpool_limits(limits=1, user_api="blas"):
        squared = np.linalg.eigvalsh(operator @ operator.T)
    singular = np.sqrt(np.clip(squared, 0.0, None))
    entropies = np.empty(t_max)
    powered = singular.copy()
    for t in range(t_max):
        p = powered / powered.sum() + np.finfo(np.float64).eps
        entropies[t] = -np.sum(p * np.log(p))
        powered = powered * singular
    return entropies


def knee_point(y: np.ndarray) -> int:
    """The index of the knee of the curve ``y`` against ``0, 1, ..., len(y) - 1``.

    Raises:
        ValueError: for fewer than three points.
    """
    y = np.asarray(y, dtype=np.float64)
    if y.ndim != 1 or y.size < 3:
        raise ValueError(f"a knee needs a 1-D curve of at least 3 points, got shape {y.shape}")
    x = np.arange(y.size, dtype=np.float64)
    errors = [
        _line_residual(x[: knee + 1], y[: knee + 1], x[: knee + 1], y[: knee + 1])
        + _line_residual(x[knee - 1 :], y[knee - 1 :], x[knee:], y[knee:])
        for knee in range(1, y.size - 1)
    ]
    return int(np.argmin(errors)) + 1


def _line_residual(
    fit_x: np.ndarray, fit_y: np.ndarray, at_x: np.ndarray, at_y: np.ndarray
) -> float:
    """Sum of absolute residuals at ``(at_x, at_y)`` of the least-squares line through
    ``(fit_x, fit_y)``."""
    slope, intercept = np.polyfit(fit_x, fit_y, 1)
    return float(np.abs(slope * at_x + intercept - at_y).sum())


def optimal_t(operator: np.ndarray, t_max: int = 100) -> int:
    """The diffusion time at the knee of the von Neumann entropy curve (at least 1)."""
    return knee_point(von_neumann_entropy(operator, t_max))
