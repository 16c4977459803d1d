"""Evaluate a checkpoint on a labelled cutout store."""

from __future__ import annotations

import json
import os
import pathlib
from dataclasses import dataclass

import numpy as np
import pandas as pd

from .. import config
from ..deprecation import renamed_keywords
from ..errors import LensdaskError
from ..store import CutoutStore, open_store
from .checkpoint import (
    CARD,
    check_compatible,
    check_survey,
    jsonable,
    load_checkpoint,
    refuse_model_as_store,
    resolve_model_dir,
)
from .infer import forward_proba, input_size, resolve_batch_size, resolve_device
from .metrics import roc_curve
from .pretrained import adapt_to_survey
from .report import classifier_report, plot_roc, selection_params


@renamed_keywords(data="store")
def evaluate(
    store: str | os.PathLike,
    model: str | os.PathLike | list | None = None,
    *,
    json_path: str | os.PathLike | None = None,
    batch_size: int | None = None,
    device: str | None = None,
    roc_path: str | os.PathLike | None = None,
    threshold: float | None = None,
    record: bool = False,
    progress: bool = True,
    combine: str | None = None,
    adapt_survey: bool = False,
) -> dict:
    """Score every labelled row of a store and summarise lens-versus-rest performance.

    Parameters
    ----------
    store : str or path
        Labelled cutout store (path or URL). (``data=`` is its deprecated old name.)
    model : str, path, list of them, or None
        Checkpoint directory; ``None`` uses the default model. Several: each model and their
        ensemble are reported (the store is read once); they must share bands, stamp and
        pixel scale.
    json_path : str or path, optional
        Also write the result there as JSON.
    batch_size : int or "auto", optional
        Cutouts per forward pass (config ``search.batch_size``).
    device : str, optional
        ``"auto"``, ``"cpu"``, ``"cuda"`` (config ``search.device``).
    roc_path : str or path, optional
        Write the ROC curve (log false-positive rate) to this PNG.
    threshold : float, optional
        Operating lens probability for completeness, purity and the selection
        function (config ``search.threshold``).
    record : bool
        Also append the result to the model card's ``evaluations`` list (the
        weights and their hash are untouched).
    progress : bool
        Show a tqdm progress bar over tiles.
    combine : {"mean", "rank"}, optional
        With several models, the ensemble's score: the mean lens probability, or the mean of
        the models' ranks over all scored rows as a fraction in (0, 1] (config
        ``search.ensemble.combine``). ``record`` writes each model's own result to its card.
    adapt_survey : bool
        A model trained on another survey than the store's is adapted to the store's bands and pixel
        scale (:func:`~lensdask.model.pretrained.adapt_to_survey`) instead of refused.

    Returns
    -------
    dict
        :func:`~lensdask.model.report.classifier_report` keys (``auroc``,
        ``tpr0``, ``tpr10``, ``tpr_fpr_1e-3``, ``tpr_fpr_1e-4``, ``n_pos``,
        ``n_neg``, ``n_nan``, ``threshold``, ``threshold_fpr_1e-3``,
        ``completeness``, ``purity``, ``confusion``, ``roc``,
        ``selection_function`` over ``theta_E`` and ``arc_snr_<band>`` when the
        store has them, ``false_positives_by_class``: for each truth class other
        than ``lens``, ``n``, ``n_nan``, ``above_threshold``, ``fpr``,
        ``fpr_at_fpr_1e-3_threshold`` and ``median_score``), plus ``n_unlabelled`` (rows with label -1, skipped),
        ``model_id``, ``model`` (directory), ``data`` and ``roc_png``. The score
        is the probability of the card's lens class; truth is the store's class
        named ``lens``, so any labelled store works, real cutouts included.
        With several models: the same keys for the ensemble (``model_id`` their ids joined by
        ``+``; its classes are the models' when they share them and ``combine`` is ``mean``,
        else ``non-lens``/``lens``), plus ``combine``, ``model_ids`` and ``models``: one
        single-model result per model, in order.

    Raises
    ------
    CheckpointError, ModelMismatchError, StoreNotFoundError
        From loading the model, comparing it with the store, or opening the store.
    ModelSurveyError
        A model trained on another survey than the store's, without ``adapt_survey``.
    SplitError
        The store was made from real galaxies the model trained on (any rotation or flip).
    LensdaskError
        The store has no labelled rows.
    TypeError
        A model where the store belongs (the order before: ``evaluate(model, data)``).
    """
    refuse_model_as_store(store, "evaluate(store, model)")
    threshold = float(config.get("search.threshold", threshold))
    dev = resolve_device(device)
    batch_size = resolve_batch_size(config.get("search.batch_size", batch_size), dev)
    cs = open_store(store)
    m = _load_models(cs, model, combine, dev, adapt_survey)
    scores = _score_store(cs, m, batch_size, dev, progress)
    results = [
        _model_result(cs, card, d, p, scores, threshold) for (_, card), d, p in zip(m.nets, m.dirs, scores.probs)
    ]
    out = _ensemble_outcome(cs, m, results, scores, threshold) if m.many else _single_outcome(cs, m, results)
    result = out.result
    if roc_path is not None:
        result["roc_png"] = str(_draw_roc(cs, out, scores, roc_path))
    if json_path is not None:
        _write_result(result, json_path)
    if record:
        for (r, _, _), d in zip(results, m.dirs):
            record_evaluation(d, r)
    return result


@dataclass(frozen=True)
class _Models:
    """The loaded models of an evaluation.

    Attributes
    ----------
    dirs : list of pathlib.Path
        Their checkpoint directories, in the order given.
    nets : list of (torch.nn.Module, dict)
        Each model on the device, with its card.
    combine : str or None
        How an ensemble's scores combine (:data:`~lensdask.model.ensemble.COMBINE`); as given for one model.
    """

    dirs: list
    nets: list
    combine: str | None

    @property
    def many(self) -> bool:
        """Whether there are several models (an ensemble)."""
        return len(self.nets) > 1


def _load_models(cs: CutoutStore, model, combine: str | None, dev, adapt_survey: bool = False) -> _Models:
    """Load :func:`evaluate`'s ``model`` (one or several) on ``dev`` and check each against the store ``cs``.

    A model of another survey than the store's is refused, or adapted to it with ``adapt_survey``.

    Raises
    ------
    LensdaskError
        An unknown ``combine``, or the same model twice.
    CheckpointError, ModelMismatchError, SplitError
        As :func:`evaluate` says.
    """
    models = (list(model) if isinstance(model, (list, tuple)) else [model]) or [None]
    if len(models) > 1:
        from .ensemble import COMBINE, check_models  # bands, stamp, pixel scale shared; no model twice

        combine = str(config.get("search.ensemble.combine", combine))
        if combine not in COMBINE:
            raise LensdaskError(f"unknown ensemble combination {combine!r}; use one of {', '.join(COMBINE)}")
        dirs = [d for d, _ in check_models(cs, models, adapt_survey=adapt_survey)[0]]
    else:
        dirs = [resolve_model_dir(models[0], cs.survey)]  # as search takes it: the shipped model of its survey
    nets = []
    for d in dirs:
        net, card = load_checkpoint(d, device=dev)
        if check_survey(card, cs.survey, f"store {cs.url!r}", adapt_survey=adapt_survey):
            net, card = adapt_to_survey(net, card, cs)
            net.to(dev)
        check_compatible(card, cs)
        _check_real_galaxies_unseen(card, cs)
        nets.append((net, card))
    return _Models(dirs, nets, combine)


@dataclass(frozen=True)
class _Scores:
    """Every labelled row of a store, scored by each model.

    Attributes
    ----------
    labels : numpy.ndarray
        (n,) int64 truth class (index into the store's classes).
    params : pandas.DataFrame
        The rows' selection-function parameters (:func:`~lensdask.model.report.selection_params`).
    probs : list of numpy.ndarray
        Per model, (n, n_classes) float32 class probabilities; NaN for rows with a non-finite pixel.
    n_unlabelled : int
        Rows with label -1, skipped.
    """

    labels: np.ndarray
    params: pd.DataFrame
    probs: list
    n_unlabelled: int


def _score_store(cs: CutoutStore, m: _Models, batch_size: int, dev, progress: bool) -> _Scores:
    """Score every labelled row of ``cs`` with each model, reading each tile once.

    Raises
    ------
    LensdaskError
        The store has no labelled rows.
    """
    from tqdm.auto import tqdm

    keep_params = selection_params(cs.params)
    labels: list[np.ndarray] = []
    probs: list[list[np.ndarray]] = [[] for _ in m.nets]
    tables: list[pd.DataFrame] = []
    n_unlabelled = 0
    for t in tqdm(cs.written_tiles(), desc="evaluate", unit="tile", disable=not progress):
        table = cs.read_table(t)
        if len(table) == 0:
            continue
        lab = table["label"].to_numpy()
        known = lab >= 0
        n_unlabelled += int((~known).sum())
        if not known.any():
            continue
        # read once, normalised as training and search normalise (a quantised store's rows straight from
        # its codes), scored by every model; rows with a non-finite pixel get NaN and never reach a model
        inputs = cs.read_normalised(t, specs=[card.get("normalisation") for _, card in m.nets])
        scored = known & ~inputs.bad
        labelled = known[~inputs.bad]  # which of the finite rows (those in inputs) are labelled
        for k, (net, card) in enumerate(m.nets):
            p = np.full((len(table), len(card["classes"])), np.nan, dtype=np.float32)
            x = inputs.inputs[k] if labelled.all() else inputs.inputs[k][labelled]
            p[scored] = forward_proba(net, x, batch_size=batch_size, device=dev, size=input_size(card))
            probs[k].append(p[known])
        labels.append(lab[known].astype(np.int64))
        tables.append(table.loc[known, keep_params].reset_index(drop=True))
    if not labels:
        raise LensdaskError(f"store {cs.url!r} has no labelled rows (every label is -1); nothing to evaluate")
    return _Scores(
        np.concatenate(labels), pd.concat(tables, ignore_index=True), [np.concatenate(pk) for pk in probs], n_unlabelled
    )


def _model_result(
    cs: CutoutStore, card: dict, model_dir, probs: np.ndarray, scores: _Scores, threshold: float
) -> tuple[dict, np.ndarray, np.ndarray]:
    """One model's result: ``(report, lens probabilities (n,), class probabilities (n, n_classes))``.

    The report is :func:`~lensdask.model.report.classifier_report` at ``threshold`` (lens probability)
    with the keys :func:`evaluate` adds.
    """
    lens_col = int(card["lens_class"])
    r = classifier_report(
        scores.labels,
        probs,
        truth_classes=list(cs.classes),
        model_classes=list(card["classes"]),
        lens_class=lens_col,
        params=scores.params,
        threshold=threshold,
    )
    r.update(n_unlabelled=scores.n_unlabelled, model_id=card.get("model_id"), model=str(model_dir), data=str(cs.url))
    return r, probs[:, lens_col], probs


@dataclass(frozen=True)
class _Outcome:
    """What :func:`evaluate` returns and draws.

    Attributes
    ----------
    result : dict
        The returned result.
    reports : list of dict
        The reports drawn in the ROC figure.
    curves : list of (numpy.ndarray, str)
        Each curve's lens scores (n,) and legend label.
    title : str
        The ROC figure's title.
    """

    result: dict
    reports: list
    curves: list
    title: str


def _single_outcome(cs: CutoutStore, m: _Models, results: list) -> _Outcome:
    """The outcome of one model: its own result (``results``' only :func:`_model_result`)."""
    result, lens_scores, _ = results[0]
    card = m.nets[0][1]
    title = f"{card.get('model_id', card['arch'])} on {pathlib.PurePath(str(cs.url)).name}"
    return _Outcome(result, [result], [(lens_scores, f"AUROC {result['auroc']:.4f}")], title)


def _ensemble_outcome(cs: CutoutStore, m: _Models, results: list, scores: _Scores, threshold: float) -> _Outcome:
    """The outcome of several models: the ensemble's report, with each model's (``results``, of
    :func:`_model_result`) under ``models``.

    The ensemble's classes are the models' when they share them and ``combine`` is ``mean``
    (mean class probabilities), else ``non-lens``/``lens`` (the combined lens score).
    """
    from .ensemble import combine_scores

    cards = [c for _, c in m.nets]
    ens = combine_scores(np.stack([s for _, s, _ in results], axis=1), str(m.combine)).astype(np.float64)
    if m.combine == "mean" and all(list(c["classes"]) == list(cards[0]["classes"]) for c in cards):
        classes, lens_col = list(cards[0]["classes"]), int(cards[0]["lens_class"])
        p = np.mean([pm for _, _, pm in results], axis=0)
    else:  # a rank average is no probability per class: lens against the rest
        classes, lens_col = ["non-lens", "lens"], 1
        p = np.stack([1.0 - ens, ens], axis=1)
    result = classifier_report(
        scores.labels,
        p,
        truth_classes=list(cs.classes),
        model_classes=classes,
        lens_class=lens_col,
        params=scores.params,
        threshold=threshold,
    )
    ids = [c.get("model_id") for c in cards]
    result.update(
        n_unlabelled=scores.n_unlabelled,
        model_id="+".join(ids),
        model=[str(d) for d in m.dirs],
        data=str(cs.url),
        combine=m.combine,
        model_ids=ids,
        models=[r for r, _, _ in results],
    )
    curves = [(s, f"{r['model_id']} AUROC {r['auroc']:.4f}") for r, s, _ in results]
    curves.append((ens, f"ensemble ({m.combine}) AUROC {result['auroc']:.4f}"))
    title = f"{len(ids)} models and their ensemble on {pathlib.PurePath(str(cs.url)).name}"
    return _Outcome(result, [r for r, _, _ in results] + [result], curves, title)


def _draw_roc(cs: CutoutStore, out: _Outcome, scores: _Scores, roc_path) -> pathlib.Path:
    """Draw ``out``'s ROC curves (log false-positive rate; truth: the store's class ``lens``) to the PNG
    ``roc_path``, its folder made; returns its path."""
    is_lens = scores.labels == cs.classes.index("lens")
    fpr_tpr = [roc_curve(is_lens, s)[:2] for s, _ in out.curves]
    path = pathlib.Path(os.fspath(roc_path))
    path.parent.mkdir(parents=True, exist_ok=True)
    plot_roc(out.reports, path, fpr_tpr=fpr_tpr, title=out.title, labels=[lab for _, lab in out.curves])
    return path


def _write_result(result: dict, path) -> None:
    """Write ``result`` as JSON (strict: no NaN) to ``path``, its folder made; :func:`evaluate` and
    :func:`lensdask.model.inject`."""
    path = pathlib.Path(os.fspath(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(jsonable(result), indent=2, allow_nan=False) + "\n")


def _check_real_galaxies_unseen(card: dict, store) -> None:
    """Refuse a store whose real galaxies (its provenance ``real_galaxies``) the model trained on."""
    from ..simulate.galaxies import check_disjoint

    real = (store.provenance or {}).get("real_galaxies") or {}
    fps = real.get("fingerprints") or []
    if fps:
        rows = real.get("rows") or list(range(len(fps)))
        names = [f"{real.get('source', '?')}[{r}]" for r in rows] if len(rows) == len(fps) else None
        check_disjoint(card, fps, names)


def record_evaluation(model_dir: pathlib.Path, result: dict) -> None:
    """Append an evaluation ``result`` to the card of ``model_dir`` with the time it was made, written
    atomically (weights untouched); :func:`evaluate` and :func:`lensdask.model.inject` with ``record=True``."""
    import datetime

    path = model_dir / CARD
    card = json.loads(path.read_text())
    entry = {k: v for k, v in result.items() if k not in ("model", "model_id")}
    entry["evaluated"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    card.setdefault("evaluations", []).append(entry)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(jsonable(card), indent=2, allow_nan=False) + "\n")
    os.replace(tmp, path)
