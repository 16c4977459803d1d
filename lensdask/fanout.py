"""Run one task per tile and turn every way a tile can fail into a row of a failures table.

A tile fails when its task raises, or when the worker running it dies (killed for
exceeding its memory limit, preempted, crashed) more often than the scheduler allows
(``distributed.scheduler.allowed-failures``): Dask then reports a ``KilledWorker``.
Either way the tile becomes ``{"tile", "error", "traceback"}``, every other tile
completes, and the caller decides the exit status. This is the shared form used by
``ingest`` and ``simulate``.
"""

from __future__ import annotations

import pathlib
import traceback
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd

FAILURE_COLUMNS = ["tile", "error", "traceback"]


def failures_path(out: str) -> pathlib.Path | None:
    """Where the failures table of a local store goes: ``<store>.failures.parquet`` beside it."""
    return None if "://" in out else pathlib.Path(out.rstrip("/") + ".failures.parquet")


def write_failures(out: str, failures: pd.DataFrame) -> pathlib.Path | None:
    """Write the failures table beside a local store ``out``, or remove a stale one when nothing failed.

    Returns
    -------
    pathlib.Path or None
        The table written; None when there is none (no failures, or a remote store).
    """
    path = failures_path(out)
    if path is None:
        return None
    if len(failures):
        failures.to_parquet(path, index=False)
        return path
    path.unlink(missing_ok=True)
    return None


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
    from .workersetup import current_setup

    current_setup()  # the registered plugin, or (not registered) this worker process's own setup, once
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
        return f"worker lost: the worker running it died {times} (killed for memory, preempted or crashed){where}"
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
    unit: str = "tile",
    key_prefix: str = "tile",
    retries: int = 0,
    resources: dict | None = None,
    on_result: Callable[[str, object], None] | None = None,
    postfix: Callable[[], dict | str] | None = None,
    skipped: int = 0,
    raise_in_process: tuple[type[BaseException], ...] = (),
    register_setup: bool = True,
) -> tuple[dict[str, object], list[dict]]:
    """Run ``jobs`` (``(tile, function, args, kwargs)``), one task each; return results and failures.

    Every worker of ``client`` gets the lensdask worker setup first
    (:func:`lensdask.workersetup.register`), or with ``register_setup=False`` in its first
    task (:func:`lensdask.workersetup.current_setup`: the same setup, once per worker
    process); without a client this process gets it. On any exception while waiting
    (``KeyboardInterrupt`` included) the tasks not yet finished are cancelled and the
    exception is re-raised.

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
    unit : str
        What the progress bar counts (one per job): ``tile``, or e.g. ``chunk``.
    key_prefix : str
        Dask keys are ``<key_prefix>-<tile>-<n>``, so the dashboard names the tile.
    retries : int
        Automatic retries of a task that raised (a task whose worker died is always
        retried by the scheduler, up to ``distributed.scheduler.allowed-failures`` times).
    resources : dict, optional
        Worker resources every task needs (e.g. ``{"GPU": 1}``).
    on_result : callable, optional
        ``on_result(tile, value)``, called here, in this process, for every tile that
        finished, as soon as it did (in completion order).
    postfix : callable, optional
        Called after every tile (finished or failed); what it returns is shown after the
        progress bar (``tqdm.set_postfix`` for a dict, ``set_postfix_str`` for a string).
    skipped : int
        Tiles done before this run (resumed) and not in ``jobs``: the bar starts with them counted.
    register_setup : bool
        Register the worker setup plugin before submitting. Registering sends every worker
        the plugin at once, so each imports it before any task: a worker whose memory limit
        cannot hold that is restarted over and over by its nanny, and a task may run, and
        write, on one of those short lives after its tile was reported lost. Commands whose
        tiles do not need the model cache (ingest) set it up in the first task instead, so
        such a worker dies in its task and the tile is reported lost once, unwritten.
    raise_in_process : tuple of exception types
        Without a client, an exception of these types stops the run (it is raised, as the
        tile's call raised it) instead of becoming a row of the failures table.

    Returns
    -------
    results : dict
        ``{tile: return value}`` of the tiles that finished.
    failures : list of dict
        ``{"tile", "error", "traceback"}`` for each tile that did not, in job order.
    """
    from tqdm.auto import tqdm

    from .workersetup import current_setup, register

    results: dict[str, object] = {}
    failures: dict[str, dict] = {}
    bar = tqdm(total=len(jobs) + int(skipped), initial=int(skipped), desc=desc, unit=unit, disable=not progress)

    def finished(name: str, value: object) -> None:
        if isinstance(value, TileFailed):
            failed({"tile": name, "error": value.message, "traceback": ""})
            return
        results[name] = value
        if on_result is not None:
            on_result(name, value)
        advance()

    def failed(row: dict) -> None:
        failures[row["tile"]] = row
        advance()

    def advance() -> None:
        bar.update()
        if postfix is not None:
            shown = postfix()
            if isinstance(shown, dict):
                bar.set_postfix(shown)
            else:
                bar.set_postfix_str(str(shown))

    try:
        if client is None:
            current_setup()
            for name, f, args, kwargs in jobs:
                try:
                    value = _guarded(f, *args, **kwargs) if not raise_in_process else f(*args, **kwargs)
                except raise_in_process:
                    raise
                except Exception as exc:  # one bad tile must not stop the others
                    failed({"tile": name, "error": describe_error(exc), "traceback": traceback.format_exc()[-2000:]})
                    continue
                finished(name, value)
        else:
            if register_setup:
                register(client)
            _run_on_client(client, jobs, key_prefix, retries, resources, finished, failed)
    finally:
        bar.close()
    order = {name: i for i, (name, *_rest) in enumerate(jobs)}
    return results, sorted(failures.values(), key=lambda r: order[r["tile"]])


