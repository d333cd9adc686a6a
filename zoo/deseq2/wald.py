"""Wald tests of NB GLM contrasts with the full coefficient covariance.

For a gene with coefficients ``beta``, fitted means ``mu``, dispersion ``alpha`` and design
``X``, the Fisher information is ``I = X^T W X`` with ``W = mu / (1 + alpha mu)``. With
DESeq2's ridge ``lambda = 1e-6`` the covariance of ``beta`` is the sandwich

    Sigma = (I + lambda)^-1 I (I + lambda)^-1       (= I^-1 as lambda -> 0),

a full ``p x p`` matrix, not its diagonal. For a contrast ``c``: ``lfc = c^T beta``,
``se = sqrt(c^T Sigma c)``, ``stat = lfc / se`` and the two-sided p-value
``2 (1 - Phi(|stat|))``. Log fold changes and standard errors are reported in log2 units.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.scipy.stats import norm
from jaxtyping import Array, Bool, Float

from zoo.common.small_linalg import batched_matmul, spd_inverse, weighted_gram
from zoo.deseq2.multiple_testing import benjamini_hochberg, independent_filtering
from zoo.deseq2.nb_irls import RIDGE


class WaldTest(NamedTuple):
    """Per-gene results of a Wald test, in pydeseq2's columns (log2 units)."""

    log2_fold_change: Float[Array, " genes"]
    lfc_se: Float[Array, " genes"]
    stat: Float[Array, " genes"]
    pvalue: Float[Array, " genes"]
    padj: Float[Array, " genes"]


def coefficient_covariance(
    design: Float[Array, "samples coefficients"],
    means: Float[Array, "samples genes"],
    dispersions: Float[Array, " genes"],
) -> Float[Array, "genes coefficients coefficients"]:
    """``Sigma`` of the module docstring for every gene."""
    information = weighted_gram(design, means / (1.0 + dispersions * means))
    ridge = RIDGE * jnp.eye(design.shape[1], dtype=means.dtype)[:, :, None]
    inverse = spd_inverse(information + ridge)
    covariance = batched_matmul(batched_matmul(inverse, information), inverse)
    return jnp.moveaxis(covariance, -1, 0)


@functools.partial(jax.jit, static_argnames=("alpha", "independent_filter"))
def wald_test(
    coefficients: Float[Array, "genes coefficients"],
    covariance: Float[Array, "genes coefficients coefficients"],
    contrast: Float[Array, " coefficients"],
    base_mean: Float[Array, " genes"],
    excluded: Bool[Array, " genes"],
    *,
    alpha: float = 0.05,
    independent_filter: bool = True,
) -> WaldTest:
    """Test ``c^T beta = 0`` for every gene.

    Args:
        coefficients: natural-log coefficients (NaN for genes that were not fitted).
        covariance: their covariance ``Sigma``.
        contrast: the vector ``c``.
        base_mean: mean normalised counts (for independent filtering).
        excluded: genes whose p-value is set aside (NaN), e.g. Cook's outliers.
        alpha: the FDR level independent filtering optimises for.
        independent_filter: filter on `base_mean` before adjusting (DESeq2's default);
            otherwise plain Benjamini-Hochberg over every tested gene.
    """
    lfc = coefficients @ contrast
    se = jnp.sqrt(
        covariance.reshape(covariance.shape[0], -1) @ jnp.outer(contrast, contrast).ravel()
    )
    stat = lfc / se
    pvalue = jnp.where(excluded, jnp.nan, 2.0 * norm.sf(jnp.abs(stat)))
    if independent_filter:
        padj = independent_filtering(pvalue, base_mean, alpha)
    else:
        padj = benjamini_hochberg(pvalue, ~jnp.isnan(pvalue))
    return WaldTest(lfc / math.log(2), se / math.log(2), stat, pvalue, padj)
