"""Training features of issue 4: pretrained weights, resize, multi-class, streaming, resume,
early stopping, bad input, evaluation outputs, and the CLI options. Tiny models and stores."""

from __future__ import annotations

import importlib
import json

import numpy as np
import pandas as pd
import pytest
import torch

from lensdask.cli import main
from lensdask.errors import CheckpointError, LensdaskError
from lensdask.model import evaluate, load_checkpoint, predict_proba, train
from lensdask.model.data import augment, class_weights, fourier_shift, split_rows
from lensdask.model.pretrained import adapt_state_dict, load_pretrained
from lensdask.store import create_store

from test_model import STAMP, synth

KW = dict(arch="test-vit", batch_size=32, learning_rate=3e-3, device="cpu", progress=False)


def labelled_store(path, classes=("non-lens", "lens"), n_tiles=2, per_tile=48, seed=0, chunk_rows=16):
    """Rings are lenses; class 2 (if any) a bright compact blob; params theta_E and arc_snr_g for lenses."""
    rng = np.random.default_rng(seed)
    st = create_store(
        str(path),
        tiles=[f"t{i}" for i in range(n_tiles)],
        capacity=per_tile,
        bands=list("griz"),
        pixel_scale=0.263,
        stamp=STAMP,
        classes=list(classes),
        params=["theta_E", "arc_snr_g"],
        chunk_rows=chunk_rows,
        overwrite=True,
    )
    for t in range(n_tiles):
        im, lab = synth(per_tile, rng)
        if len(classes) > 2:
            third = rng.random(per_tile) < 0.3
            lab = np.where(third, 2, lab)
            im[third, :, STAMP // 2, STAMP // 2] += 40
        theta = np.where(lab == 1, rng.uniform(0.8, 3.0, per_tile), np.nan)
        snr = np.where(lab == 1, rng.uniform(10, 100, per_tile), np.nan)
        st.write_tile(
            t,
            im,
            pd.DataFrame(
                {
                    "object_id": np.arange(per_tile) + t * per_tile,
                    "ra": 1.0,
                    "dec": -30.0,
                    "label": lab,
                    "theta_E": theta,
                    "arc_snr_g": snr,
                }
            ),
        )
    return st


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return labelled_store(tmp_path_factory.mktemp("s") / "train.zarr")


# -- pretrained weights ------------------------------------------------------------------
def _imagenet_like(tmp_path, fmt="safetensors"):
    """A random timm ViT for 3 channels at 224 px (16 px patches, 1000 classes), test-vit's width and depth."""
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(123)
    src = VisionTransformer(
        img_size=224, patch_size=16, in_chans=3, embed_dim=32, depth=2, num_heads=2, mlp_ratio=2.0, num_classes=1000
    )
    state = {k: v.detach().clone() for k, v in src.state_dict().items()}
    if fmt == "safetensors":
        from safetensors.torch import save_file

        path = tmp_path / "vit_224.safetensors"
        save_file(state, str(path))
    else:
        path = tmp_path / "vit_224.pth"
        torch.save({"state_dict": {"module." + k: v for k, v in state.items()}}, path)
    return path, state


@pytest.mark.parametrize("fmt", ["safetensors", "pth"])
def test_pretrained_224_rgb_loads_into_4_band_stamp(tmp_path, fmt):
    from lensdask.model import create_model

    path, src = _imagenet_like(tmp_path, fmt)
    model = create_model("test-vit", in_chans=4, img_size=STAMP, num_classes=2)  # 9 px patches -> 3x3 grid
    info = load_pretrained(model, path, list("griz"))
    dst = model.state_dict()
    # everything of the same shape carries over unchanged
    for k in ("cls_token", "norm.weight", "blocks.0.attn.qkv.weight", "blocks.1.mlp.fc2.bias", "patch_embed.proj.bias"):
        torch.testing.assert_close(dst[k], src[k], rtol=0, atol=0)
    # the 1000-class head does not fit 2 classes: left random, and said so
    assert "head.weight" in info["skipped"] and not torch.equal(dst["head.weight"], src["head.weight"][:2])
    # position embeddings: class token copied, 14x14 grid resampled to 3x3 (bicubic, antialiased)
    pe = src["pos_embed"]
    torch.testing.assert_close(dst["pos_embed"][:, :1], pe[:, :1], rtol=0, atol=0)
    grid = pe[:, 1:].reshape(1, 14, 14, 32).permute(0, 3, 1, 2)
    want = torch.nn.functional.interpolate(grid, size=(3, 3), mode="bicubic", antialias=True, align_corners=False)
    torch.testing.assert_close(dst["pos_embed"][:, 1:], want.permute(0, 2, 3, 1).reshape(1, 9, 32))
    assert "14x14 -> 3x3" in info["adapted"]["pos_embed"]
    # patch embedding: 16 px kernels resampled to 9 px, RGB channels mapped by wavelength, x 3/4
    from timm.layers import resample_patch_embed

    k9 = resample_patch_embed(src["patch_embed.proj.weight"], [9, 9])
    w = dst["patch_embed.proj.weight"]
    assert w.shape == (32, 4, 9, 9)
    for band, rgb in zip("griz", (2, 1, 0, 0)):  # g<-B, r<-G, i<-R, z<-R
        torch.testing.assert_close(w[:, "griz".index(band)], k9[:, rgb] * 0.75)
    # the resampling keeps a smooth filter's response to a smooth patch resized with it (FlexiViT)
    F = torch.nn.functional
    w16 = (torch.linspace(0.5, 1, 16)[:, None] * torch.linspace(1, 0.2, 16)[None, :])[None, None].expand(1, 3, 16, 16)
    w9 = resample_patch_embed(w16.clone(), [9, 9])
    x16 = (torch.linspace(0, 2, 16)[:, None] + torch.linspace(1, 0, 16)[None, :] ** 2)[None, None]
    x9 = F.interpolate(x16, size=(9, 9), mode="bilinear", antialias=True, align_corners=False)
    assert float((w9[0, 0] * x9[0, 0]).sum()) == pytest.approx(float((w16[0, 0] * x16[0, 0]).sum()), rel=0.03)
    # a model whose width differs is refused, naming the tensors
    wide = create_model("vit-lens-tiny", in_chans=4, img_size=45, num_classes=2)
    with pytest.raises(CheckpointError, match="do not fit"):
        adapt_state_dict(src, wide, list("griz"))


def test_pretrained_bad_files(tmp_path):
    from lensdask.model import create_model

    model = create_model("test-vit", in_chans=4, img_size=STAMP, num_classes=2)
    with pytest.raises(CheckpointError, match="never downloaded"):
        load_pretrained(model, tmp_path / "none.safetensors", list("griz"))
    bad = tmp_path / "corrupt.safetensors"
    bad.write_bytes(b"\x00" * 64)
    with pytest.raises(CheckpointError, match="cannot read"):
        load_pretrained(model, bad, list("griz"))


def test_train_from_pretrained_records_it(store, tmp_path):
    path, _ = _imagenet_like(tmp_path)
    card = train(store.url, tmp_path / "m", epochs=1, pretrained=path, **KW)
    assert card["training"]["pretrained"]["file"] == str(path)
    assert "pos_embed" in card["training"]["pretrained"]["adapted"]
    # fine-tuning a lensdask checkpoint; one made for other bands is refused
    card2 = train(store.url, tmp_path / "m2", epochs=1, pretrained=tmp_path / "m", **KW)
    assert card2["training"]["pretrained"]["model_id"] == card["model_id"]
    from lensdask.errors import ModelMismatchError
    from lensdask.model import create_model

    model, _ = load_checkpoint(tmp_path / "m")
    with pytest.raises(ModelMismatchError, match=r"bands \['u', 'g', 'r', 'i'\].*include \['z'\]"):
        adapt_state_dict(
            model.state_dict(),
            create_model("test-vit", in_chans=4, img_size=STAMP, num_classes=2),
            list("griz"),
            source_bands=list("ugri"),
        )


# -- resize --------------------------------------------------------------------------------
def test_resize_trains_and_search_applies_it(store, tmp_path):
    card = train(store.url, tmp_path / "m", epochs=1, resize_to=36, patch_size=12, **KW)
    assert card["input_size"] == 36 and card["stamp"] == STAMP and card["arch_kwargs"]["img_size"] == 36
    model, card = load_checkpoint(tmp_path / "m")
    x = store.read_images(0)[:5]
    p = predict_proba(model, card, x)  # raw stamps at the store's size
    assert p.shape == (5, 2) and np.isfinite(p).all()
    from lensdask.normalise import normalise

    xs = torch.nn.functional.interpolate(
        torch.from_numpy(normalise(x, card["normalisation"])),
        size=(36, 36),
        mode="bilinear",
        antialias=True,
        align_corners=False,
    )
    with torch.inference_mode():
        direct = torch.softmax(model(xs), 1).numpy()
    np.testing.assert_allclose(p, direct, atol=1e-5)


# -- multi-class, balancing, selection function ------------------------------------------
def test_multiclass_training_and_evaluate(tmp_path):
    classes = ("non-lens", "lens", "blob")
    st = labelled_store(tmp_path / "mc.zarr", classes=classes, n_tiles=3, per_tile=48)
    card = train(st.url, tmp_path / "m", epochs=8, validation_fraction=0.25, seed=2, **KW)
    assert card["classes"] == list(classes) and card["lens_class"] == 1
    assert card["arch_kwargs"]["num_classes"] == 3
    w = card["training"]["class_weights"]
    counts = [card["training"]["class_counts"][c] for c in classes]
    assert np.argmax(w) == np.argmin(counts)  # rarer classes weigh more
    m = card["metrics"]
    assert np.array(m["confusion"]["counts"]).shape == (3, 3) and m["auroc"] > 0.8
    roc = tmp_path / "roc.png"
    res = evaluate(
        st.url, tmp_path / "m", json_path=tmp_path / "e.json", roc_path=roc, device="cpu", progress=False, record=True
    )
    assert res["confusion"]["truth"] == list(classes)
    assert np.array(res["confusion"]["counts"]).sum() == st.n_rows
    assert {"tpr_fpr_1e-3", "tpr_fpr_1e-4", "tpr0", "tpr10", "auroc"} <= set(res)
    assert set(res["selection_function"]) == {"theta_E", "arc_snr_g"}
    assert sum(b["n"] for b in res["selection_function"]["theta_E"]) == res["n_pos"]
    assert roc.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((tmp_path / "e.json").read_text())["roc_png"] == str(roc)
    card_now = json.loads((tmp_path / "m" / "model_card.json").read_text())
    assert card_now["evaluations"][-1]["auroc"] == res["auroc"]
    load_checkpoint(tmp_path / "m")  # recording did not break the checkpoint


def test_class_weights_and_split():
    assert class_weights([30, 10, 0]).tolist() == pytest.approx([40 / 60, 2.0, 1.0])
    lab = np.r_[np.zeros(20, int), np.ones(4, int), -np.ones(3, int)]
    role = split_rows(lab, 0.25, np.random.default_rng(0))
    assert (role[lab < 0] == 0).all()
    assert ((role == 2) & (lab == 1)).sum() == 1 and ((role == 2) & (lab == 0)).sum() == 5


# -- augmentation ------------------------------------------------------------------------
def test_augment_dihedral_and_fourier_shift():
    x = torch.randn(64, 4, STAMP, STAMP)
    y = augment(x, torch.Generator().manual_seed(0), 0.0)
    # each output is one of the 8 symmetries of its input
    for i in range(8):
        cands = [torch.rot90(v, r, dims=(-2, -1)) for v in (x[i], x[i].flip(-1)) for r in range(4)]
        assert any(torch.equal(y[i], c) for c in cands)
    # an integer Fourier shift is an exact roll; a sub-pixel one keeps white noise's variance
    z = fourier_shift(x, torch.full((64,), 2.0), torch.full((64,), -3.0))
    torch.testing.assert_close(z, torch.roll(x, (2, -3), dims=(-2, -1)), atol=1e-4, rtol=0)
    h = fourier_shift(x, torch.full((64,), 0.5), torch.full((64,), 0.5))
    assert float(h.var()) == pytest.approx(float(x.var()), rel=0.05)
    bilinear = 0.25 * (x + x.roll(1, -1) + x.roll(1, -2) + x.roll((1, 1), (-2, -1)))
    assert float(bilinear.var()) < 0.4 * float(x.var())  # what interpolation would have done
    s = augment(x, torch.Generator().manual_seed(0), 0.5)
    assert s.shape == x.shape and not torch.allclose(s, y)


# -- streaming, determinism, resume, early stopping, bad input ---------------------------
def test_streamed_equals_cached_and_bounds_memory(store, tmp_path):
    import dask.config

    with dask.config.set({"lensdask.train.shuffle_buffer": 20}):
        a = train(store.url, tmp_path / "a", epochs=2, seed=3, **KW)
    with dask.config.set({"lensdask.train.cache_gb": 0, "lensdask.train.shuffle_buffer": 20}):
        b = train(store.url, tmp_path / "b", epochs=2, seed=3, **KW)
    assert not a["training"]["streamed"] and b["training"]["streamed"]
    assert a["sha256"] == b["sha256"]


def test_stream_buffer_holds_few_rows(store):
    from lensdask.model.data import StoreBatches
    from lensdask.normalise import DEFAULT_NORMALISATION

    rows = StoreBatches(store, DEFAULT_NORMALISATION, 0.0, 0, buffer_rows=20, cache_bytes=0)
    got = [y.size for _, y in rows.train_batches(0, 0, 8)]
    assert sum(got) == store.n_rows and max(got) == 8
    assert rows.max_rows_held < 20 + 16 + 8  # one buffer of blocks (16-row chunks) plus the carry
    assert not rows._cache


def test_resume_after_interrupt_matches_uninterrupted(store, tmp_path, monkeypatch):
    kw = dict(epochs=3, seed=5, **KW)
    full = train(store.url, tmp_path / "full", **kw)

    module = importlib.import_module("lensdask.model.train")
    step_once = module._train_step

    def stop(run, batch, g, epoch, step):  # interrupt the run in its third epoch, before its second batch
        if epoch == 2 and step == 1:
            raise KeyboardInterrupt
        return step_once(run, batch, g, epoch, step)

    with monkeypatch.context() as patch:
        patch.setattr(module, "_train_step", stop)
        with pytest.raises(KeyboardInterrupt):
            train(store.url, tmp_path / "cut", **kw)
    assert (tmp_path / "cut" / "train_state.pt").is_file()
    with pytest.raises(LensdaskError, match="other settings.*learning_rate"):
        train(store.url, tmp_path / "cut", resume=True, **{**kw, "learning_rate": 1e-2})
    resumed = train(store.url, tmp_path / "cut", resume=True, **kw)
    assert resumed["sha256"] == full["sha256"]
    assert len(resumed["training"]["history"]) == 3
    assert not (tmp_path / "cut" / "train_state.pt").exists()
    with pytest.raises(LensdaskError, match="no training state"):
        train(store.url, tmp_path / "cut", resume=True, **kw)


def test_time_limit_stops_between_epochs_and_resume_goes_on(store, tmp_path):
    """time_limit 0: one epoch (none had run), the checkpoint of it, the state kept; a resume ends where an
    uninterrupted run ends, and the wall seconds of both calls add up."""
    kw = dict(epochs=3, seed=5, **KW)
    full = train(store.url, tmp_path / "full", **kw)
    cut = train(store.url, tmp_path / "cut", time_limit=0, **kw)
    t = cut["training"]
    assert t["stopped_at_time_limit"] and len(t["history"]) == 1 and t["time_limit"] == 0
    assert (tmp_path / "cut" / "train_state.pt").is_file() and t["wall_seconds"] > 0
    again = train(store.url, tmp_path / "cut", time_limit=0, resume=True, **kw)  # one epoch done: none fits in 0 s
    assert len(again["training"]["history"]) == 1 and again["sha256"] == cut["sha256"]
    resumed = train(store.url, tmp_path / "cut", resume=True, **kw)
    assert resumed["sha256"] == full["sha256"] and not resumed["training"]["stopped_at_time_limit"]
    assert resumed["training"]["wall_seconds"] > t["wall_seconds"]
    assert not (tmp_path / "cut" / "train_state.pt").exists()


def test_early_stopping(store, tmp_path):
    card = train(store.url, tmp_path / "m", **{**KW, "learning_rate": 0.0}, epochs=6, patience=2)
    t = card["training"]
    assert t["stopped_early"] and len(t["history"]) == 3 and t["best_epoch"] == 1


def test_nan_loss_stops_clearly(store, tmp_path):
    with pytest.raises(LensdaskError, match="loss became nan.*lower the learning rate"):
        train(store.url, tmp_path / "m", **{**KW, "learning_rate": float("inf")}, epochs=2)


def test_one_class_after_skipping_unlabelled(tmp_path):
    st = labelled_store(tmp_path / "s.zarr", n_tiles=1, per_tile=10)
    st2 = create_store(
        str(tmp_path / "one.zarr"),
        tiles=["a"],
        capacity=10,
        bands=list("griz"),
        pixel_scale=0.263,
        stamp=STAMP,
        overwrite=True,
    )
    im = st.read_images(0)
    st2.write_tile(0, im, pd.DataFrame({"object_id": range(10), "ra": 0.0, "dec": 0.0, "label": [1] * 5 + [-1] * 5}))
    with pytest.raises(LensdaskError, match=r"1 class\(es\) \['lens'\].*at least two"):
        train(st2.url, tmp_path / "m", epochs=1, **KW)


def test_evaluate_refuses_other_stamp_and_unlabelled(store, tmp_path):
    from lensdask.errors import ModelMismatchError

    train(store.url, tmp_path / "m", epochs=1, **KW)
    other = create_store(
        str(tmp_path / "o.zarr"),
        tiles=["a"],
        capacity=4,
        bands=list("griz"),
        pixel_scale=0.263,
        stamp=45,
        overwrite=True,
    )
    other.write_tile(0, np.zeros((4, 4, 45, 45), "f4"), pd.DataFrame({"object_id": range(4), "ra": 0.0, "dec": 0.0}))
    with pytest.raises(ModelMismatchError, match="27 px.*45 px"):
        evaluate(other.url, tmp_path / "m", device="cpu", progress=False)
    same = create_store(
        str(tmp_path / "u.zarr"),
        tiles=["a"],
        capacity=4,
        bands=list("griz"),
        pixel_scale=0.263,
        stamp=STAMP,
        overwrite=True,
    )
    same.write_tile(0, store.read_images(0)[:4], pd.DataFrame({"object_id": range(4), "ra": 0.0, "dec": 0.0}))
    with pytest.raises(LensdaskError, match="no labelled rows"):
        evaluate(same.url, tmp_path / "m", device="cpu", progress=False)


# -- CLI -----------------------------------------------------------------------------------
def test_cli_train_and_evaluate_options(store, tmp_path, capsys):
    path, _ = _imagenet_like(tmp_path)
    out = tmp_path / "m"
    assert (
        main(
            [
                "train",
                "--data",
                store.url,
                "--out",
                str(out),
                "--arch",
                "test-vit",
                "--epochs",
                "1",
                "--device",
                "cpu",
                "--pretrained",
                str(path),
                "--resize",
                "36",
                "--patch-size",
                "12",
                "--patience",
                "0",
                "--shift",
                "0.25",
                "--no-balance",
            ]
        )
        == 0
    )
    card = json.loads((out / "model_card.json").read_text())
    assert card["input_size"] == 36 and card["training"]["class_weights"] is None
    assert "0.25 px" in card["training"]["augmentation"] and card["training"]["pretrained"]["file"] == str(path)
    assert (
        main(
            [
                "train",
                "--data",
                store.url,
                "--out",
                str(out),
                "--arch",
                "test-vit",
                "--epochs",
                "1",
                "--device",
                "cpu",
                "--resume",
            ]
        )
        == 2
    )
    assert "no training state" in capsys.readouterr().err
    roc = tmp_path / "roc.png"
    assert (
        main(
            [
                "evaluate",
                "--model",
                str(out),
                "--data",
                store.url,
                "--roc",
                str(roc),
                "--threshold",
                "0.3",
                "--json",
                str(tmp_path / "m.json"),
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "AUROC" in printed and "TPR at FPR 1e-4" in printed and roc.is_file()
    assert json.loads((tmp_path / "m.json").read_text())["threshold"] == 0.3
    assert main(["train", "--list-archs"]) == 0
    assert "vit-base" in capsys.readouterr().out


# -- GPU benchmark script, run on the CPU with a tiny model --------------------------------
def test_bench_train_gpu_runs_on_cpu(tmp_path, capsys):
    from conftest import load_benchmark

    bench = load_benchmark("bench_train_gpu")
    out = tmp_path / "b.json"
    assert (
        bench.main(
            [
                "--arch",
                "test-vit",
                "--device",
                "cpu",
                "--batch-size",
                "8",
                "--infer-batch-size",
                "16",
                "--steps",
                "2",
                "--warmup",
                "1",
                "--compile",
                "off",
                "--json",
                str(out),
            ]
        )
        == 0
    )
    res = json.loads(out.read_text())["results"]
    assert len(res) == 1 and res[0]["train_cutouts_per_s"] > 0 and res[0]["infer_cutouts_per_s"] > 0
    assert res[0]["compiled"] is False and res[0]["device"] == "cpu"
