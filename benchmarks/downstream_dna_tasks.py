"""The DNA tasks of the downstream suite, each a `finetuning.tasks.Task` with a fixed split.

- ``planted-TGACTCA``: the task of issue 13: random 200 bp sequences, half carrying the
  7-mer ``TGACTCA`` (the AP-1 site) starting somewhere in positions 80-105 (so it lies in
  80-112); binary.
- ``jaspar-{random,genome}-{easy,hard}``: which of four JASPAR motifs (CTCF MA0139.2, GATA1
  MA0035.5, FOXA1 MA0148.5, SPI1 MA0080.7; JASPAR 2024, bundled by the ``pyjaspar`` wheel),
  if any, is planted in a 200 bp sequence; five balanced classes. Each instance is drawn
  base by base from the motif's position frequency matrix. Easy: the matrix as is, on the
  forward strand, starting within 16 bp of the centre. Hard: the matrix mixed half and half
  with the uniform distribution, on either strand, anywhere. The background is uniform
  random bases, or windows of GRCh37 chrX (registry dataset ``human-chrX-70Mb``) without N,
  drawn for train, validation and test from disjoint stretches (`REGIONS`).
- ``cpg-islands``: 200 bp windows at the centres of the UCSC CpG islands of chrX's first
  70 Mb against GC-matched background windows overlapping no island (`matched_background`).
- ``enhancers``: 200 bp windows at the centres of the FANTOM5 permissive enhancers
  (Andersson et al., 2014) on the same stretch, against GC-matched background.

The chrX tasks are split by position (`REGIONS`), so no training window overlaps a test
window. The UCSC and FANTOM5 tracks are not on a registry: those two tasks need the
``hg19_annotation`` folder (`/work/shared/data` here).
"""

from __future__ import annotations

import functools
import gzip
from collections.abc import Callable
from pathlib import Path

import numpy as np

from benchmarks.cpg_islands import read_chromosome
from finetuning.tasks import Split, Task

LENGTH = 200
BASES = np.array(list("ACGT"))
COMPLEMENT = str.maketrans("ACGT", "TGCA")
JASPAR_RELEASE = "JASPAR2024"
JASPAR_MOTIFS = {"CTCF": "MA0139.2", "GATA1": "MA0035.5", "FOXA1": "MA0148.5", "SPI1": "MA0080.7"}
# chrX stretches [start, end) in bp for the train, validation and test windows
REGIONS = {
    "train": (0, 42_000_000),
    "validation": (42_000_000, 49_000_000),
    "test": (49_000_000, 70_000_000),
}
GC_BIN = 0.02  # width of the GC-content bins of the matched background


@functools.cache
def chromosome() -> str:
    """GRCh37 chrX's first 70 Mb (registry dataset ``human-chrX-70Mb``), read once."""
    from pretraining.sources import dataset

    return read_chromosome(dataset("human-chrX-70Mb", quiet=True))


def random_bases(rng: np.random.Generator, n: int, length: int = LENGTH) -> list[str]:
    """`n` uniform random DNA strings."""
    return ["".join(row) for row in BASES[rng.integers(0, 4, (n, length))]]


def genome_windows(
    chromosome: str, region: tuple[int, int], rng: np.random.Generator, n: int
) -> list[str]:
    """`n` upper-cased windows of `LENGTH` bp without N, starting uniformly in `region`."""
    windows: list[str] = []
    while len(windows) < n:
        start = int(rng.integers(region[0], region[1] - LENGTH))
        window = chromosome[start : start + LENGTH].upper()
        if "N" not in window:
            windows.append(window)
    return windows


def plant(sequence: str, motif: str, start: int) -> str:
    """`sequence` with `motif` written over it from `start`."""
    return sequence[:start] + motif + sequence[start + len(motif) :]


def _split(inputs: list[str], labels: list[int], rng: np.random.Generator) -> Split:
    order = rng.permutation(len(labels))
    return Split([inputs[i] for i in order], np.asarray(labels)[order])


