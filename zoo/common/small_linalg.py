"""Linear algebra on many small symmetric positive-definite matrices at once.

A GLM fitted gene by gene needs one ``p x p`` solve per gene, with ``p`` the handful of
design coefficients. Batched LAPACK calls pay a per-matrix overhead that dominates at this
size, so here the Cholesky factorisation ``M = L L^T`` is unrolled over the ``p`` rows and
every step is one elementwise operation across the whole batch. The batch is the *last*
axis (matrices are ``(p, p, batch)``, vectors ``(p, batch)``) so that each of those
operations runs over contiguous memory. The unrolled program grows as ``p^3``: meant for
``p`` up to a few tens.
"""

from __future__ import annotations

import jax.numpy as jnp
from jaxtyping import Array, Float

Rows = list[list[Array]]


def _cholesky_rows(matrices: Float[Array, "p p batch"]) -> Rows:
    """The lower factor as ``rows[i][j]`` (``j <= i``), each of batch shape."""
    rows: Rows = []
    for i in range(matrices.shape[0]):
        row: list[Array] = []
        for j in range(i):
            below = matrices[i, j] - sum(row[k] * rows[j][k] for k in range(j))
            row.append(below / rows[j][j])
        row.append(jnp.sqrt(matrices[i, i] - sum(row[k] ** 2 for k in range(i))))
        rows.append(row)
    return rows


def _forward(rows: Rows, vector: list[Array]) -> list[Array]:
    """Solve ``L z = b``."""
    z: list[Array] = []
    for i, row in enumerate(rows):
        z.append((vector[i] - sum(row[k] * z[k] for k in range(i))) / row[i])
    return z


def _backward(rows: Rows, vector: list[Array]) -> list[Array]:
    """Solve ``L^T x = z``."""
    p = len(rows)
    x: list[Array] = [vector[0]] * p
    for i in reversed(range(p)):
        tail = sum(rows[k][i] * x[k] for k in range(i + 1, p))
        x[i] = (vector[i] - tail) / rows[i][i]
    return x


def spd_solve(
    matrices: Float[Array, "p p batch"], vectors: Float[Array, "p batch"]
) -> Float[Array, "p batch"]:
    """``M^-1 b`` for every symmetric positive-definite ``M`` of the batch."""
    rows = _cholesky_rows(matrices)
    return jnp.stack(_backward(rows, _forward(rows, list(vectors))))


def spd_inverse(matrices: Float[Array, "p p batch"]) -> Float[Array, "p p batch"]:
    """``M^-1`` for every symmetric positive-definite ``M`` of the batch."""
    rows = _cholesky_rows(matrices)
    p = matrices.shape[0]
    zero, one = jnp.zeros_like(rows[0][0]), jnp.ones_like(rows[0][0])
    columns = []
    for j in range(p):
        unit = [one if i == j else zero for i in range(p)]
        columns.append(jnp.stack(_backward(rows, _forward(rows, unit))))
    return jnp.stack(columns, axis=1)


def spd_logdet(matrices: Float[Array, "p p batch"]) -> Float[Array, " batch"]:
    """``log det M`` for every symmetric positive-definite ``M`` of the batch."""
    rows = _cholesky_rows(matrices)
    return 2.0 * sum(jnp.log(rows[i][i]) for i in range(len(rows)))


def batched_matmul(
    a: Float[Array, "p q batch"], b: Float[Array, "q r batch"]
) -> Float[Array, "p r batch"]:
    """``A_b B_b`` for every pair of the batch (unrolled, like the factorisation)."""
    p, q, r = a.shape[0], a.shape[1], b.shape[1]
    rows = [[sum(a[i, j] * b[j, k] for j in range(q)) for k in range(r)] for i in range(p)]
    return jnp.stack([jnp.stack(row) for row in rows])


def _outer_rows(design: Float[Array, "n p"]) -> Float[Array, "n pp"]:
    """Each row's flattened outer product ``x_n x_n^T``."""
    n, p = design.shape
    return (design[:, :, None] * design[:, None, :]).reshape(n, p * p)


def weighted_gram(
    design: Float[Array, "n p"], weights: Float[Array, "n batch"]
) -> Float[Array, "p p batch"]:
    """``X^T diag(w_b) X`` for every weight column ``w_b``, as one matrix product."""
    p = design.shape[1]
    return (_outer_rows(design).T @ weights).reshape(p, p, -1)


def row_quadratic_forms(
    design: Float[Array, "n p"], matrices: Float[Array, "p p batch"]
) -> Float[Array, "n batch"]:
    """``x_n^T A_b x_n`` for every row ``x_n`` of `design` and every matrix ``A_b``."""
    p = design.shape[1]
    return _outer_rows(design) @ matrices.reshape(p * p, -1)
