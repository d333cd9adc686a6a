"""The cell tasks of the downstream suite: cell types of pbmc3k and pbmc68k (the fixed
stratified splits of `finetuning.tasks.cell_types`), and a few-label version of each that
keeps `FEW_LABELS` training cells per type (the first ones of the shuffled split; the
validation and test splits are unchanged).

A task's counts are in its file's gene order; `aligned` lines them up with an expression
checkpoint's gene vocabulary (by symbol or ID; missing genes zero-filled), as ``biozoo
embed`` does for a user's file.
"""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np

from finetuning.tasks import CELL_SOURCES, Split, Task, cell_types
from pretraining.expression_data import resolve
from zoo.expression.gene_vocabulary import GeneVocabulary

FEW_LABELS = 10


def gene_names(name: str) -> list[str]:
    """The gene names (``var_names``) of the file behind cell task `name`."""
    import anndata

    path, _ = resolve(CELL_SOURCES[name][0])
    with warnings.catch_warnings():  # anndata's notice about old file layouts
        warnings.simplefilter("ignore", FutureWarning)
        return list(anndata.read_h5ad(path, backed="r").var_names)


def few_labels(task: Task, per_class: int = FEW_LABELS) -> Task:
    """`task` with only the first `per_class` training cells of each type."""
    labels = task.train.labels
    keep = np.sort(
        np.concatenate([np.flatnonzero(labels == c)[:per_class] for c in range(len(task.classes))])
    )
    train = Split(task.train.inputs[keep], labels[keep])
    return dataclasses.replace(task, name=f"{task.name}-{per_class}-labels", train=train)


def aligned(task: Task, names: list[str], genes: GeneVocabulary) -> tuple[Task, float]:
    """`task` with its counts in the order of `genes` (`GeneVocabulary.match` on `names`,
    any fraction accepted) and the fraction of `genes` found."""
    match = genes.match(names, min_fraction=0.0)

    def split(s: Split) -> Split:
        return Split(match.counts(s.inputs), s.labels)

    changed = dataclasses.replace(
        task, train=split(task.train), validation=split(task.validation), test=split(task.test)
    )
    return changed, match.fraction


def cell_tasks() -> dict[str, tuple[str, int | None]]:
    """Every cell task by name: its source task (`finetuning.tasks.CELL_SOURCES`) and its
    labelled cells per type (None: all)."""
    tasks: dict[str, tuple[str, int | None]] = {}
    for source in ("pbmc3k", "pbmc68k"):
        tasks[source] = (source, None)
        tasks[f"{source}-{FEW_LABELS}-labels"] = (source, FEW_LABELS)
    return tasks


def build_cell_task(source: str, per_class: int | None) -> Task:
    """The task of `cell_tasks`: cell types of `source`, with `per_class` labels per type."""
    task = cell_types(source)
    return task if per_class is None else few_labels(task, per_class)
