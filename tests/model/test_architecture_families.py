"""Architecture families beside the ViTs: timm ResNets and ConvNeXts built from model cards.

Every existing card names no ``family`` and must still build a ViT; a CNN card rebuilds its
network (batch-norm statistics included), its FLOPs are counted on one forward pass, and the
pretrained and survey-adaptation paths find a CNN's first convolution and classifier, or refuse
a file of another family clearly. Models are ``test-resnet`` (12 k parameters) and ``test-vit``.
"""

from __future__ import annotations

import types

import numpy as np
import pytest
import torch

from lensdask.errors import CheckpointError
from lensdask.model import create_model, load_checkpoint, predict_proba, save_checkpoint
from lensdask.model.architectures import (
    ARCHITECTURES,
    arch_kwargs,
    build_model,
    build_vit,
    classifier_prefix,
    describe_architectures,
    input_conv_name,
)
from lensdask.model.pretrained import adapt_to_survey, load_pretrained
from lensdask.normalise import DEFAULT_NORMALISATION

STAMP = 27


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def card_of(arch, bands="griz", stamp=STAMP, classes=("non-lens", "lens")):
    return {
        "arch": arch,
        "arch_kwargs": arch_kwargs(arch, in_chans=len(bands), img_size=stamp, num_classes=len(classes)),
        "bands": list(bands),
        "stamp": stamp,
        "pixel_scale": 0.263,
        "normalisation": dict(DEFAULT_NORMALISATION),
        "classes": list(classes),
        "lens_class": list(classes).index("lens"),
    }


def test_families_in_the_table_and_old_cards_are_vits():
    fams = {name: spec.get("family", "vit") for name, spec in ARCHITECTURES.items()}
    assert fams["resnet-lens"] == fams["test-resnet"] == "resnet" and fams["convnext-lens"] == "convnext"
    assert fams["vit-lens-tiny"] == fams["vit-lens-small"] == "vit"
    kwargs = arch_kwargs("vit-lens-tiny", in_chans=4, img_size=45, num_classes=2)
    assert "family" not in kwargs  # ViT cards are what they always were
    assert build_vit is build_model
    assert type(build_model(kwargs)).__name__ == "VisionTransformer"
    with pytest.raises(ValueError, match="unknown architecture family 'mamba'"):
        build_model(dict(kwargs, family="mamba"))
    with pytest.raises(ValueError, match="no patch size"):
        arch_kwargs("resnet-lens", in_chans=4, img_size=45, num_classes=2, patch_size=3)


def test_cnn_stems_keep_full_resolution():
    resnet = create_model("resnet-lens", in_chans=4, img_size=45, num_classes=2)
    feats = resnet.forward_features(torch.zeros(1, 4, 45, 45))
    assert feats.shape[-2:] == (6, 6)  # 45 -> 45 (stem, no pool) -> 23 -> 12 -> 6; timm's stem: 2x2
    assert isinstance(resnet.maxpool, torch.nn.Identity) and resnet.conv1[0].stride == (1, 1)
    convnext = create_model("convnext-lens", in_chans=4, img_size=45, num_classes=2)
    first_stage = convnext.stages[0](convnext.stem(torch.zeros(1, 4, 45, 45)))
    assert first_stage.shape[-2:] == (22, 22)
    assert input_conv_name(resnet) == "conv1.0.weight" and classifier_prefix(resnet) == "fc."
    assert input_conv_name(convnext) == "stem.0.weight" and classifier_prefix(convnext) == "head.fc."
    vit = create_model("test-vit", in_chans=4, img_size=STAMP, num_classes=2)
    assert input_conv_name(vit) == "patch_embed.proj.weight" and classifier_prefix(vit) == "head."


def test_describe_counts_cnn_flops_and_keeps_vit_figures():
    df = describe_architectures(in_chans=4, img_size=45).set_index("name")
    assert df.loc["vit-lens-tiny", "gflops"] == 0.0723 and df.loc["vit-lens-tiny", "tokens"] == 82
    assert df.loc["resnet-lens", "family"] == "resnet" and df["tokens"].isna()["resnet-lens"]
    assert 0.5e6 <= df.loc["resnet-lens", "params"] <= 1e6 and 0.1 < df.loc["resnet-lens", "gflops"] < 0.3
    assert 0.5e6 <= df.loc["convnext-lens", "params"] <= 2e6 and df.loc["convnext-lens", "gflops"] > 0.01
    assert 1e6 <= df.loc["vit-lens-small", "params"] <= 2e6
    assert df.loc["test-resnet", "params"] < 50_000


def test_resnet_checkpoint_round_trip(tmp_path):
    torch.manual_seed(0)
    model = create_model("test-resnet", in_chans=4, img_size=STAMP, num_classes=2)
    model.train()
    model(torch.randn(8, 4, STAMP, STAMP))  # moves the batch-norm statistics
    card = save_checkpoint(model.eval(), tmp_path / "ck", card_of("test-resnet"))
    assert card["model_id"].startswith("test-resnet-") and card["arch_kwargs"]["family"] == "resnet"
    loaded, card2 = load_checkpoint(tmp_path / "ck")
    torch.testing.assert_close(loaded.bn1.running_mean, model.bn1.running_mean)
    x = np.random.default_rng(0).normal(10, 3, (5, 4, STAMP, STAMP)).astype("float32")
    np.testing.assert_array_equal(predict_proba(model, card, x), predict_proba(loaded, card2, x))


def test_pretrained_cnn_by_band_name_and_other_family_refused(tmp_path):
    torch.manual_seed(0)
    src = create_model("test-resnet", in_chans=4, img_size=STAMP, num_classes=2)
    save_checkpoint(src.eval(), tmp_path / "ck", card_of("test-resnet"))
    dst = create_model("test-resnet", in_chans=2, img_size=STAMP, num_classes=3)
    info = load_pretrained(dst, tmp_path / "ck", ["z", "g"], ["non-lens", "lens", "ring"])
    w = src.state_dict()["conv1.0.weight"]
    torch.testing.assert_close(dst.state_dict()["conv1.0.weight"], w[:, [3, 0]])
    assert "bands matched by name" in info["adapted"]["conv1.0.weight"]
    torch.testing.assert_close(dst.state_dict()["fc.weight"][:2], src.state_dict()["fc.weight"])  # kept by name
    vit = create_model("test-vit", in_chans=4, img_size=STAMP, num_classes=2)
    save_checkpoint(vit, tmp_path / "vit", card_of("test-vit"))
    resnet = create_model("test-resnet", in_chans=4, img_size=STAMP, num_classes=2)
    with pytest.raises(CheckpointError, match="do not fit this architecture"):
        load_pretrained(resnet, tmp_path / "vit", list("griz"))


def test_adapt_cnn_to_another_survey():
    torch.manual_seed(0)
    model = create_model("test-resnet", in_chans=4, img_size=STAMP, num_classes=2).eval()
    card = dict(card_of("test-resnet"), model_id="test-resnet-x", survey="des")
    target = types.SimpleNamespace(bands=["g", "r", "i", "z", "y"], stamp=40, pixel_scale=0.2, survey="lsst")
    net, new = adapt_to_survey(model, card, target)
    assert new["arch_kwargs"]["in_chans"] == 5 and new["arch_kwargs"]["family"] == "resnet"
    assert net.state_dict()["conv1.0.weight"].shape[1] == 5 and new["input_size"] == STAMP
    x = torch.randn(2, 4, STAMP, STAMP)
    with torch.no_grad():  # y shares z's kernel: an image equal in z and y embeds as before in z
        a = model(x)
        b = net(torch.cat([x, x[:, 3:]], 1))
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
