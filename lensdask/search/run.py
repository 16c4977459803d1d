"""Search a survey store: one task per tile, per-tile outputs written atomically, then merged.

The run directory it writes (its files, their schemas, atomic writes, done markers, merging
and reading it back) is :mod:`lensdask.rundir`'s.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from .. import config
from ..checks import fraction
from ..cluster import current_client
from ..deprecation import renamed_keywords
from ..errors import LensdaskError
from ..fanout import FAILURE_COLUMNS, run_tiles
from ..model.ensemble import COMBINE, check_models
from ..model.infer import PRECISIONS, resolve_batch_size, stage_inputs
from ..rundir import (
    FAILURES,
    REPORT,
    SUMMARY,
    TILES_DIR,
    check_writable,
    clean_run_dir,
    commit_tile,
    merge,
    read_markers,
    read_scores,
)
from ..store import CutoutStore, open_store
from .score import batch_inputs, held_specs, score_models
from .worker import get_model


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


def _reader_has_a_core(device) -> bool:
    """Whether a reader thread can run beside the forward pass without slowing it.

    True on a GPU, or when torch leaves a CPU core of this process free. When
    torch's OpenMP threads use every core (a search in one process, no Dask), a
    reader thread preempts one of them and the others spin at the next barrier:
    reading between forward passes is then faster (``benchmarks/RESULTS.md``).
    """
    import torch

    if torch.device(device).type != "cpu":
        return True
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return torch.get_num_threads() < cores


def run_signature(
    model_ids: list[str], combine: str = "mean", prefilter: tuple | None = None, audit: bool = False
) -> str:
    """What a finished tile was scored with, as one string; ``--resume`` skips only tiles with the same one.

    One model without a prefilter: its model id (as before ensembles existed). Otherwise the ids joined
    with ``+``, the combination, ``prefilter:<id>@<fraction>/<threshold>`` and ``audit`` when they apply.
    """
    sig = "+".join(model_ids)
    if len(model_ids) > 1:
        sig += f"|{combine}"
    if prefilter is not None:
        pid, fraction, threshold = prefilter
        sig += f"|prefilter:{pid}@{float(fraction):g}/{float(threshold):g}"
    if audit:
        sig += "|audit"
    return sig


@renamed_keywords(zarr="store")
def search_tile(
    store: str,
    tile: int,
    model_dir: str | list[str],
    sha256: str | list[str],
    run_dir: str,
    *,
    device: str = "auto",
    batch_size: int | str | None = None,
    floor: float = 0.0,
    precision: str | None = None,
    combine: str | None = None,
    prefilter: tuple | None = None,
    prefilter_threshold: float | None = None,
    audit_ids=None,
    name: str | None = None,
    rows: int | None = None,
) -> dict:
    """Score one tile and write its outputs atomically; the unit of work of a search.

    Runs anywhere: inside a Dask task, in a notebook, or in a batch job. The tile is read
    once, whatever the number of models.

    Parameters
    ----------
    store : str
        Store path or URL.
    tile : int
        Tile index.
    model_dir, sha256 : str, or lists of str
        Checkpoint directory and the expected hash of its weights; lists for an ensemble.
    run_dir : str
        Output directory (must be reachable from where this runs).
    device : str
        ``"auto"``, ``"cpu"`` or ``"cuda"``.
    batch_size : int or "auto", optional
        Cutouts per forward pass (config ``search.batch_size``; ``auto``: see
        :data:`lensdask.model.infer.BATCH_SIZES`). The store is read in whole
        compressed chunks of at least this many rows.
    floor : float
        Lens probability below which rows are not kept.
    precision : str, optional
        ``auto`` (bf16 on CUDA, fp32 on CPU), ``fp32`` or ``bf16`` (config ``search.precision``).
    combine : {"mean", "rank"}, optional
        How an ensemble's probabilities make ``score`` (config ``search.ensemble.combine``).
    prefilter : (str, str, float), optional
        ``(model_dir, sha256, keep_fraction)`` of a cheap first-stage model: only the top
        ``keep_fraction`` of the tile by its score, plus rows at or above ``prefilter_threshold``,
        reach the main models (see :func:`lensdask.search.score.score_models`).
    prefilter_threshold : float, optional
        Prefilter lens probability that passes a row whatever its rank (config
        ``search.prefilter.threshold``).
    audit_ids : array of int, optional
        Object ids (injected lenses of a mock survey) that the main models score even when
        the prefilter stops them, into ``audit_score``.
    name : str, optional
        The tile's name, and
    rows : int, optional
        its row count, as the caller read them (:meth:`~lensdask.store.CutoutStore.know_tile`):
        a search reads the store's per-tile arrays once and hands each task its own tile's, so
        the tasks of a 10,000-tile run do not each read every tile's. Read from the store when
        not given.

    Returns
    -------
    dict
        Per-tile statistics (also written to ``tiles/<tile>.json``).
    """
    t0 = time.perf_counter()
    cutout_store = open_store(store)
    if name is not None and rows is not None:
        cutout_store.know_tile(tile, name, rows)
    name = cutout_store.tile_name(tile)
    precision = str(config.get("search.precision", precision))
    combine = str(config.get("search.ensemble.combine", combine))
    dirs = [model_dir] if isinstance(model_dir, (str, os.PathLike)) else list(model_dir)
    shas = [sha256] if isinstance(sha256, str) else list(sha256)
    models = [get_model(d, h, device) for d, h in zip(dirs, shas)]
    dev = models[0][2]
    main = [(m, c) for m, c, _ in models]
    pre = None
    keep_fraction = 1.0
    if prefilter is not None:
        prefilter_threshold = fraction(
            config.get("search.prefilter.threshold", prefilter_threshold), "prefilter threshold"
        )
        pdir, psha, keep_fraction = prefilter
        pm, pc, _ = get_model(pdir, psha, device)
        pre = (pm, pc)
    batch_size = resolve_batch_size(config.get("search.batch_size", batch_size), dev)
    chunk = cutout_store.chunk_rows
    read_rows = -(-batch_size // chunk) * chunk  # whole chunks: each is decoded once
    # the models' inputs as training and evaluation see them (a quantised store's straight from its codes);
    # a cascade holds its main models' inputs of the rows its prefilter may pass
    first = [pre[1]] if pre is not None else [c for _, c in main]
    specs = [c.get("normalisation") for c in first] + (held_specs([c for _, c in main]) if pre is not None else [])
    batches = (
        batch_inputs(inputs, table, len(first))
        for inputs, table in cutout_store.iter_normalised(read_rows, specs, tiles=[tile])
    )
    if _reader_has_a_core(dev):  # read, normalise and copy to the device the next block while the model scores this one
        batches = _prefetch(stage_inputs(batches, dev))
    table, stats = score_models(
        batches,
        main,
        device=dev,
        batch_size=batch_size,
        floor=floor,
        precision=precision,
        combine=combine,
        prefilter=pre,
        keep_fraction=keep_fraction,
        prefilter_threshold=prefilter_threshold or 0.0,
        rows_total=cutout_store.tile_rows(tile),
        audit_ids=audit_ids,
    )
    out = pathlib.Path(run_dir) / TILES_DIR
    out.mkdir(parents=True, exist_ok=True)
    ids = [c["model_id"] for _, c in main]
    sig = run_signature(
        ids,
        combine,
        None if pre is None else (pre[1]["model_id"], keep_fraction, prefilter_threshold),
        audit=audit_ids is not None,
    )
    stats.update(
        tile=name,
        tile_index=int(tile),
        model_id=sig,
        floor=floor,
        seconds=round(time.perf_counter() - t0, 3),
        device=str(dev),
        precision=precision,
        batch_size=batch_size,
    )
    commit_tile(out, name, table, stats)
    return stats


def audit_summary(scores: pd.DataFrame, threshold: float) -> dict:
    """What a cascade lost, from per-tile outputs written with a truth table (``audit_score``).

    Returns
    -------
    dict
        ``lenses``: injected lenses searched (finite pixels); ``passed_prefilter``;
        ``found``: passed and scored at or above ``threshold``; ``dropped``: stopped by the
        prefilter; ``dropped_main_would_keep``: of those, how many the main models alone score
        at or above ``threshold``; ``lost_fraction``: that over ``found`` plus it, i.e. the share
        of the lenses the main models alone would keep that the cascade lost.
    """
    if "audit_score" not in scores.columns:
        return {
            "lenses": 0,
            "passed_prefilter": 0,
            "found": 0,
            "dropped": 0,
            "dropped_main_would_keep": 0,
            "lost_fraction": None,
        }
    audited = scores["audit_score"].notna()
    lens_passed = scores["stage"].eq(2) & scores["audited"].astype(bool) if "audited" in scores else None
    dropped = int(audited.sum())
    would = int((scores.loc[audited, "audit_score"] >= threshold).sum())
    passed = int(lens_passed.sum()) if lens_passed is not None else None
    found = int((scores.loc[lens_passed, "score"] >= threshold).sum()) if lens_passed is not None else None
    alone = (found or 0) + would
    return {
        "lenses": None if passed is None else passed + dropped,
        "passed_prefilter": passed,
        "found": found,
        "dropped": dropped,
        "dropped_main_would_keep": would,
        "lost_fraction": (would / alone) if alone else None,
    }


def truth_lens_ids(truth) -> pd.DataFrame:
    """``tile, object_id`` of the lenses of a mock survey's truth table (a path or a DataFrame)."""
    if not isinstance(truth, pd.DataFrame):
        path = pathlib.Path(os.fspath(truth))
        if not path.is_file():
            raise LensdaskError(f"truth table {str(path)!r} not found")
        truth = pd.read_parquet(path)
    if not {"object_id", "is_lens"} <= set(truth.columns):
        raise LensdaskError("a truth table needs the columns object_id and is_lens")
    lenses = truth[truth["is_lens"].astype(bool)]
    return pd.DataFrame(
        {
            "tile": lenses["tile"].astype(str) if "tile" in lenses else None,
            "object_id": lenses["object_id"].to_numpy(np.int64),
        }
    )


