"""Fetching a checkpoint from the Hugging Face Hub into its cache.

Everything goes through `huggingface_hub.snapshot_download`, so ``HF_ENDPOINT``,
``HF_TOKEN``, ``HF_HUB_OFFLINE`` and ``HF_HOME``/``HF_HUB_CACHE`` behave as everywhere else,
progress bars show as usual, and a second load of the same revision reads the cache. Only
the files a checkpoint needs are fetched: config, weights, card and the sidecar files beside
them (`checkpoints.sidecars`; never pickles or code), and every cached file is checked
against the Hub's content hash before use (`checkpoints.integrity`).
"""

from __future__ import annotations

import fnmatch
import os
from pathlib import Path

import huggingface_hub
from huggingface_hub.errors import (
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from checkpoints.errors import CheckpointError
from checkpoints.integrity import verify_cached_snapshot
from checkpoints.sidecars import SIDECAR_PATTERNS

CHECKPOINT_FILES = [
    "config.json",
    "README.md",
    "model.safetensors",
    "model.safetensors.index.json",
    "model-*-of-*.safetensors",
    *SIDECAR_PATTERNS,
]


def download(
    repo_id: str,
    revision: str | None,
    *,
    cache_dir: str | os.PathLike | None = None,
    local_files_only: bool = False,
    token: str | None = None,
    allow_patterns: list[str] | None = None,
    required: tuple[str, ...] = ("config.json",),
) -> tuple[Path, str]:
    """The cached snapshot folder of `repo_id` at `revision` and its commit SHA.

    Args:
        allow_patterns: the repository paths to fetch (`fnmatch` patterns); by default a
            biozoo checkpoint's files, `CHECKPOINT_FILES`.
        required: repository paths of which at least one must be fetched, or the
            repository holds no checkpoint.

    Raises:
        CheckpointError: for an unknown repository or revision, a revision that is not
            cached while offline, or a corrupted cached file.
    """
    shown = f"{repo_id}@{revision or 'main'}"
    patterns = CHECKPOINT_FILES if allow_patterns is None else allow_patterns
    try:
        folder = Path(
            huggingface_hub.snapshot_download(
                repo_id,
                revision=revision,
                cache_dir=cache_dir,
                local_files_only=local_files_only,
                token=token,
                allow_patterns=patterns,
            )
        )
    except RevisionNotFoundError:
        raise CheckpointError(f"{repo_id} has no revision {revision!r}") from None
    except RepositoryNotFoundError:
        raise CheckpointError(
            f"{shown} was not found at {huggingface_hub.constants.ENDPOINT}: no such repository "
            "or revision (if the repository is private, pass token= or set HF_TOKEN)"
        ) from None
    except LocalEntryNotFoundError as error:
        cache = cache_dir or huggingface_hub.constants.HF_HUB_CACHE
        cause = f" ({error.__cause__})" if error.__cause__ else ""
        raise CheckpointError(
            f"{shown} is not in the Hugging Face cache {cache} and downloads are off "
            f"(HF_HUB_OFFLINE=1, local_files_only=True, or the Hub is unreachable{cause}); "
            "load it once while online"
        ) from None
    # The files of this load only: the snapshot may also hold other folders' weights.
    present = sorted(
        name
        for name in (p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
        if any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns)
    )
    if not set(required) & set(present):
        raise CheckpointError(f"{shown} holds no checkpoint (no {' or '.join(required)})")
    verify_cached_snapshot(
        folder,
        present,
        f"load {repo_id}@{folder.name} again to download it afresh "
        f"(biozoo pull {repo_id}@{folder.name})",
    )
    return folder, folder.name
