"""Pretraining throughput against PyTorch ``transformers``: ``python -m benchmarks.pretrain``.

Two pairs, each timed in the same process on the same CPU, interleaved round by round
(the machine may be shared), after warm-up (compilation is reported separately):

* DNA: `TransformerSequenceEncoder` (BERT-small-like: 4 layers, width 256, 4 heads, MLP
  1024, post-LN, GELU, learned positions, sequence 512, batch 16) trained by masked
  language modelling on real human chrX windows, against `BertForMaskedLM` with the same
  dimensions on the same token ids and masks;
* cells: `DifferentiableFoundationModel` with a Geneformer-shaped stack (6 layers, width
  256, 4 heads, MLP 512, ReLU, post-LN; Theodoris et al., 2023) over 511 gene tokens of real
  PBMCs, against a `BertForMaskedLM` of that shape predicting masked gene ids.

Both sides take one AdamW step per batch, at dropout 0.0 and 0.1 (torch: hidden and
attention-probability dropout; ours: residual-branch and embedding dropout). MFU is each
side's executed matmul FLOPs per second over the best float32 matmul rate measured on
this CPU (by JAX and by torch, the best of a reading before and one after the pairs).
The last line printed is one JSON object.
"""

from __future__ import annotations

import dataclasses
import json
import os
import statistics
import time

import jax
import numpy as np
import torch
import transformers

from pretraining.dna_data import DnaCorpus, MaskedWindows
from pretraining.expression_data import ExpressionCorpus
from pretraining.mesh import make_mesh
from pretraining.objectives import masked_expression_sums, masked_token_sums
from pretraining.optimizer import OptimizerConfig
from pretraining.steps import CompiledSteps
from pretraining.throughput import (
    encoder_train_flops,
    foundation_train_flops,
    measure_matmul_peak,
)
from zoo.common.transformer import TransformerConfig
from zoo.expression.foundation_model import (
    DifferentiableFoundationModel,
    DifferentiableFoundationModelConfig,
)
from zoo.expression.gene_tokenizer import N_SPECIAL, GeneTokenizerConfig
from zoo.sequence.encoder import TransformerSequenceEncoder, TransformerSequenceEncoderConfig
from zoo.sequence.nucleotides import PAD

BATCH = 16
SEQ_LEN = 512
ROUNDS = int(os.environ.get("BENCH_ROUNDS", 5))
STEPS_PER_ROUND = int(os.environ.get("BENCH_STEPS", 2))
ENCODER = TransformerConfig(dim=256, n_layers=4, n_heads=4, mlp_dim=1024, norm="post")
GENEFORMER = TransformerConfig(
    dim=256, n_layers=6, n_heads=4, mlp_dim=512, norm="post", activation="relu"
)


def torch_peak(size: int = 1024, repeats: int = 10) -> float:
    a = torch.ones(size, size)
    a @ a
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ a
        best = min(best, time.perf_counter() - start)
    return 2.0 * size**3 / best


def bert(config: TransformerConfig, vocab: int, dropout: float) -> torch.nn.Module:
    torch.manual_seed(0)
    return transformers.BertForMaskedLM(
        transformers.BertConfig(
            vocab_size=vocab,
            hidden_size=config.dim,
            num_hidden_layers=config.n_layers,
            num_attention_heads=config.n_heads,
            intermediate_size=config.mlp_dim,
            hidden_act=config.activation,
            max_position_embeddings=SEQ_LEN,
            hidden_dropout_prob=dropout,
            attention_probs_dropout_prob=dropout,
            type_vocab_size=1,
            pad_token_id=0,
        )
    ).train()


class TorchSide:
    """One AdamW step of a `BertForMaskedLM` on fixed inputs."""

    def __init__(self, model, input_ids, attention_mask, labels):
        self.model = model
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
        self.inputs = {
            "input_ids": torch.as_tensor(input_ids, dtype=torch.long),
            "attention_mask": torch.as_tensor(attention_mask, dtype=torch.long),
            "labels": torch.as_tensor(labels, dtype=torch.long),
        }

    def step(self) -> float:
        loss = self.model(**self.inputs).loss
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(loss)


class JaxSide:
    """One AdamW step of a zoo model through `pretraining.steps.CompiledSteps`."""

    def __init__(self, model, objective, batch):
        self.steps = CompiledSteps(
            model,
            objective,
            OptimizerConfig(learning_rate=1e-4, warmup_steps=0),
            1000,
            make_mesh("data=1", jax.devices()[:1]),
            seed=0,
            batch_size=BATCH,
        )
        self.params, self.opt_state = self.steps.place(model)
        self.batch = jax.device_put(batch, self.steps.batch_sharding)
        self.index = 0

    def step(self) -> float:
        self.params, self.opt_state, sums = self.steps.train_step(
            self.params, self.opt_state, self.batch, np.int32(self.index)
        )
        self.index += 1
        return float(sums["loss_sum"] / sums["count"])


def timed(side, steps: int) -> float:
    start = time.perf_counter()
    for _ in range(steps):
        side.step()
    return (time.perf_counter() - start) / steps


def compare(ours, theirs) -> dict:
    """Compile/warm up both, then time them in alternating rounds; median seconds/step."""
    start = time.perf_counter()
    ours.step()
    compile_s = time.perf_counter() - start
    ours.step()
    theirs.step()
    times: dict[str, list[float]] = {"ours": [], "peer": []}
    for _ in range(ROUNDS):
        times["ours"].append(timed(ours, STEPS_PER_ROUND))
        times["peer"].append(timed(theirs, STEPS_PER_ROUND))
    return {
        "ours_s": statistics.median(times["ours"]),
        "peer_s": statistics.median(times["peer"]),
        "ours_rounds_s": times["ours"],
        "peer_rounds_s": times["peer"],
        "compile_s": compile_s,
    }


