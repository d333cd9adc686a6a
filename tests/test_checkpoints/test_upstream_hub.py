"""Published upstream models loaded by their Hub ids from a real Hub mirror (olah, offline on
127.0.0.1), converted on load, with the outputs of the PyTorch ``transformers`` model.

Each repository holds tiny random models built with ``transformers`` and saved with
``safe_serialization=True``, under exactly the upstream file names, beside the files a load
must never fetch (``pytorch_model.bin``, the repository's Python code). ``DNA_bert_3``'s
``main`` has only ``pytorch_model.bin``, as upstream; its safetensors sit on a branch
``convert``, as the Hub's conversion bot leaves them on ``refs/pr/N`` (which olah does not
serve; `test_hub_references_name_a_folder_and_a_revision_with_slashes` parses that form).
NT v2's repository holds its remote code (``esm_config.py``, ``modeling_esm.py``) named by
``auto_map``; scGPT's ``main`` has only ``best_model.pt``, and a branch ``safetensors``
adds ``model.safetensors`` built with scGPT's own torch model (the ``scgpt`` wheel), whose
cell embeddings and expression predictions on pbmc3k cells the loaded model reproduces.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import anndata as ad
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from hub_servers import commit_files, git, new_git_repo, point_client_at, start_olah, stop
from test_esm_import import NT_V2, TOKENIZER_FILES, VOCABULARIES
from test_scgpt_import import ARGS as SCGPT_ARGS
from test_scgpt_import import DATA as PBMC3K
from test_scgpt_import import N_CELLS, reference_inputs
from upstream_models import (
    DNABERT_IDS,
    DNABERT_VOCAB,
    ESM2_VOCAB,
    TOLERANCE,
    assert_same_arrays,
    assert_same_logits,
    geneformer_files,
    pickled_state,
    saved,
    tiny_dnabert,
    tiny_esm,
    with_gated_feed_forward,
    write_scgpt_folder,
)

import zoo
from checkpoints import CheckpointError, UnpinnedRevisionWarning
from checkpoints.cli import main as hub_cli
from checkpoints.references import split_reference
from checkpoints.upstream import detect_family
from zoo.sequence.fasta import read_fasta

DNABERT = "zhihan1996/DNA_bert_3"
GENEFORMER = "ctheodoris/Geneformer"
ESM2 = "facebook/esm2_t6_8M_UR50D"
NT_V2_50M = "InstaDeepAI/nucleotide-transformer-v2-50m-multi-species"
SCGPT = "u-cellm/scGPT-whole-human"
REMOTE_CODE = ("esm_config.py", "modeling_esm.py")
NEVER_FETCHED = (
    "pytorch_model.bin",
    "training_args.bin",
    "tf_model.h5",
    "dnabert_layer.py",
    "configuration_bert.py",
    "tokenizer.py",
    "ensembl_mapping_dict_gc30M.pkl",
    "ensembl_mapping_dict_gc104M.pkl",
    "best_model.pt",
    *REMOTE_CODE,
)


def dnabert_files(model: transformers.BertForMaskedLM, folder) -> dict[str, bytes]:
    """DNA_bert_k's files on the Hub: config with its custom-code auto_map, the code, the
    tokenizer files, LICENSE and ``pytorch_model.bin``."""
    model.save_pretrained(folder, safe_serialization=True)
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoModelForMaskedLM": "dnabert_layer.BertForMaskedLM"}
    return {
        "config.json": json.dumps(config, indent=2).encode(),
        "configuration_bert.py": b"raise SystemExit('remote code ran')\n",
        "dnabert_layer.py": b"raise SystemExit('remote code ran')\n",
        "pytorch_model.bin": pickled_state(model),
        "special_tokens_map.json": json.dumps(
            {t: f"[{t[:3].upper()}]" for t in ("unk_token", "sep_token", "pad_token")}
        ).encode(),
        "tokenizer_config.json": b'{"do_lower_case": false, "max_len": 512}',
        "vocab.txt": "".join(t + "\n" for t in DNABERT_VOCAB).encode(),
        "LICENSE": b"licence text\n",
    }


def esm2_files(scratch: Path) -> tuple[dict[str, bytes], torch.nn.Module]:
    """facebook/esm2_t6_8M_UR50D's files, with a 2-layer, 32-wide random model."""
    model = tiny_esm(ESM2_VOCAB, 2, position_embedding_type="rotary", token_dropout=True)
    files = saved(model, scratch / "esm2") | {
        "pytorch_model.bin": pickled_state(model),
        "tf_model.h5": b"HDF5 weights a load must never fetch",
        "vocab.txt": "".join(t + "\n" for t in ESM2_VOCAB).encode(),
        "special_tokens_map.json": json.dumps(
            {k: f"<{k[:-6]}>" for k in ("cls_token", "eos_token", "pad_token", "unk_token")}
            | {"mask_token": "<mask>"}
        ).encode(),
        "tokenizer_config.json": b'{"model_max_length": 1024, "tokenizer_class": "EsmTokenizer"}',
    }
    return files, model


