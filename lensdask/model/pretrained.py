"""Start a model from pretrained weights in a local file (never downloaded).

Accepted files:

- a timm / PyTorch state dict: ``.safetensors``, or ``.pth`` / ``.pt`` / ``.bin``
  read with ``torch.load(weights_only=True)`` (no pickle code runs); a dict
  nested under ``state_dict``, ``model`` or ``state_dict_ema`` and a
  ``module.`` prefix (DDP) are unwrapped;
- a lensdask checkpoint directory (fine-tuning a previous model).

The file may have been made for another input: typically a ViT trained on
3-channel RGB images of 224 px with 16 px patches. Three tensors are adapted to
the model being trained, every other tensor must fit as is:

the first convolution over the bands (``patch_embed.proj.weight`` of a ViT; ``conv1.0.weight`` of a
ResNet, ``stem.0.weight`` of a ConvNeXt: :func:`~lensdask.model.architectures.input_conv_name`)
    *Patch size* (a ViT's patch projection only; another kernel size of a CNN's first
    convolution is refused): resampled with FlexiViT's pseudo-inverse resize
    (``timm.layers.resample_patch_embed``), which keeps the response of each
    filter to a patch resized along with it. *Channels*: from RGB, each band
    takes the kernel of the RGB channel nearest in wavelength (u, g -> B;
    r -> G; i, z, y -> R; unknown names cycle R, G, B), scaled by 3 / n_bands so
    that a grey image gives the same embedding; from one channel the kernel is
    repeated and scaled by 1 / n_bands; from a lensdask checkpoint bands are
    matched by name (all must be present). Other channel counts cycle the
    source channels (timm's rule) scaled by n_source / n_bands.
``pos_embed``
    The grid of patch-position embeddings is resampled bicubically (with
    antialiasing) to the model's token grid (``timm.layers.resample_abs_pos_embed``);
    class-token embeddings are copied.
the classifier (``head.*`` of a ViT, ``fc.*`` of a ResNet, ``head.fc.*`` of a ConvNeXt)
    Kept only if the number of classes matches; otherwise the new head stays
    randomly initialised (an ImageNet head has 1000 classes).

A tensor that is missing from the file or does not fit (another width or depth, or
another family: a ViT's tensors in a ResNet) stops with a
:class:`~lensdask.errors.CheckpointError` naming it.
"""

from __future__ import annotations

import os
import pathlib
from typing import TYPE_CHECKING, cast

import torch

from ..errors import CheckpointError, ModelMismatchError
from .checkpoint import sha256_file

if TYPE_CHECKING:
    from timm.models.vision_transformer import VisionTransformer

RGB_FOR_BAND = {"u": 2, "g": 2, "r": 1, "i": 0, "z": 0, "y": 0, "Y": 0}
"""Band name -> index of the RGB channel (R=0, G=1, B=2) nearest in wavelength."""

_NESTED = ("state_dict", "model", "state_dict_ema", "model_ema")


def read_weights(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict | None]:
    """The state dict in a local weights file or lensdask checkpoint directory.

    Returns
    -------
    (dict, dict or None)
        Tensor name -> CPU tensor, and the model card when ``path`` is a lensdask
        checkpoint directory (else None).

    Raises
    ------
    CheckpointError
        Nothing at ``path``, or a file that cannot be read as tensors.
    """
    path = pathlib.Path(os.fspath(path)).expanduser()
    if path.is_dir():
        from .checkpoint import is_committee, load_checkpoint, read_card

        if is_committee(read_card(path)):
            raise CheckpointError(
                f"{str(path)!r} is a committee, not one network to start from: pick one of its members "
                f"({str(path / 'members' / 'm0')!r}, ...)"
            )
        model, card = load_checkpoint(path, device="cpu")
        return {k: v.detach().clone() for k, v in model.state_dict().items()}, card
    if not path.is_file():
        raise CheckpointError(f"no pretrained weights file at {str(path)!r} (weights are never downloaded)")
    state: object  # a state dict, or a dict that nests one (checked below)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path), device="cpu")
        else:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # safetensors, pickle and zip errors have no common base
        raise CheckpointError(f"cannot read pretrained weights {str(path)!r}: {exc}") from exc
    for key in _NESTED:
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
            break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{str(path)!r} holds no state dict of tensors")
    state = {k[len("module.") :] if k.startswith("module.") else k: v for k, v in state.items()}
    return state, None


