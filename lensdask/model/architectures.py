"""Named network shapes for lens finding, built with timm: Vision Transformers and two CNN families.

Each entry of :data:`ARCHITECTURES` holds the keyword arguments of one timm model class plus a
one-line ``description``. The key ``family`` names the class (:data:`FAMILIES`): ``vit``
(:class:`timm.models.vision_transformer.VisionTransformer`, the default, so entries and model
cards without ``family`` are ViTs), ``resnet`` (:class:`timm.models.resnet.ResNet`) or
``convnext`` (:class:`timm.models.convnext.ConvNeXt`). The input side (``in_chans``,
``img_size``) and the number of classes come from the data, so they are passed to
:func:`create_model`, not stored here. A checkpoint records the full keyword set it was built
with, so editing this table never breaks a saved model; :func:`build_model` rebuilds any of them.

A few keys are lensdask's, not timm's, because 45 px stamps want no early downsampling:
``stem_channels`` (ViT: convolutions before the patches), ``block`` (ResNet: ``"basic"`` or
``"bottleneck"``), ``stem_stride`` and ``stem_pool`` (ResNet: stride of the first stem
convolution and whether the stem's max-pool is kept; timm's are 2 and True) and
``stem_resolution`` (ConvNeXt: the first stage keeps the stem's resolution, where timm would
halve it again after a 2 px stem).

No weights are ever downloaded: every model starts from random initialisation
or from a local file (:mod:`lensdask.model.pretrained`).

For 4-band 45 px stamps and two classes (``describe_architectures()``; GFLOPs
are forward FLOPs per cutout, multiply-add = 2; ViTs counted analytically, CNNs by
``torch.utils.flop_counter`` on one forward pass)::

    name            params   tokens  GFLOPs   use
    vit-lens-tiny    0.39 M      82   0.072   CPU default
    vit-lens-conv    0.41 M      82   0.104   CPU, convolutional stem
    vit-lens-small   1.01 M      82   0.184   CPU, the larger ViT of the issue-27 bake-off
    resnet-lens      0.69 M       -   0.168   CPU, ResNet with a full-resolution stem
    convnext-lens    1.08 M       -   0.045   CPU, ConvNeXt with a 2 px stem
    vit-tiny         5.4 M       82   0.94    small GPU
    vit-small       21.4 M       82   3.6     GPU
    vit-base        85.2 M       82  14.2     GPU; the reference ViT-Base of lens-finding papers
    test-vit         0.03 M      26   0.0015  unit tests (at 45 px)
    test-resnet      0.012 M      -   0.0097  unit tests

Training costs about three times the forward FLOPs. ``patch_size`` can be
overridden (e.g. 16 with ``resize=224`` to keep an ImageNet patch grid) for the families that
have one (``vit``, ``convnext``).
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
    "vit-lens-small": dict(
        patch_size=5,
        embed_dim=128,
        depth=6,
        num_heads=4,
        mlp_ratio=3.0,
        description="vit-lens-tiny wider and deeper (width 128, 6 blocks, 4 heads), ~1.0 M parameters, ~2.6x "
        "its FLOPs: ~20 epochs of 57,600 rows in 2 h on 2 CPU cores",
    ),
    "resnet-lens": dict(
        family="resnet",
        block="basic",
        layers=[1, 1, 1, 1],
        channels=[24, 48, 96, 192],
        stem_type="deep",
        stem_width=12,
        stem_stride=1,
        stem_pool=False,
        description="compact ResNet: three 3x3 stem convolutions at full resolution (no stride, no max-pool), "
        "one basic block per stage at 45, 23, 12, 6 px, widths 24-192, ~0.7 M parameters, CPU",
    ),
    "convnext-lens": dict(
        family="convnext",
        depths=[2, 2, 4, 2],
        dims=[24, 48, 96, 192],
        patch_size=2,
        stem_resolution=True,
        description="compact ConvNeXt: 2 px patch stem, first stage kept at 22 px (then 11, 5, 2), 7x7 "
        "depthwise kernels, widths 24-192, ~1.1 M parameters at vit-lens-tiny's training speed, CPU",
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
    "test-resnet": dict(
        family="resnet",
        block="basic",
        layers=[1, 1, 1, 1],
        channels=[8, 8, 16, 16],
        stem_type="deep",
        stem_width=4,
        stem_stride=1,
        stem_pool=False,
        description="Tiny ResNet for unit tests: full-resolution stem of 4-8 channels, one basic block per stage, "
        "widths 8-16",
    ),
}
"""Architecture name -> the model class's keyword arguments (``family`` names the class; ``vit`` when
absent) and a ``description``."""


def arch_kwargs(arch: str, *, in_chans: int, img_size: int, num_classes: int, patch_size: int | None = None) -> dict:
    """The complete keyword arguments of a named architecture (what a model card stores as ``arch_kwargs``).

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
        Overrides the architecture's patch side, pixels (ViT: the patches; ConvNeXt: the stem).

    Raises
    ------
    ValueError
        ``arch`` is not a known name, or ``patch_size`` is given for a family without patches.
    """
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}; known: {', '.join(ARCHITECTURES)}")
    kwargs = {k: v for k, v in copy.deepcopy(ARCHITECTURES[arch]).items() if k != "description"}
    kwargs.update(in_chans=int(in_chans), img_size=int(img_size), num_classes=int(num_classes))
    if patch_size is not None:
        if "patch_size" not in kwargs:
            raise ValueError(f"architecture {arch!r} ({family_of(kwargs)}) has no patch size to override")
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


def _build_vit(kwargs: dict) -> torch.nn.Module:
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


def _build_resnet(kwargs: dict) -> torch.nn.Module:
    """A timm ``ResNet`` from a complete keyword set.

    lensdask keys: ``block`` (``"basic"`` or ``"bottleneck"``: timm takes the class), ``stem_stride``
    (stride of the stem's first convolution; timm's is 2) and ``stem_pool`` (False replaces the
    stem's stride-2 max-pool by the identity). With ``stem_stride=1, stem_pool=False`` the first
    stage sees every pixel of a 45 px stamp, where timm's stem would leave it 12 px. ``img_size``
    is recorded but unused (the network takes any side).
    """
    from timm.models.resnet import BasicBlock, Bottleneck, ResNet

    kwargs = dict(kwargs)
    kwargs.pop("img_size", None)
    blocks: dict[str, Any] = {"basic": BasicBlock, "bottleneck": Bottleneck}  # timm annotates the class as an instance
    block = kwargs.pop("block", "basic")
    if block not in blocks:
        raise ValueError(f"unknown ResNet block {block!r}; known: {', '.join(blocks)}")
    stem_stride = int(kwargs.pop("stem_stride", 2))
    stem_pool = bool(kwargs.pop("stem_pool", True))
    kwargs["layers"] = tuple(int(n) for n in kwargs["layers"])
    if "channels" in kwargs:
        kwargs["channels"] = tuple(int(c) for c in kwargs["channels"])
    model: Any = ResNet(blocks[block], **kwargs)  # Any: torch types submodules as Tensor | Module
    first = model.conv1[0] if isinstance(model.conv1, torch.nn.Sequential) else model.conv1
    first.stride = (stem_stride, stem_stride)
    if not stem_pool:
        model.maxpool = torch.nn.Identity()
    return model


def _build_convnext(kwargs: dict) -> torch.nn.Module:
    """A timm ``ConvNeXt`` from a complete keyword set.

    lensdask key ``stem_resolution``: True runs the first stage at the stem's resolution (timm
    halves it again after a 2 px stem to reach its usual stride 4; 45 px stamps would then be
    11 px before the first block). ``img_size`` is recorded but unused.
    """
    from timm.models.convnext import ConvNeXt

    kwargs = dict(kwargs)
    kwargs.pop("img_size", None)
    keep = bool(kwargs.pop("stem_resolution", False))
    for k in ("depths", "dims"):
        if k in kwargs:
            kwargs[k] = tuple(int(v) for v in kwargs[k])
    model = ConvNeXt(**kwargs)
    if keep:
        stage0: Any = model.stages[0]
        stage0.downsample = torch.nn.Identity()
    return model


FAMILIES = {"vit": _build_vit, "resnet": _build_resnet, "convnext": _build_convnext}
"""Architecture family (the ``family`` key of an entry or card; ``vit`` when absent) -> its builder."""


def family_of(kwargs: dict) -> str:
    """The family of a keyword set (``vit`` when it names none: every card written before families)."""
    return str(kwargs.get("family", "vit"))


def build_model(kwargs: dict) -> torch.nn.Module:
    """A timm model from a complete keyword set (as stored in a model card's ``arch_kwargs``).

    ``family`` picks the class (:data:`FAMILIES`; absent: ``vit``), the other keys are its
    arguments plus the lensdask keys of the module docstring.

    Raises
    ------
    ValueError
        An unknown family (a card written by a newer lensdask).
    """
    kwargs = dict(kwargs)
    family = str(kwargs.pop("family", "vit"))
    if family not in FAMILIES:
        raise ValueError(f"unknown architecture family {family!r}; known: {', '.join(FAMILIES)}")
    return FAMILIES[family](kwargs)


build_vit = build_model
"""The old name of :func:`build_model` (from when every architecture was a ViT); builds any family."""


def input_conv_name(model: torch.nn.Module) -> str:
    """The state-dict name of the weight of the first convolution over the input bands.

    ``patch_embed.proj.weight`` for a plain ViT, ``patch_embed.stem.0.weight`` after a
    convolutional stem, ``conv1.0.weight`` for a ResNet with a deep stem, ``stem.0.weight`` for
    a ConvNeXt: where pretrained weights and survey adaptation remap channels.

    Raises
    ------
    ValueError
        The model has no convolution.
    """
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Conv2d):
            return f"{name}.weight"
    raise ValueError(f"{type(model).__name__} has no convolution over its input")


def classifier_prefix(model: torch.nn.Module) -> str:
    """The state-dict prefix of the classifier (``head.`` for a ViT, ``fc.`` for a ResNet,
    ``head.fc.`` for a ConvNeXt): the tensors that depend on the number of classes."""
    get = getattr(model, "get_classifier", None)
    head = get() if callable(get) else None
    for name, module in model.named_modules():
        if head is not None and module is head and name:
            return name + "."
    return "head."


def create_model(arch: str, *, in_chans: int, img_size: int, num_classes: int) -> torch.nn.Module:
    """Create a randomly initialised timm model of a named architecture.

    Parameters
    ----------
    arch : str
        A key of :data:`ARCHITECTURES` (``"vit-lens-tiny"``, ``"resnet-lens"``,
        ``"convnext-lens"``, ``"vit-base"``, ``"test-vit"``...).
    in_chans : int
        Number of bands (input channels).
    img_size : int
        Stamp side, pixels. A side that is not a multiple of a ViT's patch size
        loses its last ``img_size % patch_size`` rows and columns; CNNs take any side.
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
    return build_model(arch_kwargs(arch, in_chans=in_chans, img_size=img_size, num_classes=num_classes))


def _gflops_counted(model: torch.nn.Module, in_chans: int, img_size: int) -> float:
    """Forward GFLOPs for one cutout as ``torch.utils.flop_counter`` counts them on one forward pass.

    Convolutions and matrix products (multiply-add = 2), as the analytic ViT count; normalisation,
    activations and pooling are not counted. ``model`` may live on the meta device (nothing is
    computed).
    """
    from torch.utils.flop_counter import FlopCounterMode

    device = next(model.parameters()).device
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.zeros(1, in_chans, img_size, img_size, device=device))
    return counter.get_total_flops() / 1e9


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


