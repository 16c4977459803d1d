"""Realistic simulations on real data: DES conditions, real lens galaxies, COSMOS sources, PSFEx, constraints."""

from __future__ import annotations

import dask
import numpy as np
import pandas as pd
import pytest

from lensdask.errors import ConstraintError, LensdaskError
from lensdask.simulate import PARAMS, Constraints, RejectionStats, priors, simulate, simulate_rows
from lensdask.simulate.conditions import draw_conditions
from lensdask.simulate.constraints import load_constraints_file
from lensdask.simulate.inputs import InputError, load_backgrounds, theta_E_sis
from lensdask.simulate.render import get_renderer, reference_render


@pytest.fixture(scope="module")
def real(shared_data):
    return {
        "bg": str(shared_data / "des_galaxies"),
        "cosmos": str(shared_data / "cosmos_sources"),
        "psf": str(shared_data / "des_psf" / "DECam_00154912_12_psfcat.psf"),
        "cond": str(shared_data / "des_conditions"),
    }


def test_des_conditions_match_the_real_samples(shared_data):
    rng = np.random.default_rng(0)
    draws = pd.DataFrame([draw_conditions(rng, "griz") for _ in range(3000)])
    for b in "gri":
        real = np.loadtxt(shared_data / "des_conditions" / f"2d{b}_DES.txt")
        assert abs(draws[f"seeing_{b}"].median() - np.median(real[:, 0])) < 0.03
        assert abs(draws[f"sky_{b}"].median() - np.median(real[:, 1])) < 0.05
        assert abs(draws[f"seeing_{b}"].std() - real[:, 0].std()) < 0.05
    # sampling the files themselves returns their rows
    folder = draw_conditions(np.random.default_rng(1), "gr", str(shared_data / "des_conditions"))
    real_g = np.loadtxt(shared_data / "des_conditions" / "2dg_DES.txt")
    assert np.any(np.all(np.isclose(real_g, [folder["seeing_g"], folder["sky_g"]]), axis=1))


@pytest.mark.parametrize("kind", ["sersic", "cosmos", "psfex"])
def test_noiseless_render_equals_lenstronomy_under_sampled_conditions(real, kind):
    r = get_renderer(sources=real["cosmos"] if kind == "cosmos" else None, psf=real["psf"] if kind == "psfex" else None)
    rng = np.random.default_rng(3)
    p = priors.draw_lens_galaxy(rng, r.bands)
    p.update(r.draw_conditions(rng))
    p.update(priors.draw_lensed_source(rng, r.bands, lens=p, cosmos=r.cosmos))
    assert len({round(p[f"seeing_{b}"], 6) for b in r.bands}) == (1 if kind == "psfex" else 4)
    out = r.render(p, np.random.default_rng(0))
    ref = reference_render(r, p)
    np.testing.assert_allclose(out.lens_light + out.arc, ref, rtol=1e-7, atol=1e-9 * ref.max())
    # noise level follows the sampled sky: lenstronomy's own background noise for that sky
    from lenstronomy.SimulationAPI.sim_api import SimAPI

    b = r.bands[1]
    sim = SimAPI(
        num_pix=r.stamp, kwargs_single_band=dict(r.kwargs_band[b], sky_brightness=p[f"sky_{b}"]), kwargs_model={}
    )
    assert r.noise_of(b, p[f"sky_{b}"])[0] == pytest.approx(sim.background_noise, rel=1e-12)


def test_psfex_kernel_is_a_des_psf(real):
    r = get_renderer(psf=real["psf"])
    k = r._psfex_kernel(1000, 2000)
    assert k.shape[0] % 2 == 1 and k.sum() == pytest.approx(1.0)
    cond = r.draw_conditions(np.random.default_rng(0))
    assert 0.8 < cond["seeing_g"] < 1.6  # the model's PSF_FWHM is 4.6 px = 1.2"