def _adapt_channels(w: torch.Tensor, bands: list[str], source_bands: list[str] | None) -> tuple[torch.Tensor, str]:
    c0, c = w.shape[1], len(bands)
    if source_bands is not None:
        missing = [b for b in bands if b not in source_bands]
        if missing:
            raise ModelMismatchError(
                f"pretrained checkpoint has bands {source_bands}; the data's bands {bands} include {missing}"
            )
        return w[:, [source_bands.index(b) for b in bands]], f"bands matched by name from {source_bands}"
    if c0 == c:
        return w, "channels copied"
    if c0 == 3:
        idx = [RGB_FOR_BAND.get(b, k % 3) for k, b in enumerate(bands)]
        how = "RGB -> " + ", ".join(f"{b}<-{'RGB'[i]}" for b, i in zip(bands, idx)) + f", x 3/{c}"
        return w[:, idx] * (3.0 / c), how
    if c0 == 1:
        return w.repeat(1, c, 1, 1) / c, f"1 channel repeated to {c}, x 1/{c}"
    idx = [k % c0 for k in range(c)]
    return w[:, idx] * (c0 / c), f"{c0} channels cycled to {c}, x {c0}/{c}"


def adapt_state_dict(
    state: dict[str, torch.Tensor],
    model: torch.nn.Module,
    bands: list[str],
    source_bands: list[str] | None = None,
    classes: list[str] | None = None,
    source_classes: list[str] | None = None,
) -> tuple[dict[str, torch.Tensor], dict]:
    """Fit a pretrained state dict to ``model`` (see the module docstring).

    Parameters
    ----------
    state : dict
        The pretrained tensors.
    model : timm model
        The model to be initialised (its input side, a ViT's patch size, band count and
        class count may differ from the file's).
    bands : list of str
        The model's bands, in input-channel order.
    source_bands : list of str, optional
        The file's bands, when known (a lensdask checkpoint).

    Returns
    -------
    (dict, dict)
        The adapted state dict (only tensors that fit) and a report:
        ``loaded`` (count), ``adapted`` (name -> how), ``skipped`` (name -> why),
        ``unused`` (file tensors the model has no place for).

    Raises
    ------
    CheckpointError
        A tensor of the model, other than the head, is missing from the file or
        has another shape (a different width, depth or MLP ratio).
    """
    from timm.layers import resample_abs_pos_embed, resample_patch_embed

    from .architectures import classifier_prefix, input_conv_name

    target = model.state_dict()
    first, head = input_conv_name(model), classifier_prefix(model)
    out: dict[str, torch.Tensor] = {}
    adapted: dict[str, str] = {}
    skipped: dict[str, str] = {}
    bad: list[str] = []
    for name, t in target.items():
        if name not in state:
            if name.startswith(head):
                skipped[name] = "not in the file; randomly initialised"
            else:
                bad.append(f"{name} (missing)")
            continue
        w = state[name].to(t.dtype)
        if name in (first, "patch_embed.proj.weight") and w.ndim == 4:
            how = []
            if w.shape[-2:] != t.shape[-2:] and name == "patch_embed.proj.weight":
                w = resample_patch_embed(w, list(t.shape[-2:]))
                how.append(f"patch {tuple(state[name].shape[-2:])} -> {tuple(t.shape[-2:])} (FlexiViT pseudo-inverse)")
            if name == first:  # only the convolution over the bands has band channels
                w, ch = _adapt_channels(w, bands, source_bands)
                if state[name].shape[1] != t.shape[1] or source_bands is not None:
                    how.append(ch)
            if how:
                adapted[name] = "; ".join(how)
        elif name == "pos_embed" and w.ndim == 3 and w.shape != t.shape and w.shape[-1] == t.shape[-1]:
            vit = cast("VisionTransformer", model)  # the models this fits (see the docstring)
            n_prefix = 0 if getattr(vit, "no_embed_class", False) else int(vit.num_prefix_tokens)
            grid = list(vit.patch_embed.grid_size)
            old = int(round((w.shape[1] - n_prefix) ** 0.5))
            w = resample_abs_pos_embed(w, new_size=grid, num_prefix_tokens=n_prefix)
            adapted[name] = f"grid {old}x{old} -> {grid[0]}x{grid[1]} (bicubic, antialiased)"
        if (
            name.startswith(head)
            and w.shape != t.shape
            and classes
            and source_classes
            and w.shape[1:] == t.shape[1:]
            and set(classes) & set(source_classes)
        ):
            # A lensdask checkpoint: keep what it learned for the classes both have, by name;
            # only the new classes' rows start from random.
            kept = [c for c in classes if c in source_classes]
            w_new = t.clone()
            for c in kept:
                w_new[classes.index(c)] = w[source_classes.index(c)]
            w = w_new
            adapted[name] = f"rows of classes {kept} kept by name; {[c for c in classes if c not in kept]} new"
        if w.shape != t.shape:
            if name.startswith(head):
                skipped[name] = f"shape {tuple(w.shape)} in the file, {tuple(t.shape)} here; randomly initialised"
            else:
                bad.append(f"{name} {tuple(state[name].shape)} vs {tuple(t.shape)}")
            continue
        out[name] = w.contiguous()
    if bad:
        shown = "; ".join(bad[:5]) + (f"; and {len(bad) - 5} more" if len(bad) > 5 else "")
        raise CheckpointError(
            f"pretrained weights do not fit this architecture (width, depth and MLP size must match): {shown}"
        )
    report = {
        "loaded": len(out),
        "adapted": adapted,
        "skipped": skipped,
        "unused": sorted(k for k in state if k not in target),
    }
    return out, report


