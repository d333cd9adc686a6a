"""Turning a model reference into a checkpoint folder and a record of where it came from.

A reference is, in this order of precedence: an existing local folder; a short name from
`checkpoints.catalog.CATALOG`; or a Hub repository ``org/name``, optionally followed by
``@revision`` (a branch, a tag or a commit SHA).
"""

from __future__ import annotations

import dataclasses
import os
import re
import warnings
from pathlib import Path

from checkpoints.catalog import CATALOG, CatalogEntry
from checkpoints.download import download
from checkpoints.errors import CheckpointError
from checkpoints.integrity import verify_digests

REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
COMMIT_SHA = re.compile(r"[0-9a-f]{40}")


class UnpinnedRevisionWarning(UserWarning):
    """A Hub checkpoint was loaded by branch or tag, which may later point elsewhere."""


@dataclasses.dataclass(frozen=True)
class Provenance:
    """Where a loaded checkpoint came from.

    Attributes:
        reference: the reference as given.
        source: ``"local"``, ``"catalog"`` or ``"hub"``.
        folder: the folder the weights were read from.
        repo_id: the Hub repository (Hub checkpoints, and catalog checkpoints mirrored there).
        revision: the revision asked for (None: the default branch).
        commit: the commit SHA it resolved to (Hub checkpoints, and mirrored catalog ones).
        sha256: the verified SHA-256 of each file (catalog checkpoints).
    """

    reference: str
    source: str
    folder: Path
    repo_id: str | None = None
    revision: str | None = None
    commit: str | None = None
    sha256: dict[str, str] = dataclasses.field(default_factory=dict)

    @property
    def pinned(self) -> bool:
        """Whether the revision asked for was the exact commit (local folders: True)."""
        return self.source == "local" or self.revision == self.commit

    def __str__(self) -> str:
        if self.repo_id is not None:
            return f"{self.repo_id}@{self.commit}"
        if self.sha256:  # a catalog checkpoint that ships inside the package
            weights = "; ".join(
                f"{name} sha256 {digest}"
                for name, digest in sorted(self.sha256.items())
                if name != "config.json"
            )
            return f"{self.reference} (shipped in {self.folder}; {weights})"
        return str(self.folder)


def split_reference(ref: str, revision: str | None) -> tuple[str, str | None]:
    """``(repo_id, revision)`` of a Hub reference ``org/name[@revision]``."""
    repo_id, _, suffix = ref.partition("@")
    if not REPO_ID.fullmatch(repo_id) or (ref.count("@") and not suffix):
        raise CheckpointError(
            f"{ref!r} is not a checkpoint folder, a catalog name (known: {sorted(CATALOG)}) "
            "or a Hub repository org/name[@revision]"
        )
    if suffix and revision and suffix != revision:
        raise CheckpointError(f"{ref!r} names revision {suffix!r} but revision={revision!r}")
    return repo_id, suffix or revision


def resolve(
    ref: str | os.PathLike,
    *,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    local_files_only: bool = False,
    token: str | None = None,
) -> tuple[Path, Provenance]:
    """The checkpoint folder `ref` names and its `Provenance`, downloading if needed.

    Warns with `UnpinnedRevisionWarning` when a Hub checkpoint is not loaded by commit SHA.
    """
    text = os.fspath(ref)
    if Path(text).expanduser().is_dir():
        folder = Path(text).expanduser()
        return folder, Provenance(text, "local", folder)
    if text in CATALOG:
        return _resolve_catalog(text, CATALOG[text], cache_dir, local_files_only, token)
    repo_id, revision = split_reference(text, revision)
    folder, commit = download(
        repo_id, revision, cache_dir=cache_dir, local_files_only=local_files_only, token=token
    )
    provenance = Provenance(text, "hub", folder, repo_id, revision, commit)
    if not provenance.pinned:
        warnings.warn(
            f"{repo_id} loaded unpinned at {revision or 'the default branch'!r}, which is commit "
            f"{commit} today; load {repo_id}@{commit} to pin it",
            UnpinnedRevisionWarning,
            stacklevel=3,
        )
    return folder, provenance


def _resolve_catalog(
    name: str,
    entry: CatalogEntry,
    cache_dir: str | os.PathLike | None,
    local_files_only: bool,
    token: str | None,
) -> tuple[Path, Provenance]:
    folder = entry.shipped_folder()
    if folder is None and entry.commit is None:
        raise CheckpointError(
            f"catalog checkpoint {name!r} ships inside the package, but {entry.folder} is "
            "missing and it is not mirrored to the Hub yet; reinstall biozoo"
        )
    if folder is None:
        folder, _ = download(
            entry.repo_id,
            entry.commit,
            cache_dir=cache_dir,
            local_files_only=local_files_only,
            token=token,
        )
    verify_digests(folder, entry.sha256, f"catalog checkpoint {name!r} ({folder})")
    repo_id = entry.repo_id if entry.commit is not None else None  # not on the Hub yet
    return folder, Provenance(
        name, "catalog", folder, repo_id, entry.commit, entry.commit, dict(entry.sha256)
    )
