"""Pushing checkpoints to a Hub API server (tests/hub_server.py, a separate process on
127.0.0.1) with ``HF_HUB_DISABLE_XET=1``, so uploads take the LFS batch route, and pulling
them back into fresh caches."""

from __future__ import annotations

import logging
import subprocess
import sys
import warnings

import equinox as eqx
import jax
import numpy as np
import pytest
from hub_servers import client_environment, point_client_at, start_fake_hub, stop
from huggingface_hub import HfApi
from huggingface_hub.errors import HfHubHTTPError

import zoo
from checkpoints import CardDetails, CheckpointError, TrainingRecord, UnpinnedRevisionWarning
from checkpoints.card import validate_card

TOKEN = "hf_biozooTestToken0123456789abcdef"


def encoder(seed: int) -> zoo.TransformerSequenceEncoder:
    config = zoo.TransformerSequenceEncoderConfig(kmer=2, max_len=32)
    return zoo.TransformerSequenceEncoder(config, key=jax.random.key(seed))


def assert_bit_equal(a: eqx.Module, b: eqx.Module) -> None:
    left = jax.tree.leaves(eqx.filter(a, eqx.is_array))
    right = jax.tree.leaves(eqx.filter(b, eqx.is_array))
    assert len(left) == len(right)
    for x, y in zip(left, right, strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def server_files(root) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    """``(endpoint, root)`` of the Hub API server, which accepts `TOKEN` for writes."""
    root = tmp_path_factory.mktemp("hub")
    process, endpoint = start_fake_hub(root, TOKEN)
    yield endpoint, root
    stop(process)


def test_push_then_pull_into_a_fresh_cache_is_bit_equal(hub, tmp_path, monkeypatch, caplog, capsys):
    endpoint, root = hub
    point_client_at(monkeypatch, endpoint, tmp_path / "cache")
    caplog.set_level(logging.DEBUG)
    first, second = encoder(0), encoder(1)
    details = CardDetails(training=TrainingRecord(steps=10, examples_seen=1280))
    sha1 = zoo.push_to_hub(first, "lab/encoder", token=TOKEN, card=details, max_shard_size=50_000)
    model, provenance = zoo.from_pretrained(f"lab/encoder@{sha1}", with_provenance=True)
    assert_bit_equal(model, first)
    assert provenance.commit == sha1
    fetched = sorted(p.name for p in provenance.folder.iterdir())
    assert "model.safetensors.index.json" in fetched and len(fetched) > 4  # it was sharded
    card = validate_card((provenance.folder / "README.md").read_text())
    assert "TransformerSequenceEncoder" in card.data.tags and "1,280" in card.text

    sha2 = zoo.push_to_hub(second, "lab/encoder", token=TOKEN, commit_message="second")
    assert sha2 != sha1
    point_client_at(monkeypatch, endpoint, tmp_path / "fresh-cache")
    assert_bit_equal(zoo.from_pretrained(f"lab/encoder@{sha1}"), first)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model, provenance = zoo.from_pretrained("lab/encoder", with_provenance=True)
    assert_bit_equal(model, second)
    assert provenance.commit == sha2
    assert any(issubclass(w.category, UnpinnedRevisionWarning) for w in caught)
    commits = [
        b.target_commit for b in HfApi(endpoint=endpoint).list_repo_refs("lab/encoder").branches
    ]
    assert commits == [sha2]

    out = capsys.readouterr()
    written = b"".join(server_files(root).values()) + b"".join(
        p.read_bytes() for p in (tmp_path).rglob("*") if p.is_file()
    )
    assert TOKEN not in caplog.text and TOKEN not in out.out + out.err
    assert TOKEN.encode() not in written


def test_a_wrong_token_is_refused_and_nothing_is_written(hub, tmp_path, monkeypatch):
    endpoint, root = hub
    point_client_at(monkeypatch, endpoint, tmp_path / "cache")
    zoo.push_to_hub(encoder(2), "lab/guarded", token=TOKEN)
    before = server_files(root)
    for repo_id in ("lab/guarded", "lab/never-created"):
        with pytest.raises(HfHubHTTPError) as error:
            zoo.push_to_hub(encoder(3), repo_id, token="hf_wrong")
        assert error.value.response.status_code == 401
    assert server_files(root) == before


def test_private_repositories_and_branches(hub, tmp_path, monkeypatch):
    endpoint, _ = hub
    point_client_at(monkeypatch, endpoint, tmp_path / "cache")
    main, experiment = encoder(4), encoder(5)
    sha_main = zoo.push_to_hub(main, "lab/private", token=TOKEN, private=True)
    sha_branch = zoo.push_to_hub(experiment, "lab/private", token=TOKEN, revision="experiment")
    with pytest.raises(CheckpointError, match="lab/private@main was not found"):
        zoo.from_pretrained("lab/private@main")
    monkeypatch.setenv("HF_TOKEN", TOKEN)  # read at call time, as in a fresh process
    assert_bit_equal(zoo.from_pretrained(f"lab/private@{sha_main}"), main)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnpinnedRevisionWarning)
        model, provenance = zoo.from_pretrained("lab/private@experiment", with_provenance=True)
    assert_bit_equal(model, experiment)
    assert provenance.commit == sha_branch


