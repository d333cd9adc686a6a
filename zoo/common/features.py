"""Reading a cells x features matrix from an AnnData or an array, for the embedding operators.

The features are ``adata.X`` (default), ``adata.layers[layer]`` or ``adata.obsm[obsm]``
(e.g. ``"X_pca"``); a plain array (dense or scipy sparse) is used as it is. The result is a
dense float32 array, checked for NaN and infinite values.
"""

from __future__ import annotations

import numpy as np


def is_anndata(data) -> bool:
    """Whether `data` looks like an AnnData (has ``X``, ``obs``, ``obsm`` and ``layers``)."""
    return all(hasattr(data, name) for name in ("X", "obs", "obsm", "layers"))


def read_features(data, *, layer: str | None = None, obsm: str | None = None) -> np.ndarray:
    """The (cells, features) matrix of `data` as dense float32.

    Raises:
        ValueError: for a missing layer or obsm key, both given, an option given with a
            plain array, a matrix that is not 2-D, or NaN/infinite values.
    """
    if layer is not None and obsm is not None:
        raise ValueError("give at most one of layer and obsm")
    if is_anndata(data):
        if layer is not None:
            if layer not in data.layers:
                raise ValueError(f"layer {layer!r} not in adata.layers {sorted(data.layers)}")
            matrix = data.layers[layer]
        elif obsm is not None:
            if obsm not in data.obsm:
                raise ValueError(f"obsm key {obsm!r} not in adata.obsm {sorted(data.obsm)}")
            matrix = data.obsm[obsm]
        else:
            matrix = data.X
    elif layer is not None or obsm is not None:
        raise ValueError("layer and obsm are only meaningful for an AnnData")
    else:
        matrix = data
    matrix = matrix.toarray() if hasattr(matrix, "toarray") else np.asarray(matrix)
    matrix = matrix.astype(np.float32, copy=False)
    if matrix.ndim != 2:
        raise ValueError(f"features must be 2-D (cells x features), got shape {matrix.shape}")
    if not np.all(np.isfinite(matrix)):
        raise ValueError("features contain NaN or infinite values")
    return matrix
