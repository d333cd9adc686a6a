"""`zoo.deseq2.design`: what formulaic brings (codings, no intercept, unused categories) and
the clear `DesignError` for each kind of bad design or contrast, on pasilla's sample table."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pretraining.bulk_counts import pasilla
from zoo import DesignError
from zoo.deseq2.design import design_matrix


@pytest.fixture(scope="module")
def metadata():
    """pasilla's 7 samples: condition (treated x3, untreated x4) and type."""
    return pasilla()[1]


def test_interaction_contrast_is_at_the_reference_of_the_other_factor(metadata):
    design = design_matrix(metadata, "~ condition * type")
    expected = np.zeros(len(design.columns))
    expected[design.columns.index("condition[T.untreated]")] = -1.0
    np.testing.assert_array_equal(design.contrast("condition", "treated", "untreated"), expected)


def test_contrast_between_two_non_reference_levels(metadata):
    metadata = metadata.assign(group=["a", "b", "c", "a", "b", "c", "c"])
    design = design_matrix(metadata, "~ group")
    expected = np.zeros(3)
    expected[design.columns.index("group[T.c]")] = 1.0
    expected[design.columns.index("group[T.b]")] = -1.0
    np.testing.assert_array_equal(design.contrast("group", "c", "b"), expected)


def test_no_intercept_design_contrasts_its_cell_means(metadata):
    design = design_matrix(metadata, "~ 0 + condition")
    assert design.columns == ("condition[treated]", "condition[untreated]")
    np.testing.assert_array_equal(design.contrast("condition", "untreated", "treated"), [-1, 1])


def test_unused_categories_are_dropped(metadata):
    categories = ["untreated", "treated", "mock"]
    metadata = metadata.assign(condition=pd.Categorical(metadata["condition"], categories))
    design = design_matrix(metadata, "~ condition")
    assert design.columns == ("Intercept", "condition[T.treated]")
    assert design.levels["condition"] == ("untreated", "treated")


def test_integer_levels_match_by_their_text(metadata):
    metadata = metadata.assign(batch=[1, 1, 2, 2, 1, 2, 2])
    design = design_matrix(metadata, "~ C(batch) + condition")
    np.testing.assert_array_equal(design.contrast("batch", "2", "1"), [0, 1, 0])


@pytest.mark.parametrize(
    ("change", "formula", "message"),
    [
        ({}, "~ condition + batch", "'batch': not a metadata column"),
        ({"one": "x"}, "~ one + condition", "single level"),
        ({"x": [1.0, np.nan, 2, 3, 4, 5, 6]}, "~ x + condition", "'x' has missing values"),
        ({"x": np.arange(7.0)}, "~ np.log(x) + condition", "np.log"),
        ({}, "y ~ condition", "one-sided"),
        ({}, "~ condition +", "cannot parse"),
        ({}, "~ condition + type + condition:type + C(type)", r"rank 4 but 5 columns"),
    ],
)
@pytest.mark.filterwarnings("ignore:divide by zero encountered in log:RuntimeWarning")
def test_bad_designs_are_refused(metadata, change, formula, message):
    with pytest.raises(DesignError, match=message):
        design_matrix(metadata.assign(**change), formula)


def test_rank_error_names_the_confounded_columns(metadata):
    metadata = metadata.assign(
        knockdown=metadata["condition"].map({"treated": "yes", "untreated": "no"})
    )
    with pytest.raises(DesignError) as error:
        design_matrix(metadata, "~ type + condition + knockdown")
    message = str(error.value)
    assert "'condition[T.untreated]'" in message and "'knockdown[T.yes]'" in message
    assert "'type[T.single-read]'" not in message


def test_too_few_samples_are_refused(metadata):
    metadata = metadata.assign(sample=[f"s{i}" for i in range(7)])
    with pytest.raises(DesignError, match="no replicates"):
        design_matrix(metadata, "~ sample")


@pytest.mark.parametrize(
    ("formula", "contrast", "message"),
    [
        ("~ depth + condition", ("depth", "2", "1"), r"numeric.*C\(depth\)"),
        ("~ condition:type", ("condition", "treated", "untreated"), "no main effect"),
        ("~ condition", ("condition", "treated", "treated"), "with itself"),
        ("~ condition", ("condition", "treated", "mock"), "no level 'mock'"),
        ("~ condition", ("type", "single-read", "paired-end"), "not a factor"),
    ],
)
def test_bad_contrasts_are_refused(metadata, formula, contrast, message):
    design = design_matrix(metadata.assign(depth=np.arange(7.0)), formula)
    with pytest.raises(DesignError, match=message):
        design.contrast(*contrast)
