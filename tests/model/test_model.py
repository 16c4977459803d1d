"""The model package: normalisation, checkpoints, inference, training, evaluation.

Models are ``test-vit`` and stores hold tens of rows of synthetic galaxies
(a Gaussian blob, plus an Einstein-ring-like annulus for lenses), so the task
is learnable in a few epochs on a CPU.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from lensdask.errors import CheckpointError, LensdaskError, ModelMismatchError
from lensdask.model import (
    ARCHITECTURES,
    create_model,
    default_model_dir,
    evaluate,
    load_checkpoint,
    predict_proba,
    save_checkpoint,
    train,
)
from lensdask.model.architectures import arch_kwargs, describe_architectures
from lensdask.model.checkpoint import check_compatible, read_card, resolve_model_dir
from lensdask.model.infer import nonfinite_rows, resolve_device
from lensdask.normalise import DEFAULT_NORMALISATION, normalise

from conftest import make_tiny_store

STAMP = 27  # multiple of test-vit's 9 px patch: 9 tokens, fast


def synth(n, rng, stamp=STAMP, bands=4, lens_frac=0.5):
    """Noisy Gaussian galaxies; lenses add a ring of radius 6-9 px."""
    yy, xx = np.mgrid[:stamp, :stamp] - (stamp - 1) / 2
    r = np.hypot(xx, yy)
    labels = np.zeros(n, int)
    labels[: int(round(n * lens_frac))] = 1
    labels = rng.permutation(labels)
    imgs = rng.normal(0, 1, (n, bands, stamp, stamp)).astype("f4")
    for i in range(n):
        imgs[i] += rng.uniform(5, 20) * np.exp(-0.5 * (r / rng.uniform(1.5, 2.5)) ** 2)
        if labels[i]:
            imgs[i] += rng.uniform(4, 6) * np.exp(-0.5 * ((r - rng.uniform(6, 9)) / 1.2) ** 2)
    return imgs, labels


def make_store(path, n_tiles=2, per_tile=40, seed=0, labels=None, bands="griz", stamp=STAMP, pixel_scale=0.263):
    """A labelled store a model can learn from: :func:`synth`'s rings (label 1) and plain galaxies (label 0)."""
    rng = np.random.default_rng(seed)
    st = make_tiny_store(
        path,
        tiles=[f"t{i}" for i in range(n_tiles)],
        rows=0,
        capacity=per_tile,
        bands=list(bands),
        pixel_scale=pixel_scale,
        stamp=stamp,
        overwrite=True,
    )
    for t in range(n_tiles):
        im, lab = synth(per_tile, rng, stamp, len(bands))
        if labels is not None:
            lab = np.full(per_tile, labels)
        table = pd.DataFrame({"object_id": np.arange(per_tile) + t * per_tile, "ra": 1.0, "dec": -30.0, "label": lab})
        st.write_tile(t, im, table)
    return st


def tiny_card(model, bands="griz", stamp=STAMP):
    return {
        "arch": "test-vit",
        "arch_kwargs": arch_kwargs("test-vit", in_chans=len(bands), img_size=stamp, num_classes=2),
        "bands": list(bands),
        "stamp": stamp,
        "pixel_scale": 0.263,
        "normalisation": dict(DEFAULT_NORMALISATION),
        "classes": ["non-lens", "lens"],
        "lens_class": 1,
    }


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return make_store(tmp_path_factory.mktemp("s") / "train.zarr", n_tiles=3, per_tile=64)


@pytest.fixture(scope="module")
def trained(store, tmp_path_factory):
    out = tmp_path_factory.mktemp("m") / "model"
    card = train(
        store.url,
        out,
        arch="test-vit",
        epochs=6,
        batch_size=32,
        learning_rate=3e-3,
        device="cpu",
        seed=1,
        validation_fraction=0.25,
        command="pytest",
        progress=False,
    )
    return out, card


# -- architectures ----------------------------------------------------------------------
def test_architectures_and_unknown_name():
    assert {"vit-lens-tiny", "vit-small", "vit-base", "test-vit"} <= set(ARCHITECTURES)
    m = create_model("test-vit", in_chans=4, img_size=STAMP, num_classes=3)
    assert m(torch.zeros(2, 4, STAMP, STAMP)).shape == (2, 3)
    with pytest.raises(ValueError, match="vit-lens-tiny"):
        create_model("resnet-9000", in_chans=4, img_size=45, num_classes=2)


def test_describe_architectures():
    df = describe_architectures(in_chans=4, img_size=45)
    row = df.set_index("name").loc["vit-lens-tiny"]
    assert row["tokens"] == 82 and 3e5 <= row["params"] <= 1e6
    assert 80e6 <= df.set_index("name").loc["vit-base", "params"] <= 90e6
    assert {"name", "params", "tokens", "gflops", "description"} <= set(df.columns)


