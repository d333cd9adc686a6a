"""Pulling checkpoints from a real Hub mirror: olah, started offline on 127.0.0.1 and
serving a git repository whose weights are committed as git-LFS pointers.

The repository has three commits: ``v1`` (tagged), then on ``main`` a sharded ``v2`` that
also carries a pickle and a Python file (which a pull must never fetch), and on ``dev`` a
``v3`` branched from ``v1``.
"""

from __future__ import annotations

import shutil
import warnings

import equinox as eqx
import jax
import numpy as np
import pytest
from hub_servers import (
    commit_checkpoint,
    git,
    new_git_repo,
    point_client_at,
    start_olah,
    stop,
)

import zoo
from checkpoints import CheckpointError, UnpinnedRevisionWarning, catalog
from checkpoints.catalog import CatalogEntry
from checkpoints.integrity import sha256_of

REPO = "biozoo-tests/dna-encoder"


def encoder(seed: int) -> zoo.TransformerSequenceEncoder:
    config = zoo.TransformerSequenceEncoderConfig(kmer=3, positions="learned", max_len=64)
    return zoo.TransformerSequenceEncoder(config, key=jax.random.key(seed))


def assert_bit_equal(a: eqx.Module, b: eqx.Module) -> None:
    left, right = (
        jax.tree.leaves(eqx.filter(a, eqx.is_array)),
        jax.tree.leaves(eqx.filter(b, eqx.is_array)),
    )
    assert len(left) == len(right)
    for x, y in zip(left, right, strict=True):
        assert x.dtype == y.dtype
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.fixture(scope="module")
def olah(tmp_path_factory):
    """``(endpoint, models, commits)`` of olah serving the repository described above."""
    scratch = tmp_path_factory.mktemp("olah")
    repo = new_git_repo(scratch / "mirrors", REPO)
    models = {name: encoder(seed) for seed, name in enumerate(("v1", "v2", "v3"))}
    saved = {name: scratch / name for name in models}
    zoo.save_pretrained(models["v1"], saved["v1"])
    zoo.save_pretrained(models["v2"], saved["v2"], max_shard_size=60_000)
    (saved["v2"] / "pytorch_model.bin").write_bytes(b"\x80\x04pickle that must never load")
    (saved["v2"] / "modeling_custom.py").write_text("raise SystemExit('remote code ran')\n")
    zoo.save_pretrained(models["v3"], saved["v3"])
    commits = {"v1": commit_checkpoint(repo, saved["v1"], "v1")}
    git(repo, "tag", "v1")
    commits["v2"] = commit_checkpoint(repo, saved["v2"], "v2, sharded")
    git(repo, "checkout", "-q", "-b", "dev", commits["v1"])
    commits["v3"] = commit_checkpoint(repo, saved["v3"], "v3 on dev")
    git(repo, "checkout", "-q", "main")
    process, endpoint = start_olah(scratch / "mirrors", scratch)
    yield endpoint, models, commits
    stop(process)


def test_pull_by_branch_tag_and_commit_is_bit_equal(olah, tmp_path, monkeypatch):
    endpoint, models, commits = olah
    point_client_at(monkeypatch, endpoint, tmp_path / "cache")
    cases = [
        (f"{REPO}@dev", "v3", False),
        (f"{REPO}@v1", "v1", False),
        (f"{REPO}@{commits['v2']}", "v2", True),
        (REPO, "v2", False),
    ]
    for ref, version, pinned in cases:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model, provenance = zoo.from_pretrained(ref, with_provenance=True)
        assert_bit_equal(model, models[version])
        assert provenance.commit == commits[version]
        assert provenance.repo_id == REPO and provenance.source == "hub"
        assert provenance.pinned is pinned
        unpinned = [w for w in caught if issubclass(w.category, UnpinnedRevisionWarning)]
        assert len(unpinned) == (0 if pinned else 1), ref
        if not pinned:
            assert commits[version] in str(unpinned[0].message)


def test_only_checkpoint_files_are_fetched(olah, tmp_path, monkeypatch):
    endpoint, _, commits = olah
    point_client_at(monkeypatch, endpoint, tmp_path / "cache")
    _, provenance = zoo.from_pretrained(f"{REPO}@{commits['v2']}", with_provenance=True)
    fetched = sorted(p.name for p in provenance.folder.iterdir())
    assert "pytorch_model.bin" not in fetched and "modeling_custom.py" not in fetched
    assert "model.safetensors.index.json" in fetched and "README.md" in fetched


