"""The run directory of a search: its layout, its atomic writes, reading it back.

A search (:func:`lensdask.search.search`) writes one directory; everything that reads a run
(``merge``, the review page and app, labels, training sets, Zooniverse exports) reads it through
this module. Layout::

    RUN_DIR/tiles/<tile>.parquet   one row per kept cutout of the tile (score >= floor, and every
                                   row with non-finite pixels)
    RUN_DIR/tiles/<tile>.json      the tile's statistics; its presence marks the tile done
    RUN_DIR/candidates.parquet     rows scoring >= threshold, best first, ranked (:func:`merge`)
    RUN_DIR/candidates.fits|.csv   the same table, when exports are asked for (astropy)
    RUN_DIR/known_lenses.parquet   known lenses inside the searched footprint, with their best score
    RUN_DIR/failures.parquet       tiles whose task raised (only when some did)
    RUN_DIR/summary.json           what was searched, with which model, and the counts
    RUN_DIR/dask-report.html       the Dask performance report (runs on a Dask client)

``<tile>`` is the tile's name, percent-encoded where it holds a character outside
``A-Z a-z 0-9 . _ + -`` (:func:`lensdask.names.safe_component`); the ``tile`` column keeps the name as it was.

Schemas
-------
``tiles/<tile>.parquet`` (:func:`lensdask.search.score.score_models`)
    ``tile`` (str), ``object_id`` (int64), ``ra, dec`` (float64, degrees), ``score`` (float32 lens
    probability; NaN for rows with non-finite pixels and rows a prefilter stopped); an ensemble adds
    ``score_<model id>`` per model (:func:`lensdask.model.ensemble.model_column`); ``p_<class>``
    (the models' mean class probabilities, when they share their classes); a cascade adds
    ``prefilter_score`` and ``stage`` (int8: 0 non-finite pixels, 1 stopped by the prefilter, 2 scored
    by the main models), and with a truth table ``audited`` and ``audit_score``; then ``nan_pixels``
    (bool), ``flags`` (int32, the store's flags) and ``model`` (the model id, ensembles' joined by ``+``).
``tiles/<tile>.json``
    ``rows, scored, nan_rows, masked_rows, edge_rows, kept, histogram`` (of ``score`` in 20 bins of
    0.05), ``max_score``, the sky box ``ra_min, ra_max, dec_min, dec_max`` (degrees; RA may wrap),
    ``models, combine, main_scored`` (and ``prefilter``, ``audit`` for a cascade), then ``tile,
    tile_index, model_id`` (the run signature, :func:`lensdask.search.run.run_signature`), ``floor,
    seconds, device, precision, batch_size``.
``candidates.parquet``
    ``rank`` (1 = best) followed by the per-tile columns of the rows scoring >= threshold without
    non-finite pixels, sorted by score (descending), then tile and object id; an ensemble adds
    ``n_agree`` (models scoring the row >= threshold on their own); a cross-match adds
    :data:`lensdask.crossmatch.KNOWN_COLUMNS`. ``audited`` and ``audit_score`` never appear.
``known_lenses.parquet`` (:func:`lensdask.crossmatch.known_lens_report`)
    ``name, ra, dec, grading, type, ref, tile, object_id, sep_arcsec, score, above_threshold``.
``failures.parquet``
    ``tile, error, traceback``.
``summary.json``
    ``store`` (the path or URL searched, read back by :func:`run_store`), ``model, model_id, models,
    combine, threshold, floor, precision``, tile and row counts, ``candidates, known_lenses, seconds``
    (the tiles' wall time), ``cutouts_per_second, performance_report``, ``timings`` (seconds of each
    step on the client: ``settings, plan, tiles, report, merge``), ``stages, prefilter, audit``.

Atomicity and markers
---------------------
Nothing a reader may see is ever half written. A tile is committed by :func:`commit_tile`: its
Parquet and JSON go to temporary files (``.<name>.<pid>.<thread>.tmp``, :func:`tmp_name`), then the
Parquet is renamed into place and, last, the JSON marker: a tile without a marker is not done
(:func:`tile_done`), and :func:`clean_run_dir` removes what an interrupted or killed task left
(temporary files, a Parquet without marker). ``candidates.*`` and ``known_lenses.parquet`` are
written by :func:`write_atomic` (a temporary file, then a rename). :func:`read_scores` reads only
tiles with a marker.
"""

