"""Models held by a worker process: loaded once, on first use, and reused by every tile task.

The graph carries only the model directory and its weights' SHA-256; a worker
loads the checkpoint the first time a task asks for that hash and keeps it, so
the model is never serialised into the graph and never loaded twice per process.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import sys
import threading

_MODELS: dict[tuple[str, str], tuple[object, dict]] = {}
_LOADS: dict[str, int] = {}
_LOCK = threading.Lock()
_MALLOC_TUNED: list[bool] = []

MMAP_THRESHOLD = 32 * 2**20
"""Bytes: allocations below this come from the heap (glibc's largest dynamic value)."""
TRIM_THRESHOLD = 256 * 2**20
"""Bytes of free heap kept before it is returned to the operating system."""


def tune_malloc() -> bool:
    """Let glibc reuse freed memory for the model's activations, once per process.

    A Dask nanny starts its worker with ``MALLOC_TRIM_THRESHOLD_=65536``
    (``distributed.nanny.pre-spawn-environ``). Setting that variable also pins
    glibc's mmap threshold at 128 KiB, so every activation tensor of a forward
    pass becomes a fresh ``mmap`` whose pages the kernel zero-fills on first
    touch: CPU inference then runs ~40% slower (``benchmarks/RESULTS.md``).
    This restores thresholds like glibc's own dynamic ones (mmap
    :data:`MMAP_THRESHOLD`, trim :data:`TRIM_THRESHOLD`) with ``mallopt``.
    A search worker's memory is the model plus a few batches, so keeping up to
    256 MiB of freed heap costs nothing the memory monitor would mind.

    Returns
    -------
    bool
        True when the thresholds were set (Linux with glibc), False elsewhere.
    """
    if _MALLOC_TUNED:
        return _MALLOC_TUNED[0]
    ok = False
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            m_trim_threshold, m_mmap_threshold = -1, -3  # <malloc.h>
            ok = bool(libc.mallopt(m_mmap_threshold, MMAP_THRESHOLD)) and bool(
                libc.mallopt(m_trim_threshold, TRIM_THRESHOLD)
            )
        except (OSError, AttributeError):  # musl or no libc found: nothing to tune
            ok = False
    _MALLOC_TUNED.append(ok)
    return ok


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


def get_model(model_dir: str, sha256: str, device: str = "auto"):
    """The model at ``model_dir`` on ``device``, loaded once per process.

    Parameters
    ----------
    model_dir : str
        Checkpoint directory.
    sha256 : str
        Expected hash of the weights (cache key; a different hash reloads).
    device : str
        ``"auto"``, ``"cpu"`` or ``"cuda"``.

    Returns
    -------
    (torch.nn.Module, dict, torch.device)
        The model in eval mode, its card, and the device it lives on.
    """
    from ..errors import CheckpointError
    from ..model.checkpoint import load_checkpoint
    from ..model.infer import resolve_device

    dev = resolve_device(device)
    key = (sha256, str(dev))
    with _LOCK:
        tune_malloc()
        quiet_deep_profile_sizeof()
        if key not in _MODELS:
            model, card = load_checkpoint(model_dir, device=str(dev))
            if card["sha256"] != sha256:
                raise CheckpointError(
                    f"{model_dir} changed during the run: weights hash {card['sha256'][:12]}, "
                    f"expected {sha256[:12]}"
                )
            _MODELS[key] = (model, card)
            _LOADS[sha256] = _LOADS.get(sha256, 0) + 1
    model, card = _MODELS[key]
    return model, card, dev


def loaded_models() -> list[tuple[str, str]]:
    """Keys ``(sha256, device)`` of the models this process holds (for tests and diagnostics)."""
    return list(_MODELS)


def load_counts() -> dict[str, int]:
    """How many times this process loaded each model (weights hash -> loads); 1 when the cache works."""
    return dict(_LOADS)
