"""A packed DNA corpus on disk: built once from FASTA files, then memory-mapped by every run
instead of being parsed and loaded.

A packed corpus is a folder holding

* ``bases.u8``: every record's bases, one byte each (0-3 for A, C, G, T; 4 for N or an
  ambiguity code; see `pretraining.dna_data.encode_dna`), records back to back;
* ``n_runs.npy``: the runs of N, an (n_runs, 3) int64 array of ``(record, start, length)``;
* ``index.json``: the format tag and version, the records (name, byte offset, length) and
  the provenance of the FASTA files it was built from.

`write_packed` streams records into a new folder (written under a temporary name and moved
into place, so a half-written corpus is never read); `read_packed` maps one, giving each
record as a read-only `numpy.memmap` view that the operating system pages in on demand.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import NamedTuple

import numpy as np

from pretraining.provenance import Source

FORMAT = "biozoo-packed-dna"
VERSION = 1
BASES_FILE, N_RUNS_FILE, INDEX_FILE = "bases.u8", "n_runs.npy", "index.json"
N_CODE = 4


class PackedDnaError(ValueError):
    """A packed DNA corpus is missing, incomplete or of another format."""


class PackedDna(NamedTuple):
    """A mapped packed corpus: ``records`` (one uint8 view per record), ``names`` of the
    records, ``n_runs`` ((n_runs, 3) record, start, length) and the FASTA ``sources``."""

    records: list[np.ndarray]
    names: list[str]
    n_runs: np.ndarray
    sources: list[Source]


def is_packed(path: str | os.PathLike) -> bool:
    """Whether `path` is a folder holding a packed corpus's index."""
    return (Path(path) / INDEX_FILE).is_file()


def n_runs_of(record: int, codes: np.ndarray) -> np.ndarray:
    """(runs, 3) ``(record, start, length)`` of the runs of N in `codes`."""
    is_n = np.concatenate([[False], codes == N_CODE, [False]])
    edges = np.flatnonzero(np.diff(is_n.astype(np.int8)))
    starts, stops = edges[0::2], edges[1::2]
    return np.stack([np.full(len(starts), record), starts, stops - starts], axis=1).astype(np.int64)


def write_packed(
    out: str | os.PathLike,
    records: Iterable[tuple[str, np.ndarray]],
    sources: Iterable[Source] | None = None,
) -> Path:
    """Write `records` (name, codes) as a packed corpus in the new folder `out`; `sources`
    is read after `records` is exhausted, so it may be filled while they stream.

    Raises:
        PackedDnaError: `out` exists already, or no record holds any base.
    """
    out = Path(out)
    if out.exists():
        raise PackedDnaError(f"{out} exists already; remove it or choose another --out")
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    index, runs, offset = [], [], 0
    with open(partial / BASES_FILE, "wb") as bases:
        for name, codes in records:
            bases.write(np.ascontiguousarray(codes, np.uint8).tobytes())
            runs.append(n_runs_of(len(index), codes))
            index.append({"name": name, "offset": offset, "length": len(codes)})
            offset += len(codes)
    if offset == 0:
        shutil.rmtree(partial)
        raise PackedDnaError("the FASTA files hold no sequence")
    np.save(partial / N_RUNS_FILE, np.concatenate(runs), allow_pickle=False)
    metadata = {
        "format": FORMAT,
        "version": VERSION,
        "records": index,
        "sources": [s.to_dict() for s in sources or ()],
    }
    (partial / INDEX_FILE).write_text(json.dumps(metadata, indent=1) + "\n")
    os.replace(partial, out)
    return out


def read_packed(folder: str | os.PathLike) -> PackedDna:
    """Map the packed corpus in `folder`.

    Raises:
        PackedDnaError: naming the folder, when it is not a complete packed corpus.
    """
    folder = Path(folder)
    try:
        metadata = json.loads((folder / INDEX_FILE).read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise PackedDnaError(f"{folder} is not a packed DNA corpus: {error}") from None
    if metadata.get("format") != FORMAT or metadata.get("version") != VERSION:
        raise PackedDnaError(
            f"{folder} is not a {FORMAT} corpus of version {VERSION} "
            f"(found {metadata.get('format')!r} version {metadata.get('version')!r})"
        )
    records = metadata["records"]
    size = sum(r["length"] for r in records)
    bases_path = folder / BASES_FILE
    if not bases_path.is_file() or bases_path.stat().st_size != size:
        raise PackedDnaError(
            f"{bases_path} should hold {size:,} bytes, one per base of the index; the corpus "
            "is incomplete: prepare it again"
        )
    bases = np.memmap(bases_path, np.uint8, mode="r")
    return PackedDna(
        records=[bases[r["offset"] : r["offset"] + r["length"]] for r in records],
        names=[r["name"] for r in records],
        n_runs=np.load(folder / N_RUNS_FILE, allow_pickle=False),
        sources=[Source(**s) for s in metadata["sources"]],
    )
