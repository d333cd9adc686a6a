"""CpG islands on human chrX with the classic 8-state HMM, scored against the UCSC track.

The model is Durbin et al.'s (1998, "Biological Sequence Analysis", section 3.3): states
``A+ C+ G+ T+`` (inside an island) and ``A- C- G- T-`` (outside), each emitting its own
base, so the transition matrix carries the dinucleotide statistics (CpG is frequent only
among the ``+`` states). Its 8 x 8 transitions are counted on a training stretch of the
chromosome labelled by the UCSC ``cpgIslandExt`` track; Viterbi decoding of a held-out
stretch then calls islands (runs of ``+`` states of at least 200 bp, the track's own
minimum length), and the calls are compared with the track by overlap:

* precision: the fraction of called islands that overlap an annotated one;
* recall: the fraction of annotated islands that overlap a call.

``python -m benchmarks.cpg_islands`` trains on chrX [0, 35 Mb) and tests on [35, 70 Mb)
of GRCh37 (Debian ``smalt-examples``); the last line printed is a JSON object. The test
suite runs the same functions on a few megabases.
"""

from __future__ import annotations

import gzip
import json
import time
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from zoo import DifferentiableHMM
from zoo.sequence.nucleotides import letter_codes

ALPHABET = "ACGT"
N_CODE = len(ALPHABET)  # what `letter_codes` gives an N
MIN_ISLAND = 200  # bp, the UCSC track's minimum island length
CPG_TRACK = Path("hg19_annotation") / "cpg_islands_hg19_ucsc.txt.gz"


def read_chromosome(path: str | Path) -> str:
    """The sequence of a gzipped single-record FASTA file."""
    with gzip.open(path, "rt") as fasta:
        fasta.readline()  # the header
        return "".join(line.rstrip() for line in fasta)


def encode(sequence: str) -> np.ndarray:
    """Bases as codes 0-3 (``ACGT``, any case) and 4 (N)."""
    return letter_codes(sequence, ALPHABET, allow_n=True).astype(np.int8)


def read_islands(path: str | Path, chrom: str, start: int, end: int) -> np.ndarray:
    """Annotated islands ``(start, end)`` (0-based, half-open) lying wholly in [start, end)
    of `chrom`, from a UCSC ``cpgIslandExt`` table (bin, chrom, chromStart, chromEnd, ...)."""
    rows = []
    with gzip.open(path, "rt") as table:
        for line in table:
            fields = line.split("\t")
            if fields[1] == chrom and int(fields[2]) >= start and int(fields[3]) <= end:
                rows.append((int(fields[2]), int(fields[3])))
    return np.array(sorted(rows), np.int64).reshape(-1, 2)


def island_mask(length: int, islands: np.ndarray, offset: int = 0) -> np.ndarray:
    """True at the bases of ``[offset, offset + length)`` covered by an island."""
    change = np.zeros(length + 1, np.int64)
    for start, end in islands - offset:
        change[max(start, 0)] += 1
        change[min(max(end, 0), length)] -= 1
    return np.cumsum(change)[:length] > 0


def durbin_model(bases: np.ndarray, inside: np.ndarray) -> DifferentiableHMM:
    """The 8-state CpG model with maximum-likelihood transitions counted on labelled DNA
    (state ``base + 4 * outside``; steps touching an N are skipped; one pseudocount per
    transition). Each state emits its own base with probability 1."""
    states = bases.astype(np.int64) + N_CODE * ~inside
    real = bases != N_CODE
    pairs = real[:-1] & real[1:]
    counts = np.bincount(states[:-1][pairs] * 8 + states[1:][pairs], minlength=64)
    transition = (counts.reshape(8, 8) + 1.0) / (counts.reshape(8, 8) + 1.0).sum(1, keepdims=True)
    initial = np.bincount(states[real], minlength=8) + 1.0
    emission = np.tile(np.eye(N_CODE), (2, 1))
    return DifferentiableHMM.from_probabilities(initial / initial.sum(), transition, emission)


