"""A `finetuning.tasks.Task` from a user's labelled data.

The splits come from, in order of precedence: separate validation and test data; a split
column (``train`` / ``validation`` / ``test``) in the training data; or a draw with a fixed
seed holding out 10 % for validation and 10 % for test, stratified by class for
classification (`finetuning.user_splits.drawn_splits`). The classes are the sorted distinct
labels of all the data; the target is classification, regression, or inferred with
``"auto"`` (`finetuning.user_labels.inferred_target`).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import equinox as eqx
import numpy as np
import pandas as pd

from finetuning.tasks import Split, Task
from finetuning.user_data import UserDataError
from finetuning.user_inputs import InputBatch, ReadOptions, describe, is_cells, read_inputs
from finetuning.user_labels import TARGETS, class_labels, inferred_target, regression_targets
from finetuning.user_splits import SPLITS, checked_split_column, drawn_splits


@dataclasses.dataclass(frozen=True)
class UserTask:
    """A task built from a user's data and how its examples were split.

    Attributes:
        task: the task (its splits in file order).
        splits: one row per example: ``id`` (the example's name) and ``split``.
        drawn: whether the splits were drawn here (rather than given).
    """

    task: Task
    splits: pd.DataFrame
    drawn: bool


def _label_where(data: Any, options: ReadOptions, cells: bool) -> str:
    column = options.label_key if cells else options.columns.label
    return f"{describe(data)}: {'obs column' if cells else 'column'} {column!r}"


def _labelled(data: Any, backbone: eqx.Module, options: ReadOptions) -> InputBatch:
    examples = read_inputs(data, backbone, options)
    if examples.labels is None:
        key = "--label-key" if is_cells(backbone) else "--label-column"
        raise UserDataError(f"{describe(data)}: no labels read; name their column with {key}")
    return examples


def _take(examples: InputBatch, rows: np.ndarray) -> InputBatch:
    inputs = examples.inputs
    picked = [inputs[i] for i in rows] if isinstance(inputs, list) else inputs[rows]
    return InputBatch(
        examples.names[rows], examples.rows[rows], picked, examples.labels[rows], None
    )


def user_task(
    backbone: eqx.Module,
    train: Any,
    validation: Any = None,
    test: Any = None,
    *,
    options: ReadOptions | None = None,
    target: str = "classification",
    seed: int = 0,
    name: str | None = None,
) -> UserTask:
    """The task of a user's labelled data for `backbone` (see the module docstring).

    Args:
        backbone: the model to fine-tune (decides whether sequences or cells are read, and
            checks them).
        train, validation, test: paths, tables, AnnData, or (for the Python API) the
            forms `finetuning.user_inputs.input_batches` takes. Give `validation` and
            `test` together or neither.
        options: where the labels and inputs are (default: columns ``sequence`` and
            ``label``, counts in ``X``).
        target: ``"classification"``, ``"regression"`` or ``"auto"``.
        seed: the seed of drawn splits.
        name: the task's name (default: the training file's stem).

    Raises:
        UserDataError: bad data, or one of `validation` and `test` without the other.
    """
    options = options or ReadOptions()
    if target not in TARGETS:
        raise UserDataError(f"target must be one of {', '.join(TARGETS)}, got {target!r}")
    if (validation is None) != (test is None):
        raise UserDataError("give both validation and test data, or neither")
    cells = is_cells(backbone)
    given = dict(zip(SPLITS, (train, validation, test), strict=True))
    drawn = False
    if validation is not None:
        parts = {s: _labelled(data, backbone, options) for s, data in given.items()}
        where = {s: _label_where(data, options, cells) for s, data in given.items()}
    else:
        examples = _labelled(train, backbone, options)
        where = dict.fromkeys(SPLITS, _label_where(train, options, cells))
        if examples.splits is not None:
            split_where = f"{describe(train)}: column {options.columns.split!r}"
            names = checked_split_column(examples.splits, examples.rows, split_where)
        else:
            if target == "auto":
                target = inferred_target(examples.labels)
            stratify = None
            if target == "classification":
                stratify, _ = class_labels(examples.labels, examples.rows, where["train"])
            names = drawn_splits(stratify, len(examples.names), seed=seed, where=describe(train))
            drawn = True
        parts = {s: _take(examples, np.flatnonzero(names == s)) for s in SPLITS}

    all_labels = np.concatenate([p.labels for p in parts.values()])
    if target == "auto":
        target = inferred_target(all_labels)
    classes: tuple[str, ...] = ()
    if target == "classification":
        rows = np.concatenate([p.rows for p in parts.values()])
        _, classes = class_labels(all_labels, rows, where["train"])
        labels = {s: class_labels(p.labels, p.rows, where[s], classes)[0] for s, p in parts.items()}
    else:
        labels = {s: regression_targets(p.labels, p.rows, where[s]) for s, p in parts.items()}
    splits = {s: Split(p.inputs, labels[s]) for s, p in parts.items()}
    task = Task(
        name=name or _stem(train),
        modality="cells" if cells else "dna",
        classes=classes,
        train=splits["train"],
        validation=splits["validation"],
        test=splits["test"],
        provenance=", ".join(describe(d) for d in (train, validation, test) if d is not None),
        target=target,
    )
    table = pd.DataFrame(
        {
            "id": np.concatenate([p.names for p in parts.values()]),
            "split": np.repeat(list(parts), [len(p.names) for p in parts.values()]),
        }
    )
    return UserTask(task, table, drawn)


def _stem(data: Any) -> str:
    source = describe(data)
    return (
        Path(source).name.split(".")[0] if source != f"the {type(data).__name__}" else "user-data"
    )
