"""Expression models: Geneformer's rank-value `GeneTokenizer` (``gene_tokenizer``), the
linear-memory soft rank it uses (``soft_rank``) and the `DifferentiableFoundationModel`
(``foundation_model``).
"""
