"""Turning a model reference into a checkpoint folder and a record of where it came from.

A reference is, in this order of precedence: an existing local folder; a short name from
`checkpoints.catalog.CATALOG`; or a Hub repository ``org/name``, optionally followed by a
folder inside it and by ``@revision`` (a branch, a tag, a commit SHA or a pull-request ref
such as ``refs/pr/2``): ``org/name[/sub/folder][@revision]``, for instance
``ctheodoris/Geneformer/Geneformer-V1-10M@<sha>``. Everything after the first ``@`` is the
revision, so a revision may hold slashes; the folder comes before it.

A folder in the layout of a published upstream model (`checkpoints.upstream`) is recognised
from its files; a Hub download then fetches only what its converter reads.
"""

from __future__ import annotations

import dataclasses
import os
import re
import warnings
from pathlib import Path
from typing import Any

import huggingface_hub

from checkpoints import upstream
from checkpoints.catalog import CATALOG, CatalogEntry
from checkpoints.download import CHECKPOINT_FILES, download
from checkpoints.errors import CheckpointError
from checkpoints.integrity import verify_digests

REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
SUBFOLDER = re.compile(r"[\w.-]+(/[\w.-]+)*")
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
        subfolder: the folder inside the Hub repository that holds the model (None: its
            root).
        family: the upstream family (a key of `checkpoints.upstream.FAMILIES`) whose layout
            the folder has and whose converter loads it; None for a biozoo checkpoint.
    """

    reference: str
    source: str
    folder: Path
    repo_id: str | None = None
    revision: str | None = None
    commit: str | None = None
    sha256: dict[str, str] = dataclasses.field(default_factory=dict)
    subfolder: str | None = None
    family: str | None = None

    @property
    def pinned(self) -> bool:
        """Whether the revision asked for was the exact commit (local folders: True)."""
        return self.source == "local" or self.revision == self.commit

    def __str__(self) -> str:
        if self.repo_id is not None:
            return f"{model_path(self.repo_id, self.subfolder)}@{self.commit}"
        if self.sha256:  # a catalog checkpoint that ships inside the package
            weights = "; ".join(
                f"{name} sha256 {digest}"
                for name, digest in sorted(self.sha256.items())
                if name != "config.json"
            )
            return f"{self.reference} (shipped in {self.folder}; {weights})"
        return str(self.folder)


def split_reference(ref: str, revision: str | None) -> tuple[str, str | None, str | None]:
    """``(repo_id, subfolder, revision)`` of a Hub reference
    ``org/name[/sub/folder][@revision]`` (no folder: None)."""
    path, _, suffix = ref.partition("@")
    org, _, rest = path.partition("/")
    name, _, subfolder = rest.partition("/")
    repo_id = f"{org}/{name}"
    well_formed = REPO_ID.fullmatch(repo_id) and (
        (not subfolder and not path.endswith("/"))
        or (SUBFOLDER.fullmatch(subfolder) and not {".", ".."} & set(subfolder.split("/")))
    )
    if not well_formed or (ref.count("@") and not suffix):
        raise CheckpointError(
            f"{ref!r} is not a checkpoint folder, a catalog name (known: {sorted(CATALOG)}) "
            "or a Hub repository org/name[/sub/folder][@revision]"
        )
    if suffix and revision and suffix != revision:
        raise CheckpointError(f"{ref!r} names revision {suffix!r} but revision={revision!r}")
    return repo_id, subfolder or None, suffix or revision


def model_path(repo_id: str, subfolder: str | None) -> str:
    """``org/name`` or ``org/name/sub/folder``: where a model is on the Hub."""
    return f"{repo_id}/{subfolder}" if subfolder else repo_id


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
        family = None
        if upstream.is_upstream_layout(folder):
            if not upstream.has_safetensors(folder):
                upstream.refuse_pickle_weights(text, [p.name for p in folder.iterdir()])
            family = upstream.detect_family(folder)
        return folder, Provenance(text, "local", folder, family=family)
    if text in CATALOG:
        return _resolve_catalog(text, CATALOG[text], cache_dir, local_files_only, token)
    repo_id, subfolder, revision = split_reference(text, revision)
    folder, commit, family = _download_model(
        repo_id,
        subfolder,
        revision,
        cache_dir=cache_dir,
        local_files_only=local_files_only,
        token=token,
    )
    provenance = Provenance(
        text, "hub", folder, repo_id, revision, commit, subfolder=subfolder, family=family
    )
    if not provenance.pinned:
        shown = model_path(repo_id, subfolder)
        warnings.warn(
            f"{shown} loaded unpinned at {revision or 'the default branch'!r}, which is commit "
            f"{commit} today; load {shown}@{commit} to pin it",
            UnpinnedRevisionWarning,
            stacklevel=3,
        )
    return folder, provenance


def _download_model(
    repo_id: str, subfolder: str | None, revision: str | None, **client: Any
) -> tuple[Path, str, str | None]:
    """The model folder of a Hub reference, its commit and its upstream family (None: a
    biozoo checkpoint). The config files come first; they decide what else is fetched."""
    prefix = f"{subfolder}/" if subfolder else ""
    configs = tuple(prefix + name for name in upstream.CONFIG_FILES)
    root, commit = download(
        repo_id, revision, allow_patterns=list(configs), required=configs, **client
    )
    folder = root / prefix
    if not upstream.is_upstream_layout(folder):
        patterns = [prefix + pattern for pattern in CHECKPOINT_FILES]
        download(repo_id, commit, allow_patterns=patterns, required=configs[:1], **client)
        return folder, commit, None
    download(
        repo_id, commit, allow_patterns=upstream.hub_patterns(prefix), required=configs, **client
    )
    if not upstream.has_safetensors(folder):
        listing = _repository_files(repo_id, commit, client.get("token"))
        inside = [name.removeprefix(prefix) for name in listing if name.startswith(prefix)]
        upstream.refuse_pickle_weights(
            f"{model_path(repo_id, subfolder)}@{commit}",
            [name for name in inside if "/" not in name],  # the model folder's own files
        )
    return folder, commit, upstream.detect_family(folder)


def _repository_files(repo_id: str, commit: str, token: str | None) -> list[str]:
    """The repository's file paths at `commit`, or none when the Hub cannot be asked."""
    try:  # a fresh client: it reads HF_ENDPOINT as it is now
        info = huggingface_hub.HfApi().model_info(repo_id, revision=commit, token=token)
    except Exception:  # offline, unreachable, refused: the error then names no pickle
        return []
    return [sibling.rfilename for sibling in info.siblings or ()]


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
