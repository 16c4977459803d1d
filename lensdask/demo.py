"""The embedded default job: mock survey → search with the shipped model → scored against the truth,
and the same model's false-positive rate on real DES galaxies it never trained on."""

from __future__ import annotations

import json
import os
import pathlib

import numpy as np
import pandas as pd

from . import config
from .model.checkpoint import CARD, resolve_model_dir
from .model.metrics import binary_metrics
from .search import search
from .storeadmin import store_info
from .survey import mock_survey


def score_against_truth(scores: pd.DataFrame, truth: pd.DataFrame, threshold: float, top_n: int | None = None) -> dict:
    """Compare search scores with a mock survey's truth table.

    Parameters
    ----------
    scores : pandas.DataFrame
        ``object_id, score`` for every searched row (floor 0).
    truth : pandas.DataFrame
        ``object_id, is_lens`` for every row of the survey.
    threshold : float
        Lens probability that makes a candidate.
    top_n : int, optional
        Size of the top list to count injected lenses in; None: the number of injected lenses
        (so ``found_in_top_n / top_n`` is the purity of a list as long as the lenses planted).

    Returns
    -------
    dict
        ``auroc, tpr0, tpr10, tpr_fpr_1e-3``, ``injected``, ``found_in_top_n``,
        ``completeness``, ``purity`` (at ``threshold``), ``candidates``.
    """
    merged = truth[["object_id", "is_lens"]].merge(scores[["object_id", "score"]], on="object_id", how="left")
    if merged["score"].isna().any():
        missing = int(merged["score"].isna().sum())
        raise RuntimeError(f"{missing} objects of the truth table have no score: the search lost rows")
    is_lens = merged["is_lens"].to_numpy(bool)
    score = merged["score"].to_numpy(float)
    metrics = binary_metrics(is_lens, score)
    cand = score >= threshold
    injected = int(is_lens.sum())
    top_n = injected if top_n is None else int(top_n)
    order = np.argsort(-score, kind="stable")[:top_n]
    return {
        **metrics,
        "threshold": threshold,
        "injected": injected,
        "top_n": int(top_n),
        "found_in_top_n": int(is_lens[order].sum()),
        "candidates": int(cand.sum()),
        "completeness": float((cand & is_lens).sum() / injected) if injected else float("nan"),
        "purity": float((cand & is_lens).sum() / cand.sum()) if cand.any() else float("nan"),
    }


REAL_KEYS = (
    "kind",
    "cutouts",
    "rows",
    "n_unpainted",
    "n_painted",
    "threshold",
    "fpr",
    "fpr_interval",
    "auroc",
    "completeness",
    "model_id",
)
"""Keys of an ``inject`` result the demo summary keeps."""


def fit_against_truth(fits: pd.DataFrame, truth: pd.DataFrame) -> dict:
    """How the lens models changed the purity of the fitted candidates (the network's best), against the truth.

    Parameters
    ----------
    fits : pandas.DataFrame
        ``object_id`` and the fit columns of every fitted candidate (``lensdask.fit.read_fits``).
    truth : pandas.DataFrame
        ``object_id, is_lens`` of every row of the survey.

    Returns
    -------
    dict
        ``fitted``, ``lenses`` among them, ``purity_before`` (lenses / fitted), ``kept`` (the fit keeps:
        :func:`lensdask.fit.candidate.favours_lens`), ``lenses_kept``, ``purity_after`` (lenses kept / kept),
        ``non_lenses_rejected``, ``converged`` and ``median_seconds`` (per candidate).
    """
    from .fit.candidate import favours_lens

    m = fits.merge(truth[["object_id", "is_lens"]], on="object_id", how="left")
    is_lens = m["is_lens"].fillna(False).to_numpy(bool)
    kept = favours_lens(m)
    n = len(m)
    return {
        "fitted": n,
        "lenses": int(is_lens.sum()),
        "purity_before": float(is_lens.mean()) if n else float("nan"),
        "kept": int(kept.sum()),
        "lenses_kept": int((kept & is_lens).sum()),
        "purity_after": float((kept & is_lens).sum() / kept.sum()) if kept.any() else float("nan"),
        "non_lenses_rejected": int((~kept & ~is_lens).sum()),
        "converged": int(m["fit_converged"].sum()) if n else 0,
        "median_seconds": float(m["fit_seconds"].median()) if n else float("nan"),
    }


