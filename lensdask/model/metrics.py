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
        ``auroc``, ``tpr0``, ``tpr10``, ``tpr_fpr_1e-3``, ``tpr_fpr_1e-4`` (floats,
        NaN when undefined), ``n_pos``, ``n_neg`` (rows kept) and ``n_nan`` (rows
        dropped). TPR at FPR 1e-4 needs >= 1e4 negatives to differ from TPR0.
    """
    y, s, n_nan = _clean(labels, scores)
    return {
        "auroc": auroc(y, s),
        "tpr0": tpr_at_false_positives(y, s, 0),
        "tpr10": tpr_at_false_positives(y, s, 10),
        "tpr_fpr_1e-3": tpr_at_fpr(y, s, 1e-3),
        "tpr_fpr_1e-4": tpr_at_fpr(y, s, 1e-4),
        "n_pos": int(y.sum()),
        "n_neg": int((~y).sum()),
        "n_nan": n_nan,
    }


def roc_curve(labels, scores) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The ROC curve: one point per distinct score, from the highest threshold down.

    Parameters
    ----------
    labels, scores : array_like
        As in :func:`auroc`; NaN scores are dropped.

    Returns
    -------
    fpr, tpr, thresholds : numpy.ndarray
        A row is counted positive when ``score >= threshold``. The first point is
        (0, 0) with threshold +inf; the last is (1, 1). Rates are NaN when a class
        is absent.
    """
    y, s, _ = _clean(labels, scores)
    order = np.argsort(-s, kind="mergesort")
    y, s = y[order], s[order]
    last = np.r_[np.flatnonzero(np.diff(s)), y.size - 1] if y.size else np.zeros(0, int)
    tp = np.cumsum(y)[last] if y.size else np.zeros(0)
    fp = (last + 1) - tp
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    with np.errstate(invalid="ignore", divide="ignore"):
        tpr = np.r_[0.0, tp / n_pos] if n_pos else np.full(last.size + 1, np.nan)
        fpr = np.r_[0.0, fp / n_neg] if n_neg else np.full(last.size + 1, np.nan)
    return fpr, tpr, np.r_[np.inf, s[last]]


def threshold_at_fpr(labels, scores, fpr: float) -> float:
    """The score threshold of :func:`tpr_at_fpr`: positives scoring strictly above it are found.

    It is the ``(floor(fpr * n_neg) + 1)``-th highest negative score, so at most
    ``floor(fpr * n_neg)`` negatives lie above it; -inf when there are no more
    negatives than that (everything passes).
    """
    y, s, _ = _clean(labels, scores)
    neg = s[~y]
    k = int(math.floor(fpr * neg.size))
    if neg.size <= k:
        return -math.inf
    return float(np.partition(neg, neg.size - 1 - k)[neg.size - 1 - k])


def confusion_matrix(truth, predicted, n_truth: int, n_predicted: int | None = None) -> np.ndarray:
    """Counts of (true class, predicted class) pairs.

    Parameters
    ----------
    truth : array_like of int
        True class indices, 0 .. n_truth-1.
    predicted : array_like of int
        Predicted class indices (e.g. the argmax of the probabilities),
        0 .. n_predicted-1.
    n_truth, n_predicted : int
        Numbers of classes (rows, columns); ``n_predicted`` defaults to ``n_truth``.

    Returns
    -------
    numpy.ndarray
        (n_truth, n_predicted) int64; row = true class, column = predicted class.
    """
    n_predicted = n_truth if n_predicted is None else n_predicted
    truth = np.asarray(truth, dtype=np.int64).ravel()
    predicted = np.asarray(predicted, dtype=np.int64).ravel()
    if truth.shape != predicted.shape:
        raise ValueError(f"truth {truth.shape} and predicted {predicted.shape} differ in length")
    out = np.zeros((n_truth, n_predicted), dtype=np.int64)
    np.add.at(out, (truth, predicted), 1)
    return out


def completeness_by(values, found, edges) -> list[dict]:
    """Completeness (fraction found) of positives in bins of one parameter.

    Parameters
    ----------
    values : array_like of float
        The parameter of each positive (e.g. ``theta_E`` in arcsec, or an arc
        S/N); NaN rows are ignored.
    found : array_like of bool
        Whether each positive passed the operating threshold.
    edges : array_like of float
        Increasing bin edges; the last bin includes its upper edge.

    Returns
    -------
    list of dict
        One per bin: ``lo``, ``hi``, ``n`` (positives in the bin), ``found``,
        ``completeness`` (NaN for an empty bin).
    """
    values = np.asarray(values, dtype=np.float64).ravel()
    found = np.asarray(found, dtype=bool).ravel()
    edges = np.asarray(edges, dtype=np.float64)
    ok = np.isfinite(values)
    values, found = values[ok], found[ok]
    idx = np.searchsorted(edges, values, side="right") - 1
    idx[values == edges[-1]] = edges.size - 2
    rows = []
    for b in range(edges.size - 1):
        sel = idx == b
        n = int(sel.sum())
        k = int(found[sel].sum())
        rows.append(
            {
                "lo": float(edges[b]),
                "hi": float(edges[b + 1]),
                "n": n,
                "found": k,
                "completeness": k / n if n else math.nan,
            }
        )
    return rows


def bin_edges(values, n_bins: int = 5) -> np.ndarray:
    """Edges of up to ``n_bins`` bins holding about equal numbers of the finite ``values``.

    Quantile edges, repeated values merged; a single distinct value gives one
    bin of zero width. Empty input gives no edges.
    """
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return np.zeros(0)
    edges = np.unique(np.quantile(v, np.linspace(0, 1, n_bins + 1)))
    if edges.size < 2:
        edges = np.array([edges[0], edges[0]])
    return edges
