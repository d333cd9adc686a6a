"""A user's labels: class names turned into class indices, or numeric regression targets.

Errors name the file, the column and the row (rows counted from 1, as in
`finetuning.user_data`).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from finetuning.user_data import UserDataError

TARGETS = ("classification", "regression", "auto")


def _missing(values: np.ndarray) -> np.ndarray:
    text = pd.Series(values, dtype=object).astype(str).str.strip()
    return pd.isna(pd.Series(values, dtype=object)).to_numpy() | (text == "").to_numpy()


def _check_present(values: np.ndarray, rows: np.ndarray, where: str) -> None:
    missing = np.flatnonzero(_missing(values))
    if missing.size:
        raise UserDataError(f"{where}, row {rows[missing[0]]}: the label is missing")


def class_labels(
    values: np.ndarray, rows: np.ndarray, where: str, classes: tuple[str, ...] | None = None
) -> tuple[np.ndarray, tuple[str, ...]]:
    """Class indices of `values` and the class names.

    Args:
        values: one label per example (any type; compared as text).
        rows: the row number of each example, for errors.
        where: the file and column, for errors (``"data.tsv: column 'label'"``).
        classes: the known classes (a fine-tuned model's); None: the sorted distinct
            labels, of which there must be at least two.

    Raises:
        UserDataError: a label is missing, there is only one class, or a label is not one
            of `classes`.
    """
    _check_present(values, rows, where)
    text = pd.Series(values, dtype=object).astype(str).str.strip().to_numpy()
    if classes is None:
        classes = tuple(sorted(set(text)))
        if len(classes) < 2:
            raise UserDataError(
                f"{where}: every label is {classes[0]!r}; classification needs two classes or more"
            )
    index = {name: i for i, name in enumerate(classes)}
    unknown = [i for i, label in enumerate(text) if label not in index]
    if unknown:
        raise UserDataError(
            f"{where}, row {rows[unknown[0]]}: label {text[unknown[0]]!r} is not one of the "
            f"model's classes ({', '.join(classes)})"
        )
    return np.array([index[label] for label in text], np.int64), classes


def regression_targets(values: np.ndarray, rows: np.ndarray, where: str) -> np.ndarray:
    """`values` as float64 regression targets.

    Raises:
        UserDataError: a target is missing, not a number, or not finite.
    """
    _check_present(values, rows, where)
    numbers = pd.to_numeric(pd.Series(values, dtype=object), errors="coerce").to_numpy(float)
    bad = np.flatnonzero(~np.isfinite(numbers))
    if bad.size:
        raise UserDataError(
            f"{where}, row {rows[bad[0]]}: target {values[bad[0]]!r} is not a finite number"
        )
    return numbers


def inferred_target(values: np.ndarray) -> str:
    """``"regression"`` when every label is a number and there are more than 10 distinct
    ones or any is not a whole number; else ``"classification"`` (what ``--target auto``
    does)."""
    numbers = pd.to_numeric(pd.Series(values, dtype=object), errors="coerce").to_numpy(float)
    if not np.all(np.isfinite(numbers)):
        return "classification"
    many = len(np.unique(numbers)) > 10
    return "regression" if many or np.any(numbers != np.round(numbers)) else "classification"
