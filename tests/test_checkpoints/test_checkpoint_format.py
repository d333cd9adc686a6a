"""The local checkpoint folder: bit-equal round trips and a clear error for each defect."""

import json

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.numpy

import zoo
from checkpoints import CheckpointError, safetensors_format

TRANSFORMER = zoo.TransformerConfig(dim=16, n_layers=2, n_heads=2, mlp_dim=32)
MODELS = {
    "SequenceEmbedding": lambda: zoo.SequenceEmbedding(
        zoo.SequenceEmbeddingConfig(hidden_channels=8, embedding_dim=4), key=jax.random.key(1)
    ),
    "TransformerSequenceEncoder": lambda: zoo.TransformerSequenceEncoder(
        zoo.TransformerSequenceEncoderConfig(transformer=TRANSFORMER, positions="learned", kmer=2),
        key=jax.random.key(2),
    ),
    "GeneTokenizer": lambda: zoo.GeneTokenizer(zoo.GeneTokenizerConfig(n_genes=50, max_tokens=8)),
    "DifferentiableFoundationModel": lambda: zoo.DifferentiableFoundationModel(
        zoo.DifferentiableFoundationModelConfig(
            tokenizer=zoo.GeneTokenizerConfig(n_genes=50, max_tokens=8), transformer=TRANSFORMER
        ),
        key=jax.random.key(3),
    ),
}


def arrays(model):
    return jax.tree.leaves(eqx.filter(model, eqx.is_array))


@pytest.mark.parametrize("name", sorted(MODELS))
def test_round_trip_is_bit_equal(name, tmp_path):
    model = MODELS[name]()
    if name == "GeneTokenizer":  # fitted state must survive too
        counts = np.random.default_rng(0).poisson(2.0, size=(30, 50))
        model = model.fit(counts)
    zoo.save_pretrained(model, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "README.md",
        "config.json",
        "model.safetensors",
    ]
    loaded = zoo.from_pretrained(tmp_path)
    assert type(loaded) is type(model) and loaded.config == model.config
    for a, b in zip(arrays(model), arrays(loaded), strict=True):
        assert a.dtype == b.dtype and a.shape == b.shape
        np.testing.assert_array_equal(a, b)
    assert eqx.tree_equal(model, loaded)


def test_reloaded_encoder_gives_identical_outputs(tmp_path, real_dna):
    model = eqx.nn.inference_mode(MODELS["TransformerSequenceEncoder"]())
    zoo.save_pretrained(model, tmp_path)
    loaded = eqx.nn.inference_mode(zoo.from_pretrained(tmp_path))
    ids, mask = model.tokenizer(real_dna[:3])
    np.testing.assert_array_equal(
        jax.vmap(model)(jnp.asarray(ids), jnp.asarray(mask)).pooled,
        jax.vmap(loaded)(jnp.asarray(ids), jnp.asarray(mask)).pooled,
    )


def test_the_official_safetensors_reader_agrees(tmp_path):
    model = MODELS["SequenceEmbedding"]()
    zoo.save_pretrained(model, tmp_path)
    official = safetensors.numpy.load_file(tmp_path / "model.safetensors")
    ours, _ = safetensors_format.read(tmp_path / "model.safetensors")
    assert sorted(official) == sorted(ours)
    assert "rest.weight" in official and official["rest.weight"].shape[0] == 2  # stacked layers
    for key in official:
        np.testing.assert_array_equal(official[key], ours[key])


@pytest.fixture
def saved(tmp_path):
    zoo.save_pretrained(MODELS["SequenceEmbedding"](), tmp_path)
    return tmp_path


def rewrite_config(folder, change):
    data = json.loads((folder / "config.json").read_text())
    change(data)
    (folder / "config.json").write_text(json.dumps(data))


def rewrite_weights(folder, change):
    tensors, _ = safetensors_format.read(folder / "model.safetensors")
    tensors = {k: np.array(v) for k, v in tensors.items()}
    change(tensors)
    safetensors_format.write(folder / "model.safetensors", tensors)


def test_unknown_architecture(saved):
    rewrite_config(saved, lambda d: d.update(architecture="os.system"))
    with pytest.raises(CheckpointError, match=r"unknown architecture 'os.system'"):
        zoo.from_pretrained(saved)


def test_unknown_config_field(saved):
    rewrite_config(saved, lambda d: d["config"].update(n_filters=3))
    with pytest.raises(CheckpointError, match="n_filters"):
        zoo.from_pretrained(saved)


def test_missing_and_unexpected_keys_are_listed(saved):
    def change(t):
        del t["first.bias"], t["projection.weight"]
        t["extra.weight"] = np.zeros(3, np.float32)

    rewrite_weights(saved, change)
    with pytest.raises(CheckpointError) as error:
        zoo.from_pretrained(saved)
    message = str(error.value)
    assert "missing keys: ['first.bias', 'projection.weight']" in message
    assert "unexpected keys: ['extra.weight']" in message


def test_shape_and_dtype_mismatches_are_listed(saved):
    def change(t):
        t["first.bias"] = np.zeros((3, 1), np.float32)
        t["projection.bias"] = t["projection.bias"].astype(np.float16)

    rewrite_weights(saved, change)
    with pytest.raises(CheckpointError) as error:
        zoo.from_pretrained(saved)
    assert "first.bias: shape (3, 1)" in str(error.value)
    assert "projection.bias: dtype float16" in str(error.value)


def test_truncated_weights(saved):
    path = saved / "model.safetensors"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(
        CheckpointError,
        match=r"model.safetensors is not a valid safetensors file.*download or save it again",
    ):
        zoo.from_pretrained(saved)


@pytest.mark.parametrize(
    "corrupt",
    [
        lambda b: b[:8] + b"{not json" + b[17:],
        lambda b: (10**12).to_bytes(8, "little") + b[8:],
        lambda b: b[:3],
        lambda b: b.replace(b'"F32"', b'"F99"', 1),
    ],
)
def test_corrupted_weights(saved, corrupt):
    path = saved / "model.safetensors"
    path.write_bytes(corrupt(path.read_bytes()))
    with pytest.raises(CheckpointError, match="truncated or corrupted"):
        zoo.from_pretrained(saved)


def test_not_a_checkpoint_folder(tmp_path):
    with pytest.raises(CheckpointError, match=r"no config\.json"):
        zoo.from_pretrained(tmp_path)
