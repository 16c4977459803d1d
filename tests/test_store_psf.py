"""Stores know their PSF: per row and band FWHM (``psf_fwhm``), where it came from (``psf_origin``),
written by simulate and mock-survey, shown by ``info``, carried by ``convert``; old stores still open."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from lensdask.cli import main
from lensdask.simulate import simulate
from lensdask.simulate.run import simulate_rows
from lensdask.store import open_store, psf_columns
from lensdask.storeadmin import convert, store_info
from lensdask.survey import mock_survey

from conftest import make_tiny_store


def _drop_psf_arrays(path):
    """Make ``path`` look like a store written before PSFs were recorded."""
    import shutil

    for name in ("psf_fwhm", "psf_origin"):
        shutil.rmtree(path / name)


def test_rows_keep_the_psf_columns_they_are_written_with(tmp_path):
    s = make_tiny_store(tmp_path / "a.zarr", rows=3, stamp=9)
    assert s.psf_known
    assert np.isnan(s.read_psf(0)).all() and s.psf_origins(0) == ["", "", "", ""]
    table = s.read_table(0)[["object_id", "ra", "dec"]]
    table["psf_fwhm_g"] = [0.9, 1.0, 1.1]
    table["psf_fwhm_z"] = [0.8, np.nan, 0.7]
    s.write_psf_origin(0, ["simulated", "", "stars", "header:FWHM"])
    s.write_tile(0, s.read_images(0), table)
    again = open_store(tmp_path / "a.zarr")
    fwhm = again.read_psf(0)
    np.testing.assert_allclose(fwhm[:, 0], [0.9, 1.0, 1.1], rtol=1e-6)
    np.testing.assert_allclose(fwhm[:, 3], [0.8, np.nan, 0.7], rtol=1e-6)
    assert np.isnan(fwhm[:, 1:3]).all()
    assert again.psf_origins(0) == ["simulated", "", "stars", "header:FWHM"]
    np.testing.assert_allclose(again.read_psf(0, 1, 3)[:, 0], [1.0, 1.1], rtol=1e-6)
    # a grown store keeps them, and its new tiles know none
    grown = open_store(tmp_path / "a.zarr", mode="r+")
    grown.add_tiles(["NEW"])
    assert grown.group["psf_fwhm"].shape[0] == 3 and grown.psf_origins(2) == ["", "", "", ""]
    np.testing.assert_allclose(open_store(tmp_path / "a.zarr").read_psf(0)[:, 0], [0.9, 1.0, 1.1], rtol=1e-6)


def test_a_store_without_psf_arrays_opens_and_reads_unknown(tmp_path):
    make_tiny_store(tmp_path / "old.zarr", rows=2, stamp=9)
    _drop_psf_arrays(tmp_path / "old.zarr")
    old = open_store(tmp_path / "old.zarr")
    assert not old.psf_known
    assert old.read_psf(0).shape == (2, 4) and np.isnan(old.read_psf(0)).all()
    assert old.psf_origins(1) == [""] * 4
    old.read_images(0)  # pixels still read
    assert store_info(tmp_path / "old.zarr")["psf"] == {"recorded": False, "bands": {}}
    # convert writes the current schema: PSF arrays, unknown
    new, failures = convert(tmp_path / "old.zarr", tmp_path / "new.zarr")
    assert not failures and new.psf_known and np.isnan(new.read_psf(0)).all()


def test_simulate_records_the_seeing_each_row_drew(tmp_path):
    store = simulate(tmp_path / "t.zarr", 5, seed=3, lens_fraction=0.6, partition_size=3, progress=False)
    _, rows = simulate_rows(range(5), 3, lens_fraction=0.6)
    fwhm = np.concatenate([store.read_psf(t) for t in range(store.n_tiles)])
    expected = rows[[f"seeing_{b}" for b in store.bands]].to_numpy(np.float32)
    assert np.isfinite(expected).all()
    np.testing.assert_array_equal(fwhm, expected)
    assert store.psf_origins(1) == ["simulated"] * 4
    # the bands differ per row: the PSF is each band's own, not one number per row
    assert (np.ptp(fwhm, axis=1) > 0).all()


def test_mock_survey_records_each_rows_seeing_including_lookalikes(tmp_path, capsys):
    store, truth_path = mock_survey(
        tmp_path / "m.zarr", tiles=1, per_tile=40, lens_fraction=0.2, seed=6, lookalike_fraction=0.3, progress=False
    )
    truth = pd.read_parquet(truth_path)
    fwhm = store.read_psf(0)
    assert np.isfinite(fwhm).all() and ((fwhm > 0.5) & (fwhm < 2.6)).all()
    plain = truth["truth_class"].isin(["lens", "non-lens"]).to_numpy()
    assert (~plain).sum() >= 5  # some look-alikes, whose own seeing the store keeps (their truth is NaN)
    expected = truth.loc[plain, [f"seeing_{b}" for b in store.bands]].to_numpy(np.float32)
    np.testing.assert_array_equal(fwhm[plain], expected)
    assert store.psf_origins(0) == ["simulated"] * 4
    assert store.read_catalog().columns.tolist() == ["tile", "row", "object_id", "ra", "dec", "label", "flags"]
    # info shows it
    assert main(["info", str(tmp_path / "m.zarr")]) == 0
    out = capsys.readouterr().out
    assert "psf" in out and "on 40 of 40 rows" in out and "simulated 1" in out
    info = store_info(tmp_path / "m.zarr")["psf"]
    assert info["recorded"] and info["bands"]["g"]["rows"] == 40
    assert info["bands"]["g"]["median"] == pytest.approx(float(np.median(fwhm[:, 0])), abs=1e-4)


def test_write_tile_refuses_psf_columns_of_other_bands(tmp_path):
    from lensdask.errors import StoreWriteError

    s = make_tiny_store(tmp_path / "a.zarr", rows=1, stamp=9, bands="gr")
    assert psf_columns(s.bands) == ["psf_fwhm_g", "psf_fwhm_r"]
    table = s.read_table(0)[["object_id", "ra", "dec"]].assign(psf_fwhm_i=1.0)
    with pytest.raises(StoreWriteError, match="psf_fwhm_i"):
        s.write_tile(0, s.read_images(0), table)
