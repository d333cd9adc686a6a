"""Fine-tuning and embedding work on the field's published models as on the zoo's own.

A tiny random instance of each family is built with PyTorch (``transformers``, or scGPT's
own model from its wheel), saved in the upstream layout and imported: Nucleotide Transformer
v2 (rotary, bias-free SwiGLU, untied decoder), ESM-2 (protein, token dropout), DNABERT-3,
Geneformer V1 and scGPT. Then, through finetuning's own entry points:

- every strategy trains exactly the parameters the task's loss reaches: under ``full``, a
  leaf is trained if and only if its task-loss gradient is non-zero (so no unused head,
  tied or untied, is trained, and nothing used is left frozen); ``linear``, ``partial`` and
  ``lora`` train the head, the later layers and the LoRA factors;
- the from-scratch baseline (`finetuning.backbones.same_architecture_from_scratch`) has the
  imported architecture, new weights and, for cells, the imported gene statistics;
- ``full`` and ``lora`` fine-tunes (`finetuning.train.fine_tune`) lower the training loss on
  real data: transcript-of-origin of 60 bp windows of the salmon sample's transcripts for
  the DNA models, pbmc3k cell types for the cell models; ESM-2 on a synthetic protein task
  through `finetuning.api.finetune` (a table of sequences and labels);
- `finetuning.api.embed` gives each model's pooled embedding of every example.
"""

from __future__ import annotations

import anndata as ad
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest
from upstream_models import (
    DNABERT_VOCAB,
    ESM2_VOCAB,
    saved,
    tiny_bert,
    tiny_dnabert,
    tiny_esm,
    with_gated_feed_forward,
    write_geneformer_dictionaries,
    write_scgpt_folder,
)

import zoo
from checkpoints.geneformer_import import import_geneformer, read_token_dictionary
from checkpoints.scgpt_import import read_vocabulary
from finetuning.api import embed, finetune
from finetuning.backbones import same_architecture_from_scratch
from finetuning.run import task_model
from finetuning.strategies import UNUSED_FIELDS, prepare
from finetuning.tasks import Split, Task
from finetuning.train import FineTuneConfig, backbone_inputs, fine_tune
from finetuning.user_data import UserDataError
from zoo.sequence.fasta import read_fasta
from zoo.sequence.vocabulary_tokenizer import VocabularyTokenizer

SCGPT_ARGS = {  # whole-human's args.json structure, 32 wide, 2 layers, 64 tokens
    "input_emb_style": "continuous",
    "n_bins": 51,
    "max_seq_len": 64,
    "nlayers": 2,
    "nheads": 4,
    "embsize": 32,
    "d_hid": 64,
    "dropout": 0.2,
    "n_layers_cls": 3,
    "mask_value": -1,
    "pad_value": -2,
    "MVC": True,
}
FAMILIES = ("nt-v2", "esm2", "dnabert", "geneformer", "scgpt")
TRAINING = {"max_steps": 12, "warmup_steps": 2, "eval_every": 4, "batch_size": 16}
TRAINING |= {"patience": 10}
LEARNING_RATES = {"full": 1e-3, "lora": 3e-3}


def _splits(inputs, labels, rng) -> tuple[Split, Split, Split]:
    """A shuffled 60/20/20 split."""
    order = rng.permutation(len(labels))
    parts = np.split(order, [int(0.6 * len(order)), int(0.8 * len(order))])
    if isinstance(inputs, list):
        return tuple(Split([inputs[i] for i in p], labels[p]) for p in parts)
    return tuple(Split(inputs[p], labels[p]) for p in parts)


@pytest.fixture(scope="module")
def dna_task(shared_data) -> Task:
    """Which of two real transcripts a 60 bp window comes from (60 windows each)."""
    records = list(read_fasta(shared_data / "salmon_sample" / "transcripts.fasta"))
    inputs, labels = [], []
    for label, (_, sequence) in enumerate(records[:2]):
        sequence = sequence.upper()
        starts = np.linspace(0, len(sequence) - 60, 60).astype(int)
        inputs += [sequence[s : s + 60] for s in starts]
        labels += [label] * len(starts)
    train, validation, test = _splits(inputs, np.array(labels), np.random.default_rng(0))
    names = tuple(name.split()[0] for name, _ in records[:2])
    return Task("transcript-of-origin", "dna", names, train, validation, test, "salmon_sample")


@pytest.fixture(scope="module")
def pbmc(shared_data):
    """The first 150 pbmc3k cells: raw counts, gene symbols and integer cell types."""
    data = ad.read_h5ad(shared_data / "pbmc3k_2000hvg_counts.h5ad")[:150]
    types = data.obs["cell_type"].astype(str).to_numpy()
    classes = tuple(sorted(set(types)))
    counts = np.asarray(data.X.toarray(), np.float32)
    return counts, list(data.var_names), np.array([classes.index(t) for t in types]), classes