def real_galaxy_check(real_galaxies: str | None, galaxies: str, threshold: float, progress: bool = True) -> dict | None:
    """The default model on real DES galaxies it never trained on: ``inject`` now, or the card's record.

    Parameters
    ----------
    real_galaxies : str or None
        Folder of real DES cutout cubes (config ``demo.real_galaxies``); when it is missing, the
        last ``inject`` result recorded in the default model's card is reported instead, marked
        ``"recorded": true``.
    galaxies : str
        Which of them (config ``demo.galaxies``, ``heldout``: never used in training).
    threshold : float
        Candidate threshold.

    Returns
    -------
    dict or None
        :data:`REAL_KEYS` of the injection-recovery result (None when neither is available).
    """
    from .model.inject import inject

    if real_galaxies and os.path.isdir(real_galaxies):
        result = inject(real_galaxies, None, galaxies=galaxies, threshold=threshold, progress=progress)
        out = {k: result[k] for k in REAL_KEYS if k in result}
        out["recorded"] = False
        return out
    card = json.loads((resolve_model_dir(None) / CARD).read_text())
    runs = [e for e in card.get("evaluations", []) if e.get("kind") == "inject"]
    if not runs:
        return None
    out = {k: runs[-1][k] for k in REAL_KEYS if k in runs[-1]}
    out["recorded"] = True
    return out


def demo(
    out: str | os.PathLike = "demo-output",
    *,
    tiles: int | None = None,
    per_tile: int | None = None,
    lens_fraction: float | None = None,
    seed: int | None = None,
    top_n: int | None = None,
    threshold: float | None = None,
    real_galaxies: str | os.PathLike | None = None,
    fit_top: int | None = None,
    client=None,
    progress: bool = True,
) -> dict:
    """Run the whole pipeline on a small mock survey and score the default model against its truth.

    Parameters
    ----------
    out : str or path
        Directory for ``des.zarr``, ``des.truth.parquet``, ``run/`` and ``summary.json``.
    tiles, per_tile : int, optional
        Mock survey size (config ``demo.tiles``, ``demo.per_tile``).
    lens_fraction : float, optional
        Fraction of injected lenses (config ``demo.lens_fraction``).
    seed : int, optional
        Survey seed (config ``demo.seed``).
    top_n : int, optional
        Count injected lenses among the best ``top_n`` (config ``demo.top_n``; null: as many as
        were injected).
    threshold : float, optional
        Candidate threshold (config ``search.threshold``).
    real_galaxies : str or path, optional
        Real DES galaxy cubes for the real false-positive rate (config ``demo.real_galaxies``;
        relative to the working directory); see :func:`real_galaxy_check`.
    fit_top : int, optional
        Fit lens models to this many of the best candidates and report the purity before and after
        (config ``demo.fit_top``; 0: no fit); see :func:`fit_against_truth`.
    client : distributed.Client, optional

    Returns
    -------
    dict
        The summary also written to ``out/summary.json``.
    """
    out = pathlib.Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tiles = int(config.get("demo.tiles", tiles))
    per_tile = int(config.get("demo.per_tile", per_tile))
    lens_fraction = float(config.get("demo.lens_fraction", lens_fraction))
    seed = int(config.get("demo.seed", seed))
    top_n = config.get("demo.top_n", top_n)
    top_n = None if top_n is None else int(top_n)
    threshold = float(config.get("search.threshold", threshold))

    store, truth_path = mock_survey(
        out / "des.zarr", tiles, per_tile, lens_fraction, seed, client=client, overwrite=True, progress=progress
    )
    result = search(out / "des.zarr", out=out / "run", client=client, threshold=threshold, floor=0.0, progress=progress)
    truth = pd.read_parquet(truth_path)
    summary = {
        "survey": {"tiles": tiles, "per_tile": per_tile, "lens_fraction": lens_fraction, "seed": seed},
        "model_id": result.summary["model_id"],
        "search_seconds": result.summary["seconds"],
        "store": _store_size(out / "des.zarr"),
        **score_against_truth(result.scores(), truth, threshold, top_n),
    }
    truth_class = truth["truth_class"]
    scores = truth[["object_id", "truth_class"]].merge(result.scores()[["object_id", "score"]], on="object_id")
    summary["lookalikes"] = int((~truth_class.isin(["lens", "non-lens"])).sum())
    summary["lookalikes_above_threshold"] = int(
        (~scores["truth_class"].isin(["lens", "non-lens"]) & (scores["score"] >= threshold)).sum()
    )
    fit_top = int(config.get("demo.fit_top", fit_top) or 0)
    if fit_top > 0:
        from .fit import fit

        fitted = fit(out / "run", top=fit_top, client=client, overwrite=True, progress=progress)
        summary["fit"] = fit_against_truth(fitted.fits, truth)
    real = config.get("demo.real_galaxies", None if real_galaxies is None else os.fspath(real_galaxies))
    summary["real_galaxies"] = real_galaxy_check(real, config.get("demo.galaxies"), threshold, progress)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def _store_size(url) -> dict:
    """How the mock survey's pixels are stored and what a cutout costs on disk (bytes)."""
    info = store_info(url)
    enc = info["encoding"]
    return {
        "bytes_per_cutout": info["bytes_per_cutout"],
        "pixels": enc.get("pixels", "float"),
        "step": enc.get("step"),
        "rms_error": enc.get("rms_error"),
        "codec": enc.get("codec"),
    }


