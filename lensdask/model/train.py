"""Train a lens classifier on a labelled cutout store.

The whole labelled store is read into memory tile by tile (fine up to a few
times 1e4 cutouts of 4 x 45 x 45 float32, ~250 MB per 3e4), normalised once,
split into training and validation sets by seed (stratified by class), and
trained with AdamW and a cosine learning-rate schedule with a short linear
warm-up. Augmentation uses only the eight symmetries of the pixel grid
(flips and 90 degree rotations), which keep the sky's pixel statistics and
the PSF sampling intact. The epoch with the best validation AUROC (lens class
against all others) is kept and saved with :func:`save_checkpoint`.

On the CPU, a fixed seed gives bit-identical weights for the same thread count.
"""

from __future__ import annotations

import copy
import math
import os
import time

import numpy as np
import torch

from .. import config
from ..errors import LensdaskError
from ..store import open_store, provenance
from .architectures import arch_kwargs, build_vit
from .checkpoint import save_checkpoint
from .infer import autocast, forward_proba, nonfinite_rows, resolve_device
from .metrics import auroc, binary_metrics
from .normalise import normalisation_spec, normalise


def _read_labelled(store) -> tuple[np.ndarray, np.ndarray, dict]:
    """Images and labels of every labelled, finite row, read tile by tile."""
    images, labels = [], []
    n_unknown = n_nonfinite = 0
    for t in store.written_tiles():
        table = store.read_table(t)
        if len(table) == 0:
            continue
        lab = table["label"].to_numpy().astype(np.int64)
        img = store.read_images(t)
        keep = lab >= 0
        n_unknown += int((~keep).sum())
        bad = nonfinite_rows(img) & keep
        n_nonfinite += int(bad.sum())
        keep &= ~bad
        images.append(np.asarray(img[keep], dtype=np.float32))
        labels.append(lab[keep])
    if images:
        x = np.concatenate(images)
        y = np.concatenate(labels)
    else:
        x = np.zeros((0, len(store.bands), store.stamp, store.stamp), np.float32)
        y = np.zeros(0, np.int64)
    return x, y, {"n_unlabelled": n_unknown, "n_nonfinite": n_nonfinite}


