"""Export to PyTorch ``transformers``: the written folder loads with
``AutoModelForMaskedLM`` without missing or unexpected weights, gives the zoo model's (and,
for an imported model, the original torch model's) masked-LM logits within 1e-4, and
imports back bit-equal."""

from __future__ import annotations

import itertools

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from upstream_models import (
    DNABERT_IDS,
    DNABERT_VOCAB,
    ESM2_VOCAB,
    TOLERANCE,
    assert_same_arrays,
    assert_same_logits,
    geneformer_files,
    random_arrays,
    tiny_dnabert,
    tiny_esm,
    torch_logits,
    zoo_logits,
)

import zoo
from checkpoints import CheckpointError, esm_import
from checkpoints.cli import main as hub_cli
from checkpoints.transformers_export import export_transformers


def load_exported(folder) -> torch.nn.Module:
    """``AutoModelForMaskedLM`` of `folder`, checked to take every tensor as written (all
    but ESM's contact-prediction head, which is not part of the masked LM)."""
    model, info = transformers.AutoModelForMaskedLM.from_pretrained(
        folder, output_loading_info=True
    )
    missing = {k for k in info["missing_keys"] if not k.startswith("esm.contact_head.")}
    assert not missing and not info["unexpected_keys"], info
    assert not info["mismatched_keys"], info
    return model.eval()


@pytest.fixture(scope="module")
def dnabert_folder(tmp_path_factory):
    """A tiny DNABERT-3 (``BertForMaskedLM``) folder and its torch model."""
    model = tiny_dnabert(seed=1)
    folder = tmp_path_factory.mktemp("dnabert")
    model.save_pretrained(folder, safe_serialization=True)
    (folder / "vocab.txt").write_text("".join(t + "\n" for t in DNABERT_VOCAB))
    return folder, model


def test_imported_bert_exports_to_transformers_and_back(dnabert_folder, tmp_path):
    folder, original = dnabert_folder
    imported = zoo.from_pretrained(folder)
    out = export_transformers(imported, tmp_path / "exported")
    assert_same_logits(imported, load_exported(out), DNABERT_IDS)
    assert_same_logits(imported, original, DNABERT_IDS)
    assert (out / "vocab.txt").read_text().splitlines() == DNABERT_VOCAB
    assert_same_arrays(zoo.from_pretrained(out), imported)


def test_zoo_post_norm_encoder_exports_with_its_vocabulary(tmp_path):
    transformer = zoo.TransformerConfig(
        dim=32, n_layers=2, n_heads=4, mlp_dim=64, norm="post", activation="relu"
    )
    config = zoo.TransformerSequenceEncoderConfig(
        transformer=transformer, kmer=2, positions="learned", max_len=32, pooling="cls"
    )
    key = jax.random.key(0)
    model = random_arrays(eqx.filter_eval_shape(zoo.TransformerSequenceEncoder, config, key=key))
    ids, mask = model.tokenizer(["ACGTTGCAAC"])
    out = export_transformers(model, tmp_path / "exported")
    reference = load_exported(out)
    assert reference.config.hidden_act == "relu"
    ours, theirs = zoo_logits(model, ids[0], mask[0]), torch_logits(reference, ids[0], mask[0])
    np.testing.assert_allclose(ours[mask[0]], theirs[mask[0]], atol=TOLERANCE, rtol=0)
    assert (out / "vocab.txt").read_text().splitlines() == list(model.tokenizer.vocab)


# vocab.txt of a Nucleotide Transformer v1 over 2-mers (REFERENCE_MODELS.md 2c)
NT_V1_VOCAB = ["<unk>", "<pad>", "<mask>", "<cls>"]
NT_V1_VOCAB += ["".join(p) for p in itertools.product("ATCG", repeat=2)] + [*"ATCGN"]
ESM_FAMILIES = {
    "esm2": (
        ESM2_VOCAB,
        {"position_embedding_type": "rotary", "token_dropout": True},
        [0, 5, 9, 14, 20, 6, 2, 1, 1],
    ),
    "nt-v1": (
        [*NT_V1_VOCAB, "<eos>", "<bos>"],
        {
            "position_embedding_type": "absolute",
            "max_position_embeddings": 34,
            "token_dropout": True,
            "tie_word_embeddings": False,
        },
        [3, 4, 9, 19, 21, 24, 1, 1],
    ),
}


