"""Survey profiles (issue 28): what each declares, that DES is today's DES, and the input each refuses."""

from __future__ import annotations

import math

import dask
import numpy as np
import pytest

from lensdask import config
from lensdask.cli import main
from lensdask.errors import LensdaskError
from lensdask.simulate.conditions import DES_CONDITIONS
from lensdask.store import create_store, open_store
from lensdask.storeadmin import format_info, store_info
from lensdask.survey import ingest
from lensdask.survey.profiles import (
    SurveyMismatchError,
    UnknownSurveyError,
    check_store_against_profile,
    get_profile,
    known_surveys,
    lenstronomy_conditions,
)

from test_survey_layouts import write_hsc_patch, write_lsst_patch

PROFILES = ["des", "legacy-dr10", "hsc-pdr3", "lsst", "euclid-vis"]


def test_known_surveys_are_the_five_profiles():
    assert known_surveys() == PROFILES


def test_des_profile_is_todays_des():
    des = get_profile("des")
    assert list(des.bands) == list(config.get("survey.bands"))
    assert des.pixel_scale == config.get("survey.pixel_scale")
    assert des.stamp == config.get("survey.stamp")
    assert {b: c.as_tuple() for b, c in des.conditions().items()} == {b: DES_CONDITIONS[b] for b in des.bands}
    assert des.layout.image == config.get("ingest.des.pattern")
    assert (des.layout.image_hdu, des.layout.weight_hdu, des.layout.mask_hdu) == ("SCI", "WGT", "MSK")
    assert dict(des.layout.mask_bits) == {b: config.get("ingest.des.mask_bits") for b in des.bands}


def test_des_profile_follows_the_configuration_it_points_at():
    with dask.config.set({"lensdask.survey.bands": ["g", "r", "i"], "lensdask.survey.stamp": 33}):
        des = get_profile("des")
    assert des.bands == ("g", "r", "i") and des.stamp == 33


@pytest.mark.parametrize(
    "name, bands, scale, stamp, unit",
    [
        ("legacy-dr10", "griz", 0.262, 45, "nanomaggy"),
        ("hsc-pdr3", "grizy", 0.168, 71, "counts at zero point 27"),
        ("lsst", "ugrizy", 0.2, 59, "nJy"),
    ],
)
def test_profiles_declare_the_survey(name, bands, scale, stamp, unit):
    p = get_profile(name)
    assert "".join(p.bands) == bands and p.pixel_scale == scale and p.stamp == stamp and p.flux_unit == unit
    assert stamp * scale == pytest.approx(p.stamp_arcsec, abs=scale)  # the stamp is the field's odd pixel count
    assert set(p.depth.mag) == set(p.bands)


def test_euclid_vis_is_one_band_at_a_tenth_of_an_arcsecond():
    p = get_profile("euclid-vis")
    assert p.bands == ("VIS",) and p.pixel_scale == 0.1 and p.stamp % 2 == 1
    assert p.layout.weight_kind == "rms"


def test_euclid_nisp_is_refused_with_a_reason():
    with pytest.raises(UnknownSurveyError, match="NISP.*euclid-vis"):
        get_profile("euclid-nisp")


def test_unknown_survey_lists_the_known_ones():
    with pytest.raises(UnknownSurveyError) as err:
        get_profile("sdss")
    assert all(name in str(err.value) for name in PROFILES)
    assert isinstance(err.value, LensdaskError)


@pytest.mark.parametrize("name, preset", [("lsst", "LSST"), ("euclid-vis", "Euclid")])
def test_medians_are_lenstronomys_presets(name, preset):
    p = get_profile(name)
    assert p.lenstronomy == preset
    for b, c in p.conditions().items():
        seeing, sky = lenstronomy_conditions(preset, b)
        assert c.seeing_median == pytest.approx(seeing) and c.sky_mean == sky


def test_scatter_borrows_a_des_bands_fit():
    lsst = get_profile("lsst").conditions()
    assert lsst["y"].seeing_ln_sd == DES_CONDITIONS["z"][1] and lsst["y"].rho == DES_CONDITIONS["z"][4]
    assert get_profile("euclid-vis").conditions()["VIS"].seeing_ln_sd == 0