def planted_kmer(
    sizes: dict[str, int],
    *,
    kmer: str = "TGACTCA",
    window: tuple[int, int] = (80, 112),
    seed: int = 0,
) -> Task:
    """Random sequences, half with `kmer` planted wholly inside `window` (issue 13's task);
    `sizes` gives the examples of each split."""
    rng = np.random.default_rng(seed)
    splits = {}
    for part, n in sizes.items():
        sequences = random_bases(rng, n)
        labels = [i % 2 for i in range(n)]
        starts = rng.integers(window[0], window[1] - len(kmer) + 1, n)
        planted = [
            plant(s, kmer, int(p)) if y else s
            for s, y, p in zip(sequences, labels, starts, strict=True)
        ]
        splits[part] = _split(planted, labels, rng)
    return Task(
        name=f"planted-{kmer}",
        modality="dna",
        classes=("absent", "present"),
        provenance=f"synthetic: uniform random bases, {kmer} planted in {window[0]}-{window[1]}",
        **splits,
    )


def jaspar_matrices() -> dict[str, np.ndarray]:
    """Position frequency matrices ``(length, 4)`` (ACGT columns, rows summing to 1) of
    `JASPAR_MOTIFS` from the pyjaspar bundle."""
    from pyjaspar import jaspardb

    database = jaspardb(release=JASPAR_RELEASE)
    matrices = {}
    for name, matrix_id in JASPAR_MOTIFS.items():
        counts = database.fetch_motif_by_id(matrix_id).counts
        columns = np.array([counts[b] for b in "ACGT"], np.float64).T
        matrices[name] = columns / columns.sum(1, keepdims=True)
    return matrices


def sample_instance(matrix: np.ndarray, rng: np.random.Generator) -> str:
    """One motif instance drawn base by base from a frequency matrix."""
    cumulative = matrix.cumsum(1)
    picks = (rng.random((len(matrix), 1)) > cumulative).sum(1)
    return "".join(BASES[np.minimum(picks, 3)])


def planted_jaspar(
    background: str,
    level: str,
    sizes: dict[str, int],
    *,
    chromosome: str | None = None,
    seed: int = 0,
) -> Task:
    """Which JASPAR motif, if any, is planted (see the module docstring).

    Args:
        background: ``"random"`` or ``"genome"`` (windows of `chromosome`).
        level: ``"easy"`` or ``"hard"``.
        sizes: examples of each split (``train``, ``validation``, ``test``).
        chromosome: the chrX sequence, for the genomic background.
        seed: drives every draw.
    """
    matrices = jaspar_matrices()
    names = list(matrices)
    rng = np.random.default_rng(seed)
    splits = {}
    for part, n in sizes.items():
        if background == "genome":
            sequences = genome_windows(chromosome, REGIONS[part], rng, n)
        else:
            sequences = random_bases(rng, n)
        labels = [i % (len(names) + 1) for i in range(n)]
        planted = []
        for sequence, label in zip(sequences, labels, strict=True):
            if label:
                matrix = matrices[names[label - 1]]
                if level == "hard":
                    matrix = 0.5 * matrix + 0.125
                motif = sample_instance(matrix, rng)
                if level == "hard" and rng.random() < 0.5:
                    motif = motif.translate(COMPLEMENT)[::-1]
                if level == "easy":
                    centre = (LENGTH - len(motif)) // 2
                    start = int(rng.integers(centre - 16, centre + 17))
                else:
                    start = int(rng.integers(0, LENGTH - len(motif) + 1))
                sequence = plant(sequence, motif, start)
            planted.append(sequence)
        splits[part] = _split(planted, labels, rng)
    ids = ", ".join(f"{k} {v}" for k, v in JASPAR_MOTIFS.items())
    return Task(
        name=f"jaspar-{background}-{level}",
        modality="dna",
        classes=("none", *names),
        provenance=f"synthetic: {JASPAR_RELEASE} ({ids}) planted on {background} background",
        **splits,
    )


def read_intervals(path: Path, chrom: str, chrom_column: int, end: int) -> np.ndarray:
    """``(start, end)`` rows of a gzipped tab-separated track whose chromosome is in column
    `chrom_column` and coordinates in the two columns after it, on `chrom` before `end`."""
    rows = []
    with gzip.open(path, "rt") as table:
        for line in table:
            fields = line.split("\t")
            if fields[chrom_column] == chrom and int(fields[chrom_column + 2]) <= end:
                rows.append((int(fields[chrom_column + 1]), int(fields[chrom_column + 2])))
    return np.array(sorted(rows), np.int64).reshape(-1, 2)


