"""Models held by a worker process: loaded once, on first use, and reused by every tile task.

The graph carries only the model directory and its weights' SHA-256; a worker
loads the checkpoint the first time a task asks for that hash and keeps it, so
the model is never serialised into the graph and never loaded twice per process.
"""

from __future__ import annotations

import threading

_MODELS: dict[tuple[str, str], tuple[object, dict]] = {}
_LOADS: dict[str, int] = {}
_LOCK = threading.Lock()


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
