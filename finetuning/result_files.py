"""Writing embeddings and predictions to the file type the output path's suffix names, each
with the model's provenance, and each written whole or not at all
(`finetuning.outputs.atomic_output`).

Sequence embeddings:

- ``.npy``: the ``(n, dim)`` matrix; a sidecar ``.json`` beside it (same stem) holds the
  example names, in row order, and the provenance.
- ``.npz``: ``embeddings`` and ``names``; per token, ``embeddings`` is the
  ``(total_tokens, dim)`` concatenation of every sequence's hidden states and ``offsets``
  the ``n + 1`` row offsets (sequence ``i`` is ``embeddings[offsets[i]:offsets[i + 1]]``);
  a sidecar ``.json`` holds the provenance.
- ``.parquet``: a ``name`` column and an ``embedding`` column of float lists (per token: a
  list of lists); the provenance in the schema metadata under ``biozoo``.

Cells: a copy of the ``.h5ad`` with the embedding in ``obsm[key]`` (or the predictions as
``obs`` columns) and the provenance in ``uns["biozoo"]``. Predictions: a table (``.tsv``,
``.csv`` or ``.parquet``) with ``name``, ``prediction`` and, for classification, one
``probability_<class>`` column per class.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import anndata
import numpy as np
import pandas as pd

from finetuning.outputs import atomic_output
from finetuning.user_data import UserDataError, data_suffix, require_parquet

METADATA_KEY = "biozoo"
EMBEDDING_SUFFIXES = (".npy", ".npz", ".parquet")
TABLE_SUFFIXES = {".tsv": "\t", ".csv": ","}


def sidecar_path(out: str | os.PathLike) -> Path:
    """The JSON file beside `out` holding its names and provenance (``x.npy`` ->
    ``x.json``)."""
    return Path(out).with_suffix(".json")


def _plain(provenance: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in provenance.items() if v not in (None, {}, "")}


def write_sequence_embeddings(
    out: str | os.PathLike,
    names: list[str],
    embeddings: np.ndarray | list[np.ndarray],
    provenance: dict[str, Any],
) -> Path:
    """Write sequence embeddings (pooled ``(n, dim)`` array, or a per-token list) to `out`
    (see the module docstring); return `out`.

    Raises:
        UserDataError: an unknown suffix, or per-token embeddings for ``.npy``.
    """
    out = Path(out)
    suffix = data_suffix(out)
    per_token = isinstance(embeddings, list)
    if suffix not in EMBEDDING_SUFFIXES:
        raise UserDataError(f"{out}: write embeddings to {', '.join(EMBEDDING_SUFFIXES)}")
    metadata = {"provenance": _plain(provenance), "per_token": per_token}
    if suffix == ".parquet":
        require_parquet(out)
        import pyarrow as pa
        import pyarrow.parquet as pq

        values = [e.tolist() for e in embeddings]
        table = pa.table({"name": names, "embedding": values})
        table = table.replace_schema_metadata({METADATA_KEY: json.dumps(metadata)})
        with atomic_output(out) as partial:
            pq.write_table(table, partial)
        return out
    if suffix == ".npy" and per_token:
        raise UserDataError(
            f"{out}: per-token embeddings are ragged; write them to .npz or .parquet"
        )
    arrays: dict[str, np.ndarray] = {"names": np.asarray(names, dtype=str)}
    if per_token:
        lengths = [len(e) for e in embeddings]
        arrays["offsets"] = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        arrays["embeddings"] = np.concatenate(embeddings).astype(np.float32)
    else:
        arrays["embeddings"] = np.asarray(embeddings, np.float32)
    with atomic_output(out) as partial, open(partial, "wb") as f:
        if suffix == ".npy":
            np.save(f, arrays["embeddings"])
        else:
            np.savez(f, **arrays)
    sidecar = metadata | ({"names": list(names)} if suffix == ".npy" else {})
    with atomic_output(sidecar_path(out)) as partial:
        partial.write_text(json.dumps(sidecar, indent=1) + "\n")
    return out


def _uns_value(provenance: dict[str, Any]) -> dict[str, Any]:
    plain = _plain(provenance)
    return {k: (dict(v) if isinstance(v, dict) else str(v)) for k, v in plain.items()}


def write_cells_copy(
    out: str | os.PathLike,
    adata: anndata.AnnData,
    provenance: dict[str, Any],
    *,
    obsm: dict[str, np.ndarray] | None = None,
    obs: dict[str, np.ndarray] | None = None,
) -> Path:
    """Write a copy of `adata` to `out` (``.h5ad``) with `obsm` and `obs` entries added and
    the provenance in ``uns["biozoo"]``. A backed AnnData is copied file to file and only the
    new entries (and ``obs``) are written, so its counts are never loaded; an in-memory one is
    copied and written."""
    from anndata.io import read_elem, write_elem

    out = Path(out)
    if data_suffix(out) != ".h5ad":
        raise UserDataError(f"{out}: a copy of the cells must be an .h5ad file")
    obsm, obs = obsm or {}, obs or {}
    with atomic_output(out) as partial:
        if adata.isbacked:
            import h5py

            shutil.copyfile(adata.filename, partial)
            with h5py.File(partial, "r+") as f:
                for key, value in obsm.items():
                    if key in f["obsm"]:
                        del f["obsm"][key]
                    write_elem(f["obsm"], key, np.asarray(value))
                if obs:
                    frame = read_elem(f["obs"])
                    frame = frame.assign(**{k: np.asarray(v) for k, v in obs.items()})
                    del f["obs"]
                    write_elem(f, "obs", frame)
                if METADATA_KEY in f["uns"]:
                    del f["uns"][METADATA_KEY]
                write_elem(f["uns"], METADATA_KEY, _uns_value(provenance))
        else:
            copy = adata.copy()
            for key, value in obsm.items():
                copy.obsm[key] = np.asarray(value)
            for key, value in obs.items():
                copy.obs[key] = np.asarray(value)
            copy.uns[METADATA_KEY] = _uns_value(provenance)
            copy.write_h5ad(partial)
    return out


def prediction_table(
    names: np.ndarray, outputs: np.ndarray, classes: tuple[str, ...], regression: bool
) -> pd.DataFrame:
    """``name``, ``prediction`` (the class of highest probability, or the predicted target)
    and, for classification, ``probability_<class>`` per class."""
    if regression:
        return pd.DataFrame({"name": names, "prediction": outputs[:, 0]})
    labels = classes or tuple(str(i) for i in range(outputs.shape[1]))
    table = pd.DataFrame({"name": names, "prediction": np.asarray(labels)[outputs.argmax(1)]})
    for i, label in enumerate(labels):
        table[f"probability_{label}"] = outputs[:, i]
    return table


def write_table(out: str | os.PathLike, table: pd.DataFrame, provenance: dict[str, Any]) -> Path:
    """Write `table` as ``.tsv``, ``.csv`` or ``.parquet`` (by `out`'s suffix; Parquet
    carries the provenance in its schema metadata); return `out`."""
    out = Path(out)
    suffix = data_suffix(out)
    if suffix == ".parquet":
        require_parquet(out)
        import pyarrow as pa
        import pyarrow.parquet as pq

        arrow = pa.Table.from_pandas(table, preserve_index=False)
        metadata = (arrow.schema.metadata or {}) | {
            METADATA_KEY.encode(): json.dumps({"provenance": _plain(provenance)}).encode()
        }
        with atomic_output(out) as partial:
            pq.write_table(arrow.replace_schema_metadata(metadata), partial)
        return out
    if suffix not in TABLE_SUFFIXES:
        raise UserDataError(f"{out}: write a table to .tsv, .csv or .parquet")
    with atomic_output(out) as partial:
        table.to_csv(partial, sep=TABLE_SUFFIXES[suffix], index=False)
    return out
