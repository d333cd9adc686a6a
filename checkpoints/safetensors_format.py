"""Reading and writing safetensors weight files through the ``safetensors`` package.

The format (https://github.com/huggingface/safetensors): an 8-byte little-endian header
length ``n``, ``n`` bytes of JSON mapping each tensor name to ``dtype``, ``shape`` and
``data_offsets`` ``[begin, end)`` into the byte buffer that follows (plus an optional
``__metadata__`` map of strings), then the buffer. No code is executed on load: the format
cannot hold any.

What the library does (safetensors 0.8): ``safe_open`` memory-maps the file and validates
the whole header before any tensor is read: its size, UTF-8 and JSON, known dtypes,
non-negative integer shapes and offsets (booleans, floats and negative numbers are refused),
offsets that match dtype x shape, tensors that tile the buffer with no gap or overlap, a
buffer that exactly fills the file (so truncated or padded files fail), and string-only
metadata. ``save_file`` writes the header and data and renames the file into place.

What stays ours, and why:

- **Duplicate JSON keys.** The library keeps the last of two entries with the same name
  (a tensor or a metadata key) without a word when the offsets still tile, so two readers
  could disagree about what a file holds; we refuse duplicates at every level.
- **Dtypes.** We read and write exactly `DTYPES`. The library's NumPy binding fails with a
  raw ``AttributeError`` on the float8 and float4 types, and it reads BF16 only once
  ``ml_dtypes`` has registered ``bfloat16`` with NumPy, which importing it here ensures.
  Checking on write too means we never write what we cannot read back.
- **Contiguity.** ``save_file`` copies ``nbytes`` from each array's data pointer, so a
  strided view would be written as the wrong numbers; every array is made contiguous first
  (with ``np.asarray(order="C")``: ``np.ascontiguousarray`` would turn a scalar into shape 1).
- **How bytes are copied out.** Once the library has validated the header, a tensor (or the
  part of it one device holds) is copied straight out of a NumPy memory map of the file, at
  the offsets of the header, into one array we allocate, aligned to 64 bytes; only the pages
  of the part asked for are touched. The library's own reads (``get_tensor``,
  ``get_slice``) return every read in a fresh ``bytearray``: for the benchmark's largest
  tensor (67 MB) ``get_tensor`` took 0.16-0.20 s on this (shared, loaded) machine,
  ``get_slice`` in 4 MiB runs 0.09 s, the copy out of the map 0.02 s, which keeps a load as
  fast as reading the file's bytes. The library's 16-byte alignment also made XLA's CPU
  client copy every piece once more, and as JAX reads all devices' pieces before building
  an array, that doubled the staging memory of a sharded load.
- **Errors.** Every error the library raises on a bad file (``SafetensorError``, or a Rust
  panic should one escape) becomes `CorruptWeightsError`, one line naming the file.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import struct
from collections.abc import Iterator
from pathlib import Path

import ml_dtypes
import numpy as np
import safetensors
import safetensors.numpy

DTYPES: dict[str, np.dtype] = {
    "F64": np.dtype(np.float64),
    "F32": np.dtype(np.float32),
    "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "I64": np.dtype(np.int64),
    "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16),
    "I8": np.dtype(np.int8),
    "U64": np.dtype(np.uint64),
    "U32": np.dtype(np.uint32),
    "U16": np.dtype(np.uint16),
    "U8": np.dtype(np.uint8),
    "BOOL": np.dtype(np.bool_),
}
NAMES = {dtype: name for name, dtype in DTYPES.items()}
ALIGNMENT = 64  # bytes; XLA's CPU client adopts host buffers aligned this way, without a copy


class CorruptWeightsError(ValueError):
    """A weights file is truncated, corrupted or not safetensors."""


def corrupt(path: Path, problem: str) -> CorruptWeightsError:
    """The one-line error for the weights file `path` and what is wrong with it."""
    problem = " ".join(problem.split())
    return CorruptWeightsError(
        f"{path} is not a valid safetensors file ({problem}); it is truncated or corrupted: "
        "delete it and download or save it again"
    )


@contextlib.contextmanager
def library_errors(path: Path) -> Iterator[None]:
    """Turn the library's errors about the file `path` into `CorruptWeightsError`."""
    try:
        yield
    except safetensors.SafetensorError as error:
        raise corrupt(path, str(error)) from None
    except BaseException as error:  # a Rust panic is a BaseException named PanicException
        if type(error).__name__ == "PanicException":
            raise corrupt(path, f"the safetensors library failed: {error}") from None
        raise


@dataclasses.dataclass(frozen=True)
class StoredTensor:
    """One tensor of an opened, validated safetensors file; its bytes are read on demand.

    Attributes:
        path: the file.
        key: the tensor's name in the file.
        shape: its shape.
        dtype: its NumPy dtype.
        stored: the tensor's bytes in a read-only memory map of `path`, as an array.
    """

    path: Path
    key: str
    shape: tuple[int, ...]
    dtype: np.dtype
    stored: np.ndarray = dataclasses.field(repr=False)

    def read(self, index: tuple[slice, ...] | None = None) -> np.ndarray:
        """A fresh, 64-byte-aligned array of the whole tensor, or of the part `index` (one
        slice of step 1 per axis) selects; only the bytes of that part are read."""
        index = tuple(slice(None) for _ in self.shape) if index is None else index
        if len(index) != len(self.shape) or any(s.step not in (None, 1) for s in index):
            raise IndexError(f"index {index} is not one step-1 slice per axis of {self.shape}")
        part = self.stored[index]
        out = aligned_empty(part.shape, self.dtype)
        out[...] = part
        return out


