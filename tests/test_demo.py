"""The embedded default job reports the real-galaxy false-positive rate beside the mock-survey figures."""

from __future__ import annotations

import json

import dask
import pytest

from lensdask.demo import demo, format_summary


@pytest.fixture(scope="module")
def heldout():
    return list(dask.config.get("lensdask.simulate.galaxy_split.heldout"))


def test_demo_scores_the_mock_survey_and_the_heldout_real_galaxies(tmp_path, client, shared_data, heldout):
    quick_fit = {  # the wiring, not the science (tests/fit)
        "lensdask.fit.theta_E_grid": 3,
        "lensdask.fit.lens_blobs": [0],
        "lensdask.fit.null_blobs": [1],
        "lensdask.fit.max_iterations": 5,
    }
    with dask.config.set({"lensdask.inject.orientations": 1, **quick_fit}):
        s = demo(
            tmp_path / "d",
            tiles=2,
            per_tile=60,
            lens_fraction=0.05,
            seed=3,
            real_galaxies=shared_data / "des_galaxies",
            fit_top=3,
            client=client,
            progress=False,
        )
    assert s["top_n"] == s["injected"] > 0  # N = the number of injected lenses
    # the best 3 were fitted (tiny settings: the wiring, not the science) and scored against the truth
    f = s["fit"]
    assert f["fitted"] == 3 and 0 <= f["lenses_kept"] <= f["lenses"] <= 3
    assert f["kept"] + f["non_lenses_rejected"] + (f["lenses"] - f["lenses_kept"]) == 3
    assert "Lens models of the best 3" in format_summary(s)
    assert s["lookalikes"] > 0  # the mock survey plants look-alikes by default
    real = s["real_galaxies"]
    assert real["recorded"] is False and real["rows"] == heldout and real["n_unpainted"] == len(heldout)
    lo, hi = real["fpr_interval"]
    assert lo <= real["fpr"] <= hi
    text = format_summary(s)
    assert "Real DES galaxies never trained on" in text and "Look-alikes" in text
    # the survey is stored quantised by default, at a few KiB per cutout (float32 would be ~29 KiB)
    st = s["store"]
    assert st["pixels"] == "quantised" and st["rms_error"] <= 0.1 and 1024 < st["bytes_per_cutout"] < 8 * 1024
    assert "KiB per cutout on disk (quantised" in text
    assert json.loads((tmp_path / "d" / "summary.json").read_text())["real_galaxies"]["rows"] == heldout


def test_demo_without_real_cutouts_reports_the_model_cards_record(tmp_path, client):
    s = demo(
        tmp_path / "d",
        tiles=1,
        per_tile=40,
        lens_fraction=0.05,
        seed=4,
        real_galaxies=tmp_path / "missing",
        fit_top=0,
        client=client,
        progress=False,
    )
    real = s["real_galaxies"]
    # the shipped model's card carries its inject result on the held-out galaxies
    assert real is not None and real["recorded"] is True and real["n_unpainted"] > 0
    assert "recorded in the model card" in format_summary(s)
    assert "fit" not in s and "Lens models" not in format_summary(s)
