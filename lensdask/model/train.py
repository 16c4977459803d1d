"""Train a lens classifier on a labelled cutout store.

The store is streamed in shuffled blocks (:mod:`lensdask.model.data`), never
loaded whole unless it fits the cache. Rows are split into training and
validation sets by seed, stratified by class. Training uses AdamW with a cosine
learning-rate schedule and a short linear warm-up, cross-entropy weighted by
inverse class frequency (``balance``), and augmentations that respect the sky:
the eight symmetries of the pixel grid and sub-pixel Fourier shifts. On CUDA
the forward pass runs under bf16 autocast, optionally ``torch.compile``-d.

After every epoch the full training state (weights, optimiser, schedule,
best epoch so far, history) is written to ``OUT/train_state.pt``; ``resume=True``
continues from it, and because each epoch's randomness depends only on
``(seed, epoch)`` a resumed run ends with the same weights as an uninterrupted
one. The epoch with the best validation AUROC (lens against all other classes;
ties go to the lower validation loss) is kept and saved with
:func:`~lensdask.model.checkpoint.save_checkpoint`; ``patience`` epochs without
improvement stop training early.

On the CPU, a fixed seed gives bit-identical weights for the same thread count.
"""

from __future__ import annotations

import copy
import math
import os
import pathlib
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from .. import config
from ..deprecation import renamed_keywords
from ..errors import CheckpointError, LensdaskError
from ..normalise import normalisation_spec
from ..simulate.galaxies import training_galaxies
from ..store import CutoutStore, open_store, provenance
from .architectures import arch_kwargs, build_model
from .checkpoint import read_card, save_checkpoint
from .data import TRAIN, StoreBatches, augment, class_weights, epoch_torch_generator
from .infer import autocast, resize, resolve_device
from .report import classifier_report

STATE = "train_state.pt"
"""Training-state file written into the output directory after every epoch."""


