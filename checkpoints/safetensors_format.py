"""Reading and writing the safetensors format with the header validated before any use.

The format (https://github.com/huggingface/safetensors): an 8-byte little-endian header
length ``n``, ``n`` bytes of JSON mapping each tensor name to ``dtype``, ``shape`` and
``data_offsets`` ``[begin, end)`` into the byte buffer that follows (plus an optional
``__metadata__`` map of strings), then the buffer. Tensors must tile the buffer exactly.

Reading maps the file and returns read-only NumPy views, so nothing is copied until an array
is placed on a device. No code is executed on load: the format cannot hold any.
"""

from __future__ import annotations

import json
import math
import os
import struct
from pathlib import Path

import ml_dtypes
import numpy as np

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
MAX_HEADER_BYTES = 100_000_000


class CorruptWeightsError(ValueError):
    """A weights file is truncated, corrupted or not safetensors."""


def write(
    path: str | os.PathLike, tensors: dict[str, np.ndarray], metadata: dict[str, str] | None = None
) -> None:
    """Write `tensors` to `path` atomically (a temporary file renamed into place)."""
    header: dict[str, object] = {"__metadata__": dict(metadata)} if metadata else {}
    offset = 0
    arrays = {}
    for name in sorted(tensors):
        array = np.ascontiguousarray(tensors[name])
        if array.dtype not in NAMES:
            raise TypeError(
                f"tensor {name!r} has dtype {array.dtype}, which safetensors cannot store"
            )
        header[name] = {
            "dtype": NAMES[array.dtype],
            "shape": list(array.shape),
            "data_offsets": [offset, offset + array.nbytes],
        }
        arrays[name] = array
        offset += array.nbytes
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)  # keep the buffer 8-byte aligned
    path = Path(path)
    partial = path.with_name(path.name + ".partial")
    with open(partial, "wb") as f:
        f.write(struct.pack("<Q", len(encoded)))
        f.write(encoded)
        for array in arrays.values():
            f.write(memoryview(array.reshape(-1).view(np.uint8)))
    os.replace(partial, path)


def read_header(path: str | os.PathLike) -> tuple[dict[str, dict], dict[str, str], int]:
    """Parse and validate the header of `path`.

    Returns:
        ``(entries, metadata, data_start)``: per-tensor ``dtype`` / ``shape`` /
        ``data_offsets``, the ``__metadata__`` map, and the byte offset of the buffer.

    Raises:
        CorruptWeightsError: naming the file and what is wrong with it.
    """
    path = Path(path)
    size = path.stat().st_size

    def fail(problem: str) -> CorruptWeightsError:
        return CorruptWeightsError(
            f"{path} is not a valid safetensors file ({problem}); it is truncated or corrupted: "
            "delete it and download or save it again"
        )

    if size < 8:
        raise fail(f"only {size} bytes")
    with open(path, "rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        if length > min(size - 8, MAX_HEADER_BYTES):
            raise fail(f"header length {length} does not fit in {size} bytes")
        try:
            header = json.loads(f.read(length))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise fail(f"header is not JSON: {error}") from None
    if not isinstance(header, dict):
        raise fail("header is not a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise fail("__metadata__ must map strings to strings")
    data_size = size - 8 - length
    spans = []
    for name, entry in header.items():
        if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
            raise fail(f"entry {name!r} must have exactly dtype, shape and data_offsets")
        dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
        if dtype not in DTYPES:
            raise fail(f"tensor {name!r} has unknown dtype {dtype!r}")
        if not (isinstance(shape, list) and all(isinstance(d, int) and d >= 0 for d in shape)):
            raise fail(f"tensor {name!r} has invalid shape {shape!r}")
        if not (
            isinstance(offsets, list)
            and len(offsets) == 2
            and all(isinstance(o, int) for o in offsets)
        ):
            raise fail(f"tensor {name!r} has invalid data_offsets {offsets!r}")
        begin, end = offsets
        if end - begin != math.prod(shape) * DTYPES[dtype].itemsize or begin < 0:
            raise fail(f"tensor {name!r}: data_offsets {offsets} do not match {dtype} {shape}")
        spans.append((begin, end, name))
    position = 0
    for begin, end, name in sorted(spans):
        if begin != position:
            raise fail(
                f"tensor {name!r} starts at byte {begin}, expected {position} (gap or overlap)"
            )
        position = end
    if position != data_size:
        raise fail(f"tensors cover {position} bytes but the file holds {data_size}")
    return header, metadata, 8 + length


def read(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Validated, memory-mapped, read-only arrays of every tensor in `path`, and the metadata."""
    entries, metadata, start = read_header(path)
    if Path(path).stat().st_size == start:  # nothing to map: every tensor is empty
        buffer = np.zeros(0, np.uint8)
    else:
        buffer = np.memmap(path, dtype=np.uint8, mode="r", offset=start)
    arrays = {}
    for name, entry in entries.items():
        begin, end = entry["data_offsets"]
        arrays[name] = buffer[begin:end].view(DTYPES[entry["dtype"]]).reshape(entry["shape"])
    return arrays, metadata