def test_legacy_bad_bits_are_the_bands_own():
    bits = get_profile("legacy-dr10").layout.mask_bits
    assert bits["g"] == (1 << 2) | (1 << 5)  # SATUR_G, ALLMASK_G
    assert bits["i"] == (1 << 14) | (1 << 15)  # SATUR_I, ALLMASK_I (DR10)


def test_hsc_and_lsst_read_bad_planes_from_the_mask_header():
    for name in ("hsc-pdr3", "lsst"):
        lay = get_profile(name).layout
        assert lay.mask_bits is None and set(lay.mask_planes) == {"NO_DATA", "BAD", "SAT"}
        assert lay.weight_kind == "variance"


# -- stores ---------------------------------------------------------------------------------------
def _store(path, **kw):
    args = dict(tiles=["t0"], capacity=4, bands=["g", "r", "i", "z"], pixel_scale=0.263, stamp=45)
    return create_store(path, **(args | kw))


def test_a_store_records_its_survey_and_info_shows_it(tmp_path):
    store = _store(tmp_path / "s.zarr", bands=list("ugrizy"), pixel_scale=0.2, stamp=59, survey="lsst")
    assert open_store(store.url).survey == "lsst"
    info = store_info(store.url)
    assert info["survey"] == "lsst"
    assert "survey      lsst" in format_info(info)


def test_a_store_written_before_surveys_reads_as_des(tmp_path):
    store = _store(tmp_path / "old.zarr")
    del store.group.attrs["survey"]
    assert "survey" not in open_store(store.url).group.attrs
    assert open_store(store.url).survey == "des"
    assert store_info(store.url)["survey"] == "des"


def test_check_store_against_profile_passes_a_matching_store(tmp_path):
    check_store_against_profile(_store(tmp_path / "s.zarr"), get_profile("des"))


def test_check_store_against_profile_gives_one_line_per_problem(tmp_path):
    store = _store(tmp_path / "s.zarr", bands=["g", "r"], pixel_scale=0.27)
    headers = {"g.fits": {"BUNIT": "nJy"}, "r.fits": {"MAGZERO": 30.0}}
    with pytest.raises(SurveyMismatchError) as err:
        check_store_against_profile(store, get_profile("des"), headers=headers)
    lines = str(err.value).splitlines()
    assert len(lines) == 3, lines
    assert "bands g,r" in lines[0] and "g,r,i,z" in lines[0]
    assert "pixel scale 0.2700" in lines[1] and "2.7%" in lines[1]
    assert "g.fits: BUNIT 'nJy'" in lines[2]


def test_a_pixel_scale_within_one_percent_passes():
    p = get_profile("lsst")
    check_store_against_profile(_Input(list(p.bands), 0.2019), p)
    with pytest.raises(SurveyMismatchError, match="pixel scale"):
        check_store_against_profile(_Input(list(p.bands), 0.2021), p)


class _Input:
    def __init__(self, bands, pixel_scale):
        self.bands, self.pixel_scale = bands, pixel_scale


@pytest.mark.parametrize(
    "header, contradicts",
    [
        ({"BUNIT": "nJy"}, False),
        ({"BUNIT": "nanomaggy"}, True),
        ({"BUNIT": "adu"}, True),
        ({"FLUXMAG0": 10 ** (0.4 * 31.4)}, False),
        ({"MAGZERO": 27.0}, True),
    ],
)
def test_flux_unit_keywords_against_the_lsst_profile(header, contradicts):
    p = get_profile("lsst")
    check = lambda: check_store_against_profile(_Input(list(p.bands), 0.2), p, headers={"f": header})  # noqa: E731
    if contradicts:
        with pytest.raises(SurveyMismatchError, match="contradicts the lsst profile's flux unit nJy"):
            check()
    else:
        check()