@renamed_keywords(data="store")
def train(
    store: str | os.PathLike,
    out: str | os.PathLike,
    *,
    arch: str | None = None,
    epochs: int | None = None,
    batch_size: int | None = None,
    learning_rate: float | None = None,
    device: str | None = None,
    seed: int | None = None,
    validation_fraction: float | None = None,
    pretrained: str | os.PathLike | None = None,
    resize_to: int | None = None,
    patch_size: int | None = None,
    patience: int | None = None,
    balance: bool | None = None,
    shift_px: float | None = None,
    compile: bool | None = None,
    resume: bool = False,
    time_limit: float | None = None,
    command: str | None = None,
    progress: bool = True,
) -> dict:
    """Train a classifier on a labelled cutout store and save a checkpoint.

    Parameters
    ----------
    store : str or path
        Labelled cutout store (path or URL), e.g. from ``lensdask simulate``. (``data=`` is its
        deprecated old name.)
        Its ``classes`` are the model's classes: ``lens`` plus any number of
        false-positive classes (rings, spirals, mergers, artefacts...). Rows with
        label -1 (unknown) or non-finite pixels are skipped.
    out : str or path
        Checkpoint directory to write.
    arch : str, optional
        Architecture name (config ``train.arch``), see :data:`ARCHITECTURES`.
    epochs, batch_size : int, optional
        Config ``train.epochs``, ``train.batch_size``.
    learning_rate : float, optional
        Peak AdamW learning rate (config ``train.learning_rate``); weight decay
        is config ``train.weight_decay``.
    device : str, optional
        ``"auto"`` (CUDA when present), ``"cpu"``, ``"cuda"`` (config ``train.device``).
    seed : int, optional
        Seeds the split, initialisation, batch order and augmentation (config ``train.seed``).
    validation_fraction : float, optional
        Fraction of each class held out for validation (config
        ``train.validation_fraction``); 0 trains on everything and keeps the last epoch.
    pretrained : str or path, optional
        Local weights file or lensdask checkpoint to start from (config
        ``train.pretrained``); see :mod:`lensdask.model.pretrained`. Never downloaded.
    resize_to : int, optional
        Model input side in pixels when it should differ from the store's stamp
        (config ``train.resize``); stamps are resampled on the fly, and search
        does the same from the card's ``input_size``.
    patch_size : int, optional
        Overrides the architecture's patch side (config ``train.patch_size``).
    patience : int, optional
        Stop after this many epochs without a better validation AUROC; 0 never
        stops early (config ``train.patience``).
    balance : bool, optional
        Weight the loss by inverse class frequency (config ``train.balance``).
    shift_px : float, optional
        Largest sub-pixel shift of the augmentation, pixels; 0 disables it
        (config ``train.augment.shift_px``).
    compile : bool, optional
        ``torch.compile`` the model (config ``train.compile``); worth it on a GPU.
    resume : bool
        Continue from ``OUT/train_state.pt`` (written after every epoch). The
        data, architecture and hyper-parameters must be the same.
    time_limit : float, seconds, optional
        Wall-clock seconds for this call's epochs: an epoch that would end past it (judged by
        the mean wall time of the epochs so far, validation included) is not started; the
        best epoch so far is saved as the checkpoint, and the training state is kept, so a
        later call with ``resume`` goes on (config ``train.keep_state`` aside). At least one
        epoch runs when none has. Not part of what a resumed run must share. The card's
        ``training`` records ``wall_seconds`` (every epoch, every call) and
        ``stopped_at_time_limit``.
    command : str, optional
        Recorded in the card; defaults to ``sys.argv``.
    progress : bool
        Show tqdm progress bars.

    Returns
    -------
    dict
        The model card as saved (see :mod:`lensdask.model.checkpoint`); its
        ``metrics`` are :func:`~lensdask.model.report.classifier_report` on the
        validation rows at the best epoch.

    Raises
    ------
    LensdaskError
        The store has fewer than two classes among its labelled rows, no lens
        rows, too few rows; bad hyper-parameters; a loss that is not finite;
        ``resume`` without a state file or with different settings.
    CheckpointError, ModelMismatchError
        Unreadable pretrained weights, or weights for other bands.
    """
    s = _resolve_settings(
        arch=arch,
        epochs=epochs,
        batch_size=batch_size,
        learning_rate=learning_rate,
        device=device,
        seed=seed,
        validation_fraction=validation_fraction,
        pretrained=pretrained,
        resize_to=resize_to,
        patch_size=patch_size,
        patience=patience,
        balance=balance,
        shift_px=shift_px,
        compile=compile,
    )
    dev = resolve_device(s.device)
    if s.num_threads > 0:
        torch.set_num_threads(s.num_threads)
    out = pathlib.Path(os.fspath(out))
    d = _open_data(store, s)
    net = _build_model(d, s, dev, resume)
    if time_limit is not None and not time_limit >= 0:
        raise LensdaskError(f"time_limit must be >= 0 seconds, got {time_limit}")
    deadline = None if time_limit is None else time.perf_counter() + float(time_limit)
    run = _Run(s, dev, d, net, _build_optimiser(net.model, d.rows, s, dev), out / STATE, progress, deadline)
    fingerprint = _resume_settings(run)
    p = _load_state(run, fingerprint) if resume else _Progress()
    _run_epochs(run, p, fingerprint)
    card = _model_card(run, p, _best_metrics(run, p), command)
    card["training"]["time_limit"] = time_limit
    card = save_checkpoint(net.model.to("cpu"), out, card)
    if not config.get("train.keep_state") and not p.stopped_at_time_limit:
        run.state_path.unlink(missing_ok=True)
    return card


# -- settings ---------------------------------------------------------------------------
@dataclass(frozen=True)
class _Settings:
    """The hyper-parameters of one run: arguments, else configuration, checked.

    Attributes
    ----------
    arch : str
        Architecture name.
    epochs, batch_size : int
        Epochs to run, rows per gradient step.
    learning_rate, weight_decay : float
        Peak AdamW learning rate and weight decay.
    seed : int
        Seeds the split, initialisation, batch order and augmentation.
    validation_fraction : float
        Fraction of each class held out, in [0, 1).
    device : str
        Device request (``"auto"``, ``"cpu"``, ``"cuda"``...), resolved later.
    num_threads : int
        Torch CPU threads; 0 leaves torch's default.
    pretrained : str or path or None
        Starting weights.
    resize_to, patch_size : int or None
        Model input side, pixels, when it differs from the stamp; patch side, pixels.
    patience : int
        Epochs without a better validation AUROC before stopping; 0 never stops.
    balance : bool
        Weight the loss by inverse class frequency.
    shift_px : float
        Largest sub-pixel shift of the augmentation, pixels.
    dihedral : bool
        Augment with the eight symmetries of the pixel grid.
    compile : bool
        ``torch.compile`` the model.
    buffer_rows : int
        Rows held by the streaming shuffle buffer.
    cache_bytes : float
        Largest store, bytes, that is read whole into memory.
    normalisation : dict
        The pixel normalisation (:func:`~lensdask.normalise.normalisation_spec`).
    """

    arch: str
    epochs: int
    batch_size: int
    learning_rate: float
    weight_decay: float
    seed: int
    validation_fraction: float
    device: str
    num_threads: int
    pretrained: str | os.PathLike | None
    resize_to: int | None
    patch_size: int | None
    patience: int
    balance: bool
    shift_px: float
    dihedral: bool
    compile: bool
    buffer_rows: int
    cache_bytes: float
    normalisation: dict

    @property
    def augmentation(self) -> str:
        """The augmentation in words, as the model card records it."""
        return ("dihedral (flips, 90 degree rotations)" if self.dihedral else "none") + (
            f"; Fourier sub-pixel shifts up to {self.shift_px:g} px" if self.shift_px > 0 else ""
        )


