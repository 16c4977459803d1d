"""Named Vision Transformer shapes for lens finding, built with timm.

Each entry of :data:`ARCHITECTURES` holds keyword arguments of
:class:`timm.models.vision_transformer.VisionTransformer` plus a one-line
``description``. The input side (``in_chans``, ``img_size``) and the number of
classes come from the data, so they are passed to :func:`create_model`, not
stored here. A checkpoint records the full keyword set it was built with, so
editing this table never breaks a saved model.

No weights are ever downloaded: every model starts from random initialisation
or from a local file (:mod:`lensdask.model.pretrained`).

For 4-band 45 px stamps and two classes (``describe_architectures()``; GFLOPs
are forward FLOPs per cutout, multiply-add = 2)::

    name           params   tokens  GFLOPs   use
    vit-lens-tiny   0.39 M      82   0.072   CPU default
    vit-lens-conv   0.41 M      82   0.104   CPU, convolutional stem
    vit-tiny        5.4 M       82   0.94    small GPU
    vit-small      21.4 M       82   3.6     GPU
    vit-base       85.2 M       82  14.2     GPU; the reference ViT-Base of lens-finding papers
    test-vit        0.03 M      26   0.0015  unit tests (at 45 px)

Training costs about three times the forward FLOPs. ``patch_size`` can be
overridden (e.g. 16 with ``resize=224`` to keep an ImageNet patch grid).
"""

from __future__ import annotations

import copy
from typing import Any

import pandas as pd
import torch

ARCHITECTURES: dict[str, dict] = {
    "vit-lens-tiny": dict(
        patch_size=5,
        embed_dim=96,
        depth=4,
        num_heads=3,
        mlp_ratio=3.0,
        description="CPU default: 5 px patches (81 tokens on 45 px), width 96, 4 blocks, ~0.4 M parameters",
    ),
    "vit-lens-conv": dict(
        patch_size=5,
        embed_dim=96,
        depth=4,
        num_heads=3,
        mlp_ratio=3.0,
        stem_channels=[24, 24],
        description="vit-lens-tiny after a convolutional stem (two 3x3 conv + BN + GELU layers of 24 channels "
        "at full resolution, then 5 px patches): ~0.45 M parameters, CPU",
    ),
    "vit-tiny": dict(
        patch_size=5,
        embed_dim=192,
        depth=12,
        num_heads=3,
        mlp_ratio=4.0,
        description="ViT-Ti width (192, 12 blocks, 3 heads) with 5 px patches, ~5.4 M parameters; "
        "small GPU or patient CPU",
    ),
    "vit-small": dict(
        patch_size=5,
        embed_dim=384,
        depth=12,
        num_heads=6,
        mlp_ratio=4.0,
        description="ViT-S width (384, 12 blocks, 6 heads) with 5 px patches, ~21 M parameters; for a GPU",
    ),
    "vit-base": dict(
        patch_size=5,
        embed_dim=768,
        depth=12,
        num_heads=12,
        mlp_ratio=4.0,
        description="ViT-Base (768, 12 blocks, 12 heads) with 5 px patches, ~86 M parameters; for a GPU",
    ),
    "test-vit": dict(
        patch_size=9,
        embed_dim=32,
        depth=2,
        num_heads=2,
        mlp_ratio=2.0,
        description="Tiny model for unit tests (like timm's test_vit, smaller): 9 px patches, width 32, 2 blocks",
    ),
}
"""Architecture name -> VisionTransformer keyword arguments and a ``description``."""


def arch_kwargs(arch: str, *, in_chans: int, img_size: int, num_classes: int, patch_size: int | None = None) -> dict:
    """The complete ``VisionTransformer`` keyword arguments for a named architecture.

    Parameters
    ----------
    arch : str
        A key of :data:`ARCHITECTURES`.
    in_chans : int
        Number of bands.
    img_size : int
        Stamp side, pixels.
    num_classes : int
        Number of output classes.
    patch_size : int, optional
        Overrides the architecture's patch side, pixels.

    Raises
    ------
    ValueError
        ``arch`` is not a known name.
    """
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}; known: {', '.join(ARCHITECTURES)}")
    kwargs = {k: v for k, v in copy.deepcopy(ARCHITECTURES[arch]).items() if k != "description"}
    kwargs.update(in_chans=int(in_chans), img_size=int(img_size), num_classes=int(num_classes))
    if patch_size is not None:
        if not 1 <= int(patch_size) <= int(img_size):
            raise ValueError(f"patch_size {patch_size} must lie in 1..{img_size} (the model's input side)")
        kwargs["patch_size"] = int(patch_size)
    return kwargs