def nt_v2_files(scratch: Path) -> tuple[dict[str, bytes], torch.nn.Module]:
    """InstaDeepAI/nucleotide-transformer-v2-50m-multi-species's files: the config with
    ``add_bias_fnn: false`` and its ``auto_map`` into the remote code, that code (never
    fetched), the tokenizer files and ``model.safetensors`` of a 2-layer, 32-wide random
    model with the gated feed-forward."""
    flags = ("layer_norm_eps", "max_position_embeddings", "tie_word_embeddings", "token_dropout")
    model = tiny_esm(
        VOCABULARIES["nt-v2"],
        3,
        position_embedding_type="rotary",
        **{k: NT_V2[k] for k in flags},
    )
    with torch.no_grad():
        model = with_gated_feed_forward(model)
        for name, parameter in model.named_parameters():  # non-trivial norms and biases
            if "LayerNorm" in name or "layer_norm" in name or name.endswith("bias"):
                parameter.add_(0.1 * torch.randn_like(parameter))
    files = saved(model, scratch / "nt-v2")
    config = json.loads(files["config.json"])
    config |= {"add_bias_fnn": NT_V2["add_bias_fnn"], "auto_map": NT_V2["auto_map"]}
    tokenizer_config, special_tokens = TOKENIZER_FILES["nt-v2"]
    return files | {
        "config.json": json.dumps(config, indent=2).encode(),
        "esm_config.py": b"raise SystemExit('remote code ran')\n",
        "modeling_esm.py": b"raise SystemExit('remote code ran')\n",
        "vocab.txt": "".join(t + "\n" for t in VOCABULARIES["nt-v2"]).encode(),
        "tokenizer_config.json": json.dumps(tokenizer_config).encode(),
        "special_tokens_map.json": json.dumps(special_tokens).encode(),
    }, model


def scgpt_files(scratch: Path) -> tuple[dict[str, bytes], torch.nn.Module, dict, list[str]]:
    """scGPT whole-human's folder (``args.json``, ``vocab.json``, ``model.safetensors``,
    shrunk) over pbmc3k's genes, built with scGPT's own torch model; also the torch model,
    its vocabulary and the genes in vocabulary order."""
    genes = sorted(ad.read_h5ad(PBMC3K, backed="r").var_names)
    folder = scratch / "scgpt"
    folder.mkdir()
    reference, vocab = write_scgpt_folder(folder, genes, SCGPT_ARGS)
    files = {p.name: p.read_bytes() for p in sorted(folder.iterdir())}
    return files, reference, vocab, genes


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    """``(endpoint, torch models, commits)`` of olah serving the repositories above."""
    scratch = tmp_path_factory.mktemp("upstream-hub")
    mirrors = scratch / "mirrors"
    dnabert = tiny_dnabert(seed=0)
    upstream = dnabert_files(dnabert, scratch / "dnabert")
    repo = new_git_repo(mirrors, DNABERT)
    commits = {"dnabert main": commit_files(repo, upstream, "upstream: pytorch_model.bin only")}
    safetensors = (scratch / "dnabert" / "model.safetensors").read_bytes()
    git(repo, "checkout", "-q", "-b", "convert")
    commits["dnabert pr"] = commit_files(
        repo, upstream | {"model.safetensors": safetensors}, "Adding `safetensors` variant"
    )
    git(repo, "checkout", "-q", "main")
    files, geneformer = geneformer_files(scratch)
    commits["geneformer"] = commit_files(new_git_repo(mirrors, GENEFORMER), files, "V1 and V2")
    files, esm2 = esm2_files(scratch)
    commits["esm2"] = commit_files(new_git_repo(mirrors, ESM2), files, "Upload EsmForMaskedLM")
    scgpt = {
        "args.json": json.dumps({"embsize": 32, "nheads": 4, "nlayers": 2}).encode(),
        "vocab.json": json.dumps({"A1BG": 0, "<pad>": 1, "<cls>": 2, "<eoc>": 3}).encode(),
        "best_model.pt": b"\x80\x04pickle that must never load",
    }
    repo = new_git_repo(mirrors, SCGPT)
    commits["scgpt"] = commit_files(repo, scgpt, "mirror")
    git(repo, "checkout", "-q", "-b", "safetensors")
    files, scgpt_model, scgpt_vocab, genes = scgpt_files(scratch)
    commits["scgpt safetensors"] = commit_files(repo, scgpt | files, "best_model.pt converted")
    git(repo, "checkout", "-q", "main")
    files, nt_v2 = nt_v2_files(scratch)
    commits["nt-v2"] = commit_files(new_git_repo(mirrors, NT_V2_50M), files, "Upload model")
    process, endpoint = start_olah(mirrors, scratch)
    models = {"dnabert": dnabert, "dnabert files": upstream, "esm2": esm2, "geneformer": geneformer}
    models |= {"nt-v2": nt_v2, "scgpt": (scgpt_model, scgpt_vocab, genes)}
    yield endpoint, models, commits
    stop(process)