def report_setting(value) -> bool | str:
    """``search.performance_report`` checked: True, False or ``"auto"`` (strings from the environment too).

    Raises
    ------
    LensdaskError
        Any other value.
    """
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("auto", "true", "false", "yes", "no", "1", "0"):
        return "auto" if text == "auto" else text in ("true", "yes", "1")
    raise LensdaskError(f"search.performance_report is {value!r}; use true, false or auto")


def report_wanted(setting: bool | str, tiles: int) -> bool:
    """Whether a search of ``tiles`` tile tasks writes the Dask performance report.

    ``"auto"`` writes it up to ``search.performance_report_max_tiles`` tiles, for a cluster where
    its cost matters: it grows with the number of tasks (the report's rendering after the tiles;
    2 s at 10,000 tiles here, ``benchmarks/bench_scale.py``).
    """
    if setting != "auto":
        return bool(setting)
    return tiles <= int(config.get("search.performance_report_max_tiles"))


def _gpu_workers(client) -> bool:
    workers = client.scheduler_info(n_workers=-1)["workers"].values()
    return any("GPU" in (w.get("resources") or {}) for w in workers)


@dataclass
class _Settings:
    """A search's settings, resolved from its arguments and the configuration, and its inputs, checked.

    Attributes
    ----------
    store_path : str
        The store as the tile tasks open it (absolute when local).
    store : lensdask.store.CutoutStore
    main : list of (pathlib.Path, dict)
        The main models' directories and cards (one, or an ensemble).
    pre : (pathlib.Path, dict, float) or None
        The prefilter's directory, card and keep fraction.
    run_dir : pathlib.Path
    threshold, floor : float
    batch_size : int, str or None
    device, precision, combine : str
    report : bool
    retries : int
    prefilter_threshold : float or None
    audit : pandas.DataFrame or None
        ``tile, object_id`` of a truth table's lenses (:func:`truth_lens_ids`).
    signature : str
        :func:`run_signature` of the run; resuming skips only tiles finished with it.
    timings : dict
        Seconds of each step of the search so far (``summary.json``'s ``timings``).
    """

    store_path: str
    store: CutoutStore
    main: list[tuple[pathlib.Path, dict]]
    pre: tuple | None
    run_dir: pathlib.Path
    threshold: float
    floor: float
    batch_size: int | str | None
    device: str
    precision: str
    combine: str
    report: bool | str
    retries: int
    prefilter_threshold: float | None
    audit: pd.DataFrame | None
    signature: str
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def ids(self) -> list[str]:
        """The main models' ids."""
        return [c["model_id"] for _, c in self.main]

    def tile_job(self, tile: int, name: str) -> tuple[str, Callable, tuple, dict]:
        """The ``(name, search_tile, args, kwargs)`` of one tile, for :func:`lensdask.fanout.run_tiles`."""
        kwargs: dict = dict(
            device=self.device,
            batch_size=self.batch_size,
            floor=self.floor,
            precision=self.precision,
            combine=self.combine,
        )
        if self.pre is not None:
            kwargs.update(
                prefilter=(str(self.pre[0]), self.pre[1]["sha256"], self.pre[2]),
                prefilter_threshold=self.prefilter_threshold,
            )
        if self.audit is not None:
            rows = self.audit if self.audit["tile"].isna().all() else self.audit[self.audit["tile"] == name]
            kwargs["audit_ids"] = rows["object_id"].to_numpy(np.int64)
        kwargs.update(name=name, rows=int(self.store.counts[tile]))
        if len(self.main) == 1:
            models: tuple = (str(self.main[0][0]), self.main[0][1]["sha256"])
        else:
            models = ([str(d) for d, _ in self.main], [c["sha256"] for _, c in self.main])
        return name, search_tile, (self.store_path, tile, *models, str(self.run_dir.resolve())), kwargs