def load_pretrained(
    model: torch.nn.Module, path: str | os.PathLike, bands: list[str], classes: list[str] | None = None
) -> dict:
    """Initialise ``model`` in place from a local pretrained file.

    Parameters
    ----------
    model : timm model
        The freshly built model.
    path : str or path
        Weights file or lensdask checkpoint directory (see the module docstring).
    bands : list of str
        The data's bands in input-channel order.
    classes : list of str, optional
        The model's classes; from a lensdask checkpoint, the head rows of the classes
        both share are kept (matched by name), so retraining with new false-positive
        classes starts from what the model already knew.

    Returns
    -------
    dict
        ``file``, ``sha256`` (of the file; absent for a directory), and the
        report of :func:`adapt_state_dict`; recorded in the model card.
    """
    path = pathlib.Path(os.fspath(path)).expanduser()
    state, card = read_weights(path)
    source_bands = list(card["bands"]) if card is not None else None
    source_classes = list(card["classes"]) if card is not None else None
    new, report = adapt_state_dict(state, model, list(bands), source_bands, classes, source_classes)
    model.load_state_dict(new, strict=False)
    info: dict[str, object] = {"file": str(path)}
    if card is not None:
        info["model_id"] = card.get("model_id")
    else:
        info["sha256"] = sha256_file(path)
    info.update(report)
    return info


# -- a model of one survey on another survey's cutouts ------------------------------------------
BAND_WAVELENGTH_NM = {
    "u": 365.0,
    "g": 480.0,
    "r": 620.0,
    "i": 760.0,
    "z": 900.0,
    "y": 1000.0,
    "Y": 1000.0,
    "VIS": 715.0,
}
"""Approximate effective wavelength (nm) of each band name the survey profiles use (Euclid VIS: 550-900 nm)."""


def _wavelength(band: str) -> float:
    try:
        return BAND_WAVELENGTH_NM[band]
    except KeyError:
        raise ModelMismatchError(
            f"band {band!r} has no known wavelength to adapt a model across surveys (known: "
            f"{', '.join(BAND_WAVELENGTH_NM)})"
        ) from None


def survey_channels(source: list[str], target: list[str]) -> tuple[list[list[tuple[int, float]]], str]:
    """How a model's input channels (bands ``source``) become those of bands ``target``.

    Each target band takes the source band of the same name, else the nearest in wavelength
    (:data:`BAND_WAVELENGTH_NM`); a source band taken by several target bands is shared among them
    (divided by their number), and a source band no target band takes is added to the target band
    nearest to it. The kernels of every target channel therefore sum to the kernels of every
    source channel: an image that is the same in every band embeds as before.

    Returns
    -------
    (list, str)
        Per target band, ``[(source channel, weight), ...]``; and how, for the model card.
    """

    def closest(band: str, among: list[str]) -> str:
        w = _wavelength(band)
        return min(among, key=lambda s: abs(_wavelength(s) - w))

    nearest = [b if b in source else closest(b, source) for b in target]
    mix: list[list[tuple[int, float]]] = []
    for b in nearest:
        mix.append([(source.index(b), 1.0 / nearest.count(b))])
    for j, s in enumerate(source):
        if s not in nearest:
            mix[target.index(closest(s, target))].append((j, 1.0))
    how = ", ".join(
        f"{b}<-" + "+".join(source[j] + ("" if w == 1.0 else f"/{round(1 / w)}") for j, w in m)
        for b, m in zip(target, mix)
    )
    return mix, how