# -- normalisation ----------------------------------------------------------------------
def test_normalise_finite_for_degenerate_stamps():
    x = np.zeros((3, 4, 20, 20), np.float32)
    x[1] = 7.0
    x[2, :, 10, 10] = 1e3  # noiseless point source: border MAD is zero
    y = normalise(x, DEFAULT_NORMALISATION)
    assert y.dtype == np.float32 and np.isfinite(y).all()
    assert (y[:2] == 0).all()


def test_normalise_invariant_to_flux_scale_and_sky():
    x, _ = synth(4, np.random.default_rng(3))
    y = normalise(x, DEFAULT_NORMALISATION)
    np.testing.assert_allclose(normalise(x * 3.7e-4, DEFAULT_NORMALISATION), y, atol=2e-5)
    np.testing.assert_allclose(normalise(x * 250 + 40, DEFAULT_NORMALISATION), y, atol=2e-4)


def test_normalise_keeps_nan_rows_and_rejects_bad_spec():
    x, _ = synth(2, np.random.default_rng(0))
    x[0, 1, 3, 3] = np.nan
    y = normalise(x)
    assert np.isfinite(y[1]).all()
    with pytest.raises(LensdaskError, match="method"):
        normalise(x, {"method": "zscale-ish"})


# -- checkpoints ------------------------------------------------------------------------
def test_save_load_round_trip(tmp_path):
    torch.manual_seed(0)
    model = create_model("test-vit", in_chans=4, img_size=STAMP, num_classes=2)
    card = save_checkpoint(model, tmp_path / "ck", tiny_card(model))
    assert card["model_id"] == f"test-vit-{card['sha256'][:12]}"
    assert read_card(tmp_path / "ck") == card
    loaded, card2 = load_checkpoint(tmp_path / "ck")
    assert not loaded.training and card2 == card
    x, _ = synth(5, np.random.default_rng(1))
    np.testing.assert_array_equal(predict_proba(model, card, x), predict_proba(loaded, card2, x))


