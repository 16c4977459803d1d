"""Search a survey store: one task per tile, per-tile outputs written atomically, then merged.

Layout of a run directory::

    RUN_DIR/tiles/<tile>.parquet   every row of the tile scoring >= floor (and NaN-flagged rows)
    RUN_DIR/tiles/<tile>.json      per-tile statistics; written last, it marks the tile done
    RUN_DIR/candidates.parquet     rows scoring >= threshold, sorted by score, ranked
    RUN_DIR/failures.parquet       tiles whose task raised (only when some did)
    RUN_DIR/summary.json           what was searched, with which model, and the counts
"""

from __future__ import annotations

import json
import os
import pathlib
import queue
import threading
import time
import traceback
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from .. import config
from ..cluster import current_client
from ..errors import LensdaskError
from ..model.checkpoint import check_compatible, read_card, resolve_model_dir
from ..store import open_store
from .score import score_batches
from .worker import get_model

TILES_DIR = "tiles"


@dataclass
class SearchResult:
    """What :func:`search` returns.

    Attributes
    ----------
    run_dir : pathlib.Path
    candidates : pandas.DataFrame
        Rows scoring at or above the threshold, best first.
    summary : dict
        Counts, model, store, threshold, timings.
    failures : pandas.DataFrame
        ``tile, error`` for every tile whose task failed (empty when none did).
    """

    run_dir: pathlib.Path
    candidates: pd.DataFrame
    summary: dict
    failures: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=["tile", "error"]))

    def scores(self) -> pd.DataFrame:
        """Every kept row of every finished tile (see :func:`read_scores`)."""
        return read_scores(self.run_dir)


