"""Model size presets of the command line: ``tiny`` (tests, seconds on a laptop), ``small``
(the benchmark shape, BERT-small-like) and ``base`` (BERT-base widths).

A run that continues pretraining a checkpoint (``--init``) takes the checkpoint's
architecture instead, and `INIT_LEARNING_RATE` as its default peak learning rate.

A preset fixes the transformer stack, the DNA window length in tokens, the most gene
tokens per cell, and a peak learning rate that suits its width.
"""

from __future__ import annotations

import dataclasses

from zoo.common.transformer import TransformerConfig


@dataclasses.dataclass(frozen=True)
class Preset:
    """One model size.

    Attributes:
        transformer: the block stack.
        seq_len: DNA tokens per example, ``[CLS]`` included.
        max_tokens: most gene tokens per cell (capped at the number of genes).
        learning_rate: default peak learning rate.
    """

    transformer: TransformerConfig
    seq_len: int
    max_tokens: int
    learning_rate: float


PRESETS = {
    "tiny": Preset(TransformerConfig(dim=64, n_layers=2, n_heads=4, mlp_dim=256), 128, 64, 2e-3),
    "small": Preset(
        TransformerConfig(dim=256, n_layers=4, n_heads=4, mlp_dim=1024), 512, 256, 5e-4
    ),
    "base": Preset(
        TransformerConfig(dim=768, n_layers=12, n_heads=12, mlp_dim=3072), 512, 1024, 1e-4
    ),
}

# default peak learning rate of continued pretraining (--init): gentle on trained weights
INIT_LEARNING_RATE = 1e-4
