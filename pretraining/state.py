"""Training state on disk: model, optimizer state, step, data position and run config,
through an Orbax `CheckpointManager`.

Saves are asynchronous (training goes on while the arrays are written) and atomic (Orbax
writes into a temporary folder and renames it when complete), so a run killed at any
moment restarts from the last complete checkpoint. Only the last ``keep`` checkpoints are
kept. The array leaves are stored as a list in PyTree-flattening order, with their paths in
the JSON metadata to check against on restore; they are restored straight onto the
shardings of the *current* mesh, which may differ from the one that saved them.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp


class StateError(RuntimeError):
    """A training checkpoint does not match the run that tries to restore it."""


def leaf_paths(tree: Any) -> list[str]:
    """The PyTree path of every array leaf of `tree`, in flattening order."""
    return [jax.tree_util.keystr(path) for path, _ in jax.tree_util.tree_leaves_with_path(tree)]


def abstract_state(tree: Any, shardings: Any) -> Any:
    """`tree` as `jax.ShapeDtypeStruct` leaves placed by `shardings` (same structure): the
    target that `TrainingCheckpoints.restore` fills."""
    return jax.tree.map(
        lambda x, sharding: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
        tree,
        shardings,
    )


class TrainingCheckpoints:
    """Periodic training checkpoints in ``directory``.

    Args:
        directory: where the numbered checkpoint folders go.
        save_every: save when the step count is a multiple of this.
        keep: how many of the latest checkpoints to keep.
    """

    def __init__(self, directory: str | os.PathLike, *, save_every: int, keep: int):
        self.save_every = save_every
        self.manager = ocp.CheckpointManager(
            os.fspath(os.path.abspath(directory)),
            options=ocp.CheckpointManagerOptions(
                max_to_keep=keep, enable_async_checkpointing=True, create=True
            ),
            item_names=("arrays", "metadata"),
        )

    def latest_step(self) -> int | None:
        """The step of the newest complete checkpoint, or None."""
        return self.manager.latest_step()

    def save(self, step: int, state: Any, metadata: dict[str, Any], *, force: bool = False) -> bool:
        """Start an asynchronous save of `state` (a PyTree of arrays) and `metadata` (JSON
        values) at `step` if it is a multiple of ``save_every`` (or `force`)."""
        if not force and (self.save_every <= 0 or step % self.save_every):
            return False
        arrays = jax.tree.leaves(state)
        metadata = {**metadata, "step": step, "leaf_paths": leaf_paths(state)}
        return self.manager.save(
            step,
            args=ocp.args.Composite(
                arrays=ocp.args.StandardSave(arrays), metadata=ocp.args.JsonSave(metadata)
            ),
            force=True,
        )

    def metadata(self, step: int) -> dict[str, Any]:
        """The JSON metadata saved at `step` (no arrays are read)."""
        return self.manager.restore(step, args=ocp.args.Composite(metadata=ocp.args.JsonRestore()))[
            "metadata"
        ]

    def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict[str, Any]]:
        """The state saved at `step`, placed as `abstract_state` (a PyTree of
        `jax.ShapeDtypeStruct` with shardings) asks, and its metadata.

        Raises:
            StateError: when the saved leaves are not those of `abstract_state`.
        """
        metadata = self.metadata(step)
        expected = leaf_paths(abstract_state)
        if metadata["leaf_paths"] != expected:
            missing = sorted(set(expected) - set(metadata["leaf_paths"]))
            extra = sorted(set(metadata["leaf_paths"]) - set(expected))
            raise StateError(
                f"checkpoint at step {step} holds other parameters than this run: "
                f"missing {missing[:5]}, unexpected {extra[:5]}"
            )
        leaves, treedef = jax.tree.flatten(abstract_state)
        restored = self.manager.restore(
            step, args=ocp.args.Composite(arrays=ocp.args.StandardRestore(leaves))
        )["arrays"]
        return jax.tree.unflatten(treedef, restored), metadata

    def wait(self) -> None:
        """Block until every started save is complete on disk."""
        self.manager.wait_until_finished()

    def close(self) -> None:
        """Finish pending saves and release the manager."""
        self.manager.close()
