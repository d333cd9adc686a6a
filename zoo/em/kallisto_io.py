"""Read kallisto's output, so that kallisto-prepared data can be quantified by the zoo.

* ``kallisto pseudo -o DIR`` writes ``DIR/transcripts.txt`` (one transcript name a line, in
  index order), ``DIR/pseudoalignments.ec`` (``class_id<TAB>t1,t2,...`` with 0-based
  transcript ids) and ``DIR/pseudoalignments.tsv`` (``class_id<TAB>read_count``).
* ``kallisto quant`` writes ``abundance.tsv`` with the columns ``target_id, length,
  eff_length, est_counts, tpm``; its ``eff_length`` is the effective length the EM needs.

Formats as written by kallisto 0.48.0.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

import numpy as np

from zoo.em.equivalence_classes import EquivalenceClasses


class KallistoAbundance(NamedTuple):
    """The columns of a kallisto ``abundance.tsv``, in file order."""

    names: tuple[str, ...]
    lengths: np.ndarray
    effective_lengths: np.ndarray
    est_counts: np.ndarray
    tpm: np.ndarray


class KallistoPseudoalignments(NamedTuple):
    """A ``kallisto pseudo`` output folder: transcript names and the classes with reads."""

    names: tuple[str, ...]
    classes: EquivalenceClasses


def read_abundance(path: str | os.PathLike) -> KallistoAbundance:
    """Parse a kallisto ``abundance.tsv``.

    Raises:
        ValueError: if the header is not kallisto's.
    """
    path = Path(path)
    with open(path) as f:
        header = f.readline().rstrip("\n").split("\t")
        expected = ["target_id", "length", "eff_length", "est_counts", "tpm"]
        if header != expected:
            raise ValueError(f"{path} has columns {header}, expected kallisto's {expected}")
        rows = [line.rstrip("\n").split("\t") for line in f if line.strip()]
    values = np.array([row[1:] for row in rows], dtype=np.float64).reshape(-1, 4)
    return KallistoAbundance(tuple(row[0] for row in rows), *values.T)


def read_pseudoalignments(folder: str | os.PathLike) -> KallistoPseudoalignments:
    """The equivalence classes with at least one read in a ``kallisto pseudo`` output folder
    (classes without reads do not change the EM and are left out).

    Raises:
        ValueError: if a file is missing, malformed, or a count names an unknown class.
    """
    folder = Path(folder)
    for name in ("transcripts.txt", "pseudoalignments.ec", "pseudoalignments.tsv"):
        if not (folder / name).is_file():
            raise ValueError(f"{folder} has no {name}; is it a `kallisto pseudo` output folder?")
    names = tuple((folder / "transcripts.txt").read_text().split())
    members = {}
    for class_id, transcripts in _two_columns(folder / "pseudoalignments.ec"):
        members[int(class_id)] = [int(t) for t in transcripts.split(",")]
    counts = {}
    for class_id, count in _two_columns(folder / "pseudoalignments.tsv"):
        if int(class_id) not in members:
            raise ValueError(f"pseudoalignments.tsv counts reads in unknown class {class_id}")
        counts[int(class_id)] = float(count)
    with_reads = [c for c in sorted(counts) if counts[c] > 0]
    classes = EquivalenceClasses.from_lists(
        [members[c] for c in with_reads], [counts[c] for c in with_reads], len(names)
    )
    return KallistoPseudoalignments(names, classes)


def _two_columns(path: Path) -> list[tuple[str, str]]:
    rows = []
    with open(path) as f:
        for number, line in enumerate(f, start=1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) != 2:
                raise ValueError(f"{path}:{number}: expected two tab-separated fields")
            rows.append((fields[0], fields[1]))
    return rows
