"""Sharded weights: the Hub's layout (checked against ``huggingface_hub``'s own reader of
sharded checkpoints), safe index handling, and loading each array straight onto a device
sharding."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import equinox as eqx
import jax
import numpy as np
import pytest
import torch
from huggingface_hub import load_torch_model

import zoo
from checkpoints import CheckpointError, safetensors_format, shards
from checkpoints.pretrained import abstract_model


def encoder() -> zoo.TransformerSequenceEncoder:
    config = zoo.TransformerSequenceEncoderConfig(kmer=3, positions="learned", max_len=64)
    return zoo.TransformerSequenceEncoder(config, key=jax.random.key(0))


def torch_module_with(shapes: dict[str, tuple[int, ...]]) -> torch.nn.Module:
    """A torch module with a zero buffer at each dotted key."""
    root = torch.nn.Module()
    for key, shape in shapes.items():
        *path, leaf = key.split(".")
        module = root
        for part in path:
            if not hasattr(module, part):
                module.add_module(part, torch.nn.Module())
            module = getattr(module, part)
        module.register_buffer(leaf, torch.zeros(shape))
    return root


def arrays_of(model: eqx.Module) -> list[np.ndarray]:
    return [np.asarray(x) for x in jax.tree.leaves(eqx.filter(model, eqx.is_array))]


def test_sharded_save_is_read_by_transformers_and_round_trips(tmp_path):
    model = encoder()
    folder = zoo.save_pretrained(model, tmp_path / "ckpt", max_shard_size=40_000)
    index = json.loads((folder / shards.INDEX_FILE).read_text())
    names = sorted(set(index["weight_map"].values()))
    n = len(names)
    assert n > 3 and names == [f"model-{i:05d}-of-{n:05d}.safetensors" for i in range(1, n + 1)]
    for name in names:
        header, _, _ = safetensors_format.read_header(folder / name)
        sizes = [np.prod(e["shape"]) * 4 for e in header.values()]
        assert sum(sizes) <= 40_000 or len(sizes) == 1  # only a lone oversize tensor exceeds it

    # huggingface_hub's reader of sharded checkpoints fills a torch module with the same tensors
    one = zoo.save_pretrained(model, tmp_path / "one")
    single, _ = safetensors_format.read(one / "model.safetensors")
    module = torch_module_with({k: v.shape for k, v in single.items()})
    as_torch = tmp_path / "as-torch"  # the same files, labelled as torch's ("format": "pt")
    as_torch.mkdir()
    (as_torch / shards.INDEX_FILE).write_bytes((folder / shards.INDEX_FILE).read_bytes())
    for name in names:
        tensors, _ = safetensors_format.read(folder / name)
        safetensors_format.write(as_torch / name, tensors, {"format": "pt"})
    load_torch_model(module, as_torch, strict=True)
    for key, value in module.state_dict().items():
        np.testing.assert_array_equal(value.numpy(), single[key])

    loaded = zoo.from_pretrained(folder)
    for a, b in zip(arrays_of(model), arrays_of(loaded), strict=True):
        np.testing.assert_array_equal(a, b)

    zoo.save_pretrained(model, folder)  # one file now: the shards and index are removed
    assert shards.weight_file_names(folder) == ["model.safetensors"]


def test_broken_or_hostile_indexes_are_refused(tmp_path):
    folder = zoo.save_pretrained(encoder(), tmp_path / "ckpt", max_shard_size=40_000)
    index_path = folder / shards.INDEX_FILE
    index = json.loads(index_path.read_text())
    key = sorted(index["weight_map"])[0]

    hostile = dict(index, weight_map=dict(index["weight_map"], **{key: "../../etc/passwd"}))
    index_path.write_text(json.dumps(hostile))
    with pytest.raises(CheckpointError, match="names files that are not shards"):
        zoo.from_pretrained(folder)

    moved = sorted(set(index["weight_map"].values()) - {index["weight_map"][key]})[0]
    index_path.write_text(
        json.dumps(dict(index, weight_map=dict(index["weight_map"], **{key: moved})))
    )
    with pytest.raises(CheckpointError, match=rf"holds \['{key}'\] that the index does not"):
        zoo.from_pretrained(folder)

    index_path.write_text(json.dumps(index))
    safetensors_format.write(folder / "model.safetensors", {})
    with pytest.raises(CheckpointError, match=r"holds both model\.safetensors and"):
        zoo.from_pretrained(folder)


def test_max_shard_size_must_be_positive(tmp_path):
    with pytest.raises(ValueError, match="must be positive"):
        zoo.save_pretrained(encoder(), tmp_path, max_shard_size=0)


PLACEMENT = textwrap.dedent(
    """
    import sys
    import jax, numpy as np, equinox as eqx
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    import zoo
    from checkpoints.pretrained import abstract_model
    from checkpoints.tree_keys import named_leaves

    folder = sys.argv[1]
    mesh = Mesh(np.array(jax.devices()).reshape(2, 2), ("fsdp", "model"))
    skeleton = abstract_model(folder)
    def rule(leaf):
        if leaf.ndim >= 2 and leaf.shape[-1] % 2 == 0 and leaf.shape[-2] % 2 == 0:
            return NamedSharding(mesh, P(*[None] * (leaf.ndim - 2), "fsdp", "model"))
        return NamedSharding(mesh, P())
    is_shape = lambda leaf: isinstance(leaf, jax.ShapeDtypeStruct)
    shardings = jax.tree.map(lambda leaf: rule(leaf) if is_shape(leaf) else None, skeleton)
    model = zoo.from_pretrained(folder, shardings=shardings)
    whole = zoo.from_pretrained(folder)
    split = 0
    for key, array in named_leaves(model, eqx.is_array).items():
        expected = named_leaves(whole, eqx.is_array)[key]
        assert array.sharding == named_leaves(shardings, lambda s: True)[key], key
        np.testing.assert_array_equal(np.asarray(array), np.asarray(expected))
        shapes = {s.data.shape for s in array.addressable_shards}
        split += any(shape != array.shape for shape in shapes)
    print("SPLIT", split, "OF", len(named_leaves(model, eqx.is_array)))
    """
)


def test_loading_places_each_array_on_its_sharding(tmp_path):
    folder = zoo.save_pretrained(encoder(), tmp_path / "ckpt", max_shard_size=40_000)
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4")
    env["JAX_PLATFORMS"] = "cpu"
    result = subprocess.run(
        [sys.executable, "-c", PLACEMENT, str(folder)],
        env=env,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    split, total = [int(w) for w in result.stdout.split() if w.isdigit()]
    assert split >= 10 and total > split  # the weight matrices were really divided


def test_shardings_must_cover_the_model(tmp_path):
    folder = zoo.save_pretrained(encoder(), tmp_path / "ckpt")
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    skeleton = eqx.filter(abstract_model(folder), lambda x: isinstance(x, jax.ShapeDtypeStruct))
    partial = eqx.tree_at(lambda m: m.mlm_bias, jax.tree.map(lambda _: device, skeleton), None)
    with pytest.raises(ValueError, match=r"no sharding for \['mlm_bias'\]"):
        zoo.from_pretrained(folder, shardings=partial)
    model = zoo.from_pretrained(folder, shardings=device)
    assert model.mlm_bias.sharding == device


SLICE_READS = textwrap.dedent(
    """
    import json, sys
    import jax, numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    import zoo
    from checkpoints import safetensors_format
    from checkpoints.pretrained import abstract_model
    from checkpoints.tree_keys import named_leaves

    reads = {}
    read = safetensors_format.StoredTensor.read
    def spy(self, index=None):
        piece = read(self, index)
        reads.setdefault(self.key, []).append([index is None, piece.size])
        return piece
    safetensors_format.StoredTensor.read = spy

    mesh = Mesh(np.array(jax.devices()).reshape(2, 2), ("fsdp", "model"))
    def rule(leaf):
        if leaf.ndim >= 2 and leaf.shape[-1] % 2 == 0 and leaf.shape[-2] % 2 == 0:
            return NamedSharding(mesh, P(*[None] * (leaf.ndim - 2), "fsdp", "model"))
        return NamedSharding(mesh, P())
    is_shape = lambda leaf: isinstance(leaf, jax.ShapeDtypeStruct)
    skeleton = abstract_model(sys.argv[1])
    shardings = jax.tree.map(lambda leaf: rule(leaf) if is_shape(leaf) else None, skeleton)
    zoo.from_pretrained(sys.argv[1], shardings=shardings)
    sizes = {
        key: [int(np.prod(leaf.shape)), rule(leaf).spec != P()]
        for key, leaf in named_leaves(skeleton, is_shape).items()
    }
    print(json.dumps({"reads": reads, "sizes": sizes}))
    """
)


def test_each_device_reads_only_its_slice(tmp_path):
    folder = zoo.save_pretrained(encoder(), tmp_path / "ckpt", max_shard_size=40_000)
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4")
    env["JAX_PLATFORMS"] = "cpu"
    result = subprocess.run(
        [sys.executable, "-c", SLICE_READS, str(folder)], env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-3000:]
    found = json.loads(result.stdout.splitlines()[-1])
    reads, sizes = found["reads"], found["sizes"]
    assert sorted(reads) == sorted(sizes)
    split = [key for key, (_, is_split) in sizes.items() if is_split]
    assert len(split) >= 10
    for key, pieces in reads.items():
        assert not any(whole for whole, _ in pieces), f"{key} was read whole, not by slice"
        size, is_split = sizes[key]
        if is_split:  # four quarters, one per device: the tensor's bytes are read once
            assert [n for _, n in pieces] == [size // 4] * 4, key
        else:  # replicated: JAX reads it once for the devices that share the same piece
            assert {n for _, n in pieces} == {size} and len(pieces) <= 4, key
