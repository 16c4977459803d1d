"""Score cutouts with a loaded model: batches of pixels in, a table of lens probabilities out.

Pure compute: no Dask, no file opening. :mod:`lensdask.search.run` wires it to tiles.

The work per batch is split in two so that a reader thread can do the first half
while the model runs the second: :func:`prepare_batch` / :func:`prepare_inputs` (non-finite
check and normalisation, numpy, releases the GIL) and :func:`lensdask.model.infer.forward_proba`
(the model). :func:`score_models` scores a tile's stream with one model, an ensemble
(:func:`lensdask.model.ensemble.combine_scores`, one ``score_<id>`` column each:
:func:`lensdask.model.ensemble.model_column`), or a prefilter
that passes the top fraction of the tile to them (a cascade).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from ..model.ensemble import combine_scores, model_column
from ..model.infer import forward_proba, input_size
from ..normalise import ModelInputs, model_inputs, normalisation_spec, spec_key

if TYPE_CHECKING:
    import torch

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
    inputs = model_inputs(images, [card.get("normalisation")])
    return inputs.inputs[0], inputs.bad, table


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
    """Score every row of a stream of ``(images, table)`` batches with one model.

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
        sky box ``ra_min, ra_max, dec_min, dec_max`` (degrees) of the rows; see
        :func:`score_models` for the rest.
    """

    def items():
        for item in batches:
            x, bad, table = item if prepared else prepare_batch(item[0], item[1], card)
            yield [x], bad, table, None

    return score_models(
        items(),
        [(model, dict(card, model_id=model_id))],
        device=device,
        batch_size=batch_size,
        floor=floor,
        precision=precision,
    )


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
        "ra_min": float((c + d.min()) % 360.0),
        "ra_max": float((c + d.max()) % 360.0),
        "dec_min": float(dec.min()),
        "dec_max": float(dec.max()),
    }


def held_specs(cards: list[dict]) -> list[dict]:
    """The distinct normalisations of ``cards`` (the main models of a cascade), in first-seen order:
    the views of a row that the cascade holds for its second stage (:func:`held_view`)."""
    specs: dict[str, dict] = {}
    for card in cards:
        specs.setdefault(spec_key(card.get("normalisation")), normalisation_spec(card.get("normalisation")))
    return list(specs.values())


def held_view(cards: list[dict], card: dict) -> int:
    """Which view of the held rows (:func:`held_specs` of ``cards``) is ``card``'s input."""
    return [spec_key(s) for s in held_specs(cards)].index(spec_key(card.get("normalisation")))


def batch_inputs(inputs: ModelInputs, table: pd.DataFrame, n_first: int):
    """The ``(xs, bad, table, held)`` batch :func:`score_models` takes, from the inputs of the first
    stage's ``n_first`` normalisations followed by those of :func:`held_specs` (if any):
    ``held`` is (n_finite, n_views, bands, stamp, stamp), or None."""
    xs, rest = inputs.inputs[:n_first], inputs.inputs[n_first:]
    held = None
    if rest:  # one view (the usual case): a view of its array, no copy
        held = rest[0][:, None] if len(rest) == 1 else np.stack(rest, axis=1)
    return xs, inputs.bad, table, held


def prepare_inputs(images: np.ndarray, table: pd.DataFrame, cards: list[dict], hold: list[dict] | None = None):
    """Normalised finite rows of one batch for several models: ``(xs, bad, table, held)``.

    ``xs[i]`` is the input of the model of ``cards[i]`` (models sharing a normalisation share
    one array); ``bad`` the (n,) mask of rows with non-finite pixels; ``held`` the inputs of the
    models of ``hold`` (a cascade's main models, which score some rows in its second stage), see
    :func:`batch_inputs`, else None. Like :func:`prepare_batch`, nothing returned refers to
    ``images``: the caller may reuse it. A store's rows are made ready by
    :meth:`lensdask.store.CutoutStore.iter_normalised` instead (straight from the codes of a
    quantised store); this is the same for pixels in memory.
    """
    specs = [card.get("normalisation") for card in cards] + (held_specs(hold) if hold else [])
    return batch_inputs(model_inputs(images, specs), table, len(cards))