def test_arcs_painted_on_real_galaxies(real):
    r = get_renderer(backgrounds=real["bg"])
    bg = r.backgrounds
    assert bg.images.shape == (30, 4, 45, 45)
    assert np.isfinite(bg.sigma_v).all()
    stats = RejectionStats()
    img, tab = simulate_rows(range(12), 5, lens_fraction=1.0, backgrounds=real["bg"], stats=stats)
    assert (tab["label"] == 1).all()
    k = tab["background_index"].astype(int).to_numpy()
    np.testing.assert_allclose(tab["sigma_v"], bg.sigma_v[k])
    np.testing.assert_allclose(tab["theta_E"], theta_E_sis(tab["sigma_v"], tab["z_lens"], tab["z_source"]))
    assert tab[["mag_lens_i", "lens_R_sersic"]].isna().all().all()
    # the arc adds flux only where the lensed source is; elsewhere the real pixels are untouched
    row = tab.iloc[0].to_dict()
    cand = r.candidate(row)
    out = cand.finish(np.random.default_rng(9))
    diff = out.image - bg.images[int(row["background_index"])]
    assert np.all(diff[out.arc <= 0] == 0)
    assert np.abs(diff).sum() > 0
    np.testing.assert_allclose(diff.sum(axis=(1, 2)), (out.arc * out.scale[:, None, None]).sum(axis=(1, 2)), rtol=0.1)
    for rec in tab.to_dict("records"):
        assert Constraints.from_config().check(rec) is None


def test_constraints_bite_and_hold(real):
    over = {"contrast_min": 0.5, "n_images_min": 2, "arc_extent_min": 180.0}
    stats = RejectionStats()
    _, tab = simulate_rows(range(10), 2, lens_fraction=1.0, constraints=over, stats=stats)
    c = Constraints.from_config(over)
    for rec in tab.to_dict("records"):
        assert c.check(rec) is None
        assert rec["contrast_g"] >= 0.5
        assert rec["n_images"] >= 2 or rec["arc_extent"] >= 180
        assert rec["theta_E"] >= c.theta_E_over_seeing_min * max(rec[f"seeing_{b}"] for b in "griz")
    assert stats.draws == stats.accepted + sum(stats.rejected.values())
    # the default constraints reject a real share of draws
    assert stats.rejected["arc_snr_min"] > 0 and stats.rejected["theta_E_min"] > 0
    assert stats.acceptance_fraction < 0.7


def test_real_negatives_and_mixed_proportions(real):
    kw = dict(lens_fraction=0.0, backgrounds=real["bg"], real_negative_fraction=0.5, lookalike_fraction=0.0)
    img, tab = simulate_rows(range(40), 3, **kw)
    bg = get_renderer(backgrounds=real["bg"]).backgrounds
    is_real = tab["background_index"].notna()
    assert 8 <= is_real.sum() <= 32
    # by default a real cutout keeps its own sky: its neighbours and stars are real already
    for row in np.flatnonzero(is_real):
        np.testing.assert_array_equal(img[row], bg.images[int(tab["background_index"][row])])
    assert tab.loc[~is_real, "mag_lens_i"].notna().all()
    assert tab.loc[~is_real, "scene_n_galaxies"].notna().all()  # modelled galaxies get scenes
    assert (tab["label"] == 0).all()
    # scene.on_real adds field galaxies and stars (never satellites) to real cutouts, painted or not:
    # light and its Poisson noise only
    img2, tab2 = simulate_rows(
        range(40), 3, scene={**dask.config.get("lensdask.simulate.scene"), "on_real": True}, **kw
    )
    assert (tab2["background_index"].notna() == is_real).all()
    rows = np.flatnonzero(is_real)
    assert tab2.loc[rows, "scene_n_galaxies"].notna().all() and tab2.loc[rows, "scene_n_satellites"].eq(0).all()
    bright = 0
    for row in rows:
        k = int(tab2["background_index"][row])
        added = (img2[row] - bg.images[k]) / bg.noise[k][:, None, None]
        assert added.mean() > 0
        if tab2["scene_brightest_mag_i"][row] < 22:
            bright += 1
            assert added.max() > 3.0  # a neighbour brighter than i = 22 shows
    assert bright > 0