def test_dnabert_loads_by_hub_id_at_the_conversion_commit(hub, tmp_path, monkeypatch):
    endpoint, models, commits = hub
    point_client_at(monkeypatch, endpoint, tmp_path / "cache")
    ref = f"{DNABERT}@{commits['dnabert pr']}"
    model, provenance = zoo.from_pretrained(ref, with_provenance=True)
    assert provenance.commit == commits["dnabert pr"] and provenance.pinned
    assert provenance.family == "dnabert" and str(provenance) == ref
    fetched = {p.name for p in provenance.folder.rglob("*")}
    assert not fetched & set(NEVER_FETCHED), fetched
    assert_same_logits(model, models["dnabert"], DNABERT_IDS)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _, by_pr = zoo.from_pretrained(f"{DNABERT}@convert", with_provenance=True)
    assert by_pr.commit == commits["dnabert pr"]
    assert any(issubclass(w.category, UnpinnedRevisionWarning) for w in caught)


def test_pickle_only_repository_is_refused_with_what_to_do(hub, tmp_path, monkeypatch):
    endpoint, _, commits = hub
    point_client_at(monkeypatch, endpoint, tmp_path / "cache")
    with pytest.raises(CheckpointError) as error:
        zoo.from_pretrained(f"{DNABERT}@{commits['dnabert main']}")
    message = str(error.value)
    assert "\n" not in message
    assert "only pytorch_model.bin" in message and "refs/pr/N" in message
    assert "biozoo convert-bin" in message


def test_pull_reports_commit_family_and_licence(hub, tmp_path, monkeypatch, capsys):
    endpoint, _, commits = hub
    point_client_at(monkeypatch, endpoint, tmp_path / "cache")
    assert hub_cli(["pull", f"{DNABERT}@{commits['dnabert pr']}"]) == 0
    out = capsys.readouterr().out
    assert f"commit: {commits['dnabert pr']}" in out and "upstream: DNABERT" in out
    assert hub_cli(["pull", f"{DNABERT}@{commits['dnabert main']}"]) == 1
    assert "only pytorch_model.bin" in capsys.readouterr().err


def test_convert_bin_makes_a_pickle_only_folder_loadable(hub, tmp_path, capsys):
    _, models, _ = hub
    folder = tmp_path / "DNA_bert_3"
    folder.mkdir()
    for name, data in models["dnabert files"].items():
        (folder / name).write_bytes(data)
    with pytest.raises(CheckpointError, match=r"only pytorch_model\.bin"):
        zoo.from_pretrained(folder)
    assert hub_cli(["convert-bin", str(folder)]) == 0
    assert_same_logits(zoo.from_pretrained(folder), models["dnabert"], DNABERT_IDS)
    assert hub_cli(["convert-bin", str(folder)]) == 1  # it exists now: nothing overwritten
    assert "exists already" in capsys.readouterr().err


def test_ls_lists_upstream_families_with_licences(capsys):
    assert hub_cli(["ls"]) == 0
    out = capsys.readouterr().out
    assert "dna-encoder-tiny" in out  # the catalog stays
    families = out.split("upstream models")[1].splitlines()
    nt = [line for line in families if "InstaDeepAI/nucleotide-transformer" in line]
    assert len(nt) == 2 and all("CC BY-NC-SA 4.0" in line for line in nt)
    for hub_id in ("ctheodoris/Geneformer/Geneformer-V1-10M", "zhihan1996/DNA_bert_6", ESM2):
        assert hub_id in out