def test_a_folder_that_does_not_match_its_config_is_never_pushed(hub, tmp_path, monkeypatch):
    endpoint, root = hub
    point_client_at(monkeypatch, endpoint, tmp_path / "cache")
    folder = zoo.save_pretrained(encoder(6), tmp_path / "ckpt")
    config = (folder / "config.json").read_text().replace('"kmer": 2', '"kmer": 3')
    (folder / "config.json").write_text(config)
    before = server_files(root)
    with pytest.raises(
        CheckpointError, match=r"token_embedding\.weight: shape \(20, 64\) in the file"
    ):
        zoo.push_to_hub(folder, "lab/broken", token=TOKEN)
    assert server_files(root) == before


def test_cli_push_and_pull_use_the_hub_environment_variables(hub, tmp_path):
    endpoint, _ = hub
    folder = zoo.save_pretrained(encoder(7), tmp_path / "ckpt")
    env = client_environment(endpoint, tmp_path / "cache", token=TOKEN)
    script = (
        "import sys; from checkpoints.cli import main; "
        "sys.exit(max([main(a.split()) for a in sys.argv[1:]]))"
    )
    pushed = subprocess.run(
        [sys.executable, "-c", script, f"push {folder} lab/cli --message first", "pull lab/cli"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    url, folder_line, commit_line = pushed.stdout.strip().splitlines()
    sha = url.rsplit("/", 1)[1]
    assert url == f"{endpoint}/lab/cli/commit/{sha}"
    assert commit_line == f"commit: {sha}"
    assert folder_line.startswith(f"folder: {tmp_path / 'cache'}")
    assert "unpinned" in pushed.stderr and TOKEN not in pushed.stdout + pushed.stderr
    assert_bit_equal(
        zoo.from_pretrained(folder_line.removeprefix("folder: ")), zoo.from_pretrained(folder)
    )


def test_a_push_that_races_another_is_refused_and_leaves_one_layout(hub, tmp_path, monkeypatch):
    """Another push lands (as shards) between this push's file listing and its commit. The
    commit names the head it was prepared against, so the server refuses it; without that,
    both layouts (``model.safetensors`` beside the shards) would end up in the repository."""
    endpoint, _ = hub
    point_client_at(monkeypatch, endpoint, tmp_path / "cache")
    repo = "lab/raced"
    zoo.push_to_hub(encoder(7), repo, token=TOKEN)
    create_commit = HfApi.create_commit
    raced = []

    def commit_after_a_concurrent_push(self, *args, **kwargs):
        if not raced:
            raced.append(True)
            zoo.push_to_hub(encoder(8), repo, token=TOKEN, max_shard_size=50_000)
        return create_commit(self, *args, **kwargs)

    monkeypatch.setattr(HfApi, "create_commit", commit_after_a_concurrent_push)
    with pytest.raises(CheckpointError, match="lab/raced@main moved while this push"):
        zoo.push_to_hub(encoder(9), repo, token=TOKEN)
    files = HfApi(token=TOKEN).list_repo_files(repo)
    assert "model.safetensors" not in files
    assert "model.safetensors.index.json" in files
    assert_bit_equal(zoo.from_pretrained(repo), encoder(8))


def test_sidecars_travel_and_every_file_the_card_links_to_is_pulled(hub, tmp_path, monkeypatch):
    from checkpoints.sidecars import card_links
    from zoo.expression.gene_vocabulary import GENES_FILE, GeneVocabulary

    endpoint, _ = hub
    point_client_at(monkeypatch, endpoint, tmp_path / "cache")
    folder = zoo.save_pretrained(encoder(10), tmp_path / "ckpt")
    genes = GeneVocabulary.from_names(["ENSG00000163736.4", "LYZ", "GNLY"]).write(
        folder / GENES_FILE
    )
    (folder / "loss_curve.png").write_bytes(b"\x89PNG\r\n\x1a\n loss")
    (folder / "confusion_matrix.png").write_bytes(b"\x89PNG\r\n\x1a\n confusion")
    (folder / "notes.py").write_text("print('never carried')\n")
    card = (folder / "README.md").read_text()
    card += "\n![loss](loss_curve.png)\n\n[confusion matrix](confusion_matrix.png)\n"
    (folder / "README.md").write_text(card)
    sha = zoo.push_to_hub(folder, "lab/sidecars", token=TOKEN)

    pulled_folder = zoo.from_pretrained(f"lab/sidecars@{sha}", with_provenance=True)[1].folder
    pulled = {p.name for p in pulled_folder.iterdir()}
    assert set(card_links((pulled_folder / "README.md").read_text())) <= pulled
    assert {GENES_FILE, "loss_curve.png", "confusion_matrix.png"} <= pulled
    assert "notes.py" not in pulled
    assert GeneVocabulary.read(pulled_folder / GENES_FILE) == GeneVocabulary.read(genes)

    # a later push of a model without a gene list removes the old one
    zoo.push_to_hub(encoder(11), "lab/sidecars", token=TOKEN)
    assert GENES_FILE not in HfApi(token=TOKEN).list_repo_files("lab/sidecars")


def test_a_card_linking_to_a_file_the_folder_lacks_is_not_pushed(hub, tmp_path, monkeypatch):
    endpoint, root = hub
    point_client_at(monkeypatch, endpoint, tmp_path / "cache")
    folder = zoo.save_pretrained(encoder(12), tmp_path / "ckpt")
    card = (folder / "README.md").read_text() + "\n![loss](loss_curve.png)\n[code](train.py)\n"
    (folder / "README.md").write_text(card)
    before = server_files(root)
    with pytest.raises(CheckpointError, match=r"links to loss_curve\.png, train\.py"):
        zoo.push_to_hub(folder, "lab/broken-card", token=TOKEN)
    assert server_files(root) == before