def dna_pair(windows: MaskedWindows, dropout: float) -> dict:
    config = TransformerSequenceEncoderConfig(
        transformer=dataclasses.replace(ENCODER, dropout=dropout),
        max_len=SEQ_LEN,
        positions="learned",
    )
    batch = windows.batch(0, range(BATCH))
    labels = np.full(batch.tokens.shape, -100)
    np.put_along_axis(labels, batch.positions, batch.targets, axis=1)
    vocab = config.tokenizer.vocab_size
    ours = JaxSide(
        TransformerSequenceEncoder(config, key=jax.random.key(0)), masked_token_sums, batch
    )
    theirs = TorchSide(bert(ENCODER, vocab, dropout), batch.tokens, batch.tokens != PAD, labels)
    result = compare(ours, theirs)
    tokens = BATCH * SEQ_LEN
    ours_flops = encoder_train_flops(ENCODER, SEQ_LEN, vocab, windows.n_targets) * BATCH
    peer_flops = encoder_train_flops(ENCODER, SEQ_LEN, vocab, SEQ_LEN) * BATCH
    return summarise(result, tokens, "tokens", ours_flops, peer_flops)


def cell_pair(corpus: ExpressionCorpus, dropout: float) -> dict:
    config = DifferentiableFoundationModelConfig(
        tokenizer=GeneTokenizerConfig(n_genes=corpus.n_genes, max_tokens=SEQ_LEN - 1),
        transformer=dataclasses.replace(GENEFORMER, dropout=dropout),
    )
    model = DifferentiableFoundationModel(config, key=jax.random.key(0))
    model = model.with_tokenizer(corpus.fit_tokenizer(model.tokenizer))
    counts = corpus.read(0, range(BATCH))
    # the peer reads the same cells as gene-id tokens ([CLS] + ranked genes), 15 % masked
    tokens = jax.vmap(model.tokenizer)(counts)
    ids = np.concatenate([np.ones((BATCH, 1), int), np.asarray(tokens.ids)], axis=1)
    mask = np.concatenate([np.ones((BATCH, 1), bool), np.asarray(tokens.mask)], axis=1)
    rng = np.random.default_rng(0)
    chosen = mask & (rng.random(mask.shape) < 0.15)
    chosen[:, 0] = False
    labels = np.where(chosen, ids, -100)
    ids = np.where(chosen, 2, ids)  # [MASK]
    vocab = corpus.n_genes + N_SPECIAL
    ours = JaxSide(model, masked_expression_sums, counts)
    theirs = TorchSide(bert(GENEFORMER, vocab, dropout), ids, mask, labels)
    result = compare(ours, theirs)
    ours_flops = foundation_train_flops(GENEFORMER, SEQ_LEN) * BATCH
    peer_flops = encoder_train_flops(GENEFORMER, SEQ_LEN, vocab, SEQ_LEN) * BATCH
    return summarise(result, BATCH, "cells", ours_flops, peer_flops)


def summarise(result, units, unit, ours_flops, peer_flops) -> dict:
    return {
        **{k: round(v, 4) if isinstance(v, float) else v for k, v in result.items()},
        f"ours_{unit}_per_s": round(units / result["ours_s"], 1),
        f"peer_{unit}_per_s": round(units / result["peer_s"], 1),
        "speedup": round(result["peer_s"] / result["ours_s"], 3),
        "ours_gflop_per_s": round(ours_flops / result["ours_s"] / 1e9, 2),
        "peer_gflop_per_s": round(peer_flops / result["peer_s"] / 1e9, 2),
    }


def peak_now() -> float:
    """The best float32 matmul rate of this CPU just now, by JAX and by torch."""
    return max(measure_matmul_peak(), torch_peak())


def with_mfu(result: dict, peak: float) -> dict:
    return {
        **result,
        "ours_mfu": round(result["ours_gflop_per_s"] * 1e9 / peak, 3),
        "peer_mfu": round(result["peer_gflop_per_s"] * 1e9 / peak, 3),
    }


def main() -> None:
    torch.set_num_threads(os.cpu_count() or 1)
    peak = peak_now()
    corpus = DnaCorpus(["human-chrX-70Mb"])
    windows = MaskedWindows(corpus, TransformerSequenceEncoderConfig().tokenizer, SEQ_LEN, seed=0)
    cells = ExpressionCorpus(["pbmc3k"])
    results = {}
    for dropout in (0.0, 0.1):
        results[f"dna_dropout_{dropout}"] = dna_pair(windows, dropout)
        print(json.dumps({f"dna_dropout_{dropout}": results[f"dna_dropout_{dropout}"]}))
        results[f"cells_dropout_{dropout}"] = cell_pair(cells, dropout)
        print(json.dumps({f"cells_dropout_{dropout}": results[f"cells_dropout_{dropout}"]}))
    # a shared machine may have been busy at start-up: the peak is the best of two readings
    peak = max(peak, peak_now())
    results = {name: with_mfu(result, peak) for name, result in results.items()}
    dna = results["dna_dropout_0.0"]
    print(
        json.dumps(
            {
                "name": "pretrain",
                "ours_s": dna["ours_s"],
                "peer": f"transformers {transformers.__version__} BertForMaskedLM, torch "
                f"{torch.__version__}",
                "peer_s": dna["peer_s"],
                "speedup": dna["speedup"],
                "device": jax.devices()[0].device_kind,
                "cpu_threads": os.cpu_count(),
                "matmul_peak_gflops": round(peak / 1e9, 1),
                "batch": BATCH,
                "seq_len": SEQ_LEN,
                **results,
            }
        )
    )


if __name__ == "__main__":
    main()