class CascadeTopK:
    """The rows of a tile a cascade passes on, kept while the tile streams by.

    Holds the model inputs (:func:`batch_inputs`' ``held``) of every row so far that is among the ``k`` best prefilter
    scores seen (ties: the earlier row), or scores at or above ``threshold``; a row pushed
    out of the top ``k`` can never return, so its pixels are dropped. Memory: about
    ``k`` stamps plus those above the threshold.
    """

    def __init__(self, k: int, threshold: float):
        self.k, self.threshold = int(k), float(threshold)
        self.idx = np.zeros(0, np.int64)
        self.score = np.zeros(0, np.float64)
        self.images: list[np.ndarray] = []
        self._img = None

    def add(self, idx: np.ndarray, score: np.ndarray, images: np.ndarray) -> None:
        if not len(idx):
            return
        self.idx = np.concatenate([self.idx, idx])
        self.score = np.concatenate([self.score, score])
        self.images.append(images)
        if len(self.idx) > 2 * self.k + 256:
            self._prune()

    def _prune(self) -> None:
        imgs = np.concatenate(self.images) if len(self.images) > 1 else self.images[0]
        order = np.lexsort((self.idx, -self.score))  # best first, earlier row first on ties
        keep = np.zeros(len(self.idx), bool)
        keep[order[: self.k]] = True
        keep |= self.score >= self.threshold
        self.idx, self.score, self.images = self.idx[keep], self.score[keep], [imgs[keep]]

    def rows(self) -> tuple[np.ndarray, np.ndarray | None]:
        """``(idx, images)`` of the rows that pass, in tile order; ``images`` is None when no row was added."""
        if not self.images:
            return self.idx, None
        self._prune()
        order = np.argsort(self.idx)
        return self.idx[order], self.images[0][order]


def score_models(
    batches: Iterable,
    models: list[tuple],
    *,
    device="cpu",
    batch_size: int = 256,
    floor: float = 0.0,
    precision: str = "auto",
    combine: str = "mean",
    prefilter: tuple | None = None,
    keep_fraction: float = 1.0,
    prefilter_threshold: float = 0.5,
    rows_total: int | None = None,
    audit_ids=None,
) -> tuple[pd.DataFrame, dict]:
    """Score a stream of batches with one model, an ensemble, or a prefilter then the ensemble.

    Parameters
    ----------
    batches : iterable
        ``(xs, bad, table, held)`` tuples of :func:`prepare_inputs` (or :func:`batch_inputs`),
        for the cards of the first stage: the prefilter alone when there is one (with ``hold``
        the main models' cards, so that the rows it passes reach them normalised as they
        would be alone), otherwise every model of ``models`` in order. ``table`` has ``tile, object_id,
        ra, dec`` (degrees), optionally ``flags``.
    models : list of (torch.nn.Module, dict)
        The main models and their cards (:func:`lensdask.model.load_checkpoint`).
    device : str or torch.device
    batch_size : int
        Cutouts per forward pass.
    floor : float
        Rows whose score (for a row stopped by the prefilter: its prefilter score) is below
        this are counted but not kept. Rows with non-finite pixels are always kept, flagged
        ``nan_pixels`` with a NaN score.
    precision : str
        See :data:`lensdask.model.infer.PRECISIONS`.
    combine : {"mean", "rank"}
        How an ensemble's probabilities make ``score`` (:func:`lensdask.model.ensemble.combine_scores`).
    prefilter : (torch.nn.Module, dict), optional
        A cheap model that scores every row first. Only the ``ceil(keep_fraction *
        rows_total)`` rows of the tile it ranks highest, plus every row it scores at or
        above ``prefilter_threshold``, reach ``models``; the others keep a NaN ``score``.
    keep_fraction : float
        Share of the tile's rows passed on by rank (0-1).
    prefilter_threshold : float
        Prefilter lens probability that passes a row whatever its rank.
    rows_total : int, optional
        Rows in the tile (the top fraction is of these); default: counted as they come, which
        needs the whole tile in memory, so give it.
    audit_ids : array of int, optional
        Object ids (in a mock survey: the injected lenses) whose ``score`` the main models
        give even when the prefilter stops them, in the column ``audit_score`` (NaN for all
        other rows). Never part of ``score``: it says what the cascade lost.

    Returns
    -------
    table : pandas.DataFrame
        ``tile, object_id, ra, dec, score``, for several models one ``score_<model id>`` per
        model (:func:`~lensdask.model.ensemble.model_column`), ``p_<class>...`` (the mean over models, when they
        share their classes), ``nan_pixels, flags, model``; with a prefilter also
        ``prefilter_score`` and ``stage`` (1: stopped by the prefilter, 2: scored by the
        main models; 0 for rows with non-finite pixels), and with ``audit_ids``
        ``audited`` (the row is one of them; always kept) and ``audit_score``.
    stats : dict
        ``rows``, ``scored`` (rows with finite pixels), ``nan_rows``, ``masked_rows``,
        ``edge_rows``, ``kept``, ``histogram`` (of ``score``, in :data:`HISTOGRAM_BINS`),
        ``max_score``, the sky box ``ra_min, ra_max, dec_min, dec_max`` (degrees),
        ``models`` (ids), ``combine``, ``main_scored`` (rows the main models scored); with a
        prefilter ``prefilter`` (``model_id``, ``keep_fraction``, ``threshold``, ``top_k``,
        ``scored``, ``passed``, ``passed_by_threshold_only``); with ``audit_ids``
        ``audit`` (``rows``: audited rows in the tile, ``dropped``: those the prefilter stopped).
    """
    import torch

    fwd = _Forward(torch.device(device), batch_size, precision)
    ens = _ensemble(models)
    audit_ids = None if audit_ids is None else np.asarray(audit_ids, dtype=np.int64)
    # without the tile's row count nothing can be dropped before the end: hold every row
    k = int(np.ceil(float(keep_fraction) * rows_total)) if rows_total is not None else 2**62
    top = CascadeTopK(k, prefilter_threshold)  # used only with a prefilter
    pf = None if prefilter is None else _Prefilter(prefilter[0], prefilter[1], top, audit_ids)
    stream = _first_stage(batches, ens, fwd, pf)
    if pf is None:
        scored = _single_stage(stream, ens)
    else:
        if rows_total is None:
            pf.top.k = int(np.ceil(float(keep_fraction) * len(stream.bad)))
        scored = _second_stage(stream, ens, fwd, pf, keep_fraction, combine)
    score = scored.score(combine)
    out = _output_table(stream, ens, scored, score, floor, audit_ids)
    extra = {"models": ens.ids, "combine": combine, **scored.extra, "main_scored": int(scored.main.sum())}
    return out, _tile_stats(stream, score, len(out), extra)


