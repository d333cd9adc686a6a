"""ESM-layout import: Nucleotide Transformer v1, v2 and ESM-2 checkpoints, randomly
initialised in PyTorch ``transformers`` with the published structural configuration and
saved in the upstream layout, load into `TransformerSequenceEncoder` and agree with
``EsmForMaskedLM`` on real DNA and protein, layer by layer; the zoo tokenizers give the ids
of transformers' ``EsmTokenizer`` built from the same files."""

from __future__ import annotations

import itertools
import json

import equinox as eqx
import jax
import numpy as np
import pytest
import torch
import transformers
from upstream_models import with_gated_feed_forward

import zoo
from checkpoints import CheckpointError
from checkpoints.esm_import import esm_variant, import_esm
from zoo.sequence.fasta import read_fasta

TOLERANCE = 1e-4  # float32 on both sides; absolute, on hidden states, pooled and logits
KMERS = ["".join(p) for p in itertools.product("ATCG", repeat=6)]

# Published configurations (REFERENCE_MODELS.md sections 2 and 5). Structural flags are
# copied exactly; NT widths and depths are shrunk (hidden 1280 x 24 layers would take
# minutes), ESM-2 8M is built at its published size.
NT_V1 = {  # InstaDeepAI/nucleotide-transformer-500m-human-ref config.json (Xenova mirror)
    "attention_probs_dropout_prob": 0.0,
    "emb_layer_norm_before": False,
    "hidden_dropout_prob": 0.0,
    "layer_norm_eps": 1e-12,
    "mask_token_id": 2,
    "max_position_embeddings": 1002,
    "pad_token_id": 1,
    "position_embedding_type": "absolute",
    "tie_word_embeddings": False,
    "token_dropout": True,
    "vocab_size": 4105,
    "hidden_size": 64,  # published 1280
    "num_attention_heads": 4,  # published 20
    "num_hidden_layers": 2,  # published 24
    "intermediate_size": 256,  # published 5120 (4 x hidden)
}
NT_V2 = {  # nucleotide-transformer-v2-*-multi-species shared keys (fine-tune copies)
    "add_bias_fnn": False,
    "auto_map": {
        "AutoConfig": "esm_config.EsmConfig",
        "AutoModelForMaskedLM": "modeling_esm.EsmForMaskedLM",
    },
    "attention_probs_dropout_prob": 0.0,
    "emb_layer_norm_before": False,
    "hidden_dropout_prob": 0.0,
    "layer_norm_eps": 1e-12,
    "mask_token_id": 2,
    "max_position_embeddings": 2050,
    "pad_token_id": 1,
    "position_embedding_type": "rotary",
    "tie_word_embeddings": False,
    "token_dropout": False,
    "vocab_size": 4107,
    "hidden_size": 64,  # published 512 (50m, 100m) to 1024 (500m)
    "num_attention_heads": 4,  # published 16
    "num_hidden_layers": 2,  # published 12 to 29
    "intermediate_size": 256,  # published 4 x hidden
}
ESM2_8M = {  # facebook/esm2_t6_8M_UR50D config.json
    "attention_probs_dropout_prob": 0.0,
    "emb_layer_norm_before": False,
    "hidden_act": "gelu",
    "hidden_dropout_prob": 0.0,
    "hidden_size": 320,
    "intermediate_size": 1280,
    "layer_norm_eps": 1e-05,
    "mask_token_id": 32,
    "max_position_embeddings": 1026,
    "num_attention_heads": 20,
    "num_hidden_layers": 6,
    "pad_token_id": 1,
    "position_embedding_type": "rotary",
    "token_dropout": True,
    "vocab_size": 33,
}
NT_SPECIAL_TOKENS = {
    "cls_token": "<cls>",
    "mask_token": "<mask>",
    "pad_token": "<pad>",
    "unk_token": "<unk>",
}
VOCABULARIES = {  # the published vocab.txt line orders (REFERENCE_MODELS.md 2c and 5b)
    "nt-v1": ["<unk>", "<pad>", "<mask>", "<cls>", *KMERS, *"ATCGN"],
    "nt-v2": ["<unk>", "<pad>", "<mask>", "<cls>", "<eos>", "<bos>", *KMERS, *"ATCGN"],
    "esm2": [
        "<cls>",
        "<pad>",
        "<eos>",
        "<unk>",
        *"LAGVSERTIDPKQNFYMHWCXBUZO.-",
        "<null_1>",
        "<mask>",
    ],
}
TOKENIZER_FILES = {
    "nt-v1": (
        {
            "clean_up_tokenization_spaces": True,
            "model_max_length": 1000,
            "tokenizer_class": "EsmTokenizer",
        },
        NT_SPECIAL_TOKENS,
    ),
    "nt-v2": (
        {
            "clean_up_tokenization_spaces": True,
            "eos_token": None,
            "model_max_length": 2048,
            "tokenizer_class": "EsmTokenizer",
        },
        NT_SPECIAL_TOKENS,
    ),
    "esm2": (
        {"model_max_length": 1000000000000000019884624838656, "tokenizer_class": "EsmTokenizer"},
        NT_SPECIAL_TOKENS | {"eos_token": "<eos>"},
    ),
}
# Human ubiquitin (UniProt P0CG48, residues 1-76) and the insulin B chain (P01308, 25-54).
PROTEINS = [
    "MQIFVKTLTGKTITLEVEPSDTIENVKAKIQDKEGIPPDQQRLIFAGKQLEDGRTLSDYNIQKESTLHLVLRLRGG",
    "FVNQHLCGSHLVEALYLVCGERGFFYTPKT",
]


