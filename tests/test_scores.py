"""Score arithmetic on cases with a known answer."""

from __future__ import annotations

import math

import pytest

from sae_core.interp.samples import NON_ACTIVATING, Context
from sae_core.interp.scores import auroc, balanced_accuracy, fuzz_marks, mean_and_spread


def test_balanced_accuracy():
    labels = [True, True, False, False]
    assert balanced_accuracy(labels, [0.9, 0.8, 0.1, 0.2]) == 1.0
    assert balanced_accuracy(labels, [0.9, 0.9, 0.9, 0.9]) == 0.5  # always Yes: chance, whatever the class sizes
    assert balanced_accuracy([True, False, False, False], [0.9, 0.9, 0.9, 0.9]) == 0.5
    assert balanced_accuracy(labels, [0.1, 0.2, 0.9, 0.8]) == 0.0
    assert balanced_accuracy(labels, [None, 0.9, None, 0.1]) == 0.5  # no answer is wrong on either side
    assert math.isnan(balanced_accuracy([True, True], [0.9, 0.1]))


def test_auroc():
    assert auroc([True, False], [0.9, 0.1]) == 1.0
    assert auroc([True, False], [0.1, 0.9]) == 0.0
    assert auroc([True, True, False, False], [0.5, 0.5, 0.5, 0.5]) == 0.5
    assert auroc([True, True, False, False], [0.9, 0.3, 0.5, 0.1]) == 0.75
    assert math.isnan(auroc([False], [0.3]))


def test_fuzz_marks_copy_the_true_ones_and_mark_random_real_tokens_elsewhere():
    active = Context(["a", "b", "c", "d"], [0, 2.0, 1.0, 0], 1, 7)
    quiet = Context(["w", "x", "y", "z"], [0.0] * 4, NON_ACTIVATING, 8, [False, True, True, True])
    truth = [False, True, True, False]
    marks = fuzz_marks([active, quiet], [truth], seed=0)
    assert marks[0] == truth
    assert sum(marks[1]) == 2 and not marks[1][0]  # as many as the firing contexts mark, never an uncounted token
    assert marks == fuzz_marks([active, quiet], [truth], seed=0)


def test_mean_and_spread_skips_missing_scores():
    mean, se, n = mean_and_spread([1.0, 0.0, float("nan"), None])
    assert (mean, n) == (0.5, 2) and se == pytest.approx(0.5)
    assert mean_and_spread([])[2] == 0