def aligned_empty(shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """An uninitialised array in fresh memory aligned to `ALIGNMENT` bytes."""
    nbytes = math.prod(shape) * dtype.itemsize
    raw = np.empty(nbytes + ALIGNMENT, np.uint8)
    start = -raw.ctypes.data % ALIGNMENT
    return raw[start : start + nbytes].view(dtype).reshape(shape)


def open_file(path: str | os.PathLike) -> tuple[dict[str, StoredTensor], dict[str, str]]:
    """Open and validate `path`, reading no tensor bytes yet.

    Returns:
        ``({name: StoredTensor}, metadata)``; the file stays mapped while any of the
        tensors is alive.

    Raises:
        FileNotFoundError: if `path` does not exist.
        CorruptWeightsError: naming the file and what is wrong with it.
    """
    path = Path(path)
    with library_errors(path):  # validates the whole header: see the module docstring
        handle = safetensors.safe_open(path, framework="numpy")
        slices = {key: handle.get_slice(key) for key in handle.keys()}  # noqa: SIM118 (not a dict)
        metadata = handle.metadata() or {}
    unknown = {key: s.get_dtype() for key, s in slices.items() if s.get_dtype() not in DTYPES}
    if unknown:  # a valid file, but not one we can hand to NumPy and JAX as it is
        raise CorruptWeightsError(
            f"{path} holds tensors in dtypes this project does not read: {unknown}; "
            f"save them as one of {sorted(DTYPES)}"
        )
    entries, data_start = header_json(path)  # refuse repeated keys the library let pass
    mapped = np.memmap(path, np.uint8, mode="r")

    def stored(key: str, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        begin, end = entries[key]["data_offsets"]
        return mapped[data_start + begin : data_start + end].view(dtype).reshape(shape)

    tensors = {}
    for key, s in slices.items():
        shape, dtype = tuple(s.get_shape()), DTYPES[s.get_dtype()]
        tensors[key] = StoredTensor(path, key, shape, dtype, stored(key, shape, dtype))
    return tensors, metadata


def read(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Every tensor in `path` as a fresh array, and the metadata (see `open_file`)."""
    tensors, metadata = open_file(path)
    return {key: tensor.read() for key, tensor in tensors.items()}, metadata


def header_json(path: Path) -> tuple[dict, int]:
    """The header of `path` parsed as JSON, refusing a key repeated in any one object, and
    the byte offset of the buffer after it."""

    def unique(pairs: list[tuple[str, object]]) -> dict:
        keys = [key for key, _ in pairs]
        repeated = sorted({key for key in keys if keys.count(key) > 1})
        if repeated:
            raise corrupt(path, f"the header repeats the keys {repeated}")
        return dict(pairs)

    with open(path, "rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        text = f.read(length)
    try:
        return json.loads(text, object_pairs_hook=unique), 8 + length
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise corrupt(path, f"header is not JSON: {error}") from None


def read_header(path: str | os.PathLike) -> tuple[dict[str, dict], dict[str, str], int]:
    """Parse and validate the header of `path`.

    Returns:
        ``(entries, metadata, data_start)``: per-tensor ``dtype`` / ``shape`` /
        ``data_offsets``, the ``__metadata__`` map, and the byte offset of the buffer.

    Raises:
        CorruptWeightsError: naming the file and what is wrong with it.
    """
    _, metadata = open_file(path)
    entries, data_start = header_json(Path(path))
    entries.pop("__metadata__", None)
    return entries, metadata, data_start


def write(
    path: str | os.PathLike, tensors: dict[str, np.ndarray], metadata: dict[str, str] | None = None
) -> None:
    """Write `tensors` and `metadata` to `path` with ``safetensors.numpy.save_file``, which
    writes a temporary file and renames it into place.

    The library writes the metadata map in an order that changes from process to process
    (a Rust ``HashMap``), so a file with two metadata keys is not byte-reproducible, and a
    checkpoint's digest or a bit-exact resume would depend on the run. At most one key is
    therefore allowed.

    Raises:
        TypeError: naming a tensor whose dtype is not in `DTYPES`.
        ValueError: `metadata` has more than one key.
    """
    if metadata and len(metadata) > 1:
        raise ValueError(
            f"safetensors metadata takes one metadata key here (got {sorted(metadata)}): the "
            "library writes several in a random order, so the file would not be reproducible"
        )
    arrays = {}
    for name, tensor in tensors.items():
        array = np.asarray(tensor)
        if array.dtype not in NAMES:
            raise TypeError(
                f"tensor {name!r} has dtype {array.dtype}, which safetensors cannot store"
            )
        arrays[name] = np.asarray(array, order="C")  # ascontiguousarray would make 0-d 1-d
    safetensors.numpy.save_file(arrays, path, metadata=dict(metadata) if metadata else None)