def _resolve_settings(
    store,
    model,
    out,
    *,
    threshold,
    floor,
    batch_size,
    device,
    precision,
    report,
    retries,
    combine,
    prefilter,
    prefilter_threshold,
    truth,
    adapt_survey=False,
) -> _Settings:
    """Resolve :func:`search`'s settings from its arguments and the configuration, and check its inputs.

    Everything that would fail in every tile task fails here instead, before any task: a bad
    setting, a missing store, models that disagree with it or each other, an unreadable truth
    table, a run directory that cannot be written.

    Parameters
    ----------
    store, model, out, threshold, floor, batch_size, device, precision, report, retries, combine, prefilter, \
prefilter_threshold, truth, adapt_survey
        As given to :func:`search`.

    Returns
    -------
    _Settings

    Raises
    ------
    LensdaskError
        The first problem found.
    """
    threshold = fraction(config.get("search.threshold", threshold), "threshold")
    floor = fraction(config.get("search.floor", floor), "floor")
    batch_size = config.get("search.batch_size", batch_size)
    resolve_batch_size(batch_size, "cpu")  # a bad value fails here, not in every tile task
    device = str(config.get("search.device", device))
    precision = str(config.get("search.precision", precision))
    if precision not in PRECISIONS:
        raise LensdaskError(f"unknown precision {precision!r}; use one of {', '.join(PRECISIONS)}")
    report = report_setting(config.get("search.performance_report", report))
    retries = int(config.get("search.retries", retries))
    combine = str(config.get("search.ensemble.combine", combine))
    if combine not in COMBINE:
        raise LensdaskError(f"unknown ensemble combination {combine!r}; use one of {', '.join(COMBINE)}")
    if prefilter is not None:
        prefilter_threshold = fraction(
            config.get("search.prefilter.threshold", prefilter_threshold), "prefilter threshold"
        )
    elif truth is not None:
        raise LensdaskError("a truth table audits a cascade: give it with prefilter=(MODEL, FRACTION)")
    path = os.fspath(store)
    opened = open_store(path)
    main, pre = check_models(opened, model, prefilter, adapt_survey=adapt_survey)
    audit = truth_lens_ids(truth) if truth is not None else None
    signature = run_signature(
        [c["model_id"] for _, c in main],
        combine,
        None if pre is None else (pre[1]["model_id"], pre[2], prefilter_threshold),
        audit=audit is not None,
    )
    run_dir = pathlib.Path(out)
    check_writable(run_dir / TILES_DIR)  # a read-only or full disk is refused before any tile task
    if adapt_survey:
        main = [_adapted(d, card, opened, run_dir) for d, card in main]
        pre = None if pre is None else (*_adapted(pre[0], pre[1], opened, run_dir), pre[2])
        signature = run_signature(
            [c["model_id"] for _, c in main],
            combine,
            None if pre is None else (pre[1]["model_id"], pre[2], prefilter_threshold),
            audit=audit is not None,
        )
    return _Settings(
        store_path=path if "://" in path else os.path.abspath(path),
        store=opened,
        main=main,
        pre=pre,
        run_dir=run_dir,
        threshold=threshold,
        floor=floor,
        batch_size=batch_size,
        device=device,
        precision=precision,
        combine=combine,
        report=report,
        retries=retries,
        prefilter_threshold=prefilter_threshold,
        audit=audit,
        signature=signature,
    )


