"""Tiny upstream models built with PyTorch ``transformers`` for the import, Hub and export
tests, and the comparisons of their outputs with the zoo's."""

from __future__ import annotations

import io
import itertools
import json
import logging
import pickle
import types
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import torch
import transformers

from checkpoints.geneformer_import import GeneformerDictionaries, find_geneformer_dictionaries
from checkpoints.tree_keys import named_leaves, replace_leaves

TOLERANCE = 1e-4  # float32 logits through two layers, both sides in float32
DNABERT_VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [
    "".join(p) for p in itertools.product("ATCG", repeat=3)
]
# facebook/esm2_t6_8M_UR50D's vocab.txt, one token a line (REFERENCE_MODELS.md 5b)
ESM2_VOCAB = ["<cls>", "<pad>", "<eos>", "<unk>", *"LAGVSERTIDPKQNFYMHWCXBUZO.-", "<null_1>"]
ESM2_VOCAB.append("<mask>")
DNABERT_IDS = np.array([2, 5, 17, 30, 68, 6, 3, 0, 0])  # [CLS] 5 k-mers [SEP], right-padded


def tiny_bert(vocab_size: int, seed: int, hidden_act: str = "gelu") -> transformers.BertForMaskedLM:
    """A random ``BertForMaskedLM`` (2 layers, 32 wide, 64 positions), in eval mode."""
    config = transformers.BertConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        hidden_act=hidden_act,
        max_position_embeddings=64,
        pad_token_id=0,
    )
    torch.manual_seed(seed)
    return transformers.BertForMaskedLM(config).eval()


def tiny_dnabert(seed: int) -> transformers.BertForMaskedLM:
    """A random DNABERT-3 shaped ``BertForMaskedLM``."""
    return tiny_bert(len(DNABERT_VOCAB), seed)


def tiny_esm(vocab: list[str], seed: int, **settings) -> transformers.EsmForMaskedLM:
    """A random 2-layer, 32-wide ``EsmForMaskedLM`` over `vocab`, in eval mode."""
    config = transformers.EsmConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        pad_token_id=vocab.index("<pad>"),
        mask_token_id=vocab.index("<mask>"),
        emb_layer_norm_before=False,
        **settings,
    )
    torch.manual_seed(seed)
    return transformers.EsmForMaskedLM(config).eval()


class GatedFeedForward(torch.nn.Module):
    """NT v2's published feed-forward (REFERENCE_MODELS.md 2b), in place of transformers'
    ``EsmIntermediate``: one bias-free linear map H -> 2I, halves x1, x2, SiLU(x1) * x2."""

    def __init__(self, hidden: int, intermediate: int):
        super().__init__()
        self.dense = torch.nn.Linear(hidden, 2 * intermediate, bias=False)

    def forward(self, x):
        x1, x2 = self.dense(x).chunk(2, dim=-1)
        return torch.nn.functional.silu(x1) * x2


def with_gated_feed_forward(model: transformers.EsmForMaskedLM) -> transformers.EsmForMaskedLM:
    """`model` with NT v2's bias-free gated feed-forward in every layer (new random weights
    from torch's generator), as NT v2's remote code builds it."""
    config = model.config
    for layer in model.esm.encoder.layer:
        layer.intermediate = GatedFeedForward(config.hidden_size, config.intermediate_size)
        layer.output.dense = torch.nn.Linear(
            config.intermediate_size, config.hidden_size, bias=False
        )
    return model


GENEFORMER_SPECIALS = {"V1": ("<pad>", "<mask>"), "V2": ("<pad>", "<mask>", "<cls>", "<eos>")}