# -- the steps of score_models ------------------------------------------------------------
@dataclass(frozen=True)
class _Forward:
    """How the forward passes run.

    Attributes
    ----------
    device : torch.device
    batch_size : int
        Cutouts per forward pass.
    precision : str
        See :data:`lensdask.model.infer.PRECISIONS`.
    """

    device: torch.device
    batch_size: int
    precision: str

    def proba(self, model, card: dict, x: np.ndarray) -> np.ndarray:
        """Class probabilities (n, n_classes), in the card's class order, of the model of ``card`` on inputs ``x``."""
        return forward_proba(
            model, x, batch_size=self.batch_size, device=self.device, size=input_size(card), precision=self.precision
        )

    def held(self, model, card: dict, cards: list[dict], held: np.ndarray) -> np.ndarray:
        """:meth:`proba` of held rows (:func:`batch_inputs`) for the model of ``card``, one of ``cards``."""
        return self.proba(model, card, np.ascontiguousarray(held[:, held_view(cards, card)]))


@dataclass(frozen=True)
class _Ensemble:
    """The main models of a score.

    Attributes
    ----------
    models : list of (torch.nn.Module, dict)
        The models and their cards.
    ids : list of str
        Their model ids.
    shared_classes : bool
        Whether every model has the same classes, in the same order.
    """

    models: list
    ids: list
    shared_classes: bool

    @property
    def cards(self) -> list[dict]:
        return [c for _, c in self.models]

    @property
    def classes(self) -> list:
        """The shared classes, whose mean probabilities are output; none when the models' differ."""
        return list(self.models[0][1]["classes"]) if self.shared_classes else []


def _ensemble(models: list[tuple]) -> _Ensemble:
    """The main models as an :class:`_Ensemble`.

    Raises
    ------
    LensdaskError
        The same model is given twice.
    """
    cards = [c for _, c in models]
    ids = [c["model_id"] for c in cards]
    if len(set(ids)) != len(ids):
        from ..errors import LensdaskError

        raise LensdaskError(f"the same model is given twice: {ids}")
    return _Ensemble(models, ids, all(list(c["classes"]) == list(cards[0]["classes"]) for c in cards))


