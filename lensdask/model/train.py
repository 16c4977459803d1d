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

import numpy as np
import torch

from .. import config
from ..errors import CheckpointError, LensdaskError
from ..simulate.galaxies import training_galaxies
from ..store import open_store, provenance
from .architectures import arch_kwargs, build_vit
from .checkpoint import read_card, save_checkpoint
from .data import TRAIN, StoreBatches, augment, class_weights, epoch_torch_generator
from .infer import autocast, resize, resolve_device
from .normalise import normalisation_spec
from .report import classifier_report

STATE = "train_state.pt"
"""Training-state file written into the output directory after every epoch."""

_STEP_HOOK = None  # tests set a callable(epoch, step) to interrupt a run mid-epoch


def _lr_lambda(total_steps: int, warmup: int):
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total_steps - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return f


def _config_or_none(key: str):
    import dask.config

    return dask.config.get(f"lensdask.{key}", default=None)


def _validate(model, data: StoreBatches, dev, size, batch_size, loss_fn):
    """Probabilities, labels, row ids and mean (weighted) loss over the validation rows."""
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
    pretrained: str | os.PathLike | None = None,
    resize_to: int | None = None,
    patch_size: int | None = None,
    patience: int | None = None,
    balance: bool | None = None,
    shift_px: float | None = None,
    compile: bool | None = None,
    resume: bool = False,
    command: str | None = None,
    progress: bool = True,
) -> dict:
    """Train a classifier on a labelled cutout store and save a checkpoint.

    Parameters
    ----------
    data : str or path
        Labelled cutout store (path or URL), e.g. from ``lensdask simulate``.
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
    pretrained = pretrained if pretrained is not None else _config_or_none("train.pretrained")
    resize_to = resize_to if resize_to is not None else _config_or_none("train.resize")
    patch_size = patch_size if patch_size is not None else _config_or_none("train.patch_size")
    patience = int(config.get("train.patience", patience))
    balance = bool(config.get("train.balance", balance))
    shift_px = float(config.get("train.augment.shift_px", shift_px))
    dihedral = bool(config.get("train.augment.dihedral"))
    compile = bool(config.get("train.compile", compile))
    buffer_rows = int(config.get("train.shuffle_buffer"))
    cache_bytes = float(config.get("train.cache_gb")) * 1e9
    spec = normalisation_spec(_config_or_none("train.normalisation"))
    if epochs < 1 or batch_size < 1:
        raise LensdaskError(f"epochs ({epochs}) and batch_size ({batch_size}) must be >= 1")
    if not 0 <= validation_fraction < 1:
        raise LensdaskError(f"validation_fraction must lie in [0, 1), got {validation_fraction}")
    if not learning_rate >= 0 or patience < 0 or shift_px < 0:
        raise LensdaskError(
            f"learning_rate ({learning_rate}), patience ({patience}) and shift_px ({shift_px}) must be >= 0"
        )
    try:  # an unknown architecture fails before any I/O
        arch_kwargs(arch, in_chans=1, img_size=max(int(resize_to or 0), 64), num_classes=2, patch_size=patch_size)
    except ValueError as exc:
        raise LensdaskError(str(exc)) from exc
    dev = resolve_device(device_arg)
    if num_threads > 0:
        torch.set_num_threads(num_threads)
    out = pathlib.Path(os.fspath(out))
    state_path = out / STATE

    store = open_store(data)
    if "lens" not in store.classes:
        raise LensdaskError(f"store {store.url!r} has classes {store.classes}, none named 'lens'")
    lens_class = store.lens_class
    rows = StoreBatches(store, spec, validation_fraction, seed, buffer_rows=buffer_rows, cache_bytes=cache_bytes)
    counts = np.bincount(rows.labels[rows.labels >= 0], minlength=len(store.classes))
    present = [c for c in range(len(store.classes)) if counts[c] > 0]
    if len(present) < 2:
        names = [store.classes[c] for c in present]
        raise LensdaskError(
            f"store {store.url!r} has labelled rows of {len(present)} class(es) {names} "
            f"(of {store.classes}); training needs at least two"
        )
    if lens_class not in present:
        raise LensdaskError(f"store {store.url!r} has no rows labelled 'lens'; cannot train a lens finder")
    if rows.n_train < 2:
        raise LensdaskError(f"store {store.url!r} has only {rows.n_train} training rows")

    input_side = int(resize_to) if resize_to else int(store.stamp)
    kwargs = arch_kwargs(arch, in_chans=len(store.bands), img_size=input_side,
                         num_classes=len(store.classes), patch_size=patch_size)
    size = input_side if input_side != store.stamp else None
    torch.manual_seed(seed)
    model = build_vit(kwargs)
    pretrained_info = None
    if pretrained and not resume:
        from .pretrained import load_pretrained

        pretrained_info = load_pretrained(model, pretrained, list(store.bands), list(store.classes))
    model.to(dev)
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    opt = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=weight_decay)
    steps_per_epoch = math.ceil(rows.n_train / batch_size)
    total = steps_per_epoch * epochs
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(total, max(1, int(0.05 * total))))
    train_counts = rows.class_counts(TRAIN)
    weights = torch.tensor(class_weights(train_counts), dtype=torch.float32) if balance else None
    loss_fn = torch.nn.CrossEntropyLoss(weight=weights.to(dev) if weights is not None else None)
    forward = torch.compile(model) if compile else model

    settings = {
        "data": str(store.url), "bands": list(store.bands), "stamp": int(store.stamp), "classes": list(store.classes),
        "n_rows": int(rows.labels.size), "arch_kwargs": kwargs, "epochs": epochs, "batch_size": batch_size,
        "learning_rate": learning_rate, "weight_decay": weight_decay, "seed": seed,
        "validation_fraction": validation_fraction, "balance": balance, "shift_px": shift_px,
        "normalisation": spec,
    }
    history: list[dict] = []
    best = {"key": (-math.inf, -math.inf), "epoch": 0, "state": None}
    start_epoch, since_best, seen, t_train = 0, 0, 0, 0.0
    if resume:
        start_epoch, history, best, since_best, seen, t_train, pretrained_info = _load_state(
            state_path, settings, model, opt, sched
        )

    epoch_bar = tqdm(range(start_epoch, epochs), desc=f"train {arch}", unit="epoch", disable=not progress,
                     initial=start_epoch, total=epochs)
    stopped_early = False
    for epoch in epoch_bar:
        model.train()
        g = epoch_torch_generator(seed, epoch)
        total_loss, n_epoch = 0.0, 0
        t0 = time.perf_counter()
        try:
            batch_bar = tqdm(rows.train_batches(epoch, seed, batch_size), total=steps_per_epoch,
                             desc=f"epoch {epoch + 1}", unit="batch", leave=False, disable=not progress)
            for step, (xb_np, yb_np) in enumerate(batch_bar):
                if _STEP_HOOK is not None:
                    _STEP_HOOK(epoch, step)
                xb = torch.from_numpy(xb_np)
                if dev.type == "cuda":
                    xb = xb.pin_memory()
                xb = xb.to(dev, non_blocking=True)
                yb = torch.from_numpy(yb_np).to(dev, non_blocking=True)
                if dihedral or shift_px > 0:
                    xb = augment(xb, g, shift_px, dihedral=dihedral)
                xb = resize(xb, size)
                with autocast(dev):
                    loss = loss_fn(forward(xb).float(), yb)
                loss_value = loss.detach().item()
                if not math.isfinite(loss_value):
                    raise LensdaskError(
                        f"the training loss became {loss_value} at epoch {epoch + 1}, batch {step + 1}; "
                        f"lower the learning rate (now {learning_rate:g}) or check the data for extreme values"
                        + (f"; the last good state is in {state_path}" if state_path.exists() else "")
                    )
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                total_loss += loss_value * yb_np.size
                n_epoch += yb_np.size
                batch_bar.set_postfix(loss=f"{loss_value:.4f}")
        except KeyboardInterrupt:
            done = f"epoch {epoch} is saved in {state_path}" if state_path.exists() else "no epoch finished"
            print(f"lensdask train: interrupted in epoch {epoch + 1}; {done}; run again with --resume",
                  file=sys.stderr)
            raise
        t_train += time.perf_counter() - t0
        seen += n_epoch
        record = {"epoch": epoch + 1, "loss": total_loss / max(n_epoch, 1), "lr": sched.get_last_lr()[0]}
        val = _validate(model, rows, dev, size, max(batch_size, 256), loss_fn) if rows.n_val else None
        if val is not None:
            probs, labels, _, val_loss = val
            is_lens = labels == lens_class
            from .metrics import auroc

            score = auroc(is_lens, probs[:, lens_class])
            record.update(val_auroc=score, val_loss=val_loss)
            key = (-math.inf if math.isnan(score) else score, -val_loss)
            if key > best["key"] or best["state"] is None:
                best = {"key": key, "epoch": epoch + 1, "state": copy.deepcopy(model.state_dict())}
                since_best = 0
            else:
                since_best += 1
        else:
            best = {"key": (math.nan, math.nan), "epoch": epoch + 1, "state": None}
        history.append(record)
        epoch_bar.set_postfix({k: f"{v:.4f}" for k, v in record.items() if k not in ("epoch", "lr")})
        _save_state(state_path, settings, epoch + 1, model, opt, sched, history, best, since_best, seen, t_train,
                    pretrained_info)
        if patience and val is not None and since_best >= patience and epoch + 1 < epochs:
            stopped_early = True
            break

    if best["state"] is not None:
        model.load_state_dict(best["state"])
    model.eval()
    metrics = {}
    if rows.n_val:
        probs, labels, ids, _ = _validate(model, rows, dev, size, max(batch_size, 256), loss_fn)
        metrics = classifier_report(
            labels, probs, truth_classes=list(store.classes), model_classes=list(store.classes),
            lens_class=lens_class, params=rows.params.iloc[ids].reset_index(drop=True),
            threshold=float(config.get("search.threshold")),
        )
    throughput = seen / t_train if t_train > 0 else math.nan

    prov = provenance(command)
    card = {
        "arch": arch,
        "arch_kwargs": kwargs,
        "bands": list(store.bands),
        "stamp": int(store.stamp),
        "input_size": input_side,
        "pixel_scale": float(store.pixel_scale),
        "normalisation": spec,
        "classes": list(store.classes),
        "lens_class": int(lens_class),
        # the real galaxies (source, rows, rotation-invariant fingerprints) the training store painted
        # arcs on or used as negatives: evaluations on them are refused (lensdask.simulate.galaxies)
        "training_galaxies": training_galaxies(
            store.provenance.get("real_galaxies"),
            read_card(pretrained) if (pretrained_info or {}).get("model_id") else None),
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
            "augmentation": (
                ("dihedral (flips, 90 degree rotations)" if dihedral else "none")
                + (f"; Fourier sub-pixel shifts up to {shift_px:g} px" if shift_px > 0 else "")
            ),
            "class_weights": weights.tolist() if weights is not None else None,
            "optimizer": "AdamW, cosine schedule, 5% linear warm-up",
            "pretrained": pretrained_info,
            "resize": size,
            "patience": patience,
            "stopped_early": stopped_early,
            "n_train": rows.n_train,
            "n_validation": rows.n_val,
            "class_counts": {store.classes[c]: int(counts[c]) for c in present},
            "n_unlabelled": rows.n_unlabelled,
            "n_nonfinite": rows.n_nonfinite,
            "streamed": not rows.cached,
            "best_epoch": int(best["epoch"]),
            "history": history,
            "device": str(dev),
            "autocast": "bf16" if dev.type == "cuda" else None,
            "compiled": compile,
            "torch_threads": int(torch.get_num_threads()),
            "cutouts_per_second": throughput,
            "train_seconds": t_train,
        },
        "metrics": metrics,  # classifier_report on the validation set at the best epoch
        "lensdask_version": prov["lensdask_version"],
        "created": prov["created"],
    }
    card = save_checkpoint(model.to("cpu"), out, card)
    if not config.get("train.keep_state"):
        state_path.unlink(missing_ok=True)
    return card


def _save_state(path, settings, epoch, model, opt, sched, history, best, since_best, seen, t_train, pretrained_info):
    """Write the training state atomically (tensors and plain Python only: loads with weights_only=True)."""
    import json

    path.parent.mkdir(parents=True, exist_ok=True)
    state = {
        "settings": json.dumps(settings, sort_keys=True, default=str),
        "epoch": epoch,
        "model": model.state_dict(),
        "optimizer": opt.state_dict(),
        "scheduler": sched.state_dict(),
        "history": json.dumps(history),
        "best_key": list(best["key"]),
        "best_epoch": best["epoch"],
        "best_state": best["state"],
        "since_best": since_best,
        "seen": seen,
        "t_train": t_train,
        "pretrained": json.dumps(pretrained_info),
    }
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def _load_state(path, settings, model, opt, sched):
    import json

    if not path.is_file():
        raise LensdaskError(f"--resume: no training state at {str(path)!r}; start without --resume")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"cannot read the training state {str(path)!r}: {exc}") from exc
    saved = json.loads(state["settings"])
    now = json.loads(json.dumps(settings, sort_keys=True, default=str))
    diff = sorted(k for k in set(saved) | set(now) if saved.get(k) != now.get(k))
    if diff:
        shown = "; ".join(f"{k}: saved {saved.get(k)!r}, now {now.get(k)!r}" for k in diff[:4])
        raise LensdaskError(f"--resume: {str(path)!r} was made with other settings ({shown}); "
                            "resume with the same data and options, or start afresh")
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["optimizer"])  # moves the moments to the parameters' device
    sched.load_state_dict(state["scheduler"])
    best_state = state["best_state"]
    best = {"key": tuple(state["best_key"]), "epoch": state["best_epoch"], "state": best_state}
    return (int(state["epoch"]), json.loads(state["history"]), best, int(state["since_best"]),
            int(state["seen"]), float(state["t_train"]), json.loads(state["pretrained"]))