def cell_task(pbmc, genes: list[str], symbols: list[str]) -> Task:
    """pbmc3k cell types, counts in the model's gene order (`genes`, named by `symbols`)."""
    counts, var_names, labels, classes = pbmc
    column = {g: j for j, g in enumerate(var_names)}
    aligned = counts[:, [column[s] for s in symbols]]
    assert len(genes) == aligned.shape[1]
    train, validation, test = _splits(aligned, labels, np.random.default_rng(0))
    return Task("pbmc3k", "cells", classes, train, validation, test, "pbmc3k")


def nt_v2_folder(folder):
    vocab = list(VocabularyTokenizer("nt-v2", 6).vocab)
    model = tiny_esm(
        vocab,
        0,
        position_embedding_type="rotary",
        tie_word_embeddings=False,
        token_dropout=False,
        add_bias_fnn=False,
    )
    saved(with_gated_feed_forward(model), folder)
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")


def esm2_folder(folder):
    model = tiny_esm(ESM2_VOCAB, 1, position_embedding_type="rotary", token_dropout=True)
    saved(model, folder)
    (folder / "vocab.txt").write_text("\n".join(ESM2_VOCAB) + "\n")


def dnabert_folder(folder):
    saved(tiny_dnabert(2), folder)
    (folder / "vocab.txt").write_text("\n".join(DNABERT_VOCAB) + "\n")


@pytest.fixture(scope="module")
def imported(tmp_path_factory, dna_task, pbmc):
    """family -> (backbone imported from the upstream layout, its task)."""
    out = {}
    for family, write in (("nt-v2", nt_v2_folder), ("esm2", esm2_folder)):
        folder = tmp_path_factory.mktemp(family)
        write(folder)
        out[family] = (zoo.from_pretrained(str(folder)), None)
    out["nt-v2"] = (out["nt-v2"][0], dna_task)
    folder = tmp_path_factory.mktemp("dnabert")
    dnabert_folder(folder)
    out["dnabert"] = (zoo.from_pretrained(str(folder)), dna_task)

    symbols = pbmc[1]
    ensembl = [f"ENSG{i:011d}" for i in range(100, 100 + len(symbols))]
    folder = tmp_path_factory.mktemp("geneformer")
    dictionaries = write_geneformer_dictionaries(folder / "repo", ensembl, "V1")
    saved(tiny_bert(2 + len(ensembl), seed=3, hidden_act="relu"), folder / "model")
    model = import_geneformer(
        folder / "model",
        token_dictionary=dictionaries.token_dictionary,
        gene_medians=dictionaries.gene_medians,
        version="V1",
    )
    genes = list(read_token_dictionary(dictionaries.token_dictionary).genes)
    symbol_of = dict(zip(ensembl, symbols, strict=True))
    out["geneformer"] = (model, cell_task(pbmc, genes, [symbol_of[g] for g in genes]))

    folder = tmp_path_factory.mktemp("scgpt")
    write_scgpt_folder(folder, sorted(symbols), SCGPT_ARGS)
    genes = list(read_vocabulary(folder / "vocab.json").genes)
    out["scgpt"] = (zoo.from_pretrained(str(folder)), cell_task(pbmc, genes, genes))
    return out


def protein_task() -> Task:
    """Synthetic: 30-residue proteins drawn from a hydrophobic (label 1) or a charged
    (label 0) residue composition."""
    rng = np.random.default_rng(0)
    pools = ("DEKRSTNQ", "AILMFVWG")
    labels = np.arange(90) % 2
    inputs = ["".join(rng.choice(list(pools[y]), 30)) for y in labels]
    train, validation, test = _splits(inputs, labels, rng)
    return Task("hydrophobic", "dna", ("charged", "hydrophobic"), train, validation, test, "")


def by_path(tree) -> dict:
    """The leaves of `tree` (None is no leaf) by their path."""
    return {jax.tree_util.keystr(p): x for p, x in jax.tree_util.tree_leaves_with_path(tree)}


def example_inputs(backbone, inputs) -> tuple[jax.Array, ...]:
    """What `backbone` reads for `inputs` (sequences or counts), as device arrays."""
    return tuple(jnp.asarray(x) for x in backbone_inputs(backbone, inputs))


@pytest.mark.parametrize("family", FAMILIES)
def test_full_trains_exactly_what_the_task_loss_reaches(imported, family):
    backbone, task = imported[family]
    task = task or protein_task()
    model = task_model(task, backbone)
    inputs = example_inputs(backbone, task.train.inputs[:4])

    @eqx.filter_grad
    def grads(m):
        return jax.vmap(eqx.nn.inference_mode(m))(*inputs).sum()

    reached = {key: bool(jnp.any(x != 0)) for key, x in by_path(grads(model)).items()}
    prepared, spec = prepare(model, "full", key=jax.random.key(0))
    marks = by_path(spec)
    trained = {key: marks[key] for key in by_path(eqx.filter(model, eqx.is_inexact_array))}
    assert set(reached) == set(trained)
    assert reached == trained, {k: v for k, v in reached.items() if trained[k] != v}
    # every field a task never uses is frozen, whichever of them this family holds
    for name in next(v for k, v in UNUSED_FIELDS.items() if isinstance(backbone, k)):
        field = getattr(prepared.backbone, name)
        if field is not None:
            marks = jax.tree.leaves(getattr(spec.backbone, name))
            assert marks and not any(marks), name


