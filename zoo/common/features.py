"""Reading a cells x features matrix from an AnnData or an array, for the embedding operators.

The argument names are scanpy's: the features are ``adata.X`` (default),
``adata.layers[layer]`` or ``adata.obsm[use_rep]`` (e.g. ``"X_pca"``); a plain array (dense or
scipy sparse) is used as it is. `read_features` returns a dense float32 array, checked for NaN
and infinite values.
"""

from __future__ import annotations

import numpy as np


def is_anndata(data) -> bool:
    """Whether `data` looks like an AnnData (has ``X``, ``obs``, ``obsm`` and ``layers``)."""
    return all(hasattr(data, name) for name in ("X", "obs", "obsm", "layers"))


def select_features(data, *, layer: str | None = None, use_rep: str | None = None):
    """``X``, ``layers[layer]`` or ``obsm[use_rep]`` of an AnnData, as stored; `data` itself
    when it is not an AnnData.

    Raises:
        ValueError: for a missing layer or ``obsm`` key, both given, or either given with a
            plain array.
    """
    if layer is not None and use_rep is not None:
        raise ValueError("give at most one of layer and use_rep")
    if not is_anndata(data):
        if layer is not None or use_rep is not None:
            raise ValueError("layer and use_rep apply to AnnData input only")
        return data
    if layer is not None:
        if layer not in data.layers:
            raise ValueError(f"layer {layer!r} not in adata.layers {sorted(data.layers)}")
        return data.layers[layer]
    if use_rep is not None:
        if use_rep not in data.obsm:
            raise ValueError(f"use_rep {use_rep!r} not in adata.obsm {sorted(data.obsm)}")
        return data.obsm[use_rep]
    return data.X


def read_features(data, *, layer: str | None = None, use_rep: str | None = None) -> np.ndarray:
    """The (cells, features) matrix of `data` (`select_features`) as dense float32.

    Raises:
        ValueError: as `select_features`, and for a matrix that is not 2-D or holds NaN or
            infinite values.
    """
    matrix = select_features(data, layer=layer, use_rep=use_rep)
    matrix = matrix.toarray() if hasattr(matrix, "toarray") else np.asarray(matrix)
    matrix = matrix.astype(np.float32, copy=False)
    if matrix.ndim != 2:
        raise ValueError(f"features must be 2-D (cells x features), got shape {matrix.shape}")
    if not np.all(np.isfinite(matrix)):
        raise ValueError("features contain NaN or infinite values")
    return matrix
