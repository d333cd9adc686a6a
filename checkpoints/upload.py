"""Publishing a checkpoint to the Hugging Face Hub in one commit.

The folder is checked first exactly as a load would check it (config, registry, weights
against the config), so a broken checkpoint is never published. The upload goes through
`huggingface_hub.HfApi.create_commit`: ``HF_ENDPOINT`` and ``HF_TOKEN`` apply, large files
travel by the Hub's LFS (or Xet) protocol with progress bars, and config, weights and card
land together in a single commit whose SHA is returned, with the folder's sidecar files
(`checkpoints.sidecars`: gene vocabulary, plots the card shows). Weight and sidecar files of
an earlier push that this one does not carry (shards replaced by one file, an old gene list)
are deleted in the same commit.

The list of files to delete is read at the branch head, and the commit names that head as
its parent: if another push lands in between, the Hub refuses the commit, so two pushes can
never leave both layouts side by side.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import equinox as eqx
from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi
from huggingface_hub.errors import HfHubHTTPError

from checkpoints import shards
from checkpoints.card import CardDetails, render_card, validate_card
from checkpoints.errors import CheckpointError
from checkpoints.pretrained import (
    CARD_FILE,
    CONFIG_FILE,
    open_weights,
    read_config,
    save_pretrained,
)
from checkpoints.sidecars import check_card_links, is_sidecar, sidecar_files


def push_to_hub(
    model_or_folder: eqx.Module | str | os.PathLike,
    repo_id: str,
    *,
    revision: str | None = None,
    private: bool = False,
    commit_message: str | None = None,
    token: str | None = None,
    card: str | CardDetails | None = None,
    max_shard_size: int | str = shards.DEFAULT_MAX_SHARD_SIZE,
) -> str:
    """Upload a model (saved first) or a checkpoint folder to the Hub repo `repo_id`.

    Args:
        model_or_folder: a registered model, or a checkpoint folder.
        repo_id: ``org/name``; the model repository is created if it does not exist.
        revision: the branch to commit to (created from the default branch if needed);
            default: the default branch.
        private: create the repository private (an existing one keeps its visibility).
        commit_message: default ``"Upload <architecture>"``.
        token: a Hub token with write access (default ``HF_TOKEN`` or the saved login);
            it is sent only in the Authorization header and never printed, logged or written.
        card: the card to publish (Markdown or `CardDetails`); by default the folder's
            ``README.md``, or one rendered from the config.
        max_shard_size: shard threshold when a model is saved first.

    Returns:
        The new commit's SHA.

    Raises:
        CheckpointError: the folder does not load, or the branch moved while the push was
            prepared (another push landed first); nothing was committed.
    """
    with tempfile.TemporaryDirectory(prefix="biozoo-push-") as scratch:
        if isinstance(model_or_folder, eqx.Module):
            folder = save_pretrained(
                model_or_folder, scratch, card=card, max_shard_size=max_shard_size
            )
            card = None
        else:
            folder = Path(model_or_folder)
        architecture, config = read_config(folder)
        open_weights(folder)  # refuses a folder whose weights do not match its config
        if card is None and (folder / CARD_FILE).is_file():
            card_text = (folder / CARD_FILE).read_text()
        elif isinstance(card, str):
            card_text = card
        else:
            card_text = render_card(architecture, config, card)
        validate_card(card_text)
        names = [CONFIG_FILE, *shards.files_of(folder)]
        if (folder / shards.INDEX_FILE).is_file():
            names.append(shards.INDEX_FILE)
        names += sidecar_files(folder, exclude={*names, CARD_FILE})
        check_card_links(card_text, {*names, CARD_FILE}, str(model_or_folder))
        operations = [CommitOperationAdd(name, str(folder / name)) for name in names]
        operations.append(CommitOperationAdd(CARD_FILE, card_text.encode()))
        api = HfApi(token=token)
        api.create_repo(repo_id, private=private, exist_ok=True)
        if revision is not None:
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        head = api.repo_info(repo_id, revision=revision).sha
        present = api.list_repo_files(repo_id, revision=head)
        stale = [
            n
            for n in present
            if (shards.is_weight_file(n) or is_sidecar(n)) and n not in {*names, CARD_FILE}
        ]
        operations += [CommitOperationDelete(name) for name in stale]
        try:
            commit = api.create_commit(
                repo_id,
                operations,
                commit_message=commit_message or f"Upload {architecture}",
                revision=revision,
                parent_commit=head,
            )
        except HfHubHTTPError as error:
            if error.response is None or error.response.status_code not in (409, 412):
                raise
            raise CheckpointError(
                f"{repo_id}@{revision or 'main'} moved while this push was prepared (another "
                f"push landed after {head[:12]}); nothing was committed: push again"
            ) from None
    return commit.oid