def _config_or_none(key: str):
    """The configured ``lensdask.<key>``, or None where it is not set."""
    import dask.config

    return dask.config.get(f"lensdask.{key}", default=None)


def _resolve_settings(
    *,
    arch,
    epochs,
    batch_size,
    learning_rate,
    device,
    seed,
    validation_fraction,
    pretrained,
    resize_to,
    patch_size,
    patience,
    balance,
    shift_px,
    compile,
) -> _Settings:
    """Fill :func:`train`'s hyper-parameters left at None from the configuration, and check them.

    Parameters
    ----------
    arch, epochs, batch_size, learning_rate, device, seed, validation_fraction, pretrained
        As :func:`train` takes them.
    resize_to, patch_size, patience, balance, shift_px, compile
        As :func:`train` takes them.

    Returns
    -------
    _Settings

    Raises
    ------
    LensdaskError
        A value out of range, or an unknown architecture (before any I/O).
    """
    s = _Settings(
        arch=config.get("train.arch", arch),
        epochs=int(config.get("train.epochs", epochs)),
        batch_size=int(config.get("train.batch_size", batch_size)),
        learning_rate=float(config.get("train.learning_rate", learning_rate)),
        weight_decay=float(config.get("train.weight_decay")),
        seed=int(config.get("train.seed", seed)),
        validation_fraction=float(config.get("train.validation_fraction", validation_fraction)),
        device=config.get("train.device", device),
        num_threads=int(config.get("train.num_threads") or 0),
        pretrained=pretrained if pretrained is not None else _config_or_none("train.pretrained"),
        resize_to=resize_to if resize_to is not None else _config_or_none("train.resize"),
        patch_size=patch_size if patch_size is not None else _config_or_none("train.patch_size"),
        patience=int(config.get("train.patience", patience)),
        balance=bool(config.get("train.balance", balance)),
        shift_px=float(config.get("train.augment.shift_px", shift_px)),
        dihedral=bool(config.get("train.augment.dihedral")),
        compile=bool(config.get("train.compile", compile)),
        buffer_rows=int(config.get("train.shuffle_buffer")),
        cache_bytes=float(config.get("train.cache_gb")) * 1e9,
        normalisation=normalisation_spec(_config_or_none("train.normalisation")),
    )
    if s.epochs < 1 or s.batch_size < 1:
        raise LensdaskError(f"epochs ({s.epochs}) and batch_size ({s.batch_size}) must be >= 1")
    if not 0 <= s.validation_fraction < 1:
        raise LensdaskError(f"validation_fraction must lie in [0, 1), got {s.validation_fraction}")
    if not s.learning_rate >= 0 or s.patience < 0 or s.shift_px < 0:
        raise LensdaskError(
            f"learning_rate ({s.learning_rate}), patience ({s.patience}) and shift_px ({s.shift_px}) must be >= 0"
        )
    try:  # an unknown architecture fails before any I/O
        arch_kwargs(s.arch, in_chans=1, img_size=max(int(s.resize_to or 0), 64), num_classes=2, patch_size=s.patch_size)
    except ValueError as exc:
        raise LensdaskError(str(exc)) from exc
    return s


# -- data and model ---------------------------------------------------------------------
@dataclass
class _Data:
    """The labelled store and its rows, split into training and validation.

    Attributes
    ----------
    store : CutoutStore
    rows : StoreBatches
        Batches of the training rows, and the validation rows.
    counts : numpy.ndarray
        Labelled rows of each class (all rows, both sets).
    present : list of int
        The classes with labelled rows.
    """

    store: CutoutStore
    rows: StoreBatches
    counts: np.ndarray
    present: list

    @property
    def lens_class(self) -> int:
        return self.store.lens_class