@pytest.mark.parametrize("family", sorted(ESM_FAMILIES))
def test_imported_esm_exports_to_transformers_and_back(family, tmp_path):
    vocab, settings, ids = ESM_FAMILIES[family]
    upstream = tiny_esm(vocab[: len(NT_V1_VOCAB)] if family == "nt-v1" else vocab, 2, **settings)
    upstream.save_pretrained(tmp_path / "upstream", safe_serialization=True)
    (tmp_path / "upstream" / "vocab.txt").write_text("".join(t + "\n" for t in vocab))
    imported, provenance = zoo.from_pretrained(tmp_path / "upstream", with_provenance=True)
    assert provenance.family == family
    out = export_transformers(imported, tmp_path / "exported")
    assert load_exported(out).config.position_embedding_type == settings["position_embedding_type"]
    ids = np.array(ids)
    assert_same_logits(imported, load_exported(out), ids, pad_id=1)
    assert_same_logits(imported, upstream, ids, pad_id=1)
    assert (out / "vocab.txt").read_text().splitlines() == vocab
    assert_same_arrays(zoo.from_pretrained(out), imported)


def test_settings_without_a_transformers_equivalent_are_refused_by_name(tmp_path):
    sinusoidal = zoo.TransformerSequenceEncoderConfig(
        transformer=zoo.TransformerConfig(norm="post"), positions="sinusoidal"
    )
    key = jax.random.key(0)
    model = eqx.filter_eval_shape(zoo.TransformerSequenceEncoder, sinusoidal, key=key)
    with pytest.raises(CheckpointError, match="positions='sinusoidal'"):
        export_transformers(model, tmp_path / "a")
    nt_v2 = esm_import.esm_config(
        {
            "model_type": "esm",
            "add_bias_fnn": False,
            "vocab_size": 4107,
            "hidden_size": 32,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "intermediate_size": 64,
            "max_position_embeddings": 2050,
            "position_embedding_type": "rotary",
            "pad_token_id": 1,
            "mask_token_id": 2,
        }
    )
    model = eqx.filter_eval_shape(zoo.TransformerSequenceEncoder, nt_v2, key=key)
    with pytest.raises(CheckpointError, match="Nucleotide Transformer v2's gated feed-forward"):
        export_transformers(model, tmp_path / "a")
    scgpt_like = eqx.filter_eval_shape(
        zoo.DifferentiableFoundationModel, zoo.DifferentiableFoundationModelConfig(), key=key
    )
    with pytest.raises(CheckpointError, match="value_input=True"):
        export_transformers(scgpt_like, tmp_path / "a")
    hmm = eqx.filter_eval_shape(zoo.DifferentiableHMM, zoo.DifferentiableHMMConfig(), key=key)
    with pytest.raises(CheckpointError, match="DifferentiableHMM has no transformers"):
        export_transformers(hmm, tmp_path / "a")
    assert not (tmp_path / "a").exists()


def test_export_command_writes_a_loadable_folder(dnabert_folder, tmp_path, capsys):
    folder, original = dnabert_folder
    out = tmp_path / "exported"
    assert hub_cli(["export", str(folder), str(out), "--format", "transformers"]) == 0
    assert f"folder: {out}" in capsys.readouterr().out
    assert_same_logits(zoo.from_pretrained(out), original, DNABERT_IDS)


def test_imported_geneformer_exports_to_transformers_and_back(tmp_path):
    files, originals = geneformer_files(tmp_path / "saved")
    repo = tmp_path / "Geneformer"
    for name, data in files.items():
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / name).write_bytes(data)
    imported = zoo.from_pretrained(repo / "Geneformer-V1-10M")
    exported = export_transformers(imported, repo / "exported")  # beside the dictionaries
    counts = np.random.default_rng(0).poisson(1.0, 30).astype(np.float32)
    out = eqx.nn.inference_mode(imported)(jnp.asarray(counts))
    ids, real = np.asarray(out.ids), np.asarray(out.token_mask)
    for reference in (originals["V1"], load_exported(exported)):
        expected = torch_logits(reference, ids, real)
        np.testing.assert_allclose(
            np.asarray(out.gene_logits)[real], expected[real], atol=TOLERANCE, rtol=0
        )
    reimported, provenance = zoo.from_pretrained(exported, with_provenance=True)
    assert provenance.family == "geneformer-v1"
    assert_same_arrays(reimported, imported)
