"""Binary classification metrics for lens finding (pure numpy).

Labels are truthy for lenses (positives) and falsy for everything else; scores
are higher for more lens-like objects. Rows whose score is NaN are dropped
(a cutout that could not be scored); :func:`binary_metrics` counts them.

The TPR0 / TPR10 figures follow Metcalf et al. (2019), *The Strong
Gravitational Lens Finding Challenge*: the fraction of lenses found above the
highest-scoring non-lens (TPR0), or before the eleventh non-lens (TPR10).
"""

from __future__ import annotations

import math

import numpy as np
from scipy.stats import rankdata


def _clean(labels, scores) -> tuple[np.ndarray, np.ndarray, int]:
    labels = np.asarray(labels).astype(bool).ravel()
    scores = np.asarray(scores, dtype=np.float64).ravel()
    if labels.shape != scores.shape:
        raise ValueError(f"labels {labels.shape} and scores {scores.shape} differ in length")
    keep = ~np.isnan(scores)
    return labels[keep], scores[keep], int((~keep).sum())


def auroc(labels, scores) -> float:
    """Area under the ROC curve, as the Mann-Whitney rank statistic.

    Ties count one half, so all-equal scores give 0.5. NaN scores are dropped.

    Parameters
    ----------
    labels : array_like of bool
        True for positives (lenses).
    scores : array_like of float
        Higher = more lens-like.

    Returns
    -------
    float
        P(score of a random positive > score of a random negative) + 0.5 P(tie);
        NaN if there are no positives or no negatives.
    """
    y, s, _ = _clean(labels, scores)
    n_pos = int(y.sum())
    n_neg = int(y.size - n_pos)
    if n_pos == 0 or n_neg == 0:
        return math.nan
    ranks = rankdata(s)  # average ranks handle ties
    u = ranks[y].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def tpr_at_false_positives(labels, scores, k: int) -> float:
    """True-positive rate with at most ``k`` false positives.

    The fraction of positives scoring strictly above the (k+1)-th highest
    negative score; TPR0 is ``k=0`` (above every negative), TPR10 ``k=10``.
    Ties with that negative do not count as found, so at most ``k`` negatives
    lie above the threshold. With ``k`` or fewer negatives every positive counts.

    Returns
    -------
    float
        In [0, 1]; NaN if there are no positives.
    """
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    y, s, _ = _clean(labels, scores)
    pos = s[y]
    neg = s[~y]
    if pos.size == 0:
        return math.nan
    if neg.size <= k:
        return 1.0
    threshold = np.partition(neg, neg.size - 1 - k)[neg.size - 1 - k]  # (k+1)-th highest
    return float((pos > threshold).mean())


def tpr_at_fpr(labels, scores, fpr: float) -> float:
    """True-positive rate at a false-positive rate of at most ``fpr``.

    Allows ``floor(fpr * n_neg)`` false positives, see :func:`tpr_at_false_positives`.
    """
    if not 0 <= fpr <= 1:
        raise ValueError(f"fpr must lie in [0, 1], got {fpr}")
    y, s, _ = _clean(labels, scores)
    n_neg = int((~y).sum())
    return tpr_at_false_positives(y, s, int(math.floor(fpr * n_neg)))


def binary_metrics(labels, scores) -> dict:
    """The standard summary of a lens classifier.

    Parameters
    ----------
    labels : array_like of bool
        True for lenses.
    scores : array_like of float
        Lens scores (e.g. lens probability); NaN rows are dropped and counted.

    Returns
    -------
    dict
        ``auroc``, ``tpr0``, ``tpr10``, ``tpr_fpr_1e-3`` (floats, NaN when
        undefined), ``n_pos``, ``n_neg`` (rows kept) and ``n_nan`` (rows dropped).
    """
    y, s, n_nan = _clean(labels, scores)
    return {
        "auroc": auroc(y, s),
        "tpr0": tpr_at_false_positives(y, s, 0),
        "tpr10": tpr_at_false_positives(y, s, 10),
        "tpr_fpr_1e-3": tpr_at_fpr(y, s, 1e-3),
        "n_pos": int(y.sum()),
        "n_neg": int((~y).sum()),
        "n_nan": n_nan,
    }