def _open_data(data, s: _Settings) -> _Data:
    """Open the store, split its rows, and refuse a store that cannot train a lens finder.

    Raises
    ------
    LensdaskError
        No class named ``lens``, fewer than two classes with labelled rows, no lens rows, or
        fewer than two training rows.
    """
    store = open_store(data)
    if "lens" not in store.classes:
        raise LensdaskError(f"store {store.url!r} has classes {store.classes}, none named 'lens'")
    rows = StoreBatches(
        store, s.normalisation, s.validation_fraction, s.seed, buffer_rows=s.buffer_rows, cache_bytes=s.cache_bytes
    )
    counts = np.bincount(rows.labels[rows.labels >= 0], minlength=len(store.classes))
    present = [c for c in range(len(store.classes)) if counts[c] > 0]
    if len(present) < 2:
        names = [store.classes[c] for c in present]
        raise LensdaskError(
            f"store {store.url!r} has labelled rows of {len(present)} class(es) {names} "
            f"(of {store.classes}); training needs at least two"
        )
    if store.lens_class not in present:
        raise LensdaskError(f"store {store.url!r} has no rows labelled 'lens'; cannot train a lens finder")
    if rows.n_train < 2:
        raise LensdaskError(f"store {store.url!r} has only {rows.n_train} training rows")
    return _Data(store, rows, counts, present)


@dataclass
class _Model:
    """The network and how its input is sized.

    Attributes
    ----------
    model : torch.nn.Module
        On the training device.
    arch_kwargs : dict
        What rebuilds it (:func:`~lensdask.model.architectures.build_model`).
    input_side : int
        Model input side, pixels.
    size : int or None
        ``input_side`` where stamps are resampled to it, else None (the stamp's side).
    pretrained_info : dict or None
        What :func:`~lensdask.model.pretrained.load_pretrained` loaded.
    """

    model: torch.nn.Module
    arch_kwargs: dict
    input_side: int
    size: int | None
    pretrained_info: dict | None


def _build_model(d: _Data, s: _Settings, dev: torch.device, resume: bool) -> _Model:
    """Build the seeded network for the store's bands and classes, load pretrained weights, move it to ``dev``."""
    store = d.store
    input_side = int(s.resize_to) if s.resize_to else int(store.stamp)
    kwargs = arch_kwargs(
        s.arch, in_chans=len(store.bands), img_size=input_side, num_classes=len(store.classes), patch_size=s.patch_size
    )
    torch.manual_seed(s.seed)
    model = build_model(kwargs)
    pretrained_info = None
    if s.pretrained and not resume:
        from .pretrained import load_pretrained

        pretrained_info = load_pretrained(model, s.pretrained, list(store.bands), list(store.classes))
    model.to(dev)
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    size = input_side if input_side != store.stamp else None
    return _Model(model, kwargs, input_side, size, pretrained_info)


@dataclass
class _Optimiser:
    """What a gradient step needs besides the batch.

    Attributes
    ----------
    forward : callable
        The model, or its ``torch.compile``-d wrapper.
    opt : torch.optim.AdamW
    sched : torch.optim.lr_scheduler.LambdaLR
        Stepped once per batch.
    loss_fn : torch.nn.CrossEntropyLoss
    class_weights : torch.Tensor or None
        Loss weight of each class (inverse training frequency), on the CPU; None without ``balance``.
    steps_per_epoch : int
    """

    forward: Callable[[torch.Tensor], torch.Tensor]
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LambdaLR
    loss_fn: torch.nn.CrossEntropyLoss
    class_weights: torch.Tensor | None
    steps_per_epoch: int


def _lr_lambda(total_steps: int, warmup: int):
    """Learning-rate factor by step: linear warm-up over ``warmup`` steps, then cosine decay to 0 at ``total_steps``."""

    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total_steps - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return f