def _adapted(model_dir: pathlib.Path, card: dict, store, run_dir: pathlib.Path) -> tuple[pathlib.Path, dict]:
    """A model of another survey than the store's, adapted to it (:func:`~lensdask.model.pretrained.adapt_checkpoint`)
    as ``RUN_DIR/adapted/<model_id>``, with its card; a model of the store's survey as it is."""
    from ..model.checkpoint import card_survey, read_card
    from ..model.pretrained import adapt_checkpoint

    if card_survey(card) == store.survey:
        return model_dir, card
    out = adapt_checkpoint(model_dir, store, run_dir / "adapted" / str(card["model_id"]))
    return out, read_card(out)


@dataclass
class _TilePlan:
    """Which tiles of the store a search runs.

    Attributes
    ----------
    names : list of str
        Every tile's name, by index.
    todo : list of int
        Written tiles to search now.
    skipped : list of int
        Written tiles finished before (``resume``) with the same signature and floor.
    unwritten : list of str
        Tiles the store holds no cutouts for (never searched).
    """

    names: list[str]
    todo: list[int]
    skipped: list[int]
    unwritten: list[str]


def _plan_tiles(s: _Settings, resume: bool) -> _TilePlan:
    """Remove what an interrupted run left half-written, and sort the store's tiles into done and to do.

    Parameters
    ----------
    s : _Settings
    resume : bool
        Skip tiles already finished in the run directory with ``s.signature`` and ``s.floor``.

    Returns
    -------
    _TilePlan
    """
    clean_run_dir(s.run_dir)
    names = s.store.tiles
    written = s.store.written_tiles()
    markers = read_markers(s.run_dir) if resume else {}
    todo, skipped = [], []
    for t in written:
        done = markers.get(names[t])
        if done is not None and done.get("model_id") == s.signature and done.get("floor") == s.floor:
            skipped.append(t)
        else:
            todo.append(t)
    unwritten = sorted(set(names) - {names[t] for t in written})
    return _TilePlan(list(names), todo, skipped, unwritten)


