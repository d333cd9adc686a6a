"""Read kallisto's output, so that kallisto-prepared data can be quantified by the zoo.

* ``kallisto pseudo -o DIR`` writes ``DIR/transcripts.txt`` (one transcript name a line, in
  index order), ``DIR/pseudoalignments.ec`` (``class_id<TAB>t1,t2,...`` with 0-based
  transcript ids) and ``DIR/pseudoalignments.tsv`` (``class_id<TAB>read_count``).
* ``kallisto quant`` writes ``abundance.tsv`` with the columns ``target_id, length,
  eff_length, est_counts, tpm``; its ``eff_length`` is the effective length the EM needs.
* ``kallisto quant --pseudobam`` writes ``pseudoalignments.bam``: one record per read and
  transcript it pseudoaligns to, read pairs with their fragment length in ``TLEN``. From it
  `read_fragment_lengths` takes the fragment lengths kallisto estimates its fragment-length
  distribution from (see `zoo.em.effective_lengths`).

BAM is read by hand (BGZF is a series of gzip members, which `gzip` reads as one stream, and
only the fixed-size fields of each record are needed) because no kept library reads BAM.

Formats as written by kallisto 0.48.0.
"""

from __future__ import annotations

import gzip
import os
import struct
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


# kallisto 0.48 estimates fragment lengths from at most this many pairs (src/ProcessReads.cpp).
KALLISTO_FRAGMENT_PAIRS = 10_000

_PAIRED, _UNMAPPED, _MATE_UNMAPPED = 0x1, 0x4, 0x8
# After block_size: refID, pos, l_read_name, mapq, bin, n_cigar_op, flag, l_seq, next_refID,
# next_pos, tlen (SAM specification, section 4.2).
_RECORD = struct.Struct("<iiBBHHHiiii")


def read_fragment_lengths(
    path: str | os.PathLike, max_pairs: int = KALLISTO_FRAGMENT_PAIRS
) -> np.ndarray:
    """The fragment lengths kallisto 0.48 estimates its fragment-length distribution from:
    those of the first `max_pairs` read pairs (in file order) in a ``kallisto quant
    --pseudobam`` BAM that pseudoalign to exactly one transcript, both mates mapped, with a
    length in ``1 .. 999``.

    kallisto measures a pair's length from the k-mer contigs of its index, and skips pairs
    whose mates lie on different contigs; the BAM gives the length on the transcript and keeps
    those pairs, so the mean can differ slightly (kallisto's test data: 178.23 here against
    kallisto's 178.02).

    Raises:
        ValueError: if `path` is not a BAM file or a record is truncated.
    """
    lengths: list[int] = []
    with gzip.open(path, "rb") as f:
        _skip_header(f, path)
        name, refs, flags, tlen = None, set(), 0, 0
        while len(lengths) < max_pairs:
            record = _next_record(f, path)
            read = None if record is None else record[0]
            if read != name:
                if name is not None and _counted_pair(refs, flags, tlen):
                    lengths.append(abs(tlen))
                if record is None:
                    break
                name, refs, flags, tlen = read, set(), 0, record[3]
            refs.add(record[1])
            flags |= record[2]
    return np.asarray(lengths, dtype=np.int64)


def _counted_pair(references: set[int], flags: int, tlen: int) -> bool:
    """Whether kallisto would count the fragment of a read's records: a pair, both mates
    mapped, on one transcript only, with a length in ``1 .. 999``."""
    mapped = flags & _PAIRED and not flags & (_UNMAPPED | _MATE_UNMAPPED)
    return bool(mapped) and len(references) == 1 and 0 < abs(tlen) < 1000


def _skip_header(f, path) -> None:
    if f.read(4) != b"BAM\1":
        raise ValueError(f"{path} is not a BAM file")
    (text_length,) = struct.unpack("<i", f.read(4))
    f.read(text_length)
    (n_references,) = struct.unpack("<i", f.read(4))
    for _ in range(n_references):
        (name_length,) = struct.unpack("<i", f.read(4))
        f.read(name_length + 4)


def _next_record(f, path) -> tuple[bytes, int, int, int] | None:
    """``(read name, reference id, flag, tlen)`` of the next BAM record, or None at the end."""
    size = f.read(4)
    if not size:
        return None
    block = f.read(struct.unpack("<i", size)[0])
    if len(block) < _RECORD.size:
        raise ValueError(f"{path} ends inside a BAM record")
    reference, _, name_length, _, _, _, flag, _, _, _, tlen = _RECORD.unpack_from(block)
    return block[_RECORD.size : _RECORD.size + name_length], reference, flag, tlen


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
