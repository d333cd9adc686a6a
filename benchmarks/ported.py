"""Embedding forward pass of imported published models against their PyTorch originals.

Two random models with published shapes are built in PyTorch ``transformers``, saved in
their upstream layout and imported into the zoo, so both sides hold identical weights:

- Geneformer V1 (``BertForMaskedLM``: 6 layers, hidden 256, 4 heads, intermediate 512,
  ReLU, 2,048 input genes, vocabulary 25,426), imported with `import_geneformer` beside
  token and median dictionaries of 25,424 synthetic genes. Input: cells of random counts
  with more than 2,048 expressed genes, tokenised once by the zoo's tokenizer; both sides
  get the same 2,048 rank-ordered gene ids (tokenisation is not timed). Embedding: the
  mean of the last layer's states over the cell's tokens (ours: ``encode(...)
  .cell_embedding``; peer: ``model.bert`` then the same mean).
- Nucleotide Transformer v2 50M (``EsmForMaskedLM`` with NT v2's bias-free gated
  feed-forward swapped in, `tests.upstream_models.with_gated_feed_forward`: 12 layers,
  hidden 512, 16 heads, intermediate 2,048, rotary, vocabulary 4,107), imported with
  `import_esm`. Input: random DNA tokenised by the zoo's NT v2 tokenizer to ``--nt-tokens``
  tokens (``<cls>`` and 6-mers). Embedding: mean of the last states over real tokens.

Ours is ``eqx.filter_jit(jax.vmap(...))``; the peer runs under ``torch.inference_mode``.
The first call of each side (ours: compile included) is timed apart; then ``--rounds``
interleaved rounds (ours, peer, ours, peer, ...) give best and median wall times, examples
per second and the ratio ours / peer in examples per second (the goal is at least 1.5).

Peak memory is measured per side in a fresh subprocess (so neither side's allocator
caches or the other's weights are counted): after loading the model (and, for ours,
compiling the call ahead of time, so compile memory is not counted), the kernel's resident
high-water mark is reset (``5 > /proc/self/clear_refs``) and ``first_call_peak_mb`` is
``VmHWM`` after the first call minus ``VmRSS`` before it: the forward pass's own working
memory, on CPU where both frameworks' buffers are host memory. ``repeat_call_peak_mb`` is
the same for a second call, which an allocator that keeps freed pages resident serves
mostly from pages already counted. (Python's
``tracemalloc`` sees neither torch's nor XLA's allocations; JAX's ``memory_stats()`` is
empty on CPU. On a GPU, ``torch.cuda.max_memory_allocated`` and JAX's
``peak_bytes_in_use`` are reported instead.)

``python -m benchmarks.ported [--batch 32] [--nt-tokens 1000] [--dtype bfloat16]``; the
last line printed is a JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import torch
import transformers

from checkpoints.esm_import import import_esm
from checkpoints.geneformer_import import (
    find_geneformer_dictionaries,
    import_geneformer,
    read_token_dictionary,
)
from tests.upstream_models import with_gated_feed_forward, write_geneformer_dictionaries
from zoo.expression.gene_tokenizer import GeneTokens
from zoo.sequence.vocabulary_tokenizer import VocabularyTokenizer

GENEFORMER_V1 = {
    "vocab_size": 25_426,
    "hidden_size": 256,
    "num_hidden_layers": 6,
    "num_attention_heads": 4,
    "intermediate_size": 512,
    "hidden_act": "relu",
    "max_position_embeddings": 2_048,
    "layer_norm_eps": 1e-12,
    "pad_token_id": 0,
    "attention_probs_dropout_prob": 0.02,
    "hidden_dropout_prob": 0.02,
}
NT_V2_50M = {
    "vocab_size": 4_107,
    "hidden_size": 512,
    "num_hidden_layers": 12,
    "num_attention_heads": 16,
    "intermediate_size": 2_048,
    "position_embedding_type": "rotary",
    "max_position_embeddings": 2_050,
    "layer_norm_eps": 1e-12,
    "pad_token_id": 1,
    "mask_token_id": 2,
    "emb_layer_norm_before": False,
    "token_dropout": False,
    "tie_word_embeddings": False,
    "add_bias_fnn": False,
    "attention_probs_dropout_prob": 0.0,
    "hidden_dropout_prob": 0.0,
}
N_SPECIALS = 2  # Geneformer V1: <pad> <mask>


def torch_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def build(folder: Path) -> None:
    """Both random upstream models, saved in their layouts under `folder`."""
    torch.manual_seed(0)
    bert = transformers.BertForMaskedLM(transformers.BertConfig(**GENEFORMER_V1))
    bert.save_pretrained(folder / "geneformer" / "model", safe_serialization=True)
    genes = [f"ENSG{i:011d}" for i in range(GENEFORMER_V1["vocab_size"] - N_SPECIALS)]
    write_geneformer_dictionaries(folder / "geneformer" / "repo", genes, "V1")
    nt_reference().save_pretrained(folder / "nt", safe_serialization=True)
    vocab = VocabularyTokenizer("nt-v2", 6).vocab
    (folder / "nt" / "vocab.txt").write_text("\n".join(vocab) + "\n")


def nt_reference() -> transformers.EsmForMaskedLM:
    """The random NT v2 50M-shaped model, the same on every call (fixed seed): the peer
    rebuilds it rather than loading, since ``save_pretrained`` writes legacy layer-norm
    names (gamma/beta) that only the zoo's importer and ``from_pretrained`` map back."""
    torch.manual_seed(1)
    config = transformers.EsmConfig(**NT_V2_50M)
    return with_gated_feed_forward(transformers.EsmForMaskedLM(config))