from __future__ import annotations

import json
import os
import pathlib
import threading

import numpy as np
import pandas as pd

from . import config
from .deprecation import renamed_keywords
from .errors import LensdaskError
from .names import child_path, csv_safe, safe_component
from .store import CutoutStore, open_store

TILES_DIR = "tiles"
"""Sub-directory of the per-tile outputs."""

CANDIDATES = "candidates.parquet"
KNOWN_LENSES = "known_lenses.parquet"
FAILURES = "failures.parquet"
SUMMARY = "summary.json"
REPORT = "dask-report.html"


def tmp_name(path: pathlib.Path) -> pathlib.Path:
    """The temporary file beside ``path`` that this process and thread write before renaming it into place:
    ``.<name>.<pid>.<thread>.tmp`` (hidden, and removed by :func:`clean_run_dir` when left behind)."""
    return path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")


def write_atomic(path: pathlib.Path, write) -> None:
    """Write ``path`` atomically: ``write(tmp)`` fills a temporary file (:func:`tmp_name`), which is then renamed
    to ``path``; on any error, KeyboardInterrupt included, the temporary file goes and ``path`` is untouched."""
    tmp = tmp_name(path)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:  # KeyboardInterrupt included: leave no partial file behind
        try:
            tmp.unlink(missing_ok=True)
        except OSError:  # a read-only disk: keep the first error
            pass
        raise


def commit_tile(out: pathlib.Path, name: str, table: pd.DataFrame, stats: dict) -> None:
    """Write a tile's Parquet and marker to temporary files, then rename the Parquet and, last, the marker."""
    pq, js = child_path(out, name, ".parquet"), child_path(out, name, ".json")
    tpq, tjs = tmp_name(pq), tmp_name(js)
    try:
        table.to_parquet(tpq, index=False)
        tjs.write_text(json.dumps(stats))
        os.replace(tpq, pq)
        os.replace(tjs, js)
    except BaseException:
        for tmp in (tpq, tjs):  # on a read-only disk the clean-up fails too: keep the first error
            try:
                tmp.unlink(missing_ok=True)
            except OSError:
                pass
        raise


def check_writable(folder: str | os.PathLike) -> pathlib.Path:
    """Create ``folder`` if needed and prove a file can be written in it; a clear error otherwise.

    Raises
    ------
    LensdaskError
        The folder cannot be created or written (read-only file system, no permission, disk full).
    """
    folder = pathlib.Path(folder)
    probe = folder / f".write-test.{os.getpid()}.{threading.get_ident()}.tmp"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with open(probe, "wb") as f:
            f.write(b"\0" * 4096)
            f.flush()
            os.fsync(f.fileno())
    except OSError as exc:
        raise LensdaskError(f"cannot write into {folder}: {exc.strerror or exc}") from None
    finally:
        try:
            probe.unlink(missing_ok=True)
        except OSError:
            pass
    return folder


def clean_run_dir(run_dir: str | os.PathLike) -> list[str]:
    """Remove what interrupted or killed tile tasks left in ``RUN_DIR/tiles``; returns the names removed.

    Temporary files and Parquet files without a done marker go; finished tiles stay.
    Call it only when no tile task is writing into ``run_dir``.
    """
    d = pathlib.Path(run_dir) / TILES_DIR
    removed: list[str] = []
    if not d.is_dir():
        return removed
    for p in d.glob(".*.tmp"):
        p.unlink(missing_ok=True)
        removed.append(p.name)
    for p in d.glob("*.parquet"):
        if not p.with_suffix(".json").exists():
            p.unlink(missing_ok=True)
            removed.append(p.name)
    return removed


def tile_done(run_dir: str | os.PathLike, tile: str) -> dict | None:
    """The statistics of a finished tile, or None when it has not finished."""
    marker = child_path(pathlib.Path(run_dir) / TILES_DIR, tile, ".json")
    if not marker.exists():
        return None
    return json.loads(marker.read_text())


