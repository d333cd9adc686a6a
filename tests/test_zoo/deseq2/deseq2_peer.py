"""pydeseq2, the peer the DESeq2 tests compare against, run as they all run it."""

from __future__ import annotations

import pandas as pd
from pydeseq2.dds import DeseqDataSet
from pydeseq2.ds import DeseqStats


def run_pydeseq2(
    counts: pd.DataFrame, metadata: pd.DataFrame, formula: str, contrast: tuple[str, str, str]
) -> tuple[DeseqDataSet, DeseqStats]:
    """pydeseq2's ``deseq2()`` and Wald test ``summary()`` on one CPU, quietly."""
    dds = DeseqDataSet(counts=counts, metadata=metadata, design=formula, n_cpus=1, quiet=True)
    dds.deseq2()
    stats = DeseqStats(dds, contrast=list(contrast), n_cpus=1, quiet=True)
    stats.summary()
    return dds, stats
