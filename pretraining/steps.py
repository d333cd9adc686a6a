"""The compiled train and evaluation steps of a run, and the global batches they read.

`CompiledSteps` partitions the model into its arrays (``params``) and the rest, places the
parameters and the optimizer state by the sharding rules (`pretraining.sharding`), and
compiles `jax.jit` steps with explicit in/out shardings whose parameter and optimizer
buffers are donated (updated in place). The randomness of step ``s`` (dropout, the
foundation model's masks) comes from ``fold_in(fold_in(key(seed), part), s)`` and one
``fold_in`` per global example row, so it does not depend on the mesh.

A train step averages the gradients of ``accumulate_steps`` micro-batches (example ``r``
goes to micro-batch ``r mod accumulate_steps``), clips them and applies one AdamW update.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding

from pretraining.dna_data import TRAIN, VALIDATION
from pretraining.mesh import batch_shards
from pretraining.optimizer import (
    OptimizerConfig,
    build_optimizer,
    cast_for_compute,
    learning_rate_schedule,
)
from pretraining.sharding import batch_sharding, replicated, tree_shardings


class BatchSizeError(ValueError):
    """The batch cannot be split over the mesh and the micro-batches."""


def check_batch_size(batch_size: int, mesh: Mesh, accumulate_steps: int) -> None:
    """Raise `BatchSizeError` unless every device gets whole examples in every micro-batch."""
    shards = batch_shards(mesh) * accumulate_steps
    if batch_size % shards:
        raise BatchSizeError(
            f"batch size {batch_size} is not divisible by the mesh's data x fsdp size times "
            f"the accumulation steps ({shards}); choose a multiple of {shards}"
        )


def row_keys(seed: int, part: int, step: jax.Array, n_rows: int) -> jax.Array:
    """One key per global example row of `step`."""
    base = jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), part), step)
    return jax.vmap(lambda row: jax.random.fold_in(base, row))(jnp.arange(n_rows))


def global_batch(
    sharding: NamedSharding, size: int, make_rows: Callable[[Sequence[int]], Any]
) -> Any:
    """A batch of `size` examples split along its first axis by `sharding`, of which this
    process builds (with `make_rows`, given global row indices) only the rows its devices
    hold."""
    slices = [index[0] for index in sharding.addressable_devices_indices_map((size,)).values()]
    rows = sorted({row for s in slices for row in range(*s.indices(size))})
    local = make_rows(rows)
    where = {row: i for i, row in enumerate(rows)}

    def place(x: np.ndarray) -> jax.Array:
        def piece(index):
            picked = [where[row] for row in range(*index[0].indices(size))]
            return x[picked][(slice(None), *index[1:])]

        return jax.make_array_from_callback((size, *x.shape[1:]), sharding, piece)

    return jax.tree.map(place, local)


class CompiledSteps:
    """Sharded, compiled training and evaluation of one model on one mesh.

    Args:
        model: the model (its arrays give the parameter shapes; it is not kept).
        objective: ``(model, batch, keys) -> sums`` (`pretraining.objectives`).
        optimizer: optimiser settings.
        total_steps: length of the learning-rate schedule.
        mesh: the device mesh.
        seed: the run's seed.
        batch_size: global examples per step.
    """

    def __init__(
        self,
        model: eqx.Module,
        objective: Callable[..., dict[str, jax.Array]],
        optimizer: OptimizerConfig,
        total_steps: int,
        mesh: Mesh,
        *,
        seed: int,
        batch_size: int,
    ):
        check_batch_size(batch_size, mesh, optimizer.accumulate_steps)
        params, self.static = eqx.partition(model, eqx.is_array)
        self.mesh = mesh
        self.batch_size = batch_size
        self.optimizer = build_optimizer(optimizer, total_steps)
        self.param_shardings = tree_shardings(params, mesh)
        self.opt_shardings = tree_shardings(jax.eval_shape(self.optimizer.init, params), mesh)
        self.batch_sharding = batch_sharding(mesh)
        self.objective = objective
        self.seed = seed
        self.accumulate = optimizer.accumulate_steps
        self.compute_dtype = optimizer.compute_dtype
        self.schedule = learning_rate_schedule(optimizer, total_steps)
        scalar = replicated(mesh)

        self.init_optimizer = jax.jit(self.optimizer.init, out_shardings=self.opt_shardings)
        self.gradients = jax.jit(
            self._gradients,
            in_shardings=(self.param_shardings, self.batch_sharding, scalar),
            out_shardings=(self.param_shardings, scalar),
        )
        self.train_step = jax.jit(
            self._train_step,
            in_shardings=(self.param_shardings, self.opt_shardings, self.batch_sharding, scalar),
            out_shardings=(self.param_shardings, self.opt_shardings, scalar),
            donate_argnums=(0, 1),
        )
        self.eval_step = jax.jit(
            self._eval_step,
            in_shardings=(self.param_shardings, self.batch_sharding, scalar),
            out_shardings=scalar,
        )

    def place(self, model: eqx.Module) -> tuple[Any, Any]:
        """The parameters of `model` on the mesh and a fresh optimizer state for them."""
        # from host copies: the placed buffers are donated to the train step, which must
        # not delete the arrays of `model` itself
        params = jax.tree.map(np.asarray, eqx.filter(model, eqx.is_array))
        params = jax.device_put(params, self.param_shardings)
        return params, self.init_optimizer(params)

    def model(self, params: Any) -> eqx.Module:
        """The model with parameters `params`."""
        return eqx.combine(params, self.static)

    def batch(self, make_batch: Callable[..., Any], step: int, part: int = TRAIN) -> Any:
        """Global batch `step` of `part` from a task's ``make_batch``."""
        return global_batch(
            self.batch_sharding, self.batch_size, lambda rows: make_batch(step, rows, part)
        )

    def _sums(self, params, batch, keys):
        model = self.model(cast_for_compute(params, self.compute_dtype))
        sums = self.objective(model, batch, keys)
        return sums["loss_sum"], sums

    def _gradients(self, params, batch, step):
        """Summed statistics and the gradient of the summed loss, over micro-batches."""
        keys = row_keys(self.seed, TRAIN, step, self.batch_size)
        grad_fn = jax.value_and_grad(self._sums, has_aux=True)
        if self.accumulate == 1:
            (_, sums), grads = grad_fn(params, batch, keys)
            return grads, sums

        def micro(x):
            return x.reshape(-1, self.accumulate, *x.shape[1:]).swapaxes(0, 1)

        def add(carry, micro_batch):
            (_, sums), grads = grad_fn(params, *micro_batch)
            return jax.tree.map(jnp.add, carry, (grads, sums)), None

        micro_batches = jax.tree.map(micro, (batch, keys))
        first = jax.tree.map(lambda x: x[0], micro_batches)
        rest = jax.tree.map(lambda x: x[1:], micro_batches)
        (_, sums), grads = grad_fn(params, *first)
        (grads, sums), _ = jax.lax.scan(add, (grads, sums), rest)
        return grads, sums

    def _train_step(self, params, opt_state, batch, step):
        grads, sums = self._gradients(params, batch, step)
        grads = jax.tree.map(lambda g: g / jnp.maximum(sums["count"], 1.0), grads)
        updates, opt_state = self.optimizer.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        metrics = {**sums, "grad_norm": optax.tree.norm(grads), "lr": self.schedule(step)}
        return params, opt_state, metrics

    def _eval_step(self, params, batch, index):
        keys = row_keys(self.seed, VALIDATION, index, self.batch_size)
        model = eqx.nn.inference_mode(self.model(cast_for_compute(params, self.compute_dtype)))
        return self.objective(model, batch, keys)
