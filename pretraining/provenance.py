"""Where a corpus file came from, recorded in the model card of what was trained on it."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Source:
    """One corpus file.

    Attributes:
        name: as given on the command line (a path or a dataset name).
        path: the local file read.
        sha256: digest of the file's bytes.
        summary: what it holds, e.g. ``"1 record, 69,999,930 bases"``.
        licence: the licence of a catalogued dataset, None when unknown.
    """

    name: str
    path: str
    sha256: str
    summary: str
    licence: str | None = None

    def to_dict(self) -> dict[str, str | None]:
        """Plain JSON values."""
        return dataclasses.asdict(self)
