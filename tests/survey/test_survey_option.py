"""One option (issue 28, part 2): ``--survey NAME`` on every command, stores and model cards that record
their survey, a model refused on another survey's cutouts unless adapted, and des exactly as before."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from lensdask.cli import main
from lensdask.demo import score_against_truth
from lensdask.errors import ModelSurveyError
from lensdask.model import evaluate
from lensdask.model.checkpoint import card_survey, default_model_dir, read_card, untrained_checkpoint
from lensdask.model.pretrained import survey_channels
from lensdask.search import search
from lensdask.simulate import simulate
from lensdask.store import open_store
from lensdask.survey import mock_survey
from lensdask.survey.profiles import get_profile

PROFILES = ["des", "legacy-dr10", "hsc-pdr3", "lsst", "euclid-vis"]


@pytest.fixture(scope="module")
def lsst_survey(tmp_path_factory, client):
    """A 1-tile, 6-row LSST mock survey made by the command line, and its truth table."""
    out = tmp_path_factory.mktemp("lsst") / "lsst.zarr"
    argv = ["mock-survey", "--out", str(out), "--tiles", "1", "--per-tile", "6", "--lens-fraction", "0.34"]
    assert main([*argv, "--seed", "3", "--survey", "lsst", "--cluster", client.scheduler.address]) == 0
    return out, out.with_name("lsst.truth.parquet")


def test_mock_survey_lsst_writes_six_bands_at_0_2_arcsec(lsst_survey):
    store = open_store(lsst_survey[0])
    assert store.survey == "lsst"
    assert list(store.bands) == ["u", "g", "r", "i", "z", "y"]
    assert store.pixel_scale == pytest.approx(0.2) and store.stamp == 59  # 11.8" stamps, as DES's
    images = store.read_tile(0).images
    assert images.shape == (6, 6, 59, 59) and np.isfinite(images).all()
    truth = pd.read_parquet(lsst_survey[1])
    assert {"seeing_u", "seeing_y", "arc_snr_u"} <= set(truth.columns)
    lsst = get_profile("lsst").conditions()
    seeing = truth[["seeing_r", "seeing_i"]].to_numpy()
    # LSST seeing (medians 0.73" r, 0.71" i), not DES's (~1") or its clip at 0.6"
    assert np.median(seeing) < 0.9 and lsst["r"].seeing_median == pytest.approx(0.73)


# -- an unknown survey: exit 2 listing the known ones, for every command -----------------------------
@pytest.mark.parametrize(
    "argv",
    [
        ["simulate", "--out", "{d}/s.zarr", "--n", "2"],
        ["mock-survey", "--out", "{d}/m.zarr", "--tiles", "1", "--per-tile", "2"],
        ["ingest", "--out", "{d}/i.zarr", "--coadds", "{d}"],
        ["train", "--data", "{d}/t.zarr", "--out", "{d}/model"],
        ["evaluate", "--data", "{d}/t.zarr"],
        ["inject", "--cutouts", "{d}/t.zarr"],
        ["search", "--zarr", "{d}/t.zarr", "--out", "{d}/run"],
        ["search-tile", "--zarr", "{d}/t.zarr", "--tile", "0", "--out", "{d}/run"],
        ["fit", "{d}/run"],
    ],
    ids=lambda argv: argv[0],
)
def test_unknown_survey_is_exit_2_listing_the_known_ones(argv, tmp_path, capsys):
    status = main([a.format(d=tmp_path) for a in argv] + ["--survey", "sdss"])
    err = capsys.readouterr().err
    assert status == 2
    assert "unknown survey 'sdss'" in err and all(name in err for name in PROFILES), err
    assert err.count("\n") == 1  # one line
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing written, no cluster started


# -- a model is refused on another survey's cutouts, unless adapted explicitly -------------------------
def test_des_model_refused_on_an_lsst_store_naming_both(lsst_survey, random_model, tmp_path, capsys):
    store = str(lsst_survey[0])
    assert card_survey(read_card(random_model)) == "des"
    for argv in (
        ["search", "--zarr", store, "--model", str(random_model), "--out", str(tmp_path / "run")],
        ["evaluate", "--data", store, "--model", str(random_model)],
        ["inject", "--cutouts", store, "--model", str(random_model)],
    ):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert "trained on des cutouts" in err and "holds lsst cutouts" in err and "--adapt-survey" in err, err
        assert err.count("\n") == 1
    assert not (tmp_path / "run").exists()
    with pytest.raises(ModelSurveyError, match="trained on des cutouts.*holds lsst cutouts"):
        evaluate(store, random_model, progress=False)


def test_an_lsst_store_is_searched_with_the_shipped_lsst_model(lsst_survey, tmp_path, client, capsys):
    run = tmp_path / "run"
    argv = ["search", "--zarr", str(lsst_survey[0]), "--out", str(run), "--threshold", "0", "--no-crossmatch"]
    assert main([*argv, "--no-report", "--cluster", client.scheduler.address]) == 0, capsys.readouterr().err
    summary = json.loads((run / "summary.json").read_text())
    card = read_card(default_model_dir("lsst"))
    assert summary["model_id"] == card["model_id"] and card_survey(card) == "lsst"
    assert len(pd.read_parquet(run / "candidates.parquet")) == 6


def test_survey_option_must_match_the_store(lsst_survey, random_model, capsys):
    assert main(["evaluate", "--data", str(lsst_survey[0]), "--survey", "des"]) == 2
    assert "holds lsst cutouts, not des (--survey)" in capsys.readouterr().err


def test_adapted_des_model_searches_an_lsst_store(lsst_survey, random_model, tmp_path, client, capsys):
    run = tmp_path / "run"
    argv = ["search", "--zarr", str(lsst_survey[0]), "--model", str(random_model), "--out", str(run)]
    argv += ["--survey", "lsst", "--adapt-survey", "--threshold", "0", "--no-crossmatch", "--no-report"]
    assert main([*argv, "--cluster", client.scheduler.address]) == 0, capsys.readouterr().err
    (adapted,) = (run / "adapted").iterdir()
    card = read_card(adapted)
    assert card["survey"] == "lsst" and card["bands"] == ["u", "g", "r", "i", "z", "y"]
    assert card["stamp"] == 59 and card["input_size"] == 45 and card["pixel_scale"] == pytest.approx(0.2)
    assert card["adapted_from"]["survey"] == "des" and adapted.name == read_card(random_model)["model_id"]
    assert card["adapted_from"]["channels"] == "u<-g/2, g<-g/2, r<-r, i<-i, z<-z/2, y<-z/2"
    assert len(pd.read_parquet(run / "candidates.parquet")) == 6


def test_survey_channels_keep_a_flat_image_embedding():
    for source, target in (("griz", "ugrizy"), ("ugrizy", "griz"), (["VIS"], "griz"), ("griz", ["VIS"])):
        mix, _ = survey_channels(list(source), list(target))
        total = np.zeros(len(source))
        for m in mix:
            for j, w in m:
                total[j] += w
        np.testing.assert_allclose(total, 1.0)  # every source channel's kernel is used exactly once in all


def test_a_card_records_its_survey(tmp_path):
    card = untrained_checkpoint(tmp_path / "m", "test-vit", bands="ugrizy", stamp=59, pixel_scale=0.2, survey="lsst")
    assert read_card(tmp_path / "m")["survey"] == card["survey"] == "lsst"


# -- des: exactly today's output -------------------------------------------------------------------
def test_survey_des_gives_exactly_the_output_without_it(tmp_path):
    kw = dict(tiles=1, per_tile=8, lens_fraction=0.4, seed=11, progress=False)
    a, ta = mock_survey(tmp_path / "a.zarr", **kw)
    b, tb = mock_survey(tmp_path / "b.zarr", survey="des", **kw)
    assert a.survey == b.survey == "des"
    np.testing.assert_array_equal(a.read_tile(0).images, b.read_tile(0).images)
    pd.testing.assert_frame_equal(pd.read_parquet(ta), pd.read_parquet(tb))
    c = simulate(tmp_path / "c.zarr", 8, seed=2, lookalike_fraction=0.3, progress=False)
    d = simulate(tmp_path / "d.zarr", 8, seed=2, lookalike_fraction=0.3, progress=False, survey="des")
    np.testing.assert_array_equal(c.read_tile(0).images, d.read_tile(0).images)
    pd.testing.assert_frame_equal(c.read_tile(0).table, d.read_tile(0).table)


# -- every profile: mock-survey -> search -> metrics with a tiny model ------------------------------
@pytest.mark.parametrize("name", PROFILES)
def test_every_profile_mock_survey_search_metrics(name, tmp_path):
    profile = get_profile(name)
    model = tmp_path / "model"
    untrained_checkpoint(
        model, "test-vit", bands=profile.bands, stamp=profile.stamp, pixel_scale=profile.pixel_scale, survey=name
    )
    store, truth = mock_survey(
        tmp_path / "s.zarr", tiles=1, per_tile=6, lens_fraction=0.34, seed=5, survey=name, progress=False
    )
    assert store.survey == name and list(store.bands) == list(profile.bands) and store.stamp == profile.stamp
    result = search(store.url, model, tmp_path / "run", threshold=0.0, progress=False, crossmatch=False, report=False)
    truth = pd.read_parquet(truth)
    metrics = score_against_truth(result.scores(), truth, 0.5)
    assert metrics["injected"] == int(truth["is_lens"].sum()) >= 1
    assert json.loads(json.dumps(metrics, default=float))  # a complete, serialisable summary
