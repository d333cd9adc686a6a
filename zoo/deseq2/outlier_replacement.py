"""DESeq2's replacement of Cook's outlier counts before a refit (Love, Huber & Anders, 2014,
"Cook's distance"; R's ``replaceOutliers``, pydeseq2's ``refit_cooks``).

Only samples in a design cell of at least ``min_replicates`` (DESeq2: 7) samples are
replaceable. A gene is *replaced* when any sample's Cook's distance exceeds the 99% quantile
of ``F(p, n - p)``; each such count of a replaceable sample becomes

    floor(trimmed mean_j (K_jg / s_j) * s_k),

the gene's 20%-trimmed mean normalised count scaled back by the sample's size factor. The
replaced genes are then refit (`zoo.deseq2.model.fit_nbglm`); a gene left without any count
is reported as untested.
"""

from __future__ import annotations

import functools
import math
import warnings

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float

from zoo.deseq2.cooks import cell_sizes

REPLACEMENT_TRIM = 0.2


class CooksRefitWarning(UserWarning):
    """Outlier counts were replaced and their genes refit (R prints such a message)."""


def replaceable_samples(cells: tuple[int, ...], min_replicates: int) -> np.ndarray:
    """For each sample, whether it lies in a cell of at least `min_replicates` samples."""
    return cell_sizes(cells) >= min_replicates


@functools.partial(jax.jit, static_argnames=("cutoff",))
def replace_outliers(
    counts: Float[Array, "samples genes"],
    size_factors: Float[Array, " samples"],
    distances: Float[Array, "samples genes"],
    replaceable: Bool[Array, " samples"],
    *,
    cutoff: float,
) -> tuple[Float[Array, "samples genes"], Bool[Array, " genes"], Bool[Array, "samples genes"]]:
    """The counts with outliers replaced (module docstring).

    Returns:
        ``(new counts, replaced genes, replaced cells)``: the genes with a distance above
        `cutoff` in any sample, and the replaceable entries among those above it.
    """
    outlying = distances > cutoff
    normed = counts / size_factors[:, None]
    n = counts.shape[0]
    cut = math.floor(n * REPLACEMENT_TRIM)
    trimmed_mean = jnp.sort(normed, axis=0)[cut : n - cut].mean(axis=0)
    replacement = jnp.floor(trimmed_mean[None, :] * size_factors[:, None])
    swapped = outlying & replaceable[:, None]
    return jnp.where(swapped, replacement, counts), outlying.any(axis=0), swapped


def warn_of_replacement(replaced: Bool[Array, " genes"], min_replicates: int) -> None:
    """Warn (`CooksRefitWarning`) how many genes had outlier counts replaced; while tracing,
    when the number is unknown, warn that replacement is active."""
    where = f"samples in design cells of {min_replicates} or more replicates"
    if isinstance(replaced, jax.core.Tracer):
        warnings.warn(
            f"Cook's outlier counts of {where} are replaced and their genes refit",
            CooksRefitWarning,
            stacklevel=3,
        )
        return
    n_replaced = int(np.sum(replaced))
    if n_replaced:
        warnings.warn(
            f"Cook's outlier counts of {where} replaced in {n_replaced} genes, which were refit",
            CooksRefitWarning,
            stacklevel=3,
        )
