"""Scenes: neighbours, satellites and stars drawn from the configured counts, rendered with the system's PSF."""

from __future__ import annotations

import dask
import numpy as np
import pytest

from lensdask.simulate.render import get_renderer
from lensdask.simulate.run import row_scene, simulate_rows
from lensdask.simulate.scene import KIND_FIELD, KIND_SATELLITE, KIND_STAR, Scene, draw_scene, saturate

BANDS = ["g", "r", "i", "z"]
STAMP, PIX = 45, 0.263


@pytest.fixture(scope="module")
def cfg():
    return dict(dask.config.get("lensdask.simulate.scene"))


def _one(kind, x, y, mag_i, R=np.nan, n=np.nan, q=np.nan, phi=np.nan, **kw):
    mag = np.array([[mag_i + 1.0, mag_i + 0.5, mag_i, mag_i - 0.2]])
    return Scene(
        kind=np.array([kind], np.int8),
        x=np.array([x]),
        y=np.array([y]),
        mag=mag,
        R=np.array([R]),
        n=np.array([n]),
        q=np.array([q]),
        phi=np.array([phi]),
        bands=BANDS,
        half=STAMP * PIX / 2,
        **kw,
    )


def test_field_counts_follow_the_configured_density(cfg):
    rng = np.random.default_rng(0)
    n_bright, n_edge, n_draws = 0, 0, 3000
    for _ in range(n_draws):
        s = draw_scene(rng, BANDS, STAMP, PIX, cfg)
        field = s.kind == KIND_FIELD
        on = s.inside()
        n_bright += int((field & on & (s.mag[:, 2] < 23.5)).sum())
        n_edge += int((field & ~on).sum())
    # DES Y3 Gold: ~20 galaxies per arcmin^2 to i = 23.5; the stamp is (45 * 0.263 / 60)^2 arcmin^2
    expected = 20.0 * (STAMP * PIX / 60) ** 2
    assert n_bright / n_draws == pytest.approx(expected, rel=0.15)
    assert n_edge > 0  # some are centred off the stamp, in the margin, and reach onto it
    assert not (s.kind == KIND_SATELLITE).any()  # no central galaxy given: no satellites


def test_satellites_grow_with_the_central_luminosity(cfg):
    rng = np.random.default_rng(1)

    def mean_sats(mag):
        return np.mean(
            [
                (draw_scene(rng, BANDS, STAMP, PIX, cfg, central_mag_i=mag).kind == KIND_SATELLITE).sum()
                for _ in range(1500)
            ]
        )

    bright, faint = mean_sats(17.5), mean_sats(20.5)
    assert bright > 1.5 * faint
    assert bright == pytest.approx(cfg["satellites"]["mean_at_19"] * 10 ** (0.2 * 1.5), rel=0.15)


def test_galaxy_profiles_keep_their_flux_and_off_edge_galaxies_are_cut():
    s = _one(KIND_FIELD, 0.3, -0.2, 22.0, R=0.4, n=1.0, q=0.6, phi=0.3)
    assert s.profiles(STAMP, PIX).sum() == pytest.approx(1.0, abs=0.02)
    edge = _one(KIND_FIELD, STAMP * PIX / 2, 0.0, 22.0, R=0.4, n=1.0, q=1.0, phi=0.0)  # centred on the edge
    assert edge.profiles(STAMP, PIX).sum() == pytest.approx(0.5, abs=0.05)


def test_stars_take_the_system_psf_and_bright_ones_saturate_and_bleed():
    r = get_renderer()
    params = {
        "lens_x": 0.0,
        "lens_y": 0.0,
        "lens_R_sersic": 1.0,
        "lens_n_sersic": 4.0,
        "lens_e1": 0.0,
        "lens_e2": 0.0,
        **{f"mag_lens_{b}": 40.0 for b in BANDS},
        **{f"seeing_{b}": 1.0 for b in BANDS},
        **{f"sky_{b}": 21.0 for b in BANDS},
    }
    star = _one(KIND_STAR, 0.0, 0.0, 20.0, saturation=np.inf)
    light = r.candidate(params, scene=star).scene_light("i")
    # a Gaussian PSF of FWHM 1": the star's second moment is sigma^2 (plus the pixel's 1/12)
    c = (np.arange(STAMP) - (STAMP - 1) / 2) * PIX
    x2 = float((light.sum(axis=0) * c**2).sum() / light.sum())
    sigma = 1.0 / 2.3548
    assert x2 == pytest.approx(sigma**2 + PIX**2 / 12, rel=0.1)
    assert light.sum() == pytest.approx(r.magnitude2cps("i", 20.0), rel=0.02)

    level = 1440.0
    bright = _one(KIND_STAR, 0.0, 0.0, 14.0, saturation=level, wing_fraction=0.03, wing_fwhm=4.0)
    sat = r.candidate(params, scene=bright).scene_light("i")
    assert sat.max() == pytest.approx(level)
    column = sat[:, STAMP // 2]
    assert (column >= level - 1e-6).sum() > (sat[STAMP // 2] >= level - 1e-6).sum()  # bleeds along the column
    assert bright.summary(r._zp)["scene_n_saturated"] == 1
    # the halo of a bright star off the stamp still reaches it
    off = _one(KIND_STAR, 12.0, 0.0, 14.0, wing_fraction=0.03, wing_fwhm=4.0)
    halo = r.candidate(params, scene=off).scene_light("i")
    assert halo[:, -1].mean() > 5 * halo[:, 0].mean() > 0


def test_saturate_conserves_charge_in_the_column():
    img = np.zeros((9, 9))
    img[4, 4] = 10.0
    out = saturate(img, 3.0)
    assert out.max() == 3.0 and out[:, 4].sum() == pytest.approx(10.0)  # the excess moved up and down the column
    assert out[3, 4] == out[5, 4] == 3.0 and out[2, 4] + out[6, 4] == pytest.approx(1.0)
    assert out[:, 3].sum() == 0


def test_scenes_do_not_depend_on_the_label(cfg):
    r = get_renderer()
    a = row_scene(5, 17, None, r, cfg)
    b = row_scene(5, 17, None, r, cfg)
    np.testing.assert_array_equal(a.x, b.x)
    # lens and non-lens rows draw from the same distribution: neighbour counts alike
    _, lenses = simulate_rows(range(150), 8, lens_fraction=1.0, lookalike_fraction=0.0)
    _, plain = simulate_rows(range(150), 8, lens_fraction=0.0, lookalike_fraction=0.0)
    for col in ("scene_n_galaxies", "scene_n_stars"):
        assert abs(lenses[col].mean() - plain[col].mean()) < 0.25 * plain["scene_n_galaxies"].mean() + 0.1
    # the field (not the satellites, which follow the central galaxy) is the same row by row
    field = (lenses["scene_n_galaxies"] - lenses["scene_n_satellites"]).to_numpy()
    np.testing.assert_array_equal(field, (plain["scene_n_galaxies"] - plain["scene_n_satellites"]).to_numpy())


def test_scenes_can_be_switched_off():
    _, tab = simulate_rows(range(10), 3, scene={"enabled": False}, lookalike_fraction=0.0)
    assert tab["scene_n_galaxies"].isna().all()
