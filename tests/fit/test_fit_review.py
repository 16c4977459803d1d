"""A fitted run for people: its model images read back (:mod:`lensdask.fit.models`), the model panel, and the
panel on the review page, in the review app and in the Zooniverse export. Tiny fitting settings (the
wiring, not the science: test_fit_candidate)."""

from __future__ import annotations

import http.client
import io
import shutil
import warnings

import dask
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from lensdask.cli import main
from lensdask.errors import LensdaskError
from lensdask.fit.models import (
    PANEL_VIEW,
    candidate_models,
    evidence_text,
    fitted_models,
    model_panel_figure,
    model_panel_png,
    panel_title,
    read_models,
)
from lensdask.fit.run import FIT_DIR, fit
from lensdask.review.app import ReviewServer, ReviewState
from lensdask.review.gallery import gallery_html
from lensdask.review.zooniverse import UNFITTED_MANIFEST, export_zooniverse
from lensdask.rundir import best_candidates

from test_fit_run import TINY  # the fit tests' tiny settings (a fraction of a second per candidate)

N_FITTED = 3
"""Candidates fitted, of the run's 6."""


@pytest.fixture(scope="module")
def fitted(galaxy_run, tmp_path_factory):
    """A tiny search run (2 tiles x 3 galaxies, every row a candidate) whose 3 best candidates are fitted,
    in this process (a default Dask client left by another test is not used)."""
    from lensdask import cluster

    source = galaxy_run("fitreview", per_tile=3, seed=6, first_id=900)
    run_dir = tmp_path_factory.mktemp("fitted") / "run"
    shutil.copytree(source / "run", run_dir)
    with pytest.MonkeyPatch.context() as mp, dask.config.set(TINY):
        mp.setattr(cluster, "current_client", lambda: None)
        result = fit(run_dir, top=N_FITTED, psf=1.0, chunk_size=2, progress=False)
    assert result.fitted == N_FITTED and (result.fits["fit_status"] == "ok").all()
    return run_dir


@pytest.fixture(scope="module")
def table(fitted):
    """The run's candidates with their fit columns."""
    return pd.read_parquet(fitted / "candidates.parquet")


def _fitted_ids(table) -> set[int]:
    return set(table.loc[table["fit_status"] == "ok", "object_id"].astype(int))


def _png(data: bytes) -> Image.Image:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return Image.open(io.BytesIO(data))


def test_read_models_gives_every_fitted_candidates_arrays(fitted, table):
    models = read_models(fitted)
    assert set(models) == _fitted_ids(table) and len(models) == N_FITTED
    for arrays in models.values():
        assert set(arrays) == {"lens", "null", "source", "mask"}
        for name in ("lens", "null", "source"):
            assert arrays[name].shape == (4, 45, 45) and arrays[name].dtype == np.float32
            assert np.isfinite(arrays[name]).all()
        assert arrays["mask"].shape == (45, 45) and arrays["mask"].dtype == np.int8
        assert 0 < arrays["mask"].sum() < 45 * 45  # a disc less neighbours, not the whole stamp
    one = sorted(models)[0]
    assert set(read_models(fitted, [one, 123456])) == {one}
    assert read_models(fitted, []) == {}
    assert read_models(fitted.parent / "nowhere") == {}


def test_read_models_treats_the_files_as_untrusted_data(fitted, tmp_path):
    run = tmp_path / "run"
    (run / FIT_DIR).mkdir(parents=True)
    good = np.ones((4, 45, 45), np.float16)
    np.savez(
        run / FIT_DIR / "chunk-a.npz",
        **{
            "7_lens": good,
            "7_source": good,
            "7_mask": np.ones((3, 4, 5), np.int8),  # wrong shape: left out
            "8_lens": np.array(["a", "b"]),  # not numbers: left out
            "../../escape_lens": good,  # a key is never a path: ignored
            "9_other": good,  # not a model array: ignored
        },
    )
    with open(run / FIT_DIR / "chunk-b.npz", "wb") as fh:  # a pickled object inside: refused
        np.savez(fh, **{"10_lens": np.array([{"a": 1}], dtype=object)})
    (run / FIT_DIR / "chunk-c.npz").write_bytes(b"PK\x03\x04 not really a zip")
    (run / FIT_DIR / "notes.npz").write_bytes(b"never read: not a chunk")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        models = read_models(run)
    assert set(models) == {7} and set(models[7]) == {"lens", "source"}
    said = " ".join(str(w.message) for w in caught)
    assert "chunk-a.npz: 7_mask" in said and "chunk-a.npz: 8_lens" in said
    assert "chunk-b.npz" in said and "chunk-c.npz" in said and "notes" not in said
    assert sorted(p.name for p in run.rglob("*")) == ["chunk-a.npz", "chunk-b.npz", "chunk-c.npz", "fit", "notes.npz"]