def gc_content(window: str) -> float:
    """Fraction of G and C letters."""
    return (window.count("G") + window.count("C")) / len(window)


def matched_background(
    chromosome: str,
    region: tuple[int, int],
    positives: list[str],
    avoid: np.ndarray,
    rng: np.random.Generator,
) -> tuple[list[str], list[str]]:
    """Background windows of `region`, one per positive in the same `GC_BIN`-wide GC bin,
    overlapping none of the `avoid` intervals; positives with no match are dropped.

    Returns:
        ``(kept positives, their matched background windows)``.
    """
    candidates = []
    for window_start in rng.integers(region[0], region[1] - LENGTH, 60 * len(positives)):
        start = int(window_start)
        hit = np.any((avoid[:, 0] < start + LENGTH) & (avoid[:, 1] > start))
        window = chromosome[start : start + LENGTH].upper()
        if not hit and "N" not in window:
            candidates.append(window)
    pools: dict[int, list[str]] = {}
    for window in candidates:
        pools.setdefault(int(gc_content(window) / GC_BIN), []).append(window)
    kept, matched = [], []
    for positive in positives:
        pool = pools.get(int(gc_content(positive) / GC_BIN), [])
        if pool:
            kept.append(positive)
            matched.append(pool.pop())
    return kept, matched


def annotated_windows(
    name: str, intervals: np.ndarray, chromosome: str, description: str, seed: int = 0
) -> Task:
    """Centred `LENGTH` windows of `intervals` (class 1) against GC-matched background
    (class 0), split by chrX position (`REGIONS`)."""
    rng = np.random.default_rng(seed)
    centres = intervals.mean(1).astype(np.int64)
    splits = {}
    for part, (low, high) in REGIONS.items():
        inside = centres[(centres - LENGTH // 2 >= low) & (centres + LENGTH // 2 <= high)]
        positives = [chromosome[c - LENGTH // 2 : c + LENGTH // 2].upper() for c in inside]
        positives = [p for p in positives if "N" not in p]
        kept, background = matched_background(chromosome, (low, high), positives, intervals, rng)
        splits[part] = _split(kept + background, [1] * len(kept) + [0] * len(background), rng)
    return Task(
        name=name,
        modality="dna",
        classes=("background", name),
        provenance=f"GRCh37 chrX (Debian smalt-examples), {description}, GC-matched background",
        **splits,
    )


def dna_tasks(
    sizes: dict[str, int], annotation: Path | None, seed: int = 0
) -> dict[str, Callable[[], Task]]:
    """Builders of every DNA task by name; the CpG and enhancer tasks only when the
    `annotation` folder (``hg19_annotation``) is given."""
    from finetuning.tasks import tf_binding

    builders: dict[str, Callable[[], Task]] = {
        "planted-TGACTCA": lambda: planted_kmer(sizes, seed=seed),
    }
    for level in ("easy", "hard"):
        builders[f"jaspar-random-{level}"] = lambda level=level: planted_jaspar(
            "random", level, sizes, seed=seed
        )
        builders[f"jaspar-genome-{level}"] = lambda level=level: planted_jaspar(
            "genome", level, sizes, chromosome=chromosome(), seed=seed
        )
    builders["tf-binding"] = tf_binding
    if annotation is not None:
        end = REGIONS["test"][1]
        cpg, fantom = "cpg_islands_hg19_ucsc.txt.gz", "andersson_permissive_enhancers.bed.gz"
        builders["cpg-islands"] = lambda: annotated_windows(
            "cpg-islands",
            read_intervals(annotation / cpg, "chrX", 1, end),
            chromosome(),
            "UCSC cpgIslandExt track",
            seed,
        )
        builders["enhancers"] = lambda: annotated_windows(
            "enhancers",
            read_intervals(annotation / fantom, "chrX", 0, end),
            chromosome(),
            "FANTOM5 permissive enhancers",
            seed,
        )
    return builders