def test_bad_inputs_are_named(real, tmp_path):
    with pytest.raises(InputError, match="nope.fits"):
        simulate_rows(range(1), 0, sources=str(tmp_path / "nope.fits"))
    with pytest.raises(InputError, match="missing.psf"):
        simulate_rows(range(1), 0, psf=str(tmp_path / "missing.psf"))
    with pytest.raises(InputError, match="bands"):
        load_backgrounds(real["bg"], ("g", "r", "i", "u"), 0.263, 45)
    from astropy.io import fits

    for b in "griz":
        fits.writeto(tmp_path / f"{b}.fits", np.zeros((2, 60, 60), np.float32), fits.Header({"PIXSCALE": 0.186}))
    with pytest.raises(InputError, match="pixel scale"):
        load_backgrounds(str(tmp_path), tuple("griz"), 0.263, 45)
    with pytest.raises(ConstraintError, match="contrast_min"):
        simulate_rows(range(1), 0, lens_fraction=1.0, constraints={"contrast_min": 1e9}, max_draws=5)
    (tmp_path / "c.yaml").write_text("constraints:\n  arc_snr_min: 30\n  bogus: 1\n")
    with pytest.raises(ConstraintError, match="bogus"):
        load_constraints_file(str(tmp_path / "c.yaml"))
    assert issubclass(InputError, LensdaskError)


def test_real_inputs_reproducible_across_partitions(real, tmp_path, client):
    kw = dict(lens_fraction=0.5, backgrounds=real["bg"], sources=real["cosmos"], progress=False)
    a = simulate(tmp_path / "a.zarr", 8, seed=4, partition_size=3, client=client, **kw)
    b = simulate(tmp_path / "b.zarr", 8, seed=4, partition_size=8, **kw)
    img_a = np.concatenate([a.read_images(t) for t in range(a.n_tiles)])
    np.testing.assert_array_equal(img_a, b.read_images(0))
    cols = ["object_id", "label", *PARAMS]
    pd.testing.assert_frame_equal(a.read_catalog()[cols], b.read_catalog()[cols])
    cat = a.read_catalog()
    lens = cat["label"] == 1
    assert lens.any() and cat.loc[lens, "source_index"].notna().all()
    assert a.provenance["backgrounds"] == real["bg"]


@pytest.mark.slow
def test_gallery_and_cli(real, tmp_path):
    from lensdask.cli import main

    (tmp_path / "c.yaml").write_text("arc_snr_min: 25\n")
    png = tmp_path / "g.png"
    rc = main(
        [
            "simulate",
            "--out",
            str(tmp_path / "t.zarr"),
            "--n",
            "6",
            "--seed",
            "1",
            "--cluster",
            "local",
            "--backgrounds",
            real["bg"],
            "--sources",
            real["cosmos"],
            "--constraints",
            str(tmp_path / "c.yaml"),
            "--gallery",
            str(png),
        ]
    )
    assert rc == 0
    from lensdask.store import open_store

    s = open_store(tmp_path / "t.zarr")
    cat = s.read_catalog()
    assert (cat.loc[cat["label"] == 1, "arc_snr_g"] >= 25).all()
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000
    assert main(["simulate", "--out", str(tmp_path / "u.zarr"), "--n", "2", "--backgrounds", str(tmp_path / "no")]) == 2


def test_backgrounds_from_a_store_equal_the_cubes(real, tmp_path):
    """A cutout store of real galaxies serves as backgrounds like the FITS cubes it was made from."""
    from lensdask.store import create_store

    cubes = load_backgrounds(real["bg"], tuple("griz"), 0.263, 45, rows=(0, 1, 2))
    images = np.asarray(cubes.images, dtype=np.float32)
    s = create_store(
        tmp_path / "bg.zarr",
        tiles=["real"],
        capacity=len(images),
        bands=list("griz"),
        pixel_scale=0.263,
        stamp=45,
        quantise_step=0,
    )
    s.write_tile(0, images, pd.DataFrame({"object_id": np.arange(len(images)), "ra": 0.0, "dec": 0.0}))
    from_store = load_backgrounds(str(tmp_path / "bg.zarr"), tuple("griz"), 0.263, 45)
    assert len(from_store) == len(images)
    np.testing.assert_array_equal(np.asarray(from_store.images, dtype=np.float32), images)
