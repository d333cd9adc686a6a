"""`DifferentiableNBGLM`: DESeq2's negative binomial GLM (Love, Huber & Anders, 2014, Genome
Biology 15:550), vectorised over genes in JAX and differentiable in the counts.

For counts ``K`` (samples x genes) and a design ``X`` (samples x coefficients):

    K_jg ~ NB(mu_jg, alpha_g),   log mu_jg = (X beta_g)_j + log s_j,
    Var K_jg = mu_jg + alpha_g mu_jg^2,

with ``alpha_g`` the dispersion (not the NB size ``1 / alpha``). `fit_nbglm` runs
DESeq2's steps, as pydeseq2 does by default:

1. median-of-ratios size factors ``s`` over the genes with no zero (`zoo.deseq2.size_factors`);
2. gene-wise dispersions: Cox-Reid adjusted MLE at means from a first fit
   (`zoo.deseq2.dispersion`); with ``dispersion_iterations > 1`` means and dispersions are
   re-fitted in turn, a block-coordinate joint maximisation (DESeq2's ``niter``);
3. optionally (``shrink_dispersions``) the trend ``a0 + a1 / mean`` and the MAP dispersions
   under a log-normal prior around it (`zoo.deseq2.dispersion_trend`); genes far above the trend
   keep their gene-wise value;
4. coefficients ``beta`` by IRLS at the final dispersions (`zoo.deseq2.nb_irls`), their full
   Fisher-information covariance (`zoo.deseq2.wald`) and Cook's distances (`zoo.deseq2.cooks`);
5. with ``refit_cooks``, when some design cell has ``min_replicates`` (7) or more samples:
   their outlier counts replaced (`zoo.deseq2.outlier_replacement`, warning with
   `CooksRefitWarning`) and steps 2-4 rerun on the replaced genes at the same size factors,
   trend and prior variance, as DESeq2 and pydeseq2 do.

`DifferentiableNBGLM` holds the fitted per-gene quantities, predicts means, scores counts,
and runs Wald tests with Benjamini-Hochberg adjustment after independent filtering.

Every iterative solver runs to convergence without gradients and its optimum is
differentiated implicitly (`zoo.common.implicit`), so gradients with respect to the counts are
those of the optimum and cost the forward pass nothing.
Agreement with DESeq2 needs float64: `DifferentiableNBGLM.fit` and
`zoo.differential_expression` compute under ``jax.enable_x64``; for `fit_nbglm` enable it
yourself.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Bool, Float, PRNGKeyArray

from zoo.common.config import Config, require, require_choice, require_positive
from zoo.common.likelihoods import negative_binomial_log_prob
from zoo.common.shapes import check_shape
from zoo.deseq2.cooks import cooks_cutoff, cooks_outliers, outlier_distances, replicate_cells
from zoo.deseq2.dispersion import fit_dispersions, initial_dispersions, linear_means
from zoo.deseq2.dispersion_trend import dispersion_prior, shrunken_dispersions, trend_values
from zoo.deseq2.nb_irls import CoefficientFit, fit_coefficients
from zoo.deseq2.outlier_replacement import (
    replace_outliers,
    replaceable_samples,
    warn_of_replacement,
)
from zoo.deseq2.size_factors import median_of_ratios
from zoo.deseq2.wald import WaldTest, coefficient_covariance, wald_test


@dataclasses.dataclass(frozen=True)
class DifferentiableNBGLMConfig(Config):
    """Shape and estimation settings of a `DifferentiableNBGLM` (defaults: DESeq2's).

    Attributes:
        n_genes: genes (columns of the count matrix).
        n_coefficients: columns of the design matrix, intercept included.
        shrink_dispersions: fit the trend and use MAP dispersions; else gene-wise MLEs.
        trend: ``"parametric"`` (``a0 + a1 / mean``, falling back to the mean when it
            fails, as DESeq2) or ``"mean"``.
        dispersion_iterations: rounds of (means, gene-wise dispersions) fitting.
        min_mean: floor on fitted means inside the solvers.
        min_dispersion: lower bound on dispersions.
        max_dispersion: upper bound on dispersions (raised to the number of samples).
        tolerance: IRLS stops when the deviance changes by less than this, relatively.
        max_iterations: cap on the iterations of each solver.
        cooks_filter: set aside the p-values of genes with a Cook's outlier.
        refit_cooks: replace the outlier counts of samples in cells of at least
            ``min_replicates`` samples and refit their genes (`zoo.deseq2.outlier_replacement`).
        min_replicates: the smallest cell whose outlier counts are replaced.
        independent_filter: filter on the mean count before adjusting p-values.
        fdr_level: the false discovery rate independent filtering optimises for.
    """

    n_genes: int = 1000
    n_coefficients: int = 2
    shrink_dispersions: bool = True
    trend: str = "parametric"
    dispersion_iterations: int = 1
    min_mean: float = 0.5
    min_dispersion: float = 1e-8
    max_dispersion: float = 10.0
    tolerance: float = 1e-8
    max_iterations: int = 250
    cooks_filter: bool = True
    refit_cooks: bool = True
    min_replicates: int = 7
    independent_filter: bool = True
    fdr_level: float = 0.05

    def validate(self) -> None:
        require_positive(
            n_genes=self.n_genes,
            n_coefficients=self.n_coefficients,
            dispersion_iterations=self.dispersion_iterations,
            min_mean=self.min_mean,
            min_dispersion=self.min_dispersion,
            tolerance=self.tolerance,
            max_iterations=self.max_iterations,
            min_replicates=self.min_replicates,
        )
        require_choice("trend", self.trend, ("parametric", "mean"))
        require(
            self.max_dispersion > self.min_dispersion,
            f"max_dispersion ({self.max_dispersion}) must exceed min_dispersion "
            f"({self.min_dispersion})",
        )
        require(0.0 < self.fdr_level < 1.0, f"fdr_level must be in (0, 1), got {self.fdr_level}")


class NBGLMFit(NamedTuple):
    """Everything `fit_nbglm` estimates; genes with no count get NaN (``base_mean`` 0).

    Attributes:
        size_factors: median-of-ratios ``s``.
        base_mean: mean normalised count of each gene.
        genewise_dispersions: Cox-Reid adjusted MLEs.
        trend_dispersions: the trend at each gene's mean (NaN without shrinkage).
        dispersions: the final dispersions (MAP, or gene-wise without shrinkage).
        trend_coefficients: ``(a0, a1)``; ``(mean, 0)`` for a mean trend.
        prior_variance: variance of the log-normal prior (NaN without shrinkage).
        coefficients: natural-log ``beta``.
        covariance: its full Fisher-information covariance.
        means: fitted means ``s exp(X beta)``.
        cooks_outlier: genes with a Cook's outlier (False when the filter is off).
        refitted: genes refit after their outlier counts were replaced (their dispersions,
            coefficients, means and ``base_mean`` come from the replaced counts).
        converged: genes whose IRLS met the tolerance.
    """

    size_factors: Float[Array, " samples"]
    base_mean: Float[Array, " genes"]
    genewise_dispersions: Float[Array, " genes"]
    trend_dispersions: Float[Array, " genes"]
    dispersions: Float[Array, " genes"]
    trend_coefficients: Float[Array, "2"]
    prior_variance: Float[Array, ""]
    coefficients: Float[Array, "genes coefficients"]
    covariance: Float[Array, "genes coefficients coefficients"]
    means: Float[Array, "samples genes"]
    cooks_outlier: Bool[Array, " genes"]
    refitted: Bool[Array, " genes"]
    converged: Bool[Array, " genes"]


def check_design(design: ArrayLike, n_samples: int) -> np.ndarray:
    """`design` as a float array after checking its shape, values and rank."""
    design = np.asarray(design, dtype=np.float64)
    if design.ndim != 2 or design.shape[0] != n_samples:
        raise ValueError(f"design has shape {design.shape}; expected ({n_samples}, coefficients)")
    if not np.all(np.isfinite(design)):
        raise ValueError("design contains NaN or infinite values")
    rank = np.linalg.matrix_rank(design)
    if rank < design.shape[1]:
        raise ValueError(f"design matrix has rank {rank} < {design.shape[1]} columns")
    if n_samples <= design.shape[1]:
        raise ValueError(
            f"{n_samples} samples for {design.shape[1]} coefficients: no residual degrees "
            "of freedom to estimate dispersions"
        )
    return design


def check_counts(counts: ArrayLike, *, integers: bool = True) -> np.ndarray:
    """`counts` (samples x genes) as float64 after checking they are usable raw counts."""
    counts = np.asarray(counts)
    if counts.ndim != 2:
        raise ValueError(f"counts must be a (samples, genes) matrix, got shape {counts.shape}")
    counts = counts.astype(np.float64)
    if np.isnan(counts).any():
        raise ValueError("counts contain NaN")
    if not np.all(np.isfinite(counts)):
        raise ValueError("counts contain infinite values")
    if (counts < 0).any():
        raise ValueError("counts contain negative values; expected raw counts")
    if integers and (counts % 1 != 0).any():
        raise ValueError("counts contain non-integer values; expected raw (integer) counts")
    if not (counts > 0).all(axis=0).any():
        raise ValueError(
            "every gene has a zero in some sample: median-of-ratios size factors are undefined"
        )
    return counts


def fit_nbglm(
    counts: Float[ArrayLike, "samples genes"],
    design: Float[ArrayLike, "samples coefficients"],
    config: DifferentiableNBGLMConfig,
) -> NBGLMFit:
    """Fit DESeq2's model (module docstring); differentiable in `counts`.

    Each step is its own compiled function, so the dispersion and IRLS solvers compile
    once and serve every call with the same shapes.

    Args:
        counts: raw counts (floats allowed, for relaxations); may be traced.
        design: full-rank design matrix; must be concrete (its replicate structure picks
            the starting means and Cook's rules).
        config: estimation settings (``n_genes`` and ``n_coefficients`` are not checked
            here, so one config serves any shape).
    """
    design = check_design(design, np.shape(counts)[0])
    cells = replicate_cells(design)
    counts = jnp.asarray(counts)
    invalid = jnp.any((counts < 0) | jnp.isnan(counts))
    counts = eqx.error_if(counts, invalid, "counts contain negative values or NaN")
    design = jnp.asarray(design, counts.dtype)
    n, p = design.shape
    bounds = {
        "min_dispersion": config.min_dispersion,
        "max_dispersion": max(config.max_dispersion, float(n)),
    }
    irls = {
        "min_mean": config.min_mean,
        "tolerance": config.tolerance,
        "max_iterations": config.max_iterations,
    }
    solver = {"max_iterations": config.max_iterations, **bounds}

    size_factors = _size_factors(counts)
    settings = {"irls": irls, "solver": solver, "cells": cells}
    base_mean, genewise, prior, dispersions, fit = _estimate(
        counts, size_factors, design, config, **settings
    )
    refitted, cleared = None, None
    cutoff = cooks_cutoff(n, p)
    distances = outlier_distances(
        counts, counts / size_factors[:, None], fit.means, fit.hat_diagonals, p, cells=cells
    )
    replaceable = replaceable_samples(cells, config.min_replicates)
    if config.refit_cooks and replaceable.any():
        replaced_counts, replaced, _ = replace_outliers(
            counts, size_factors, distances, jnp.asarray(replaceable), cutoff=cutoff
        )
        warn_of_replacement(replaced, config.min_replicates)
        emptied = replaced & ~jnp.any(replaced_counts > 0, axis=0)
        refit = _estimate(
            jnp.where(emptied, counts, replaced_counts),  # keeps the solvers off empty genes
            size_factors,
            design,
            config,
            prior=prior,
            **settings,
        )
        refitted = replaced & ~emptied
        base_mean = jnp.where(emptied, 0.0, base_mean)  # reported as untested
        base_mean, genewise, prior, dispersions, fit = _merge(
            refitted, (base_mean, genewise, prior, dispersions, fit), refit
        )
        cleared = refitted[None, :] & jnp.asarray(replaceable)[:, None]
    outlier = None
    if config.cooks_filter:
        outlier = cooks_outliers(counts, distances, cells, cutoff, cleared)
    return _assemble(
        size_factors, base_mean, genewise, prior, dispersions, fit, outlier, refitted, design
    )


def _estimate(counts, size_factors, design, config, *, irls, solver, cells, prior=None):
    """Steps 2-4 of the module docstring at fixed size factors: ``(base_mean, gene-wise
    dispersions, prior, dispersions, coefficient fit)``. Given a `prior` (a refit after
    outlier replacement) its trend and variance are kept, the trend only evaluated at the
    new base means, as DESeq2 does."""
    n, p = design.shape
    bounds = {k: solver[k] for k in ("min_dispersion", "max_dispersion")}
    base_mean, genewise, linear = _prepare(
        counts, size_factors, design, min_mean=config.min_mean, **bounds
    )
    no_prior = np.asarray(np.inf, counts.dtype)  # an infinitely wide prior
    for round_ in range(config.dispersion_iterations):
        if round_ == 0 and len(set(cells)) == p:
            means = linear
        else:
            means = fit_coefficients(counts, size_factors, design, genewise, **irls).means
        genewise = fit_dispersions(counts, means, design, genewise, genewise, no_prior, **solver)

    dispersions = genewise
    if config.shrink_dispersions:
        if prior is None:
            prior = dispersion_prior(
                genewise,
                base_mean,
                parametric=config.trend == "parametric",
                min_dispersion=config.min_dispersion,
                residual_dof=n - p,
            )
        else:
            prior = prior._replace(trend=_trend_at(prior.coefficients, base_mean))
        posterior = fit_dispersions(
            counts, means, design, prior.trend, prior.trend, prior.variance, **solver
        )
        dispersions = shrunken_dispersions(genewise, posterior, prior)

    fit = fit_coefficients(counts, size_factors, design, dispersions, **irls)
    return base_mean, genewise, prior, dispersions, fit


@jax.jit
def _trend_at(coefficients, base_mean):
    """The trend at the counted genes' base means (others get any finite value)."""
    return trend_values(coefficients, jnp.where(base_mean > 0, base_mean, 1.0))


@jax.jit
def _merge(refitted, first, refit):
    """The per-gene quantities of `refit` for the `refitted` genes, of `first` elsewhere
    (the trend's coefficients and the prior variance are shared)."""
    base_mean, genewise, prior, dispersions, fit = first
    new_base_mean, new_genewise, new_prior, new_dispersions, new_fit = refit

    def pick(old, new):  # genes are the last axis, or the first for coefficients
        return jnp.where(refitted, new, old)

    if prior is not None:
        prior = prior._replace(trend=pick(prior.trend, new_prior.trend))
    fit = CoefficientFit(
        jnp.where(refitted[:, None], new_fit.coefficients, fit.coefficients),
        pick(fit.means, new_fit.means),
        pick(fit.hat_diagonals, new_fit.hat_diagonals),
        pick(fit.converged, new_fit.converged),
    )
    return (
        pick(base_mean, new_base_mean),
        pick(genewise, new_genewise),
        prior,
        pick(dispersions, new_dispersions),
        fit,
    )


def fit_expressed(
    counts: np.ndarray, design: np.ndarray, config: DifferentiableNBGLMConfig
) -> NBGLMFit:
    """`fit_nbglm` run on the genes with a count only, the others filled in as it would
    fill them (NaN; ``base_mean`` 0). Nothing changes but the time: about half of airway's
    genes are empty. Needs concrete `counts` (the set of genes is data-dependent)."""
    expressed = np.asarray(counts).any(axis=0)
    fit = fit_nbglm(np.asarray(counts)[:, expressed], design, config)
    if expressed.all():
        return fit

    def widen(values, fill, axis=0):
        values = np.moveaxis(np.asarray(values), axis, 0)
        full = np.full((expressed.size, *values.shape[1:]), fill, values.dtype)
        full[expressed] = values
        return jnp.asarray(np.moveaxis(full, 0, axis))

    return fit._replace(
        base_mean=widen(fit.base_mean, 0.0),
        genewise_dispersions=widen(fit.genewise_dispersions, np.nan),
        trend_dispersions=widen(fit.trend_dispersions, np.nan),
        dispersions=widen(fit.dispersions, np.nan),
        coefficients=widen(fit.coefficients, np.nan),
        covariance=widen(fit.covariance, np.nan),
        means=widen(fit.means, np.nan, axis=1),
        cooks_outlier=widen(fit.cooks_outlier, False),
        refitted=widen(fit.refitted, False),
        converged=widen(fit.converged, False),
    )


_size_factors = jax.jit(median_of_ratios)


@functools.partial(jax.jit, static_argnames=("min_mean", "min_dispersion", "max_dispersion"))
def _prepare(counts, size_factors, design, *, min_mean, min_dispersion, max_dispersion):
    """Base means, starting dispersions, linear means."""
    normed = counts / size_factors[:, None]
    start = initial_dispersions(normed, size_factors, design, min_dispersion, max_dispersion)
    linear = linear_means(normed, size_factors, design, min_mean)
    return normed.mean(axis=0), start, linear


@jax.jit
def _assemble(
    size_factors, base_mean, genewise, prior, dispersions, fit, outlier, refitted, design
):
    """The `NBGLMFit`, with NaN for the genes with no count."""
    expressed = base_mean > 0

    def per_gene(x):
        mask = expressed.reshape(expressed.shape + (1,) * (x.ndim - 1))
        return jnp.where(mask, x, jnp.nan)

    nan = jnp.full((), jnp.nan, base_mean.dtype)
    return NBGLMFit(
        size_factors=size_factors,
        base_mean=base_mean,
        genewise_dispersions=per_gene(genewise),
        trend_dispersions=per_gene(prior.trend) if prior else jnp.full_like(genewise, nan),
        dispersions=per_gene(dispersions),
        trend_coefficients=prior.coefficients if prior else jnp.stack([nan, nan]),
        prior_variance=prior.variance if prior else nan,
        coefficients=per_gene(fit.coefficients),
        covariance=per_gene(coefficient_covariance(design, fit.means, dispersions)),
        means=jnp.where(expressed, fit.means, jnp.nan),
        cooks_outlier=expressed & (outlier if outlier is not None else False),
        refitted=refitted if refitted is not None else jnp.zeros_like(expressed),
        converged=fit.converged & expressed,
    )


class DifferentiableNBGLM(eqx.Module):
    """A fitted DESeq2 model: per-gene coefficients, their covariance and dispersions.

    Unfitted (as built): zero coefficients, covariances and dispersions. `fit` returns
    the fitted copy. Arrays are float32; fitting itself runs in float64.
    """

    coefficients: Float[Array, "n_genes n_coefficients"]
    covariance: Float[Array, "n_genes n_coefficients n_coefficients"]
    dispersions: Float[Array, " n_genes"]
    base_mean: Float[Array, " n_genes"]
    cooks_outlier: Bool[Array, " n_genes"]
    config: DifferentiableNBGLMConfig = eqx.field(static=True)

    def __init__(self, config: DifferentiableNBGLMConfig, *, key: PRNGKeyArray | None = None):
        """Build an unfitted model. `key` is unused (nothing is random); it is accepted so
        every architecture builds the same way."""
        del key
        g, p = config.n_genes, config.n_coefficients
        self.coefficients = jnp.zeros((g, p), jnp.float32)
        self.covariance = jnp.zeros((g, p, p), jnp.float32)
        self.dispersions = jnp.zeros(g, jnp.float32)
        self.base_mean = jnp.zeros(g, jnp.float32)
        self.cooks_outlier = jnp.zeros(g, bool)
        self.config = config

    def fit(self, counts: ArrayLike, design: ArrayLike) -> DifferentiableNBGLM:
        """The model fitted to integer `counts` (samples x n_genes) under `design`
        (samples x n_coefficients), in float64.

        Raises:
            ValueError: naming the problem with the counts or the design.
        """
        counts = check_counts(counts)
        if counts.shape[1] != self.config.n_genes:
            raise ValueError(f"counts have {counts.shape[1]} genes; expected {self.config.n_genes}")
        design = check_design(design, counts.shape[0])
        if design.shape[1] != self.config.n_coefficients:
            raise ValueError(
                f"design has {design.shape[1]} columns; expected {self.config.n_coefficients}"
            )
        with jax.enable_x64(True):
            fit = fit_expressed(counts, design, self.config)
            fields = (fit.coefficients, fit.covariance, fit.dispersions, fit.base_mean)
            fields = tuple(np.asarray(x, np.float32) for x in fields)
            outlier = np.asarray(fit.cooks_outlier)
        return eqx.tree_at(
            lambda m: (m.coefficients, m.covariance, m.dispersions, m.base_mean, m.cooks_outlier),
            self,
            (*(jnp.asarray(x) for x in fields), jnp.asarray(outlier)),
        )

    def __call__(
        self, design_row: Float[Array, " n_coefficients"], size_factor: Float[ArrayLike, ""] = 1.0
    ) -> Float[Array, " n_genes"]:
        """Expected counts ``s exp(beta x)`` of one sample with design row `x`."""
        n_coefficients = self.config.n_coefficients
        check_shape("design_row", design_row, (n_coefficients,), "(n_coefficients,)")
        return size_factor * jnp.exp(self.coefficients @ design_row)

    def log_likelihood(
        self,
        counts: Float[Array, " n_genes"],
        design_row: Float[Array, " n_coefficients"],
        size_factor: Float[ArrayLike, ""] = 1.0,
    ) -> Float[Array, " n_genes"]:
        """Per-gene NB log-likelihood of one sample's counts."""
        mean = self(design_row, size_factor)
        return negative_binomial_log_prob(counts, mean, 1.0 / self.dispersions)

    def wald_test(self, contrast: Float[ArrayLike, " n_coefficients"]) -> WaldTest:
        """Wald test of ``contrast @ beta = 0`` for every gene (see `zoo.deseq2.wald`), with
        Cook's filtering and independent filtering as configured."""
        return wald_test(
            self.coefficients,
            self.covariance,
            jnp.asarray(contrast, self.coefficients.dtype),
            self.base_mean,
            self.cooks_outlier,
            alpha=self.config.fdr_level,
            independent_filter=self.config.independent_filter,
        )
