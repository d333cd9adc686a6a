"""Reading a user's DNA/RNA sequences: FASTA files and tables, streamed in batches.

A FASTA file (plain or gzip) gives named sequences without labels. A table (``.tsv``,
``.csv``, either optionally gzipped, or ``.parquet``) has one example per row: a sequence
column, optionally a label column, a name column and a split column (see `Columns`). Rows
are numbered from 1, the header not counted, and FASTA records from 1; every error names the
file and the row or column, as `UserDataError`.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd

from zoo.sequence.fasta import read_fasta

FASTA_SUFFIXES = (".fa", ".fasta", ".fna", ".fas")
TABLE_SEPARATORS = {".tsv": "\t", ".txt": "\t", ".csv": ","}


class UserDataError(ValueError):
    """Bad input in a user's file; the message names the file and the row or column."""


@dataclasses.dataclass(frozen=True)
class Columns:
    """The columns of a user's table.

    Attributes:
        sequence: the DNA/RNA sequences.
        label: the class labels or regression targets (None: not read).
        name: example names (None: the row number names each example).
        split: ``train`` / ``validation`` / ``test`` per row, read when present.
    """

    sequence: str = "sequence"
    label: str | None = "label"
    name: str | None = None
    split: str = "split"


def data_suffix(path: str | os.PathLike) -> str:
    """The suffix that gives a file's format, ``.gz`` skipped (``x.tsv.gz`` -> ``.tsv``)."""
    path = Path(path)
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes = suffixes[:-1]
    return suffixes[-1] if suffixes else ""


def is_fasta(path: str | os.PathLike) -> bool:
    """Whether `path` names a FASTA file (by its suffix)."""
    return data_suffix(path) in FASTA_SUFFIXES


def location(path: str | os.PathLike, row: int) -> str:
    """``"<path>: row <row>"`` for a table, ``"<path>: record <row>"`` for a FASTA file."""
    return f"{path}: {'record' if is_fasta(path) else 'row'} {row}"


def require_parquet(path: str | os.PathLike) -> None:
    """Raise `UserDataError` when the Parquet engine (pyarrow) is not installed."""
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        raise UserDataError(f"{path}: Parquet files need pyarrow (pip install pyarrow)") from None


def _table_chunks(path: Path, batch_size: int) -> Iterator[pd.DataFrame]:
    suffix = data_suffix(path)
    if suffix == ".parquet":
        require_parquet(path)
        import pyarrow.parquet as pq

        for batch in pq.ParquetFile(path).iter_batches(batch_size=batch_size):
            yield batch.to_pandas()
        return
    if suffix not in TABLE_SEPARATORS:
        known = ", ".join([*TABLE_SEPARATORS, ".parquet", *FASTA_SUFFIXES])
        raise UserDataError(f"{path}: unknown file type {suffix!r}; use one of {known}")
    try:
        yield from pd.read_csv(
            path,
            sep=TABLE_SEPARATORS[suffix],
            chunksize=batch_size,
            dtype=str,
            keep_default_na=False,
        )
    except pd.errors.EmptyDataError:
        raise UserDataError(f"{path}: the file is empty") from None
    except pd.errors.ParserError as error:
        raise UserDataError(f"{path}: not a readable table: {error}".splitlines()[0]) from None


def _table_header(path: Path) -> list[str]:
    if data_suffix(path) == ".parquet":
        require_parquet(path)
        import pyarrow.parquet as pq

        return list(pq.read_schema(path).names)
    first = next(_table_chunks(path, 1), None)
    if first is None:
        raise UserDataError(f"{path}: the file is empty")
    return list(first.columns)


def check_columns(path: Path, header: list[str], columns: Columns) -> None:
    """Raise `UserDataError` naming the first of `columns` missing from `header`."""
    for role, column in (
        ("sequence", columns.sequence),
        ("label", columns.label),
        ("name", columns.name),
    ):
        if column is not None and column not in header:
            raise UserDataError(
                f"{path}: no {role} column {column!r}; the columns are {', '.join(header)}"
            )


def table_records(frame: pd.DataFrame, columns: Columns) -> pd.DataFrame:
    """The ``sequence``, ``name``, ``label`` and ``split`` columns of a table's rows (those
    `columns` names and the table has)."""
    records = pd.DataFrame({"sequence": frame[columns.sequence].to_numpy()})
    if columns.name is not None:
        records["name"] = frame[columns.name].astype(str).to_numpy()
    if columns.label is not None:
        records["label"] = frame[columns.label].to_numpy()
    if columns.split in frame.columns:
        records["split"] = frame[columns.split].to_numpy()
    return records


def sequence_batches(
    path: str | os.PathLike, columns: Columns, batch_size: int = 256
) -> Iterator[pd.DataFrame]:
    """Stream the examples of a FASTA file or table, `batch_size` at a time.

    Each batch is a frame with columns ``row`` (1-based), ``name``, ``sequence`` and, when
    read, ``label`` and ``split`` (as text); only one batch is held at a time.

    Raises:
        UserDataError: the file is empty, a column is missing, a FASTA file is asked for
            labels, or a sequence is empty (naming the file and the row).
    """
    path = Path(path)
    if not path.is_file():
        raise UserDataError(f"{path}: no such file")
    if is_fasta(path):
        chunks = _fasta_chunks(path, columns, batch_size)
    else:
        check_columns(path, _table_header(path), columns)
        chunks = (table_records(c, columns) for c in _table_chunks(path, batch_size))
    seen = 0
    for batch in chunks:
        batch["row"] = np.arange(seen + 1, seen + 1 + len(batch))
        if "name" not in batch:
            batch["name"] = batch["row"].astype(str)
        seen += len(batch)
        empty = batch["sequence"].isna() | (batch["sequence"].astype(str).str.strip() == "")
        if empty.any():
            row = int(batch["row"][empty].iloc[0])
            raise UserDataError(f"{location(path, row)}: the sequence is empty")
        yield batch
    if seen == 0:
        raise UserDataError(f"{path}: the file holds no sequences")


def _fasta_chunks(path: Path, columns: Columns, batch_size: int) -> Iterator[pd.DataFrame]:
    if columns.label is not None:
        raise UserDataError(
            f"{path}: a FASTA file has no labels; give a table with a {columns.label!r} column"
        )
    names, sequences = [], []
    try:
        for name, sequence in read_fasta(path):
            names.append(name)
            sequences.append(sequence)
            if len(names) == batch_size:
                yield pd.DataFrame({"name": names, "sequence": sequences})
                names, sequences = [], []
    except (ValueError, UnicodeDecodeError, OSError) as error:
        raise UserDataError(f"{path}: not a readable FASTA file: {error}") from None
    if names:
        yield pd.DataFrame({"name": names, "sequence": sequences})


def read_sequences(path: str | os.PathLike, columns: Columns) -> pd.DataFrame:
    """All examples of a FASTA file or table in one frame (see `sequence_batches`)."""
    return pd.concat(list(sequence_batches(path, columns)), ignore_index=True)
