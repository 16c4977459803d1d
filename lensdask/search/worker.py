"""Models held by a worker: loaded once, on first use, and reused by every tile task.

The graph carries only the model directory and its weights' SHA-256; a worker
loads the checkpoint the first time a task asks for that hash and keeps it in the
model cache of its :class:`~lensdask.workersetup.WorkerSetup` plugin, so the model
is never serialised into the graph and never loaded twice per worker. The cache is
emptied when the worker closes. Without a Dask worker (tiles run in this process)
the process's own setup holds it.
"""

from __future__ import annotations


def get_model(model_dir: str, sha256: str, device: str = "auto"):
    """The model at ``model_dir`` on ``device``, loaded once per worker (or per process).

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

    Raises
    ------
    CheckpointError
        The weights in ``model_dir`` no longer have the hash ``sha256``.
    """
    from ..errors import CheckpointError
    from ..model.checkpoint import load_checkpoint
    from ..model.infer import resolve_device
    from ..workersetup import current_setup

    dev = resolve_device(device)

    def load():
        model, card = load_checkpoint(model_dir, device=str(dev))
        if card["sha256"] != sha256:
            raise CheckpointError(
                f"{model_dir} changed during the run: weights hash {card['sha256'][:12]}, expected {sha256[:12]}"
            )
        return model, card

    model, card = current_setup().cached((sha256, str(dev)), load)
    return model, card, dev


def loaded_models(dask_worker=None) -> list[tuple[str, str]]:
    """Keys ``(sha256, device)`` of the models this worker holds (for tests and diagnostics).

    ``client.run(loaded_models)`` passes each worker as ``dask_worker``; without one, this
    process's (or the running task's worker's) cache.
    """
    from ..workersetup import current_setup

    return list(current_setup(dask_worker).cached_keys())


def load_counts(dask_worker=None) -> dict[str, int]:
    """How many times this worker loaded each model (weights hash -> loads); 1 when the cache works.

    ``client.run(load_counts)`` passes each worker as ``dask_worker`` (see :func:`loaded_models`).
    """
    from ..workersetup import current_setup

    counts: dict[str, int] = {}
    for (sha256, _device), n in current_setup(dask_worker).load_counts().items():
        counts[sha256] = counts.get(sha256, 0) + n
    return counts