def _conv_stem_embed(stem_channels: list[int]):
    """A timm ``PatchEmbed`` class whose patches are cut from convolutional features, not raw pixels.

    ``stem_channels`` lists the widths of stride-1 3x3 convolutions (each followed by
    batch normalisation and GELU) applied at full resolution before the patch
    projection. Early convolutions give a small ViT the locality bias that a small
    training set cannot teach it (Xiao et al. 2021, arXiv:2106.14881).
    """
    from timm.layers import PatchEmbed

    class ConvStemPatchEmbed(PatchEmbed):
        def __init__(self, *, in_chans: int, **kwargs):
            super().__init__(in_chans=stem_channels[-1], **kwargs)
            layers: list[torch.nn.Module] = []
            width = in_chans
            for c in stem_channels:
                conv = torch.nn.Conv2d(width, c, 3, padding=1, bias=False)
                layers += [conv, torch.nn.BatchNorm2d(c), torch.nn.GELU()]
                width = c
            self.stem = torch.nn.Sequential(*layers)

        def forward(self, x):
            return super().forward(self.stem(x))

    return ConvStemPatchEmbed


def build_vit(kwargs: dict) -> torch.nn.Module:
    """A timm ``VisionTransformer`` from a complete keyword set (as stored in a model card).

    The lensdask key ``stem_channels`` (a list of widths), where present, puts a
    convolutional stem before the patch embedding (:func:`_conv_stem_embed`).
    """
    from timm.models.vision_transformer import VisionTransformer

    kwargs = dict(kwargs)
    stem = kwargs.pop("stem_channels", None)
    if stem:
        kwargs["embed_layer"] = _conv_stem_embed([int(c) for c in stem])
    return VisionTransformer(**kwargs)


def create_model(arch: str, *, in_chans: int, img_size: int, num_classes: int) -> torch.nn.Module:
    """Create a randomly initialised timm ``VisionTransformer``.

    Parameters
    ----------
    arch : str
        A key of :data:`ARCHITECTURES` (``"vit-lens-tiny"``, ``"vit-small"``,
        ``"vit-base"``, ``"test-vit"``).
    in_chans : int
        Number of bands (input channels).
    img_size : int
        Stamp side, pixels. A side that is not a multiple of the patch size
        loses its last ``img_size % patch_size`` rows and columns.
    num_classes : int
        Number of output classes (logits).

    Returns
    -------
    torch.nn.Module
        The model, in training mode, on the CPU. Weights are random: nothing is
        downloaded.

    Raises
    ------
    ValueError
        ``arch`` is not a known name; the message lists the known names.
    """
    return build_vit(arch_kwargs(arch, in_chans=in_chans, img_size=img_size, num_classes=num_classes))


def _gflops(model: Any, in_chans: int, img_size: int) -> float:
    """Forward GFLOPs for one cutout (multiply-add = 2 FLOPs), by counting matmuls analytically.

    ``model`` is a timm ``VisionTransformer`` (typed ``Any``: torch types its submodules as
    ``Tensor | Module``).
    """
    d = model.embed_dim
    n_tok = model.patch_embed.num_patches + model.num_prefix_tokens
    p = model.patch_embed.patch_size[0]
    flops = 0.0
    for conv in getattr(model.patch_embed, "stem", ()):
        if isinstance(conv, torch.nn.Conv2d):  # stride 1, same padding: every pixel
            flops += 2.0 * img_size * img_size * conv.in_channels * conv.out_channels * 9
            in_chans = conv.out_channels
    flops += 2.0 * model.patch_embed.num_patches * in_chans * p * p * d
    for blk in model.blocks:
        hidden = blk.mlp.fc1.out_features
        flops += 2.0 * n_tok * d * 3 * d  # qkv
        flops += 2.0 * 2 * n_tok * n_tok * d  # q k^T and attn v
        flops += 2.0 * n_tok * d * d  # proj
        flops += 2.0 * 2 * n_tok * d * hidden  # mlp
    flops += 2.0 * d * model.num_classes
    return flops / 1e9


def describe_architectures(in_chans: int = 4, img_size: int = 45, num_classes: int = 2) -> pd.DataFrame:
    """A table of the named architectures for a given input.

    Parameters
    ----------
    in_chans : int
        Number of bands.
    img_size : int
        Stamp side, pixels.
    num_classes : int
        Number of classes.

    Returns
    -------
    pandas.DataFrame
        Columns ``name``, ``params`` (trainable parameters), ``tokens`` (patch
        tokens plus the class token), ``gflops`` (forward GFLOPs per cutout) and
        ``description``.
    """
    rows = []
    for name, spec in ARCHITECTURES.items():
        with torch.device("meta"):
            m: Any = create_model(name, in_chans=in_chans, img_size=img_size, num_classes=num_classes)
        rows.append(
            dict(
                name=name,
                params=int(sum(p.numel() for p in m.parameters())),
                tokens=int(m.patch_embed.num_patches + m.num_prefix_tokens),
                gflops=round(_gflops(m, in_chans, img_size), 4),
                description=spec["description"],
            )
        )
    return pd.DataFrame(rows)
