"""`TaskModel`: a sequence or cell backbone with a linear head for a downstream task."""