def _run_plan(s: _Settings, plan: _TilePlan, client, progress: bool) -> tuple[list[dict], float]:
    """Run one :func:`search_tile` task per tile to do (:func:`lensdask.fanout.run_tiles`).

    On ``client``: the tasks need a GPU when a worker has one, and the Dask performance report
    is written when ``s.report``; without a client the tiles run here, one after another, and a
    :class:`LensdaskError` (bad input) stops the search. Any other failure of a tile (its task
    raised, its worker died, it was cancelled) becomes a row of the failures table while the
    others complete. On ``KeyboardInterrupt`` the pending tasks are cancelled, half-written files
    are removed and the interrupt is re-raised.

    Parameters
    ----------
    s : _Settings
    plan : _TilePlan
    client : distributed.Client or None
    progress : bool
        Show a progress bar over the tiles to do.

    Returns
    -------
    failures : list of dict
        ``{"tile", "error", "traceback"}`` per failed tile, in tile order.
    seconds : float
        Wall time of the tasks (the performance report's writing, after them, is
        ``s.timings["report"]``).
    """
    jobs = [s.tile_job(t, plan.names[t]) for t in plan.todo]
    t0 = time.perf_counter()
    tiles_end = t0
    try:
        with contextlib.ExitStack() as stack:
            resources = None
            if client is not None:
                from distributed import performance_report

                resources = {"GPU": 1} if _gpu_workers(client) else None
                # as_current: the report (and anything else asking for "the" client) uses this one, even
                # when it is not the process's default client
                stack.enter_context(client.as_current())
                if s.report:
                    stack.enter_context(performance_report(filename=str(s.run_dir / REPORT)))
            _, failures = run_tiles(
                jobs,
                client=client,
                progress=progress,
                desc="tiles",
                key_prefix="search-tile",
                retries=s.retries,
                resources=resources,
                raise_in_process=(LensdaskError,),
            )
            tiles_end = time.perf_counter()
    except KeyboardInterrupt:
        # Ctrl-C: run_tiles cancelled the pending tiles; what is finished stays, nothing half-written does.
        clean_run_dir(s.run_dir)
        raise
    s.timings["report"] = time.perf_counter() - tiles_end  # writing the performance report, if any
    clean_run_dir(s.run_dir)  # leftovers of workers killed mid-write (their tiles were redone)
    return failures, tiles_end - t0


