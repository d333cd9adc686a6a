"""One check for the shape of a model input, shared by the models' ``__call__`` methods.

jaxtyping's annotations check that the named axes of one call agree with each other, but not
with the model's config (a cell of 1,999 genes is a consistent ``" n_genes"`` on its own).
Shapes are static under `jax.jit` and `jax.vmap`, so this check costs nothing at run time
and fails while tracing, before any compute, naming the argument.
"""

from __future__ import annotations

import numpy as np


def check_shape(name: str, value, expected: tuple[int, ...], axes: str) -> None:
    """Raise ``ValueError`` unless ``value.shape == expected``.

    Args:
        name: the argument's name, for the message.
        value: an array (or anything with ``shape``).
        expected: the shape the model needs.
        axes: what the axes are, e.g. ``"(n_genes,) for one cell"``.
    """
    shape = tuple(np.shape(value))
    if shape != tuple(expected):
        raise ValueError(f"{name} must have shape {tuple(expected)}, {axes}; got {shape}")