def test_fitted_models_needs_a_successful_fit_and_the_stamps_shape(fitted, table):
    models = read_models(fitted)
    oid = sorted(models)[0]
    row = table.set_index("object_id").loc[oid].to_dict()
    assert fitted_models(row, models[oid], (4, 45, 45)) is not None
    assert fitted_models(row, models[oid], (4, 41, 41)) is None
    assert fitted_models(row | {"fit_status": "error: RuntimeError: x"}, models[oid], (4, 45, 45)) is None
    assert fitted_models(row, None, (4, 45, 45)) is None
    assert fitted_models(row, {"lens": models[oid]["lens"]}, (4, 45, 45)) is None  # no source
    shown = candidate_models(fitted, table, (4, 45, 45))
    assert [m is not None for m in shown] == list(table["fit_status"] == "ok")


def test_panel_title_gives_theta_E_its_error_and_the_evidence():
    row = {"fit_status": "ok", "fit_theta_E": 1.234, "fit_theta_E_err": 0.051, "fit_dbic": -42.34, "fit_flags": ""}
    assert panel_title(row) == "θ_E = 1.23 ± 0.05″ · ΔBIC = −42.3 (favours lensing)"
    assert evidence_text(row | {"fit_dbic": 12.0}) == "ΔBIC = 12.0 (favours the null model)"
    assert evidence_text(row | {"fit_flags": "misfit,implausible"}) == (
        "ΔBIC = −42.3 (against lensing: the lens model misfits, implausible)"
    )
    assert evidence_text(row | {"fit_flags": "bound:theta_E"}).endswith("(against lensing: θ_E at its bound)")
    assert evidence_text(row | {"fit_status": "error: x", "fit_dbic": None}) == "ΔBIC = n/a (not used: no fit)"
    assert panel_title(row | {"fit_theta_E_err": np.nan}).startswith("θ_E = 1.23″ · ")


def test_model_panel_shows_data_model_residual_source_in_true_colour(fitted, table):
    cand, store, stamps = best_candidates(fitted, 6)
    models = candidate_models(fitted, cand, stamps.shape[1:])
    j = next(k for k, m in enumerate(models) if m is not None)
    row = cand.iloc[j]
    fig = model_panel_figure(stamps[j], models[j], store.bands, store.pixel_scale, row)
    assert [ax.get_title() for ax in fig.axes] == [
        "data (irg)",
        "lens model",
        "residual (faint)",
        "source, unlensed (faint)",
    ]
    title = fig.texts[0].get_text()
    assert f"{row['fit_theta_E']:.2f}" in title and f"{row['fit_dbic']:.1f}".replace("-", "−") in title
    # the data panel is the review page's true-colour picture of the stamp (scale bar included)
    from lensdask.images import sky_noise, view_image

    shown = fig.axes[0].get_images()[0].get_array()
    want = view_image(
        stamps[j], store.bands, "colour", pixel_scale=store.pixel_scale, noise=sky_noise(stamps[j], "griz")
    )
    np.testing.assert_array_equal(np.asarray(shown), want)
    # the residual is the data minus the lens model: a fit that explains nothing leaves the data
    nothing = dict(models[j], lens=np.zeros_like(models[j]["lens"]))
    blank = model_panel_figure(stamps[j], nothing, store.bands, store.pixel_scale, row)
    fitted_residual = np.asarray(fig.axes[2].get_images()[0].get_array(), float)
    blank_residual = np.asarray(blank.axes[2].get_images()[0].get_array(), float)
    assert blank_residual.sum() > fitted_residual.sum()
    png = _png(model_panel_png(stamps[j], models[j], store.bands, store.pixel_scale, row))
    assert png.mode == "RGB" and png.size[0] > 3 * png.size[1]
    plain = model_panel_figure(stamps[j], models[j], store.bands, store.pixel_scale, row, numbers=False)
    assert not plain.texts  # no numbers for volunteers


