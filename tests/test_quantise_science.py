"""The science does not move: scores and training on quantised stores against float32 stores.

Quantisation at the default step adds an error of 0.095 sigma rms, uniform and independent of
the signal. Any change of a pixel moves the scores of the borderline rows of a classifier, so
the yardstick is the same amount of extra Gaussian noise: a quantised store must move the
scores no more than that (and never bias them), and every survey-level figure must stay put.
A coarse step (1 sigma) is run too, to show that the yardstick can fail.
"""

from __future__ import annotations

import dask
import numpy as np
import pandas as pd
import pytest

from lensdask.model import load_checkpoint
from lensdask.model.infer import predict_proba
from lensdask.model.metrics import auroc
from lensdask.quantise import dequantise, measure_noise, quantise
from lensdask.store import open_store
from lensdask.storeadmin import convert

STEP = 0.33  # the configured default


@pytest.fixture(scope="module")
def default_model():
    model, card = load_checkpoint(None)[:2]
    return model, card


def _lens_scores(model, card, images):
    return predict_proba(model, card, images, batch_size=64)[:, card["lens_class"]].astype(np.float64)


def _search_scores(model, card, store):
    """Lens scores from the model inputs search reads (a quantised store's: normalised from the codes)."""
    from lensdask.model.infer import forward_proba

    out = []
    for t in store.written_tiles():
        inp = store.read_normalised(t, specs=[card["normalisation"]])
        assert not inp.bad.any()
        out.append(forward_proba(model, inp.inputs[0], batch_size=64, device="cpu")[:, card["lens_class"]])
    return np.concatenate(out).astype(np.float64)


def _check_search_reads_closer(store, a, d_q, model, card):
    """Scores search gets from the codes (sky statistics stored at write time) move no more than decoded pixels'."""
    assert store.sky_stats
    d_c = _search_scores(model, card, store) - a
    assert (_typical(d_c) <= _typical(d_q)).all(), (_typical(d_c), _typical(d_q))
    assert abs(np.median(d_c)) <= 2e-4  # no bias
    return d_c


def _gaussian_twin(x, rms, seed=0):
    """``x`` plus independent Gaussian noise of ``rms`` times each stamp and band's sky noise."""
    _, sigma = measure_noise(x, 4)
    rng = np.random.default_rng(seed)
    return x + (rng.normal(0, 1, x.shape) * rms * sigma[..., None, None]).astype(np.float32)


def _rms(d):
    return float(np.sqrt(np.mean(np.square(d))))


def _typical(d):
    """Median and 90th percentile of |score change|: a few borderline rows dominate any mean or rms."""
    return np.quantile(np.abs(d), [0.5, 0.9])


def _gaussian_changes(x, a, model, card, rms, n=3):
    """Score changes caused by ``n`` independent draws of extra Gaussian noise, pooled."""
    return np.concatenate([_lens_scores(model, card, _gaussian_twin(x, rms, seed=k)) - a for k in range(n)])


def _check_like_noise(x, y, a, model, card):
    """Scores of decoded ``y`` move from those (``a``) of ``x`` no more than extra noise of the same rms does."""
    _, sigma = measure_noise(x, 4)
    assert _rms((y - x) / sigma[..., None, None]) <= 0.1  # the bound of the issue
    d_q = _lens_scores(model, card, y) - a
    d_g = _gaussian_changes(x, a, model, card, STEP / np.sqrt(12))
    assert (_typical(d_q) <= 1.5 * _typical(d_g)).all(), (_typical(d_q), _typical(d_g))
    assert abs(np.median(d_q)) <= max(abs(np.median(d_g)) * 3, 2e-4)  # no bias
    return d_q, d_g


@pytest.fixture(scope="module")
def survey(tmp_path_factory):
    from lensdask.survey import mock_survey

    d = tmp_path_factory.mktemp("survey")
    with dask.config.set({"lensdask.store.quantise.step": 0}):
        f32, truth = mock_survey(d / "f32.zarr", tiles=2, per_tile=150, lens_fraction=0.1, seed=21, progress=False)
    q, failures = convert(d / "f32.zarr", d / "q.zarr")
    assert failures == [] and q.quantised and not f32.quantised
    return f32, q, pd.read_parquet(truth)


def _read_all(store):
    return np.concatenate([store.read_images(t) for t in store.written_tiles()])


def test_mock_survey_scores_move_only_as_much_as_the_noise_added(survey, default_model):
    f32, q, truth = survey
    model, card = default_model
    from lensdask.storeadmin import store_info

    info = store_info(q.url)  # the demo's kind of store: at most 5 KiB per cutout on disk, all included
    assert info["bytes_per_cutout"] <= 5 * 1024 < store_info(f32.url)["bytes_per_cutout"] / 5
    x, y = _read_all(f32), _read_all(q)
    a = _lens_scores(model, card, x)
    d_q, d_g = _check_like_noise(x, y, a, model, card)
    _check_search_reads_closer(q, a, d_q, model, card)

    cat = f32.read_catalog().merge(truth[["tile", "object_id", "is_lens"]], on=["tile", "object_id"])
    is_lens = cat["is_lens"].to_numpy().astype(int)
    assert is_lens.sum() >= 15
    b = a + d_q
    assert abs(auroc(is_lens, b) - auroc(is_lens, a)) <= 0.01
    found_f, found_q = (a >= 0.5) & (is_lens == 1), (b >= 0.5) & (is_lens == 1)
    assert abs(int(found_f.sum()) - int(found_q.sum())) <= 1

    # the yardstick has teeth: a 1 sigma step moves the scores far more
    keys = cat["object_id"].to_numpy()
    qc, sc, zc = quantise(x, keys, step=1.0, seed=1, border=4)
    coarse = _lens_scores(model, card, dequantise(qc, sc, zc, keys, seed=1)) - a
    assert (_typical(coarse) > 1.5 * _typical(d_g)).all()


