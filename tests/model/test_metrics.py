"""Metrics against hand-computed cases."""

import math

import numpy as np
import pandas as pd
import pytest

from lensdask.model.metrics import (
    auroc,
    bin_edges,
    binary_metrics,
    completeness_by,
    confusion_matrix,
    roc_curve,
    threshold_at_fpr,
    tpr_at_false_positives,
    tpr_at_fpr,
)
from lensdask.model.report import classifier_report, roc_on_grid


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
        "auroc": 1.0,
        "tpr0": 1.0,
        "tpr10": 1.0,
        "tpr_fpr_1e-3": 1.0,
        "tpr_fpr_1e-4": 1.0,
        "n_pos": 2,
        "n_neg": 2,
        "n_nan": 2,
    }


def test_length_mismatch():
    with pytest.raises(ValueError):
        auroc([1, 0], [0.1])


def test_tpr_at_fpr_1e4_needs_1e4_negatives():
    # 20000 negatives: floor(1e-4 * 20000) = 2 false positives allowed; 3rd highest negative is 0.9997
    neg = np.linspace(0, 1, 20001)[:-1]  # ... 0.99985, 0.9999, 0.99995
    pos = np.array([0.99996, 0.99992, 0.9998, 0.5])
    y = np.r_[np.zeros(neg.size), np.ones(pos.size)]
    s = np.r_[neg, pos]
    m = binary_metrics(y, s)
    assert m["tpr0"] == 0.25  # only 0.99996 beats every negative
    assert m["tpr_fpr_1e-4"] == 0.5  # 0.99996, 0.99992 beat the 3rd highest negative 0.99985
    assert m["tpr_fpr_1e-3"] == 0.75  # 20 FPs allowed: threshold 0.999 -> three positives
    assert threshold_at_fpr(y, s, 1e-4) == pytest.approx(0.99985)


def test_roc_curve_hand_computed_and_matches_auroc():
    fpr, tpr, thr = roc_curve([0, 1, 1, 0], [0.1, 0.9, 0.5, 0.5])
    np.testing.assert_allclose(fpr, [0, 0, 0.5, 1])
    np.testing.assert_allclose(tpr, [0, 0.5, 1, 1])
    assert thr[0] == np.inf and thr.tolist()[1:] == [0.9, 0.5, 0.1]
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 300)
    s = rng.normal(y, 1.0).round(1)  # ties
    fpr, tpr, _ = roc_curve(y, s)
    assert np.trapezoid(tpr, fpr) == pytest.approx(auroc(y, s))
    grid = roc_on_grid(fpr, tpr)
    assert grid["fpr"][0] == 0 and grid["fpr"][-1] == 1 and grid["tpr"][-1] == 1.0


def test_confusion_matrix():
    m = confusion_matrix([0, 0, 1, 2, 2, 2], [0, 1, 1, 2, 0, 2], 3)
    assert m.tolist() == [[1, 1, 0], [0, 1, 0], [1, 0, 2]]
    assert confusion_matrix([0, 1], [2, 2], 2, 3).tolist() == [[0, 0, 1], [0, 0, 1]]


def test_completeness_by_bins_and_edges():
    rows = completeness_by([1.0, 1.5, 2.0, 2.5, 3.0, np.nan], [1, 0, 1, 1, 0, 1], [1.0, 2.0, 3.0])
    assert [(r["n"], r["found"]) for r in rows] == [(2, 1), (3, 2)]  # 3.0 goes into the last bin
    assert rows[0]["completeness"] == 0.5 and rows[1]["completeness"] == pytest.approx(2 / 3)
    assert math.isnan(completeness_by([5.0], [1], [0, 1, 2])[0]["completeness"])
    np.testing.assert_allclose(bin_edges(np.arange(101.0), 4), [0, 25, 50, 75, 100])
    assert bin_edges([np.nan]).size == 0 and bin_edges([2.0, 2.0]).tolist() == [2.0, 2.0]


def test_classifier_report_multiclass_and_selection_function():
    classes = ["non-lens", "lens", "ring"]
    truth = np.array([1, 1, 1, 1, 0, 0, 2, 2])
    probs = np.array(
        [
            [0.1, 0.8, 0.1],
            [0.2, 0.7, 0.1],
            [0.6, 0.3, 0.1],
            [np.nan] * 3,
            [0.9, 0.05, 0.05],
            [0.7, 0.2, 0.1],
            [0.1, 0.1, 0.8],
            [0.2, 0.6, 0.2],
        ]
    )
    params = pd.DataFrame(
        {
            "theta_E": [2.0, 1.0, 1.2, 1.5, np.nan, np.nan, np.nan, np.nan],
            "arc_snr_g": [50, 40, 10, 30, np.nan, np.nan, np.nan, np.nan],
            "seeing_g": 1.0,
        }
    )
    r = classifier_report(
        truth, probs, truth_classes=classes, model_classes=classes, lens_class=1, params=params, threshold=0.5, n_bins=2
    )
    assert r["n_pos"] == 3 and r["n_neg"] == 4 and r["n_nan"] == 1
    assert r["confusion"]["counts"] == [[2, 0, 0], [1, 2, 0], [0, 1, 1]]
    assert r["completeness"] == pytest.approx(2 / 3) and r["purity"] == pytest.approx(2 / 3)
    assert set(r["selection_function"]) == {"theta_E", "arc_snr_g"}
    # lenses scored: theta_E 2.0 (found), 1.0 (found), 1.2 (missed); bins [1.0, 1.2], [1.2, 2.0]
    te = r["selection_function"]["theta_E"]
    assert [(b["n"], b["found"]) for b in te] == [(1, 1), (2, 1)]
    snr = r["selection_function"]["arc_snr_g"]
    assert snr[0]["found"] == 0 and snr[-1]["completeness"] == 1.0
