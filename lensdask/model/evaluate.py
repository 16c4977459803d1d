"""Evaluate a checkpoint on a labelled cutout store."""

from __future__ import annotations

import json
import os
import pathlib

import numpy as np

from .. import config
from ..store import open_store
from .checkpoint import check_compatible, load_checkpoint, resolve_model_dir
from .infer import predict_proba, resolve_device
from .metrics import binary_metrics


def evaluate(
    model: str | os.PathLike | None = None,
    data: str | os.PathLike = ...,
    *,
    json_path: str | os.PathLike | None = None,
    batch_size: int | None = None,
    device: str | None = None,
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
    batch_size : int, optional
        Cutouts per forward pass (config ``search.batch_size``).
    device : str, optional
        ``"auto"``, ``"cpu"``, ``"cuda"`` (config ``search.device``).
    progress : bool
        Show a tqdm progress bar over tiles.

    Returns
    -------
    dict
        :func:`binary_metrics` keys (``auroc``, ``tpr0``, ``tpr10``,
        ``tpr_fpr_1e-3``, ``n_pos``, ``n_neg``, ``n_nan``), plus ``n_unlabelled``
        (rows with label -1, skipped), ``model_id``, ``model`` (directory) and
        ``data``. The score is the probability of the card's lens class; truth is
        the store's lens class.

    Raises
    ------
    CheckpointError, ModelMismatchError, StoreNotFoundError
        From loading the model, comparing it with the store, or opening the store.
    """
    from tqdm.auto import tqdm

    if data is ...:
        raise TypeError("evaluate() needs data=, the labelled store to score")
    batch_size = int(config.get("search.batch_size", batch_size))
    dev = resolve_device(device)
    model_dir = resolve_model_dir(model)
    net, card = load_checkpoint(model_dir, device=dev)
    store = open_store(data)
    check_compatible(card, store)
    lens_col = int(card["lens_class"])
    truth_class = store.lens_class

    labels, scores = [], []
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
        probs = predict_proba(net, card, images, batch_size=batch_size, device=dev)
        labels.append(lab[known] == truth_class)
        scores.append(probs[:, lens_col])
    y = np.concatenate(labels) if labels else np.zeros(0, bool)
    s = np.concatenate(scores) if scores else np.zeros(0, np.float32)
    result = binary_metrics(y, s)
    result.update(
        n_unlabelled=n_unlabelled,
        model_id=card.get("model_id"),
        model=str(model_dir),
        data=str(store.url),
    )
    if json_path is not None:
        from .checkpoint import _jsonable

        path = pathlib.Path(os.fspath(json_path))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(_jsonable(result), indent=2, allow_nan=False) + "\n")
    return result