# -- bad input to ingest, before any work ---------------------------------------------------------
def test_cli_unknown_survey_is_exit_2_listing_the_known_ones(tmp_path, capsys):
    (tmp_path / "coadds").mkdir()
    argv = ["ingest", "--out", str(tmp_path / "s.zarr"), "--coadds", str(tmp_path / "coadds")]
    status = main([*argv, "--survey", "sdss"])
    err = capsys.readouterr().err
    assert status == 2
    assert "unknown survey 'sdss'" in err and all(name in err for name in PROFILES)
    assert not (tmp_path / "s.zarr").exists()


def test_cli_ingests_a_survey_and_info_shows_it(tmp_path, capsys, client):
    cat, _ = write_lsst_patch(tmp_path / "deep_coadd")
    cat.to_csv(tmp_path / "cat.csv", index=False)
    out = str(tmp_path / "s.zarr")
    argv = ["ingest", "--out", out, "--survey", "lsst", "--coadds", str(tmp_path / "deep_coadd")]
    assert main([*argv, "--catalog", str(tmp_path / "cat.csv"), "--cluster", client.scheduler.address]) == 0
    assert main(["info", out]) == 0
    assert "survey      lsst" in capsys.readouterr().out


def test_wrong_bands_are_refused_before_any_work(tmp_path):
    cat, _ = write_lsst_patch(tmp_path / "c")
    with pytest.raises(SurveyMismatchError, match="bands g,r do not match the lsst profile's u,g,r,i,z,y"):
        ingest(tmp_path / "s.zarr", survey="lsst", coadds=tmp_path / "c", catalog=cat, bands=["g", "r"], progress=False)
    assert not (tmp_path / "s.zarr").exists()


def test_images_at_another_pixel_scale_are_refused(tmp_path):
    cat, _ = write_lsst_patch(tmp_path / "c", pixel_scale=0.205)
    with pytest.raises(SurveyMismatchError, match=r"pixel scale 0\.2050 arcsec/px is 2\.5% off the lsst profile's"):
        ingest(tmp_path / "s.zarr", survey="lsst", coadds=tmp_path / "c", catalog=cat, progress=False)
    assert not (tmp_path / "s.zarr").exists()


def test_a_contradicting_flux_unit_is_refused_one_line_per_band(tmp_path):
    cat, _ = write_lsst_patch(tmp_path / "c", unit="nanomaggy")
    with pytest.raises(SurveyMismatchError) as err:
        ingest(tmp_path / "s.zarr", survey="lsst", coadds=tmp_path / "c", catalog=cat, progress=False)
    lines = str(err.value).splitlines()
    assert len(lines) == 6 and all("BUNIT 'nanomaggy' contradicts the lsst profile's flux unit nJy" in x for x in lines)
    assert not (tmp_path / "s.zarr").exists()


def test_an_hsc_zero_point_that_is_not_27_is_refused(tmp_path):
    cat, _ = write_hsc_patch(tmp_path / "c", fluxmag0=10 ** (0.4 * 30))
    with pytest.raises(SurveyMismatchError, match=r"FLUXMAG0 = .* \(zero point 30\.00 AB mag\) contradicts"):
        ingest(tmp_path / "s.zarr", survey="hsc-pdr3", coadds=tmp_path / "c", catalog=cat, progress=False)


def test_des_tiles_with_another_survey_is_refused(tmp_path):
    with pytest.raises(LensdaskError, match="--coadds"):
        ingest(tmp_path / "s.zarr", survey="lsst", des_tiles=tmp_path, catalog=None, progress=False)


def test_an_empty_coadd_folder_names_the_pattern(tmp_path):
    with pytest.raises(LensdaskError, match=r"no lsst coadd files .*/deep_coadd_\*_u_"):
        ingest(tmp_path / "s.zarr", survey="lsst", coadds=tmp_path, catalog=None, progress=False)


def test_stamp_is_the_nearest_odd_pixel_count():
    for name in PROFILES:
        p = get_profile(name)
        assert p.stamp % 2 == 1
        assert abs(p.stamp - p.stamp_arcsec / p.pixel_scale) <= 1
    assert math.isclose(get_profile("des").stamp_arcsec, 45 * 0.263)
    assert np.isfinite(get_profile("hsc-pdr3").depth.mag["y"])
