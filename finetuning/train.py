"""Fine-tuning a `zoo.TaskModel` on a `finetuning.tasks.Task`.

AdamW with a linear warm-up and cosine decay, gradient clipping, optional layer-wise
learning-rate decay (Clark et al., 2020; `layer_multipliers`), class-weighted cross-entropy
for imbalanced labels (or, for a regression task, the squared error of the standardised
target; see `finetuning.steps`), and early stopping: the model is evaluated on the validation
split every ``eval_every`` steps, the best one (lowest validation loss) is kept, and training
stops after ``patience`` evaluations without improvement. Only the leaves the strategy's
filter spec marks as trainable are differentiated and carry optimiser state.

Layer-wise decay multiplies the update of each trained leaf by a factor. Of a backbone with
``L`` transformer layers, layer ``l = 0, ..., L - 1`` (counted from the embeddings) gets
``decay^(L - l)``, so the top layer gets ``decay``; the final norm gets ``decay``, as the top
layer; the embeddings and every other backbone parameter get ``decay^(L + 1)``; the head
gets 1. A backbone without transformer layers (``L = 0``) gets ``decay`` throughout.

The fine-tune runs on a device mesh (data parallel, FSDP, tensor parallel; see
`finetuning.steps`) and can save its whole state, early stopping included, through
`pretraining.state.TrainingCheckpoints`. The batch and the dropout keys of step ``s``
depend only on ``(seed, s)``, so a fine-tune killed and resumed from its last checkpoint
ends exactly as an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh
from tqdm import tqdm

from checkpoints.tree_keys import key_of
from finetuning.early_stopping import EarlyStopping
from finetuning.metrics import classification_report, confusion_matrix
from finetuning.regression_metrics import regression_report
from finetuning.steps import FineTuneSteps, batch_rows
from finetuning.strategies import finish, prepare
from finetuning.tasks import Split, Task
from pretraining.mesh import make_mesh
from pretraining.state import TrainingCheckpoints
from pretraining.train import RunError, host_values
from zoo.common.config import Config, require, require_choice, require_positive
from zoo.common.transformer import SplitTransformerStack
from zoo.sequence.cnn import SequenceEmbedding
from zoo.task.model import TaskModel


@dataclasses.dataclass(frozen=True)
class FineTuneConfig(Config):
    """How to fine-tune.

    Attributes:
        strategy: ``linear``, ``full``, ``partial`` or ``lora`` (`finetuning.strategies`).
        freeze_layers: transformer layers kept frozen by ``partial``.
        lora_rank: rank of the LoRA factors.
        lora_alpha: LoRA scale numerator (the update is ``alpha / rank * B @ A``).
        learning_rate: peak learning rate.
        layer_decay: layer-wise learning-rate decay factor in (0, 1] (1 = none; see the
            module docstring).
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
        test: accuracy, MCC, macro-F1 and AUROC (classification) or MSE, Pearson and
            Spearman (regression) on the test split.
        confusion: the test confusion matrix (None for regression).
        test_outputs: the test split's class probabilities ``(n, n_classes)`` or predicted
            targets ``(n, 1)``.
        resumed_from: the step of the training checkpoint it continued from (None: it
            started afresh).
    """

    model: TaskModel
    steps: int
    history: list[dict[str, float | int]]
    test: dict[str, float]
    confusion: np.ndarray | None
    test_outputs: np.ndarray
    resumed_from: int | None = None


def backbone_inputs(backbone: eqx.Module, inputs: list[str] | np.ndarray) -> tuple[np.ndarray, ...]:
    """The arrays `backbone` reads for `inputs`: ``(counts,)`` for a count matrix,
    ``(one_hot, mask)`` or ``(ids, mask)`` for DNA strings (padded to the longest)."""
    if isinstance(inputs, np.ndarray):
        return (inputs.astype(np.float32),)
    if isinstance(backbone, SequenceEmbedding):
        x, mask = backbone.one_hot(inputs)
        return np.asarray(x), np.asarray(mask)
    return backbone.tokenizer(inputs)


def model_inputs(model: TaskModel, split: Split) -> tuple[np.ndarray, ...]:
    """The arrays the backbone reads for every example of `split`."""
    return backbone_inputs(model.backbone, split.inputs)


def task_labels(task: Task, split: Split) -> np.ndarray:
    """The labels of `split` as the train step reads them: int32 classes or float32
    targets."""
    return split.labels.astype(np.int32 if task.target == "classification" else np.float32)


def test_report(task: Task, labels: np.ndarray, outputs: np.ndarray) -> dict[str, float]:
    """Classification metrics of probabilities, or regression metrics of predictions."""
    if task.target == "classification":
        return classification_report(labels, outputs)
    return regression_report(labels, outputs[:, 0])


def layer_multipliers(params: Any, model: TaskModel, decay: float) -> Any:
    """Per-leaf learning-rate multipliers for layer-wise decay (see the module docstring):
    1 for the head, ``decay^(L - l)`` for each row ``l`` of a stacked layer leaf (rows of a
    cut stack's later part counted after its first part), ``decay`` for the final norm and
    ``decay^(L + 1)`` for every other leaf.

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


def fine_tune_optimizer(
    config: FineTuneConfig, model: TaskModel, spec: Any
) -> optax.GradientTransformation:
    """AdamW with warm-up, cosine decay, clipping and layer-wise decay for the leaves of
    `model` that `spec` trains (see the module docstring)."""
    schedule = optax.warmup_cosine_decay_schedule(
        0.0, config.learning_rate, config.warmup_steps, config.max_steps
    )
    return optax.chain(
        optax.clip_by_global_norm(1.0),
        optax.adamw(schedule, weight_decay=config.weight_decay),
        scale_by_tree(layer_multipliers(eqx.filter(model, spec), model, config.layer_decay)),
    )


def model_fingerprint(model: eqx.Module) -> str:
    """SHA-256 of the paths, dtypes, shapes and values of `model`'s arrays: tells whether a
    resumed fine-tune starts from the same model."""
    digest = hashlib.sha256()
    for path, leaf in jax.tree_util.tree_leaves_with_path(eqx.filter(model, eqx.is_array)):
        value = np.asarray(leaf)
        digest.update(f"{jax.tree_util.keystr(path)} {value.dtype} {value.shape}".encode())
        digest.update(np.ascontiguousarray(value).tobytes())
    return digest.hexdigest()


def evaluation_record(
    step: int, running: list[float], task: Task, outputs: np.ndarray
) -> dict[str, float | int]:
    """Step, mean training loss since the last evaluation, validation loss (the mean
    cross-entropy of the probabilities, or the mean squared error of the predictions, in the
    target's units) and metrics (`test_report`)."""
    labels = task.validation.labels
    if task.target == "classification":
        picked = outputs[np.arange(len(outputs)), labels]
        loss = float(-np.log(np.maximum(picked, 1e-12)).mean())
    else:
        loss = float(np.mean((outputs[:, 0] - labels) ** 2))
    record: dict[str, float | int] = {
        "step": step,
        "train_loss": float(np.mean(running)),
        "validation_loss": loss,
    }
    report = test_report(task, labels, outputs)
    return record | {f"validation_{k}": v for k, v in report.items()}


def fine_tune(
    model: TaskModel,
    task: Task,
    config: FineTuneConfig,
    *,
    mesh: Mesh | None = None,
    checkpoints: TrainingCheckpoints | None = None,
    resume: bool = False,
    progress: bool = True,
) -> FineTuneResult:
    """Fine-tune `model` on `task` (see the module docstring).

    Args:
        model: a classifier with one output per class of `task`, or a one-output
            regression model for a regression task.
        task: the task and its fixed splits.
        config: how to fine-tune.
        mesh: the devices (`pretraining.mesh.make_mesh`); parameters and optimiser state are
            placed by the sharding rules and the batch is split over the data axes
            (`finetuning.steps`). Default: the first device alone.
        checkpoints: where the training state (trained leaves, optimiser state, the best
            model so far and the early-stopping state) is saved, every ``save_every`` steps
            and when the fine-tune ends.
        resume: continue from the newest of `checkpoints`; the result is exactly that of an
            uninterrupted fine-tune.
        progress: show a progress bar.

    Raises:
        ValueError: the head does not match the task.
        pretraining.steps.BatchSizeError: the data axes of `mesh` do not divide the batch.
        pretraining.train.RunError: `checkpoints` hold a state but `resume` is not set, or
            the state comes from another task, config or starting model.
        pretraining.state.StateError: the state holds other parameters.
    """
    if model.config.task != task.target or model.config.n_outputs != task.n_outputs:
        head = (
            f"a {task.n_outputs}-class classification head"
            if task.target == "classification"
            else "a one-output regression head"
        )
        raise ValueError(f"the model needs {head} for {task.name}")
    mesh = make_mesh("data=1", jax.devices()[:1]) if mesh is None else mesh
    identity = {
        "config": config.to_dict(),
        "task": task.name,
        "starting_model": model_fingerprint(model),
    }
    model, spec = prepare(
        model,
        config.strategy,
        freeze_layers=config.freeze_layers,
        lora_rank=config.lora_rank,
        lora_alpha=config.lora_alpha,
        key=jax.random.fold_in(jax.random.key(config.seed), 1),
    )
    steps = FineTuneSteps(
        model,
        spec,
        fine_tune_optimizer(config, model, spec),
        mesh,
        class_weights=class_weights(
            task.train.labels.astype(int) if task.target == "classification" else np.zeros(0, int),
            max(len(task.classes), 1),
            config.class_weighting and task.target == "classification",
        ),
        batch_size=config.batch_size,
        seed=config.seed,
    )
    train_arrays = (*model_inputs(model, task.train), task_labels(task, task.train))
    validation_inputs = model_inputs(model, task.validation)
    params, frozen = steps.place(model)
    stopping = EarlyStopping(config.patience)
    step, finished = 0, False
    latest = None if checkpoints is None else checkpoints.latest_step()
    if latest is None:
        opt_state, best = steps.init_optimizer(params), steps.copy(params)
    else:
        saved, metadata = restore(checkpoints, latest, steps, identity, resume)
        params, opt_state, best = saved["params"], saved["opt_state"], saved["best_params"]
        stopping = EarlyStopping.from_dict(metadata["early_stopping"])
        step, finished = metadata["step"], metadata["finished"]

    bar = tqdm(
        total=config.max_steps,
        initial=step,
        desc=f"fine-tune {task.name} ({config.strategy})",
        disable=not progress,
    )
    while not finished:
        step += 1
        rows = batch_rows(config.seed, step, len(task.train), config.batch_size)
        params, opt_state, loss = steps.train_step(
            params, opt_state, frozen, steps.batch(train_arrays, rows), np.int32(step)
        )
        stopping.running.append(float(host_values(loss)))
        bar.update(1)
        if step % config.eval_every == 0 or step == config.max_steps:
            outputs = steps.predict(params, frozen, validation_inputs)
            record = evaluation_record(step, stopping.running, task, outputs)
            if stopping.evaluated(record):
                best = steps.copy(params)
            finished = step == config.max_steps or stopping.should_stop
            bar.set_postfix(
                loss=f"{record['train_loss']:.3f}", val=f"{record['validation_loss']:.3f}"
            )
        if checkpoints is not None:
            state = {"params": params, "opt_state": opt_state, "best_params": best}
            metadata = {**identity, "early_stopping": stopping.to_dict(), "finished": finished}
            checkpoints.save(step, state, metadata, force=finished)
    bar.close()
    if checkpoints is not None:
        checkpoints.wait()

    best, frozen = jax.tree.map(jnp.asarray, host_values((best, frozen)))
    final = eqx.nn.inference_mode(finish(steps.model(best, frozen)), value=False)
    outputs = predict_outputs(eqx.nn.inference_mode(final), model_inputs(final, task.test))
    confusion = None
    if task.target == "classification":
        confusion = confusion_matrix(task.test.labels, outputs.argmax(1), len(task.classes))
    return FineTuneResult(
        model=final,
        steps=step,
        history=stopping.history,
        test=test_report(task, task.test.labels, outputs),
        confusion=confusion,
        test_outputs=outputs,
        resumed_from=latest,
    )


def restore(
    checkpoints: TrainingCheckpoints,
    step: int,
    steps: FineTuneSteps,
    identity: dict[str, Any],
    resume: bool,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The state saved at `step`, placed on the current mesh, and its metadata, after
    checking that `resume` is set and that the checkpoint has the config, task and starting
    model fingerprint of `identity`."""
    folder = checkpoints.manager.directory
    if not resume:
        raise RunError(
            f"{folder} already holds a fine-tuning checkpoint (step {step}); pass --resume to "
            "continue it, or choose another checkpoint folder"
        )
    state, metadata = checkpoints.restore(step, steps.abstract_state())
    changed = [name.replace("_", " ") for name in identity if metadata[name] != identity[name]]
    if changed:
        raise RunError(
            f"{folder} holds a fine-tune with another {' and '.join(changed)}; resume with the "
            "same command, or choose another checkpoint folder"
        )
    return state, metadata


def predict_outputs(
    model: TaskModel, inputs: tuple[np.ndarray, ...], batch_size: int = 256
) -> np.ndarray:
    """Class probabilities ``(n, n_classes)`` (classification) or predicted targets
    ``(n, n_outputs)`` (regression) of every example; `model` should be in inference
    mode."""
    n = len(inputs[0])
    chunks = [
        _outputs(model, *(jnp.asarray(x[i : i + batch_size]) for x in inputs))
        for i in range(0, n, batch_size)
    ]
    return np.concatenate([np.asarray(c) for c in chunks]).astype(np.float64)


@eqx.filter_jit
def _outputs(model: TaskModel, *inputs: jax.Array) -> jax.Array:
    outputs = jax.vmap(model)(*inputs)
    if model.config.task == "regression":
        return outputs
    return jax.nn.softmax(outputs, axis=-1)
