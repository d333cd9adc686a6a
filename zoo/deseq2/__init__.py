"""DESeq2 as a differentiable model: the design matrix (``design``), size factors, gene-wise
dispersions and their trend, the NB IRLS fit, the Wald test, Cook's distances, multiple testing,
and `DifferentiableNBGLM` / `differential_expression` on top (``model``,
``differential_expression``).
"""
