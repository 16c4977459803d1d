"""The zero points and exposure time of a fit come from the store's survey (simulated e-/s or ingested coadd
units) unless config sets them; DES simulated stores keep the numbers they always had."""

from __future__ import annotations

import json

import dask
import numpy as np
import pytest

from lensdask.cli import main
from lensdask.fit.run import COADD, FIT_DIR, FITS, SIMULATED, fit, photometry, pixel_units, settings_from_config
from lensdask.model.checkpoint import untrained_checkpoint
from lensdask.search import search
from lensdask.simulate.render import Renderer
from lensdask.survey import mock_survey
from lensdask.survey.profiles import get_profile

DES_ZP = {"g": 26.58, "r": 26.78, "i": 26.75, "z": 26.48}
"""``fit.zero_points`` of DES before survey profiles (less Y, not a DES store band)."""

LSST_ZP = {"u": 26.5, "g": 28.3, "r": 28.13, "i": 27.79, "z": 27.4, "y": 26.58}
"""lenstronomy 1.14's LSST preset: e-/s zero points."""

TINY = {
    "lensdask.fit.theta_E_grid": 4,
    "lensdask.fit.lens_starts": 1,
    "lensdask.fit.lens_blobs": [0],
    "lensdask.fit.null_blobs": [1],
    "lensdask.fit.null_starts": 1,
    "lensdask.fit.max_iterations": 8,
    "lensdask.fit.confirm": False,
}


@pytest.fixture(scope="module")
def lsst_run(tmp_path_factory):
    """A 1-tile, 2-row LSST mock survey searched by an untrained 6-band model: (folder, store, run dir)."""
    d = tmp_path_factory.mktemp("lsstfit")
    store, _ = mock_survey(
        d / "lsst.zarr", tiles=1, per_tile=2, lens_fraction=0.5, seed=7, survey="lsst", progress=False
    )
    p = get_profile("lsst")
    untrained_checkpoint(
        d / "model", "test-vit", bands=p.bands, stamp=p.stamp, pixel_scale=p.pixel_scale, survey="lsst"
    )
    search(store.url, d / "model", d / "run", threshold=0.0, progress=False, crossmatch=False, report=False)
    return d, store, d / "run"


def _tiny_store(tiny_store, path, **provenance):
    return tiny_store(path, tiles=1, rows=2, provenance={"command": "test", **provenance})


def test_a_des_simulated_store_keeps_todays_numbers_and_the_renderers(tiny_store, tmp_path):
    before = photometry()  # no store: a simulated des store's, as bench_fit uses it
    assert before["zero_points"] == DES_ZP and before["exposure_time"] == 1800.0
    store = _tiny_store(tiny_store, tmp_path / "sim.zarr", coadd_years=6, seed=1)
    phot = photometry(store)
    assert phot["pixels"] == SIMULATED and phot["survey"] == "des"
    assert phot["zero_points"] == DES_ZP and phot["exposure_time"] == 1800.0
    assert phot["source"] == {"zero_points": "survey", "exposure_time": "survey"}
    settings, conf = settings_from_config(store)
    assert settings.exposure_time == 1800.0 and conf["zero_points"] == DES_ZP
    # the very numbers the simulation used
    r = Renderer(list("griz"), 0.263, 45, 6, 1)
    for b in "griz":
        kw = r.kwargs_band[b]
        assert kw["magnitude_zero_point"] == phot["zero_points"][b]
        assert kw["num_exposures"] * kw["exposure_time"] == phot["exposure_times"][b]
    # a 3-year coadd simulated: 10 x 90 s
    short = _tiny_store(tiny_store, tmp_path / "sim3.zarr", coadd_years=3)
    assert photometry(short)["exposure_time"] == 900.0


def test_ingested_and_converted_stores_take_the_coadd_unit(tiny_store, tmp_path):
    ingested = _tiny_store(tiny_store, tmp_path / "ing.zarr", inputs={"des_tiles": "/tiles"})
    assert pixel_units(ingested) == COADD
    phot = photometry(ingested)
    assert phot["zero_points"] == dict.fromkeys("griz", 30.0) and phot["exposure_time"] == 1800.0
    converted = _tiny_store(
        tiny_store, tmp_path / "conv.zarr", converted_from={"provenance": {"inputs": {"cubes": "/c"}}}
    )
    assert pixel_units(converted) == COADD
    lsst = tiny_store(
        tmp_path / "lsst.zarr", tiles=1, rows=2, bands="ugrizy", pixel_scale=0.2, stamp=59, survey="lsst",
        provenance={"inputs": {"coadds": "/deep_coadd"}},
    )  # fmt: skip
    with dask.config.set({"lensdask.fit.coadd_exposure_time": 0.0}):
        phot = photometry(lsst)
    assert phot["zero_points"] == dict.fromkeys("ugrizy", 31.4) and phot["exposure_time"] == 0.0
    # simulate painting arcs on real cutouts keeps their units
    painted = _tiny_store(tiny_store, tmp_path / "painted.zarr", coadd_years=6, backgrounds="/galaxies")
    assert pixel_units(painted) == COADD


