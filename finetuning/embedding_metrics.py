"""Quality of a cell embedding from its exact k-nearest-neighbour graph (`zoo.common.knn`).

- `knn_accuracy`: leave-one-out k-NN classification. Each cell's label is predicted by the
  majority label among its ``k`` nearest other cells (ties go to the smallest label code);
  the score is the fraction predicted correctly. High when cell types stay separated.
- `batch_mixing`: an iLISI-style score (Korsunsky et al., 2019, "Fast, sensitive and
  accurate integration of single-cell data with Harmony", Nature Methods). For each cell,
  the inverse Simpson index ``1 / sum_b p_b^2`` of the batch proportions ``p_b`` among its
  ``k`` nearest other cells (uniform weights rather than LISI's perplexity-based Gaussian
  weights), rescaled as ``(index - 1) / (n_batches - 1)`` to [0, 1] and averaged over cells:
  0 when every neighbourhood holds one batch, 1 when all batches are equally represented.
"""

from __future__ import annotations

import numpy as np

from zoo.common.knn import knn


def _neighbour_label_counts(embedding: np.ndarray, labels: np.ndarray, k: int):
    """Label codes and, per cell, the count of each code among its k nearest other cells."""
    codes, inverse = np.unique(np.asarray(labels), return_inverse=True)
    _, neighbours = knn(np.asarray(embedding, np.float32), k)
    neighbour_codes = inverse[np.asarray(neighbours)]
    counts = np.stack([(neighbour_codes == c).sum(axis=1) for c in range(len(codes))], axis=1)
    return inverse, counts


def knn_accuracy(embedding: np.ndarray, labels: np.ndarray, k: int = 15) -> float:
    """Leave-one-out k-NN accuracy of `labels` (one per row of `embedding`)."""
    truth, counts = _neighbour_label_counts(embedding, labels, k)
    return float(np.mean(np.argmax(counts, axis=1) == truth))


def batch_mixing(embedding: np.ndarray, batches: np.ndarray, k: int = 15) -> float:
    """Mean rescaled inverse Simpson index of neighbour batches (module docstring)."""
    _, counts = _neighbour_label_counts(embedding, batches, k)
    n_batches = counts.shape[1]
    if n_batches < 2:
        raise ValueError("batch mixing needs at least two batches")
    proportions = counts / k
    inverse_simpson = 1.0 / np.sum(proportions**2, axis=1)
    return float(np.mean((inverse_simpson - 1.0) / (n_batches - 1.0)))
