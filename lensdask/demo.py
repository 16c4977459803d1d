"""The embedded default job: mock survey → search with the shipped model → scored against the truth."""

from __future__ import annotations

import json
import os
import pathlib

import numpy as np
import pandas as pd

from . import config
from .model.metrics import binary_metrics
from .search import search
from .survey import mock_survey


def score_against_truth(scores: pd.DataFrame, truth: pd.DataFrame, threshold: float, top_n: int) -> dict:
    """Compare search scores with a mock survey's truth table.

    Parameters
    ----------
    scores : pandas.DataFrame
        ``object_id, score`` for every searched row (floor 0).
    truth : pandas.DataFrame
        ``object_id, is_lens`` for every row of the survey.
    threshold : float
        Lens probability that makes a candidate.
    top_n : int
        Size of the top list to count injected lenses in.

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
    order = np.argsort(-score, kind="stable")[:top_n]
    injected = int(is_lens.sum())
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


def demo(
    out: str | os.PathLike = "demo-output",
    *,
    tiles: int | None = None,
    per_tile: int | None = None,
    lens_fraction: float | None = None,
    seed: int | None = None,
    top_n: int | None = None,
    threshold: float | None = None,
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
        Count injected lenses among the best ``top_n`` (config ``demo.top_n``).
    threshold : float, optional
        Candidate threshold (config ``search.threshold``).
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
    top_n = int(config.get("demo.top_n", top_n))
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
        **score_against_truth(result.scores(), truth, threshold, top_n),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def format_summary(summary: dict) -> str:
    """The demo summary as a few human-readable lines."""
    s = summary
    return "\n".join(
        [
            f"Mock survey: {s['survey']['tiles']} tiles x {s['survey']['per_tile']} cutouts, "
            f"{s['injected']} injected lenses ({s['survey']['lens_fraction']:.1%})",
            f"Model: {s['model_id']}  (search took {s['search_seconds']:.1f} s)",
            f"AUROC {s['auroc']:.4f}   TPR0 {s['tpr0']:.3f}   TPR10 {s['tpr10']:.3f}",
            f"Top {s['top_n']}: {s['found_in_top_n']} of {s['injected']} injected lenses",
            f"At threshold {s['threshold']}: {s['candidates']} candidates, "
            f"completeness {s['completeness']:.3f}, purity {s['purity']:.3f}",
        ]
    )