def _build_optimiser(model: torch.nn.Module, rows: StoreBatches, s: _Settings, dev: torch.device) -> _Optimiser:
    """AdamW with a cosine schedule and 5 % linear warm-up, and the (class-weighted) cross-entropy."""
    opt = torch.optim.AdamW(model.parameters(), lr=s.learning_rate, weight_decay=s.weight_decay)
    steps_per_epoch = math.ceil(rows.n_train / s.batch_size)
    total = steps_per_epoch * s.epochs
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(total, max(1, int(0.05 * total))))
    weights = torch.tensor(class_weights(rows.class_counts(TRAIN)), dtype=torch.float32) if s.balance else None
    loss_fn = torch.nn.CrossEntropyLoss(weight=weights.to(dev) if weights is not None else None)
    forward = torch.compile(model) if s.compile else model
    return _Optimiser(forward, opt, sched, loss_fn, weights, steps_per_epoch)


# -- the loop ---------------------------------------------------------------------------
@dataclass
class _Run:
    """What stays fixed while a run trains.

    Attributes
    ----------
    settings : _Settings
    device : torch.device
    data : _Data
    net : _Model
    optimiser : _Optimiser
    state_path : pathlib.Path
        The training-state file, ``OUT/train_state.pt``.
    progress : bool
        Show tqdm progress bars.
    deadline : float or None
        ``time.perf_counter()`` by which this call's epochs must end (``time_limit``); None: no limit.
    """

    settings: _Settings
    device: torch.device
    data: _Data
    net: _Model
    optimiser: _Optimiser
    state_path: pathlib.Path
    progress: bool
    deadline: float | None = None


@dataclass
class _Progress:
    """Where a run stands after its last finished epoch (what the state file holds).

    Attributes
    ----------
    epoch : int
        Epochs finished.
    history : list of dict
        Per epoch: ``epoch``, ``loss``, ``lr`` and, with validation rows, ``val_auroc``, ``val_loss``.
    best_key : tuple of float
        (validation AUROC, -validation loss) of the best epoch; NaNs without validation rows.
    best_epoch : int
        The best epoch (1-based); the last one without validation rows.
    best_state : dict or None
        Its weights; None without validation rows.
    since_best : int
        Epochs since the best one.
    seen : int
        Training rows passed through the model.
    t_train : float
        Time spent in training epochs (validation excluded), seconds.
    t_wall : float
        Wall time of the epochs, validation included, over every call, seconds.
    stopped_early : bool
        ``patience`` ran out.
    stopped_at_time_limit : bool
        The next epoch would have ended past the call's ``time_limit``.
    """

    epoch: int = 0
    history: list = field(default_factory=list)
    best_key: tuple = (-math.inf, -math.inf)
    best_epoch: int = 0
    best_state: dict | None = None
    since_best: int = 0
    seen: int = 0
    t_train: float = 0.0
    t_wall: float = 0.0
    stopped_early: bool = False
    stopped_at_time_limit: bool = False


def _train_step(run: _Run, batch: tuple, g: torch.Generator, epoch: int, step: int) -> float:
    """One gradient step on a batch; returns its mean loss.

    Parameters
    ----------
    run : _Run
    batch : tuple of numpy.ndarray
        Normalised pixels (n, bands, stamp, stamp) and labels (n,).
    g : torch.Generator
        The epoch's augmentation generator.
    epoch, step : int
        0-based epoch and batch, for messages.

    Raises
    ------
    LensdaskError
        The loss is not finite.
    """
    s, dev, o = run.settings, run.device, run.optimiser
    xb_np, yb_np = batch
    xb = torch.from_numpy(xb_np)
    if dev.type == "cuda":
        xb = xb.pin_memory()
    xb = xb.to(dev, non_blocking=True)
    yb = torch.from_numpy(yb_np).to(dev, non_blocking=True)
    if s.dihedral or s.shift_px > 0:
        xb = augment(xb, g, s.shift_px, dihedral=s.dihedral)
    xb = resize(xb, run.net.size)
    with autocast(dev):
        loss = o.loss_fn(o.forward(xb).float(), yb)
    loss_value = loss.detach().item()
    if not math.isfinite(loss_value):
        raise LensdaskError(
            f"the training loss became {loss_value} at epoch {epoch + 1}, batch {step + 1}; "
            f"lower the learning rate (now {s.learning_rate:g}) or check the data for extreme values"
            + (f"; the last good state is in {run.state_path}" if run.state_path.exists() else "")
        )
    o.opt.zero_grad(set_to_none=True)
    loss.backward()
    o.opt.step()
    o.sched.step()
    return loss_value


