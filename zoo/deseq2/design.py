"""Design matrices from formulaic formulas over a sample-metadata table, and their contrasts.

`formulaic` (the library pydeseq2 uses) parses the formula and builds the model matrix, so
designs and column names are pydeseq2's: main effects ``"~ a + b"``, interactions ``a:b``
and ``a * b``, continuous covariates and transforms of them (``np.log(x)``), codings and
reference levels (``C(a, contr.treatment("ref"))``), no intercept (``"~ 0 + a"``). A
non-numeric column is a factor in treatment coding with its first level as the reference
(category order for a pandas ``Categorical``, otherwise sorted); a numeric or boolean one is
a continuous covariate unless wrapped in ``C()``.

What stays ours, and why:

- the checks before and after formulaic, so that bad input fails with a `DesignError` that
  names the column or coefficients at fault: formulaic silently drops rows with missing
  values (its default ``na_action``), encodes a one-level factor as no column, keeps unused
  categories of a ``Categorical`` as all-zero columns (we drop them first, as pandas'
  ``remove_unused_categories``), and checks rank only structurally, so confounded factors
  pass it;
- the contrast vectors: ``(factor, level, reference)`` is the difference of two design rows
  built by the formula's `formulaic.ModelSpec`, one with ``factor = level`` and one with
  ``factor = reference``, every other variable at its reference level (the base of its
  treatment coding, else its first level) or at 0 if numeric. That is pydeseq2's rule for
  treatment codings (via ``formulaic_contrasts``, not a dependency here), so it covers any pair
  of levels and interaction designs, where the fold change is the one at the reference
  levels of the other factors. As in R's DESeq2, the factor must have a main effect: in
  ``"~ a:b"`` alone a contrast of ``a`` is refused.
"""

from __future__ import annotations

import dataclasses
import re

import formulaic
import numpy as np
import pandas as pd
from formulaic.errors import FormulaicError
from formulaic.formula import SimpleFormula
from formulaic.utils.sentinels import UNSET

RANK_RTOL = 1e-10  # singular values below this fraction of the largest count as zero


class DesignError(ValueError):
    """A formula, metadata table or contrast cannot give a usable design."""


@dataclasses.dataclass(frozen=True)
class Design:
    """A design matrix with its column names, the levels of each factor and its model spec.

    Attributes:
        matrix: (samples, coefficients) float64 design matrix.
        columns: the coefficient names, as formulaic and pydeseq2 name them.
        levels: for each factor (a metadata column encoded as categorical), its levels with
            the reference first.
        spec: the formulaic model spec that built `matrix`; it encodes new rows the same way.
    """

    matrix: np.ndarray
    columns: tuple[str, ...]
    levels: dict[str, tuple]
    spec: formulaic.ModelSpec

    def contrast(self, factor: str, level: object, reference: object) -> np.ndarray:
        """The vector ``c`` such that ``c @ beta`` is the log fold change of `level` over
        `reference` of `factor`, other factors at their reference levels and numeric
        covariates at 0 (pydeseq2's rule). Levels match exactly or by their ``str``.

        Raises:
            DesignError: `factor` is not in the design, is numeric, or has no main effect;
                a level is unknown; or `level` equals `reference`.
        """
        variables = self.spec.variables_by_source.get("data", set())
        if factor in variables and factor not in self.levels:
            raise DesignError(
                f"contrast factor {factor!r} is numeric, so the design fits it as one "
                f"continuous covariate, not as levels; write C({factor}) in the design to "
                "make it a factor"
            )
        if factor not in self.levels:
            raise DesignError(
                f"contrast factor {factor!r} is not a factor of the design; "
                f"factors: {sorted(self.levels)}"
            )
        known = self.levels[factor]
        level, reference = (_known_level(factor, known, name) for name in (level, reference))
        if level == reference:
            raise DesignError(f"contrast compares level {level!r} with itself")
        _require_main_effect(self.spec, factor)
        rows = pd.DataFrame(
            {
                name: [level, reference]
                if name == factor
                else [self.levels[name][0] if name in self.levels else 0.0] * 2
                for name in sorted(variables)
            }
        )
        encoded = np.asarray(self.spec.get_model_matrix(rows), dtype=np.float64)
        vector = encoded[0] - encoded[1]
        if not np.all(np.isfinite(vector)):
            raise DesignError(
                f"contrast of {factor!r} is not finite: a transform in the design is undefined "
                "with the other numeric covariates at 0"
            )
        return vector


def _known_level(factor: str, known: tuple, name: object) -> object:
    """The level of `known` equal to `name`, or else the one whose ``str`` equals it."""
    if name in known:
        return name
    matches = [value for value in known if str(value) == str(name)]
    if len(matches) != 1:
        raise DesignError(f"{factor!r} has no level {name!r}; levels: {list(known)}")
    return matches[0]


def _require_main_effect(spec: formulaic.ModelSpec, factor: str) -> None:
    """Raise unless some term of `spec` is `factor` alone (however coded)."""
    data = spec.variables_by_source.get("data", set())
    with_factor = []
    for term, factors in spec.term_factors.items():
        names = [spec.factor_variables[item] & data for item in factors]
        if not any(factor in variables for variables in names):
            continue
        if len(names) == 1 and names[0] == {factor}:
            return
        with_factor.append(str(term))
    raise DesignError(
        f"unsupported term {with_factor} for a contrast of {factor!r}: the factor has no main "
        "effect, so (as in DESeq2) a (factor, level, reference) contrast is undefined; add it "
        f"(for example '~ {factor} * other') or test a contrast vector"
    )