@eqx.filter_jit
def _decode_windows(model: DifferentiableHMM, windows: jax.Array) -> jax.Array:
    """Viterbi ``+``-state calls of a batch of windows (N and padding masked)."""
    mask = windows != N_CODE
    paths = jax.vmap(model.viterbi)(jnp.where(mask, windows, 0), mask)
    return (paths >= 0) & (paths < N_CODE)


def call_islands(
    model: DifferentiableHMM,
    bases: np.ndarray,
    *,
    min_length: int = MIN_ISLAND,
    window: int = 100_000,
    batch: int = 16,
    progress: bool = False,
) -> np.ndarray:
    """Called islands ``(start, end)`` in `bases` coordinates: runs of ``+`` states from
    Viterbi decoding, at least `min_length` long. The sequence is cut into windows decoded
    independently in batches (an island across a window edge is split in two)."""
    n_windows = -(-len(bases) // window)
    n_batches = -(-n_windows // batch)  # every batch full-sized: one compilation
    padded = np.full(n_batches * batch * window, N_CODE, np.int8)
    padded[: len(bases)] = bases
    padded = padded.reshape(n_batches * batch, window)
    inside = np.concatenate(
        [
            np.asarray(_decode_windows(model, jnp.asarray(padded[i : i + batch], jnp.int32)))
            for i in tqdm(range(0, len(padded), batch), disable=not progress, desc="Viterbi")
        ]
    ).reshape(-1)[: len(bases)]
    edges = np.flatnonzero(np.diff(np.concatenate([[0], inside.astype(np.int8), [0]])))
    runs = edges.reshape(-1, 2)
    return runs[runs[:, 1] - runs[:, 0] >= min_length]


def overlap_precision_recall(called: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    """(precision, recall) of `called` against `truth` intervals, counting a hit when two
    half-open intervals share at least one base."""

    def hits(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        # a[i] overlaps some b[j] iff the first b ending after a[i]'s start begins before its end
        order = np.argsort(b[:, 1])
        ends, starts = b[order, 1], b[order, 0]
        first = np.searchsorted(ends, a[:, 0], side="right")
        later_min_start = np.minimum.accumulate(starts[::-1])[::-1]
        later_min_start = np.append(later_min_start, np.iinfo(np.int64).max)
        return later_min_start[first] < a[:, 1]

    if len(called) == 0 or len(truth) == 0:
        return 0.0, 0.0
    return float(hits(called, truth).mean()), float(hits(truth, called).mean())


def evaluate(
    sequence: str,
    islands_path: str | Path,
    train: tuple[int, int],
    test: tuple[int, int],
    *,
    min_lengths: tuple[int, ...] = (MIN_ISLAND,),
    progress: bool = False,
) -> dict:
    """Train the Durbin model on ``sequence[train]`` of chrX and score its calls on
    ``sequence[test]``, for each minimum called-island length in `min_lengths`."""
    train_islands = read_islands(islands_path, "chrX", *train)
    test_islands = read_islands(islands_path, "chrX", *test)
    labels = island_mask(train[1] - train[0], train_islands, train[0])
    model = durbin_model(encode(sequence[train[0] : train[1]]), labels)
    bases = encode(sequence[test[0] : test[1]])
    called = call_islands(model, bases, min_length=min(min_lengths), progress=progress) + test[0]
    result = {"train": list(train), "test": list(test), "annotated": len(test_islands)}
    for length in min_lengths:
        kept = called[called[:, 1] - called[:, 0] >= length]
        precision, recall = overlap_precision_recall(kept, test_islands)
        result[f"min_length_{length}"] = {
            "called": len(kept),
            "precision": round(precision, 4),
            "recall": round(recall, 4),
        }
    return result


def main() -> None:
    from pretraining.sources import dataset

    shared = Path(__file__).resolve().parents[2] / "shared" / "data"
    sequence = read_chromosome(dataset("human-chrX-70Mb"))
    start = time.perf_counter()
    result = evaluate(
        sequence,
        shared / CPG_TRACK,
        (0, 35_000_000),
        (35_000_000, len(sequence)),
        min_lengths=(MIN_ISLAND, 500),
        progress=True,
    )
    result = {"name": "cpg_islands_chrX", **result}
    result["seconds"] = round(time.perf_counter() - start, 2)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