def test_hub_references_name_a_folder_and_a_revision_with_slashes():
    cases = {
        "ctheodoris/Geneformer/Geneformer-V1-10M@refs/pr/2": (
            "ctheodoris/Geneformer",
            "Geneformer-V1-10M",
            "refs/pr/2",
        ),
        "zhihan1996/DNA_bert_6@main": ("zhihan1996/DNA_bert_6", None, "main"),
        "org/name/a/b": ("org/name", "a/b", None),
    }
    for ref, expected in cases.items():
        assert split_reference(ref, None) == expected
    for bad in ("org/name/../x", "org/name/", "org/name@"):
        with pytest.raises(CheckpointError, match="org/name\\[/sub/folder\\]"):
            split_reference(bad, None)


def test_geneformer_loads_from_its_subfolder_with_the_repositorys_dictionaries(
    hub, tmp_path, monkeypatch
):
    endpoint, models, commits = hub
    point_client_at(monkeypatch, endpoint, tmp_path / "cache")
    ref = f"{GENEFORMER}/Geneformer-V1-10M@{commits['geneformer']}"
    model, provenance = zoo.from_pretrained(ref, with_provenance=True)
    assert provenance.family == "geneformer-v1" and provenance.subfolder == "Geneformer-V1-10M"
    assert str(provenance) == ref and provenance.commit == commits["geneformer"]
    fetched = {p.name for p in provenance.folder.parent.rglob("*")}
    assert "token_dictionary_gc30M.pkl" in fetched and not fetched & set(NEVER_FETCHED)

    counts = np.random.default_rng(0).poisson(1.0, 30).astype(np.float32)
    out = eqx.nn.inference_mode(model)(jnp.asarray(counts))
    ids, real = np.asarray(out.ids), np.asarray(out.token_mask)
    with torch.no_grad():
        expected = models["geneformer"]["V1"](
            input_ids=torch.tensor(ids[None]), attention_mask=torch.tensor(real[None]).long()
        ).logits[0]
    np.testing.assert_allclose(
        np.asarray(out.gene_logits)[real], expected.numpy()[real], atol=TOLERANCE, rtol=0
    )

    _, root = zoo.from_pretrained(f"{GENEFORMER}@{commits['geneformer']}", with_provenance=True)
    assert root.family == "geneformer-v2" and root.subfolder is None


def test_esm2_loads_by_hub_id_with_its_tokenizer(hub, tmp_path, monkeypatch):
    endpoint, models, commits = hub
    point_client_at(monkeypatch, endpoint, tmp_path / "cache")
    model, provenance = zoo.from_pretrained(f"{ESM2}@{commits['esm2']}", with_provenance=True)
    assert provenance.family == "esm2" and provenance.commit == commits["esm2"]
    assert not {p.name for p in provenance.folder.rglob("*")} & set(NEVER_FETCHED)
    ids = np.asarray(model.tokenizer.encode("MKTAYIAKQR"))
    assert_same_logits(model, models["esm2"], ids, pad_id=1)

    point_client_at(monkeypatch, "http://127.0.0.1:9", tmp_path / "cache", offline=True)
    again, offline = zoo.from_pretrained(f"{ESM2}@{commits['esm2']}", with_provenance=True)
    assert offline.family == "esm2" and offline.folder == provenance.folder
    assert_same_arrays(again, model)  # converted again from the cache, nothing fetched


def test_scgpt_mirror_with_only_best_model_pt_is_refused(hub, tmp_path, monkeypatch):
    endpoint, _, commits = hub
    point_client_at(monkeypatch, endpoint, tmp_path / "cache")
    with pytest.raises(CheckpointError, match=r"only best_model\.pt .*biozoo convert-bin"):
        zoo.from_pretrained(f"{SCGPT}@{commits['scgpt']}")


