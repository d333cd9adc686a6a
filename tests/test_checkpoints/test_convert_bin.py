"""``biozoo convert-bin``: a PyTorch pickle state dict becomes ``model.safetensors`` with the
same names, dtypes and values, read with torch's weights-only unpickler."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file

from checkpoints import CheckpointError, convert_bin


def test_best_model_pt_under_a_wrapping_key_is_converted_unchanged(tmp_path):
    state = {
        "encoder.embedding.weight": torch.randn(7, 4),
        "transformer_encoder.layers.0.self_attn.Wqkv.weight": torch.randn(12, 4),
        "value_encoder.linear1.bias": torch.arange(4, dtype=torch.float16),
    }
    state["tied.weight"] = state["encoder.embedding.weight"]  # shared storage
    torch.save({"state_dict": state}, tmp_path / "best_model.pt")
    written = load_file(convert_bin(tmp_path))
    assert sorted(written) == sorted(state)
    for name, tensor in state.items():
        assert written[name].dtype == tensor.numpy().dtype
        np.testing.assert_array_equal(written[name], tensor.numpy())


def test_pickles_that_are_not_weights_are_refused(tmp_path):
    torch.save({"weight": torch.ones(2), "epoch": 3}, tmp_path / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match=r"not tensors: \['epoch'\]"):
        convert_bin(tmp_path)
    (tmp_path / "pytorch_model.bin").write_bytes(b"\x80\x04cos\nsystem\n.")  # code, not data
    with pytest.raises(CheckpointError, match=r"could not read .*pytorch_model\.bin as weights"):
        convert_bin(tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CheckpointError, match=r"holds none of pytorch_model\.bin, best_model\.pt"):
        convert_bin(empty)