@pytest.mark.parametrize("family", FAMILIES)
def test_linear_partial_and_lora_train_their_parts(imported, family):
    backbone, task = imported[family]
    model = task_model(task or protein_task(), backbone)
    for strategy in ("linear", "partial", "lora"):
        _, spec = prepare(model, strategy, freeze_layers=1, key=jax.random.key(0))
        trained = {key for key, mark in by_path(spec).items() if mark is True}
        assert {k for k in trained if k.startswith(".head")}, strategy
        rest = {k for k in trained if not k.startswith(".head")}
        if strategy == "linear":
            assert not rest
        elif strategy == "partial":
            assert rest and all(".stack.rest." in k or "final_norm" in k for k in rest), rest
        else:
            assert rest and all("lora" in k for k in rest), rest


@pytest.mark.parametrize("family", FAMILIES)
def test_the_from_scratch_baseline_has_the_imported_architecture(imported, family):
    backbone, _ = imported[family]
    fresh = same_architecture_from_scratch(backbone)
    assert type(fresh) is type(backbone) and fresh.config == backbone.config
    ours, theirs = (
        by_path(eqx.filter(fresh, eqx.is_array)),
        by_path(eqx.filter(backbone, eqx.is_array)),
    )
    assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in theirs.items()}
    embedding = (
        ".gene_embedding.weight" if family in ("geneformer", "scgpt") else ".token_embedding.weight"
    )
    assert not np.array_equal(ours[embedding], theirs[embedding])
    if family in ("geneformer", "scgpt"):  # the fitted gene statistics are kept
        kept = [k for k in ours if k.startswith(".tokenizer.")]
        assert kept and all(np.array_equal(ours[k], theirs[k]) for k in kept)


# Each family once and each strategy twice: every pair would compile twice as many steps.
@pytest.mark.parametrize(
    ("family", "strategy"),
    [("nt-v2", "full"), ("dnabert", "lora"), ("geneformer", "full"), ("scgpt", "lora")],
)
def test_fine_tuning_lowers_the_training_loss(imported, family, strategy):
    backbone, task = imported[family]
    config = FineTuneConfig(strategy=strategy, learning_rate=LEARNING_RATES[strategy], **TRAINING)
    result = fine_tune(task_model(task, backbone), task, config, progress=False)
    losses = [record["train_loss"] for record in result.history]
    assert len(losses) == 3 and np.all(np.isfinite(losses))
    assert losses[-1] < losses[0], losses
    assert type(result.model.backbone) is type(backbone)
    assert result.model.backbone.config == backbone.config


def test_esm2_fine_tunes_on_protein_sequences_through_the_api(imported, tmp_path):
    backbone, _ = imported["esm2"]
    task = protein_task()
    splits = (task.train, task.validation, task.test)
    table = pd.DataFrame(
        {
            "sequence": task.train.inputs + task.validation.inputs + task.test.inputs,
            "label": [task.classes[y] for s in splits for y in s.labels],
            "split": ["train"] * len(task.train)
            + ["validation"] * len(task.validation)
            + ["test"] * len(task.test),
        }
    )
    config = FineTuneConfig(strategy="lora", learning_rate=LEARNING_RATES["lora"], **TRAINING)
    result, _ = finetune(table, base=backbone, out=tmp_path / "esm2", config=config, progress=False)
    losses = [record["train_loss"] for record in result.history]
    assert losses[-1] < losses[0], losses


@pytest.mark.parametrize("family", FAMILIES)
def test_embed_gives_the_pooled_embedding_of_every_example(imported, family):
    backbone, task = imported[family]
    task = task or protein_task()
    data = task.test.inputs
    got = embed(backbone, data, batch_size=8, progress=False)
    assert got.shape == (len(task.test), backbone.config.transformer.dim)
    model = eqx.nn.inference_mode(task_model(task, backbone))
    direct = jax.vmap(model.embed)(*example_inputs(backbone, data[:3]))
    np.testing.assert_allclose(got[:3], np.asarray(direct), atol=1e-4, rtol=0)


def test_sequences_are_checked_by_the_checkpoints_own_tokenizer(imported):
    esm2, nt_v2 = imported["esm2"][0], imported["nt-v2"][0]
    with pytest.raises(UserDataError, match="row 2: letter 'J' at position 2"):
        embed(esm2, ["MKV", "MKJ"], progress=False)
    # NT v2: <cls>, then 6-mers and leftover letters: 8,000 letters make 1 + 1,333 + 2 tokens
    long, max_len = "ACGT" * 2000, nt_v2.config.max_len
    assert max_len < 1336
    with pytest.raises(UserDataError, match=f"1336 tokens, more than the {max_len}"):
        embed(nt_v2, [long], progress=False)
    cut = embed(nt_v2, [long], truncate=True, progress=False)
    whole = embed(nt_v2, [long[: 6 * (max_len - 1)]], progress=False)
    np.testing.assert_array_equal(cut, whole)