def write_geneformer_dictionaries(
    folder: Path, ensembl: list[str], version: str
) -> GeneformerDictionaries:
    """Token and median dictionaries of `ensembl` genes in the published pickles' format,
    where a Geneformer checkout keeps them; the medians are random and distinct."""
    tokens = {name: i for i, name in enumerate(GENEFORMER_SPECIALS[version])}
    first = len(tokens)
    tokens |= {g: np.int16(first + i) for i, g in enumerate(sorted(ensembl))}
    rng = np.random.default_rng(1)
    medians = {g: np.float64(np.exp(rng.normal(0.0, 1.0))) for g in sorted(ensembl)}
    root = folder / "geneformer"
    sub = root if version == "V2" else root / "gene_dictionaries_30m"
    sub.mkdir(parents=True)
    suffix = "gc104M" if version == "V2" else "gc30M"
    (sub / f"token_dictionary_{suffix}.pkl").write_bytes(pickle.dumps(tokens))
    (sub / f"gene_median_dictionary_{suffix}.pkl").write_bytes(pickle.dumps(medians))
    return find_geneformer_dictionaries(folder, version)


SCGPT = "scgpt==0.2.4"


def scgpt_module(name: str) -> types.ModuleType:
    """A module of the scgpt wheel; the package's ``__init__`` is replaced by a stub that
    holds only the ``logger`` that `scgpt.preprocess` imports."""
    from tests.reference_wheels import import_from_wheel, wheel_root

    package = types.ModuleType("scgpt")
    package.__path__ = [str(wheel_root(SCGPT) / "scgpt")]
    package.logger = logging.getLogger("scGPT")
    return import_from_wheel(SCGPT, name, stubs={"scgpt": package})


def write_scgpt_folder(folder: Path, genes: list[str], args: dict) -> tuple[torch.nn.Module, dict]:
    """A random scGPT ``TransformerModel`` (continuous values, MVC, post-norm, CLS cell
    embedding; layer norms perturbed) over `genes` and its ``<pad> <cls> <eoc>`` tokens,
    saved as scGPT's folder: ``args.json``, ``vocab.json`` and ``model.safetensors`` with the
    flash-attention ``Wqkv`` names of the published checkpoints.

    Returns:
        ``(reference, vocab)``: the torch model in eval mode and the token -> id vocabulary.
    """
    from safetensors.torch import save_file

    vocab = {g: i for i, g in enumerate(genes)}
    vocab |= {"<pad>": len(genes), "<cls>": len(genes) + 1, "<eoc>": len(genes) + 2}
    (folder / "args.json").write_text(json.dumps(args))
    (folder / "vocab.json").write_text(json.dumps(vocab))
    torch.manual_seed(0)
    reference = (
        scgpt_module("scgpt.model.model")
        .TransformerModel(
            ntoken=len(vocab),
            d_model=args["embsize"],
            nhead=args["nheads"],
            d_hid=args["d_hid"],
            nlayers=args["nlayers"],
            nlayers_cls=args["n_layers_cls"],
            n_cls=1,
            vocab=vocab,
            dropout=args["dropout"],
            pad_token="<pad>",
            pad_value=args["pad_value"],
            do_mvc=True,
            input_emb_style="continuous",
            n_input_bins=args["n_bins"],
            cell_emb_style="cls",
            use_fast_transformer=False,
            pre_norm=False,
        )
        .eval()
    )
    with torch.no_grad():  # non-trivial layer norms, so each is tested
        for name, parameter in reference.named_parameters():
            if "norm" in name:
                parameter.add_(0.3 * torch.randn_like(parameter))
    flash_names = {
        k.replace("self_attn.in_proj_", "self_attn.Wqkv."): v.contiguous()
        for k, v in reference.state_dict().items()
    }
    assert any("Wqkv" in k for k in flash_names)
    save_file(flash_names, str(folder / "model.safetensors"))
    return reference, vocab


