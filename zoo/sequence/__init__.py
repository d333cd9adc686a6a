"""Sequence models: nucleotide and k-mer tokens (``nucleotides``), FASTA reading (``fasta``), the
`SequenceEmbedding` CNN (``cnn``) and the `TransformerSequenceEncoder` (``encoder``).
"""
