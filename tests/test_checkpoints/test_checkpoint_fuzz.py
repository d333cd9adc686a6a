"""Fuzzing the checkpoint reader: random corruptions of real saved weights.

Every corrupted file must either be refused with a clear one-line error (`CorruptWeightsError`
from the reader, `CheckpointError` from `zoo.from_pretrained`), or load exactly the bytes the
file holds. Which outcome is allowed depends on where the damage is:

- a byte flipped in the **tensor data** can never be detected (the format has no checksum),
  so the file must load, every tensor bit-identical to the flipped bytes;
- a byte flipped in the **header** either breaks it (refused) or leaves a header that is
  still valid, such as a changed letter in a tensor name, a metadata value or a dtype of the
  same width; the reader then loads exactly what that header describes, and
  `zoo.from_pretrained` refuses it anyway (the names and dtypes no longer match the model)
  unless only metadata or whitespace changed, when the model is bit-identical;
- **truncation or extension**, **overlapping or negative offsets**, **booleans or floats where
  integers belong** and **duplicate JSON keys** are always refused.

The expected bytes come from the original header, written by ``safetensors`` and read with
``json``, never from the reader under test.
"""

from __future__ import annotations

import datetime
import itertools
import json
import os
import struct
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import zoo
from checkpoints import CheckpointError, CorruptWeightsError, safetensors_format
from checkpoints.pretrained import skeleton
from checkpoints.tree_keys import named_leaves, replace_leaves

FUZZ = settings(
    max_examples=150,
    deadline=datetime.timedelta(seconds=5),  # ~20 ms each: a parse that stalls fails
    database=None,  # write nothing into the checkout
    suppress_health_check=[HealthCheck.too_slow],
)
NUMPY_DTYPES = {name: np.dtype(d) for name, d in safetensors_format.DTYPES.items()}
TENSORS = {
    "bf16": np.arange(-7, 8, dtype=np.float32).reshape(3, 5).astype(ml_dtypes.bfloat16),
    "f32": np.linspace(-1, 1, 12, dtype=np.float32).reshape(2, 2, 3),
    "i64": np.array(-42, np.int64),
    "empty": np.zeros((0, 3), np.uint8),
    "mask": np.array([True, False, True, True, False]),
    "f16": np.arange(6, dtype=np.float16),
}
METADATA = {"format": "np"}
COUNTER = itertools.count()


def split(raw: bytes) -> tuple[dict, int]:
    """The header of `raw` (a file written by safetensors) parsed with json, and where the
    tensor data starts."""
    (length,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8 : 8 + length]), 8 + length


def decode(header: dict, raw: bytes, start: int) -> dict[str, np.ndarray]:
    """The tensors `header` describes over the bytes of `raw` from `start` on."""
    out = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        begin, end = entry["data_offsets"]
        data = np.frombuffer(raw[start + begin : start + end], NUMPY_DTYPES[entry["dtype"]])
        out[name] = data.reshape(entry["shape"])
    return out


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    """Equal dtype, shape and bytes (NaN payloads included)."""
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def put(folder: Path, raw: bytes) -> Path:
    """Write `raw` as a new file and rename it to ``folder/model.safetensors``; an earlier
    file still mapped by a live handle keeps its own bytes."""
    scratch = folder / f"fuzz-{next(COUNTER)}.tmp"
    scratch.write_bytes(raw)
    path = folder / "model.safetensors"
    os.replace(scratch, path)
    return path


def flip_bytes(max_flips: int) -> st.SearchStrategy[list[tuple[int, int]]]:
    """Up to `max_flips` ``(position, xor mask)`` pairs; positions wrap around the file."""
    flip = st.tuples(st.integers(0, 10**6), st.integers(1, 255))
    return st.lists(flip, min_size=1, max_size=max_flips)


def flipped(raw: bytes, flips: list[tuple[int, int]]) -> tuple[bytes, bool]:
    """`raw` with the `flips` applied, and whether they all fell in the tensor data."""
    out = bytearray(raw)
    for position, mask in flips:
        out[position % len(out)] ^= mask
    _, start = split(raw)
    return bytes(out), all(position % len(raw) >= start for position, _ in flips)


def assert_clear(error: Exception, path: Path) -> None:
    message = str(error)
    assert "\n" not in message and str(path) in message, message


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> tuple[Path, bytes]:
    folder = tmp_path_factory.mktemp("fuzz-format")
    safetensors_format.write(folder / "model.safetensors", TENSORS, METADATA)
    return folder, (folder / "model.safetensors").read_bytes()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> tuple[Path, bytes]:
    # random weights poured into the skeleton: an eager initialisation takes ~30 s here
    config = zoo.SequenceEmbeddingConfig(hidden_channels=8, embedding_dim=4)
    is_shape = lambda leaf: isinstance(leaf, jax.ShapeDtypeStruct)  # noqa: E731
    shapes = skeleton("SequenceEmbedding", config)
    rng = np.random.default_rng(0)
    values = {
        key: jnp.asarray(rng.standard_normal(leaf.shape).astype(leaf.dtype))
        for key, leaf in named_leaves(shapes, is_shape).items()
    }
    model = replace_leaves(shapes, is_shape, values)
    folder = zoo.save_pretrained(model, tmp_path_factory.mktemp("fuzz-model"))
    raw = (folder / "model.safetensors").read_bytes()
    header, start = split(raw)
    expected = decode(header, raw, start)
    for key, array in named_leaves(model, eqx.is_array).items():  # the oracle reads the file
        assert same_bits(np.asarray(array), expected[key]), key
    return folder, raw


