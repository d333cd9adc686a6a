"""Train / validation / test splits of a user's examples: from a split column, or drawn
with a fixed seed (stratified by class for classification) and written to ``splits.tsv`` so
the run can be repeated."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import train_test_split

from finetuning.outputs import atomic_output
from finetuning.user_data import UserDataError

SPLITS = ("train", "validation", "test")
SPLITS_FILE = "splits.tsv"


def checked_split_column(values: np.ndarray, rows: np.ndarray, where: str) -> np.ndarray:
    """The split names of a split column, lower-cased and stripped.

    Raises:
        UserDataError: naming the row of a value other than train, validation or test, or
            the split that no row names.
    """
    names = pd.Series(values, dtype=object).astype(str).str.strip().str.lower().to_numpy()
    bad = np.flatnonzero(~np.isin(names, SPLITS))
    if bad.size:
        raise UserDataError(
            f"{where}, row {rows[bad[0]]}: split {values[bad[0]]!r} is not one of "
            f"{', '.join(SPLITS)}"
        )
    for split in SPLITS:
        if not np.any(names == split):
            raise UserDataError(f"{where}: no row is in the {split} split")
    return names


def drawn_splits(
    labels: np.ndarray | None,
    n_examples: int,
    *,
    seed: int = 0,
    fractions: tuple[float, float] = (0.1, 0.1),
    where: str = "",
) -> np.ndarray:
    """A split name per example: `fractions` of them (validation, test) held out at random
    with `seed`, stratified by `labels` when given (scikit-learn's `train_test_split`).

    Raises:
        UserDataError: there are too few examples (or too few of a class) to split.
    """
    index = np.arange(n_examples)
    validation, test = fractions
    try:
        rest, test_rows = train_test_split(
            index, test_size=test, random_state=seed, stratify=labels
        )
        rest_labels = None if labels is None else labels[rest]
        train_rows, validation_rows = train_test_split(
            rest, test_size=validation / (1 - test), random_state=seed, stratify=rest_labels
        )
    except ValueError as error:
        raise UserDataError(
            f"{where}: cannot split {n_examples} examples into train, validation and test "
            f"({error}); give a split column or --validation and --test files"
        ) from None
    splits = np.empty(n_examples, dtype=object)
    splits[train_rows], splits[validation_rows], splits[test_rows] = SPLITS
    return splits


def write_splits(folder: str | os.PathLike, ids: np.ndarray, splits: np.ndarray) -> Path:
    """Write ``splits.tsv`` (columns ``id`` and ``split``) into `folder`; return its path.
    Written to a temporary file first, then renamed."""
    path = Path(folder) / SPLITS_FILE
    with atomic_output(path) as partial:
        pd.DataFrame({"id": ids, "split": splits}).to_csv(partial, sep="\t", index=False)
    return path
