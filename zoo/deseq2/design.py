"""Design matrices from R-style formulas over a sample-metadata table.

A formula is ``"~ a + b + ..."``: an intercept plus the main effect of each named metadata
column. A numeric column enters as one continuous covariate; any other column is a factor
in treatment coding: its first level (in category order for a pandas ``Categorical``,
otherwise sorted) is the reference, and every other level gets an indicator column named
``"a[T.level]"``, as formulaic and pydeseq2 name them. Interactions are not supported.

A contrast ``(factor, level, reference)`` is the vector ``c`` such that ``c @ beta`` is
the log fold change of ``level`` over ``reference``.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd

INTERCEPT = "Intercept"


class DesignError(ValueError):
    """A formula, metadata table or contrast cannot give a usable design."""


@dataclasses.dataclass(frozen=True)
class Design:
    """A design matrix with its column names and the levels of each factor.

    Attributes:
        matrix: (samples, coefficients) float64 design matrix.
        columns: the coefficient names, ``"Intercept"`` first.
        levels: for each factor, its levels with the reference first.
    """

    matrix: np.ndarray
    columns: tuple[str, ...]
    levels: dict[str, tuple[str, ...]]

    def contrast(self, factor: str, level: str, reference: str) -> np.ndarray:
        """The contrast vector of `level` against `reference` of `factor`."""
        if factor not in self.levels:
            raise DesignError(
                f"contrast factor {factor!r} is not a factor of the design; "
                f"factors: {sorted(self.levels)}"
            )
        known = self.levels[factor]
        for name in (level, reference):
            if name not in known:
                raise DesignError(f"{factor!r} has no level {name!r}; levels: {list(known)}")
        if level == reference:
            raise DesignError(f"contrast compares level {level!r} with itself")
        vector = np.zeros(len(self.columns))
        for name, sign in ((level, 1.0), (reference, -1.0)):
            if name != known[0]:
                vector[self.columns.index(f"{factor}[T.{name}]")] += sign
        return vector


def parse_formula(formula: str) -> list[str]:
    """The metadata column names of ``"~ a + b"`` (a leading ``~`` is optional)."""
    body = formula.strip().removeprefix("~")
    terms = [term.strip() for term in body.split("+")]
    for term in terms:
        if not term or any(symbol in term for symbol in ":*()-~/^"):
            raise DesignError(
                f"unsupported term {term!r} in design {formula!r}: only main effects "
                "'~ a + b' of metadata columns are supported"
            )
    return [term for term in terms if term != "1"]


def design_matrix(metadata: pd.DataFrame, formula: str) -> Design:
    """The full-rank design of `formula` over the rows of `metadata`.

    Raises:
        DesignError: an unknown column, a missing value, a factor with one level, a
            rank-deficient design, or no residual degrees of freedom.
    """
    columns = [INTERCEPT]
    blocks = [np.ones((len(metadata), 1))]
    levels: dict[str, tuple[str, ...]] = {}
    for name in parse_formula(formula):
        if name not in metadata.columns:
            raise DesignError(
                f"design term {name!r} is not a metadata column; columns: {list(metadata.columns)}"
            )
        values = metadata[name]
        if values.isna().any():
            raise DesignError(f"metadata column {name!r} has missing values")
        if pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values):
            columns.append(name)
            blocks.append(values.to_numpy(dtype=np.float64)[:, None])
            continue
        if isinstance(values.dtype, pd.CategoricalDtype):
            order = [str(level) for level in values.cat.categories if (values == level).any()]
        else:
            order = sorted({str(value) for value in values})
        if len(order) < 2:
            raise DesignError(f"factor {name!r} has a single level {order}; drop it")
        levels[name] = tuple(order)
        text = values.astype(str).to_numpy()
        for level in order[1:]:
            columns.append(f"{name}[T.{level}]")
            blocks.append((text == level).astype(np.float64)[:, None])
    matrix = np.concatenate(blocks, axis=1)
    rank = np.linalg.matrix_rank(matrix)
    if rank < matrix.shape[1]:
        raise DesignError(
            f"design {formula!r} has rank {rank} but {matrix.shape[1]} columns {columns}: "
            "some terms are linear combinations of others (confounded factors)"
        )
    if matrix.shape[0] <= matrix.shape[1]:
        raise DesignError(
            f"design {formula!r} has {matrix.shape[1]} coefficients for {matrix.shape[0]} "
            "samples: no replicates to estimate dispersions"
        )
    return Design(matrix=matrix, columns=tuple(columns), levels=levels)
