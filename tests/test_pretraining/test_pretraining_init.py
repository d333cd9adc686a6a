"""Continued pretraining (``--init REF``): a tiny Nucleotide Transformer v2 saved in its
upstream layout continues masked language modelling on a real bacterial genome on 2
simulated CPU devices (a subprocess: ``XLA_FLAGS`` must be set before JAX starts) with its
own 6-mer tokenizer; our catalog ``dna-encoder-tiny`` continues on one device; a resume
from another checkpoint is refused, and so are architecture flags beside ``--init``
(continued pretraining of Geneformer-style gene-id models: ``test_pretraining_gene_ids.py``).

The first logged training loss is the loss of the loaded weights on step 0's batch; it is
recomputed here on one device from the loaded model, the same masked windows and the same
dropout keys (float32 sums in another order: within 1e-5 relative).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

import zoo
from pretraining.cli import main
from pretraining.dna_data import TRAIN, DnaCorpus, MaskedWindows
from pretraining.objectives import masked_token_sums
from pretraining.steps import row_keys
from zoo.sequence.vocabulary_tokenizer import VocabularyTokenizer

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "test_finetuning"))
from test_finetune_ported import nt_v2_folder

ROOT = Path(__file__).resolve().parents[2]
CORPUS = "bacteria-NC_008253"
SEQ_LEN, BATCH = 16, 4
COMMON = [
    "--seq-len", str(SEQ_LEN), "--batch-size", str(BATCH), "--steps", "3", "--warmup", "1",
    "--eval-every", "0", "--eval-batches", "1", "--save-every", "0", "--no-progress",
]  # fmt: skip


@pytest.fixture(scope="module")
def nt_run(tmp_path_factory):
    """``(NT v2 folder, run folder)`` after 3 steps of ``pretrain dna --init`` on 2 devices."""
    scratch = tmp_path_factory.mktemp("init")
    nt_v2_folder(scratch / "nt")
    env = {
        **os.environ,
        "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
        "PYTHONPATH": str(ROOT),
    }
    command = ["dna", CORPUS, "--init", str(scratch / "nt"), "--out", str(scratch / "out")]
    result = subprocess.run(
        [sys.executable, "-m", "pretraining", *command, "--mesh", "data=2", *COMMON],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]
    return scratch / "nt", scratch / "out"


def test_nt_windows_use_the_checkpoints_tokens():
    tokenizer = VocabularyTokenizer("nt-v2", 6)
    windows = MaskedWindows(DnaCorpus([CORPUS], val_fraction=0.05), tokenizer, SEQ_LEN, seed=0)
    assert windows.window == (SEQ_LEN - 1) * 6
    batch = windows.batch(0, range(8))
    assert batch.tokens.shape == (8, SEQ_LEN)
    assert (batch.tokens[:, 0] == tokenizer.vocab.index("<cls>")).all()
    n_special = 6  # <unk> <pad> <mask> <cls> <eos> <bos>
    assert (batch.targets >= n_special).all()  # k-mers only, never a special token
    masked = np.take_along_axis(batch.tokens, batch.positions, axis=1)
    assert (masked == tokenizer.mask_id).mean() > 0.5
    others = np.delete(batch.tokens, 0, axis=1)
    assert (others[others != tokenizer.mask_id] >= n_special).all()


def test_first_step_loss_is_the_loaded_models(nt_run):
    nt, out = nt_run
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["kind"] == "train"]
    assert [r["step"] for r in train] == [1, 2, 3]
    assert all(np.isfinite(r["loss"]) for r in records)

    model = zoo.from_pretrained(str(nt))
    windows = MaskedWindows(
        DnaCorpus([CORPUS], val_fraction=0.05), model.tokenizer, SEQ_LEN, seed=0
    )
    batch = windows.batch(0, range(BATCH))
    sums = masked_token_sums(model, batch, row_keys(0, TRAIN, jnp.int32(0), BATCH))
    reference = float(sums["loss_sum"]) / float(sums["count"])
    assert train[0]["loss"] == pytest.approx(reference, rel=1e-5)


def test_export_keeps_the_tokenizer_and_changes_the_weights(nt_run):
    nt, out = nt_run
    loaded, trained = zoo.from_pretrained(str(nt)), zoo.from_pretrained(str(out / "model"))
    assert trained.config == loaded.config
    assert trained.config.vocabulary == "nt-v2-6"
    assert trained.tokenizer.vocab == loaded.tokenizer.vocab
    before = np.asarray(loaded.token_embedding.weight)
    assert not np.array_equal(before, np.asarray(trained.token_embedding.weight))


def test_resume_from_another_checkpoint_is_refused(nt_run, capsys):
    _, out = nt_run
    argv = ["dna", CORPUS, "--init", "dna-encoder-tiny", "--out", str(out), "--resume", *COMMON]
    assert main(argv) == 2
    error = capsys.readouterr().err
    assert "other settings" in error and "now 'dna-encoder-tiny'" in error


def test_init_from_our_catalog_model(tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["dna", CORPUS, "--init", "dna-encoder-tiny", "--out", str(out), *COMMON]
    assert main(argv) == 0
    start, trained = (
        zoo.from_pretrained("dna-encoder-tiny"),
        zoo.from_pretrained(str(out / "model")),
    )
    assert trained.config == start.config
    summary = json.loads((out / "model" / "training_summary.json").read_text())
    assert summary["steps"] == 3 and np.isfinite(summary["final validation loss"])


def test_architecture_flags_are_refused_with_init(tmp_path, capsys):
    argv = ["dna", CORPUS, "--init", "dna-encoder-tiny", "--preset", "small"]
    assert main([*argv, "--out", str(tmp_path)]) == 2
    assert "fixes the architecture" in capsys.readouterr().err
