"""``biozoo convert-bin``: a PyTorch pickle checkpoint converted to safetensors, on the user's
own machine.

Some published models exist on the Hub only as ``pytorch_model.bin`` (DNABERT, Nucleotide
Transformer v1) or ``best_model.pt`` (scGPT). biozoo never unpickles anything while loading;
this command is the explicit, local step a user runs once on a folder they downloaded and
trust. It imports torch only when it runs (torch is not a biozoo dependency) and reads the
pickle with ``torch.load(..., weights_only=True)``, torch's restricted unpickler that admits
tensors and plain containers only. The tensors are written unchanged (name, dtype, shape,
values) to ``model.safetensors`` beside the pickle, which `zoo.from_pretrained` then loads.
"""

from __future__ import annotations

import os
from pathlib import Path

from checkpoints.errors import CheckpointError

PICKLE_NAMES = ("pytorch_model.bin", "best_model.pt")
SAFETENSORS_NAME = "model.safetensors"


def convert_bin(folder: str | os.PathLike) -> Path:
    """Write ``model.safetensors`` in `folder` from its PyTorch pickle weights.

    Args:
        folder: a folder holding ``pytorch_model.bin`` or ``best_model.pt`` (a state dict of
            tensors, possibly under a ``"model"`` or ``"state_dict"`` key).

    Returns:
        The path of the written ``model.safetensors``.

    Raises:
        CheckpointError: when torch is not installed, the folder has no such pickle or
            already has ``model.safetensors``, or the pickle holds no state dict of tensors.
    """
    folder = Path(folder)
    pickles = [folder / name for name in PICKLE_NAMES if (folder / name).is_file()]
    if not pickles:
        raise CheckpointError(f"{folder} holds none of {', '.join(PICKLE_NAMES)}")
    target = folder / SAFETENSORS_NAME
    if target.exists():
        raise CheckpointError(f"{target} exists already; nothing to convert")
    try:
        import safetensors.torch
        import torch
    except ImportError:
        raise CheckpointError(
            "biozoo convert-bin needs torch: pip install torch (the CPU build is enough)"
        ) from None
    try:
        state = torch.load(pickles[0], map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises UnpicklingError, RuntimeError, ...
        raise CheckpointError(f"torch could not read {pickles[0]} as weights: {error}") from None
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not state:
        raise CheckpointError(f"{pickles[0]} holds no state dict")
    not_tensors = sorted(str(k) for k, v in state.items() if not isinstance(v, torch.Tensor))
    if not_tensors:
        raise CheckpointError(f"{pickles[0]} holds entries that are not tensors: {not_tensors}")
    # Tied weights share storage, which safetensors refuses; each tensor gets its own copy.
    tensors = {str(k): v.detach().clone().contiguous() for k, v in state.items()}
    safetensors.torch.save_file(tensors, str(target), metadata={"format": "pt"})
    return target
