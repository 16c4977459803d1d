"""Feed reviewed survey cutouts back into a training store, under their reviewed classes."""

from __future__ import annotations

import datetime

import numpy as np
import pandas as pd

from ..deprecation import renamed_keywords
from ..errors import StoreWriteError
from ..names import check_names
from ..rundir import fetch_stamps, locate
from ..store import open_store
from .labels import consensus, read_labels

TILE_PREFIX = "review-"


@renamed_keywords(zarr="store", to="train_store")
def trainset_add(labels, store, train_store, *, drop_conflicts: bool = True) -> pd.DataFrame:
    """Copy labelled survey cutouts into a training store.

    Each object's consensus class (:func:`lensdask.review.labels.consensus`) is
    mapped to the training store's classes; class names it does not have yet
    extend its class list. Labels graded ``possible`` are left out (too uncertain
    to train on). The cutouts go into new tiles named ``review-…``.
    Objects already added by an earlier call are skipped, so running the same
    command twice adds nothing the second time.

    Parameters
    ----------
    labels : str, path or pandas.DataFrame
        The labels table (CSV written by :func:`lensdask.review.labels.add_labels`).
    store : str or path
        The survey store the labelled objects come from (``zarr=`` is its deprecated old name).
    train_store : str or path
        The training store to extend (bands, stamp and pixel scale must match; ``to=`` is its
        deprecated old name).
    drop_conflicts : bool
        Leave out objects whose labellers disagree (else the latest label wins).

    Returns
    -------
    pandas.DataFrame
        The rows added: ``tile`` (new), ``object_id``, ``class``, ``label``.
    """
    table = labels if isinstance(labels, pd.DataFrame) else read_labels(labels)
    check_names(
        table["tile"].astype(str),
        source=f"the labels {labels}" if isinstance(labels, str) else "the labels",
        rows=range(1, len(table) + 1),
    )  # names are data: a hostile one is refused before anything is read
    if "grade" in table.columns:  # a "possible lens" is too uncertain to train on as either class
        table = table[table["grade"].fillna("").astype(str) != "possible"]
    chosen = consensus(table, drop_conflicts=drop_conflicts)
    survey = open_store(store)
    train = open_store(train_store, mode="r+")
    for attr in ("bands", "stamp"):
        if getattr(survey, attr) != getattr(train, attr):
            raise StoreWriteError(
                f"{attr} differ: survey {survey.url} has {getattr(survey, attr)}, "
                f"training store {train.url} has {getattr(train, attr)}"
            )
    if not np.isclose(survey.pixel_scale, train.pixel_scale, rtol=1e-4):
        raise StoreWriteError(f"pixel scales differ: {survey.pixel_scale} vs {train.pixel_scale} arcsec/px")
    done = {
        int(o)
        for t in train.written_tiles()
        if train.tiles[t].startswith(TILE_PREFIX)
        for o in train.read_table(t)["object_id"]
    }
    chosen = chosen[~chosen["object_id"].astype(int).isin(done)].reset_index(drop=True)
    if chosen.empty:
        return chosen.assign(label=pd.Series(dtype="int16"))
    locate(survey, chosen)  # every labelled object must exist before anything is written
    train.add_classes(sorted(set(chosen["class"]) - set(train.classes), key=list(chosen["class"]).index))
    chosen["label"] = [train.classes.index(c) for c in chosen["class"]]

    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%S%f")
    pieces = [chosen.iloc[i : i + train.capacity] for i in range(0, len(chosen), train.capacity)]
    names = [f"{TILE_PREFIX}{stamp}-{k:03d}" for k in range(len(pieces))]
    indices = train.add_tiles(names)
    added = []
    for t, name, piece in zip(indices, names, pieces):
        piece = piece.reset_index(drop=True)
        images = fetch_stamps(survey, piece)
        where = locate(survey, piece)
        meta = pd.concat(
            [
                survey.read_table(int(ti)).set_index("row").loc[g["row"], ["ra", "dec"]].set_index(g.index)
                for ti, g in where.groupby("tile_index")
            ]
        ).loc[piece.index]
        rows = pd.DataFrame(
            {
                "object_id": piece["object_id"].astype("int64"),
                "ra": meta["ra"].to_numpy(),
                "dec": meta["dec"].to_numpy(),
                "label": piece["label"].astype("int16"),
            }
        )
        train.write_tile(t, images, rows)
        added.append(piece.assign(tile=name)[["tile", "object_id", "class", "label"]])
    return pd.concat(added, ignore_index=True)
