"""Sequence models: nucleotide and k-mer tokens (``nucleotides``), the tokenizers of
published checkpoints (``vocabulary_tokenizer``), FASTA reading (``fasta``), the
`SequenceEmbedding` CNN (``cnn``) and the `TransformerSequenceEncoder` (``encoder``).
"""