def saved(model: transformers.PreTrainedModel, folder: Path, prefix: str = "") -> dict[str, bytes]:
    """The files of ``model.save_pretrained(safe_serialization=True)``, as repository paths."""
    model.save_pretrained(folder, safe_serialization=True)
    return {prefix + p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def pickled_state(model: torch.nn.Module) -> bytes:
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.getvalue()


def geneformer_files(scratch: Path) -> tuple[dict[str, bytes], dict[str, torch.nn.Module]]:
    """ctheodoris/Geneformer: V1 in ``Geneformer-V1-10M/`` (safetensors and .bin), V2 at
    the root (as V2-316M is), the dictionary pickles under ``geneformer/`` with the
    package's code and the dictionaries a load does not read."""
    files, models = {}, {}
    for version, specials, n_genes, prefix in (
        ("V1", ["<pad>", "<mask>"], 30, "Geneformer-V1-10M/"),
        ("V2", ["<pad>", "<mask>", "<cls>", "<eos>"], 40, ""),
    ):
        genes = [f"ENSG{i:011d}" for i in range(100, 100 + n_genes)]
        tokens = {name: i for i, name in enumerate(specials)}
        tokens |= {g: np.int16(len(specials) + i) for i, g in enumerate(genes)}
        medians = {g: np.float64(1.0 + i / 10) for i, g in enumerate(genes)}
        folder = "geneformer/" if version == "V2" else "geneformer/gene_dictionaries_30m/"
        suffix = "gc104M" if version == "V2" else "gc30M"
        files[f"{folder}token_dictionary_{suffix}.pkl"] = pickle.dumps(tokens)
        files[f"{folder}gene_median_dictionary_{suffix}.pkl"] = pickle.dumps(medians)
        files[f"{folder}ensembl_mapping_dict_{suffix}.pkl"] = pickle.dumps({g: g for g in genes})
        models[version] = tiny_bert(len(tokens), seed=len(specials), hidden_act="relu")
        files |= saved(models[version], scratch / f"geneformer-{version}", prefix)
        files[prefix + "training_args.bin"] = b"\x80\x04pickle that must never load"
    files["Geneformer-V1-10M/pytorch_model.bin"] = pickled_state(models["V1"])
    files["geneformer/tokenizer.py"] = b"raise SystemExit('remote code ran')\n"
    return files, models


def torch_logits(model: torch.nn.Module, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The torch masked-LM logits of one sequence (``(seq_len, vocab)``)."""
    with torch.no_grad():
        out = model(
            input_ids=torch.tensor(np.asarray(ids)[None], dtype=torch.long),
            attention_mask=torch.tensor(np.asarray(mask)[None], dtype=torch.long),
        )
    return out.logits[0].numpy()


def zoo_logits(model: eqx.Module, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The zoo encoder's masked-LM logits of one sequence, without dropout."""
    model = eqx.nn.inference_mode(model)
    hidden = model(jnp.asarray(ids, jnp.int32), jnp.asarray(mask)).hidden
    return np.asarray(model.mlm_logits(hidden))


def assert_same_logits(
    model: eqx.Module, reference: torch.nn.Module, ids: np.ndarray, pad_id: int = 0
) -> None:
    """The zoo model's logits at the real tokens equal the torch model's within TOLERANCE."""
    mask = ids != pad_id
    expected = torch_logits(reference, ids, mask)
    np.testing.assert_allclose(
        zoo_logits(model, ids, mask)[mask], expected[mask], atol=TOLERANCE, rtol=0
    )


def assert_same_arrays(a: eqx.Module, b: eqx.Module) -> None:
    """Both models hold the same arrays under the same flat keys, bit for bit."""
    left, right = named_leaves(a, eqx.is_array), named_leaves(b, eqx.is_array)
    assert sorted(left) == sorted(right)
    for key, value in left.items():
        assert value.dtype == right[key].dtype, key
        np.testing.assert_array_equal(np.asarray(value), np.asarray(right[key]), err_msg=key)


def random_arrays(skeleton: eqx.Module, seed: int = 0) -> eqx.Module:
    """`skeleton` (from `eqx.filter_eval_shape`) filled with random normal arrays, layer-norm
    scales near 1: a random model without compiling its initialisers."""

    def is_shape(leaf) -> bool:
        return isinstance(leaf, jax.ShapeDtypeStruct)

    rng = np.random.default_rng(seed)
    values = {
        key: jnp.asarray(
            ("norm.weight" in key) + 0.2 * rng.standard_normal(shape.shape), shape.dtype
        )
        for key, shape in named_leaves(skeleton, is_shape).items()
    }
    return replace_leaves(skeleton, is_shape, values)
