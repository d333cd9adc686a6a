"""Reading FASTA files (plain, gzip or xz compressed).

Kept by hand on purpose: the format is a header line and sequence lines, and this streaming
reader is twenty lines over the standard library's ``gzip``/``lzma``. Biopython's
``SimpleFastaParser`` does the same job but would make a large compiled package a
dependency of ``import zoo``, and it gives no line number for a malformed file; this reader
names the file and line.
"""

from __future__ import annotations

import gzip
import io
import lzma
import os
from collections.abc import Iterator
from pathlib import Path


def open_text(path: str | os.PathLike) -> io.TextIOBase:
    """Open a text file for reading, decompressing ``.gz`` and ``.xz`` by their suffix."""
    path = Path(path)
    if path.suffix == ".gz":
        return gzip.open(path, "rt")
    if path.suffix == ".xz":
        return lzma.open(path, "rt")
    return open(path)


def read_fasta(path: str | os.PathLike) -> Iterator[tuple[str, str]]:
    """Yield ``(name, sequence)`` for each record; the name is the header line up to the
    first whitespace, the sequence its lines joined.

    Raises:
        ValueError: if sequence lines come before any ``>`` header.
    """
    name, chunks = None, []
    with open_text(path) as f:
        for number, line in enumerate(f, 1):
            line = line.strip()
            if line.startswith(">"):
                if name is not None:
                    yield name, "".join(chunks)
                name, chunks = line[1:].split(maxsplit=1)[0] if len(line) > 1 else "", []
            elif line:
                if name is None:
                    raise ValueError(f"{path}:{number}: sequence data before the first '>' header")
                chunks.append(line)
    if name is not None:
        yield name, "".join(chunks)