def _merge_and_summarise(
    s: _Settings,
    plan: _TilePlan,
    failures: list[dict],
    elapsed: float,
    report_written: bool,
    crossmatch,
    radius,
    catalog,
    export,
) -> SearchResult:
    """Merge the finished tiles into the candidates, write the failures table and the summary.

    Parameters
    ----------
    s : _Settings
    plan : _TilePlan
    failures : list of dict
        What :func:`_run_plan` returned.
    elapsed : float
        Seconds the tiles took.
    report_written : bool
        Whether the run wrote the Dask performance report.
    crossmatch, radius, catalog, export
        As given to :func:`search` (see :func:`lensdask.rundir.merge`).

    Returns
    -------
    SearchResult
    """
    t0 = time.perf_counter()
    markers = read_markers(s.run_dir, [plan.names[t] for t in plan.todo + plan.skipped])  # each read once
    finished = list(markers)
    cand = merge(
        s.run_dir,
        s.threshold,
        tiles=finished,
        crossmatch=crossmatch,
        radius=radius,
        catalog=catalog,
        export=export,
        markers=markers,
    )
    from ..fit.run import keep_fits

    cand = keep_fits(s.run_dir, cand)  # a run fitted before keeps its fits (a resumed search merges afresh)
    stats = list(markers.values())
    failures_df = pd.DataFrame(failures, columns=FAILURE_COLUMNS)
    if failures:
        failures_df.to_parquet(s.run_dir / FAILURES, index=False)
    elif (s.run_dir / FAILURES).exists():
        (s.run_dir / FAILURES).unlink()
    s.timings["merge"] = time.perf_counter() - t0
    summary = _summary(s, plan, failures, finished, stats, cand, elapsed, report_written)
    (s.run_dir / SUMMARY).write_text(json.dumps(summary, indent=2))
    return SearchResult(s.run_dir, cand, summary, failures_df)