def test_gallery_shows_the_panel_for_fitted_candidates_only(fitted, table, tmp_path):
    g = gallery_html(fitted, top=6, per_page=4, out=tmp_path / "g")
    pages = "".join(p.read_text() for p in g.pages)
    assert pages.count(f'data-view="{PANEL_VIEW}"') == N_FITTED
    assert pages.count('data-view="colour"') == 6  # every candidate still has its views
    fits = table.set_index("object_id")
    for card in pages.split('<div class="card"')[1:]:
        oid = int(card.split('data-object-id="')[1].split('"')[0])
        if fits.loc[oid, "fit_status"] == "ok":
            assert f'data-view="{PANEL_VIEW}" src="data:image/png;base64,' in card
            assert f"θ<sub>E</sub> = {fits.loc[oid, 'fit_theta_E']:.2f}" in card and "ΔBIC = " in card
        else:
            assert PANEL_VIEW not in card and "ΔBIC" not in card


def test_review_app_serves_the_panel_of_fitted_candidates(fitted, table, tmp_path):
    state = ReviewState(fitted, tmp_path / "labels.csv", top=6, labeller="ann")
    fitted_rows = [i for i, m in enumerate(state.models) if m is not None]
    assert len(fitted_rows) == N_FITTED
    page = state.page()
    for i in range(6):
        assert (f"img/{i}/{PANEL_VIEW}.png" in page) == (i in fitted_rows)
    with ReviewServer(state, port=0) as server:
        for i in range(6):
            conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
            conn.request("GET", f"/img/{i}/{PANEL_VIEW}.png")
            r = conn.getresponse()
            body = r.read()
            conn.close()
            if i in fitted_rows:
                assert r.status == 200 and _png(body).mode == "RGB"
            else:
                assert r.status == 404


def test_zooniverse_export_with_the_model_panel(fitted, table, tmp_path, capsys):
    out = tmp_path / "zoo"
    manifest = export_zooniverse(fitted, out, top=6, model_panel=True)
    assert len(manifest) == 6
    with_panel = pd.read_csv(out / "manifest.csv")
    assert list(with_panel.columns[:4]) == ["image", "model_image", "ra", "dec"]
    assert all(c.startswith("#") for c in with_panel.columns[4:])  # hidden from volunteers
    assert set(with_panel["#object_id"]) == _fitted_ids(table)
    fits = table.set_index("object_id")
    np.testing.assert_allclose(with_panel["#theta_E"], fits.loc[with_panel["#object_id"], "fit_theta_E"])
    np.testing.assert_allclose(with_panel["#dbic"], fits.loc[with_panel["#object_id"], "fit_dbic"])
    for image, panel in zip(with_panel["image"], with_panel["model_image"]):
        # every file cell of every row names a file (the Panoptes CLI refuses an empty one)
        assert _png((out / image).read_bytes()).size == (270, 270)
        assert panel.endswith("_model.png") and _png((out / panel).read_bytes()).mode == "RGB"
    without = pd.read_csv(out / UNFITTED_MANIFEST)
    assert list(without.columns[:3]) == ["image", "ra", "dec"] and "model_image" not in without.columns
    assert len(without) == 6 - N_FITTED and not set(without["#object_id"]) & _fitted_ids(table)
    assert len(list(out.glob("*.png"))) == 6 + N_FITTED
    # through the CLI
    assert main(["export-zooniverse", str(fitted), "--top", "6", "--out", str(tmp_path / "z2"), "--model-panel"]) == 0
    said = capsys.readouterr().out
    assert f"{N_FITTED} subjects have their lens-model panel" in said and UNFITTED_MANIFEST in said
    # without the option: one image per subject, as before
    plain = export_zooniverse(fitted, tmp_path / "plain", top=6)
    assert "model_image" not in plain.columns and not (tmp_path / "plain" / UNFITTED_MANIFEST).exists()


def test_zooniverse_model_panel_of_a_run_without_fits_is_refused(galaxy_run, tmp_path, capsys):
    unfitted = galaxy_run("fitreview-none", per_tile=2, seed=7, first_id=950) / "run"
    with pytest.raises(LensdaskError, match="lensdask fit"):
        export_zooniverse(unfitted, tmp_path / "zoo", top=3, model_panel=True)
    assert not (tmp_path / "zoo").exists() and not (tmp_path / "zoo.partial").exists()
    assert main(["export-zooniverse", str(unfitted), "--out", str(tmp_path / "zoo"), "--model-panel"]) == 2
    assert "lensdask fit" in capsys.readouterr().err