def test_families_are_recognised_from_their_files_alone(tmp_path):
    """Only config.json, vocab.txt / vocab.json / args.json and the Geneformer dictionaries
    are read (no weights here at all): REFERENCE_MODELS.md's published configs."""
    esm = {"model_type": "esm", "pad_token_id": 1, "mask_token_id": 2}
    layouts = {
        "esm2": {"config.json": esm | {"vocab_size": 33, "mask_token_id": 32}},
        "nt-v1": {"config.json": esm | {"vocab_size": 4105}},
        "nt-v2": {"config.json": esm | {"vocab_size": 4107, "add_bias_fnn": False}},
        "dnabert": {
            "config.json": {"model_type": "bert", "vocab_size": 69},
            "vocab.txt": DNABERT_VOCAB,
        },
        "bert": {
            "config.json": {"model_type": "bert", "vocab_size": 5},
            "vocab.txt": ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "hello"],
        },
        "scgpt": {"args.json": {"embsize": 512}, "vocab.json": {"A1BG": 0}},
    }
    for family, files in layouts.items():
        folder = tmp_path / family
        folder.mkdir()
        for name, content in files.items():
            text = "\n".join(content) if name == "vocab.txt" else json.dumps(content)
            (folder / name).write_text(text)
        assert detect_family(folder) == family
    (tmp_path / "roberta").mkdir()
    (tmp_path / "roberta" / "config.json").write_text('{"model_type": "roberta"}')
    with pytest.raises(CheckpointError, match=r"model_type 'roberta'.*Geneformer V1"):
        detect_family(tmp_path / "roberta")


def test_nt_v2_loads_by_hub_id_without_its_remote_code(hub, tmp_path, monkeypatch, shared_data):
    endpoint, models, commits = hub
    point_client_at(monkeypatch, endpoint, tmp_path / "cache")
    ref = f"{NT_V2_50M}@{commits['nt-v2']}"
    model, provenance = zoo.from_pretrained(ref, with_provenance=True)
    assert provenance.commit == commits["nt-v2"] and provenance.pinned
    assert provenance.family == "nt-v2" and str(provenance) == ref
    fetched = {p.name for p in provenance.folder.rglob("*")}
    assert "model.safetensors" in fetched and not fetched & set(NEVER_FETCHED), fetched
    assert json.loads((provenance.folder / "config.json").read_text())["auto_map"]
    records = read_fasta(shared_data / "salmon_sample" / "transcripts.fasta")
    _, transcript = next(iter(records))
    ids = np.asarray(model.tokenizer.encode(transcript.upper()[100:161]))
    # <cls>, ten 6-mers and the leftover letter
    assert ids[0] == VOCABULARIES["nt-v2"].index("<cls>") and len(ids) == 12
    assert (ids[1:] >= VOCABULARIES["nt-v2"].index("AAAAAA")).all()
    assert_same_logits(model, models["nt-v2"], ids, pad_id=1)


def test_scgpt_loads_by_hub_id_at_its_converted_commit(hub, tmp_path, monkeypatch):
    endpoint, models, commits = hub
    point_client_at(monkeypatch, endpoint, tmp_path / "cache")
    ref = f"{SCGPT}@{commits['scgpt safetensors']}"
    model, provenance = zoo.from_pretrained(ref, with_provenance=True)
    assert provenance.commit == commits["scgpt safetensors"] and provenance.pinned
    assert provenance.family == "scgpt" and str(provenance) == ref
    fetched = {p.name for p in provenance.folder.rglob("*")}
    assert {"args.json", "vocab.json", "model.safetensors"} <= fetched, fetched
    assert not fetched & set(NEVER_FETCHED), fetched

    reference, vocab, genes = models["scgpt"]
    data = ad.read_h5ad(PBMC3K)
    counts = np.asarray(data[:N_CELLS, genes].X.toarray(), np.float32)
    out = eqx.filter_jit(jax.vmap(eqx.nn.inference_mode(model)))(jnp.asarray(counts))
    # the binned values after the <cls> token, as scGPT's input takes them
    ids, values = reference_inputs(counts, np.asarray(out.values)[:, 1:], vocab)
    padding = ids == vocab["<pad>"]
    real = ~padding.numpy()
    with torch.no_grad():
        expected = reference(ids, values, src_key_padding_mask=padding)
    np.testing.assert_array_equal(np.asarray(out.ids), ids.numpy())
    np.testing.assert_allclose(
        np.asarray(out.cell_embedding), expected["cell_emb"].numpy(), atol=TOLERANCE, rtol=0
    )
    np.testing.assert_allclose(
        np.asarray(out.predicted_values)[real],
        expected["mlm_output"].numpy()[real],
        atol=TOLERANCE,
        rtol=0,
    )
