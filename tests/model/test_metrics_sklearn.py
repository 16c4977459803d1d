"""AUROC and the ROC curve of :mod:`lensdask.model.metrics` agree with scikit-learn's."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import auc, roc_auc_score
from sklearn.metrics import roc_curve as sk_roc_curve

from lensdask.model.metrics import auroc, roc_curve


def _cases():
    rng = np.random.default_rng(16)
    for n, pos in [(50, 0.5), (1000, 0.01), (1000, 0.3), (7, 0.4)]:
        y = rng.random(n) < pos
        y[:2] = [True, False]  # both classes present
        yield f"random-{n}-{pos}", y, rng.random(n)
        yield f"tied-{n}-{pos}", y, np.round(rng.random(n), 1)  # ~10 distinct scores, many ties across classes
        yield f"shifted-{n}-{pos}", y, rng.normal(size=n) + 1.5 * y
    y = rng.random(200) < 0.5
    y[:2] = [True, False]
    yield "all-equal", y, np.full(200, 0.3)
    yield "two-levels", y, np.where(rng.random(200) < 0.5, 0.9, 0.1)


CASES = list(_cases())


@pytest.mark.parametrize("name,y,s", CASES, ids=[c[0] for c in CASES])
def test_auroc_matches_sklearn(name, y, s):
    assert auroc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)


@pytest.mark.parametrize("name,y,s", CASES, ids=[c[0] for c in CASES])
def test_roc_curve_matches_sklearn(name, y, s):
    fpr, tpr, thr = roc_curve(y, s)
    sk_fpr, sk_tpr, sk_thr = sk_roc_curve(y, s, drop_intermediate=False)
    # both: one point per distinct score from the highest down, after (0, 0) at an infinite threshold
    assert np.isinf(thr[0]) and np.isinf(sk_thr[0])
    np.testing.assert_allclose(thr[1:], sk_thr[1:])
    np.testing.assert_allclose(fpr, sk_fpr, atol=1e-12)
    np.testing.assert_allclose(tpr, sk_tpr, atol=1e-12)
    assert auc(fpr, tpr) == pytest.approx(roc_auc_score(y, s), abs=1e-12)


def test_nan_scores_are_dropped_as_sklearn_would_see_the_rest():
    rng = np.random.default_rng(3)
    y, s = rng.random(300) < 0.3, rng.random(300)
    y[:2] = [True, False]
    s[rng.random(300) < 0.1] = np.nan
    keep = ~np.isnan(s)
    assert auroc(y, s) == pytest.approx(roc_auc_score(y[keep], s[keep]), abs=1e-12)
    fpr, tpr, _ = roc_curve(y, s)
    sk_fpr, sk_tpr, _ = sk_roc_curve(y[keep], s[keep], drop_intermediate=False)
    np.testing.assert_allclose(fpr, sk_fpr)
    np.testing.assert_allclose(tpr, sk_tpr)