def _plain(error: Exception) -> str:
    """The message of `error` without the terminal colour codes formulaic puts in it."""
    return re.sub(r"\x1b\[[0-9;]*m", "", str(error))


def _parsed(formula: str) -> formulaic.Formula:
    """`formula` parsed by formulaic; syntax errors and two-sided formulas raise."""
    if not isinstance(formula, str):
        raise DesignError(f"design must be a formula string, got {type(formula).__name__}")
    try:
        parsed = formulaic.Formula(formula)
    except FormulaicError as error:
        raise DesignError(f"cannot parse design {formula!r}: {_plain(error)}") from error
    if not isinstance(parsed, SimpleFormula):
        raise DesignError(
            f"design {formula!r} must be one-sided, such as '~ a + b' (no response, no '|')"
        )
    return parsed


def _checked_metadata(metadata: pd.DataFrame, variables: set[str], formula: str) -> pd.DataFrame:
    """The columns `variables` of `metadata`, checked, with unused categories dropped."""
    missing = sorted(variables - set(metadata.columns))
    if missing:
        raise DesignError(
            f"design {formula!r} uses {', '.join(map(repr, missing))}: not a metadata column; "
            f"columns: {list(metadata.columns)}"
        )
    table = metadata.loc[:, sorted(variables)].copy()
    for name in table.columns:
        values = table[name]
        if values.isna().any():
            raise DesignError(f"metadata column {name!r} has missing values")
        if isinstance(values.dtype, pd.CategoricalDtype):
            table[name] = values.cat.remove_unused_categories()
    return table


def _factor_levels(spec: formulaic.ModelSpec) -> dict[str, tuple]:
    """Each categorical metadata column's levels, reference first; one-level factors raise."""
    data = spec.variables_by_source.get("data", set())
    levels: dict[str, tuple] = {}
    for item, state in spec.factor_contrasts.items():
        if len(state.levels) < 2:
            raise DesignError(f"factor {item.expr!r} has a single level {state.levels}; drop it")
        base = getattr(state.contrasts, "base", UNSET)
        reference = state.levels[0] if base is UNSET else base
        order = (reference, *(value for value in state.levels if value != reference))
        for name in spec.factor_variables[item] & data:
            if levels.setdefault(name, order) != order:
                raise DesignError(
                    f"metadata column {name!r} enters the design with two codings, reference "
                    f"levels {levels[name][0]!r} and {reference!r}; code it one way"
                )
    return levels


def _check_rank(matrix: np.ndarray, columns: tuple[str, ...], formula: str) -> None:
    """Raise naming the columns that are linear combinations of others, if any."""
    _, singular, right = np.linalg.svd(matrix, full_matrices=True)
    tolerance = RANK_RTOL * max(singular.max(initial=0.0), 1.0)
    rank = int(np.sum(singular > tolerance))
    if rank < matrix.shape[1]:
        null = right[rank:]
        involved = np.asarray(columns)[np.abs(null).max(axis=0) > 1e-8].tolist()
        raise DesignError(
            f"design {formula!r} has rank {rank} but {matrix.shape[1]} columns: {involved} "
            "are linear combinations of each other (confounded factors or an empty cell)"
        )


def design_matrix(metadata: pd.DataFrame, formula: str) -> Design:
    """The full-rank design of the formulaic `formula` over the rows of `metadata`.

    Args:
        metadata: one row per sample; the formula's variables are its columns.
        formula: such as ``"~ cell + dex"``, ``"~ condition * type"`` or
            ``"~ C(dex, contr.treatment('untrt')) + depth"`` (a leading ``~`` is optional).

    Returns:
        The `Design`, with rows in the order of `metadata`.

    Raises:
        DesignError: a formula that does not parse or is two-sided, an unknown column, a
            missing value, a factor with one level, a non-finite column, a rank-deficient
            design (naming the confounded columns), or no residual degrees of freedom.
    """
    parsed = _parsed(formula)
    table = _checked_metadata(metadata, set(parsed.required_variables), formula)
    try:
        frame = formulaic.model_matrix(parsed, table, na_action="raise")
    except (FormulaicError, ValueError) as error:  # a transform giving NaN is a ValueError
        raise DesignError(f"cannot build design {formula!r}: {_plain(error)}") from error
    spec = frame.model_spec
    levels = _factor_levels(spec)
    matrix = np.asarray(frame, dtype=np.float64)
    columns = tuple(str(name) for name in frame.columns)
    bad = np.asarray(columns)[~np.isfinite(matrix).all(axis=0)].tolist()
    if bad:
        raise DesignError(f"design {formula!r} has NaN or infinite values in columns {bad}")
    _check_rank(matrix, columns, formula)
    if matrix.shape[0] <= matrix.shape[1]:
        raise DesignError(
            f"design {formula!r} has {matrix.shape[1]} coefficients for {matrix.shape[0]} "
            "samples: no replicates to estimate dispersions"
        )
    return Design(matrix=matrix, columns=columns, levels=levels, spec=spec)