def _finished_components(run_dir: str | os.PathLike, tiles: list[str] | None) -> list[str]:
    """File-name components of the finished tiles (those with a done marker), of ``tiles`` or all.

    One listing of ``RUN_DIR/tiles``, not one look-up per tile.
    """
    d = pathlib.Path(run_dir) / TILES_DIR
    # listed files are already components; given names are encoded like the writer encoded them
    done = {name[: -len(".json")] for name in os.listdir(d) if name.endswith(".json")} if d.is_dir() else set()
    if tiles is None:
        return sorted(done)
    return [c for c in (safe_component(t) for t in tiles) if c in done]


def read_markers(run_dir: str | os.PathLike, tiles: list[str] | None = None) -> dict[str, dict]:
    """The statistics of the finished tiles (their ``tiles/<tile>.json``), each read once.

    Parameters
    ----------
    run_dir : str or path
    tiles : list of str, optional
        Tile names; default every finished tile.

    Returns
    -------
    dict
        Tile name -> statistics (as :func:`tile_done` returns them), in the order of ``tiles``
        (default: sorted by file name); tiles not finished are left out.
    """
    d = pathlib.Path(run_dir) / TILES_DIR
    out: dict[str, dict] = {}
    for comp in _finished_components(run_dir, tiles):
        try:
            stats = json.loads((d / f"{comp}.json").read_text())
        except FileNotFoundError:  # removed since the listing
            continue
        out[str(stats.get("tile", comp))] = stats
    return out


def read_scores(run_dir: str | os.PathLike, tiles: list[str] | None = None) -> pd.DataFrame:
    """Concatenate the per-tile outputs of finished tiles (those with a done marker).

    The files are read with PyArrow on a few threads and joined once: at 10,000 tiles a
    read through pandas per file cost the client ~25 s, this ~5 s (``benchmarks/bench_scale.py``).
    """
    from concurrent.futures import ThreadPoolExecutor

    import pyarrow as pa
    import pyarrow.parquet as pq

    d = pathlib.Path(run_dir) / TILES_DIR
    paths = [d / f"{c}.parquet" for c in _finished_components(run_dir, tiles)]
    with ThreadPoolExecutor(max_workers=4) as pool:
        tables = [t for t in pool.map(pq.read_table, paths) if t.num_rows]
    if not tables:
        return pd.DataFrame(columns=["tile", "object_id", "ra", "dec", "score", "nan_pixels", "model"])
    # an empty tile's text columns are typed null: promotion gives them the others' type
    table = pa.concat_tables(tables, promote_options="permissive")
    return table.to_pandas()


EXPORTS = ("fits", "csv")


def export_table(table: pd.DataFrame, path: pathlib.Path, fmt: str) -> pathlib.Path:
    """Write ``table`` as FITS or CSV with astropy (atomically); returns the path written."""
    from astropy.table import Table

    if fmt not in EXPORTS:
        raise LensdaskError(f"unknown export format {fmt!r}; use {', '.join(EXPORTS)}")
    path = path.with_suffix("." + fmt)
    if fmt == "csv":  # tile names and other text must not open as formulas in a spreadsheet
        table = csv_safe(table)
    t = Table.from_pandas(table.reset_index(drop=True))
    write_atomic(path, lambda p: t.write(p, format="fits" if fmt == "fits" else "ascii.csv", overwrite=True))
    return path