def test_the_unbroken_file_loads_as_written(weights):
    folder, raw = weights
    arrays, metadata = safetensors_format.read(put(folder, raw))
    assert metadata == METADATA and sorted(arrays) == sorted(TENSORS)
    for name, array in TENSORS.items():
        assert same_bits(arrays[name], array), name
    header, start = split(raw)
    for name, array in decode(header, raw, start).items():  # the oracle agrees too
        assert same_bits(array, TENSORS[name]), name


@FUZZ
@given(flips=flip_bytes(3))
def test_byte_flips_are_refused_or_load_exactly_the_flipped_bytes(weights, flips):
    folder, raw = weights
    broken, data_only = flipped(raw, flips)
    path = put(folder, broken)
    try:
        arrays, metadata = safetensors_format.read(path)
    except CorruptWeightsError as error:
        assert not data_only, f"a flip in tensor data only was refused: {error}"
        assert_clear(error, path)
        return
    # data flips: the original header over the flipped bytes; header flips that leave a
    # valid header: exactly what the flipped header now describes
    header, start = split(raw if data_only else broken)
    assert metadata == header.get("__metadata__", {})
    expected = decode(header, broken, start)
    assert sorted(arrays) == sorted(expected)
    for name, array in expected.items():
        assert same_bits(arrays[name], array), name


@FUZZ
@given(
    change=st.one_of(
        st.integers(0, 10**6).map(lambda cut: ("cut", cut)),
        st.binary(min_size=1, max_size=64).map(lambda extra: ("extend", extra)),
    )
)
def test_truncated_or_extended_files_are_refused(weights, change):
    folder, raw = weights
    kind, value = change
    broken = raw[: value % len(raw)] if kind == "cut" else raw + value
    path = put(folder, broken)
    with pytest.raises(CorruptWeightsError, match="truncated or corrupted") as error:
        safetensors_format.read(path)
    assert_clear(error.value, path)


class Spelled(list):
    """A JSON object written as these ``(key, value)`` pairs in order, so a key may repeat."""


def spell(value: object) -> str:
    if isinstance(value, Spelled):
        return "{" + ",".join(f"{json.dumps(k)}:{spell(v)}" for k, v in value) + "}"
    return json.dumps(value)


def encode(header: Spelled, data: bytes) -> bytes:
    """A safetensors file of `header` (padded to 8 bytes, as safetensors does) and `data`."""
    text = spell(header)
    text += " " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text.encode() + data


@st.composite
def hostile_headers(draw, header: dict) -> Spelled:
    """`header` made invalid: overlapping or negative offsets, a boolean or float where an
    integer belongs, or a repeated JSON key (a tensor, a metadata key or an entry's field)."""
    pairs = Spelled((k, json.loads(json.dumps(v))) for k, v in header.items())  # deep copy
    filled = [
        i
        for i, (k, v) in enumerate(pairs)
        if k != "__metadata__" and v["data_offsets"][1] > v["data_offsets"][0]
    ]
    i = draw(st.sampled_from(filled))
    name, entry = pairs[i]
    begin, end = entry["data_offsets"]
    kind = draw(st.sampled_from(["overlap", "negative", "boolean", "float", "duplicate"]))
    if kind == "overlap":  # move the tensor so that it starts inside another one
        other_begin, other_end = pairs[draw(st.sampled_from([j for j in filled if j != i]))][1][
            "data_offsets"
        ]
        moved = draw(st.integers(other_begin, other_end - 1))
        entry["data_offsets"] = [moved, moved + end - begin]
    elif kind == "negative":
        entry["data_offsets"][draw(st.integers(0, 1))] = -draw(st.integers(1, 10**6))
    elif kind in ("boolean", "float"):
        field = draw(
            st.sampled_from(["data_offsets", "shape"] if entry["shape"] else ["data_offsets"])
        )
        which = draw(st.integers(0, len(entry[field]) - 1))
        number = entry[field][which]
        entry[field][which] = draw(st.booleans()) if kind == "boolean" else float(number)
    else:
        where = draw(st.sampled_from(["tensor", "metadata key", "field"]))
        if where == "tensor":  # the same entry twice: the library alone lets this pass
            pairs.insert(draw(st.integers(0, len(pairs))), (name, dict(entry)))
        elif where == "metadata key":
            m = next(j for j, (k, _) in enumerate(pairs) if k == "__metadata__")
            key = draw(st.sampled_from(sorted(METADATA)))
            value = draw(st.sampled_from([METADATA[key], "other"]))
            pairs[m] = ("__metadata__", Spelled([*METADATA.items(), (key, value)]))
        else:
            field = draw(st.sampled_from(sorted(entry)))
            pairs[i] = (name, Spelled([*entry.items(), (field, entry[field])]))
    return pairs


@FUZZ
@given(data=st.data())
def test_hostile_headers_are_refused(weights, data):
    folder, raw = weights
    header, start = split(raw)
    path = put(folder, encode(data.draw(hostile_headers(header)), raw[start:]))
    with pytest.raises(CorruptWeightsError, match="truncated or corrupted") as error:
        safetensors_format.read(path)
    assert_clear(error.value, path)


@FUZZ
@given(flips=flip_bytes(2))
def test_from_pretrained_refuses_or_loads_bit_identical_weights(checkpoint, flips):
    folder, raw = checkpoint
    broken, data_only = flipped(raw, flips)
    put(folder, broken)
    try:
        loaded = zoo.from_pretrained(folder)
    except CheckpointError as error:
        assert not data_only and str(folder) in str(error), error
        return
    header, start = split(raw)
    expected = decode(header, broken, start)  # original names, offsets and dtypes
    for key, array in named_leaves(loaded, eqx.is_array).items():
        assert same_bits(np.asarray(array), expected[key]), key
