"""The performance summary lens finders report, from truth labels and class probabilities.

Shared by validation during training (written into the model card) and by
:func:`lensdask.model.evaluate`.
"""

from __future__ import annotations

import math
import os

import numpy as np
import pandas as pd

from .metrics import bin_edges, binary_metrics, completeness_by, confusion_matrix, roc_curve, threshold_at_fpr

ROC_GRID = np.r_[0.0, np.logspace(-5, 0, 51)]
"""False-positive rates at which the ROC curve is recorded in JSON (the PNG uses every point)."""


def selection_params(columns) -> list[str]:
    """The per-row parameters the selection function is binned in: ``theta_E``, ``arc_snr_<band>``."""
    return [c for c in columns if c == "theta_E" or str(c).startswith("arc_snr_")]


def roc_on_grid(fpr: np.ndarray, tpr: np.ndarray, grid: np.ndarray = ROC_GRID) -> dict:
    """The ROC curve at fixed false-positive rates: the best TPR with FPR <= each grid value."""
    if fpr.size == 0 or np.isnan(fpr).all() or np.isnan(tpr).all():
        return {"fpr": grid.tolist(), "tpr": [math.nan] * grid.size}
    idx = np.searchsorted(fpr, grid, side="right") - 1
    return {"fpr": grid.tolist(), "tpr": tpr[np.clip(idx, 0, None)].tolist()}


