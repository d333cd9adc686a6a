"""scGPT import: a random scGPT ``TransformerModel`` (scGPT's own torch code from the
``scgpt`` 0.2.4 wheel, `tests.reference_wheels`, PyTorch non-flash path) with whole-human's
structural values (continuous value input, post-norm, cls cell embedding, MVC on; shrunk in
width and depth), saved as safetensors with the flash-layout key names of the whole-human
checkpoint (``self_attn.Wqkv``), equals the zoo's model on pbmc3k cells layer by layer, in
the cell embedding and in the expression predictions (float32, atol 1e-4). The zoo's
binning equals scGPT's ``binning`` on tie-free values, and a pickle-only folder is refused.
"""

import anndata as ad
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from upstream_models import scgpt_module, write_scgpt_folder

from checkpoints.errors import CheckpointError
from checkpoints.scgpt_import import import_scgpt, read_vocabulary
from zoo.expression.value_binning import quantile_bins

DATA = "/work/shared/data/pbmc3k_2000hvg_counts.h5ad"
MAX_SEQ_LEN = 128
N_CELLS = 3
ARGS = {  # whole-human's args.json, shrunk in width and depth
    "input_emb_style": "continuous",
    "n_bins": 51,
    "max_seq_len": MAX_SEQ_LEN,
    "nlayers": 2,
    "nheads": 4,
    "embsize": 64,
    "d_hid": 64,
    "dropout": 0.2,
    "n_layers_cls": 3,
    "mask_value": -1,
    "pad_value": -2,
    "MVC": True,
}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    data = ad.read_h5ad(DATA)
    genes = sorted(data.var_names)
    folder = tmp_path_factory.mktemp("scgpt_human")
    reference, vocab = write_scgpt_folder(folder, genes, ARGS)
    model = eqx.nn.inference_mode(import_scgpt(folder))
    column = {g: j for j, g in enumerate(data.var_names)}
    order = [column[g] for g in read_vocabulary(folder / "vocab.json").genes]
    counts = np.asarray(data.X[:N_CELLS].toarray(), np.float32)[:, order]
    return model, reference, counts, vocab


def reference_inputs(counts, values, vocab):
    """scGPT's input for each cell: ``<cls>`` (value pad_value) then its expressed genes in
    vocabulary order, truncated to max_seq_len and padded with ``<pad>``/pad_value."""
    ids = np.full((len(counts), MAX_SEQ_LEN), vocab["<pad>"])
    inputs = np.full((len(counts), MAX_SEQ_LEN), float(ARGS["pad_value"]), np.float32)
    for i, cell in enumerate(counts):
        expressed = np.nonzero(cell)[0][: MAX_SEQ_LEN - 1]
        ids[i, 0] = vocab["<cls>"]
        ids[i, 1 : 1 + len(expressed)] = expressed
        inputs[i, 1 : 1 + len(expressed)] = values[i, : len(expressed)]
    return torch.tensor(ids), torch.tensor(inputs)


def test_every_layer_cell_embedding_and_predictions_equal_scgpt(checkpoint):
    model, reference, counts, vocab = checkpoint
    tokens = jax.vmap(model.tokenizer)(jnp.asarray(counts))
    ids, values = reference_inputs(counts, np.asarray(tokens.values), vocab)
    padding = ids == vocab["<pad>"]
    real = ~padding.numpy()
    with torch.no_grad():
        states = [reference.encoder(ids) + reference.value_encoder(values)]
        for layer in reference.transformer_encoder.layers:
            states.append(layer(states[-1], src_key_padding_mask=padding))
        out = reference(ids, values, src_key_padding_mask=padding)
    for depth, state in enumerate(states):
        layers = jax.tree.map(
            lambda a, d=depth: a[:d] if eqx.is_array(a) else a, model.stack.layers
        )
        ours = jax.vmap(eqx.tree_at(lambda m: m.stack.layers, model, layers))(jnp.asarray(counts))
        np.testing.assert_array_equal(np.asarray(ours.ids), ids.numpy())
        np.testing.assert_allclose(
            np.asarray(ours.hidden)[real],
            state.numpy()[real],
            atol=1e-4,
            err_msg=f"hidden state after {depth} layers",
        )
    np.testing.assert_allclose(np.asarray(ours.cell_embedding), out["cell_emb"].numpy(), atol=1e-4)
    np.testing.assert_allclose(
        np.asarray(ours.predicted_values)[real], out["mlm_output"].numpy()[real], atol=1e-4
    )


def test_masked_values_are_scgpts_mask_value(checkpoint):
    model, reference, counts, vocab = checkpoint
    tokens = model.tokenizer(jnp.asarray(counts[0]))
    mask = jnp.zeros_like(tokens.mask).at[jnp.array([0, 5, 9])].set(True)
    ours = model.encode(tokens, expression_mask=mask)
    ids, values = reference_inputs(counts[:1], np.asarray(tokens.values)[None], vocab)
    values[0, 1 + np.array([0, 5, 9])] = float(ARGS["mask_value"])
    padding = ids == vocab["<pad>"]
    with torch.no_grad():
        out = reference(ids, values, src_key_padding_mask=padding)
    real = ~padding.numpy()[0]
    np.testing.assert_allclose(
        np.asarray(ours.predicted_values)[real], out["mlm_output"].numpy()[0][real], atol=1e-4
    )


@pytest.mark.parametrize("n_expressed", [29, 50, 99, 700])
def test_binning_equals_scgpts_on_tie_free_values(n_expressed):
    binning = scgpt_module("scgpt.preprocess").binning
    rng = np.random.default_rng(n_expressed)
    row = np.zeros(1000)
    row[rng.choice(1000, n_expressed, replace=False)] = rng.permutation(n_expressed) + 0.5
    expected = binning(row, n_bins=51)
    np.testing.assert_array_equal(np.asarray(quantile_bins(jnp.asarray(row), 51)), expected)


def test_tied_values_get_one_of_their_bins_and_the_key_decides():
    row = jnp.asarray([0.0, 1, 1, 1, 1, 1, 2, 3, 4, 5], jnp.float32)
    draws = np.stack([np.asarray(quantile_bins(row, 11, key=jax.random.key(i))) for i in range(20)])
    tied = draws[:, 1:6]
    assert tied.min() >= 1 and tied.max() <= 5 and len(np.unique(tied)) > 1
    again = np.asarray(quantile_bins(row, 11, key=jax.random.key(3)))
    np.testing.assert_array_equal(again, draws[3])
    np.testing.assert_array_equal(draws[:, 6:], np.broadcast_to(draws[0, 6:], (20, 4)))


def test_a_pickle_only_folder_is_refused_with_the_conversion(tmp_path):
    (tmp_path / "best_model.pt").write_bytes(b"never unpickled")
    with pytest.raises(CheckpointError, match=r"only best_model\.pt, a pickle.*save_file"):
        import_scgpt(tmp_path)
