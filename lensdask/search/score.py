"""Score cutouts with a loaded model: batches of pixels in, a table of lens probabilities out.

Pure compute: no Dask, no file opening. :mod:`lensdask.search.run` wires it to tiles.

The work per batch is split in two so that a reader thread can do the first half
while the model runs the second: :func:`prepare_batch` (non-finite check and
normalisation, numpy, releases the GIL) and :func:`lensdask.model.infer.forward_proba` (the model).
"""

from __future__ import annotations

from typing import Iterable

import numpy as np
import pandas as pd

from ..model.infer import forward_proba, input_size, nonfinite_rows
from ..model.normalise import normalise

HISTOGRAM_BINS = np.linspace(0.0, 1.0, 21)
"""Edges of the per-tile score histogram (lens probability, 20 bins)."""

OUTPUT_COLUMNS = ["tile", "object_id", "ra", "dec", "score"]


def class_column(name: str) -> str:
    """Column name of a class's probability, e.g. ``"p_non_lens"``."""
    return "p_" + "".join(ch if ch.isalnum() else "_" for ch in name)


def prepare_batch(images: np.ndarray, table: pd.DataFrame, card: dict):
    """Normalised finite rows of one batch: ``(x, bad, table)``.

    ``x`` is (n_good, bands, stamp, stamp) float32, ``bad`` the (n,) mask of rows
    with non-finite pixels (never shown to the model). ``x`` is a new array: the
    caller may overwrite ``images`` with the next read as soon as this returns.
    """
    from ..errors import ModelMismatchError

    images = np.asarray(images)
    shape = (len(card["bands"]), int(card["stamp"]), int(card["stamp"]))
    if images.ndim != 4 or images.shape[1:] != shape:
        raise ModelMismatchError(
            f"images have shape {images.shape}; model {card.get('model_id', '?')} expects (n, {shape[0]}, "
            f"{shape[1]}, {shape[2]}) for bands {card['bands']}"
        )
    bad = nonfinite_rows(images)
    good = images if not bad.any() else images[~bad]
    return normalise(good, card.get("normalisation")), bad, table


def score_batches(
    batches: Iterable[tuple[np.ndarray, pd.DataFrame]],
    model,
    card: dict,
    *,
    model_id: str,
    device="cpu",
    batch_size: int = 256,
    floor: float = 0.0,
    precision: str = "auto",
    prepared: bool = False,
) -> tuple[pd.DataFrame, dict]:
    """Score every row of a stream of ``(images, table)`` batches.

    Parameters
    ----------
    batches : iterable
        ``(images, table)``: stamps (n, n_bands, stamp, stamp) and their rows (``tile``,
        ``object_id``, ``ra``, ``dec`` in degrees, optionally ``flags``); or, with
        ``prepared=True``, the ``(x, bad, table)`` triples of :func:`prepare_batch`.
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
    precision : str
        See :data:`lensdask.model.infer.PRECISIONS`.

    Returns
    -------
    table : pandas.DataFrame
        ``tile, object_id, ra, dec, score, p_<class>..., nan_pixels, flags, model``.
    stats : dict
        ``rows``, ``scored``, ``nan_rows``, ``masked_rows``, ``edge_rows``, ``kept``,
        ``histogram`` (counts in :data:`HISTOGRAM_BINS`), ``max_score``, and the
        sky box ``ra_min, ra_max, dec_min, dec_max`` (degrees) of the rows.
    """
    import torch

    from ..store import FLAG_EDGE, FLAG_MASKED

    device = torch.device(device)
    classes = list(card["classes"])
    lens = int(card["lens_class"])
    frames = []
    hist = np.zeros(len(HISTOGRAM_BINS) - 1, dtype=np.int64)
    rows = nan_rows = masked = edge = 0
    max_score = -np.inf
    ras, decs = [], []
    for item in batches:
        x, bad, table = item if prepared else prepare_batch(item[0], item[1], card)
        probs = np.full((len(bad), len(classes)), np.nan, dtype=np.float32)
        probs[~bad] = forward_proba(
            model, x, batch_size=batch_size, device=device, size=input_size(card), precision=precision
        )
        score = probs[:, lens]
        rows += len(score)
        nan_rows += int(bad.sum())
        flags = table["flags"].to_numpy() if "flags" in table.columns else np.zeros(len(score), np.int32)
        masked += int(((flags & FLAG_MASKED) != 0).sum())
        edge += int(((flags & FLAG_EDGE) != 0).sum())
        good = score[~bad]
        hist += np.histogram(good, bins=HISTOGRAM_BINS)[0]
        if good.size:
            max_score = max(max_score, float(good.max()))
        ras.append(table["ra"].to_numpy())
        decs.append(table["dec"].to_numpy())
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
        out["flags"] = flags[keep].astype(np.int32)
        frames.append(out)
    columns = OUTPUT_COLUMNS + [class_column(c) for c in classes] + ["nan_pixels", "flags"]
    result = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=columns)
    result["tile"] = result["tile"].astype(str)
    result["model"] = model_id
    ra = np.concatenate(ras) if ras else np.zeros(0)
    dec = np.concatenate(decs) if decs else np.zeros(0)
    stats = {
        "rows": rows,
        "scored": rows - nan_rows,
        "nan_rows": nan_rows,
        "masked_rows": masked,
        "edge_rows": edge,
        "kept": len(result),
        "histogram": hist.tolist(),
        "max_score": None if max_score == -np.inf else max_score,
        **sky_box(ra, dec),
    }
    return result, stats


def sky_box(ra: np.ndarray, dec: np.ndarray) -> dict:
    """``ra_min, ra_max, dec_min, dec_max`` (degrees) of finite positions; RA may wrap (ra_min > ra_max)."""
    ok = np.isfinite(ra) & np.isfinite(dec)
    if not ok.any():
        return {"ra_min": None, "ra_max": None, "dec_min": None, "dec_max": None}
    ra, dec = np.mod(ra[ok], 360.0), dec[ok]
    # unwrap around the circular mean so a tile across RA 0 gets a small box
    c = np.degrees(np.arctan2(np.sin(np.radians(ra)).mean(), np.cos(np.radians(ra)).mean()))
    d = (ra - c + 180.0) % 360.0 - 180.0
    return {
        "ra_min": float((c + d.min()) % 360.0), "ra_max": float((c + d.max()) % 360.0),
        "dec_min": float(dec.min()), "dec_max": float(dec.max()),
    }