def test_conv_stem_architecture_round_trip(tmp_path):
    """vit-lens-conv: convolutions before the patches; the card rebuilds it, batch-norm statistics included."""
    kwargs = arch_kwargs("vit-lens-conv", in_chans=4, img_size=STAMP, num_classes=2)
    assert kwargs["stem_channels"] == [24, 24]
    torch.manual_seed(0)
    model = create_model("vit-lens-conv", in_chans=4, img_size=STAMP, num_classes=2)
    convs = [m for m in model.patch_embed.stem if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [24, 24] and model.patch_embed.proj.in_channels == 24
    model.train()
    model(torch.randn(8, 4, STAMP, STAMP))  # moves the batch-norm running statistics off their initial values
    card = dict(tiny_card(model), arch="vit-lens-conv", arch_kwargs=kwargs)
    card = save_checkpoint(model.eval(), tmp_path / "ck", card)
    loaded, card2 = load_checkpoint(tmp_path / "ck")
    bn = model.patch_embed.stem[1]
    assert not torch.equal(bn.running_mean, torch.zeros_like(bn.running_mean))
    torch.testing.assert_close(loaded.patch_embed.stem[1].running_mean, bn.running_mean)
    x, _ = synth(5, np.random.default_rng(1))
    np.testing.assert_array_equal(predict_proba(model, card, x), predict_proba(loaded, card2, x))
    row = describe_architectures(in_chans=4, img_size=STAMP).set_index("name")
    assert row.loc["vit-lens-conv", "gflops"] > row.loc["vit-lens-tiny", "gflops"]


def test_corrupt_or_missing_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="no model directory"):
        load_checkpoint(tmp_path / "nothing-here")
    model = create_model("test-vit", in_chans=4, img_size=STAMP, num_classes=2)
    save_checkpoint(model, tmp_path / "ck", tiny_card(model))
    w = tmp_path / "ck" / "model.safetensors"
    w.write_bytes(w.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(tmp_path / "ck")
    # a card without a sha256 still fails cleanly on unreadable weights
    card = json.loads((tmp_path / "ck" / "model_card.json").read_text())
    del card["sha256"]
    (tmp_path / "ck" / "model_card.json").write_text(json.dumps(card))
    with pytest.raises(CheckpointError, match="cannot read"):
        load_checkpoint(tmp_path / "ck")
    (tmp_path / "ck" / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="no model.safetensors"):
        load_checkpoint(tmp_path / "ck")


def test_default_model_dir():
    if not (default_model_dir() / "model_card.json").exists():
        with pytest.raises(CheckpointError, match="lensdask train"):
            load_checkpoint(None)
    assert default_model_dir().parts[-3:] == ("lensdask", "data", "default_model")
    assert resolve_model_dir(None) == default_model_dir()


def test_the_shipped_model_follows_the_cutouts_survey():
    lsst = default_model_dir("lsst")
    assert lsst.parts[-3:] == ("lensdask", "data", "lsst_model")
    card = read_card(lsst)
    assert card["survey"] == "lsst" and card["bands"] == ["u", "g", "r", "i", "z", "y"] and card["stamp"] == 59
    assert resolve_model_dir("default", "lsst") == resolve_model_dir(None, "lsst") == lsst
    assert default_model_dir("des") == default_model_dir(None) == resolve_model_dir("default")
    # no model shipped for that survey: the DES model, which the survey check refuses on its cutouts
    assert default_model_dir("hsc-pdr3") == default_model_dir()
    # a survey name is data, never a path
    assert default_model_dir("../data/lsst") == default_model_dir("lsst_model") == default_model_dir()


def test_check_compatible(tmp_path):
    card = tiny_card(None)
    check_compatible(card, make_store(tmp_path / "ok.zarr", 1, 2))
    with pytest.raises(ModelMismatchError, match=r"\['g', 'r', 'i', 'z'\].*\['r', 'g', 'i', 'z'\]"):
        check_compatible(card, make_store(tmp_path / "b.zarr", 1, 2, bands="rgiz"))
    with pytest.raises(ModelMismatchError, match="27 px.*45 px"):
        check_compatible(card, make_store(tmp_path / "s.zarr", 1, 2, stamp=45))
    with pytest.raises(ModelMismatchError, match="0.263.*0.2"):
        check_compatible(card, make_store(tmp_path / "p.zarr", 1, 2, pixel_scale=0.2))


# -- inference ---------------------------------------------------------------------------
def test_predict_proba_nan_rows():
    torch.manual_seed(0)
    model = create_model("test-vit", in_chans=4, img_size=STAMP, num_classes=2)
    card = tiny_card(model)
    x, _ = synth(7, np.random.default_rng(2))
    x[2, 0, 0, 0] = np.nan
    x[5, 3, 4, 4] = np.inf
    bad = nonfinite_rows(x)
    assert bad.tolist() == [False, False, True, False, False, True, False]
    p = predict_proba(model, card, x, batch_size=3)
    assert p.shape == (7, 2) and p.dtype == np.float32
    assert np.isnan(p[bad]).all()
    assert np.isfinite(p[~bad]).all() and ((p[~bad] >= 0) & (p[~bad] <= 1)).all()
    np.testing.assert_allclose(p[~bad].sum(axis=1), 1, atol=1e-6)
    with pytest.raises(ModelMismatchError):
        predict_proba(model, card, x[:, :3])


def test_resolve_device():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type in ("cpu", "cuda")
    if not torch.cuda.is_available():
        with pytest.raises(LensdaskError, match="CUDA"):
            resolve_device("cuda")


# -- training and evaluation -------------------------------------------------------------
def test_train_learns_and_writes_card(trained):
    out, card = trained
    for key in (
        "arch",
        "arch_kwargs",
        "bands",
        "stamp",
        "pixel_scale",
        "normalisation",
        "classes",
        "lens_class",
        "training",
        "metrics",
        "lensdask_version",
        "created",
        "sha256",
        "model_id",
    ):
        assert key in card, key
    assert card["training"]["seed"] == 1 and card["training"]["command"] == "pytest"
    assert card["metrics"]["n_pos"] > 0 and card["metrics"]["n_neg"] > 0
    assert card["metrics"]["auroc"] > 0.8
    hist = card["training"]["history"]
    assert len(hist) == 6 and hist[-1]["loss"] < hist[0]["loss"]
    assert (out / "model.safetensors").is_file()
    assert json.loads((out / "model_card.json").read_text()) == card


def test_evaluate(trained, store, tmp_path):
    out, card = trained
    res = evaluate(store.url, out, json_path=tmp_path / "e.json", batch_size=50, device="cpu", progress=False)
    assert res["model_id"] == card["model_id"]
    assert res["n_pos"] + res["n_neg"] == store.n_rows and res["n_nan"] == 0
    assert res["auroc"] > 0.8
    assert json.loads((tmp_path / "e.json").read_text())["model_id"] == card["model_id"]


def test_train_is_deterministic(store, tmp_path):
    kw = dict(arch="test-vit", epochs=2, batch_size=32, device="cpu", seed=7, progress=False)
    a = train(store.url, tmp_path / "a", **kw)
    b = train(store.url, tmp_path / "b", **kw)
    assert a["sha256"] == b["sha256"]


def test_train_refuses_one_class(tmp_path):
    st = make_store(tmp_path / "one.zarr", 1, 10, labels=0)
    with pytest.raises(LensdaskError, match="at least two"):
        train(st.url, tmp_path / "m", arch="test-vit", epochs=1, device="cpu", progress=False)