def dictionaries(folder: Path):
    return find_geneformer_dictionaries(folder / "geneformer" / "repo", "V1")


def inputs(model_name: str, folder: Path, args) -> tuple[np.ndarray, np.ndarray]:
    """``(ids, mask)`` of one batch, the same on both sides (fixed seed)."""
    rng = np.random.default_rng(0)
    if model_name == "nt":
        letters = 6 * (args.nt_tokens - 1)
        tokenizer = VocabularyTokenizer("nt-v2", 6)
        dna = ["".join(rng.choice(list("ACGT"), letters)) for _ in range(args.batch)]
        return tokenizer(dna)
    paths = dictionaries(folder)
    model = geneformer(folder)
    n_genes = len(read_token_dictionary(paths.token_dictionary).genes)
    counts = rng.poisson(0.3, (args.batch, n_genes)).astype(np.float32)
    tokens = jax.vmap(model.tokenizer)(jnp.asarray(counts))
    ids, mask = np.asarray(tokens.ids), np.asarray(tokens.mask)
    assert mask.all(), "every cell should fill its 2,048 tokens"
    return ids, mask


def geneformer(folder: Path):
    paths = dictionaries(folder)
    return import_geneformer(
        folder / "geneformer" / "model",
        token_dictionary=paths.token_dictionary,
        gene_medians=paths.gene_medians,
        version="V1",
    )


def ours(model_name: str, folder: Path, dtype: str):
    """A function ``(ids, mask) -> (batch, dim)`` embeddings of the imported model."""
    model = geneformer(folder) if model_name == "geneformer" else import_esm(folder / "nt")
    model = eqx.nn.inference_mode(model)
    if dtype == "bfloat16":
        model = jax.tree.map(
            lambda x: x.astype(jnp.bfloat16) if eqx.is_inexact_array(x) else x, model
        )

    if model_name == "geneformer":

        def one(net, ids, mask):
            tokens = GeneTokens(ids, jnp.zeros(ids.shape, jnp.float32), mask)
            return net.encode(tokens).cell_embedding

    else:

        def one(net, ids, mask):
            return net(ids, mask).pooled

    params, static = eqx.partition(model, eqx.is_array)

    def batched(params, ids, mask):
        net = eqx.combine(params, static)
        return jax.vmap(lambda i, m: one(net, i, m))(ids, mask)

    jitted = jax.jit(batched)

    def run(ids, mask):
        return jitted(params, ids, mask).block_until_ready()

    def place(ids, mask):
        return jnp.asarray(ids), jnp.asarray(mask)

    def compiled(ids, mask):
        executable = jitted.lower(params, ids, mask).compile()
        return lambda ids, mask: executable(params, ids, mask).block_until_ready()

    return run, place, compiled


def peer(model_name: str, folder: Path, dtype: str):
    """The PyTorch original's ``(ids, mask) -> (batch, dim)`` embeddings."""
    if model_name == "geneformer":
        model = transformers.BertForMaskedLM.from_pretrained(folder / "geneformer" / "model").bert
    else:
        model = nt_reference().esm
    device = torch_device()
    model = model.eval().to(device)
    if dtype == "bfloat16":
        model = model.to(torch.bfloat16)

    def run(ids, mask):
        with torch.inference_mode():
            hidden = model(input_ids=ids, attention_mask=mask).last_hidden_state
            weights = mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * weights).sum(1) / weights.sum(1)
        if device == "cuda":
            torch.cuda.synchronize()
        return pooled

    def place(ids, mask):
        ids = torch.tensor(np.asarray(ids), dtype=torch.long, device=device)
        return ids, torch.tensor(np.asarray(mask), dtype=torch.long, device=device)

    return run, place, lambda ids, mask: run