@dataclass
class _Prefilter:
    """The first stage of a cascade, fed the tile's batches one after another.

    Attributes
    ----------
    model, card
        The prefilter and its card.
    top : CascadeTopK
        The rows it passes on, with their held inputs.
    audit_ids : numpy.ndarray or None
        Object ids the main models score even when it stops them.
    audited : list of (numpy.ndarray, numpy.ndarray)
        Row numbers in the tile and held inputs of the finite rows among ``audit_ids`` so far.
    """

    model: object
    card: dict
    top: CascadeTopK
    audit_ids: np.ndarray | None
    audited: list = field(default_factory=list)

    def score_batch(self, fwd: _Forward, x: np.ndarray, bad: np.ndarray, table, held, offset: int) -> np.ndarray:
        """The prefilter's lens probability of each row of a batch (NaN where ``bad``), whose first row is
        row ``offset`` of the tile; the rows it may pass and the audited ones are kept with their ``held`` inputs.
        """
        p = np.full(len(bad), np.nan, dtype=np.float32)
        p[~bad] = fwd.proba(self.model, self.card, x)[:, int(self.card["lens_class"])]
        good = np.flatnonzero(~bad)
        self.top.add(offset + good, p[good], held)  # held: the finite rows, this batch's own arrays
        if self.audit_ids is not None:
            hit = np.flatnonzero(np.isin(table["object_id"].to_numpy()[good], self.audit_ids))  # among the finite rows
            if hit.size:
                self.audited.append((offset + good[hit], held[hit]))
        return p


@dataclass(frozen=True)
class _Stream:
    """A tile's stream after the first stage.

    Attributes
    ----------
    table : pandas.DataFrame
        Every row: ``tile, object_id, ra, dec`` (degrees), optionally ``flags``.
    bad : numpy.ndarray
        (n,) rows with non-finite pixels.
    per_model : list of list of numpy.ndarray
        Without a prefilter: each main model's lens probabilities, batch by batch.
    probs : list of numpy.ndarray
        Without a prefilter and with shared classes: the mean class probabilities, batch by batch.
    pre : list of numpy.ndarray
        With a prefilter: its lens probabilities, batch by batch.
    """

    table: pd.DataFrame
    bad: np.ndarray
    per_model: list
    probs: list
    pre: list

    @functools.cached_property
    def flags(self) -> np.ndarray:
        """(n,) int32 row flags (0 when the table has none)."""
        if "flags" in self.table.columns:
            return self.table["flags"].to_numpy().astype(np.int32)
        return np.zeros(len(self.bad), np.int32)


def _first_stage(batches: Iterable, ens: _Ensemble, fwd: _Forward, pf: _Prefilter | None) -> _Stream:
    """Run the stream of batches through the first stage: every main model, or the prefilter ``pf``."""
    tables, bads, probs_acc, pre_scores = [], [], [], []
    per_model: list[list[np.ndarray]] = [[] for _ in ens.models]
    offset = 0
    for xs, bad, table, held in batches:
        tables.append(table.reset_index(drop=True))
        bads.append(bad)
        if pf is None:
            lens, mean_probs = _main_batch(ens, fwd, xs, bad)
            for acc, p in zip(per_model, lens):
                acc.append(p)
            if mean_probs is not None:
                probs_acc.append(mean_probs)
        else:
            pre_scores.append(pf.score_batch(fwd, xs[0], bad, table, held, offset))
        offset += len(bad)
    bad = np.concatenate(bads) if bads else np.zeros(0, bool)
    table = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame(columns=["tile", "object_id", "ra", "dec"])
    return _Stream(table, bad, per_model, probs_acc, pre_scores)


def _main_batch(ens: _Ensemble, fwd: _Forward, xs: list, bad: np.ndarray) -> tuple[list, np.ndarray | None]:
    """Each main model's lens probabilities (n,) of one batch (``xs[i]``: model i's inputs of its finite rows),
    and the models' mean class probabilities (n, n_classes) when they share their classes, else None."""
    n = len(bad)
    lens, mean_probs = [], None
    for (model, card), x in zip(ens.models, xs):
        probs = np.full((n, len(card["classes"])), np.nan, dtype=np.float32)
        probs[~bad] = fwd.proba(model, card, x)
        lens.append(probs[:, int(card["lens_class"])])
        if ens.shared_classes:
            mean_probs = probs if mean_probs is None else mean_probs + probs
    if ens.shared_classes and mean_probs is not None:
        return lens, mean_probs / len(ens.models)
    return lens, None