def _prefetch(iterator, depth: int = 2):
    """Iterate ``iterator`` in a background thread, ``depth`` items ahead, so reading overlaps compute."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    done = object()

    def fill():
        try:
            for item in iterator:
                q.put(item)
        except BaseException as exc:  # handed to the consumer
            q.put(exc)
        q.put(done)

    threading.Thread(target=fill, daemon=True).start()
    while True:
        item = q.get()
        if item is done:
            return
        if isinstance(item, BaseException):
            raise item
        yield item


def _write_atomic(path: pathlib.Path, write) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    write(tmp)
    os.replace(tmp, path)


def tile_done(run_dir: str | os.PathLike, tile: str) -> dict | None:
    """The statistics of a finished tile, or None when it has not finished."""
    marker = pathlib.Path(run_dir) / TILES_DIR / f"{tile}.json"
    if not marker.exists():
        return None
    return json.loads(marker.read_text())


def search_tile(
    zarr: str,
    tile: int,
    model_dir: str,
    sha256: str,
    run_dir: str,
    *,
    device: str = "auto",
    batch_size: int = 256,
    floor: float = 0.0,
) -> dict:
    """Score one tile and write its outputs atomically; the unit of work of a search.

    Runs anywhere: inside a Dask task, in a notebook, or in a batch job.

    Parameters
    ----------
    zarr : str
        Store path or URL.
    tile : int
        Tile index.
    model_dir, sha256 : str
        Checkpoint directory and the expected hash of its weights.
    run_dir : str
        Output directory (must be reachable from where this runs).
    device : str
        ``"auto"``, ``"cpu"`` or ``"cuda"``.
    batch_size : int
        Cutouts per forward pass (and per read from the store).
    floor : float
        Lens probability below which rows are not kept.

    Returns
    -------
    dict
        Per-tile statistics (also written to ``tiles/<tile>.json``).
    """
    t0 = time.perf_counter()
    store = open_store(zarr)
    name = store.tiles[tile]
    model, card, dev = get_model(model_dir, sha256, device)
    batches = _prefetch(store.iter_batches(batch_size, tiles=[tile]))
    table, stats = score_batches(
        batches, model, card, model_id=card["model_id"], device=dev, batch_size=batch_size, floor=floor
    )
    out = pathlib.Path(run_dir) / TILES_DIR
    out.mkdir(parents=True, exist_ok=True)
    _write_atomic(out / f"{name}.parquet", lambda p: table.to_parquet(p, index=False))
    stats.update(
        tile=name, tile_index=int(tile), model_id=card["model_id"], floor=floor,
        seconds=round(time.perf_counter() - t0, 3), device=str(dev),
    )
    _write_atomic(out / f"{name}.json", lambda p: p.write_text(json.dumps(stats)))
    return stats


def read_scores(run_dir: str | os.PathLike, tiles: list[str] | None = None) -> pd.DataFrame:
    """Concatenate the per-tile outputs of finished tiles (those with a done marker)."""
    d = pathlib.Path(run_dir) / TILES_DIR
    if tiles is None:
        tiles = sorted(p.stem for p in d.glob("*.json"))
    frames = [pd.read_parquet(d / f"{t}.parquet") for t in tiles if (d / f"{t}.json").exists()]
    frames = [f for f in frames if len(f)]
    if not frames:
        return pd.DataFrame(columns=["tile", "object_id", "ra", "dec", "score", "nan_pixels", "model"])
    return pd.concat(frames, ignore_index=True)


def merge(run_dir: str | os.PathLike, threshold: float | None = None, tiles: list[str] | None = None) -> pd.DataFrame:
    """Build ``candidates.parquet`` from the per-tile outputs: rows >= threshold, best first, ranked."""
    threshold = float(config.get("search.threshold", threshold))
    scores = read_scores(run_dir, tiles)
    cand = scores[(scores["score"] >= threshold) & ~scores["nan_pixels"].astype(bool)]
    cand = cand.sort_values(["score", "tile", "object_id"], ascending=[False, True, True], kind="stable")
    cand = cand.reset_index(drop=True)
    cand.insert(0, "rank", np.arange(1, len(cand) + 1))
    _write_atomic(pathlib.Path(run_dir) / "candidates.parquet", lambda p: cand.to_parquet(p, index=False))
    return cand


def _gpu_workers(client) -> bool:
    workers = client.scheduler_info(n_workers=-1)["workers"].values()
    return any("GPU" in (w.get("resources") or {}) for w in workers)


def search(
    zarr: str | os.PathLike,
    model: str | os.PathLike | None = None,
    out: str | os.PathLike = "lensdask-run",
    *,
    client=None,
    threshold: float | None = None,
    floor: float | None = None,
    batch_size: int | None = None,
    device: str | None = None,
    resume: bool = False,
    progress: bool = True,
) -> SearchResult:
    """Search every tile of a survey store for lenses.

    One task per tile runs on ``client`` (or the current Dask client); each
    worker loads the model once. Without any client the tiles run one after
    another in this process.

    Parameters
    ----------
    zarr : str or path
        Survey cutout store.
    model : str or path, optional
        Checkpoint directory; the shipped default model when omitted.
    out : str or path
        Run directory (see the module docstring for its layout).
    client : distributed.Client, optional
    threshold : float, optional
        Lens probability for ``candidates.parquet`` (config ``search.threshold``).
    floor : float, optional
        Lens probability kept in per-tile outputs (config ``search.floor``).
    batch_size : int, optional
        Cutouts per forward pass (config ``search.batch_size``).
    device : str, optional
        ``auto``, ``cpu`` or ``cuda`` on the workers (config ``search.device``).
    resume : bool
        Skip tiles already finished in ``out`` with the same model.
    progress : bool
        Show a progress bar over tiles.

    Returns
    -------
    SearchResult
    """
    from tqdm.auto import tqdm

    threshold = float(config.get("search.threshold", threshold))
    floor = float(config.get("search.floor", floor))
    batch_size = int(config.get("search.batch_size", batch_size))
    device = str(config.get("search.device", device))
    zarr = os.fspath(zarr)
    store = open_store(zarr)
    model_dir = resolve_model_dir(model)
    card = read_card(model_dir)
    check_compatible(card, store)
    run_dir = pathlib.Path(out)
    (run_dir / TILES_DIR).mkdir(parents=True, exist_ok=True)
    if "://" not in zarr:
        zarr = os.path.abspath(zarr)

    names = store.tiles
    written = store.written_tiles()
    todo, skipped = [], []
    for t in written:
        done = tile_done(run_dir, names[t]) if resume else None
        if done is not None and done.get("model_id") == card["model_id"] and done.get("floor") == floor:
            skipped.append(t)
        else:
            todo.append(t)
    unwritten = sorted(set(names) - {names[t] for t in written})

    kwargs = dict(device=device, batch_size=batch_size, floor=floor)
    args = (str(model_dir), card["sha256"], str(run_dir.resolve()))
    failures: list[dict] = []
    t0 = time.perf_counter()
    client = client if client is not None else current_client()
    bar = tqdm(total=len(todo), desc="tiles", unit="tile", disable=not progress)
    if client is None:
        for t in todo:
            try:
                search_tile(zarr, t, *args, **kwargs)
            except LensdaskError:
                raise
            except Exception as exc:  # a corrupt tile must not stop the others
                failures.append(
                    {"tile": names[t], "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()[-2000:]}
                )
            bar.update()
    else:
        from distributed import as_completed

        resources = {"GPU": 1} if _gpu_workers(client) else None
        futures = {
            client.submit(
                search_tile, zarr, t, *args, **kwargs,
                key=f"search-tile-{names[t]}-{card['model_id']}-{time.time_ns()}",
                pure=False, retries=2, resources=resources,
            ): t
            for t in todo
        }
        for fut in as_completed(futures):
            t = futures[fut]
            if fut.status == "error":
                exc = fut.exception()
                tb = "".join(traceback.format_tb(fut.traceback()))[-2000:]
                failures.append({"tile": names[t], "error": f"{type(exc).__name__}: {exc}", "traceback": tb})
            bar.update()
    bar.close()
    elapsed = time.perf_counter() - t0

    finished = [names[t] for t in todo + skipped if tile_done(run_dir, names[t]) is not None]
    cand = merge(run_dir, threshold, tiles=finished)
    stats = [tile_done(run_dir, n) for n in finished]
    failures_df = pd.DataFrame(failures, columns=["tile", "error", "traceback"])
    if failures:
        failures_df.to_parquet(run_dir / "failures.parquet", index=False)
    elif (run_dir / "failures.parquet").exists():
        (run_dir / "failures.parquet").unlink()
    rows = sum(s["rows"] for s in stats)
    summary = {
        "store": zarr,
        "model": str(model_dir),
        "model_id": card["model_id"],
        "threshold": threshold,
        "floor": floor,
        "tiles_total": store.n_tiles,
        "tiles_searched": len(finished),
        "tiles_resumed": len(skipped),
        "tiles_failed": [f["tile"] for f in failures],
        "tiles_unwritten": unwritten,
        "rows_scored": sum(s["scored"] for s in stats),
        "rows_nan": sum(s["nan_rows"] for s in stats),
        "rows": rows,
        "candidates": len(cand),
        "seconds": round(elapsed, 2),
        "cutouts_per_second": round(sum(store.counts[t] for t in todo) / elapsed, 1) if todo and elapsed > 0 else None,
    }
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return SearchResult(run_dir, cand, summary, failures_df)