def test_offline_reload_from_the_cache(olah, tmp_path, monkeypatch):
    endpoint, models, commits = olah
    cache = tmp_path / "cache"
    point_client_at(monkeypatch, endpoint, cache)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnpinnedRevisionWarning)
        zoo.from_pretrained(f"{REPO}@dev")
    zoo.from_pretrained(f"{REPO}@{commits['v2']}")

    point_client_at(monkeypatch, "http://127.0.0.1:9", cache, offline=True)  # nothing there
    assert_bit_equal(zoo.from_pretrained(f"{REPO}@{commits['v2']}"), models["v2"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnpinnedRevisionWarning)
        model, provenance = zoo.from_pretrained(f"{REPO}@dev", with_provenance=True)
    assert_bit_equal(model, models["v3"])
    assert provenance.commit == commits["v3"]

    with pytest.raises(CheckpointError, match=rf"{REPO}@v1 is not in the Hugging Face cache"):
        zoo.from_pretrained(f"{REPO}@v1")
    point_client_at(monkeypatch, endpoint, tmp_path / "empty-cache")
    with pytest.raises(CheckpointError, match=rf"{REPO}@{commits['v2']} is not in the"):
        zoo.from_pretrained(REPO, revision=commits["v2"], local_files_only=True)


def test_corrupted_cached_file_is_detected_and_recoverable(olah, tmp_path, monkeypatch):
    endpoint, models, commits = olah
    point_client_at(monkeypatch, endpoint, tmp_path / "cache")
    ref = f"{REPO}@{commits['v1']}"
    _, provenance = zoo.from_pretrained(ref, with_provenance=True)
    blob = (provenance.folder / "model.safetensors").resolve()
    data = bytearray(blob.read_bytes())
    data[-1] ^= 0xFF  # one flipped bit pattern in the last weight: the header still parses
    blob.write_bytes(bytes(data))
    with pytest.raises(CheckpointError) as error:
        zoo.from_pretrained(ref)
    message = str(error.value)
    assert "model.safetensors" in message and str(blob) in message
    assert f"Delete {blob}" in message and f"biozoo pull {ref}" in message

    blob.write_bytes(bytes(data[: len(data) // 2]))  # truncated
    with pytest.raises(CheckpointError, match="corrupted or truncated"):
        zoo.from_pretrained(ref)

    blob.unlink()  # as the message says; the next load downloads it afresh
    assert_bit_equal(zoo.from_pretrained(ref), models["v1"])


def test_catalog_names_resolve_to_pinned_verified_checkpoints(olah, tmp_path, monkeypatch):
    endpoint, models, commits = olah
    point_client_at(monkeypatch, endpoint, tmp_path / "cache")
    _, provenance = zoo.from_pretrained(f"{REPO}@{commits['v1']}", with_provenance=True)
    digests = {n: sha256_of(provenance.folder / n) for n in ("config.json", "model.safetensors")}
    entry = CatalogEntry("a test encoder", REPO, commits["v1"], digests)
    monkeypatch.setitem(catalog.CATALOG, "test-encoder", entry)
    model, provenance = zoo.from_pretrained("test-encoder", with_provenance=True)
    assert_bit_equal(model, models["v1"])
    assert (provenance.source, provenance.commit) == ("catalog", commits["v1"])

    shipped = tmp_path / "packages" / "finetuning" / "published" / "test-encoder"
    shutil.copytree(provenance.folder, shipped)
    monkeypatch.setattr(catalog, "PACKAGES_ROOT", tmp_path / "packages")
    point_client_at(monkeypatch, "http://127.0.0.1:9", tmp_path / "empty", offline=True)
    entry = CatalogEntry(
        "shipped", REPO, commits["v1"], digests, "finetuning/published/test-encoder"
    )
    monkeypatch.setitem(catalog.CATALOG, "test-encoder", entry)
    model, provenance = zoo.from_pretrained("test-encoder", with_provenance=True)
    assert provenance.folder == shipped
    assert_bit_equal(model, models["v1"])

    tampered = dict(digests, **{"model.safetensors": "0" * 64})
    monkeypatch.setitem(
        catalog.CATALOG,
        "test-encoder",
        CatalogEntry("x", REPO, commits["v1"], tampered, entry.folder),
    )
    with pytest.raises(CheckpointError, match="does not match its published digests"):
        zoo.from_pretrained("test-encoder")


def test_bad_references_say_what_a_reference_is(olah, tmp_path, monkeypatch):
    endpoint, _, _ = olah
    point_client_at(monkeypatch, endpoint, tmp_path / "cache")
    with pytest.raises(CheckpointError, match="not a checkpoint folder, a catalog name"):
        zoo.from_pretrained("no-such-name")
    with pytest.raises(CheckpointError, match="names revision 'v1' but revision='dev'"):
        zoo.from_pretrained(f"{REPO}@v1", revision="dev")
    with pytest.raises(CheckpointError, match=f"{REPO}@nope was not found"):
        zoo.from_pretrained(f"{REPO}@nope")