class _TileCall:
    """One tile's call, ``f(*args, **kwargs)``, as one argument of :meth:`distributed.Client.map`.

    A plain object: Dask does not look inside it for tasks or keys, so every tile's arguments
    travel as they are, and one ``map`` submits every tile in one message.
    """

    def __init__(self, f: Callable, args: tuple, kwargs: dict):
        self.f = f
        self.args = args
        self.kwargs = kwargs


def _run_call(call: _TileCall):
    return _guarded(call.f, *call.args, **call.kwargs)


def _run_on_client(client, jobs, key_prefix, retries, resources, finished, failed) -> None:
    """Submit every job to ``client`` and hand each outcome to ``finished(tile, value)`` or ``failed(row)``.

    The client's own cost per tile is constant: every task goes to the scheduler in one
    :meth:`~distributed.Client.map`, and :class:`distributed.as_completed` hands back each
    finished one as it finishes (a wait on every pending future at each completion would cost
    the client the square of the number of tiles).
    """
    import time

    from distributed import as_completed

    limits = _memory_limits(client)
    grace = _no_worker_grace(client)
    stamp = time.time_ns()
    futures: dict = {}
    try:
        listed = client.map(
            _run_call,
            [_TileCall(f, args, kwargs) for _, f, args, kwargs in jobs],
            key=[f"{key_prefix}-{name}-{stamp}" for name, *_ in jobs],
            pure=False,
            retries=retries,
            resources=resources,
        )
        futures = {fut: name for fut, (name, *_) in zip(listed, jobs)}
        pending = set(futures)
        ready = as_completed(futures, loop=client.loop)
        alone_since = None  # when the cluster was last seen without a worker
        last = time.monotonic()  # when a tile last finished, or the workers were last looked at
        while pending:
            done = ready.next_batch(block=False)
            if not done:
                with ready.thread_condition:
                    ready.thread_condition.wait(timeout=0.2)
                done = ready.next_batch(block=False)
            # the finished tiles' results in one round trip, not one each
            ok = [fut for fut in done if fut.status == "finished"]
            values = dict(zip(ok, client.gather(ok))) if ok else {}
            for fut in done:
                pending.discard(fut)
                name = futures[fut]
                if fut in values:
                    finished(name, values[fut])
                elif fut.status == "error":
                    err = fut.exception()
                    tb = "".join(traceback.format_tb(fut.traceback()))[-2000:]
                    limits |= _memory_limits(client)
                    failed({"tile": name, "error": describe_error(err, limits), "traceback": tb})
                else:
                    failed({"tile": name, "error": "cancelled (worker lost or task cancelled)", "traceback": ""})
            if not pending or done:
                alone_since = None
                last = time.monotonic()
                continue
            if time.monotonic() - last < 2.0:  # nothing finished for 2 s: look at the workers
                continue
            last = time.monotonic()
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
                lim = (
                    "; memory limit " + " / ".join(format_bytes(v) for v in sorted(limits)) + " per worker"
                    if limits
                    else ""
                )
                for fut in pending:
                    failed(
                        {
                            "tile": futures[fut],
                            "traceback": "",
                            "error": f"worker lost: no worker alive for {grace:.0f} s while the tile waited "
                            f"(workers killed as they start, e.g. at their memory limit){lim}",
                        }
                    )
                pending = set()
    except BaseException:  # Ctrl-C, or a callback that raised: no task keeps running for nothing
        client.cancel([fut for fut in futures if not fut.done()], force=True)
        raise
