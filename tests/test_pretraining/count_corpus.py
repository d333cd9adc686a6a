"""A tiny multi-file single-cell corpus for the tests: three .h5ad files over different,
overlapping subsets of 60 genes, in different column orders, one of them naming its genes
by Ensembl ID with the symbols in ``var["gene_symbols"]``; every tenth cell has no count."""

from __future__ import annotations

from pathlib import Path

import anndata
import numpy as np
import pandas as pd
import scipy.sparse as sp

SYMBOLS = [f"GENE{i:02d}" for i in range(60)]
IDS = [f"ENSG{i:011d}" for i in range(60)]
SUBSETS = (range(0, 40), range(59, 19, -1), range(10, 50))  # file 1 reversed, file 2 by ID


def file_counts(index: int, n_cells: int, n_genes: int) -> sp.csr_matrix:
    """Integer counts of file `index`, with every tenth cell empty."""
    rng = np.random.default_rng(index)
    dense = rng.poisson(rng.gamma(0.5, 2.0, (n_cells, n_genes))).astype(np.float32)
    dense[::10] = 0
    return sp.csr_matrix(dense)


def write_corpus(folder: Path, n_cells: int = 60) -> list[Path]:
    """Write the three files (see the module docstring) into `folder` and return them."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, subset in enumerate(SUBSETS):
        genes = list(subset)
        if index == 2:
            var = pd.DataFrame(
                {"gene_symbols": [SYMBOLS[g] for g in genes]}, index=[IDS[g] for g in genes]
            )
        else:
            var = pd.DataFrame(index=[SYMBOLS[g] for g in genes])
        adata = anndata.AnnData(file_counts(index, n_cells, len(genes)), var=var)
        paths.append(folder / f"part{index}.h5ad")
        adata.write_h5ad(paths[-1])
    return paths


def dense_in_vocabulary(path: Path, index: int) -> np.ndarray:
    """All cells of file `index` as dense counts over the 60 symbols, read whole (the
    reference the out-of-core reader is checked against)."""
    counts = anndata.read_h5ad(path).X.toarray()
    out = np.zeros((counts.shape[0], len(SYMBOLS)), np.float32)
    out[:, list(SUBSETS[index])] = counts
    return out
