"""False positives broken down by truth class (issue 12): hand-computed report, CLI lines, and a real evaluate."""

import json
import math

import numpy as np
import pandas as pd
import pytest

from lensdask.cli import main
from lensdask.model.report import classifier_report, false_positives_by_class
from lensdask.store import create_store

CLASSES = ["non-lens", "lens", "ring", "spiral", "merger", "companion", "edge-on", "group"]


def _scores_to_probs(truth, score, n_classes):
    """Probabilities whose lens column (1) is ``score`` and whose remainder sits on the true class."""
    probs = np.zeros((truth.size, n_classes))
    probs[:, 1] = score
    other = np.where(truth == 1, 0, truth)
    probs[np.arange(truth.size), other] += 1.0 - score
    return probs


def test_false_positives_by_class_hand_computed():
    # per class: lens scores chosen so counts above 0.5 and the median are known
    rows = {
        "non-lens": [0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.07, 0.08, 0.09, 0.60],  # 1 of 10 >= 0.5
        "lens": [0.90, 0.80, 0.70, 0.40],
        "ring": [0.50, 0.55, 0.90, 0.10],  # 0.5 counts (>=): 3 of 4, median 0.525
        "spiral": [0.10, 0.20, 0.30],  # none, median 0.2
        "merger": [0.70, np.nan, 0.20],  # 1 of 2 scored, 1 unscorable
        "companion": [0.95, 0.97],  # all, the two highest non-lens scores
        "edge-on": [0.49],  # just below
        # "group": no rows at all
    }
    truth = np.concatenate([[CLASSES.index(k)] * len(v) for k, v in rows.items()])
    score = np.concatenate([v for v in rows.values()])
    probs = _scores_to_probs(truth, np.nan_to_num(score, nan=0.0), len(CLASSES))
    probs[~np.isfinite(score)] = np.nan
    r = classifier_report(truth, probs, truth_classes=CLASSES, model_classes=CLASSES, lens_class=1, threshold=0.5)
    fp = r["false_positives_by_class"]
    assert list(fp) == [c for c in CLASSES if c != "lens"]  # store order, lens left out, empty class kept
    got = {k: (v["n"], v["n_nan"], v["above_threshold"]) for k, v in fp.items()}
    assert got == {
        "non-lens": (10, 0, 1),
        "ring": (4, 0, 3),
        "spiral": (3, 0, 0),
        "merger": (2, 1, 1),
        "companion": (2, 0, 2),
        "edge-on": (1, 0, 0),
        "group": (0, 0, 0),
    }
    assert fp["ring"]["fpr"] == pytest.approx(0.75) and fp["non-lens"]["fpr"] == pytest.approx(0.1)
    assert fp["ring"]["median_score"] == pytest.approx(0.525)
    assert fp["spiral"]["median_score"] == pytest.approx(0.2)
    assert fp["merger"]["median_score"] == pytest.approx(0.45)
    assert math.isnan(fp["group"]["fpr"]) and math.isnan(fp["group"]["median_score"])
    assert math.isnan(fp["group"]["fpr_at_fpr_1e-3_threshold"])
    # the per-class counts add up to the pooled negatives and to the purity's false positives
    assert sum(v["n"] for v in fp.values()) == r["n_neg"]
    n_found = sum(s >= 0.5 for s in rows["lens"])
    assert sum(v["above_threshold"] for v in fp.values()) == pytest.approx(n_found / r["purity"] - n_found)
    # 22 scored negatives: floor(1e-3 * 22) = 0 allowed above, so the threshold is the top negative (0.97)
    assert r["threshold_fpr_1e-3"] == pytest.approx(0.97)
    assert all(v["fpr_at_fpr_1e-3_threshold"] == 0.0 for k, v in fp.items() if k != "group")


def test_fpr_1e3_threshold_per_class_with_many_negatives():
    # 2000 non-lens at 0..0.5 (and two at 0.95, 0.99), 10 rings of which 3 score 0.7-0.9
    rng = np.random.default_rng(0)
    neg = rng.permutation(np.linspace(0.0, 0.5, 2000))
    ring = np.array([0.9, 0.8, 0.7, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1])
    neg[:2] = [0.95, 0.99]  # floor(1e-3 * 2010) = 2 allowed above: these two
    truth = np.r_[np.zeros(2000, int), np.full(10, 2), np.ones(5, int)]
    score = np.r_[neg, ring, np.full(5, 0.6)]
    fp = false_positives_by_class(
        truth, score, truth_classes=["non-lens", "lens", "ring"], threshold=0.6, threshold_fpr=0.9
    )
    assert fp["ring"]["above_threshold"] == 3 and fp["ring"]["fpr"] == pytest.approx(0.3)
    assert fp["ring"]["fpr_at_fpr_1e-3_threshold"] == 0.0  # 0.9 is not strictly above 0.9
    assert fp["non-lens"]["fpr_at_fpr_1e-3_threshold"] == pytest.approx(2 / 2000)
    probs = _scores_to_probs(truth, score, 3)
    r = classifier_report(
        truth,
        probs,
        truth_classes=["non-lens", "lens", "ring"],
        model_classes=["non-lens", "lens", "ring"],
        lens_class=1,
        threshold=0.6,
    )
    assert r["threshold_fpr_1e-3"] == pytest.approx(0.9)  # the third-highest negative
    assert r["false_positives_by_class"]["non-lens"]["fpr_at_fpr_1e-3_threshold"] == pytest.approx(0.001)
    assert r["false_positives_by_class"]["ring"]["fpr_at_fpr_1e-3_threshold"] == 0.0


def test_cli_evaluate_prints_one_line_per_false_positive_class(tmp_path, random_model, capsys):
    classes = ["non-lens", "lens", "ring", "spiral"]
    rng = np.random.default_rng(4)
    n = 40
    lab = np.r_[np.zeros(13, int), np.ones(12, int), np.full(10, 2), np.full(5, 3)]
    st = create_store(
        str(tmp_path / "mc.zarr"),
        tiles=["t0"],
        capacity=n,
        bands=list("griz"),
        pixel_scale=0.263,
        stamp=45,
        classes=classes,
        chunk_rows=n,
        overwrite=True,
    )
    im = rng.normal(0, 1, (n, 4, 45, 45)).astype(np.float32)
    st.write_tile(0, im, pd.DataFrame({"object_id": np.arange(n), "ra": 1.0, "dec": -30.0, "label": lab}))
    js = tmp_path / "m.json"
    assert (
        main(["evaluate", "--model", str(random_model), "--data", st.url, "--json", str(js), "--threshold", "0"]) == 0
    )
    out = capsys.readouterr().out
    lines = [ln.split() for ln in out.splitlines() if ln.startswith("  ") and " n=" in ln and "median" in ln]
    assert [ln[0] for ln in lines] == ["non-lens", "ring", "spiral"]
    assert [ln[1] for ln in lines] == ["n=13", "n=10", "n=5"]
    # threshold 0: every scored row is above it
    assert [ln[2] for ln in lines] == ["above=13", "above=10", "above=5"]
    m = json.loads(js.read_text())
    assert {k: v["n"] for k, v in m["false_positives_by_class"].items()} == {"non-lens": 13, "ring": 10, "spiral": 5}
    assert all(v["fpr"] == 1.0 for v in m["false_positives_by_class"].values())
