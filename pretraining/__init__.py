"""Sharded pretraining of the zoo's transformers: ``python -m pretraining dna|expression``.

One idea per module: `mesh` (the device mesh from ``--mesh``), `sharding` (parameter path
-> PartitionSpec), `optimizer` (AdamW, schedule, clipping, compute dtype), `dna_data` and
`expression_data` (corpora and batches), `packed_dna` (memory-mapped DNA corpora),
`count_files`, `corpus_genes` and `gene_medians` (out-of-core cell files, their gene
alignment and streamed tokenizer medians), `objectives` (the losses as sums), `tasks` (model +
data + objective of a run), `steps` (the compiled sharded steps), `state` (Orbax training
checkpoints), `throughput` (FLOPs and MFU), `model_card`, `train` (the loop and export) and
`cli`. Nothing is imported here, so ``import pretraining.sources`` stays light.
"""
