"""Checking files against the digests their source published.

The Hugging Face cache stores each downloaded file as ``blobs/<etag>`` (linked from
``snapshots/<commit>/<name>``), and the Hub's etag is the file's content hash: the SHA-256 of
an LFS file or the git blob SHA-1 of a regular one. Recomputing it detects a cached file that
was truncated, corrupted or altered after download, which the cache itself never re-checks.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from checkpoints.errors import CheckpointError

_SHA256 = re.compile(r"[0-9a-f]{64}")
_SHA1 = re.compile(r"[0-9a-f]{40}")


def sha256_of(path: Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 22):
            digest.update(block)
    return digest.hexdigest()


def git_blob_sha1(path: Path) -> str:
    """Hex git blob id of a file: SHA-1 of ``"blob <size>\\0"`` and the bytes."""
    digest = hashlib.sha1(f"blob {path.stat().st_size}\0".encode())
    with open(path, "rb") as f:
        while block := f.read(1 << 22):
            digest.update(block)
    return digest.hexdigest()


def verify_cached_snapshot(folder: Path, names: list[str], redownload: str) -> None:
    """Check each file `names` of the cache snapshot `folder` against its blob's etag.

    Args:
        redownload: how to fetch the files again, for the error message.

    Raises:
        CheckpointError: naming the first mismatching file, its blob and `redownload`.
    """
    for name in names:
        path = folder / name
        blob = path.resolve()
        if not blob.is_file():
            raise CheckpointError(f"{path} is missing from the cache; {redownload}")
        etag = blob.name
        if _SHA256.fullmatch(etag):
            actual, kind = sha256_of(blob), "SHA-256"
        elif _SHA1.fullmatch(etag):
            actual, kind = git_blob_sha1(blob), "git SHA-1"
        else:
            continue  # a copy without a content-addressed blob name: nothing to compare
        if actual != etag:
            raise CheckpointError(
                f"cached file {path} (blob {blob}) is corrupted or truncated: its {kind} is "
                f"{actual}, the Hub's is {etag}. Delete {blob} and {redownload}"
            )


def verify_digests(folder: Path, expected: dict[str, str], what: str) -> None:
    """Check the SHA-256 of each file of `folder` named in `expected`.

    Raises:
        CheckpointError: naming every missing or mismatching file.
    """
    problems = []
    for name, digest in sorted(expected.items()):
        path = folder / name
        if not path.is_file():
            problems.append(f"{path} is missing")
        elif (actual := sha256_of(path)) != digest:
            problems.append(f"{path} has SHA-256 {actual}, expected {digest}")
    if problems:
        raise CheckpointError(
            f"{what} does not match its published digests:\n  " + "\n  ".join(problems)
        )
