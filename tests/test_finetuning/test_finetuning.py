"""Fine-tuning: each strategy trains only what it should, LoRA merges exactly, and a short
fine-tune on real TF-binding peaks beats chance."""

import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import zoo
from finetuning.strategies import finish, prepare
from finetuning.tasks import Split, Task, tf_binding
from finetuning.train import FineTuneConfig, fine_tune
from zoo.common.lora import add_lora, merge_lora

ENCODER = zoo.TransformerSequenceEncoderConfig(
    transformer=zoo.TransformerConfig(dim=32, n_layers=3, n_heads=4, mlp_dim=64, dropout=0.0),
    kmer=3,
)


@pytest.fixture(scope="module")
def task():
    return tf_binding()


@pytest.fixture(scope="module")
def small_task(task):
    return dataclasses.replace(
        task,
        train=task.train.take(64),
        validation=task.validation.take(32),
        test=task.test.take(32),
    )


def new_model(classes):
    return zoo.TaskModel(
        zoo.TaskModelConfig(backbone=ENCODER, labels=classes), key=jax.random.key(0)
    )


def leaves_by_key(model):
    from checkpoints.tree_keys import named_leaves

    return named_leaves(model, eqx.is_array)


@pytest.mark.parametrize(
    ("strategy", "trained"),
    [
        ("linear", lambda k: k.startswith("head.")),
        ("full", lambda k: not k.startswith("backbone.mlm_")),
        ("lora", lambda k: k.startswith("head.") or k.startswith("backbone.stack.layers.")),
        (
            "partial",
            lambda k: (
                k.startswith("head.")
                or k.startswith("backbone.stack.")
                or k.startswith("backbone.final_norm")
            ),
        ),
    ],
)
def test_each_strategy_trains_only_what_it_should(small_task, strategy, trained):
    before = new_model(small_task.classes)
    config = FineTuneConfig(
        strategy=strategy, max_steps=4, warmup_steps=1, eval_every=4, batch_size=8, freeze_layers=1
    )
    after = fine_tune(before, small_task, config, progress=False).model
    old, new = leaves_by_key(before), leaves_by_key(after)
    assert sorted(old) == sorted(new), "the result must be a plain model again"
    changed = {k for k in old if not np.array_equal(old[k], new[k])}
    unchanged = set(old) - changed
    assert changed and all(trained(k) for k in changed), sorted(changed)
    if strategy == "partial":  # the first layer (row 0 of every stacked array) stays frozen
        for k in (k for k in old if ".layers." in k):
            np.testing.assert_array_equal(old[k][0], new[k][0])
            assert not np.array_equal(old[k][1:], new[k][1:]), k
    if strategy == "lora":  # only the attention projections change in the stack
        assert all(
            any(p in k for p in ("query", "key", "value", "attention_output", "head."))
            for k in changed
        )
    assert all(k.startswith("backbone.mlm_") or k in unchanged or trained(k) for k in old)


def test_frozen_leaves_get_no_optimiser_state(small_task):
    model, spec = prepare(
        new_model(small_task.classes), "partial", freeze_layers=2, key=jax.random.key(0)
    )
    trainable, frozen = eqx.partition(model, spec)
    n_trainable = sum(x.size for x in jax.tree.leaves(trainable))
    stack = model.backbone.stack
    assert stack.first.n_layers == 2 and stack.rest.n_layers == 1
    assert jax.tree.leaves(eqx.filter(frozen, eqx.is_array))
    assert n_trainable < sum(x.size for x in jax.tree.leaves(eqx.filter(model, eqx.is_array)))
    assert all(
        x is None
        for x in jax.tree.leaves(trainable.backbone.stack.first, is_leaf=lambda x: x is None)
    )


def test_lora_merged_model_equals_unmerged(task):
    model = eqx.nn.inference_mode(new_model(task.classes))
    adapted = add_lora(model, rank=4, alpha=8.0, key=jax.random.key(1))
    # give the factors non-zero values, as after training
    adapted = jax.tree.map(
        lambda x: (
            x + 0.05 * jax.random.normal(jax.random.key(2), x.shape)
            if eqx.is_array(x) and x.ndim == 3 and x.shape[-1] == 4
            else x
        ),
        adapted,
    )
    merged = merge_lora(adapted)
    ids, mask = model.backbone.tokenizer(task.test.inputs[:8])
    ids, mask = jnp.asarray(ids), jnp.asarray(mask)
    a, b, c = (jax.vmap(m)(ids, mask) for m in (adapted, merged, model))
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    assert not np.allclose(a, c, atol=1e-4), "the adapters did change the function"
    assert type(merged.backbone.stack.layers.query) is eqx.nn.Linear


def test_strategy_surgery_round_trips(task):
    model = new_model(task.classes)
    for strategy in ("partial", "lora"):
        prepared, _ = prepare(model, strategy, freeze_layers=1, key=jax.random.key(0))
        assert eqx.tree_equal(finish(prepared), model)


def test_short_fine_tune_beats_chance(task):
    small = dataclasses.replace(
        task, train=task.train.take(2000), validation=task.validation.take(200)
    )
    config = FineTuneConfig(
        strategy="full", max_steps=150, eval_every=50, batch_size=32, learning_rate=2e-3
    )
    result = fine_tune(new_model(task.classes), small, config, progress=False)
    # 200 balanced test peaks: chance is 0.5 (p < 1e-4 for accuracy >= 0.64 under chance)
    assert result.test["accuracy"] >= 0.64, result.test
    assert result.test["auroc"] >= 0.7, result.test


def test_bad_inputs_are_refused(task):
    three_classes = zoo.TaskModel(
        zoo.TaskModelConfig(backbone=ENCODER, n_outputs=3), key=jax.random.key(0)
    )
    with pytest.raises(ValueError, match="2-class"):
        fine_tune(three_classes, task, FineTuneConfig(), progress=False)
    with pytest.raises(zoo.ConfigError, match="strategy"):
        FineTuneConfig(strategy="most")
    cnn = zoo.TaskModel(
        zoo.TaskModelConfig(backbone_architecture="SequenceEmbedding"), key=jax.random.key(0)
    )
    with pytest.raises(ValueError, match="transformer backbone"):
        prepare(cnn, "lora", key=jax.random.key(0))
    assert isinstance(Split([], np.zeros(0)), Split) and Task