def _train_epoch(run: _Run, epoch: int) -> tuple[float, int]:
    """Run one epoch's batches through :func:`_train_step`.

    Returns
    -------
    total_loss : float
        The batch losses summed over rows.
    n_rows : int
        Training rows seen.

    Raises
    ------
    KeyboardInterrupt
        After saying on stderr which epoch is saved.
    """
    from tqdm.auto import tqdm

    s, state_path = run.settings, run.state_path
    run.net.model.train()
    g = epoch_torch_generator(s.seed, epoch)
    total_loss, n_rows = 0.0, 0
    try:
        batch_bar = tqdm(
            run.data.rows.train_batches(epoch, s.seed, s.batch_size),
            total=run.optimiser.steps_per_epoch,
            desc=f"epoch {epoch + 1}",
            unit="batch",
            leave=False,
            disable=not run.progress,
        )
        for step, batch in enumerate(batch_bar):
            loss_value = _train_step(run, batch, g, epoch, step)
            total_loss += loss_value * batch[1].size
            n_rows += batch[1].size
            batch_bar.set_postfix(loss=f"{loss_value:.4f}")
    except KeyboardInterrupt:
        done = f"epoch {epoch} is saved in {state_path}" if state_path.exists() else "no epoch finished"
        print(f"lensdask train: interrupted in epoch {epoch + 1}; {done}; run again with --resume", file=sys.stderr)
        raise
    return total_loss, n_rows


def _validate(model, data: StoreBatches, dev, size, batch_size, loss_fn):
    """Run the model over the validation rows.

    Returns
    -------
    tuple or None
        (probabilities (n, classes), labels (n,), row ids (n,), mean class-weighted loss), or
        None where there are no validation rows.
    """
    model.eval()
    probs, labels, ids, loss_sum, weight_sum = [], [], [], 0.0, 0.0
    with torch.inference_mode(), autocast(dev):
        for x, y, rows in data.validation():
            for i in range(0, y.size, batch_size):
                xb = torch.from_numpy(np.ascontiguousarray(x[i : i + batch_size])).to(dev)
                yb = torch.from_numpy(y[i : i + batch_size]).to(dev)
                logits = model(resize(xb, size)).float()
                w = loss_fn.weight[yb].sum() if loss_fn.weight is not None else torch.tensor(float(yb.numel()))
                loss_sum += float(loss_fn(logits, yb)) * float(w)
                weight_sum += float(w)
                probs.append(torch.softmax(logits, 1).cpu().numpy())
            labels.append(y)
            ids.append(rows)
    if not labels:
        return None
    return np.concatenate(probs), np.concatenate(labels), np.concatenate(ids), loss_sum / max(weight_sum, 1e-30)


def _validate_run(run: _Run):
    """:func:`_validate` on the run's validation rows, in batches of at least 256."""
    return _validate(
        run.net.model, run.data.rows, run.device, run.net.size, max(run.settings.batch_size, 256), run.optimiser.loss_fn
    )


def _score_epoch(run: _Run, p: _Progress, record: dict, val, epoch: int) -> None:
    """Add the validation figures to ``record`` and keep the epoch in ``p`` if it is the best so far.

    Best is the highest AUROC of lens against all other classes, ties to the lower validation
    loss; without validation rows (``val`` None) every epoch is the best, and no weights are kept.
    """
    if val is None:
        p.best_key, p.best_epoch, p.best_state = (math.nan, math.nan), epoch + 1, None
        return
    from .metrics import auroc

    probs, labels, _, val_loss = val
    lens_class = run.data.lens_class
    score = auroc(labels == lens_class, probs[:, lens_class])
    record.update(val_auroc=score, val_loss=val_loss)
    key = (-math.inf if math.isnan(score) else score, -val_loss)
    if key > p.best_key or p.best_state is None:
        p.best_key, p.best_epoch, p.best_state = key, epoch + 1, copy.deepcopy(run.net.model.state_dict())
        p.since_best = 0
    else:
        p.since_best += 1


