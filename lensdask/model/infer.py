"""Score cutouts with a trained model: device choice, NaN handling, batching."""

from __future__ import annotations

import contextlib
import threading
from typing import cast

import numpy as np
import torch

from .. import config
from ..errors import LensdaskError, ModelMismatchError
from ..normalise import nonfinite_rows, normalise


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


BATCH_SIZES = {"cpu": 64, "cuda": 512}
"""Cutouts per forward pass when the batch size is ``"auto"``, by device type. On a CPU small
batches keep a ViT's activations in cache (``benchmarks/RESULTS.md``); a GPU wants large ones."""


def resolve_batch_size(batch_size: int | str | None, device: torch.device | str) -> int:
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


class Staged:
    """Model inputs already on their way to the device: a tensor there and the event that marks it ready.

    Made by :class:`DeviceStager`; :func:`forward_proba` takes one wherever it takes an array.
    """

    def __init__(self, tensor: torch.Tensor, ready=None):
        self.tensor = tensor
        self.ready = ready  # torch.cuda.Event of the copy, None when the tensor is ready now

    @property
    def shape(self) -> tuple:
        return tuple(self.tensor.shape)

    def __len__(self) -> int:
        return int(self.tensor.shape[0])

    def get(self) -> torch.Tensor:
        """The tensor, once the current stream has been told to wait for its copy."""
        if self.ready is not None:
            stream = torch.cuda.current_stream(self.tensor.device)
            stream.wait_event(self.ready)
            self.tensor.record_stream(stream)  # allocated on the copy stream, used on this one
            self.ready = None
        return self.tensor


class DeviceStager:
    """Copies batches of host arrays to a device ahead of their use.

    On CUDA every batch is copied into one of ``buffers`` page-locked (pinned) host buffers,
    reused rather than allocated per batch, and from there to the GPU by a non-blocking copy
    on a stream of its own, so the copy of the next batch runs while the model computes on
    this one. A buffer is refilled only once its last copy has finished. On a CPU a batch is
    wrapped as a tensor without a copy. One stager per thread.
    """

    def __init__(self, device: torch.device, buffers: int = 2):
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        self.pinned: list[torch.Tensor | None] = [None] * max(1, int(buffers))
        self.done: list = [None] * len(self.pinned)
        self.next = 0
        self.stream = torch.cuda.Stream(self.device) if self.cuda else None
        self.allocations = 0  # pinned buffers allocated so far (a handful, whatever the number of batches)

    def __call__(self, x: np.ndarray) -> Staged:
        x = np.ascontiguousarray(x, dtype=np.float32)
        if not self.cuda:
            return Staged(torch.from_numpy(x).to(self.device))
        k = self.next
        self.next = (k + 1) % len(self.pinned)
        if self.done[k] is not None:
            self.done[k].synchronize()  # its previous copy has left the buffer
        buf = self.pinned[k]
        if buf is None or buf.numel() < x.size:
            buf = torch.empty(max(x.size, 1), dtype=torch.float32, pin_memory=True)
            self.pinned[k] = buf
            self.allocations += 1
        host = buf[: x.size].view(x.shape)
        host.numpy()[...] = x
        with torch.cuda.stream(self.stream):
            dev = host.to(self.device, non_blocking=True)
            event = torch.cuda.Event()
            event.record(self.stream)
        self.done[k] = event
        return Staged(dev, event)


_stagers = threading.local()


def stager(device: torch.device) -> DeviceStager:
    """This thread's :class:`DeviceStager` for ``device``."""
    device = torch.device(device)
    cache = getattr(_stagers, "by_device", None)
    if cache is None:
        cache = _stagers.by_device = {}
    if str(device) not in cache:
        cache[str(device)] = DeviceStager(device)
    return cache[str(device)]


def stage_inputs(batches, device):
    """Stage the model inputs of prepared batches on ``device`` as they stream by.

    ``batches`` yields tuples whose first item is an array of model inputs or a list of them
    (:func:`lensdask.search.score.prepare_batch`, ``prepare_inputs``); each array becomes a
    :class:`Staged`. Run it in the thread that reads (inside the search's prefetch), so that
    reading, normalising and the host-to-device copy of the next batch all overlap the
    forward pass of this one.
    """
    for item in batches:
        xs = item[0]
        st = stager(device)
        staged = [st(x) for x in xs] if isinstance(xs, (list, tuple)) else st(xs)
        yield (staged, *item[1:])


def _device_batches(x, batch_size: int, device: torch.device):
    """Slices of ``batch_size`` rows of ``x`` as device tensors; on CUDA the next slice is copied while this one is
    used."""
    if isinstance(x, Staged):
        t = x.get()
        for start in range(0, t.shape[0], batch_size):
            yield t[start : start + batch_size]
        return
    st = stager(device)
    pending = None
    for start in range(0, x.shape[0], batch_size):
        nxt = st(x[start : start + batch_size])  # issued before the previous slice is computed on
        if pending is not None:
            yield pending.get()
        pending = nxt
    if pending is not None:
        yield pending.get()


def forward_proba(
    model: torch.nn.Module,
    x,
    *,
    batch_size: int,
    device: torch.device,
    size: int | None = None,
    precision: str = "auto",
) -> np.ndarray:
    """Softmax probabilities of already normalised, finite inputs, (n, n_classes) float32.

    ``x``: (n, bands, s, s) array, or a :class:`Staged` batch already sent to ``device``.
    ``size``: resample the stamps to this side first (see :func:`resize`).
    ``precision``: see :data:`PRECISIONS`.
    """
    out = []
    device = torch.device(device)
    with torch.inference_mode(), autocast(device, precision):
        for xb in _device_batches(x, batch_size, device):
            logits = model(resize(xb, size)).float()
            out.append(torch.softmax(logits, dim=1).cpu().numpy())
    if not out:
        n_classes = int(cast(int, model.num_classes))  # an int attribute of timm classifiers
        return np.zeros((0, n_classes), dtype=np.float32)
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
