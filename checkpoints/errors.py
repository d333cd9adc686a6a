"""The error every checkpoint entry point raises when a reference or folder cannot become a
model; its message names the file, key or revision at fault and what to do."""


class CheckpointError(ValueError):
    """A checkpoint cannot be found or turned into a model; the message says why."""