def _summary(
    s: _Settings,
    plan: _TilePlan,
    failures: list[dict],
    finished: list[str],
    stats: list,
    cand: pd.DataFrame,
    elapsed: float,
    report_written: bool,
) -> dict:
    """The ``summary.json`` of a search: its settings, tile and row counts, timings, cascade and audit.

    Parameters
    ----------
    s : _Settings
    plan : _TilePlan
    failures : list of dict
    finished : list of str
        Tiles finished (this run or resumed).
    stats : list of dict
        Their per-tile statistics.
    cand : pandas.DataFrame
        The merged candidates.
    elapsed : float
        Seconds the tiles took.
    report_written : bool
        Whether the Dask performance report was written.

    Returns
    -------
    dict
    """
    one = len(s.main) == 1
    pre = s.pre
    todo_rows = int(s.store.counts[plan.todo].sum()) if plan.todo else 0
    return {
        "store": s.store_path,
        "model": str(s.main[0][0]) if one else [str(d) for d, _ in s.main],
        "model_id": s.main[0][1]["model_id"] if one else "+".join(s.ids),
        "models": s.ids,
        "combine": None if one else s.combine,
        "threshold": s.threshold,
        "floor": s.floor,
        "precision": s.precision,
        "tiles_total": s.store.n_tiles,
        "tiles_searched": len(finished),
        "tiles_resumed": len(plan.skipped),
        "tiles_failed": [f["tile"] for f in failures],
        "tiles_unwritten": plan.unwritten,
        "rows_scored": sum(st["scored"] for st in stats),
        "rows_nan": sum(st["nan_rows"] for st in stats),
        "rows_masked": sum(st.get("masked_rows", 0) for st in stats),
        "rows_edge": sum(st.get("edge_rows", 0) for st in stats),
        "rows": sum(st["rows"] for st in stats),
        "candidates": len(cand),
        "known_lenses": cand.attrs.get("known_lenses"),
        "seconds": round(elapsed, 2),
        "cutouts_per_second": round(todo_rows / elapsed, 1) if plan.todo and elapsed > 0 else None,
        "performance_report": str(s.run_dir / REPORT) if report_written else None,
        # seconds of each step, on the client: settings and checks, planning (the store's per-tile
        # arrays and, resuming, the run's markers), the tiles, the performance report, the merge
        "timings": {k: round(v, 3) for k, v in s.timings.items()},
        # cutouts each stage saw: every finite cutout reaches the prefilter, only those it passes the main models
        "stages": {
            "prefilter": sum(st.get("prefilter", {}).get("scored", 0) for st in stats) if pre is not None else None,
            "main": sum(st.get("main_scored", st["scored"]) for st in stats),
        },
        "prefilter": None
        if pre is None
        else {
            "model": str(pre[0]),
            "model_id": pre[1]["model_id"],
            "keep_fraction": pre[2],
            "threshold": s.prefilter_threshold,
            "passed_by_threshold_only": sum(st.get("prefilter", {}).get("passed_by_threshold_only", 0) for st in stats),
        },
        "audit": None if s.audit is None else audit_summary(read_scores(s.run_dir, finished), s.threshold),
    }


