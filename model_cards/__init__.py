"""Model card templates (Markdown with ``string.Template`` placeholders), read by
`checkpoints.card`. Shipped as package data so installed copies render cards too."""
