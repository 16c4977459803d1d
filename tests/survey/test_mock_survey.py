"""The mock DES survey: tile names, positions, ids, hidden labels, truth kept apart."""

from __future__ import annotations

import os
import re

import numpy as np
import pandas as pd
import pytest

from lensdask.survey import mock_survey
from lensdask.survey.mock import TILE_SIZE, default_truth_path, tile_name

NAME = re.compile(r"^DES(\d{2})(\d{2})([+-])(\d{2})(\d{2})$")


@pytest.fixture(scope="module")
def survey(tmp_path_factory, client):
    out = tmp_path_factory.mktemp("mock") / "des.zarr"
    store, truth = mock_survey(out, tiles=3, per_tile=40, lens_fraction=0.25, seed=5, client=client, progress=False)
    return store, truth


def _centre(name):
    hh, mm, sign, dd, dm = NAME.match(name).groups()
    ra = (int(hh) + int(mm) / 60) * 15
    dec = (int(dd) + int(dm) / 60) * (-1 if sign == "-" else 1)
    return ra, dec


def test_tile_name():
    assert tile_name(33.26, -30.67) == "DES0213-3040"
    assert tile_name(0.1, 2.5) == "DES0000+0230"
    assert default_truth_path("x/des.zarr") == "x/des.truth.parquet"
    assert default_truth_path("x/des.zarr/") == "x/des.truth.parquet"


def test_tiles_and_positions(survey):
    store, _ = survey
    assert len(store.tiles) == 3 and len(set(store.tiles)) == 3
    assert list(store.counts) == [40, 40, 40]
    for t, name in enumerate(store.tiles):
        assert NAME.match(name), name
        ra0, dec0 = _centre(name)  # names truncate the centre to 1 arcmin (RA: 1 min of time)
        tab = store.read_table(t)
        cosd = np.cos(np.deg2rad(tab["dec"]))
        assert np.all(np.abs(tab["dec"] - dec0) <= TILE_SIZE / 2 + 1 / 60)
        dra = ((tab["ra"] - ra0 + 180) % 360 - 180) * cosd
        assert np.all(dra >= -TILE_SIZE / 2 - 1e-9)
        assert np.all(dra <= TILE_SIZE / 2 + 0.25)
        # and they fill the tile, not a point
        assert tab["dec"].max() - tab["dec"].min() > TILE_SIZE / 2


def test_store_hides_truth(survey):
    store, _ = survey
    cat = store.read_catalog()
    assert (cat["label"] == -1).all()
    assert store.params == []
    assert cat["object_id"].is_unique
    assert cat["object_id"].min() > 1_000_000
    assert set(cat.columns) == {"tile", "row", "object_id", "ra", "dec", "label", "flags"}


def test_truth_apart_and_consistent(survey):
    store, truth_path = survey
    assert truth_path == default_truth_path(store.url)
    assert not truth_path.startswith(store.url.rstrip("/") + os.sep)
    truth = pd.read_parquet(truth_path)
    cat = store.read_catalog()
    assert len(truth) == len(cat) == 120
    merged = cat.merge(truth, on="object_id", suffixes=("", "_truth"))
    assert len(merged) == 120
    assert (merged["tile"] == merged["tile_truth"]).all()
    np.testing.assert_allclose(merged["ra"], merged["ra_truth"])
    np.testing.assert_allclose(merged["dec"], merged["dec_truth"])
    n_lens = int(truth["is_lens"].sum())
    assert 10 <= n_lens <= 50  # 0.25 of 120 = 30
    lenses = truth[truth["is_lens"]]
    assert lenses[["theta_E", "magnification", "arc_snr_g"]].notna().all().all()
    assert truth.loc[~truth["is_lens"], "theta_E"].isna().all()


def test_reproducible_and_refuses_overwrite(survey, tmp_path):
    store, truth_path = survey
    with pytest.raises(FileExistsError):
        mock_survey(store.url, tiles=3, per_tile=40, lens_fraction=0.25, seed=5, progress=False)
    again, truth2 = mock_survey(
        tmp_path / "again.zarr", tiles=3, per_tile=40, lens_fraction=0.25, seed=5, progress=False
    )
    assert again.tiles == store.tiles
    np.testing.assert_array_equal(again.read_images(1), store.read_images(1))
    a = pd.read_parquet(truth_path)
    b = pd.read_parquet(truth2)
    pd.testing.assert_frame_equal(a, b)


def test_lookalikes_are_planted_with_their_own_truth_class(tmp_path):
    from lensdask.survey import mock_survey

    store, truth_path = mock_survey(
        tmp_path / "fp.zarr", tiles=1, per_tile=60, lens_fraction=0.1, seed=4, lookalike_fraction=0.4, progress=False
    )
    truth = pd.read_parquet(truth_path)
    counts = truth["truth_class"].value_counts()
    assert set(counts.index) <= {"lens", "non-lens", "ring", "spiral", "merger", "companion", "edge-on", "group"}
    assert counts.drop(["lens", "non-lens"], errors="ignore").sum() >= 12  # ~40% of 60
    assert (truth["is_lens"] == (truth["truth_class"] == "lens")).all()
    # planting leaves the lenses where they were, and the look-alikes differ from the plain galaxies
    plain, _ = mock_survey(
        tmp_path / "plain.zarr", tiles=1, per_tile=60, lens_fraction=0.1, seed=4, lookalike_fraction=0.0, progress=False
    )
    a, b = store.read_images(0), plain.read_images(0)
    lens = truth["is_lens"].to_numpy()
    fp = ~truth["truth_class"].isin(["lens", "non-lens"]).to_numpy()
    np.testing.assert_array_equal(a[lens], b[lens])
    assert all(not np.array_equal(a[k], b[k]) for k in np.flatnonzero(fp))
    assert (store.read_table(0)["label"] == -1).all()  # the store still hides the truth


def test_mock_tile_names_of_other_surveys_are_their_own():
    from lensdask.names import is_valid_name
    from lensdask.survey.mock import mock_tile_names
    from lensdask.survey.profiles import known_surveys

    des = ["DES0213-3040", "DES2359-4520"]
    assert mock_tile_names("des", des) == des  # DES mocks keep their names exactly
    assert mock_tile_names("lsst", des) == ["MOCK-LSST-0001", "MOCK-LSST-0002"]
    assert mock_tile_names("legacy-dr10", des[:1]) == ["MOCK-LEGACY-DR10-0001"]
    assert mock_tile_names("euclid-vis", ["x"] * 12345)[-1] == "MOCK-EUCLID-VIS-12345"
    for survey in known_surveys():
        names = mock_tile_names(survey, des)
        assert all(is_valid_name(n) for n in names) and len(set(names)) == 2


def test_an_lsst_mock_survey_names_its_tiles_mock_lsst(tmp_path):
    from lensdask.survey import mock_survey

    kw = dict(tiles=2, per_tile=1, lens_fraction=0.0, lookalike_fraction=0.0, seed=6, progress=False)
    lsst, truth = mock_survey(tmp_path / "lsst.zarr", survey="lsst", **kw)
    assert lsst.tiles == ["MOCK-LSST-0001", "MOCK-LSST-0002"]
    assert list(pd.read_parquet(truth)["tile"]) == lsst.tiles
    des, _ = mock_survey(tmp_path / "des.zarr", **kw)
    assert all(NAME.match(n) for n in des.tiles)
    # the same tile centres and positions: only the names differ
    a, b = lsst.read_catalog(), des.read_catalog()
    np.testing.assert_array_equal(a[["ra", "dec", "object_id"]], b[["ra", "dec", "object_id"]])