@renamed_keywords(zarr="store")
def search(
    store: str | os.PathLike,
    model: str | os.PathLike | list | None = None,
    out: str | os.PathLike = "lensdask-run",
    *,
    client=None,
    threshold: float | None = None,
    floor: float | None = None,
    batch_size: int | str | None = None,
    device: str | None = None,
    precision: str | None = None,
    resume: bool = False,
    progress: bool = True,
    crossmatch: bool | None = None,
    radius: float | None = None,
    catalog=None,
    export: list[str] | str | None = None,
    report: bool | str | None = None,
    retries: int | None = None,
    combine: str | None = None,
    prefilter: str | tuple | None = None,
    prefilter_threshold: float | None = None,
    truth=None,
    adapt_survey: bool = False,
) -> SearchResult:
    """Search every tile of a survey store for lenses.

    One task per tile runs on ``client`` (or the current Dask client); each
    worker loads the model once. Without any client the tiles run one after
    another in this process.

    A tile whose task raises is listed in ``failures`` (and ``failures.parquet``)
    while the others complete; a worker that dies has its tiles redone on another
    worker by the scheduler. On ``KeyboardInterrupt`` the pending tiles are
    cancelled, half-written files are removed and the interrupt is re-raised:
    only whole tiles stay, and ``resume=True`` finishes the run.

    Parameters
    ----------
    store : str or path
        Survey cutout store (formerly ``zarr=``: that keyword still works, with a ``DeprecationWarning``).
    model : str, path, or list of them, optional
        Checkpoint directory; the shipped default model when omitted. A list is an
        ensemble: every model scores every tile (read once) and ``score`` combines them.
    out : str or path
        Run directory (see :mod:`lensdask.rundir` for its layout).
    client : distributed.Client, optional
    threshold : float, optional
        Lens probability for ``candidates.parquet`` (config ``search.threshold``).
    floor : float, optional
        Lens probability kept in per-tile outputs (config ``search.floor``).
    batch_size : int or "auto", optional
        Cutouts per forward pass (config ``search.batch_size``; ``auto``: 64 on a CPU,
        512 on a GPU, chosen on each worker).
    device : str, optional
        ``auto``, ``cpu`` or ``cuda`` on the workers (config ``search.device``).
    precision : str, optional
        ``auto`` (bf16 on CUDA), ``fp32`` or ``bf16`` (config ``search.precision``).
    resume : bool
        Skip tiles already finished in ``out`` with the same model and floor.
    progress : bool
        Show a progress bar over tiles.
    crossmatch : bool, optional
        Cross-match candidates with known lenses (config ``crossmatch.enabled``).
    radius : float, arcsec, optional
        Cross-match radius (config ``crossmatch.radius``).
    catalog : path or DataFrame, optional
        Known-lens catalogue (config ``crossmatch.catalog``; default lenscat's).
    export : list of {"fits", "csv"}, optional
        Extra formats of the candidate table (config ``search.export``).
    report : bool or "auto", optional
        Save the Dask performance report as ``dask-report.html`` (config
        ``search.performance_report``; only with a Dask client). ``"auto"`` saves it when the
        run has at most ``search.performance_report_max_tiles`` tiles to search.
    retries : int, optional
        Automatic retries of a tile task that raised (config ``search.retries``).
    combine : {"mean", "rank"}, optional
        An ensemble's ``score``: the mean lens probability, or the mean of the models' ranks
        within the tile as a fraction in (0, 1] (config ``search.ensemble.combine``).
    prefilter : str or (path, float), optional
        ``"MODEL:FRACTION"``: a two-stage cascade. MODEL (a checkpoint directory, or ``default``)
        scores every cutout; only the top FRACTION of each tile by its score, plus every row at or
        above ``prefilter_threshold``, reaches ``model``.
    prefilter_threshold : float, optional
        Prefilter lens probability that passes a row whatever its rank (config
        ``search.prefilter.threshold``).
    truth : path or DataFrame, optional
        A mock survey's truth table (``<store>.truth.parquet``). With a prefilter, the main
        models also score the injected lenses the prefilter stopped (and nothing else), so the
        summary can say how many of them the main models alone would have kept (``audit``).
        Never used for the search itself.
    adapt_survey : bool
        A model trained on another survey than the store's (card and store ``survey``) is refused
        (:class:`~lensdask.errors.ModelSurveyError`) unless this is set: then it is adapted to the
        store's bands and pixel scale (:func:`~lensdask.model.pretrained.adapt_to_survey`), saved as
        ``RUN_DIR/adapted/<model_id>`` and searched with.

    Returns
    -------
    SearchResult
    """
    t0 = time.perf_counter()
    s = _resolve_settings(
        store,
        model,
        out,
        threshold=threshold,
        floor=floor,
        batch_size=batch_size,
        device=device,
        precision=precision,
        report=report,
        retries=retries,
        combine=combine,
        prefilter=prefilter,
        prefilter_threshold=prefilter_threshold,
        truth=truth,
        adapt_survey=adapt_survey,
    )
    s.timings["settings"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    plan = _plan_tiles(s, resume)
    s.timings["plan"] = time.perf_counter() - t0
    s.report = report_wanted(s.report, len(plan.todo))
    client = client if client is not None else current_client()
    failures, elapsed = _run_plan(s, plan, client, progress)
    s.timings["tiles"] = elapsed
    return _merge_and_summarise(
        s, plan, failures, elapsed, s.report and client is not None, crossmatch, radius, catalog, export
    )
