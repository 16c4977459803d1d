"""Score cutouts with a trained model: device choice, NaN handling, batching."""

from __future__ import annotations

import contextlib

import numpy as np
import torch

from .. import config
from ..errors import LensdaskError, ModelMismatchError
from .normalise import normalise


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """The torch device to run on.

    Parameters
    ----------
    device : str, torch.device or None
        ``None`` reads config ``search.device``; ``"auto"`` picks CUDA when a GPU
        is visible, else the CPU; anything else is passed to ``torch.device``.

    Raises
    ------
    LensdaskError
        CUDA asked for but not available, or an unknown device string.
    """
    device = config.get("search.device", device)
    if isinstance(device, torch.device):
        dev = device
    elif str(device).lower() == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        try:
            dev = torch.device(str(device))
        except (RuntimeError, ValueError) as exc:
            raise LensdaskError(f"unknown device {device!r}: use 'auto', 'cpu', 'cuda' or 'cuda:N'") from exc
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise LensdaskError(f"device {str(device)!r} requested but torch sees no CUDA GPU; use 'cpu' or 'auto'")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise LensdaskError(f"device {str(device)!r}: only {torch.cuda.device_count()} CUDA device(s) visible")
    return dev


def nonfinite_rows(images: np.ndarray) -> np.ndarray:
    """Boolean (n,) mask of the stamps holding any NaN or infinite pixel."""
    images = np.asarray(images)
    if images.shape[0] == 0:
        return np.zeros(0, dtype=bool)
    return ~np.isfinite(images.reshape(images.shape[0], -1)).all(axis=1)


BATCH_SIZES = {"cpu": 64, "cuda": 512}
"""Cutouts per forward pass when the batch size is ``"auto"``, by device type. On a CPU small
batches keep a ViT's activations in cache (``benchmarks/RESULTS.md``); a GPU wants large ones."""


def resolve_batch_size(batch_size: int | str | None, device: torch.device) -> int:
    """Cutouts per forward pass: ``batch_size``, or for ``None`` / ``"auto"`` the :data:`BATCH_SIZES` default.

    Raises
    ------
    LensdaskError
        Not a positive integer or ``"auto"``.
    """
    if batch_size is None or str(batch_size).lower() == "auto":
        return BATCH_SIZES.get(torch.device(device).type, BATCH_SIZES["cpu"])
    try:
        n = int(batch_size)
    except (TypeError, ValueError):
        n = 0
    if n < 1 or str(n) != str(batch_size).strip():
        raise LensdaskError(f"batch size must be a positive integer or 'auto', got {batch_size!r}")
    return n


PRECISIONS = ("auto", "fp32", "bf16")
"""Inference precisions: ``auto`` (bf16 autocast on CUDA, fp32 elsewhere), ``fp32``, ``bf16``."""


def autocast(device: torch.device, precision: str = "auto"):
    """The autocast context for ``precision`` on ``device`` (see :data:`PRECISIONS`)."""
    if precision not in PRECISIONS:
        raise LensdaskError(f"unknown precision {precision!r}; use one of {', '.join(PRECISIONS)}")
    if precision == "bf16" or (precision == "auto" and device.type == "cuda"):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def resize(x: torch.Tensor, size: int | None) -> torch.Tensor:
    """Resample (n, bands, s, s) stamps to ``size`` px (bilinear, antialiased); no-op if None or equal."""
    if size is None or int(size) == x.shape[-1]:
        return x
    return torch.nn.functional.interpolate(
        x, size=(int(size), int(size)), mode="bilinear", align_corners=False, antialias=True
    )


def input_size(card: dict) -> int | None:
    """The side the model takes when it differs from the stamp (card ``input_size``), else None."""
    size = card.get("input_size")
    if size is None or int(size) == int(card["stamp"]):
        return None
    return int(size)


def forward_proba(
    model: torch.nn.Module,
    x: np.ndarray,
    *,
    batch_size: int,
    device: torch.device,
    size: int | None = None,
    precision: str = "auto",
) -> np.ndarray:
    """Softmax probabilities of already normalised, finite inputs, (n, n_classes) float32.

    ``size``: resample the stamps to this side first (see :func:`resize`).
    ``precision``: see :data:`PRECISIONS`.
    """
    out = []
    with torch.inference_mode(), autocast(device, precision):
        for start in range(0, x.shape[0], batch_size):
            xb = torch.from_numpy(np.ascontiguousarray(x[start : start + batch_size]))
            if device.type == "cuda":
                xb = xb.pin_memory().to(device, non_blocking=True)
            else:
                xb = xb.to(device)
            logits = model(resize(xb, size)).float()
            out.append(torch.softmax(logits, dim=1).cpu().numpy())
    if not out:
        return np.zeros((0, int(model.num_classes)), dtype=np.float32)
    return np.concatenate(out).astype(np.float32, copy=False)


def predict_proba(
    model: torch.nn.Module,
    card: dict,
    images: np.ndarray,
    *,
    batch_size: int = 256,
    device: str | torch.device | None = "cpu",
) -> np.ndarray:
    """Class probabilities for raw cutouts.

    Parameters
    ----------
    model : torch.nn.Module
        A model from :func:`lensdask.model.load_checkpoint` (moved to ``device``
        and put in eval mode here).
    card : dict
        Its model card; ``normalisation`` is applied to ``images`` batch by batch,
        then, if the card has an ``input_size`` other than its ``stamp``, the
        stamps are resampled to it exactly as in training.
    images : numpy.ndarray
        (n, n_bands, stamp, stamp) pixel values, bands in the card's order.
    batch_size : int
        Cutouts per forward pass.
    device : str or torch.device
        See :func:`resolve_device`. CUDA runs under bf16 autocast.

    Returns
    -------
    numpy.ndarray
        (n, n_classes) float32 softmax probabilities; rows whose input holds a
        non-finite pixel are NaN and never reach the model.

    Raises
    ------
    ModelMismatchError
        ``images`` do not have the card's band count or stamp size.
    """
    images = np.asarray(images)
    n_classes = len(card["classes"])
    n_bands = len(card["bands"])
    stamp = int(card["stamp"])
    if images.ndim != 4 or images.shape[1:] != (n_bands, stamp, stamp):
        raise ModelMismatchError(
            f"images have shape {images.shape}; model {card.get('model_id', '?')} expects "
            f"(n, {n_bands}, {stamp}, {stamp}) for bands {card['bands']}"
        )
    dev = resolve_device(device)
    model.eval()
    if next(model.parameters()).device != dev:
        model.to(dev)
    batch_size = max(1, int(batch_size))
    bad = nonfinite_rows(images)
    probs = np.full((images.shape[0], n_classes), np.nan, dtype=np.float32)
    good = np.flatnonzero(~bad)
    spec = card.get("normalisation")
    size = input_size(card)
    for start in range(0, good.size, batch_size):
        idx = good[start : start + batch_size]
        x = normalise(images[idx], spec)
        probs[idx] = forward_proba(model, x, batch_size=batch_size, device=dev, size=size)
    return probs