@dataclass(frozen=True)
class _Scored:
    """The scores of a tile's rows.

    Attributes
    ----------
    scores : numpy.ndarray
        (n, n_models) float32 lens probability of each main model; NaN where it did not score the row.
    probs : numpy.ndarray
        (n, n_classes) float32 mean class probabilities of the main models (:attr:`_Ensemble.classes`).
    main : numpy.ndarray
        (n,) rows the main models scored.
    pre, stage : numpy.ndarray or None
        With a prefilter: its lens probability (n,), and each row's stage (0 non-finite pixels,
        1 stopped by the prefilter, 2 scored by the main models).
    audit_score : numpy.ndarray or None
        With audited rows: the main models' score of those the prefilter stopped (n,), NaN elsewhere.
    extra : dict
        The statistics ``prefilter`` and ``audit``, when they apply.
    """

    scores: np.ndarray
    probs: np.ndarray
    main: np.ndarray
    pre: np.ndarray | None = None
    stage: np.ndarray | None = None
    audit_score: np.ndarray | None = None
    extra: dict = field(default_factory=dict)

    def score(self, combine: str) -> np.ndarray:
        """The rows' ``score``: the main models' scores combined (:func:`combine_scores`); NaN where they
        scored none."""
        n, n_models = self.scores.shape
        score = np.full(n, np.nan, dtype=np.float32)
        if n:
            main = self.main
            score[main] = combine_scores(self.scores[main], combine) if n_models > 1 else self.scores[main, 0]
        return score


def _single_stage(s: _Stream, ens: _Ensemble) -> _Scored:
    """The scores without a prefilter: every finite row by every main model."""
    scores = np.stack([np.concatenate(p) if p else np.zeros(0, np.float32) for p in s.per_model], axis=1)
    probs = np.concatenate(s.probs) if s.probs else np.zeros((0, len(ens.classes)), np.float32)
    return _Scored(scores, probs, ~s.bad)


def _second_stage(
    s: _Stream, ens: _Ensemble, fwd: _Forward, pf: _Prefilter, keep_fraction: float, combine: str
) -> _Scored:
    """The scores of a cascade: the main models score the rows the prefilter passes (``pf.top``), and the
    audited rows it stops."""
    bad, n = s.bad, len(s.bad)
    pre = np.concatenate(s.pre) if s.pre else np.zeros(0, np.float32)
    idx, images = pf.top.rows()
    scores = np.full((n, len(ens.models)), np.nan, dtype=np.float32)
    probs = np.full((n, len(ens.classes)), 0.0 if ens.shared_classes else np.nan, dtype=np.float32)
    for m, (model, card) in enumerate(ens.models):
        pr = fwd.held(model, card, ens.cards, images) if images is not None and len(idx) else None
        if pr is not None:
            scores[idx, m] = pr[:, int(card["lens_class"])]
            if ens.shared_classes:
                probs[idx] += pr / len(ens.models)
    main = np.zeros(n, bool)
    main[idx] = True  # images is None only when idx is empty
    if ens.shared_classes:
        probs[~main] = np.nan
    stage = np.where(bad, 0, np.where(main, 2, 1)).astype(np.int8)
    by_rank = np.zeros(n, bool)
    if len(idx):
        order = np.lexsort((np.arange(n)[~bad], -pre[~bad].astype(np.float64)))
        by_rank[np.flatnonzero(~bad)[order[: pf.top.k]]] = True
    extra: dict = {
        "prefilter": {
            "model_id": pf.card["model_id"],
            "keep_fraction": float(keep_fraction),
            "threshold": pf.top.threshold,
            "top_k": int(pf.top.k),
            "scored": int((~bad).sum()),
            "passed": int(main.sum()),
            "passed_by_threshold_only": int((main & ~by_rank).sum()),
        }
    }
    audit_score = None
    if pf.audit_ids is not None:
        audit_score, extra["audit"] = _audit_scores(pf, ens, fwd, scores, main, combine)
    return _Scored(scores, probs, main, pre, stage, audit_score, extra)