def test_a_store_that_says_nothing_is_simulated_as_before(tiny_store, tmp_path):
    store = _tiny_store(tiny_store, tmp_path / "plain.zarr")
    assert pixel_units(store) == SIMULATED
    store.write_psf_origin(0, ["stars"] * 4)  # what an ingest measured
    assert pixel_units(store) == COADD
    store.write_psf_origin(0, ["simulated"] * 4)
    assert pixel_units(store) == SIMULATED


def test_config_values_win(tiny_store, tmp_path):
    store = _tiny_store(tiny_store, tmp_path / "ing.zarr", inputs={"cubes": "/c"})
    with dask.config.set({"lensdask.fit.zero_points": {"g": 25.0}, "lensdask.fit.exposure_time": 60.0}):
        phot = photometry(store)
        settings, conf = settings_from_config(store)
    assert phot["zero_points"] == {"g": 25.0} and phot["exposure_time"] == 60.0 and phot["exposure_times"] is None
    assert phot["source"] == {"zero_points": "config", "exposure_time": "config"}
    assert conf["zero_points"] == {"g": 25.0} and settings.exposure_time == 60.0
    with dask.config.set({"lensdask.fit.exposure_time": 0}):
        assert photometry(store)["exposure_time"] == 0.0  # 0: sky noise only


def test_an_lsst_mock_survey_is_fitted_with_lsst_zero_points(lsst_run, tmp_path):
    _, store, run = lsst_run
    assert pixel_units(store) == SIMULATED
    phot = photometry(store)
    assert phot["zero_points"] == LSST_ZP
    assert phot["exposure_times"] == {"u": 2100.0, "g": 3000.0, "r": 6900.0, "i": 6900.0, "z": 6000.0, "y": 6000.0}
    assert phot["exposure_time"] == 2100.0  # the shortest band's: no band's Poisson noise understated
    with dask.config.set(TINY):
        result = fit(run, top=1, progress=False)
    assert result.photometry == phot
    fits = result.fits
    assert (fits["fit_status"] == "ok").all()
    mags = fits[[f"fit_mag_lens_{b}" for b in "ugrizy"]].to_numpy(float)
    assert np.isfinite(mags).all() and (mags > 15).all() and (mags < 32).all(), mags
    sig = json.loads((run / FIT_DIR / "signature.json").read_text())
    assert sig["options"]["zero_points"] == LSST_ZP and sig["settings"]["exposure_time"] == 2100.0
    assert sig["photometry"]["survey"] == "lsst" and sig["photometry"]["pixels"] == SIMULATED
    # the same values from config are the same fit: resumed, not refused
    with dask.config.set({**TINY, "lensdask.fit.zero_points": LSST_ZP, "lensdask.fit.exposure_time": 2100}):
        again = fit(run, top=1, progress=False)
    assert again.resumed == 1 and again.fitted == 0
    assert (run / FITS).exists()


# -- --survey on fit and search-tile: the store must record that survey -------------------------------
def test_fit_survey_option_must_match_the_store(lsst_run, tmp_path, monkeypatch, capsys):
    import contextlib
    import shutil

    from lensdask import cli

    monkeypatch.setattr(cli, "_with_client", lambda a: contextlib.nullcontext(None))  # in this process
    run = tmp_path / "run"
    shutil.copytree(lsst_run[2], run)
    assert main(["fit", str(run), "--top", "1", "--survey", "des"]) == 2
    err = capsys.readouterr().err
    assert "holds lsst cutouts, not des (--survey)" in err and err.count("\n") == 1
    with dask.config.set(TINY):
        assert main(["fit", str(run), "--top", "1", "--survey", "lsst"]) == 0
    out = capsys.readouterr().out
    assert "lsst store, simulated pixels: zero points u 26.5, g 28.3" in out and "exposure time 2100 s" in out


def test_search_tile_survey_option_must_match_the_store(lsst_run, tmp_path, capsys):
    d, store, _ = lsst_run
    argv = ["search-tile", "--zarr", str(store.url), "--tile", "0", "--model", str(d / "model")]
    argv += ["--out", str(tmp_path / "batch")]
    assert main([*argv, "--survey", "des"]) == 2
    assert "holds lsst cutouts, not des (--survey)" in capsys.readouterr().err
    assert not (tmp_path / "batch").exists()
    assert main([*argv, "--survey", "lsst"]) == 0
    assert len(list((tmp_path / "batch" / "tiles").glob("*.parquet"))) == 1
