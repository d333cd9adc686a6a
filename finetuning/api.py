"""Embed, fine-tune, predict and evaluate on a user's own data, from Python.

Each function takes a model (a checkpoint reference such as ``"dna-encoder-tiny"``, a
folder, ``org/name@rev``, or a loaded model) and data: a path (FASTA, ``.tsv``/``.csv``/
``.parquet`` table, ``.h5ad``), a pandas table, a list of DNA strings, a cells x genes
count array or an AnnData. Where the data are is told by keywords of `read_options`. The
command line (``biozoo embed | finetune | predict | evaluate``) calls these.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from jax.sharding import Mesh

from finetuning.inference import backbone_of, embed_batches, load_model, output_batches
from finetuning.user_data import Columns, UserDataError, data_suffix
from finetuning.user_inputs import ReadOptions, describe, input_batches, is_cells, read_inputs
from finetuning.user_labels import class_labels, regression_targets
from zoo.expression.gene_vocabulary import MIN_FRACTION


def read_options(
    *,
    sequence_column: str = "sequence",
    label_column: str = "label",
    name_column: str | None = None,
    split_column: str = "split",
    layer: str | None = None,
    label_key: str | None = None,
    truncate: bool = False,
    min_gene_fraction: float = MIN_FRACTION,
) -> ReadOptions:
    """Where the inputs, labels and splits are.

    Args:
        sequence_column, label_column, name_column, split_column: table columns (the name
            column is optional; without it rows are named by their number).
        layer: the AnnData layer of raw counts (None: ``X``).
        label_key: the ``obs`` column of cell labels.
        truncate: cut sequences longer than the model takes instead of refusing them.
        min_gene_fraction: the least fraction of an expression model's genes the cells must
            hold (they are matched by gene ID or symbol; missing genes are zero-filled).
    """
    columns = Columns(sequence_column, label_column, name_column, split_column)
    return ReadOptions(columns, layer, label_key, truncate, min_gene_fraction=min_gene_fraction)


def embed(
    model: Any,
    data: Any,
    *,
    out: str | os.PathLike | None = None,
    per_token: bool = False,
    key_added: str = "X_biozoo",
    batch_size: int = 64,
    mesh: Mesh | None = None,
    progress: bool = True,
    **options: Any,
) -> np.ndarray | list[np.ndarray]:
    """Embed every example of `data` with `model` (a fine-tuned model embeds with its
    backbone), batch by batch.

    Args:
        model: a checkpoint reference or a loaded model.
        data: sequences or cells (see the module docstring).
        out: where to write them (`finetuning.result_files`): ``.npy``, ``.npz`` or
            ``.parquet`` for sequences, an ``.h5ad`` copy with ``obsm[key_added]`` for cells;
            with the model's provenance. None: not written.
        per_token: per-token hidden states (sequence encoders only) instead of pooled ones.
        key_added: the ``obsm`` key of cell embeddings.
        batch_size: examples per device call.
        mesh: devices to split the batch over (default: every device data parallel).
        progress: show a progress bar.
        options: keywords of `read_options`.

    Returns:
        ``(n, dim)`` pooled embeddings, or a list of ``(n_tokens_i, dim)`` arrays per token.
    """
    loaded, provenance, genes = load_model(model)
    backbone = backbone_of(loaded)
    read = dataclasses.replace(read_options(**options).without_labels(), genes=genes)
    source = _source(data, backbone)
    names, parts = [], []
    batches = input_batches(source, backbone, read, batch_size)
    for batch, outputs in embed_batches(
        backbone, batches, per_token=per_token, batch_size=batch_size, mesh=mesh, progress=progress
    ):
        names.extend(batch.names.tolist())
        parts.extend(outputs) if per_token else parts.append(outputs)
    embeddings = parts if per_token else np.concatenate(parts)
    if out is not None:
        from finetuning.result_files import write_cells_copy, write_sequence_embeddings

        if is_cells(backbone):
            write_cells_copy(out, source, provenance, obsm={key_added: embeddings})
        else:
            write_sequence_embeddings(out, names, embeddings, provenance)
    return embeddings


def finetune(
    train: Any,
    *,
    base: Any,
    validation: Any = None,
    test: Any = None,
    out: str | os.PathLike = "outputs/finetune",
    target: str = "classification",
    config: Any = None,
    mesh: Mesh | None = None,
    checkpoints: Any = None,
    resume: bool = False,
    progress: bool = True,
    **options: Any,
):
    """Fine-tune `base` on a user's labelled data and save the result with its card.

    Args:
        train: the training data, or all of it (split by its split column, else drawn:
            `finetuning.user_task`).
        base: the checkpoint to start from (a reference or a loaded representation model).
        validation, test: separate validation and test data (both or neither).
        out: the folder of the fine-tuned checkpoint; ``splits.tsv`` (example id and split)
            is written there too.
        target: ``"classification"``, ``"regression"`` or ``"auto"``.
        config: a `finetuning.train.FineTuneConfig` (default: its defaults).
        mesh: the device mesh (default: the first device).
        checkpoints, resume: a `pretraining.state.TrainingCheckpoints` to save the training
            state to, and whether to continue from it (`finetuning.train.fine_tune`).
        progress: show a progress bar.
        options: keywords of `read_options`.

    Returns:
        ``(result, folder)``: the `finetuning.train.FineTuneResult` and the saved folder.
    """
    from finetuning.run import run_fine_tune
    from finetuning.train import FineTuneConfig
    from finetuning.user_splits import write_splits
    from finetuning.user_task import user_task

    config = config or FineTuneConfig()
    loaded, provenance, genes = load_model(base, inference=False)  # dropout on while training
    backbone = backbone_of(loaded)
    base_model = provenance.get("repo_id") or provenance["model"]
    sources = [None if d is None else _source(d, backbone) for d in (train, validation, test)]
    read = dataclasses.replace(read_options(**options), genes=genes)
    made = user_task(backbone, *sources, options=read, target=target, seed=config.seed)
    result, folder = run_fine_tune(
        made.task,
        backbone,
        config,
        Path(out),
        base_model=base_model,
        mesh=mesh,
        checkpoints=checkpoints,
        resume=resume,
        progress=progress,
        genes=genes,
    )
    write_splits(folder, made.splits["id"].to_numpy(), made.splits["split"].to_numpy())
    return result, folder


def predict(
    model: Any,
    data: Any,
    *,
    out: str | os.PathLike | None = None,
    batch_size: int = 64,
    mesh: Mesh | None = None,
    progress: bool = True,
    **options: Any,
) -> pd.DataFrame:
    """Predict every example of `data` with a fine-tuned model.

    Args:
        model: a fine-tuned checkpoint reference or `zoo.TaskModel`.
        data: sequences or cells (see the module docstring).
        out: where to write the predictions: ``.tsv``, ``.csv`` or ``.parquet``; for cells
            also an ``.h5ad`` copy with ``obs`` columns ``biozoo_prediction`` and
            ``biozoo_probability_<class>``. None: not written.
        batch_size, mesh, progress: as in `embed`.
        options: keywords of `read_options`.

    Returns:
        A table with ``name``, ``prediction`` and, for classification, one
        ``probability_<class>`` column per class (`finetuning.result_files.prediction_table`).
    """
    from finetuning.result_files import prediction_table, write_cells_copy, write_table

    loaded, provenance, genes = load_model(model)
    backbone = backbone_of(loaded)
    source = _source(data, backbone)
    read = dataclasses.replace(read_options(**options).without_labels(), genes=genes)
    batches = input_batches(source, backbone, read, batch_size)
    names, parts = [], []
    for batch, outputs in output_batches(
        loaded, batches, batch_size=batch_size, mesh=mesh, progress=progress
    ):
        names.extend(batch.names.tolist())
        parts.append(outputs)
    regression = loaded.config.task == "regression"
    table = prediction_table(
        np.asarray(names), np.concatenate(parts), loaded.config.labels, regression
    )
    if out is not None:
        if data_suffix(out) == ".h5ad":
            if not is_cells(backbone):
                raise UserDataError(f"{out}: an .h5ad copy is for cells; write a table")
            columns = {f"biozoo_{c}": table[c].to_numpy() for c in table.columns if c != "name"}
            write_cells_copy(out, source, provenance, obs=columns)
        else:
            write_table(out, table, provenance)
    return table


def evaluate(
    model: Any,
    data: Any,
    *,
    out: str | os.PathLike | None = None,
    batch_size: int = 64,
    mesh: Mesh | None = None,
    progress: bool = True,
    **options: Any,
) -> dict[str, float]:
    """Measure a fine-tuned model on a user's labelled data.

    Args:
        model: a fine-tuned checkpoint reference or `zoo.TaskModel`.
        data: labelled sequences or cells (see the module docstring); every label must be
            one of the model's classes, or a number for regression.
        out: the metrics file (``.tsv`` or ``.json``); beside it ``confusion_matrix.png``
            (classification) or ``scatter.png`` (regression). None: nothing written.
        batch_size, mesh, progress: as in `embed`.
        options: keywords of `read_options`.

    Returns:
        Accuracy, MCC, macro-F1 and AUROC (classification), or MSE, Pearson and Spearman
        (regression), and ``n`` (the examples measured).
    """
    from finetuning.metrics import classification_report, confusion_matrix, plot_confusion_matrix
    from finetuning.regression_metrics import plot_scatter, regression_report

    loaded, _, genes = load_model(model)
    backbone = backbone_of(loaded)
    source = _source(data, backbone)
    read = dataclasses.replace(read_options(**options), genes=genes)
    examples = read_inputs(source, backbone, read)
    if examples.labels is None:
        key = "--label-key" if is_cells(backbone) else "--label-column"
        raise UserDataError(f"{describe(data)}: no labels read; name their column with {key}")
    where = f"{describe(data)}: labels"
    batches = [dataclasses.replace(examples, labels=None, splits=None)]
    outputs = np.concatenate(
        [
            o
            for _, o in output_batches(
                loaded, batches, batch_size=batch_size, mesh=mesh, progress=progress
            )
        ]
    )
    config = loaded.config
    if config.task == "regression":
        labels = regression_targets(examples.labels, examples.rows, where)
        report = regression_report(labels, outputs[:, 0])
    else:
        classes = config.labels or tuple(str(i) for i in range(config.n_outputs))
        labels, _ = class_labels(examples.labels, examples.rows, where, classes)
        report = classification_report(labels, outputs)
    report = {**report, "n": len(labels)}
    if out is not None:
        _write_metrics(Path(out), report)
        title = f"{describe(data)}"
        if config.task == "regression":
            plot_scatter(labels, outputs[:, 0], Path(out).parent / "scatter.png", title)
        else:
            matrix = confusion_matrix(labels, outputs.argmax(1), len(classes))
            plot_confusion_matrix(
                matrix, list(classes), Path(out).parent / "confusion_matrix.png", title
            )
    return report


def format_metrics(report: dict[str, float]) -> str:
    """A two-column text table of `report`."""
    width = max(len(k) for k in report)
    return "\n".join(
        f"{k:<{width}}  {v:.4f}" if isinstance(v, float) else f"{k:<{width}}  {v}"
        for k, v in report.items()
    )


def _write_metrics(out: Path, report: dict[str, float]) -> None:
    from finetuning.outputs import atomic_output

    with atomic_output(out) as partial:
        if data_suffix(out) == ".json":
            partial.write_text(json.dumps(report, indent=1) + "\n")
        else:
            pd.DataFrame({"metric": list(report), "value": list(report.values())}).to_csv(
                partial, sep="\t", index=False
            )


def _source(data: Any, backbone) -> Any:
    """`data`, with an ``.h5ad`` path opened backed (so the cells' copy can be written file
    to file)."""
    if is_cells(backbone) and isinstance(data, (str, os.PathLike)) and data_suffix(data) == ".h5ad":
        from finetuning.user_cells import read_cells

        return read_cells(data)
    return data
