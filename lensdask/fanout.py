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
from collections.abc import Callable, Sequence

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
    """The memory limits of the workers now connected, or of a LocalCluster's worker specification."""
    from dask.utils import parse_bytes

    try:
        workers = client.scheduler_info(n_workers=-1)["workers"].values()
        limits = {int(w["memory_limit"]) for w in workers if w.get("memory_limit")}
    except Exception:  # the scheduler is busy or gone: the limit is then unknown
        limits = set()
    for spec in (getattr(getattr(client, "cluster", None), "worker_spec", None) or {}).values():
        value = (spec.get("options") or {}).get("memory_limit")
        try:
            if value not in (None, 0, "auto"):
                limits.add(int(parse_bytes(value) if isinstance(value, str) else value))
        except (TypeError, ValueError):
            pass
    return limits


class TileFailed:
    """What a tile task returns instead of raising when its input is bad (a :class:`LensdaskError`):
    the tile fails with ``message``, and the worker logs no traceback for an expected problem."""

    def __init__(self, message: str):
        self.message = message


def _guarded(f, *args, **kwargs):
    from .errors import LensdaskError

    try:
        return f(*args, **kwargs)
    except LensdaskError as exc:
        return TileFailed(describe_error(exc))


def _n_workers(client) -> int:
    try:
        return len(client.scheduler_info(n_workers=-1)["workers"])
    except Exception:  # the scheduler is busy: count it as alive, the next look decides
        return 1


def _no_worker_grace(client) -> float:
    """Seconds a fan-out waits without any worker before failing its pending tiles.

    A LocalCluster's workers do not come back once gone (20 s); batch workers may wait in a
    queue, so there it is ``lensdask.cluster.worker_timeout``.
    """
    from distributed import LocalCluster

    if isinstance(getattr(client, "cluster", None), LocalCluster):
        return 20.0
    import dask

    from . import config

    return float(dask.utils.parse_timedelta(config.get("cluster.worker_timeout"), default="s"))


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
        times = "once" if exc.allowed_failures == 0 else f"{exc.allowed_failures + 1} times"
        return (f"worker lost: the worker running it died {times} "
                f"(killed for memory, preempted or crashed){where}")
    from .errors import LensdaskError

    text = " ".join(str(exc).split())
    if isinstance(exc, LensdaskError) and text:  # bad input: its message says it all
        return text
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
                    results[name] = _guarded(f, *args, **kwargs)
                except Exception as exc:  # one bad tile must not stop the others
                    failures[name] = {"tile": name, "error": describe_error(exc),
                                      "traceback": traceback.format_exc()[-2000:]}
                bar.update()
        else:
            from distributed import wait

            limits = _memory_limits(client)
            grace = _no_worker_grace(client)
            stamp = time.time_ns()
            futures = {}
            try:
                for name, f, args, kwargs in jobs:
                    fut = client.submit(_guarded, f, *args, **kwargs, key=f"{key_prefix}-{name}-{stamp}", pure=False,
                                        retries=retries)
                    futures[fut] = name
                pending = set(futures)
                alone_since = None  # when the cluster was last seen without a worker
                while pending:
                    try:
                        done, pending = wait(pending, timeout=2.0, return_when="FIRST_COMPLETED")
                    except TimeoutError:  # nothing finished in 2 s: look at the workers
                        done = set()
                    for fut in done:
                        name = futures[fut]
                        if fut.status == "finished":
                            results[name] = fut.result()
                        elif fut.status == "error":
                            err = fut.exception()
                            tb = "".join(traceback.format_tb(fut.traceback()))[-2000:]
                            limits |= _memory_limits(client)
                            failures[name] = {"tile": name, "error": describe_error(err, limits), "traceback": tb}
                        else:
                            failures[name] = {"tile": name, "error": "cancelled (worker lost or task cancelled)",
                                              "traceback": ""}
                        bar.update()
                    if not pending or done:
                        alone_since = None
                        continue
                    now_limits = _memory_limits(client)
                    if _n_workers(client):
                        limits |= now_limits
                        alone_since = None
                    elif alone_since is None:
                        alone_since = time.monotonic()
                    elif time.monotonic() - alone_since > grace:
                        # Workers that die as they start (a memory limit below what a worker needs at rest)
                        # never get to fail a task: without this, the command would wait for ever.
                        client.cancel(list(pending), force=True)
                        lim = ("; memory limit " + " / ".join(format_bytes(v) for v in sorted(limits)) + " per worker"
                               if limits else "")
                        for fut in pending:
                            failures[futures[fut]] = {
                                "tile": futures[fut], "traceback": "",
                                "error": f"worker lost: no worker alive for {grace:.0f} s while the tile waited "
                                         f"(workers killed as they start, e.g. at their memory limit){lim}"}
                            bar.update()
                        pending = set()
            except KeyboardInterrupt:
                client.cancel(list(futures), force=True)
                raise
    finally:
        bar.close()
    for name, r in list(results.items()):
        if isinstance(r, TileFailed):
            del results[name]
            failures[name] = {"tile": name, "error": r.message, "traceback": ""}
    order = {name: i for i, (name, *_rest) in enumerate(jobs)}
    return results, sorted(failures.values(), key=lambda r: order[r["tile"]])