def _run_epochs(run: _Run, p: _Progress, fingerprint: dict) -> None:
    """Train from epoch ``p.epoch`` to the last (or until ``patience`` runs out), saving the state after each.

    ``fingerprint`` is :func:`_resume_settings`, stored with the state.
    """
    from tqdm.auto import tqdm

    s = run.settings
    epoch_bar = tqdm(
        range(p.epoch, s.epochs),
        desc=f"train {s.arch}",
        unit="epoch",
        disable=not run.progress,
        initial=p.epoch,
        total=s.epochs,
    )
    for epoch in epoch_bar:
        t0 = time.perf_counter()
        if run.deadline is not None and p.epoch > 0 and t0 + p.t_wall / p.epoch > run.deadline:
            p.stopped_at_time_limit = True
            break
        total_loss, n_rows = _train_epoch(run, epoch)
        p.t_train += time.perf_counter() - t0
        p.seen += n_rows
        record = {"epoch": epoch + 1, "loss": total_loss / max(n_rows, 1), "lr": run.optimiser.sched.get_last_lr()[0]}
        val = _validate_run(run) if run.data.rows.n_val else None
        _score_epoch(run, p, record, val, epoch)
        p.history.append(record)
        p.epoch = epoch + 1
        epoch_bar.set_postfix({k: f"{v:.4f}" for k, v in record.items() if k not in ("epoch", "lr")})
        p.t_wall += time.perf_counter() - t0
        _save_state(run, p, fingerprint)
        if s.patience and val is not None and p.since_best >= s.patience and epoch + 1 < s.epochs:
            p.stopped_early = True
            break


# -- outputs ----------------------------------------------------------------------------
def _best_metrics(run: _Run, p: _Progress) -> dict:
    """Load the best epoch's weights and report on the validation rows ({} without them).

    Returns
    -------
    dict
        :func:`~lensdask.model.report.classifier_report` at the ``search.threshold`` of the configuration.
    """
    model, store = run.net.model, run.data.store
    if p.best_state is not None:
        model.load_state_dict(p.best_state)
    model.eval()
    if not run.data.rows.n_val:
        return {}
    probs, labels, ids, _ = _validate_run(run)
    return classifier_report(
        labels,
        probs,
        truth_classes=list(store.classes),
        model_classes=list(store.classes),
        lens_class=run.data.lens_class,
        params=run.data.rows.params.iloc[ids].reset_index(drop=True),
        threshold=float(config.get("search.threshold")),
    )


def _model_card(run: _Run, p: _Progress, metrics: dict, command: str | None) -> dict:
    """The model card (see :mod:`lensdask.model.checkpoint`), before the checkpoint adds its hashes.

    ``metrics`` is :func:`_best_metrics`; ``command`` is recorded (default ``sys.argv``).
    """
    s, d, net = run.settings, run.data, run.net
    store = d.store
    prov = provenance(command)
    return {
        "arch": s.arch,
        "arch_kwargs": net.arch_kwargs,
        "bands": list(store.bands),
        "stamp": int(store.stamp),
        "input_size": net.input_side,
        "pixel_scale": float(store.pixel_scale),
        "normalisation": s.normalisation,
        "classes": list(store.classes),
        "lens_class": int(d.lens_class),
        "survey": str(getattr(store, "survey", "des")),  # the training store's survey profile
        # the real galaxies (source, rows, rotation-invariant fingerprints) the training store painted
        # arcs on or used as negatives: evaluations on them are refused (lensdask.simulate.galaxies)
        "training_galaxies": training_galaxies(
            store.provenance.get("real_galaxies"),
            read_card(s.pretrained) if (net.pretrained_info or {}).get("model_id") else None,
        ),
        "training": _training_record(run, p, prov["command"]),
        "metrics": metrics,  # classifier_report on the validation set at the best epoch
        "lensdask_version": prov["lensdask_version"],
        "created": prov["created"],
    }


def _training_record(run: _Run, p: _Progress, command: str) -> dict:
    """The card's ``training``: data, hyper-parameters, row counts, history, device and speed.

    ``cutouts_per_second`` is training rows over ``train_seconds`` (the time in training
    epochs, seconds, validation excluded), NaN when no time was spent.
    """
    s, d, net, dev = run.settings, run.data, run.net, run.device
    store, rows, weights = d.store, d.rows, run.optimiser.class_weights
    return {
        "data": str(store.url),
        "data_provenance": store.provenance,
        "command": command,
        "seed": s.seed,
        "epochs": s.epochs,
        "batch_size": s.batch_size,
        "learning_rate": s.learning_rate,
        "weight_decay": s.weight_decay,
        "validation_fraction": s.validation_fraction,
        "augmentation": s.augmentation,
        "class_weights": weights.tolist() if weights is not None else None,
        "optimizer": "AdamW, cosine schedule, 5% linear warm-up",
        "pretrained": net.pretrained_info,
        "resize": net.size,
        "patience": s.patience,
        "stopped_early": p.stopped_early,
        "n_train": rows.n_train,
        "n_validation": rows.n_val,
        "class_counts": {store.classes[c]: int(d.counts[c]) for c in d.present},
        "n_unlabelled": rows.n_unlabelled,
        "n_nonfinite": rows.n_nonfinite,
        "streamed": not rows.cached,
        "best_epoch": int(p.best_epoch),
        "history": p.history,
        "device": str(dev),
        "autocast": "bf16" if dev.type == "cuda" else None,
        "compiled": s.compile,
        "torch_threads": int(torch.get_num_threads()),
        "cutouts_per_second": p.seen / p.t_train if p.t_train > 0 else math.nan,
        "train_seconds": p.t_train,
        "wall_seconds": p.t_wall,
        "stopped_at_time_limit": p.stopped_at_time_limit,
    }


