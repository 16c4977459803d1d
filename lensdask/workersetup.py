"""The setup of every process that runs lensdask tile tasks: one Dask worker plugin.

:class:`WorkerSetup` is registered on every client that runs simulate or search
tasks (:func:`register`, called by :func:`lensdask.fanout.run_tiles` when it submits
them; ingest tasks apply it in their first task instead). On each worker, ``setup`` applies
:func:`apply_process_setup`:

* glibc's malloc thresholds (:func:`tune_malloc`), once per process;
* torch's and the BLAS libraries' thread counts (:func:`limit_threads`);
* a filter for a harmless sizeof warning (:func:`quiet_deep_profile_sizeof`);

and the plugin holds the worker's model cache (:meth:`WorkerSetup.cached`), emptied
in ``teardown``. Code running without a Dask worker (``client=None``, the tiles run in
this process) gets the same setup, applied once, from :func:`current_setup`, except that
it keeps the process's own thread counts.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
import os
import sys
import threading
from collections.abc import Callable, Hashable
from typing import Any

from distributed import WorkerPlugin

PLUGIN_NAME = "lensdask-worker-setup"
"""The name the plugin is registered under (one per worker)."""

MMAP_THRESHOLD = 32 * 2**20
"""Bytes: allocations below this come from the heap (glibc's largest dynamic value)."""
TRIM_THRESHOLD = 256 * 2**20
"""Bytes of free heap kept before it is returned to the operating system."""

_M_TRIM_THRESHOLD = -1  # <malloc.h>
_M_MMAP_THRESHOLD = -3


@functools.cache
def tune_malloc() -> bool:
    """Let glibc reuse freed memory for arrays and activations; applied once per process.

    A Dask nanny starts its worker with ``MALLOC_TRIM_THRESHOLD_=65536``
    (``distributed.nanny.pre-spawn-environ``). Setting that variable also pins
    glibc's mmap threshold at 128 KiB, so every array above it (the simulation's
    supersampled 135 x 135 px float64 grids, each activation tensor of a forward
    pass) becomes a fresh ``mmap`` whose pages the kernel zero-fills on first
    touch: rendering ran 2-4x and CPU inference ~40% slower in a worker than in a
    plain process (``benchmarks/RESULTS.md``). This restores thresholds like glibc's
    own dynamic ones (mmap :data:`MMAP_THRESHOLD`, trim :data:`TRIM_THRESHOLD`) with
    ``mallopt``. Keeping up to 256 MiB of freed heap per worker costs nothing the
    memory monitor would mind.

    Returns
    -------
    bool
        True when the thresholds were set (Linux with glibc), False elsewhere (a no-op).
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
            libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)
        )
    except (OSError, AttributeError):  # musl, or no libc found: nothing to tune
        return False


def environment_threads() -> int | None:
    """The thread count the environment gives this process: ``OMP_NUM_THREADS``, else None.

    A Dask nanny sets ``OMP_NUM_THREADS=1`` (with ``MKL_NUM_THREADS`` and
    ``OPENBLAS_NUM_THREADS``) for every worker it starts
    (``distributed.nanny.pre-spawn-environ``); the batch profiles may set it per job.
    """
    value = os.environ.get("OMP_NUM_THREADS", "").strip()
    try:
        n = int(value)
    except ValueError:
        return None
    return n if n >= 1 else None


def limit_threads(threads: int | None = None) -> int | None:
    """Make torch and the BLAS libraries use ``threads`` threads (default :func:`environment_threads`).

    torch and the BLAS libraries read the environment when they are loaded; a library
    loaded before the environment was set (a preload, an import in the parent) is set
    here too: torch only when it is already imported (a worker that never needs torch
    does not pay for importing it), BLAS through ``threadpoolctl`` when it is installed.
    Without a count (no argument, no ``OMP_NUM_THREADS``) nothing changes.

    Parameters
    ----------
    threads : int, optional
        Threads per library; None: :func:`environment_threads`.

    Returns
    -------
    int or None
        The count applied, or None when none was.
    """
    n = environment_threads() if threads is None else int(threads)
    if n is None:
        return None
    if n < 1:
        raise ValueError(f"threads must be at least 1, got {n}")
    torch = sys.modules.get("torch")
    if torch is not None and torch.get_num_threads() != n:
        torch.set_num_threads(n)
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - installed with scikit-learn
        return n
    threadpool_limits(limits=n, user_api="blas")
    return n


class _DropDeepProfileSizeof(logging.Filter):
    """Drop distributed's sizeof warning when the cause is Python's recursion limit."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not isinstance(sys.exc_info()[1], RecursionError)


_SIZEOF_FILTER = _DropDeepProfileSizeof()


def quiet_deep_profile_sizeof() -> None:
    """Silence a harmless warning the Dask performance report provokes on search workers.

    The report asks every worker for its statistical profile. Call stacks through
    torch and timm make that profile a tree deep enough that ``dask.sizeof``, measuring
    the message before sending it, exceeds Python's recursion limit; distributed then
    logs "Sizeof calculation for object of type 'dict' failed" and sends the message
    anyway. Only warnings raised by a ``RecursionError`` are dropped; any other sizeof
    failure is still logged.
    """
    logger = logging.getLogger("distributed.sizeof")
    if _SIZEOF_FILTER not in logger.filters:
        logger.addFilter(_SIZEOF_FILTER)


def apply_process_setup(threads: int | None = None, *, follow_environment: bool = True) -> dict:
    """Everything a process needs before it runs tile tasks; safe to call again.

    Parameters
    ----------
    threads : int, optional
        See :func:`limit_threads`.
    follow_environment : bool, default True
        Without ``threads``, apply ``OMP_NUM_THREADS`` (a worker's). False leaves the
        thread counts alone unless ``threads`` is given: the user's own process, where a
        ``LocalCluster`` may have left its workers' ``OMP_NUM_THREADS=1`` in ``os.environ``.

    Returns
    -------
    dict
        ``malloc_tuned`` (bool) and ``threads`` (the count applied, or None).
    """
    tuned = tune_malloc()
    applied = limit_threads(threads) if threads is not None or follow_environment else None
    quiet_deep_profile_sizeof()
    return {"malloc_tuned": tuned, "threads": applied}


class WorkerSetup(WorkerPlugin):
    """Sets up a Dask worker for lensdask tasks and holds its model cache.

    Registered once per client under :data:`PLUGIN_NAME` (``idempotent``: registering it
    again leaves every worker's instance, and its cache, in place). Each worker gets its
    own copy of the plugin: ``setup`` runs once per worker, when the plugin is registered
    or when the worker joins later.

    Parameters
    ----------
    threads : int, optional
        Threads for torch and BLAS on every worker; None: the worker's ``OMP_NUM_THREADS``
        (see :func:`limit_threads`).
    follow_environment : bool, default True
        See :func:`apply_process_setup`; False for this process's own setup, which runs
        tiles outside any worker and leaves the user's thread counts as they are.

    Attributes
    ----------
    setups : int
        How many times ``setup`` ran on this instance (1 on a worker).
    applied : dict or None
        What :func:`apply_process_setup` reported.
    """

    name = PLUGIN_NAME
    idempotent = True

    def __init__(self, threads: int | None = None, *, follow_environment: bool = True):
        self._start(threads, follow_environment)

    def _start(self, threads: int | None, follow_environment: bool = True) -> None:
        self.threads = threads
        self.follow_environment = follow_environment
        self.setups = 0
        self.applied: dict | None = None
        self._models: dict[Hashable, Any] = {}
        self._loads: dict[Hashable, int] = {}
        self._lock = threading.Lock()

    def __getstate__(self) -> dict:
        # what travels to the workers: the configuration only, never a cache or a lock
        return {"threads": self.threads, "follow_environment": self.follow_environment}

    def __setstate__(self, state: dict) -> None:
        self._start(state["threads"], state.get("follow_environment", True))

    def setup(self, worker=None) -> None:
        """Apply :func:`apply_process_setup` for this worker (``worker`` is unused: the
        settings belong to its process)."""
        with self._lock:
            self.applied = apply_process_setup(self.threads, follow_environment=self.follow_environment)
            self.setups += 1

    def teardown(self, worker=None) -> None:
        """Drop every cached model (and the CUDA memory they held, when torch used a GPU)."""
        with self._lock:
            self._models.clear()
        torch = sys.modules.get("torch")
        if torch is not None and torch.cuda.is_initialized():
            torch.cuda.empty_cache()

    def cached(self, key: Hashable, load: Callable[[], Any]) -> Any:
        """The value cached under ``key``, made by ``load()`` the first time it is asked for.

        Tasks on several threads of one worker may ask at once: ``load`` runs once per key.

        Parameters
        ----------
        key : hashable
            What identifies the model (e.g. its weights' hash and the device).
        load : callable
            Loads it; called without arguments, only when ``key`` is not cached.
        """
        with self._lock:
            if key not in self._models:
                self._models[key] = load()
                self._loads[key] = self._loads.get(key, 0) + 1
            return self._models[key]

    def cached_keys(self) -> list:
        """Keys of the models held now."""
        with self._lock:
            return list(self._models)

    def load_counts(self) -> dict:
        """How many times each key was loaded by this instance (1 each when the cache works)."""
        with self._lock:
            return dict(self._loads)


@functools.cache
def _process_setup(follow_environment: bool) -> WorkerSetup:
    setup = WorkerSetup(follow_environment=follow_environment)
    setup.setup(None)
    return setup


def current_setup(worker=None) -> WorkerSetup:
    """The :class:`WorkerSetup` of the worker running this code, applied and ready.

    Inside a task (or with ``worker``, e.g. ``client.run``'s ``dask_worker``) it is the
    instance registered on that worker. On a worker of a client that did not register the
    plugin, or outside any worker, it is this process's own instance, set up the first
    time it is asked for: the tiles then get the same setup and one cache per process.
    A nanny's worker owns its process and follows the ``OMP_NUM_THREADS`` the nanny gave
    it; any other process is the user's (a notebook, a CLI run, a ``processes=False``
    cluster) and keeps its thread counts: a ``LocalCluster`` started there leaves its
    workers' ``OMP_NUM_THREADS=1`` in ``os.environ``, and following it would train on
    one core.
    """
    if worker is None:
        from distributed import get_worker

        try:
            worker = get_worker()
        except ValueError:  # not in a task: this process runs the tiles itself
            return _process_setup(follow_environment=False)
    plugin = worker.plugins.get(PLUGIN_NAME)
    if isinstance(plugin, WorkerSetup):
        return plugin
    return _process_setup(follow_environment=getattr(worker, "nanny", None) is not None)


def register(client, threads: int | None = None) -> None:
    """Register :class:`WorkerSetup` on every worker of ``client``, now and joining later.

    Idempotent: workers that have it keep their instance (and their cached models).

    A worker that dies while the plugin is sent out (one killed at start for too little
    memory, say) breaks the scheduler's broadcast with a closed connection. The scheduler
    has stored the plugin before it broadcasts, so every other and every later worker still
    gets it; the lost worker is the fan-out's to report, as a failed tile. That error is
    logged here, not raised.
    """
    try:
        client.register_plugin(WorkerSetup(threads))
    except OSError as exc:  # distributed's CommClosedError is an OSError
        logging.getLogger(__name__).warning("a worker was lost while lensdask set the workers up: %s", exc)
