"""The local checkpoint folder: bit-equal round trips and a clear error for each defect."""

import json

import equinox as eqx
import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
import safetensors.numpy

import zoo
from checkpoints import CheckpointError, CorruptWeightsError, safetensors_format

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


# The weight file itself, written and read through the safetensors package.


def test_bfloat16_round_trips_bit_exactly_and_torch_reads_the_same_bits(tmp_path):
    import safetensors.torch
    import torch

    bits = np.random.default_rng(0).integers(0, 2**16, size=(64, 33), dtype=np.uint16)
    bits[0, :4] = [0x7FC0, 0x7F81, 0xFF80, 0x8000]  # quiet NaN, NaN payload, -inf, -0
    path = tmp_path / "bf16.safetensors"
    safetensors_format.write(path, {"w": bits.view(ml_dtypes.bfloat16)})
    header, _, _ = safetensors_format.read_header(path)
    assert header["w"]["dtype"] == "BF16"
    ours, _ = safetensors_format.read(path)
    assert ours["w"].dtype == ml_dtypes.bfloat16
    np.testing.assert_array_equal(ours["w"].view(np.uint16), bits)
    theirs = safetensors.torch.load_file(path)["w"]
    assert theirs.dtype == torch.bfloat16
    np.testing.assert_array_equal(theirs.view(torch.int16).numpy().view(np.uint16), bits)


def test_scalars_strided_views_and_metadata_survive(tmp_path):
    grid = np.arange(24, dtype=np.float32).reshape(4, 6)
    tensors = {"scalar": np.array(-42, np.int64), "strided": grid[:, ::2], "flag": np.array(True)}
    path = tmp_path / "mixed.safetensors"
    safetensors_format.write(path, tensors, {"format": "np"})
    official = safetensors.numpy.load_file(path)  # the library's own reader
    ours, metadata = safetensors_format.read(path)
    assert metadata == {"format": "np"}
    for name, expected in tensors.items():
        for got in (official[name], ours[name]):
            assert got.shape == expected.shape and got.dtype == expected.dtype, name
            np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize(
    "index",
    [(slice(None), slice(None)), (slice(1, 3), slice(2, 6)), (slice(0, 1), slice(5, 6))],
)
def test_a_slice_reads_that_part(tmp_path, index):
    grid = np.arange(24 * 6, dtype=np.float32).reshape(24, 6)
    path = tmp_path / "grid.safetensors"
    safetensors_format.write(path, {"grid": grid, "empty": np.zeros((0, 6), np.float32)})
    tensors, _ = safetensors_format.open_file(path)
    assert tensors["grid"].shape == (24, 6) and tensors["grid"].dtype == np.float32
    np.testing.assert_array_equal(tensors["grid"].read(index), grid[index])
    assert tensors["empty"].read(index).shape == np.zeros((0, 6))[index].shape
    assert tensors["grid"].read(index).ctypes.data % 64 == 0  # XLA's CPU client adopts it
    for bad in [(slice(None),), (slice(None, None, 2), slice(None))]:
        with pytest.raises(IndexError, match="is not one step-1 slice per axis"):
            tensors["grid"].read(bad)


def test_repeated_header_keys_are_refused_though_the_library_takes_the_last(tmp_path):
    entry = '"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}'
    header = ("{" + entry + "," + entry + "}").encode()
    path = tmp_path / "twice.safetensors"
    path.write_bytes(len(header).to_bytes(8, "little") + header + bytes(8))
    assert list(safetensors.numpy.load_file(path)) == ["w"]  # why we keep our own check
    with pytest.raises(CorruptWeightsError, match=r"repeats the keys \['w'\]"):
        safetensors_format.read(path)


def test_dtypes_we_do_not_read_give_a_clear_error(tmp_path):
    path = tmp_path / "fp8.safetensors"
    fp8 = np.zeros(4, ml_dtypes.float8_e4m3fn)
    safetensors.numpy.save_file({"w": fp8}, path)  # the library writes it ...
    with pytest.raises(AttributeError):  # ... but its NumPy reader cannot read it back
        safetensors.numpy.load_file(path)
    with pytest.raises(
        CorruptWeightsError, match=r"does not read: \{'w': 'F8_E4M3'\}; save them as one of"
    ):
        safetensors_format.read(path)
    with pytest.raises(TypeError, match="tensor 'w' has dtype float8_e4m3fn"):
        safetensors_format.write(path, {"w": fp8})


def test_an_expression_model_saves_its_genes_and_a_wrong_count_is_refused(tmp_path):
    from checkpoints import read_genes
    from zoo.expression.gene_vocabulary import GeneVocabulary

    config = zoo.DifferentiableFoundationModelConfig(
        tokenizer=zoo.GeneTokenizerConfig(n_genes=3, max_tokens=2)
    )
    model = zoo.DifferentiableFoundationModel(config, key=jax.random.key(0))
    genes = GeneVocabulary.from_names(["ENSG00000163736", "LYZ", "GNLY"])
    folder = zoo.save_pretrained(model, tmp_path / "fm", genes=genes)
    assert read_genes(folder) == genes
    with pytest.raises(CheckpointError, match=r"genes lists 2 genes for a .* reads 3 gene"):
        zoo.save_pretrained(model, tmp_path / "bad", genes=GeneVocabulary.from_names(["A", "B"]))


def test_the_same_model_saves_to_the_same_bytes_in_every_process(tmp_path):
    """Digests and bit-exact resume need reproducible files; the safetensors library writes
    its metadata map in a per-process random order (two keys came out in both orders over 4
    processes), so a checkpoint keeps one key."""
    import subprocess
    import sys

    code = (
        "import sys, jax, zoo; "
        "config = zoo.TransformerSequenceEncoderConfig(kmer=2, max_len=32); "
        "model = zoo.TransformerSequenceEncoder(config, key=jax.random.key(0)); "
        "zoo.save_pretrained(model, sys.argv[1])"
    )
    files = []
    for run in range(2):
        folder = tmp_path / str(run)
        subprocess.run([sys.executable, "-c", code, str(folder)], check=True)
        files.append((folder / "model.safetensors").read_bytes())
    assert all(f == files[0] for f in files[1:])
    with pytest.raises(ValueError, match="one metadata key"):
        safetensors_format.write(
            tmp_path / "x.safetensors", {"a": np.zeros(2)}, {"a": "1", "b": "2"}
        )