def _resume_settings(run: _Run) -> dict:
    """What a resumed run must share with the run that saved the state (JSON-able; stored as ``settings``)."""
    s, store, rows = run.settings, run.data.store, run.data.rows
    return {
        "data": str(store.url),
        "bands": list(store.bands),
        "stamp": int(store.stamp),
        "classes": list(store.classes),
        "n_rows": int(rows.labels.size),
        "arch_kwargs": run.net.arch_kwargs,
        "epochs": s.epochs,
        "batch_size": s.batch_size,
        "learning_rate": s.learning_rate,
        "weight_decay": s.weight_decay,
        "seed": s.seed,
        "validation_fraction": s.validation_fraction,
        "balance": s.balance,
        "shift_px": s.shift_px,
        "normalisation": s.normalisation,
    }


# -- the training state -----------------------------------------------------------------
def _save_state(run: _Run, p: _Progress, fingerprint: dict) -> None:
    """Write the training state atomically (tensors and plain Python only: loads with weights_only=True)."""
    import json

    path, o = run.state_path, run.optimiser
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {
        "settings": json.dumps(fingerprint, sort_keys=True, default=str),
        "epoch": p.epoch,
        "model": run.net.model.state_dict(),
        "optimizer": o.opt.state_dict(),
        "scheduler": o.sched.state_dict(),
        "history": json.dumps(p.history),
        "best_key": list(p.best_key),
        "best_epoch": p.best_epoch,
        "best_state": p.best_state,
        "since_best": p.since_best,
        "seen": p.seen,
        "t_train": p.t_train,
        "t_wall": p.t_wall,
        "pretrained": json.dumps(run.net.pretrained_info),
    }
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def _load_state(run: _Run, fingerprint: dict) -> _Progress:
    """Restore the weights, optimiser and schedule from the state file, and ``net.pretrained_info``.

    Returns
    -------
    _Progress
        Where the saved run stood.

    Raises
    ------
    LensdaskError
        No state file, or one saved with other settings (``fingerprint`` differs).
    CheckpointError
        An unreadable state file.
    """
    import json

    path, o = run.state_path, run.optimiser
    if not path.is_file():
        raise LensdaskError(f"--resume: no training state at {str(path)!r}; start without --resume")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"cannot read the training state {str(path)!r}: {exc}") from exc
    saved = json.loads(state["settings"])
    now = json.loads(json.dumps(fingerprint, sort_keys=True, default=str))
    diff = sorted(k for k in set(saved) | set(now) if saved.get(k) != now.get(k))
    if diff:
        shown = "; ".join(f"{k}: saved {saved.get(k)!r}, now {now.get(k)!r}" for k in diff[:4])
        raise LensdaskError(
            f"--resume: {str(path)!r} was made with other settings ({shown}); "
            "resume with the same data and options, or start afresh"
        )
    run.net.model.load_state_dict(state["model"])
    o.opt.load_state_dict(state["optimizer"])  # moves the moments to the parameters' device
    o.sched.load_state_dict(state["scheduler"])
    run.net.pretrained_info = json.loads(state["pretrained"])
    return _Progress(
        epoch=int(state["epoch"]),
        history=json.loads(state["history"]),
        best_key=tuple(state["best_key"]),
        best_epoch=state["best_epoch"],
        best_state=state["best_state"],
        since_best=int(state["since_best"]),
        seen=int(state["seen"]),
        t_train=float(state["t_train"]),
        t_wall=float(state.get("t_wall", state["t_train"])),  # states saved before t_wall: training time
    )