def _audit_scores(
    pf: _Prefilter, ens: _Ensemble, fwd: _Forward, scores: np.ndarray, main: np.ndarray, combine: str
) -> tuple[np.ndarray, dict]:
    """What the main models would score the audited rows the prefilter stopped.

    Returns
    -------
    audit_score : numpy.ndarray
        (n,) float32; NaN but for the audited rows that ``main`` (the rows the main models scored, whose
        ``scores`` a rank combination ranks a dropped row among) leaves out.
    stats : dict
        ``rows``: audited rows in the tile, ``dropped``: those the prefilter stopped.
    """
    audit_score = np.full(len(main), np.nan, dtype=np.float32)
    rows = np.concatenate([a[0] for a in pf.audited]) if pf.audited else np.zeros(0, np.int64)
    imgs = np.concatenate([a[1] for a in pf.audited]) if pf.audited else None
    dropped = ~main[rows] if len(rows) else np.zeros(0, bool)
    if dropped.any() and imgs is not None:
        per = np.stack(
            [fwd.held(model, card, ens.cards, imgs[dropped])[:, int(card["lens_class"])] for model, card in ens.models],
            axis=1,
        )
        # ranks need the rows the main models saw: a dropped row is ranked among them
        if combine == "rank" and len(ens.models) > 1:
            audit_score[rows[dropped]] = [combine_scores(np.vstack([scores[main], r[None]]), "rank")[-1] for r in per]
        else:
            audit_score[rows[dropped]] = combine_scores(per, combine)
    return audit_score, {"rows": int(len(rows)), "dropped": int(dropped.sum())}


def _output_table(
    s: _Stream, ens: _Ensemble, r: _Scored, score: np.ndarray, floor: float, audit_ids: np.ndarray | None
) -> pd.DataFrame:
    """The kept rows (see :func:`score_models`' ``table``): those with non-finite pixels, those whose last
    score reaches ``floor`` (lens probability), and audited ones."""
    table, bad, n = s.table, s.bad, len(s.bad)
    last = score if r.pre is None else np.where(r.main, score, r.pre)
    keep = bad | (last >= floor)
    audited = None
    if r.audit_score is not None and audit_ids is not None:  # an audited row is kept whatever its scores
        audited = np.isin(table["object_id"].to_numpy(np.int64), audit_ids) if n else np.zeros(0, bool)
        keep |= audited
    out = pd.DataFrame(
        {
            "tile": table["tile"].to_numpy()[keep] if n else np.zeros(0, object),
            "object_id": table["object_id"].to_numpy()[keep],
            "ra": table["ra"].to_numpy()[keep],
            "dec": table["dec"].to_numpy()[keep],
            "score": score[keep],
        }
    )
    if len(ens.models) > 1:
        for m, i in enumerate(ens.ids):
            out[model_column(i)] = r.scores[keep, m]
    for k, name in enumerate(ens.classes):
        out[class_column(name)] = r.probs[keep, k]
    if r.pre is not None and r.stage is not None:
        out["prefilter_score"] = r.pre[keep]
        out["stage"] = r.stage[keep]
    if r.audit_score is not None and audited is not None:
        out["audited"] = audited[keep]
        out["audit_score"] = r.audit_score[keep]
    out["nan_pixels"] = bad[keep]
    out["flags"] = s.flags[keep]
    out["tile"] = out["tile"].astype(str)
    out["model"] = ens.ids[0] if len(ens.ids) == 1 else "+".join(ens.ids)
    return out


def _tile_stats(s: _Stream, score: np.ndarray, kept: int, extra: dict) -> dict:
    """:func:`score_models`' ``stats`` of the tile: row counts, ``kept`` rows, the score histogram and
    maximum, the sky box (degrees), then ``extra``."""
    from ..store import FLAG_EDGE, FLAG_MASKED

    bad, flags, n = s.bad, s.flags, len(s.bad)
    finite = score[np.isfinite(score)]
    ra = s.table["ra"].to_numpy(dtype=float) if n else np.zeros(0)
    dec = s.table["dec"].to_numpy(dtype=float) if n else np.zeros(0)
    return {
        "rows": n,
        "scored": int((~bad).sum()),
        "nan_rows": int(bad.sum()),
        "masked_rows": int(((flags & FLAG_MASKED) != 0).sum()),
        "edge_rows": int(((flags & FLAG_EDGE) != 0).sum()),
        "kept": kept,
        "histogram": np.histogram(finite, bins=HISTOGRAM_BINS)[0].tolist(),
        "max_score": float(finite.max()) if finite.size else None,
        **sky_box(ra, dec),
        **extra,
    }