def format_summary(summary: dict) -> str:
    """The demo summary as a few human-readable lines."""
    s = summary
    return "\n".join(
        [
            f"Mock survey: {s['survey']['tiles']} tiles x {s['survey']['per_tile']} cutouts, "
            f"{s['injected']} injected lenses ({s['survey']['lens_fraction']:.1%})",
            _store_line(s.get("store")),
            f"Model: {s['model_id']}  (search took {s['search_seconds']:.1f} s)",
            f"AUROC {s['auroc']:.4f}   TPR0 {s['tpr0']:.3f}   TPR10 {s['tpr10']:.3f}",
            f"Top {s['top_n']}: {s['found_in_top_n']} of {s['injected']} injected lenses",
            f"At threshold {s['threshold']}: {s['candidates']} candidates, "
            f"completeness {s['completeness']:.3f}, purity {s['purity']:.3f}",
            f"Look-alikes (rings, spirals, mergers, companions, edge-on discs, groups): "
            f"{s.get('lookalikes_above_threshold', 0)} of {s.get('lookalikes', 0)} above the threshold",
            *([_fit_line(s["fit"])] if s.get("fit") else []),
            _real_line(s.get("real_galaxies")),
        ]
    )


def _fit_line(f: dict) -> str:
    return (
        f"Lens models of the best {f['fitted']}: {f['lenses']} lenses among them (purity {f['purity_before']:.2f}); "
        f"the fit keeps {f['kept']} (purity {f['purity_after']:.2f}): {f['lenses_kept']} of {f['lenses']} lenses "
        f"kept, {f['non_lenses_rejected']} of {f['fitted'] - f['lenses']} non-lenses rejected; "
        f"{f['converged']} converged, median {f['median_seconds']:.1f} s a candidate"
    )


def _store_line(st: dict | None) -> str:
    if not st or st.get("bytes_per_cutout") is None:
        return "Store: size unknown"
    how = (
        f"quantised on {st['step']:g} sigma steps ({st['rms_error']:.3f} sigma rms), {st['codec']}"
        if st["pixels"] == "quantised"
        else f"lossless, {st['codec']}"
    )
    return f"Store: {st['bytes_per_cutout'] / 1024:.2f} KiB per cutout on disk ({how})"


def _real_line(r: dict | None) -> str:
    if not r:
        return "Real DES galaxies: no real cutouts found and none recorded in the model card"
    lo, hi = r["fpr_interval"]
    where = "recorded in the model card" if r.get("recorded") else f"{r['cutouts']}, rows {r['rows']}"
    return (
        f"Real DES galaxies never trained on ({where}): {r['fpr']:.1%} of {r['n_unpainted']} plain stamps "
        f"score >= {r['threshold']} (95% CI {lo:.1%}-{hi:.1%}); painted vs plain AUROC {r['auroc']:.3f}"
    )