def reference_model(variant: str) -> transformers.EsmForMaskedLM:
    """A randomly initialised reference with the published configuration, in eval mode."""
    values = {"nt-v1": NT_V1, "nt-v2": NT_V2, "esm2": ESM2_8M}[variant]
    torch.manual_seed(0)
    model = transformers.EsmForMaskedLM(transformers.EsmConfig(**values))
    if variant == "nt-v2":
        model = with_gated_feed_forward(model)
    with torch.no_grad():  # non-trivial norms and biases, so a misplaced one shows
        for name, parameter in model.named_parameters():
            if "LayerNorm" in name or "layer_norm" in name or name.endswith("bias"):
                parameter.add_(0.1 * torch.randn_like(parameter))
    return model.eval()


@pytest.fixture(scope="module", params=["nt-v1", "nt-v2", "esm2"])
def upstream(request, tmp_path_factory):
    """``(variant, folder, reference)``: the reference saved in the upstream layout."""
    variant = request.param
    reference = reference_model(variant)
    folder = tmp_path_factory.mktemp(variant)
    reference.save_pretrained(folder, safe_serialization=True)
    (folder / "vocab.txt").write_text("\n".join(VOCABULARIES[variant]) + "\n")
    tokenizer_config, special_tokens = TOKENIZER_FILES[variant]
    (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    (folder / "special_tokens_map.json").write_text(json.dumps(special_tokens))
    return variant, folder, reference


@pytest.fixture(scope="module")
def dna(shared_data):
    """Real transcript windows of odd lengths (so leftover letters occur), one with an N."""
    records = list(read_fasta(shared_data / "salmon_sample" / "transcripts.fasta"))
    sequences = [sequence.upper() for _, (_, sequence) in zip(range(3), records, strict=False)]
    first = sequences[0][100:161]
    return [first[:30] + "N" + first[31:], sequences[1][:47], sequences[2][500:583]]


@eqx.filter_jit
def zoo_outputs(model, ids, mask):
    """A batch's per-layer states, hidden states, pooled embeddings and masked-LM logits,
    compiled once."""
    out = jax.vmap(model)(ids, mask)
    states = jax.vmap(model.layer_states)(ids, mask)
    return states, out.hidden, out.pooled, jax.vmap(model.mlm_logits)(out.hidden)


def reference_tokenizer(folder, variant):
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    if variant == "nt-v1":  # NT adds no <eos> (transformers PR #22770); v1's files name none
        tokenizer.eos_token = None
    return tokenizer


def test_esm_family_matches_transformers_layer_by_layer(upstream, dna):
    variant, folder, reference = upstream
    model = eqx.nn.inference_mode(import_esm(folder))
    assert esm_variant(json.loads((folder / "config.json").read_text())) == variant
    inputs = PROTEINS if variant == "esm2" else dna
    expected_batch = reference_tokenizer(folder, variant)(inputs, padding=True, return_tensors="np")
    ids, mask = model.tokenizer(inputs)
    np.testing.assert_array_equal(ids, expected_batch["input_ids"])
    np.testing.assert_array_equal(mask, expected_batch["attention_mask"].astype(bool))
    assert (~mask).sum() > 10  # the batch really is padded
    if variant != "esm2":
        assert "N" in model.tokenizer.decode(ids[0])  # the N is its own token
    masked = ids.copy()
    masked[0, 3] = model.tokenizer.mask_id  # exercises token dropout's mask handling

    with torch.no_grad():
        out = reference(
            input_ids=torch.from_numpy(masked.astype(np.int64)),
            attention_mask=torch.from_numpy(mask.astype(np.int64)),
            output_hidden_states=True,
        )
        last = reference.esm(
            input_ids=torch.from_numpy(masked.astype(np.int64)),
            attention_mask=torch.from_numpy(mask.astype(np.int64)),
        ).last_hidden_state.numpy()
    # transformers' hidden_states: the embeddings, every layer's output, the last one after
    # emb_layer_norm_after (compared below as the encoder's hidden states)
    states, hidden, pooled, logits = (np.asarray(x) for x in zoo_outputs(model, masked, mask))
    states = states[:, :-1]
    expected_states = np.stack([h.numpy() for h in out.hidden_states[:-1]], axis=1)
    assert (
        states.shape
        == expected_states.shape
        == (len(inputs), model.stack.n_layers, *ids.shape[1:], model.config.transformer.dim)
    )
    np.testing.assert_allclose(
        states.transpose(0, 2, 1, 3)[mask],
        expected_states.transpose(0, 2, 1, 3)[mask],
        atol=TOLERANCE,
        rtol=0,
    )
    np.testing.assert_allclose(hidden[mask], last[mask], atol=TOLERANCE, rtol=0)
    expected_pooled = (last * mask[..., None]).sum(1) / mask.sum(1, keepdims=True)
    np.testing.assert_allclose(pooled, expected_pooled, atol=TOLERANCE, rtol=0)
    np.testing.assert_allclose(logits[mask], out.logits.numpy()[mask], atol=TOLERANCE, rtol=0)


def test_imported_model_keeps_its_tokenizer_through_the_checkpoint_format(upstream, tmp_path):
    variant, folder, _ = upstream
    model = import_esm(folder)
    loaded = zoo.from_pretrained(zoo.save_pretrained(model, tmp_path / variant))
    assert loaded.tokenizer == model.tokenizer
    for a, b in zip(
        jax.tree.leaves(eqx.filter(model, eqx.is_array)),
        jax.tree.leaves(eqx.filter(loaded, eqx.is_array)),
        strict=True,
    ):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_a_vocabulary_other_than_the_checkpoints_is_refused(upstream, tmp_path):
    variant, folder, _ = upstream
    for name in ("config.json", "model.safetensors"):
        (tmp_path / name).write_bytes((folder / name).read_bytes())
    swapped = list(VOCABULARIES[variant])
    swapped[-3], swapped[-2] = swapped[-2], swapped[-3]
    (tmp_path / "vocab.txt").write_text("\n".join(swapped) + "\n")
    with pytest.raises(CheckpointError, match=f"line {len(swapped) - 2} is"):
        import_esm(tmp_path)


def test_a_pickle_only_folder_is_refused_with_what_to_do(upstream, tmp_path):
    _, folder, _ = upstream
    for name in ("config.json", "vocab.txt"):
        (tmp_path / name).write_bytes((folder / name).read_bytes())
    (tmp_path / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(CheckpointError, match=r"only PyTorch pickle.*refs/pr/N.*torch") as error:
        import_esm(tmp_path)
    assert "\n" not in str(error.value)