def classifier_report(
    truth: np.ndarray,
    probs: np.ndarray,
    *,
    truth_classes: list[str],
    model_classes: list[str],
    lens_class: int,
    params: pd.DataFrame | None = None,
    threshold: float = 0.5,
    n_bins: int = 5,
) -> dict:
    """Lens-versus-rest metrics, confusion matrix, ROC curve and selection function.

    Parameters
    ----------
    truth : numpy.ndarray of int
        True class of each row, indices into ``truth_classes`` (the store's).
    probs : numpy.ndarray
        (n, n_model_classes) probabilities; NaN rows (unscorable) are dropped and counted.
    truth_classes, model_classes : list of str
        Class names of the data and of the model. Lenses are the truth rows
        named ``"lens"``; the score is ``probs[:, lens_class]``.
    lens_class : int
        Index of the lens class among ``model_classes``.
    params : pandas.DataFrame, optional
        Per-row parameters aligned with ``truth``; ``theta_E`` (arcsec) and
        ``arc_snr_<band>`` columns give the selection function.
    threshold : float
        Operating lens probability: a lens is *found* when its score >= threshold.
    n_bins : int
        Bins per parameter (equal numbers of lenses per bin).

    Returns
    -------
    dict
        :func:`~lensdask.model.metrics.binary_metrics` keys, then ``threshold``,
        ``threshold_fpr_1e-3`` (score above which FPR <= 1e-3), ``completeness``
        and ``purity`` at ``threshold``, ``confusion`` (``truth`` and
        ``predicted`` class names, ``counts`` with rows = truth and columns =
        argmax prediction), ``roc`` (``fpr``/``tpr`` on :data:`ROC_GRID`) and
        ``selection_function`` (parameter -> list of bins with ``lo``, ``hi``,
        ``n``, ``found``, ``completeness`` at ``threshold`` and
        ``completeness_fpr_1e-3``), and ``false_positives_by_class`` (see
        :func:`false_positives_by_class`).
    """
    truth = np.asarray(truth, dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    score = probs[:, lens_class] if probs.size else np.zeros(truth.size)
    truth_lens = truth_classes.index("lens") if "lens" in truth_classes else -1
    is_lens = truth == truth_lens
    out = binary_metrics(is_lens, score)
    ok = np.isfinite(score)
    y, s = is_lens[ok], score[ok]
    t_fpr = threshold_at_fpr(y, s, 1e-3)
    found = s >= threshold
    out["threshold"] = float(threshold)
    out["threshold_fpr_1e-3"] = t_fpr
    out["completeness"] = float(found[y].mean()) if y.any() else math.nan
    out["purity"] = float(y[found].mean()) if found.any() else math.nan
    pred = probs[ok].argmax(axis=1) if ok.any() else np.zeros(0, np.int64)
    out["confusion"] = {
        "truth": list(truth_classes),
        "predicted": list(model_classes),
        "counts": confusion_matrix(truth[ok], pred, len(truth_classes), len(model_classes)).tolist(),
    }
    fpr, tpr, _ = roc_curve(y, s)
    out["roc"] = roc_on_grid(fpr, tpr)
    selection = {}
    if params is not None and y.any():
        lens_params = params.iloc[np.flatnonzero(ok)[y]]
        for col in selection_params(params.columns):
            v = lens_params[col].to_numpy(dtype=np.float64)
            edges = bin_edges(v, n_bins)
            if edges.size < 2:
                continue
            at_t = completeness_by(v, found[y], edges)
            at_fpr = completeness_by(v, s[y] > t_fpr, edges)
            for row, other in zip(at_t, at_fpr):
                row["completeness_fpr_1e-3"] = other["completeness"]
            selection[col] = at_t
    out["selection_function"] = selection
    out["false_positives_by_class"] = false_positives_by_class(
        truth, score, truth_classes=truth_classes, threshold=threshold, threshold_fpr=t_fpr
    )
    return out


def false_positives_by_class(
    truth: np.ndarray, score: np.ndarray, *, truth_classes: list[str], threshold: float, threshold_fpr: float
) -> dict:
    """How often each non-lens truth class is scored as a lens.

    Parameters
    ----------
    truth : numpy.ndarray of int
        True class of each row, indices into ``truth_classes``.
    score : numpy.ndarray of float
        Lens probability of each row; non-finite rows are unscorable and only counted.
    truth_classes : list of str
        Class names of the data; every class but ``"lens"`` is reported, in this order,
        including classes with no rows.
    threshold : float
        Operating lens probability: a row is a false positive when its score >= threshold.
    threshold_fpr : float
        The pooled FPR-1e-3 threshold of :func:`classifier_report`; a row counts
        there when its score is strictly above it (as lenses do in ``tpr_fpr_1e-3``).

    Returns
    -------
    dict
        Class name -> ``n`` (scored rows), ``n_nan`` (unscorable rows),
        ``above_threshold`` (rows with score >= ``threshold``), ``fpr``
        (``above_threshold / n``), ``fpr_at_fpr_1e-3_threshold`` (fraction with
        score > ``threshold_fpr``) and ``median_score``; the fractions and the
        median are NaN for a class with no scored rows.
    """
    truth = np.asarray(truth, dtype=np.int64)
    score = np.asarray(score, dtype=np.float64)
    ok = np.isfinite(score)
    out = {}
    for k, name in enumerate(truth_classes):
        if name == "lens":
            continue
        rows = truth == k
        s = score[rows & ok]
        n = int(s.size)
        above = int((s >= threshold).sum())
        out[str(name)] = {
            "n": n,
            "n_nan": int((rows & ~ok).sum()),
            "above_threshold": above,
            "fpr": above / n if n else math.nan,
            "fpr_at_fpr_1e-3_threshold": float((s > threshold_fpr).mean()) if n else math.nan,
            "median_score": float(np.median(s)) if n else math.nan,
        }
    return out


def plot_roc(report: dict | list[dict], path: str | os.PathLike, *, labels=None, fpr_tpr=None, title=None) -> None:
    """Write a ROC curve PNG (log false-positive rate) with the FPR 1e-3 and 1e-4 points marked.

    Parameters
    ----------
    report : dict or list of dict
        :func:`classifier_report` results (their ``roc`` grids are drawn), one per curve.
    path : str or path
        PNG to write.
    labels : list of str, optional
        Legend entries, one per report.
    fpr_tpr : list of (fpr, tpr), optional
        Full-resolution curves to draw instead of the reports' grids.
    title : str, optional
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    reports = report if isinstance(report, list) else [report]
    labels = labels or [None] * len(reports)
    fig = Figure(figsize=(5.2, 4.2), dpi=120)
    ax = fig.add_subplot()
    for k, (r, lab) in enumerate(zip(reports, labels)):
        if fpr_tpr is not None:
            fpr, tpr = (np.asarray(a) for a in fpr_tpr[k])
            ax.step(fpr, tpr, where="post", label=lab)
        else:
            ax.step(r["roc"]["fpr"], r["roc"]["tpr"], where="post", label=lab)
        for key, marker in (("tpr_fpr_1e-3", "o"), ("tpr_fpr_1e-4", "s")):
            rate = float(key.rsplit("_", 1)[1])
            if r.get(key) is not None and np.isfinite(r[key]):
                ax.plot([rate], [r[key]], marker, color="k", ms=4)
    ax.set_xscale("log")
    ax.set_xlim(1e-5, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("false-positive rate")
    ax.set_ylabel("true-positive rate (completeness)")
    ax.axvline(1e-3, color="0.8", lw=0.8)
    ax.axvline(1e-4, color="0.8", lw=0.8, ls="--")
    if title:
        ax.set_title(title, fontsize=9)
    if any(labels):
        ax.legend(fontsize=8, loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(os.fspath(path))