def test_real_des_galaxies_scores_move_only_as_much_as_the_noise_added(shared_data, default_model, tmp_path):
    from lensdask.simulate.galaxies import dihedral
    from lensdask.simulate.inputs import load_backgrounds

    model, card = default_model
    bg = load_backgrounds(str(shared_data / "des_galaxies"), tuple(card["bands"]), 0.263, int(card["stamp"]))
    x = np.concatenate([dihedral(bg.images, k) for k in range(8)]).astype(np.float32)  # 240 real cutouts
    from lensdask.store import create_store

    s = create_store(
        tmp_path / "real.zarr",
        tiles=["real"],
        capacity=len(x),
        bands=card["bands"],
        pixel_scale=0.263,
        stamp=int(card["stamp"]),
    )
    s.write_tile(0, x, pd.DataFrame({"object_id": np.arange(len(x)), "ra": 0.0, "dec": 0.0}))
    r = open_store(tmp_path / "real.zarr")
    assert r.quantised and (r.read_table(0)["flags"] == 0).all()
    y = r.read_images(0)
    a = _lens_scores(model, card, x)
    d_q, _ = _check_like_noise(x, y, a, model, card)
    assert ((a >= 0.5) == (a + d_q >= 0.5)).mean() >= 0.99
    d_c = _check_search_reads_closer(r, a, d_q, model, card)
    assert ((a >= 0.5) == (a + d_c >= 0.5)).mean() >= 0.99


def _faint_rings(path, n, seed, **kw):
    """A labelled store of noisy galaxies, half with a ring of 0.3-0.9 sigma per pixel: hard enough that
    the sky noise (and so the quantisation) limits what a model learns. 27 px stamps: fast models."""
    from lensdask.store import create_store

    rng = np.random.default_rng(seed)
    stamp = 27
    yy, xx = np.mgrid[:stamp, :stamp] - (stamp - 1) / 2
    r = np.hypot(xx, yy)
    labels = rng.permutation(np.arange(n) % 2)
    sky = rng.uniform(1.0, 4.0, (n, 4, 1, 1))  # a different noise level per stamp and band
    x = rng.normal(0, 1, (n, 4, stamp, stamp)) + rng.uniform(5, 20, (n, 1, 1, 1)) * np.exp(-0.5 * (r / 2.0) ** 2)
    ring = rng.uniform(0.3, 0.9, (n, 1, 1, 1)) * np.exp(-0.5 * ((r - rng.uniform(6, 9, (n, 1, 1, 1))) / 1.2) ** 2)
    x = ((x + labels[:, None, None, None] * ring) * sky + 10.0).astype(np.float32)
    s = create_store(path, tiles=["a", "b"], capacity=n // 2, bands="griz", pixel_scale=0.263, stamp=stamp, **kw)
    for t in range(2):
        rows = slice(t * (n // 2), (t + 1) * (n // 2))
        s.write_tile(
            t, x[rows], pd.DataFrame({"object_id": np.arange(n)[rows], "ra": 0.0, "dec": 0.0, "label": labels[rows]})
        )
    return s


@pytest.mark.slow
def test_a_model_trained_on_a_quantised_store_matches_float32(tmp_path):
    from lensdask.model import evaluate, train

    _faint_rings(tmp_path / "f32.zarr", 800, seed=3, quantise_step=0)
    _faint_rings(tmp_path / "test.zarr", 600, seed=4, quantise_step=0)
    q, _ = convert(tmp_path / "f32.zarr", tmp_path / "q.zarr")
    assert q.quantised
    kw = dict(arch="test-vit", epochs=4, batch_size=32, learning_rate=3e-3, device="cpu", progress=False, patience=0)
    aucs = {}
    for name, data, seed in [("f32", "f32.zarr", 0), ("f32-seed1", "f32.zarr", 1), ("q", "q.zarr", 0)]:
        train(tmp_path / data, tmp_path / name, seed=seed, **kw)
        aucs[name] = evaluate(tmp_path / "test.zarr", tmp_path / name, progress=False)["auroc"]
    run_to_run = abs(aucs["f32"] - aucs["f32-seed1"])
    print(f"held-out AUROC by training store and seed: {aucs}")
    assert 0.6 < aucs["f32"] < 0.995, aucs  # it learnt something, and the noise still matters
    assert abs(aucs["q"] - aucs["f32"]) <= max(2 * run_to_run, 0.02), aucs
