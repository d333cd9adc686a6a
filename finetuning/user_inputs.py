"""A user's data, whatever its form, as checked batches of model inputs.

`input_batches` takes a path (FASTA, table or ``.h5ad``), a pandas table, a list of DNA
strings, a cells x genes count array or an AnnData, and yields `InputBatch` es holding the
example names, the inputs the model reads (checked against it: `finetuning.sequence_checks`,
`finetuning.user_cells`), and the labels and splits when present. Only one batch of inputs
is held at a time when reading from a file.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anndata
import equinox as eqx
import numpy as np
import pandas as pd

from finetuning.sequence_checks import checked_sequences
from finetuning.user_cells import count_batches, obs_column, read_cells
from finetuning.user_data import (
    Columns,
    UserDataError,
    check_columns,
    data_suffix,
    sequence_batches,
    table_records,
)
from zoo.expression.foundation_model import DifferentiableFoundationModel
from zoo.expression.gene_vocabulary import MIN_FRACTION, GeneVocabulary


@dataclasses.dataclass(frozen=True)
class ReadOptions:
    """Where a user's inputs, labels and splits are.

    Attributes:
        columns: the table columns (sequence, label, name, split); ``columns.label`` is
            the label column for tables and, with `label_key` unset, nothing for cells.
        layer: the AnnData layer holding raw counts (None: ``X``).
        label_key: the ``obs`` column of cell labels (None: no labels).
        truncate: cut sequences longer than the model takes instead of refusing them.
        genes: the model's gene vocabulary; cells are then lined up with it by gene ID or
            symbol (`zoo.expression.gene_vocabulary`). None: the cells must carry exactly
            the model's genes, in its order.
        min_gene_fraction: the least fraction of the vocabulary the cells must hold.
    """

    columns: Columns = dataclasses.field(default_factory=Columns)
    layer: str | None = None
    label_key: str | None = None
    truncate: bool = False
    genes: GeneVocabulary | None = None
    min_gene_fraction: float = MIN_FRACTION

    def without_labels(self) -> ReadOptions:
        """The same options with no label column read."""
        return dataclasses.replace(
            self, columns=dataclasses.replace(self.columns, label=None), label_key=None
        )


@dataclasses.dataclass(frozen=True)
class InputBatch:
    """Checked examples of a user's data.

    Attributes:
        names: example names (table name column, FASTA header, ``obs_names``, or the row
            number).
        rows: row numbers from 1 (for error messages).
        inputs: DNA strings or a dense float32 count matrix.
        labels: the raw labels (None when not read).
        splits: the raw split column (None when absent).
    """

    names: np.ndarray
    rows: np.ndarray
    inputs: list[str] | np.ndarray
    labels: np.ndarray | None
    splits: np.ndarray | None


def describe(data: Any) -> str:
    """The name errors give to `data`: the path (a backed AnnData's file too), or what kind
    of object it is."""
    if isinstance(data, (str, os.PathLike)):
        return str(data)
    if isinstance(data, anndata.AnnData) and data.isbacked:
        return str(data.filename)
    return f"the {type(data).__name__}"


def is_cells(backbone: eqx.Module) -> bool:
    """Whether `backbone` reads cells (counts) rather than sequences."""
    return isinstance(backbone, DifferentiableFoundationModel)


def input_batches(
    data: Any, backbone: eqx.Module, options: ReadOptions, batch_size: int = 256
) -> Iterator[InputBatch]:
    """Checked batches of `data` for `backbone` (see the module docstring).

    Raises:
        UserDataError: the data do not suit the model or are bad (naming the file and the
            row or column).
    """
    source = describe(data)
    if is_cells(backbone):
        yield from _cell_batches(_as_anndata(data, source), backbone, options, source, batch_size)
        return
    if isinstance(data, (str, os.PathLike)):
        if data_suffix(data) == ".h5ad":
            raise UserDataError(f"{source}: cells given to a sequence model; give sequences")
        frames = sequence_batches(data, options.columns, batch_size)
    elif isinstance(data, pd.DataFrame):
        frames = _frame_batches(data, options.columns, batch_size, source)
    elif isinstance(data, (list, tuple)) and all(isinstance(s, str) for s in data):
        table = pd.DataFrame({"sequence": list(data)})
        frames = _frame_batches(table, Columns(label=None), batch_size, source)
    else:
        raise UserDataError(
            f"{source}: a sequence model reads a FASTA file, a table or a list of strings"
        )
    for frame in frames:
        yield InputBatch(
            names=frame["name"].to_numpy(str),
            rows=frame["row"].to_numpy(),
            inputs=checked_sequences(backbone, frame, source, truncate=options.truncate),
            labels=frame["label"].to_numpy(object) if "label" in frame else None,
            splits=frame["split"].to_numpy(object) if "split" in frame else None,
        )


def _frame_batches(
    table: pd.DataFrame, columns: Columns, batch_size: int, source: str
) -> Iterator[pd.DataFrame]:
    check_columns(Path(source), list(table.columns), columns)
    if len(table) == 0:
        raise UserDataError(f"{source}: the table has no rows")
    records = table_records(table.reset_index(drop=True), columns)
    records["row"] = np.arange(1, len(records) + 1)
    if "name" not in records:
        records["name"] = records["row"].astype(str)
    for start in range(0, len(records), batch_size):
        yield records.iloc[start : start + batch_size]


def _as_anndata(data: Any, source: str) -> anndata.AnnData:
    if isinstance(data, anndata.AnnData):
        return data
    if isinstance(data, (str, os.PathLike)):
        if data_suffix(data) != ".h5ad":
            raise UserDataError(f"{source}: a cell model reads an .h5ad file")
        return read_cells(data)
    if isinstance(data, np.ndarray) and data.ndim == 2:
        return anndata.AnnData(data)
    raise UserDataError(f"{source}: a cell model reads an .h5ad file, an AnnData or a count array")


def _cell_batches(
    adata: anndata.AnnData,
    backbone: DifferentiableFoundationModel,
    options: ReadOptions,
    source: str,
    batch_size: int,
) -> Iterator[InputBatch]:
    if adata.n_obs == 0:
        raise UserDataError(f"{source}: there are no cells")
    labels = None if options.label_key is None else obs_column(adata, options.label_key, source)
    split_key = options.columns.split
    splits = obs_column(adata, split_key, source) if split_key in adata.obs.columns else None
    names = adata.obs_names.to_numpy(str)
    counts = count_batches(
        backbone,
        adata,
        options.layer,
        source,
        batch_size,
        genes=options.genes,
        min_gene_fraction=options.min_gene_fraction,
    )
    for start, block in zip(range(0, adata.n_obs, batch_size), counts, strict=True):
        part = slice(start, start + batch_size)
        yield InputBatch(
            names=names[part],
            rows=np.arange(start + 1, start + 1 + len(block)),
            inputs=block,
            labels=None if labels is None else labels[part],
            splits=None if splits is None else splits[part],
        )


def read_inputs(data: Any, backbone: eqx.Module, options: ReadOptions) -> InputBatch:
    """All of `data` as one checked batch (see `input_batches`)."""
    parts = list(input_batches(data, backbone, options))

    def joined(field: str):
        values = [getattr(p, field) for p in parts]
        if values[0] is None:
            return None
        if isinstance(values[0], list):
            return [item for value in values for item in value]
        return np.concatenate(values)

    return InputBatch(*(joined(f.name) for f in dataclasses.fields(InputBatch)))