SIDES = {"ours": ours, "peer": peer}


def status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def probe(side: str, model_name: str, folder: Path, args) -> dict:
    """Peak working memory of one side's forward pass (module docstring), in this
    process."""
    _, place, compiled = SIDES[side](model_name, folder, args.dtype)
    batch = place(*inputs(model_name, folder, args))
    run = compiled(*batch)  # ours: compiled ahead, so compile memory is not counted
    before_first = status_kb("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")
    run(*batch)
    first = status_kb("VmHWM") - before_first
    before = status_kb("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")
    run(*batch)
    out = {
        "first_call_peak_mb": round(first / 1024, 1),
        "repeat_call_peak_mb": round((status_kb("VmHWM") - before) / 1024, 1),
    }
    if torch_device() == "cuda" and side == "peer":
        out["device_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
    if side == "ours":
        stats = jax.devices()[0].memory_stats() or {}
        if "peak_bytes_in_use" in stats:
            out["device_peak_mb"] = stats["peak_bytes_in_use"] / 2**20
    return out


def memory(side: str, model_name: str, folder: Path, args) -> dict:
    argv = [sys.executable, "-m", "benchmarks.ported", "--probe", side, model_name, str(folder)]
    argv += ["--batch", str(args.batch), "--nt-tokens", str(args.nt_tokens)]
    argv += ["--dtype", args.dtype]
    result = subprocess.run(argv, capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def compare(model_name: str, folder: Path, args) -> dict:
    """First calls, interleaved rounds and the ratio for one model."""
    ids, mask = inputs(model_name, folder, args)
    runs, batches, first = {}, {}, {}
    for side, make in SIDES.items():
        runs[side], place, _ = make(model_name, folder, args.dtype)
        batches[side] = place(ids, mask)
        start = time.perf_counter()
        out = runs[side](*batches[side])
        first[side] = time.perf_counter() - start
        if side == "ours":
            ours_out = np.asarray(out, np.float32)
        else:
            peer_out = out.float().cpu().numpy()
    difference = float(np.abs(ours_out - peer_out).max())
    times = {side: [] for side in SIDES}
    for _ in range(args.rounds):
        for side in SIDES:
            start = time.perf_counter()
            runs[side](*batches[side])
            times[side].append(time.perf_counter() - start)
    unit = "cells" if model_name == "geneformer" else "sequences"
    result = {"batch": args.batch, "tokens": int(ids.shape[1]), "max_abs_difference": difference}
    for side in SIDES:
        best, median = min(times[side]), statistics.median(times[side])
        result[side] = {
            "first_call_s": round(first[side], 3),
            "best_s": round(best, 4),
            "median_s": round(median, 4),
            f"{unit}_per_s_best": round(args.batch / best, 2),
            f"{unit}_per_s_median": round(args.batch / median, 2),
        }
    result["ratio_ours_over_peer_best"] = round(
        result["ours"][f"{unit}_per_s_best"] / result["peer"][f"{unit}_per_s_best"], 3
    )
    result["ratio_ours_over_peer_median"] = round(
        result["ours"][f"{unit}_per_s_median"] / result["peer"][f"{unit}_per_s_median"], 3
    )
    if not args.no_memory:
        for side in SIDES:
            result[side]["memory"] = memory(side, model_name, folder, args)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--nt-tokens", type=int, default=1_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    parser.add_argument("--models", default="geneformer,nt")
    parser.add_argument("--no-memory", action="store_true")
    parser.add_argument("--probe", nargs=3, metavar=("SIDE", "MODEL", "FOLDER"))
    args = parser.parse_args()
    if args.probe:
        side, model_name, folder = args.probe
        print(json.dumps(probe(side, model_name, Path(folder), args)))
        return
    summary = {
        "benchmark": "ported",
        "device": str(jax.devices()[0].platform),
        "torch_device": torch_device(),
        "dtype": args.dtype,
        "torch_threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
    }
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        build(folder)
        for model_name in args.models.split(","):
            result = compare(model_name, folder, args)
            summary[model_name] = result
            unit = "cells" if model_name == "geneformer" else "sequences"
            print(
                f"{model_name}: batch {result['batch']} x {result['tokens']} tokens; ours "
                f"{result['ours'][f'{unit}_per_s_median']} {unit}/s, peer "
                f"{result['peer'][f'{unit}_per_s_median']} {unit}/s (median; ours/peer "
                f"{result['ratio_ours_over_peer_median']}); max |difference| "
                f"{result['max_abs_difference']:.2e}",
                flush=True,
            )
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
