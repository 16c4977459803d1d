"""Metrics against hand-computed cases."""

import math

import numpy as np
import pytest

from lensdask.model.metrics import auroc, binary_metrics, tpr_at_false_positives, tpr_at_fpr


def test_auroc_perfect_random_inverted():
    y = [0, 0, 1, 1]
    assert auroc(y, [0.1, 0.2, 0.8, 0.9]) == 1.0
    assert auroc(y, [0.9, 0.8, 0.2, 0.1]) == 0.0
    assert auroc(y, [0.5, 0.5, 0.5, 0.5]) == 0.5


def test_auroc_ties_hand_computed():
    # pairs (pos, neg): pos 0.5 vs neg 0.5 tie (1/2), vs neg 0.1 win; pos 0.9 wins both -> (0.5+1+1+1)/4
    assert auroc([1, 1, 0, 0], [0.5, 0.9, 0.5, 0.1]) == pytest.approx(3.5 / 4)
    # 1 pos, 3 neg: beats one, ties one, loses one -> (1 + 0.5) / 3
    assert auroc([1, 0, 0, 0], [0.5, 0.2, 0.5, 0.8]) == pytest.approx(0.5)


def test_auroc_undefined_without_a_class():
    assert math.isnan(auroc([1, 1], [0.1, 0.2]))
    assert math.isnan(auroc([0, 0], [0.1, 0.2]))


def test_tpr0_and_tpr10_definitions():
    neg = np.arange(20) / 100.0  # 0.00 .. 0.19, highest 0.19, 11th highest 0.09
    pos = np.array([0.5, 0.19, 0.15, 0.095, 0.09, 0.01])
    y = np.r_[np.zeros(20), np.ones(6)]
    s = np.r_[neg, pos]
    # TPR0: strictly above 0.19 -> only 0.5
    assert tpr_at_false_positives(y, s, 0) == pytest.approx(1 / 6)
    # TPR10: strictly above the 11th highest negative (0.09) -> 0.5, 0.19, 0.15, 0.095
    assert tpr_at_false_positives(y, s, 10) == pytest.approx(4 / 6)
    # k >= n_neg: every positive counts
    assert tpr_at_false_positives(y, s, 20) == 1.0


def test_tpr_all_equal_scores_is_zero():
    y = [1, 1, 0, 0]
    s = [0.3, 0.3, 0.3, 0.3]
    assert tpr_at_false_positives(y, s, 0) == 0.0
    assert tpr_at_false_positives(y, s, 1) == 0.0


def test_tpr_at_fpr_floor():
    y = np.r_[np.zeros(1999), np.ones(2)]
    s = np.r_[np.linspace(0, 1, 1999), 0.9995, 0.5]
    # floor(1e-3 * 1999) = 1 false positive allowed: threshold is the 2nd highest negative (~0.9995)
    k1 = tpr_at_false_positives(y, s, 1)
    assert k1 == 0.5
    assert tpr_at_fpr(y, s, 1e-3) == k1
    assert tpr_at_fpr(y, s, 0.0) == tpr_at_false_positives(y, s, 0) == 0.0


def test_binary_metrics_drops_and_counts_nan():
    y = [1, 1, 0, 0, 1, 0]
    s = [0.9, 0.8, 0.1, 0.2, np.nan, np.nan]
    m = binary_metrics(y, s)
    assert m == {
        "auroc": 1.0, "tpr0": 1.0, "tpr10": 1.0, "tpr_fpr_1e-3": 1.0, "n_pos": 2, "n_neg": 2, "n_nan": 2,
    }


def test_length_mismatch():
    with pytest.raises(ValueError):
        auroc([1, 0], [0.1])
