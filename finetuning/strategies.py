"""What a fine-tune trains: filter specs over a `zoo.TaskModel`.

- ``linear``: the head only (a linear probe of the frozen backbone);
- ``full``: every parameter the task uses;
- ``partial``: the head and the transformer layers after the first ``freeze_layers``
  (the stack is cut with `zoo.common.transformer.split_stack`, so the frozen layers are separate
  arrays that get no optimiser state); embeddings stay frozen;
- ``lora``: the head and rank-r factors on every attention projection (`zoo.common.lora`).

Parameters a task never uses are never trained (`UNUSED_FIELDS`): the masked-language-model
head of a sequence encoder (its tied or untied decoder included), the masked-expression or
masked-gene head and the mask vector of the foundation model, and the fitted gene medians
of its tokenizer. Imported checkpoints (Nucleotide Transformer, ESM-2, DNABERT, Geneformer,
scGPT) are these same classes, so every strategy applies to them unchanged.

`prepare` returns the model to train and its filter spec; `finish` undoes the surgery
(merges LoRA factors and the cut stack) so the result is a plain model again.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
from jaxtyping import PRNGKeyArray

from zoo.common.lora import add_lora, lora_filter, merge_lora
from zoo.common.transformer import SplitTransformerStack, split_stack
from zoo.expression.foundation_model import DifferentiableFoundationModel
from zoo.sequence.encoder import TransformerSequenceEncoder
from zoo.task.model import TaskModel

STRATEGIES = ("linear", "full", "partial", "lora")


def _set_trainable(spec: Any, model: Any, where: Callable[[Any], Any], value: bool) -> Any:
    """`spec` with the array leaves of ``where(model)`` set to `value`."""
    subtree = where(model)
    marks = jax.tree.map(lambda leaf: value and eqx.is_array(leaf), subtree)
    return eqx.tree_at(where, spec, marks, is_leaf=lambda x: x is None)


# The backbone fields a downstream task never reads (absent or None fields are skipped):
# the masked-language-model head of a sequence encoder (tied or untied decoder), and the
# masked-expression or masked-gene head, mask vector and fitted tokenizer statistics of the
# foundation model (ours, Geneformer's or scGPT's).
UNUSED_FIELDS = {
    TransformerSequenceEncoder: ("mlm_dense", "mlm_norm", "mlm_bias", "mlm_decoder"),
    DifferentiableFoundationModel: (
        "tokenizer",
        "mask_value",
        "head_hidden",
        "head_middle",
        "head_output",
        "head_norm",
        "head_bias",
    ),
}


def unused_by_tasks(model: TaskModel) -> list[Callable[[TaskModel], Any]]:
    """Selectors of the backbone parameters a downstream task never uses (`UNUSED_FIELDS`
    of the backbone's class, those the model holds)."""
    backbone = model.backbone
    names = next((v for k, v in UNUSED_FIELDS.items() if isinstance(backbone, k)), ())
    return [
        lambda m, name=name: getattr(m.backbone, name)
        for name in names
        if getattr(backbone, name, None) is not None
    ]


def prepare(
    model: TaskModel,
    strategy: str,
    *,
    freeze_layers: int = 1,
    lora_rank: int = 8,
    lora_alpha: float = 16.0,
    key: PRNGKeyArray,
) -> tuple[TaskModel, Any]:
    """The model to train under `strategy` and its filter spec (True = trained)."""
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; choose one of {STRATEGIES}")
    has_stack = hasattr(model.backbone, "stack")
    if strategy in ("partial", "lora") and not has_stack:
        raise ValueError(f"strategy {strategy!r} needs a transformer backbone")
    if strategy == "partial":
        stack = split_stack(model.backbone.stack, freeze_layers)
        model = eqx.tree_at(lambda m: m.backbone.stack, model, stack)
    if strategy == "lora":
        model = add_lora(model, lora_rank, lora_alpha, key=key)

    nothing = jax.tree.map(lambda _: False, model)
    if strategy == "full":
        spec = jax.tree.map(eqx.is_array, model)
        for where in unused_by_tasks(model):
            spec = _set_trainable(spec, model, where, False)
    elif strategy == "partial":
        spec = _set_trainable(nothing, model, lambda m: m.backbone.stack.rest, True)
        if getattr(model.backbone, "final_norm", None) is not None:
            spec = _set_trainable(spec, model, lambda m: m.backbone.final_norm, True)
    elif strategy == "lora":
        spec = lora_filter(model)
    else:
        spec = nothing
    return model, _set_trainable(spec, model, lambda m: m.head, True)


def finish(model: TaskModel) -> TaskModel:
    """Undo `prepare`'s surgery: merged LoRA weights and an uncut layer stack."""
    model = merge_lora(model)
    stack = getattr(model.backbone, "stack", None)
    if isinstance(stack, SplitTransformerStack):
        model = eqx.tree_at(lambda m: m.backbone.stack, model, stack.merge())
    return model
