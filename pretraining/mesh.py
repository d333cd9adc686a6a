"""The device mesh of a pretraining run, from a command-line string such as ``data=4,fsdp=2``.

Every mesh has the three axes ``data`` (data parallel: batch split, parameters replicated),
``fsdp`` (fully sharded data parallel: batch *and* parameters/optimizer state split) and
``model`` (tensor parallel: attention heads and MLP hidden units split). Axes left out of
the string have size 1; one axis may be ``-1``, meaning "all the devices the others leave".
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import numpy as np
from jax.sharding import Mesh

AXES = ("data", "fsdp", "model")
BATCH_AXES = ("data", "fsdp")


class MeshError(ValueError):
    """A mesh specification names an unknown axis or does not fit the devices."""


def parse_mesh(spec: str, n_devices: int) -> dict[str, int]:
    """Axis sizes from ``"axis=size,..."``, checked against `n_devices`.

    Args:
        spec: comma-separated ``axis=size``; axes from `AXES`; one size may be ``-1``.
            An empty string means ``data=-1`` (pure data parallelism).
        n_devices: how many devices the mesh must use exactly.

    Returns:
        ``{"data": ..., "fsdp": ..., "model": ...}`` whose product is `n_devices`.

    Raises:
        MeshError: unknown or repeated axis, a size that is not a positive integer or -1,
            more than one -1, or sizes whose product does not equal `n_devices`.
    """
    sizes: dict[str, int] = {}
    for part in filter(None, (p.strip() for p in (spec or "data=-1").split(","))):
        name, sep, value = part.partition("=")
        name = name.strip()
        if not sep:
            raise MeshError(f"mesh entry {part!r} is not of the form axis=size")
        if name not in AXES:
            raise MeshError(f"unknown mesh axis {name!r}; the axes are {', '.join(AXES)}")
        if name in sizes:
            raise MeshError(f"mesh axis {name!r} is given twice")
        try:
            size = int(value)
        except ValueError:
            raise MeshError(f"mesh axis {name}: size {value.strip()!r} is not an integer") from None
        if size == 0 or size < -1:
            raise MeshError(f"mesh axis {name}: size must be positive or -1, got {size}")
        sizes[name] = size
    rest = [name for name, size in sizes.items() if size == -1]
    if len(rest) > 1:
        raise MeshError(f"only one mesh axis may be -1, got {rest}")
    known = math.prod(size for size in sizes.values() if size != -1)
    if rest:
        if n_devices % known:
            raise MeshError(
                f"mesh {spec!r}: the fixed axes use {known} devices, which does not divide "
                f"the {n_devices} devices available"
            )
        sizes[rest[0]] = n_devices // known
    elif known != n_devices:
        raise MeshError(
            f"mesh {spec!r} has {known} devices in all, but {n_devices} are available; "
            "use -1 for one axis to take the rest"
        )
    return {name: sizes.get(name, 1) for name in AXES}


def make_mesh(spec: str, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A `Mesh` with axes `AXES` over `devices` (default: every device of every process).

    The devices are laid out by `jax.experimental.mesh_utils` so that the ``model`` axis
    (the most communication-heavy) varies fastest, i.e. stays within a host where it can.
    """
    from jax.experimental import mesh_utils

    devices = list(jax.devices() if devices is None else devices)
    sizes = parse_mesh(spec, len(devices))
    shape = tuple(sizes[name] for name in AXES)
    try:
        grid = mesh_utils.create_device_mesh(shape, devices=devices)
    except (AssertionError, ValueError, NotImplementedError):
        grid = np.asarray(devices, dtype=object).reshape(shape)
    return Mesh(grid, AXES)


def batch_shards(mesh: Mesh) -> int:
    """How many ways the batch is split: the product of the ``data`` and ``fsdp`` sizes."""
    return math.prod(mesh.shape[name] for name in BATCH_AXES)


def describe(mesh: Mesh) -> str:
    """``data=4,fsdp=2,model=1`` for `mesh`."""
    return ",".join(f"{name}={mesh.shape[name]}" for name in AXES)
