"""`differential_expression`: DESeq2's Wald test from pandas tables, pydeseq2's columns out.

    results = zoo.differential_expression(counts, metadata, "~ cell + dex", ("dex", "trt", "untrt"))

`counts` is samples x genes raw integer counts, `metadata` one row per sample (matched by
index, in any order), the design a formulaic formula of metadata columns (`zoo.deseq2.design`)
and the contrast ``(factor, level, reference)``. The fit is `zoo.deseq2.model.fit_nbglm` in
float64 and the result has pydeseq2's columns
``baseMean, log2FoldChange, lfcSE, stat, pvalue, padj``.
"""

from __future__ import annotations

import jax
import numpy as np
import pandas as pd

from zoo.deseq2.design import DesignError, design_matrix
from zoo.deseq2.model import DifferentiableNBGLMConfig, check_counts, fit_expressed
from zoo.deseq2.wald import wald_test


def _aligned(counts: pd.DataFrame, metadata: pd.DataFrame) -> pd.DataFrame:
    """`metadata` in the order of the samples of `counts`; mismatched names raise."""
    for name, table in (("counts", counts), ("metadata", metadata)):
        if table.index.has_duplicates:
            duplicated = table.index[table.index.duplicated()].unique().tolist()
            raise ValueError(f"{name} has duplicated sample names: {duplicated}")
    missing = counts.index.difference(metadata.index).tolist()
    extra = metadata.index.difference(counts.index).tolist()
    if missing or extra:
        raise ValueError(
            "sample names of counts (rows) and metadata (rows) do not match: "
            f"without metadata {missing}, without counts {extra}"
        )
    return metadata.loc[counts.index]


def differential_expression(
    counts: pd.DataFrame,
    metadata: pd.DataFrame,
    design: str,
    contrast: tuple[str, str, str],
    *,
    shrink_dispersions: bool = True,
    cooks_filter: bool = True,
    refit_cooks: bool = True,
    independent_filter: bool = True,
    fdr_level: float = 0.05,
) -> pd.DataFrame:
    """Test ``contrast`` for every gene (DESeq2 with pydeseq2's defaults).

    Args:
        counts: samples x genes non-negative integer counts.
        metadata: sample annotation indexed by the same sample names.
        design: a formulaic formula over metadata columns, as pydeseq2 takes, such as
            ``"~condition"``, ``"~cell + dex"``, ``"~condition * type"`` or
            ``"~C(dex, contr.treatment('trt'))"`` (see `zoo.deseq2.design`).
        contrast: ``(factor, level, reference)``; the fold change is level / reference, at
            the reference levels of the other factors when `factor` is in an interaction.
        shrink_dispersions, cooks_filter, refit_cooks, independent_filter, fdr_level: see
            `zoo.DifferentiableNBGLMConfig`.

    Returns:
        A DataFrame indexed by gene with columns ``baseMean`` (mean normalised count),
        ``log2FoldChange``, ``lfcSE``, ``stat``, ``pvalue`` and ``padj``; genes with no
        count have NaN statistics, genes set aside by the filters NaN ``padj``. Genes
        refit after outlier replacement report the replaced counts' ``baseMean``.

    Warns:
        CooksRefitWarning: when outlier counts were replaced (cells of 7 or more samples).

    Raises:
        ValueError: negative, non-integer or missing counts, mismatched sample names, a
            bad formula or contrast, or a design without full rank (`DesignError`).
    """
    if not isinstance(counts, pd.DataFrame) or not isinstance(metadata, pd.DataFrame):
        raise TypeError("counts and metadata must be pandas DataFrames (samples as rows)")
    if len(contrast) != 3:
        raise DesignError(f"contrast must be (factor, level, reference), got {contrast!r}")
    if not all(pd.api.types.is_numeric_dtype(dtype) for dtype in counts.dtypes):
        raise ValueError("counts must be numeric")
    values = check_counts(counts.to_numpy())
    metadata = _aligned(counts, metadata)
    model = design_matrix(metadata, design)
    vector = model.contrast(*contrast)
    config = DifferentiableNBGLMConfig(
        n_genes=values.shape[1],
        n_coefficients=model.matrix.shape[1],
        shrink_dispersions=shrink_dispersions,
        cooks_filter=cooks_filter,
        refit_cooks=refit_cooks,
        independent_filter=independent_filter,
        fdr_level=fdr_level,
    )
    with jax.enable_x64(True):
        fit = fit_expressed(values, model.matrix, config)
        test = wald_test(
            fit.coefficients,
            fit.covariance,
            vector,
            fit.base_mean,
            fit.cooks_outlier,
            alpha=fdr_level,
            independent_filter=independent_filter,
        )
        columns = {
            "baseMean": fit.base_mean,
            "log2FoldChange": test.log2_fold_change,
            "lfcSE": test.lfc_se,
            "stat": test.stat,
            "pvalue": test.pvalue,
            "padj": test.padj,
        }
        return pd.DataFrame(
            {name: np.asarray(column) for name, column in columns.items()}, index=counts.columns
        )
