"""Score cutouts with a loaded model: batches of pixels in, a table of lens probabilities out.

Pure compute: no Dask, no file opening. :mod:`lensdask.search.run` wires it to tiles.
"""

from __future__ import annotations

from typing import Iterable

import numpy as np
import pandas as pd

from ..model.infer import predict_proba

HISTOGRAM_BINS = np.linspace(0.0, 1.0, 21)
"""Edges of the per-tile score histogram (lens probability, 20 bins)."""

OUTPUT_COLUMNS = ["tile", "object_id", "ra", "dec", "score"]


def class_column(name: str) -> str:
    """Column name of a class's probability, e.g. ``"p_non_lens"``."""
    return "p_" + "".join(ch if ch.isalnum() else "_" for ch in name)


def score_batches(
    batches: Iterable[tuple[np.ndarray, pd.DataFrame]],
    model,
    card: dict,
    *,
    model_id: str,
    device="cpu",
    batch_size: int = 256,
    floor: float = 0.0,
) -> tuple[pd.DataFrame, dict]:
    """Score every row of a stream of ``(images, table)`` batches.

    Parameters
    ----------
    batches : iterable of (numpy.ndarray, pandas.DataFrame)
        Stamps (n, n_bands, stamp, stamp) and their rows (``tile``, ``object_id``,
        ``ra``, ``dec`` in degrees).
    model, card
        A loaded checkpoint (:func:`lensdask.model.load_checkpoint`).
    model_id : str
        Written to every output row.
    device : str or torch.device
    batch_size : int
        Cutouts per forward pass.
    floor : float
        Rows scoring below this lens probability are counted but not kept.
        Rows with non-finite pixels are always kept, flagged ``nan_pixels`` with
        a NaN score.

    Returns
    -------
    table : pandas.DataFrame
        ``tile, object_id, ra, dec, score, p_<class>..., nan_pixels, model``.
    stats : dict
        ``rows``, ``scored``, ``nan_rows``, ``kept``, ``histogram`` (counts in
        :data:`HISTOGRAM_BINS`), ``max_score``.
    """
    classes = list(card["classes"])
    lens = int(card["lens_class"])
    frames = []
    hist = np.zeros(len(HISTOGRAM_BINS) - 1, dtype=np.int64)
    rows = nan_rows = 0
    max_score = -np.inf
    for images, table in batches:
        probs = predict_proba(model, card, images, batch_size=batch_size, device=device)
        score = probs[:, lens]
        bad = ~np.isfinite(score)
        rows += len(score)
        nan_rows += int(bad.sum())
        good = score[~bad]
        hist += np.histogram(good, bins=HISTOGRAM_BINS)[0]
        if good.size:
            max_score = max(max_score, float(good.max()))
        keep = bad | (score >= floor)
        out = pd.DataFrame(
            {
                "tile": table["tile"].to_numpy()[keep],
                "object_id": table["object_id"].to_numpy()[keep],
                "ra": table["ra"].to_numpy()[keep],
                "dec": table["dec"].to_numpy()[keep],
                "score": score[keep],
            }
        )
        for k, name in enumerate(classes):
            out[class_column(name)] = probs[keep, k]
        out["nan_pixels"] = bad[keep]
        frames.append(out)
    columns = OUTPUT_COLUMNS + [class_column(c) for c in classes] + ["nan_pixels"]
    result = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=columns)
    result["tile"] = result["tile"].astype(str)
    result["model"] = model_id
    stats = {
        "rows": rows,
        "scored": rows - nan_rows,
        "nan_rows": nan_rows,
        "kept": len(result),
        "histogram": hist.tolist(),
        "max_score": None if max_score == -np.inf else max_score,
    }
    return result, stats
