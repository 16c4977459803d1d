"""Several models used as one: checking that they fit each other and a store, and combining their scores.

Shared by evaluation (:func:`lensdask.model.evaluate`, several models and their ensemble on one
labelled store) and search (:mod:`lensdask.search`: an ensemble scores every tile, a cheap prefilter
may pass only the top of each tile to it). Pure checks and numpy: no Dask, no files written.
"""

from __future__ import annotations

import os
import pathlib

import numpy as np
import pandas as pd

from ..checks import fraction
from ..errors import LensdaskError
from .checkpoint import check_compatible, read_card, resolve_model_dir, verify_weights

COMBINE = ("mean", "rank")
"""Ways to combine the lens probabilities of several models: their mean, or the mean of their ranks."""


def model_column(model_id: str) -> str:
    """Column name of one model's lens probability in an ensemble, e.g. ``"score_vit_lens_tiny_492ce68824d0"``.

    Every character other than an ASCII letter or digit becomes ``_`` (runs collapse into one), so the
    name is a safe column in Parquet, FITS, CSV and pandas attribute access.
    """
    import re

    safe = re.sub(r"[^A-Za-z0-9]+", "_", str(model_id)).strip("_")
    return "score_" + (safe or "model")


def combine_scores(scores: np.ndarray, method: str = "mean") -> np.ndarray:
    """Combine per-model lens probabilities, (n, n_models), into one score per row, (n,).

    Parameters
    ----------
    scores : numpy.ndarray
        Lens probabilities, one column per model; NaN where a row was not scored.
    method : {"mean", "rank"}
        ``mean``: the mean probability. ``rank``: the mean over models of each row's
        rank among the scored rows, as a fraction in (0, 1] (ties share their mean rank),
        so models whose probabilities are calibrated differently weigh the same. The
        ranks are taken among the rows given (in a search: the rows of one tile that
        the models scored).

    Returns
    -------
    numpy.ndarray
        float32; NaN for rows no model scored.
    """
    from ..errors import LensdaskError

    if method not in COMBINE:
        raise LensdaskError(f"unknown ensemble combination {method!r}; use one of {', '.join(COMBINE)}")
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim == 1:
        scores = scores[:, None]
    ok = np.isfinite(scores).all(axis=1)
    out = np.full(scores.shape[0], np.nan)
    if not ok.any():
        return out.astype(np.float32)
    if method == "mean" or scores.shape[1] == 1:
        out[ok] = scores[ok].mean(axis=1)
    else:
        ranks = pd.DataFrame(scores[ok]).rank(axis=0, method="average").to_numpy()
        out[ok] = ranks.mean(axis=1) / ok.sum()
    return out.astype(np.float32)


def parse_prefilter(spec) -> tuple[str, float]:
    """``"MODEL:FRACTION"`` (or a ``(model, fraction)`` pair) as ``(model, fraction)``, fraction in [0, 1].

    The model is a checkpoint directory, or ``default`` for the shipped model; the last ``:`` splits.
    """
    from ..checks import prefilter_spec

    if isinstance(spec, (tuple, list)):
        model, frac = spec
        return (str(model) if model is not None else "default"), fraction(frac, "prefilter fraction")
    return prefilter_spec(spec)


def check_models(
    store, models, prefilter=None, *, adapt_survey: bool = False
) -> tuple[list[tuple[pathlib.Path, dict]], tuple | None]:
    """Check the models of a search against each other and the store, and their weights once each.

    Parameters
    ----------
    store : lensdask.store.CutoutStore
    models : path, list of paths, or None
        The main model, or an ensemble; None: the shipped default model.
    prefilter : str or (path, float), optional
        ``MODEL:FRACTION`` of a cascade's first stage (:func:`parse_prefilter`).
    adapt_survey : bool
        Models trained on another survey than the store's are to be adapted to it
        (:func:`~lensdask.model.pretrained.adapt_to_survey`): neither refused nor compared with the
        store's or each other's bands, stamp and pixel scale (adapted, they all take the store's).

    Returns
    -------
    (list of (pathlib.Path, dict), (pathlib.Path, dict, float) or None)
        Model directories with their cards, and the prefilter's with its keep fraction.

    Raises
    ------
    ModelSurveyError
        A model trained on another survey than the store's, without ``adapt_survey``.
    ModelMismatchError
        Models whose bands, band order, stamp or pixel scale differ from each other or the store.
    CheckpointError
        A card or weights file missing or not matching its sha256.
    LensdaskError
        The same model given twice (or as both prefilter and main model).
    """
    import math

    from ..errors import ModelMismatchError

    if models is None or isinstance(models, (str, os.PathLike)):
        models = [models]
    models = list(models) or [None]
    out = []
    for m in models:
        d = resolve_model_dir(m, store.survey)
        out.append((d, read_card(d)))
    pre = None
    if prefilter is not None:
        pm, frac = parse_prefilter(prefilter)
        d = resolve_model_dir(pm, store.survey)
        pre = (d, read_card(d), frac)
    everyone = out + ([pre[:2]] if pre else [])
    ref_dir, ref = everyone[0]
    for d, card in everyone[1:] if not adapt_survey else ():
        for key, same in (
            ("bands", list(card["bands"]) == list(ref["bands"])),
            ("stamp", int(card["stamp"]) == int(ref["stamp"])),
            ("pixel_scale", math.isclose(float(card["pixel_scale"]), float(ref["pixel_scale"]), rel_tol=1e-4)),
        ):
            if not same:
                raise ModelMismatchError(
                    f"models of one search must share bands, stamp and pixel scale: {ref.get('model_id')} ({ref_dir}) "
                    f"has {key} {ref[key]!r}, {card.get('model_id')} ({d}) has {card[key]!r}"
                )
    seen: dict = {}
    for d, card in everyone:
        sha = card.get("sha256") or str(d)
        if sha in seen:
            raise LensdaskError(f"the same model is given twice: {seen[sha]} and {d} ({card.get('model_id')})")
        seen[sha] = d
        check_compatible(card, store, adapt_survey=adapt_survey)
    cols = [model_column(c["model_id"]) for _, c in out]
    if len(set(cols)) != len(cols):
        raise LensdaskError(f"two models of the ensemble map to one column name: {cols}")
    for d, card in everyone:
        verify_weights(d, card)  # once, before any tile task (each would fail on its own)
    return out, pre
