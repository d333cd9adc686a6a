"""A restricted unpickler for plain-data pickles, such as Geneformer's gene dictionaries
(token ids and gene medians, published only as pickles).

Unpickling calls whatever global the stream names, so a pickle is a program. This loader
runs only the opcodes that build dicts, lists, tuples, strings, numbers, booleans and None,
and admits just these globals, by exact module and name:

- ``numpy.core.multiarray.scalar`` / ``numpy._core.multiarray.scalar`` (how numpy 1.x and
  2.x pickle a scalar such as ``numpy.int16(3)``), only with a numeric dtype and bytes;
- ``numpy.dtype``, only for boolean, integer and floating dtypes;
- ``_codecs.encode``, only with the ``latin1`` codec (how protocol 2 pickles the bytes of a
  numpy scalar).

Any other global is refused before it is looked up or called, with an error naming it; so
a malicious pickle runs nothing. numpy scalars come back as numpy scalars.
"""

from __future__ import annotations

import codecs
import io
import os
import pickle
from pathlib import Path

import numpy as np

from checkpoints.errors import CheckpointError

NUMERIC_KINDS = "biuf"  # boolean, signed and unsigned integer, floating


class UnsafePickleError(CheckpointError):
    """A pickle names a global outside the plain-data allow list (the message names it)."""


def _numeric_dtype(spec: object, *args: object) -> np.dtype:
    """``numpy.dtype(spec, ...)`` for a numeric dtype; anything else is refused."""
    if not isinstance(spec, str):
        raise UnsafePickleError(f"numpy.dtype with a non-string spec {spec!r} is not plain data")
    dtype = np.dtype(spec)
    if dtype.kind not in NUMERIC_KINDS:
        raise UnsafePickleError(f"numpy.dtype {spec!r} is not a numeric dtype")
    return np.dtype(spec, *args)


def _numeric_scalar(dtype: object, data: object) -> np.generic:
    """The numpy scalar of a numeric `dtype` stored in the bytes `data`."""
    if not isinstance(dtype, np.dtype) or dtype.kind not in NUMERIC_KINDS:
        raise UnsafePickleError(f"numpy scalar of dtype {dtype!r} is not plain data")
    if not isinstance(data, bytes) or len(data) != dtype.itemsize:
        raise UnsafePickleError(f"numpy scalar of dtype {dtype} needs {dtype.itemsize} bytes")
    return np.frombuffer(data, dtype)[0]


def _latin1_encode(text: object, encoding: object = "utf-8") -> bytes:
    """``_codecs.encode(text, "latin1")``; any other codec is refused."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise UnsafePickleError(f"_codecs.encode with codec {encoding!r} is not plain data")
    return codecs.encode(text, "latin1")


ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "scalar"): _numeric_scalar,
    ("numpy._core.multiarray", "scalar"): _numeric_scalar,
    ("numpy", "dtype"): _numeric_dtype,
    ("_codecs", "encode"): _latin1_encode,
}


class PlainDataUnpickler(pickle.Unpickler):
    """`pickle.Unpickler` whose `find_class` admits only `ALLOWED_GLOBALS`."""

    def find_class(self, module: str, name: str) -> object:
        """The safe stand-in for an allowed global.

        Raises:
            UnsafePickleError: naming ``module.name`` for any other global.
        """
        if (module, name) in ALLOWED_GLOBALS:
            return ALLOWED_GLOBALS[module, name]
        raise UnsafePickleError(
            f"refusing to unpickle global {module}.{name}: only plain data (dict, list, str, "
            "int, float, bool, None and numpy numeric scalars) is allowed"
        )


def loads_plain_data(data: bytes) -> object:
    """Unpickle `data`, admitting only plain data (see the module docstring).

    Raises:
        UnsafePickleError: naming the first global outside the allow list.
        CheckpointError: when the stream is not a valid pickle.
    """
    try:
        return PlainDataUnpickler(io.BytesIO(data)).load()
    except UnsafePickleError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as error:
        raise CheckpointError(f"not a valid plain-data pickle: {error}") from None


def load_plain_data(path: str | os.PathLike) -> object:
    """Read and unpickle the file at `path` with `loads_plain_data`.

    Raises:
        UnsafePickleError: naming the file and the refused global.
        CheckpointError: when the file is missing or is not a valid pickle.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"pickle file not found: {path}")
    try:
        return loads_plain_data(path.read_bytes())
    except UnsafePickleError as error:
        raise UnsafePickleError(f"{path}: {error}") from None
    except CheckpointError as error:
        raise CheckpointError(f"{path}: {error}") from None
