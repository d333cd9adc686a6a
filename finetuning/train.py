"""Fine-tuning a `zoo.TaskModel` on a `finetuning.tasks.Task`.

AdamW with a linear warm-up and cosine decay, gradient clipping, optional layer-wise
learning-rate decay (layer ``l`` of ``L`` gets ``decay^(L - l)`` times the rate, the
embeddings ``decay^(L + 1)``, the head 1; Clark et al., 2020), class-weighted cross-entropy
for imbalanced labels, and early stopping: the model is evaluated on the validation split
every ``eval_every`` steps, the best one (lowest validation loss) is kept, and training
stops after ``patience`` evaluations without improvement. Only the leaves the strategy's
filter spec marks as trainable are differentiated and carry optimiser state.

Batch ``b`` of step ``s`` depends only on ``(seed, s)``, so runs are reproducible.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm import tqdm

from checkpoints.tree_keys import key_of
from finetuning.metrics import classification_report, confusion_matrix
from finetuning.strategies import finish, prepare
from finetuning.tasks import Split, Task
from zoo.config import Config, require, require_choice, require_positive
from zoo.sequence_embedding import SequenceEmbedding
from zoo.task_model import TaskModel
from zoo.transformer import SplitTransformerStack


@dataclasses.dataclass(frozen=True)
class FineTuneConfig(Config):
    """How to fine-tune.

    Attributes:
        strategy: ``linear``, ``full``, ``partial`` or ``lora`` (`finetuning.strategies`).
        freeze_layers: transformer layers kept frozen by ``partial``.
        lora_rank: rank of the LoRA factors.
        lora_alpha: LoRA scale numerator (the update is ``alpha / rank * B @ A``).
        learning_rate: peak learning rate.
        layer_decay: layer-wise learning-rate decay factor (1 = none).
        weight_decay: AdamW weight decay.
        batch_size: examples per step.
        max_steps: most optimiser steps.
        warmup_steps: steps of linear warm-up.
        eval_every: steps between validation evaluations.
        patience: evaluations without improvement before stopping.
        class_weighting: weight classes by inverse training frequency.
        seed: drives initialisation of new parameters, dropout and batch order.
    """

    strategy: str = "full"
    freeze_layers: int = 1
    lora_rank: int = 8
    lora_alpha: float = 16.0
    learning_rate: float = 1e-3
    layer_decay: float = 1.0
    weight_decay: float = 0.01
    batch_size: int = 32
    max_steps: int = 300
    warmup_steps: int = 20
    eval_every: int = 50
    patience: int = 3
    class_weighting: bool = True
    seed: int = 0

    def validate(self) -> None:
        require_choice("strategy", self.strategy, ("linear", "full", "partial", "lora"))
        require_positive(
            lora_rank=self.lora_rank,
            learning_rate=self.learning_rate,
            batch_size=self.batch_size,
            max_steps=self.max_steps,
            eval_every=self.eval_every,
            patience=self.patience,
            layer_decay=self.layer_decay,
        )
        require(self.layer_decay <= 1.0, "layer_decay must be at most 1")
        require(0 <= self.warmup_steps < self.max_steps, "warmup_steps must be in [0, max_steps)")


@dataclasses.dataclass
class FineTuneResult:
    """The fine-tuned model and what was measured.

    Attributes:
        model: the best model (by validation loss), with LoRA merged and the stack whole.
        steps: optimiser steps taken.
        history: one dict per evaluation (step, train loss, validation loss and metrics).
        test: accuracy, MCC, macro-F1 and AUROC on the test split.
        confusion: the test confusion matrix.
    """

    model: TaskModel
    steps: int
    history: list[dict[str, float | int]]
    test: dict[str, float]
    confusion: np.ndarray


def model_inputs(model: TaskModel, split: Split) -> tuple[np.ndarray, ...]:
    """The arrays the backbone reads for every example of `split`."""
    backbone = model.backbone
    if isinstance(split.inputs, np.ndarray):
        return (split.inputs.astype(np.float32),)
    if isinstance(backbone, SequenceEmbedding):
        x, mask = backbone.one_hot(split.inputs)
        return np.asarray(x), np.asarray(mask)
    return backbone.tokenizer(split.inputs)


def layer_multipliers(params: Any, model: TaskModel, decay: float) -> Any:
    """Per-leaf learning-rate multipliers for layer-wise decay (see the module docstring).

    `params` are the trainable leaves of `model` (None elsewhere)."""
    stack = getattr(model.backbone, "stack", None)
    split = isinstance(stack, SplitTransformerStack)
    offset = stack.first.n_layers if split else 0
    n_layers = 0 if stack is None else offset + (stack.rest if split else stack).n_layers

    def multiplier(path, leaf):
        key = key_of(path)
        if key.startswith("head."):
            return jnp.ones(())
        if ".layers." in key:
            index = (offset if ".rest.layers." in key else 0) + jnp.arange(leaf.shape[0])
            return (decay ** (n_layers - index)).reshape((-1,) + (1,) * (leaf.ndim - 1))
        if "final_norm" in key:
            return jnp.asarray(decay)
        return jnp.asarray(decay ** (n_layers + 1))

    return jax.tree_util.tree_map_with_path(multiplier, params)


def scale_by_tree(multipliers: Any) -> optax.GradientTransformation:
    """Multiply every update by the matching leaf of `multipliers`."""

    def update(updates, state, params=None):
        del params
        return jax.tree.map(lambda u, m: u * m, updates, multipliers), state

    return optax.GradientTransformation(lambda _: optax.EmptyState(), update)


def class_weights(labels: np.ndarray, n_classes: int, enabled: bool) -> np.ndarray:
    """``n / (n_classes * count_c)`` per class (1 everywhere when disabled)."""
    if not enabled:
        return np.ones(n_classes, np.float32)
    counts = np.bincount(labels, minlength=n_classes).astype(np.float32)
    return (len(labels) / (n_classes * np.maximum(counts, 1))).astype(np.float32)


def fine_tune(
    model: TaskModel, task: Task, config: FineTuneConfig, *, progress: bool = True
) -> FineTuneResult:
    """Fine-tune `model` on `task` (see the module docstring)."""
    if model.config.task != "classification" or model.config.n_outputs != len(task.classes):
        raise ValueError(
            f"the model needs a {len(task.classes)}-class classification head for {task.name}"
        )
    key = jax.random.key(config.seed)
    model, spec = prepare(
        model,
        config.strategy,
        freeze_layers=config.freeze_layers,
        lora_rank=config.lora_rank,
        lora_alpha=config.lora_alpha,
        key=jax.random.fold_in(key, 1),
    )
    params, static = eqx.partition(model, spec)
    schedule = optax.warmup_cosine_decay_schedule(
        0.0, config.learning_rate, config.warmup_steps, config.max_steps
    )
    optimizer = optax.chain(
        optax.clip_by_global_norm(1.0),
        optax.adamw(schedule, weight_decay=config.weight_decay),
        scale_by_tree(layer_multipliers(params, model, config.layer_decay)),
    )
    opt_state = optimizer.init(params)
    weights = jnp.asarray(
        class_weights(task.train.labels, len(task.classes), config.class_weighting)
    )
    train_inputs = model_inputs(model, task.train)
    validation_inputs = model_inputs(model, task.validation)

    def loss_fn(params, inputs, labels, step_key):
        net = eqx.combine(params, static)
        keys = jax.random.split(step_key, labels.shape[0])
        logits = jax.vmap(lambda k, *x: net(*x, key=k))(keys, *inputs)
        losses = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
        return (losses * weights[labels]).sum() / weights[labels].sum()

    @eqx.filter_jit
    def train_step(params, opt_state, inputs, labels, step_key):
        loss, grads = jax.value_and_grad(loss_fn)(params, inputs, labels, step_key)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    rng = np.random.default_rng(config.seed)
    n = len(task.train)
    best = (math.inf, params, 0)
    history: list[dict[str, float | int]] = []
    waited, running = 0, []
    bar = tqdm(
        range(1, config.max_steps + 1),
        desc=f"fine-tune {task.name} ({config.strategy})",
        disable=not progress,
    )
    for step in bar:
        rows = rng.choice(n, config.batch_size, replace=n < config.batch_size)
        batch = tuple(jnp.asarray(x[rows]) for x in train_inputs)
        step_key = jax.random.fold_in(key, step)
        params, opt_state, loss = train_step(
            params, opt_state, batch, jnp.asarray(task.train.labels[rows]), step_key
        )
        running.append(float(loss))
        if step % config.eval_every == 0 or step == config.max_steps:
            net = eqx.nn.inference_mode(eqx.combine(params, static))
            probabilities = predict_probabilities(net, validation_inputs)
            validation_loss = float(
                -np.log(
                    np.maximum(
                        probabilities[np.arange(len(probabilities)), task.validation.labels], 1e-12
                    )
                ).mean()
            )
            record = {
                "step": step,
                "train_loss": float(np.mean(running)),
                "validation_loss": validation_loss,
            }
            record |= {
                f"validation_{k}": v
                for k, v in classification_report(task.validation.labels, probabilities).items()
            }
            history.append(record)
            running = []
            bar.set_postfix(
                loss=f"{record['train_loss']:.3f}",
                val=f"{validation_loss:.3f}",
                acc=f"{record['validation_accuracy']:.3f}",
            )
            if validation_loss < best[0]:
                best, waited = (validation_loss, params, step), 0
            else:
                waited += 1
                if waited >= config.patience:
                    break
    bar.close()
    final = eqx.nn.inference_mode(finish(eqx.combine(best[1], static)), value=False)
    probabilities = predict_probabilities(
        eqx.nn.inference_mode(final), model_inputs(final, task.test)
    )
    return FineTuneResult(
        model=final,
        steps=step,
        history=history,
        test=classification_report(task.test.labels, probabilities),
        confusion=confusion_matrix(task.test.labels, probabilities.argmax(1), len(task.classes)),
    )


def predict_probabilities(
    model: TaskModel, inputs: tuple[np.ndarray, ...], batch_size: int = 256
) -> np.ndarray:
    """Class probabilities of every example (the model in inference mode)."""
    predict = eqx.filter_jit(lambda m, *x: jax.nn.softmax(jax.vmap(m)(*x), axis=-1))
    n = len(inputs[0])
    chunks = [
        predict(model, *(jnp.asarray(x[i : i + batch_size]) for x in inputs))
        for i in range(0, n, batch_size)
    ]
    return np.concatenate([np.asarray(c) for c in chunks]).astype(np.float64)