def _split(labels: np.ndarray, fraction: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Stratified train/validation indices; each class with >= 2 rows gives >= 1 to validation."""
    train_idx, val_idx = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_val = int(round(fraction * idx.size))
        if fraction > 0 and idx.size >= 2:
            n_val = min(max(n_val, 1), idx.size - 1)
        val_idx.append(idx[:n_val])
        train_idx.append(idx[n_val:])
    return rng.permutation(np.concatenate(train_idx)), np.sort(np.concatenate(val_idx))


def _augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Apply one of the 8 dihedral symmetries of the pixel grid to each stamp."""
    k = torch.randint(0, 4, (x.shape[0],), generator=g)
    flip = torch.randint(0, 2, (x.shape[0],), generator=g).bool()
    x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    out = x.clone()
    for r in (1, 2, 3):
        sel = k == r
        if sel.any():
            out[sel] = torch.rot90(x[sel], r, dims=(-2, -1))
    return out


def _lr_lambda(total_steps: int, warmup: int):
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total_steps - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return f


def train(
    data: str | os.PathLike,
    out: str | os.PathLike,
    *,
    arch: str | None = None,
    epochs: int | None = None,
    batch_size: int | None = None,
    learning_rate: float | None = None,
    device: str | None = None,
    seed: int | None = None,
    validation_fraction: float | None = None,
    command: str | None = None,
    progress: bool = True,
) -> dict:
    """Train a classifier on a labelled cutout store and save a checkpoint.

    Parameters
    ----------
    data : str or path
        Labelled cutout store (path or URL), e.g. from ``lensdask simulate``.
        Rows with label -1 (unknown) or non-finite pixels are skipped.
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
        ``"auto"``, ``"cpu"``, ``"cuda"`` (config ``train.device``).
    seed : int, optional
        Seeds the split, initialisation, batch order and augmentation (config ``train.seed``).
    validation_fraction : float, optional
        Fraction of each class held out for validation (config
        ``train.validation_fraction``); 0 trains on everything and keeps the last epoch.
    command : str, optional
        Recorded in the card; defaults to ``sys.argv``.
    progress : bool
        Show tqdm progress bars.

    Returns
    -------
    dict
        The model card as saved (see :mod:`lensdask.model.checkpoint`).

    Raises
    ------
    LensdaskError
        The store has fewer than two classes among its labelled rows, or no
        lens rows, or too few rows to train.
    """
    from tqdm.auto import tqdm

    arch = config.get("train.arch", arch)
    epochs = int(config.get("train.epochs", epochs))
    batch_size = int(config.get("train.batch_size", batch_size))
    learning_rate = float(config.get("train.learning_rate", learning_rate))
    weight_decay = float(config.get("train.weight_decay"))
    seed = int(config.get("train.seed", seed))
    validation_fraction = float(config.get("train.validation_fraction", validation_fraction))
    device_arg = config.get("train.device", device)
    num_threads = int(config.get("train.num_threads") or 0)
    spec = normalisation_spec(_config_or_none("train.normalisation"))
    if epochs < 1 or batch_size < 1:
        raise LensdaskError(f"epochs ({epochs}) and batch_size ({batch_size}) must be >= 1")
    if not 0 <= validation_fraction < 1:
        raise LensdaskError(f"validation_fraction must lie in [0, 1), got {validation_fraction}")
    try:  # an unknown architecture fails before any I/O
        arch_kwargs(arch, in_chans=1, img_size=8, num_classes=2)
    except ValueError as exc:
        raise LensdaskError(str(exc)) from exc
    dev = resolve_device(device_arg)
    if num_threads > 0:
        torch.set_num_threads(num_threads)

    store = open_store(data)
    if "lens" not in store.classes:
        raise LensdaskError(f"store {store.url!r} has classes {store.classes}, none named 'lens'")
    lens_class = store.lens_class
    x_raw, y, skipped = _read_labelled(store)
    present = sorted(set(np.unique(y).tolist()))
    if len(present) < 2:
        names = [store.classes[c] for c in present]
        raise LensdaskError(
            f"store {store.url!r} has labelled rows of {len(present)} class(es) {names} "
            f"(of {store.classes}); training needs at least two"
        )
    if lens_class not in present:
        raise LensdaskError(f"store {store.url!r} has no rows labelled 'lens'; cannot train a lens finder")

    rng = np.random.default_rng(seed)
    train_idx, val_idx = _split(y, validation_fraction, rng)
    if train_idx.size < 2:
        raise LensdaskError(f"store {store.url!r} has only {train_idx.size} training rows")
    x_all = torch.from_numpy(normalise(x_raw, spec))
    del x_raw
    y_all = torch.from_numpy(y)

    torch.manual_seed(seed)
    kwargs = arch_kwargs(arch, in_chans=len(store.bands), img_size=store.stamp, num_classes=len(store.classes))
    model = build_vit(kwargs).to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=weight_decay)
    steps_per_epoch = math.ceil(train_idx.size / batch_size)
    total = steps_per_epoch * epochs
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(total, max(1, int(0.05 * total))))
    g = torch.Generator().manual_seed(seed)
    loss_fn = torch.nn.CrossEntropyLoss()
    x_val = x_all[val_idx].numpy() if val_idx.size else None
    is_lens_val = (y[val_idx] == lens_class) if val_idx.size else None

    history = []
    best = (-math.inf, -1, None, None)  # (auroc, epoch, state, val probs)
    seen, t_train = 0, 0.0
    epoch_bar = tqdm(range(epochs), desc=f"train {arch}", unit="epoch", disable=not progress)
    for epoch in epoch_bar:
        model.train()
        order = torch.from_numpy(train_idx)[torch.randperm(train_idx.size, generator=g)]
        total_loss = 0.0
        t0 = time.perf_counter()
        batch_bar = tqdm(range(steps_per_epoch), desc=f"epoch {epoch + 1}", unit="batch", leave=False, disable=not progress)
        for b in batch_bar:
            idx = order[b * batch_size : (b + 1) * batch_size]
            xb = _augment(x_all[idx], g).to(dev, non_blocking=True)
            yb = y_all[idx].to(dev, non_blocking=True)
            with autocast(dev):
                loss = loss_fn(model(xb).float(), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            loss_value = loss.detach().item()
            total_loss += loss_value * idx.numel()
            seen += idx.numel()
            batch_bar.set_postfix(loss=f"{loss_value:.4f}")
        t_train += time.perf_counter() - t0
        record = {"epoch": epoch + 1, "loss": total_loss / train_idx.size}
        if x_val is not None:
            model.eval()
            probs = forward_proba(model, x_val, batch_size=max(batch_size, 256), device=dev)
            score = auroc(is_lens_val, probs[:, lens_class])
            record["val_auroc"] = score
            key = -math.inf if math.isnan(score) else score
            if key > best[0] or best[2] is None:
                best = (key, epoch + 1, copy.deepcopy(model.state_dict()), probs)
        else:
            best = (math.nan, epoch + 1, None, None)
        history.append(record)
        epoch_bar.set_postfix({k: f"{v:.4f}" for k, v in record.items() if k != "epoch"})

    if best[2] is not None:
        model.load_state_dict(best[2])
    model.eval()
    metrics = binary_metrics(is_lens_val, best[3][:, lens_class]) if best[3] is not None else {}
    throughput = seen / t_train if t_train > 0 else math.nan

    prov = provenance(command)
    card = {
        "arch": arch,
        "arch_kwargs": kwargs,
        "bands": list(store.bands),
        "stamp": int(store.stamp),
        "pixel_scale": float(store.pixel_scale),
        "normalisation": spec,
        "classes": list(store.classes),
        "lens_class": int(lens_class),
        "training": {
            "data": str(store.url),
            "data_provenance": store.provenance,
            "command": prov["command"],
            "seed": seed,
            "epochs": epochs,
            "batch_size": batch_size,
            "learning_rate": learning_rate,
            "weight_decay": weight_decay,
            "validation_fraction": validation_fraction,
            "augmentation": "dihedral (flips, 90 degree rotations)",
            "optimizer": "AdamW, cosine schedule, 5% linear warm-up",
            "n_train": int(train_idx.size),
            "n_validation": int(val_idx.size),
            "class_counts": {store.classes[c]: int((y == c).sum()) for c in present},
            **skipped,
            "best_epoch": int(best[1]),
            "history": history,
            "device": str(dev),
            "torch_threads": int(torch.get_num_threads()),
            "cutouts_per_second": throughput,
            "train_seconds": t_train,
        },
        "metrics": metrics,  # binary_metrics on the validation set at the best epoch
        "lensdask_version": prov["lensdask_version"],
        "created": prov["created"],
    }
    return save_checkpoint(model.to("cpu"), out, card)


def _config_or_none(key: str):
    import dask.config

    return dask.config.get(f"lensdask.{key}", default=None)