def adapt_to_survey(model: torch.nn.Module, card: dict, target) -> tuple[torch.nn.Module, dict]:
    """A model trained on one survey's cutouts, adapted to another survey's: bands, stamp and pixel scale.

    The first convolution over the bands (a ViT's patch embedding, a CNN's stem) is remapped from the
    card's bands to ``target``'s
    (:func:`survey_channels`); the model keeps its input side, and the card's ``input_size`` makes
    every caller resample the target's stamps to it (bilinear, antialiased, as ``train --resize``
    does), so a stamp of the same field (every profile's stamp is ~11.8 arcsec) reaches the model
    at about the pixel scale it was trained at. Nothing is retrained: scores on another survey are
    an extrapolation, to be checked (``lensdask evaluate`` / ``inject``) before they are trusted.

    Parameters
    ----------
    model : torch.nn.Module
        The loaded model (:func:`~lensdask.model.checkpoint.load_checkpoint`).
    card : dict
        Its card.
    target : object
        The cutouts: ``bands``, ``stamp`` (px), ``pixel_scale`` (arcsec/px) and ``survey`` (a
        :class:`~lensdask.store.CutoutStore`).

    Returns
    -------
    (torch.nn.Module, dict)
        The adapted model (eval mode, on the CPU) and its card: the target's ``bands``, ``stamp``,
        ``pixel_scale`` and ``survey``, ``input_size`` the model's side, and ``adapted_from`` (the
        original ``model_id``, ``survey``, ``bands``, ``stamp``, ``pixel_scale`` and the channel map).
        ``sha256`` and ``model_id`` are dropped (:func:`~lensdask.model.checkpoint.save_checkpoint`
        sets new ones).

    Raises
    ------
    ModelMismatchError
        A band without a known wavelength, or a model whose first convolution is not over the
        card's bands.
    """
    from .architectures import build_model, input_conv_name
    from .checkpoint import card_survey, is_committee

    if is_committee(card):
        raise ModelMismatchError(
            f"committee {card.get('model_id')} cannot be adapted to another survey as a whole: adapt its members "
            "(--adapt-survey on each), or train members on the survey, and build a committee of those"
        )
    source, bands = list(card["bands"]), [str(b) for b in target.bands]
    mix, how = survey_channels(source, bands)
    state = {k: v.detach().to("cpu") for k, v in model.state_dict().items()}
    first = input_conv_name(model)
    if first not in state or state[first].ndim != 4 or state[first].shape[1] != len(source):
        raise ModelMismatchError(f"model {card.get('model_id')}: its first convolution ({first}) is not over {source}")
    w = state[first]
    state[first] = torch.stack([sum(w[:, j] * f for j, f in m) for m in mix], dim=1).contiguous()
    kwargs = dict(card["arch_kwargs"], in_chans=len(bands))
    net = build_model(kwargs)
    net.load_state_dict(state, strict=True)
    net.eval()
    side = int(card.get("input_size") or card["stamp"])
    new = {k: v for k, v in card.items() if k not in ("sha256", "model_id", "evaluations")}
    new.update(
        arch_kwargs=kwargs,
        bands=bands,
        stamp=int(target.stamp),
        input_size=side,
        pixel_scale=float(target.pixel_scale),
        survey=str(target.survey),
        adapted_from={
            "model_id": card.get("model_id"),
            "survey": card_survey(card),
            "bands": source,
            "stamp": int(card["stamp"]),
            "pixel_scale": float(card["pixel_scale"]),
            "channels": how,
            "input": f"{int(target.stamp)} px stamps resampled to {side} px",
        },
    )
    return net, new


def adapt_checkpoint(model_dir: str | os.PathLike | None, target, out_dir: str | os.PathLike) -> pathlib.Path:
    """:func:`adapt_to_survey` of a checkpoint, saved as a checkpoint in ``out_dir`` (returned).

    For callers that hand a model directory to workers (:func:`lensdask.search.search`).
    """
    from .checkpoint import load_checkpoint, save_checkpoint

    net, card = load_checkpoint(model_dir, device="cpu")
    net, card = adapt_to_survey(net, card, target)
    save_checkpoint(net, out_dir, card)
    return pathlib.Path(os.fspath(out_dir))
