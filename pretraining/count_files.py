"""One single-cell count file read out of core: an ``.h5ad`` (HDF5, through h5py) or a
``.zarr`` store, opened with anndata's element readers so that only the rows asked for are
read.

`CountFile` keeps the file's ``var`` table and, for a CSR matrix, its row pointers
(``X/indptr``, 8 bytes per cell); it reads cells as ``scipy.sparse`` rows through
``anndata.io.sparse_dataset`` (which slices ``X/data`` and ``X/indices``), or as row
slices of a dense ``X``. A whole file is never densified. For the scanpy wheel's
``pbmc68k_reduced``, whose ``X`` is scaled, raw counts are recovered row by row as
``rint(expm1(raw.X) * n_counts / 1e4)``.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import scipy.sparse as sp

COUNT_SUFFIXES = (".h5ad", ".zarr")
GLOB_CHARACTERS = frozenset("*?[")


class ExpressionDataError(ValueError):
    """An expression corpus is missing or does not hold raw integer counts."""


def expand_paths(item: str) -> list[Path] | None:
    """The count files that `item` names when it is a directory (its ``.h5ad`` and
    ``.zarr`` entries, sorted) or a glob pattern (its matches, sorted); None when it is
    neither.

    Raises:
        ExpressionDataError: the directory holds no count file, or the pattern matches none.
    """
    if os.path.isdir(item) and not item.rstrip("/").endswith(".zarr"):
        found = sorted(p for p in Path(item).iterdir() if p.name.endswith(COUNT_SUFFIXES))
        if not found:
            raise ExpressionDataError(f"directory {item} holds no .h5ad or .zarr file")
        return found
    if GLOB_CHARACTERS & set(item) and not os.path.exists(item):
        found = sorted(Path(p) for p in glob.glob(item) if p.endswith(COUNT_SUFFIXES))
        if not found:
            raise ExpressionDataError(f"pattern {item!r} matches no .h5ad or .zarr file")
        return found
    return None


def _open_store(path: Path):
    if path.suffix == ".zarr":
        import zarr

        return zarr.open_group(str(path), mode="r")
    import h5py

    return h5py.File(path, "r")


class CountFile:
    """The raw counts of one file, read a few rows at a time (see the module docstring).

    Args:
        path: an ``.h5ad`` file or ``.zarr`` store.
        recover_from_log: recover raw counts from ``raw.X`` and ``obs.n_counts``.

    Attributes:
        var: the genes (AnnData ``var``; its index is ``var_names``).
        n_cells, n_genes: the shape of the count matrix.
        nonempty: (n_cells,) bool, True where a cell has a stored entry; exact for CSR
            (from the row pointers); all True for a dense matrix.

    Raises:
        ExpressionDataError: naming the file, when it is not a readable AnnData store.
    """

    def __init__(self, path: Path, *, recover_from_log: bool = False):
        from anndata.io import read_elem

        self.path = Path(path)
        self.recover_from_log = recover_from_log
        try:
            store = _open_store(self.path)
            base = store["raw"] if recover_from_log else store
            self.var = read_elem(base["var"])
            matrix = base["X"]
            self.sparse = matrix.attrs.get("encoding-type") in ("csr_matrix", "csc_matrix")
            if matrix.attrs.get("encoding-type") == "csc_matrix":
                raise ExpressionDataError(
                    f"{self.path}: X is stored as CSC, which cannot be read a row at a time; "
                    "write it as CSR (adata.X = adata.X.tocsr())"
                )
            if self.sparse:
                self.n_cells, self.n_genes = (int(n) for n in matrix.attrs["shape"])
                self.nonempty = np.diff(np.asarray(matrix["indptr"][...])) > 0
            else:
                self.n_cells, self.n_genes = (int(n) for n in matrix.shape)
                self.nonempty = np.ones(self.n_cells, bool)
            self.n_counts = (
                np.asarray(read_elem(store["obs"])["n_counts"], np.float64)
                if recover_from_log
                else None
            )
        except (OSError, KeyError, ValueError, TypeError) as error:
            if isinstance(error, ExpressionDataError):
                raise
            raise ExpressionDataError(
                f"{self.path} is not a readable AnnData file: {error}"
            ) from None
        self._matrix = None  # opened lazily, in the process that reads

    def _rows(self) -> object:
        if self._matrix is None:
            from anndata.io import sparse_dataset

            store = _open_store(self.path)
            matrix = (store["raw"] if self.recover_from_log else store)["X"]
            self._matrix = sparse_dataset(matrix) if self.sparse else matrix
        return self._matrix

    def read_rows(self, rows: Sequence[int] | np.ndarray) -> sp.csr_matrix:
        """Cells `rows` (in the order given, repeats allowed) as float32 CSR raw counts."""
        rows = np.asarray(rows, np.int64)
        unique, where = np.unique(rows, return_inverse=True)
        return self._read_sorted(unique)[where]

    def read_block(self, start: int, stop: int) -> sp.csr_matrix:
        """Cells ``start:stop`` as float32 CSR raw counts (a contiguous read)."""
        return self._read_sorted(slice(start, stop))

    def _read_sorted(self, rows: np.ndarray | slice) -> sp.csr_matrix:
        block = self._rows()[rows]
        counts = sp.csr_matrix(block, dtype=np.float64)
        if self.recover_from_log:
            picked = self.n_counts[rows]
            counts = sp.csr_matrix(counts.expm1().multiply(picked[:, None] / 1e4))
            counts.data = np.rint(counts.data)
        check_counts(counts.data, self.path)
        return counts.astype(np.float32)


def check_counts(values: np.ndarray, path: Path) -> None:
    """Raise `ExpressionDataError` naming `path` unless `values` are finite non-negative
    integers."""
    problem = (
        "non-finite values"
        if not np.all(np.isfinite(values))
        else "negative values"
        if np.any(values < 0)
        else "non-integer values"
        if np.any(values != np.round(values))
        else None
    )
    if problem:
        raise ExpressionDataError(
            f"{path}: X holds {problem}; pretraining needs raw integer counts (not normalised "
            "or log-transformed data)"
        )