def forward_gflops(model: torch.nn.Module, family: str, in_chans: int, img_size: int) -> float:
    """Forward GFLOPs per cutout of a built model (multiply-add = 2).

    ViTs are counted analytically (:func:`_gflops`, the figures quoted since the first ViTs),
    other families by ``torch.utils.flop_counter`` on one forward pass; the two agree on a ViT.
    """
    if family == "vit":
        return _gflops(model, in_chans, img_size)
    return _gflops_counted(model, in_chans, img_size)


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
        Columns ``name``, ``family``, ``params`` (trainable parameters), ``tokens`` (patch
        tokens plus the class token; <NA> for CNNs), ``gflops`` (forward GFLOPs per cutout,
        :func:`forward_gflops`) and ``description``.
    """
    rows = []
    for name, spec in ARCHITECTURES.items():
        with torch.device("meta"):
            m: Any = create_model(name, in_chans=in_chans, img_size=img_size, num_classes=num_classes)
        family = family_of(spec)
        rows.append(
            dict(
                name=name,
                family=family,
                params=int(sum(p.numel() for p in m.parameters())),
                tokens=int(m.patch_embed.num_patches + m.num_prefix_tokens) if family == "vit" else pd.NA,
                gflops=round(forward_gflops(m, family, in_chans, img_size), 4),
                description=spec["description"],
            )
        )
    return pd.DataFrame(rows).astype({"tokens": "Int64"})
