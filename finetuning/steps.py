"""The compiled, sharded steps of a fine-tune on a device mesh.

`FineTuneSteps` splits a prepared `zoo.TaskModel` three ways: the leaves the strategy trains
(``params``: differentiated, with optimiser state), the frozen arrays (``frozen``: read by
every step, never differentiated nor donated) and the rest (static, closed over). The loss is
the class-weighted cross-entropy for a classification head, and the squared error of the
standardised target (``((prediction - y) / target_scale)^2``, averaged) for regression. The
parameters, frozen arrays and optimiser state are placed on the mesh by the pretraining
sharding rules (`pretraining.sharding`: replicated over ``data``, split over ``fsdp`` and
``model``); each batch is split over the data axes. The train step is a `jax.jit` with
explicit in/out shardings that donates the parameter and optimiser buffers.

Step ``s`` reads the training rows that ``numpy.random.default_rng([seed, s])`` draws and
the dropout key ``fold_in(key(seed), s)``, split once per row, so a step does not depend on
the mesh nor on the steps before it: a resumed fine-tune repeats an uninterrupted one.
"""

from __future__ import annotations

from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh

from pretraining.mesh import batch_shards
from pretraining.sharding import batch_sharding, replicated, tree_shardings
from pretraining.state import abstract_state
from pretraining.steps import check_batch_size, global_batch
from zoo.task.model import TaskModel


def batch_rows(seed: int, step: int, n_examples: int, batch_size: int) -> np.ndarray:
    """The training rows of step `step` (with replacement only when there are too few)."""
    rng = np.random.default_rng([seed, step])
    return rng.choice(n_examples, batch_size, replace=n_examples < batch_size)


class FineTuneSteps:
    """Sharded, compiled training and prediction of one prepared model on one mesh.

    Args:
        model: the model `finetuning.strategies.prepare` returned (its arrays give the
            shapes; it is not kept).
        spec: its filter spec (True = trained).
        optimizer: the optax transformation of the trained leaves.
        mesh: the device mesh.
        class_weights: ``(n_classes,)`` weights of the cross-entropy (ignored for
            regression).
        batch_size: global examples per step; the data axes must divide it.
        seed: the fine-tune's seed (dropout keys).
    """

    def __init__(
        self,
        model: TaskModel,
        spec: Any,
        optimizer: optax.GradientTransformation,
        mesh: Mesh,
        *,
        class_weights: np.ndarray,
        batch_size: int,
        seed: int,
    ):
        check_batch_size(batch_size, mesh, 1)
        params, rest = eqx.partition(model, spec)
        frozen, self.static = eqx.partition(rest, eqx.is_array)
        self.spec = spec
        self.mesh = mesh
        self.batch_size = batch_size
        self.seed = seed
        self.optimizer = optimizer
        self.weights = jnp.asarray(class_weights, jnp.float32)
        self.regression = model.config.task == "regression"
        self.target_scale = model.config.target_scale
        self.param_shardings = tree_shardings(params, mesh)
        self.frozen_shardings = tree_shardings(frozen, mesh)
        self.opt_shardings = tree_shardings(jax.eval_shape(optimizer.init, params), mesh)
        self.batch_sharding = batch_sharding(mesh)
        self._shapes = jax.eval_shape(lambda: params)
        scalar = replicated(mesh)

        self.init_optimizer = jax.jit(optimizer.init, out_shardings=self.opt_shardings)
        self.train_step = jax.jit(
            self._train_step,
            in_shardings=(
                self.param_shardings,
                self.opt_shardings,
                self.frozen_shardings,
                self.batch_sharding,
                scalar,
            ),
            out_shardings=(self.param_shardings, self.opt_shardings, scalar),
            donate_argnums=(0, 1),
        )
        self._predict = jax.jit(
            self._outputs,
            in_shardings=(self.param_shardings, self.frozen_shardings, self.batch_sharding),
            out_shardings=self.batch_sharding,
        )
        self.copy = jax.jit(
            lambda tree: jax.tree.map(jnp.copy, tree),
            in_shardings=(self.param_shardings,),
            out_shardings=self.param_shardings,
        )

    def place(self, model: TaskModel) -> tuple[Any, Any]:
        """The trained and the frozen arrays of `model` on the mesh (`init_optimizer` gives
        the optimiser state of the former)."""
        # from host copies: the placed parameters are donated to the train step, which must
        # not delete the arrays of `model` itself
        host = jax.tree.map(lambda x: np.asarray(x) if eqx.is_array(x) else x, model)
        params, rest = eqx.partition(host, self.spec)
        params = jax.device_put(params, self.param_shardings)
        frozen = jax.device_put(eqx.filter(rest, eqx.is_array), self.frozen_shardings)
        return params, frozen

    def abstract_state(self) -> dict[str, Any]:
        """The shapes and shardings of the saved state: parameters, optimiser state and the
        best parameters so far."""
        return {
            "params": abstract_state(self._shapes, self.param_shardings),
            "opt_state": abstract_state(
                jax.eval_shape(self.optimizer.init, self._shapes), self.opt_shardings
            ),
            "best_params": abstract_state(self._shapes, self.param_shardings),
        }

    def model(self, params: Any, frozen: Any) -> TaskModel:
        """The prepared model with trained leaves `params` and frozen arrays `frozen`."""
        return eqx.combine(params, frozen, self.static)

    def batch(self, arrays: tuple[np.ndarray, ...], rows: np.ndarray) -> Any:
        """``arrays[i][rows]`` for every array, split over the data axes."""
        return global_batch(
            self.batch_sharding,
            len(rows),
            lambda local: tuple(x[rows[np.asarray(local)]] for x in arrays),
        )

    def predict(self, params: Any, frozen: Any, inputs: tuple[np.ndarray, ...]) -> np.ndarray:
        """Class probabilities (classification) or predicted targets (regression), one row
        per example of `inputs` (inference mode), in chunks of a fixed size (a multiple of
        the data axes; the last one padded) so one compilation serves them all."""
        n = len(inputs[0])
        size = -(-min(n, 256) // batch_shards(self.mesh)) * batch_shards(self.mesh)
        chunks = []
        for start in range(0, n, size):
            rows = np.minimum(np.arange(start, start + size), n - 1)
            chunk = self._predict(params, frozen, self.batch(inputs, rows))
            chunks.append(np.asarray(jax.device_get(chunk))[: n - start])
        return np.concatenate(chunks).astype(np.float64)

    def _outputs(self, params, frozen, inputs):
        net = eqx.nn.inference_mode(self.model(params, frozen))
        outputs = jax.vmap(net)(*inputs)
        return outputs if self.regression else jax.nn.softmax(outputs, axis=-1)

    def _loss(self, params, frozen, batch, step):
        *inputs, labels = batch
        net = self.model(params, frozen)
        step_key = jax.random.fold_in(jax.random.key(self.seed), step)
        keys = jax.random.split(step_key, labels.shape[0])
        outputs = jax.vmap(lambda k, *x: net(*x, key=k))(keys, *inputs)
        if self.regression:
            return jnp.mean(((outputs[:, 0] - labels) / self.target_scale) ** 2)
        losses = optax.softmax_cross_entropy_with_integer_labels(outputs, labels)
        weights = self.weights[labels]
        return (losses * weights).sum() / weights.sum()

    def _train_step(self, params, opt_state, frozen, batch, step):
        loss, grads = jax.value_and_grad(self._loss)(params, frozen, batch, step)
        updates, opt_state = self.optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss
