"""Evaluate a checkpoint on a labelled cutout store."""

from __future__ import annotations

import json
import os
import pathlib

import numpy as np
import pandas as pd

from .. import config
from ..errors import LensdaskError
from ..store import open_store
from .checkpoint import CARD, _jsonable, check_compatible, load_checkpoint, resolve_model_dir
from .infer import predict_proba, resolve_batch_size, resolve_device
from .metrics import roc_curve
from .report import classifier_report, plot_roc, selection_params


def evaluate(
    model: str | os.PathLike | None = None,
    data: str | os.PathLike = ...,
    *,
    json_path: str | os.PathLike | None = None,
    batch_size: int | None = None,
    device: str | None = None,
    roc_path: str | os.PathLike | None = None,
    threshold: float | None = None,
    record: bool = False,
    progress: bool = True,
) -> dict:
    """Score every labelled row of a store and summarise lens-versus-rest performance.

    Parameters
    ----------
    model : str, path or None
        Checkpoint directory; ``None`` uses the default model.
    data : str or path
        Labelled cutout store (path or URL).
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

    Raises
    ------
    CheckpointError, ModelMismatchError, StoreNotFoundError
        From loading the model, comparing it with the store, or opening the store.
    SplitError
        The store was made from real galaxies the model trained on (any rotation or flip).
    LensdaskError
        The store has no labelled rows.
    """
    from tqdm.auto import tqdm

    if data is ...:
        raise TypeError("evaluate() needs data=, the labelled store to score")
    threshold = float(config.get("search.threshold", threshold))
    dev = resolve_device(device)
    batch_size = resolve_batch_size(config.get("search.batch_size", batch_size), dev)
    model_dir = resolve_model_dir(model)
    net, card = load_checkpoint(model_dir, device=dev)
    store = open_store(data)
    check_compatible(card, store)
    _check_real_galaxies_unseen(card, store)
    lens_col = int(card["lens_class"])
    keep_params = selection_params(store.params)

    labels, probs, params = [], [], []
    n_unlabelled = 0
    for t in tqdm(store.written_tiles(), desc="evaluate", unit="tile", disable=not progress):
        table = store.read_table(t)
        if len(table) == 0:
            continue
        lab = table["label"].to_numpy()
        known = lab >= 0
        n_unlabelled += int((~known).sum())
        if not known.any():
            continue
        images = store.read_images(t)[known]
        probs.append(predict_proba(net, card, images, batch_size=batch_size, device=dev))
        labels.append(lab[known].astype(np.int64))
        params.append(table.loc[known, keep_params].reset_index(drop=True))
    if not labels:
        raise LensdaskError(f"store {store.url!r} has no labelled rows (every label is -1); nothing to evaluate")
    y = np.concatenate(labels)
    p = np.concatenate(probs)
    result = classifier_report(
        y, p, truth_classes=list(store.classes), model_classes=list(card["classes"]), lens_class=lens_col,
        params=pd.concat(params, ignore_index=True), threshold=threshold,
    )
    result.update(
        n_unlabelled=n_unlabelled,
        model_id=card.get("model_id"),
        model=str(model_dir),
        data=str(store.url),
    )
    if roc_path is not None:
        is_lens = y == store.classes.index("lens")
        fpr, tpr, _ = roc_curve(is_lens, p[:, lens_col])
        roc_path = pathlib.Path(os.fspath(roc_path))
        roc_path.parent.mkdir(parents=True, exist_ok=True)
        title = f"{card.get('model_id', card['arch'])} on {pathlib.PurePath(str(store.url)).name}"
        plot_roc(result, roc_path, fpr_tpr=[(fpr, tpr)], title=title,
                 labels=[f"AUROC {result['auroc']:.4f}"])
        result["roc_png"] = str(roc_path)
    if json_path is not None:
        path = pathlib.Path(os.fspath(json_path))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(_jsonable(result), indent=2, allow_nan=False) + "\n")
    if record:
        _record(model_dir, result)
    return result


def _check_real_galaxies_unseen(card: dict, store) -> None:
    """Refuse a store whose real galaxies (its provenance ``real_galaxies``) the model trained on."""
    from ..simulate.galaxies import check_disjoint

    real = (store.provenance or {}).get("real_galaxies") or {}
    fps = real.get("fingerprints") or []
    if fps:
        rows = real.get("rows") or list(range(len(fps)))
        names = [f"{real.get('source', '?')}[{r}]" for r in rows] if len(rows) == len(fps) else None
        check_disjoint(card, fps, names)


def _record(model_dir: pathlib.Path, result: dict) -> None:
    """Append an evaluation to the model card, written atomically (weights untouched)."""
    import datetime

    path = model_dir / CARD
    card = json.loads(path.read_text())
    entry = {k: v for k, v in result.items() if k not in ("model", "model_id")}
    entry["evaluated"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    card.setdefault("evaluations", []).append(entry)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(_jsonable(card), indent=2, allow_nan=False) + "\n")
    os.replace(tmp, path)