def merge(
    run_dir: str | os.PathLike,
    threshold: float | None = None,
    tiles: list[str] | None = None,
    *,
    crossmatch: bool | None = None,
    radius: float | None = None,
    catalog=None,
    export: list[str] | str | None = None,
    markers: dict[str, dict] | None = None,
) -> pd.DataFrame:
    """Build ``candidates.parquet`` from the per-tile outputs: rows >= threshold, best first, ranked.

    Runs without Dask, on whatever per-tile outputs are finished (``tiles``: these only). For an
    ensemble (``score_<model id>`` columns) it adds ``n_agree``: how many models score the row at or
    above ``threshold`` on their own.

    Parameters
    ----------
    run_dir : str or path
    threshold : float, optional
        Lens probability (config ``search.threshold``).
    tiles : list of str, optional
        Tile names to merge; default every finished tile.
    crossmatch : bool, optional
        Add the nearest known lens (``known_*`` columns) and write ``known_lenses.parquet``
        (config ``crossmatch.enabled``).
    radius : float, arcsec, optional
        Cross-match radius (config ``crossmatch.radius``).
    catalog : optional
        Known-lens catalogue (see :func:`lensdask.crossmatch.known_lenses`).
    export : list of {"fits", "csv"}, optional
        Also write ``candidates.fits`` / ``candidates.csv`` (config ``search.export``).
    markers : dict, optional
        The finished tiles' statistics, when the caller already read them (:func:`read_markers`).

    Returns
    -------
    pandas.DataFrame
        The candidates; ``attrs["known_lenses"]`` holds the known-lens summary when cross-matched.
    """
    threshold = float(config.get("search.threshold", threshold))
    crossmatch = bool(config.get("crossmatch.enabled", crossmatch))
    export = config.get("search.export", export) or []
    if isinstance(export, str):
        export = [e for e in export.replace(",", " ").split() if e]
    bad = [e for e in export if e not in EXPORTS]
    if bad:
        raise LensdaskError(f"unknown export formats {bad}; use {', '.join(EXPORTS)}")
    run_dir = pathlib.Path(run_dir)
    scores = read_scores(run_dir, tiles)
    per_model = [c for c in scores.columns if c.startswith("score_")]
    if per_model:  # an ensemble: how many of its models call the row a lens on their own
        scores = scores.copy()
        scores["n_agree"] = (scores[per_model].to_numpy(float) >= threshold).sum(axis=1).astype(np.int16)
    cand = scores[(scores["score"] >= threshold) & ~scores["nan_pixels"].astype(bool)]
    # the audit is truth, never part of a candidate list
    cand = cand.drop(columns=[c for c in ("audited", "audit_score") if c in cand.columns])
    cand = cand.sort_values(["score", "tile", "object_id"], ascending=[False, True, True], kind="stable")
    cand = cand.reset_index(drop=True)
    cand.insert(0, "rank", np.arange(1, len(cand) + 1))
    summary = None
    if crossmatch:
        from .crossmatch import crossmatch as xmatch
        from .crossmatch import known_lens_report, known_lenses

        cat = known_lenses(catalog)
        cand = xmatch(cand, radius=radius, catalog=cat)
        stats = list((markers if markers is not None else read_markers(run_dir, tiles)).values())
        known, summary = known_lens_report(
            scores, [s for s in stats if s], threshold=threshold, radius=radius, catalog=cat
        )
        write_atomic(run_dir / KNOWN_LENSES, lambda p: known.to_parquet(p, index=False))
    write_atomic(run_dir / CANDIDATES, lambda p: cand.to_parquet(p, index=False))
    for fmt in export:
        export_table(cand, run_dir / CANDIDATES, fmt)
    if summary is not None:
        cand.attrs["known_lenses"] = summary
    return cand


@renamed_keywords(zarr="store")
def run_store(run_dir: str | os.PathLike, store: str | os.PathLike | None = None) -> CutoutStore:
    """The store a search run read (from ``RUN_DIR/summary.json``), or ``store`` when given (``zarr=`` is its
    deprecated old name)."""
    if store is None:
        summary = pathlib.Path(run_dir) / SUMMARY
        if not summary.exists():
            raise LensdaskError(f"{run_dir} is not a finished search run (no summary.json); pass the store explicitly")
        store = json.loads(summary.read_text())["store"]
    return open_store(store)


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


@renamed_keywords(zarr="store")
def best_candidates(run_dir: str | os.PathLike, top: int, *, store=None, candidates: pd.DataFrame | None = None):
    """The ``top`` best candidates of a run (or of ``candidates``), their store and their pixels.

    ``store`` is the survey store when it moved since the search (``zarr=`` is its deprecated old name).

    Returns
    -------
    (pandas.DataFrame, CutoutStore, numpy.ndarray)
        Candidates best first, the survey store, and (n, n_bands, stamp, stamp) stamps.
    """
    run_dir = pathlib.Path(run_dir)
    if candidates is None:
        path = run_dir / CANDIDATES
        if not path.exists():
            raise LensdaskError(f"{run_dir} has no candidates.parquet: run `lensdask search` first")
        candidates = pd.read_parquet(path)
    cand = candidates.sort_values("score", ascending=False, kind="stable").head(int(top)).reset_index(drop=True)
    opened = run_store(run_dir, store)
    stamps = fetch_stamps(opened, cand) if len(cand) else np.zeros((0, len(opened.bands), opened.stamp, opened.stamp))
    return cand, opened, stamps
