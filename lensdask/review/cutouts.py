"""Find the pixels of objects named by (tile, object_id) in a cutout store."""

from __future__ import annotations

import json
import os
import pathlib

import numpy as np
import pandas as pd

from ..errors import LensdaskError
from ..store import CutoutStore, open_store


def run_store(run_dir: str | os.PathLike, zarr: str | os.PathLike | None = None) -> CutoutStore:
    """The store a search run read (from ``RUN_DIR/summary.json``), or ``zarr`` when given."""
    if zarr is None:
        summary = pathlib.Path(run_dir) / "summary.json"
        if not summary.exists():
            raise LensdaskError(f"{run_dir} is not a finished search run (no summary.json); pass the store explicitly")
        zarr = json.loads(summary.read_text())["store"]
    return open_store(zarr)


def locate(store: CutoutStore, table: pd.DataFrame) -> pd.DataFrame:
    """Tile index and row of every ``(tile, object_id)`` of ``table``, in its order.

    Raises
    ------
    LensdaskError
        Some objects are not in the store (the first few are named).
    """
    names = store.tiles
    index = {n: i for i, n in enumerate(names)}
    out = []
    missing = []
    for tile, group in table.groupby("tile", sort=False):
        t = index.get(str(tile))
        if t is None:
            missing += [(tile, oid) for oid in group["object_id"]]
            continue
        rows = store.read_table(t)[["object_id", "row"]]
        pos = dict(zip(rows["object_id"].to_numpy().tolist(), rows["row"].to_numpy().tolist()))
        for i, oid in zip(group.index, group["object_id"].to_numpy().tolist()):
            if oid in pos:
                out.append((i, t, pos[oid]))
            else:
                missing.append((tile, oid))
    if missing:
        shown = ", ".join(f"{t}/{o}" for t, o in missing[:5])
        more = " ..." if len(missing) > 5 else ""
        raise LensdaskError(f"{len(missing)} objects are not in {store.url}: {shown}{more}")
    found = pd.DataFrame(out, columns=["index", "tile_index", "row"]).set_index("index")
    return found.loc[table.index]


def fetch_stamps(store: CutoutStore, table: pd.DataFrame) -> np.ndarray:
    """Pixels (n, n_bands, stamp, stamp) of the objects of ``table`` (``tile``, ``object_id``), in order."""
    where = locate(store, table)
    images = np.empty((len(table), len(store.bands), store.stamp, store.stamp), dtype=np.float32)
    for t, group in where.groupby("tile_index"):
        rows = group["row"].to_numpy()
        tile = store.read_images(int(t), int(rows.min()), int(rows.max()) + 1)
        images[[table.index.get_loc(i) for i in group.index]] = tile[rows - rows.min()]
    return images


def best_candidates(run_dir: str | os.PathLike, top: int, *, zarr=None, candidates: pd.DataFrame | None = None):
    """The ``top`` best candidates of a run (or of ``candidates``), their store and their pixels.

    Returns
    -------
    (pandas.DataFrame, CutoutStore, numpy.ndarray)
        Candidates best first, the survey store, and (n, n_bands, stamp, stamp) stamps.
    """
    run_dir = pathlib.Path(run_dir)
    if candidates is None:
        path = run_dir / "candidates.parquet"
        if not path.exists():
            raise LensdaskError(f"{run_dir} has no candidates.parquet: run `lensdask search` first")
        candidates = pd.read_parquet(path)
    cand = candidates.sort_values("score", ascending=False, kind="stable").head(int(top)).reset_index(drop=True)
    store = run_store(run_dir, zarr)
    stamps = fetch_stamps(store, cand) if len(cand) else np.zeros((0, len(store.bands), store.stamp, store.stamp))
    return cand, store, stamps
