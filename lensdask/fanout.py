"""Run one task per tile and turn every way a tile can fail into a row of a failures table.

A tile fails when its task raises, or when the worker running it dies (killed for
exceeding its memory limit, preempted, crashed) more often than the scheduler allows
(``distributed.scheduler.allowed-failures``): Dask then reports a ``KilledWorker``.
Either way the tile becomes ``{"tile", "error", "traceback"}``, every other tile
completes, and the caller decides the exit status. ``search`` does the same inside
:mod:`lensdask.search.run`; this module is the shared form used by ``ingest``.
"""

from __future__ import annotations

import traceback
from typing import Callable, Sequence

FAILURE_COLUMNS = ["tile", "error", "traceback"]


def format_bytes(n) -> str:
    """``3221225472`` -> ``"3.00 GiB"``."""
    n = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    return f"{n:.2f} TiB"  # pragma: no cover


def _memory_limits(client) -> set[int]:
    try:
        workers = client.scheduler_info(n_workers=-1)["workers"].values()
    except Exception:  # the scheduler is busy or gone: the limit is then unknown
        return set()
    return {int(w["memory_limit"]) for w in workers if w.get("memory_limit")}


def describe_error(exc: BaseException, limits: set[int] | None = None) -> str:
    """A one-line reason for a failed tile; a lost worker is named as such, with its memory limit."""
    from distributed.scheduler import KilledWorker

    if isinstance(exc, KilledWorker):
        limit = getattr(exc.last_worker, "memory_limit", None)
        if limit:
            where = f"; memory limit {format_bytes(limit)} per worker"
        elif limits:
            where = "; memory limit " + " / ".join(format_bytes(v) for v in sorted(limits)) + " per worker"
        else:
            where = "; no memory limit known"
        return (f"worker lost: the worker running it died {exc.allowed_failures + 1} times "
                f"(killed for memory, preempted or crashed){where}")
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def run_tiles(
    jobs: Sequence[tuple[str, Callable, tuple, dict]],
    *,
    client=None,
    progress: bool = True,
    desc: str = "tiles",
    key_prefix: str = "tile",
    retries: int = 0,
) -> tuple[dict[str, object], list[dict]]:
    """Run ``jobs`` (``(tile, function, args, kwargs)``), one task each; return results and failures.

    Parameters
    ----------
    jobs : sequence of (str, callable, tuple, dict)
        The tile name, and the call that does its work.
    client : distributed.Client, optional
        Where the tasks run; without one they run one after another in this process.
    progress : bool
        Show a progress bar over tiles.
    desc : str
        The progress bar's label.
    key_prefix : str
        Dask keys are ``<key_prefix>-<tile>-<n>``, so the dashboard names the tile.
    retries : int
        Automatic retries of a task that raised (a task whose worker died is always
        retried by the scheduler, up to ``distributed.scheduler.allowed-failures`` times).

    Returns
    -------
    results : dict
        ``{tile: return value}`` of the tiles that finished.
    failures : list of dict
        ``{"tile", "error", "traceback"}`` for each tile that did not, in job order.
    """
    import time

    from tqdm.auto import tqdm

    results: dict[str, object] = {}
    failures: dict[str, dict] = {}
    bar = tqdm(total=len(jobs), desc=desc, unit="tile", disable=not progress)
    try:
        if client is None:
            for name, f, args, kwargs in jobs:
                try:
                    results[name] = f(*args, **kwargs)
                except Exception as exc:  # one bad tile must not stop the others
                    failures[name] = {"tile": name, "error": describe_error(exc),
                                      "traceback": traceback.format_exc()[-2000:]}
                bar.update()
        else:
            from distributed import as_completed

            limits = _memory_limits(client)
            stamp = time.time_ns()
            futures = {}
            try:
                for name, f, args, kwargs in jobs:
                    fut = client.submit(f, *args, **kwargs, key=f"{key_prefix}-{name}-{stamp}", pure=False,
                                        retries=retries)
                    futures[fut] = name
                for fut in as_completed(futures, loop=client.loop):
                    name = futures[fut]
                    if fut.status == "finished":
                        results[name] = fut.result()
                    elif fut.status == "error":
                        exc = fut.exception()
                        tb = "".join(traceback.format_tb(fut.traceback()))[-2000:]
                        failures[name] = {"tile": name, "error": describe_error(exc, limits | _memory_limits(client)),
                                          "traceback": tb}
                    else:
                        failures[name] = {"tile": name, "error": "cancelled (worker lost or task cancelled)",
                                          "traceback": ""}
                    bar.update()
            except KeyboardInterrupt:
                client.cancel(list(futures), force=True)
                raise
    finally:
        bar.close()
    order = {name: i for i, (name, *_rest) in enumerate(jobs)}
    return results, sorted(failures.values(), key=lambda r: order[r["tile"]])
