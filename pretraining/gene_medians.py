"""Per-gene non-zero medians of a corpus too large for memory, from one streaming pass.

`GeneTokenizer.fit` needs, for every gene, the median of its non-zero values after each
cell is scaled to ``target_sum`` counts. `MedianHistogram` gets them with bounded memory:
a fixed log-spaced histogram per gene (``bins`` bins over ``[10**LOG_LOW, target_sum]``,
``n_genes x bins`` int64 counters, 8 MB per 1,000 genes at 1,024 bins) filled chunk by chunk;
the median is read from the cumulative counts, interpolated geometrically inside its bin.
This is an approximate method, not a t-digest: the error is at most one bin's width, a
factor of ``(target_sum / 10**LOG_LOW) ** (1 / bins)`` (1.6 % for 1,024 bins and the
default target 10,000), and in practice far smaller. Values below ``10**LOG_LOW`` (a cell of
over ten million counts) fall in the first bin. A gene expressed in no cell gets the median
1, as in `GeneTokenizer.fit`.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

LOG_LOW = -3.0
BINS = 1024


class MedianHistogram:
    """Accumulates scaled non-zero values per gene (see the module docstring).

    Args:
        n_genes: genes (columns of the matrices given to `add`).
        target_sum: the tokenizer's ``target_sum``.
        bins: histogram bins per gene.
    """

    def __init__(self, n_genes: int, target_sum: float, *, bins: int = BINS):
        self.target_sum = float(target_sum)
        self.low, self.high = LOG_LOW, float(np.log10(target_sum))
        self.bins = bins
        self.counts = np.zeros((n_genes, bins), np.int64)

    def add(self, counts: sp.csr_matrix) -> None:
        """Add the cells of a (cells, n_genes) CSR matrix of raw counts."""
        counts = sp.csr_matrix(counts, dtype=np.float64)
        totals = np.asarray(counts.sum(axis=1)).ravel()
        counts.eliminate_zeros()
        scale = self.target_sum / np.maximum(totals, 1e-12)
        per_row = np.diff(counts.indptr)
        scaled = counts.data * np.repeat(scale, per_row)
        where = (np.log10(scaled) - self.low) / (self.high - self.low) * self.bins
        bin_of = np.clip(where.astype(np.int64), 0, self.bins - 1)
        keys, hits = np.unique(counts.indices * self.bins + bin_of, return_counts=True)
        self.counts.ravel()[keys] += hits

    def medians(self) -> np.ndarray:
        """(n_genes,) float32 medians of the non-zero scaled values (1 where none)."""
        n = self.counts.sum(axis=1)
        cumulative = np.cumsum(self.counts, axis=1)
        width = (self.high - self.low) / self.bins
        genes = np.arange(len(n))

        def value_at(rank: np.ndarray) -> np.ndarray:
            bin_of = np.minimum((cumulative <= rank[:, None]).sum(axis=1), self.bins - 1)
            before = np.where(bin_of > 0, cumulative[genes, np.maximum(bin_of - 1, 0)], 0)
            inside = np.maximum(self.counts[genes, bin_of], 1)
            fraction = (rank - before + 0.5) / inside
            return 10.0 ** (self.low + (bin_of + fraction) * width)

        lower, upper = value_at((n - 1) // 2), value_at(n // 2)
        return np.where(n > 0, (lower + upper) / 2, 1.0).astype(np.float32)
