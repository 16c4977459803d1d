"""Ingest records each tile's PSF per band: PSFEx model, else image header, else the tile's stars."""

from __future__ import annotations

import os

import numpy as np
import pytest

from lensdask.cli import main
from lensdask.store import open_store
from lensdask.survey import ingest
from lensdask.survey.psf import header_fwhm, psfex_fwhm, star_fwhm, tile_psf
from lensdask.survey.synthetic_des import write_des_tile

TILE = "DES0002-0002"
# write_des_tile draws stars as Gaussians of FWHM 1.1 - 0.05 k arcsec in band k (g, r, i, z)
TRUE_FWHM = {"g": 1.10, "r": 1.05, "i": 1.00, "z": 0.95}


@pytest.fixture(scope="module")
def small_tile(tmp_path_factory):
    d = tmp_path_factory.mktemp("psf")
    files, cat = write_des_tile(d / "tiles", TILE, size=800, n_objects=300, seed=1, star_fraction=0.2)
    cat_path = d / "cat.parquet"
    cat.to_parquet(cat_path)
    return d, files, cat_path


def test_header_keywords_in_pixels_or_arcsec():
    assert header_fwhm({"FWHM": 4.0}, 0.25) == (1.0, "FWHM")
    assert header_fwhm({"SEEING": 0.9, "FWHM": 4.0}, 0.25, {"SEEING": "arcsec", "FWHM": "px"}) == (0.9, "SEEING")
    # implausible or non-numeric values are skipped, not taken
    assert header_fwhm({"FWHM": 0.0, "SEEING": "n/a", "PSF_FWHM": 400.0}, 0.263) == (
        pytest.approx(np.nan, nan_ok=True),
        "",
    )
    with pytest.raises(ValueError, match="unit"):
        header_fwhm({"FWHM": 4.0}, 0.25, {"FWHM": "deg"})


def test_psfex_fwhm_from_its_header(shared_data):
    path = shared_data / "des_psf" / "DECam_00154912_12_psfcat.psf"
    assert psfex_fwhm(path, 0.263) == pytest.approx(4.58513832 * 0.263)
    fwhm, origin = tile_psf(0.263, psfex=str(path), header={"FWHM": 3.0})  # a PSFEx model wins over the header
    assert origin == "psfex:DECam_00154912_12_psfcat.psf" and fwhm == pytest.approx(1.2059, abs=1e-3)


def test_stars_give_the_fwhm_they_were_drawn_with(small_tile):
    from astropy.io import fits

    _, files, _ = small_tile
    for b, path in files.items():
        fwhm, n = star_fwhm(fits.getdata(path, "SCI"), 0.263)
        assert n >= 10
        assert fwhm == pytest.approx(TRUE_FWHM[b], rel=0.08), b
    # pure noise has no stars
    assert np.isnan(star_fwhm(np.random.default_rng(0).normal(size=(200, 200)), 0.263)[0])


def test_ingest_records_psfex_header_or_stars_per_band(small_tile, tmp_path, capsys, shared_data):
    d, files, cat_path = small_tile
    # a PSFEx model for g only, under DES's name: g takes it, the other bands measure their stars
    tiles = tmp_path / "tiles"
    tiles.mkdir()
    for path in files.values():
        os.symlink(path, tiles / os.path.basename(path))
    psf_g = tiles / f"{TILE}_r4575p01_g_psfcat.psf"
    os.symlink(shared_data / "des_psf" / "DECam_00154912_12_psfcat.psf", psf_g)
    out = tmp_path / "des.zarr"
    ingest(out, des_tiles=tiles, catalog=cat_path, progress=False)
    s = open_store(out)
    fwhm = s.read_psf(0)
    assert fwhm.shape == (s.counts[0], 4)
    assert (fwhm == fwhm[0]).all()  # one PSF per tile and band
    origins = s.psf_origins(0)
    assert origins[0] == f"psfex:{psf_g.name}" and fwhm[0, 0] == pytest.approx(1.2059, abs=1e-3)
    assert origins[1:] == ["stars"] * 3
    for k, b in enumerate("riz", start=1):
        assert fwhm[0, k] == pytest.approx(TRUE_FWHM[b], rel=0.08)
    capsys.readouterr()
    assert main(["info", str(out)]) == 0
    assert "stars 1" in capsys.readouterr().out


def test_header_keyword_beats_the_stars(small_tile, tmp_path):
    from astropy.io import fits

    d, files, cat_path = small_tile
    tiles = tmp_path / "tiles"
    tiles.mkdir()
    for path in files.values():
        with fits.open(path) as h:
            h["SCI"].header["FWHM"] = (5.0, "PSF FWHM, pixels")
            h.writeto(tiles / os.path.basename(path))
    s = ingest(tmp_path / "h.zarr", des_tiles=tiles, catalog=cat_path, progress=False)
    assert s.psf_origins(0) == ["header:FWHM"] * 4
    np.testing.assert_allclose(s.read_psf(0)[0], 5.0 * 0.263, rtol=1e-6)
