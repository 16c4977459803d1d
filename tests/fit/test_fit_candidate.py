"""One candidate: the fit mask, the noise, the lens model against the null model, statuses, seeds, the rank."""

from __future__ import annotations

import dataclasses

import dask
import numpy as np
import pandas as pd
import pytest

from lensdask.fit import candidate as cand
from lensdask.fit.engine import Model, Stamp
from lensdask.fit.lensmodel import FitSettings, fit_candidate, residual_peaks
from lensdask.fit.mask import border_noise, fit_mask
from lensdask.fit.run import settings_from_config
from lensdask.simulate.run import simulate_rows

BANDS = ["g", "r", "i", "z"]
QUICK = FitSettings(
    exposure_time=1800.0,
    theta_E_grid=6,
    lens_starts=1,
    lens_blobs=(0,),
    null_blobs=(1,),
    null_starts=1,
    max_iterations=15,
    confirm=True,
)
CONF = {
    "fit_radius": 5.0,
    "mask_radius": 3.5,
    "mask_snr": 3.0,
    "max_abs_dbic": 5000.0,
    "restart_tolerance": 0.03,
    "max_chi2nu": 1.5,
    "zero_points": {"g": 26.58, "r": 26.78, "i": 26.75, "z": 26.48},
}


def _blob(n, x, y, flux, width):
    yy, xx = np.mgrid[:n, :n]
    return flux * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * width**2))


def test_border_noise_measures_each_band():
    rng = np.random.default_rng(0)
    img = rng.normal(0, [[[0.1]], [[0.5]]], (2, 45, 45)) + _blob(45, 22, 22, 50.0, 3.0)
    np.testing.assert_allclose(border_noise(img), [0.1, 0.5], rtol=0.12)


def test_mask_drops_far_neighbours_keeps_near_light_and_the_disc():
    rng = np.random.default_rng(1)
    n = 45
    galaxy = _blob(n, 22, 22, 5.0, 2.5)
    near = _blob(n, 22 + 8, 22, 1.0, 1.2)  # 8 px = 2.1": a counter-image or satellite, inside mask_radius
    far = _blob(n, 22 - 15, 22 + 4, 3.0, 1.5)  # 4.1": a neighbour
    img = np.stack([galaxy + near + far + rng.normal(0, 0.05, (n, n)) for _ in range(3)])
    mask, masked = fit_mask(img, np.full(3, 0.05), 0.263, fit_radius=5.0, mask_radius=3.5)
    assert masked == 1
    assert mask[22, 22] == 1 and mask[22, 30] == 1  # centre and near light fitted
    assert mask[26, 7] == 0  # the neighbour's centre is masked
    assert mask[0, 0] == 0 and mask[22, 44] == 0  # outside the 5" disc
    # without the neighbour nothing is masked
    _, none = fit_mask(img - far, np.full(3, 0.05), 0.263)
    assert none == 0


def test_settings_follow_the_config():
    with dask.config.set({"lensdask.fit.max_iterations": 7, "lensdask.fit.lens_blobs": [0, 2]}):
        s, conf = settings_from_config()
    assert s.max_iterations == 7 and s.lens_blobs == (0, 2)
    assert conf["zero_points"]["g"] == pytest.approx(26.58)


def test_unusable_candidates_are_skipped_with_a_status_not_fitted():
    img = np.zeros((4, 45, 45))
    img[1, 3, 3] = np.nan
    row, models, tb = cand.fit_row(img, np.ones(4), None, BANDS, 0.263, seed=1, settings=QUICK, conf=CONF)
    assert row["fit_status"] == "skipped: non-finite pixels in r" and models is None and tb is None
    assert np.isnan(row["fit_theta_E"]) and not row["fit_converged"]
    ok = np.random.default_rng(0).normal(0, 0.1, (4, 45, 45))
    row, _, _ = cand.fit_row(
        ok, np.array([1.0, np.nan, 1.0, 1.0]), None, BANDS, 0.263, seed=1, settings=QUICK, conf=CONF
    )
    assert row["fit_status"] == "skipped: no PSF in r"


def test_a_fit_that_raises_is_a_status_and_a_traceback(monkeypatch):
    def boom(*a, **k):
        raise FloatingPointError("lenstronomy gave up")

    monkeypatch.setattr(cand, "fit_candidate", boom)
    img = np.random.default_rng(0).normal(0, 0.1, (4, 45, 45))
    row, models, tb = cand.fit_row(img, np.ones(4), None, BANDS, 0.263, seed=1, settings=QUICK, conf=CONF)
    assert row["fit_status"].startswith("error: FloatingPointError: lenstronomy gave up")
    assert "FloatingPointError" in tb and models is None


def test_candidate_seed_depends_on_run_seed_and_object_only():
    assert cand.candidate_seed(3, 1_000_000_007) == cand.candidate_seed(3, 1_000_000_007)
    assert cand.candidate_seed(3, 7) != cand.candidate_seed(4, 7) != cand.candidate_seed(3, 8)


def test_combined_score_counts_acceptable_evidence_and_penalises_unacceptable_lens_models():
    t = pd.DataFrame(
        {
            "score": [0.9, 0.9, 0.9, 0.9, 0.9, 0.5],
            "fit_status": ["ok", "ok", "ok", "ok", "error: x", np.nan],
            "fit_dbic": [-400.0, 400.0, -1e6, -400.0, np.nan, np.nan],
            "fit_flags": ["", "", "misfit,implausible", "bound:theta_E", "", np.nan],
        }
    )
    s = cand.combined_score(t, weight=0.1, cap=1000.0)
    logit = np.log(9.0)
    # acceptable: -dBIC/2 counts; fitted but flagged: -cap (the physics does not support a lens); no fit: 0
    np.testing.assert_allclose(s[:5], [logit + 20.0, logit - 20.0, logit - 100.0, logit - 100.0, logit])
    capped = cand.combined_score(t, weight=0.1, cap=100.0)  # -dBIC/2 = 200 counts as 100
    np.testing.assert_allclose(capped[:2], [logit + 10.0, logit - 10.0])
    assert s[5] == pytest.approx(0.0)
    assert list(cand.favours_lens(t)) == [True, False, False, False, True, True]


def test_flags_say_why_a_lens_model_is_not_acceptable():
    res = {
        "at_bound": "theta_E",
        "dbic": -9000.0,
        "chi2nu_lens": 2.5,
        "chi2nu_null": 2.4,
        "hessian_ok": True,
        "restart_dtheta": 0.1,
    }
    flags = cand.flags_of(res, max_abs_dbic=5000.0, restart_tolerance=0.03, max_chi2nu=1.5)
    assert flags == ["bound:theta_E", "misfit", "implausible", "restarts"]
    # both models above max_chi2nu, the lens model the better: structure neither describes, the evidence counts
    galaxy = {**res, "at_bound": "", "dbic": -300.0, "chi2nu_lens": 1.8, "chi2nu_null": 2.0, "restart_dtheta": 0.0}
    assert cand.flags_of(galaxy, max_abs_dbic=5000.0, restart_tolerance=0.03, max_chi2nu=1.5) == []
    # ... but not when its evidence is implausibly large
    assert cand.flags_of({**galaxy, "dbic": -9000.0}, max_abs_dbic=5000.0, restart_tolerance=0.03, max_chi2nu=1.5) == [
        "implausible"
    ]
    good = {**res, "at_bound": "", "chi2nu_lens": 1.1, "restart_dtheta": 0.001, "optimiser_ok": True}
    assert cand.flags_of(good, max_abs_dbic=5000.0, restart_tolerance=0.03, max_chi2nu=1.5) == []
    assert cand.flags_of(
        {**good, "optimiser_ok": False, "hessian_ok": False}, max_abs_dbic=5000.0, restart_tolerance=0.03
    ) == ["hessian", "optimiser"]
    # a source as large as the Einstein radius makes a halo about the lens, not arcs
    halo = {**good, "theta_E": 1.0, "source_r": 0.9}
    assert cand.flags_of(halo, max_abs_dbic=5000.0, restart_tolerance=0.03, max_source_size=0.75) == ["source_size"]
    assert (
        cand.flags_of({**halo, "source_r": 0.3}, max_abs_dbic=5000.0, restart_tolerance=0.03, max_source_size=0.75)
        == []
    )


def test_the_envelope_describes_a_galaxy_that_one_sersic_cannot():
    """A compact bulge in an extended disc: with two concentric Sersics the lens light fits to the noise; with
    one, it leaves a ring of residual light (which a lensed source would otherwise claim)."""
    from lensdask.fit.engine import optimise
    from lensdask.fit.lensmodel import _light_parameters, light_moments

    n, noise = 45, np.array([0.02, 0.02])
    stamp0 = Stamp(np.zeros((2, n, n)), noise, np.array([0.9, 0.9]), 0.263, np.ones((n, n)))
    two = Model(stamp0, lensed=False, light_profiles=2)
    assert two.n_components == 2 and two.envelope_component == 1 and two.envelope_amplitude == 1
    comps = [
        {"R_sersic": 0.3, "n_sersic": 4.0, "e1": 0.0, "e2": 0.0, "center_x": 0.1, "center_y": -0.1},
        {"R_sersic": 2.5, "n_sersic": 1.0, "e1": 0.25, "e2": 0.0},
    ]
    templates = two.templates(comps)
    assert templates.shape == (2, 2, n, n)
    assert two.envelope(comps)["center_x"] == 0.1  # concentric with the main profile
    rng = np.random.default_rng(3)
    image = 40 * templates[0] + 60 * templates[1] + rng.normal(0, noise[0], (2, n, n))
    stamp = Stamp(image, noise, np.array([0.9, 0.9]), 0.263, np.ones((n, n)))
    chi2nu = {}
    for profiles in (1, 2):
        model = Model(stamp, lensed=False, light_profiles=profiles)
        start = _light_parameters([light_moments(stamp)], envelope=model.envelope_component)
        fit = optimise(model, start, max_iterations=100, ftol=1e-6)
        chi2nu[profiles] = fit.chi2 / (stamp.n_pix - len(fit.params) - model.n_components * 2)
    assert chi2nu[2] < 1.1 < 2 * chi2nu[2] < chi2nu[1]


def test_peaks_and_models_share_the_pixel_grid():
    """A blob found in the residuals at a pixel is where the engine renders light placed at the reported
    position (the earlier fit mirrored x: blobs started on the wrong side of the lens)."""
    n = 45
    img = np.stack([_blob(n, 31, 17, 5.0, 1.2), _blob(n, 31, 17, 5.0, 1.2)])
    stamp = Stamp(img, np.array([0.05, 0.05]), np.array([1.0, 1.0]), 0.263, np.ones((n, n)))
    (x, y), *_ = residual_peaks(stamp, img, k=2)
    assert (x, y) == pytest.approx((stamp.x[17, 31], stamp.y[17, 31]))
    blob = Model(stamp, lensed=False).blob({"R_sersic": 0.2, "e1": 0.0, "e2": 0.0, "center_x": x, "center_y": y})
    assert np.unravel_index(np.argmax(blob), blob.shape) == (17, 31)
    # the lens light's core, sampled finer, joins the coarse grid without a step
    light = Model(stamp, lensed=False).light(
        {"R_sersic": 0.5, "n_sersic": 4.0, "e1": 0.0, "e2": 0.0, "center_x": 0.0, "center_y": 0.0}
    )
    assert np.unravel_index(np.argmax(light), light.shape) == (22, 22)
    assert light[22, 26] == pytest.approx(light[22, 18]) and light[22, 26] < light[22, 25]


@pytest.fixture(scope="module")
def lenses():
    """Simulated lenses (rows 2 and 3: theta_E 1.06", 1.69", clear arcs), and a plain galaxy with two
    satellites and four field galaxies (no arc). benchmarks/bench_fit.py measures the rates over many."""
    images, table = simulate_rows(range(4), 11, lens_fraction=1.0)
    plain, ptable = simulate_rows(range(1), 5, lens_fraction=0.0)
    return images, table, plain, ptable


def _fit(images, table, i, seed, settings):
    img = images[i].astype(float)
    noise = border_noise(img)
    mask, _ = fit_mask(img, noise, 0.263)
    psf = table.loc[i, [f"seeing_{b}" for b in BANDS]].to_numpy(float)
    return fit_candidate(img, noise, psf, 0.263, mask, seed=seed, settings=settings, zero_points=np.full(4, 26.6))


@pytest.mark.slow
def test_lens_model_recovers_theta_E_and_beats_the_null_model_on_a_lens(lenses):
    images, table, plain, ptable = lenses
    settings = FitSettings(exposure_time=1800.0)
    res = _fit(images, table, 2, 2, settings)
    assert res["theta_E"] == pytest.approx(table.loc[2, "theta_E"], rel=0.1)
    assert res["dbic"] < -100  # lensing strongly favoured
    assert res["n_images"] >= 2 and res["magnification"] > 1.5
    assert res["model_lens"].shape == (4, 45, 45) and res["source_image"].shape == (4, 45, 45)
    # the plain galaxy: light blobs explain its satellites with fewer parameters than a lensed source
    null = _fit(plain, ptable, 0, 2, FitSettings(exposure_time=1800.0, confirm=False))
    assert null["dbic"] > 0 and null["null_blobs"] == 2


def test_the_same_seed_gives_the_same_fit(lenses):
    images, table, _, _ = lenses
    a = _fit(images, table, 3, 5, QUICK)
    np.random.seed(123)  # the global generator's state outside the fit does not matter
    b = _fit(images, table, 3, 5, QUICK)
    assert a["theta_E"] == b["theta_E"] and a["dbic"] == b["dbic"]
    assert np.random.randint(1 << 30) == np.random.RandomState(123).randint(1 << 30)  # and is left as it was


def _optimum(theta_E, chi2):
    from lensdask.fit.engine import Optimum, Parameter

    params = [Parameter(1, "theta_E", theta_E, 0.3, 3.5, 0.05)]
    return Optimum(params, np.array([theta_E]), chi2, np.zeros((1, 1)), None, 1, 1)


@pytest.mark.parametrize(
    ("rounds", "landings", "theta", "dtheta"),
    [
        (1, [(1.5, 90.0)], 1.5, 0.5),  # one round: a lower landing elsewhere is kept, and flagged
        (2, [(1.5, 90.0), (1.51, 95.0)], 1.5, 0.01 / 1.5),  # ... confirmed in turn
        (2, [(1.5, 90.0), (2.0, 80.0)], 2.0, 1 / 3),  # still moving after the last round: flagged
        (2, [(1.01, 99.0)], 1.01, 0.01),  # lower but the same radius: no second round
        (3, [(1.3, 120.0)], 1.0, 0.3),  # a worse basin: the best stands
    ],
)
def test_a_confirmation_that_lands_lower_elsewhere_is_confirmed_in_turn(monkeypatch, rounds, landings, theta, dtheta):
    from lensdask.fit import lensmodel

    calls = iter(landings)
    monkeypatch.setattr(lensmodel, "_confirm", lambda model, best, settings, rng: _optimum(*next(calls)))
    settings = FitSettings(confirm_rounds=rounds, restart_tolerance=0.03)
    best, dchi2, dth = lensmodel._confirmed(None, _optimum(1.0, 100.0), settings, np.random.default_rng(0))
    assert best.value("theta_E", 1) == pytest.approx(theta)
    assert dth == pytest.approx(dtheta, rel=1e-6)
    assert next(calls, None) is None  # every landing asked for was used, and no more
    assert np.isfinite(dchi2)


def test_the_scan_gives_its_best_minima_first_then_every_other_radius():
    from lensdask.fit import lensmodel

    chi = [5.0, 3.0, 4.0, 1.0, 6.0, 2.0, 7.0]  # minima at 1 (3.0), 3 (1.0), 5 (2.0)
    stamp = Stamp(np.zeros((1, 9, 9)), np.ones(1), np.ones(1), 0.263, np.ones((9, 9)))
    settings = FitSettings(theta_E_grid=len(chi), lens_starts=2)
    it = iter(chi)
    calls = []

    def chi2_at(model, params, x):
        calls.append(x)
        return next(it)

    import unittest.mock as mock
    from types import SimpleNamespace

    model = SimpleNamespace(envelope_component=None)
    with mock.patch.object(lensmodel, "chi2_at", chi2_at):
        starts = lensmodel._scan(stamp, model, [lensmodel.light_moments(stamp)], np.zeros((1, 9, 9)), settings, 1.0)
    grid = np.geomspace(0.3 * 1.05, 3.5 * 0.95, len(chi))
    order = [int(np.argmin(abs(grid - s[1]))) for s in starts]
    assert order == [3, 5, 1, 2, 0, 4, 6]  # the two best minima (as before), the third, then the rest by chi2
    assert [s[0] for s in starts] == [chi[i] for i in order]


def _ring_galaxy(seed: int = 4):
    """A galaxy with a narrow ring of its own (a ring galaxy, or structure two Sersics miss) at 1.2", S/N 5 at
    its brightest pixel: light, ring and noise on two bands (arbitrary units), and the templates."""
    n, noise = 45, np.array([0.02, 0.02])
    stamp0 = Stamp(np.zeros((2, n, n)), noise, np.array([0.9, 0.9]), 0.263, np.ones((n, n)))
    model = Model(stamp0, lensed=False, ring=True)
    light = {"R_sersic": 0.5, "n_sersic": 3.0, "e1": 0.1, "e2": 0.0, "center_x": 0.05, "center_y": 0.0}
    ring = {"R_ring": 1.2, "w_ring": 0.15, "e1": 0.1, "e2": 0.0}
    templates = model.templates([light, ring])
    rng = np.random.default_rng(seed)
    peak = 0.1 / templates[1, 0].max()  # the ring's brightest pixel at S/N 5 in the first band
    image = 40 * templates[0] + peak * np.array([1.0, 0.4])[:, None, None] * templates[1]
    image = image + rng.normal(0, 0.02, (2, n, n))
    return Stamp(image, noise, np.array([0.9, 0.9]), 0.263, np.ones((n, n))), templates


def test_the_null_models_ring_and_core_point_are_concentric_with_the_lens_light():
    stamp, templates = _ring_galaxy()
    ring = templates[1, 0]
    r = np.hypot(stamp.x - 0.05, stamp.y)
    assert ring[(r > 1.1) & (r < 1.3)].mean() > 3 * ring[r < 0.5].mean()  # a ring, not a disc (through the PSF)
    assert ring[(r > 1.1) & (r < 1.3)].mean() > 5 * ring[r > 2.0].mean()
    point = Model(stamp, lensed=False, core_point=True)
    assert point.n_components == 2 and point.core_point_amplitude == 1
    both = Model(stamp, lensed=False, core_point=True, ring=True, light_profiles=2)
    assert both.ring_component == 1 and both.envelope_component == 2  # ring, then the envelope
    assert both.core_point_amplitude == 2 and both.envelope_amplitude == 3
    light = {"R_sersic": 0.5, "n_sersic": 3.0, "e1": 0.0, "e2": 0.0, "center_x": 0.3, "center_y": -0.2}
    core = point.templates([light])[1]
    assert core.sum(axis=(1, 2)) == pytest.approx([1.0, 1.0], abs=0.01)  # unit flux through the PSF
    row, col = np.unravel_index(np.argmax(core[0]), core[0].shape)
    assert np.hypot(stamp.x[row, col] - 0.3, stamp.y[row, col] + 0.2) < stamp.pixel_scale
    with pytest.raises(ValueError, match="null-model component"):
        Model(stamp, lensed=True, ring=True)


def test_a_ring_galaxy_goes_to_the_null_model_once_it_may_have_a_ring():
    """Without a ring among the null models, the lens model (a source centred behind the galaxy: an Einstein
    ring) claims a ring galaxy; with one, the null model explains it with fewer parameters."""
    stamp, _ = _ring_galaxy()
    settings = FitSettings(theta_E_grid=6, lens_starts=1, lens_blobs=(0,), null_blobs=(1,), null_starts=1)
    args = (stamp.images, stamp.noise, np.array([0.9, 0.9]), 0.263, np.ones(stamp.images.shape[1:]))
    without = fit_candidate(*args, seed=1, settings=settings)
    with_ring = fit_candidate(*args, seed=1, settings=dataclasses.replace(settings, null_ring_blobs=(0,)))
    assert without["dbic"] < 0 < with_ring["dbic"]
    assert with_ring["chi2nu_null"] < without["chi2nu_null"] and with_ring["null_blobs"] == 0


def test_a_moved_parameter_recomputes_only_the_components_it_enters(monkeypatch):
    """The blurred components are remembered by their parameter values (a Jacobian column moves one): the
    same arrays as a fresh model's, and only the components a moved parameter enters are computed again."""
    n = 31
    rng = np.random.default_rng(3)
    stamp = Stamp(rng.normal(0, 0.1, (2, n, n)), np.array([0.1, 0.1]), np.array([0.9, 1.1]), 0.263, np.ones((n, n)))
    light = {"R_sersic": 0.6, "n_sersic": 3.0, "e1": 0.05, "e2": -0.02, "center_x": 0.02, "center_y": -0.03}
    comps = [
        light,
        {"theta_E": 1.1, "e1": 0.1, "e2": 0.0},
        {"gamma1": 0.02, "gamma2": -0.01},
        {"R_sersic": 0.2, "e1": 0.0, "e2": 0.1, "center_x": 0.1, "center_y": 0.05},
        {"R_sersic": 0.3, "e1": 0.0, "e2": 0.0, "center_x": -1.2, "center_y": 0.8},
        {"R_sersic": 1.5, "n_sersic": 1.0, "e1": 0.0, "e2": 0.0},
    ]
    kw = dict(lensed=True, blobs=1, core_point=True, light_profiles=2)
    model = Model(stamp, **kw)
    calls = {"light": 0, "source": 0, "blob": 0}
    for name, attr in (("light", "light"), ("source", "lensed_source"), ("blob", "blob")):
        real = getattr(Model, attr)

        def counted(self, *a, _real=real, _name=name):
            calls[_name] += 1
            return _real(self, *a)

        monkeypatch.setattr(Model, attr, counted)
    first = model.templates(comps)
    assert calls == {"light": 2, "source": 1, "blob": 1}  # the light and its envelope
    moved = [dict(c) for c in comps]
    moved[3]["R_sersic"] = 0.21
    again = model.templates(moved)
    assert calls == {"light": 2, "source": 2, "blob": 1}  # the source alone
    moved[0]["center_x"] = 0.03  # the light's centre: everything concentric with it, and the SIE
    model.templates(moved)
    assert calls == {"light": 4, "source": 3, "blob": 1}
    fresh = Model(stamp, **kw)
    np.testing.assert_array_equal(first, fresh.templates(comps))
    np.testing.assert_array_equal(again[1], fresh.templates([*comps[:3], moved[3], *comps[4:]])[1])
    assert not np.array_equal(first[1], again[1])
    design = model.design(comps)
    assert design.shape == (2, 5, n * n)
    np.testing.assert_array_equal(design[1, 2], first[2, 1].ravel() * stamp.weight[1].ravel())


def test_the_evidence_with_fitted_noise_does_not_depend_on_a_misrecorded_noise_level():
    """A border crowded by neighbours records too high a sigma; the fitted-noise evidence is the same for
    every recorded level, the recorded-noise one shrinks as its square, and both agree at the true level."""
    from lensdask.fit.lensmodel import _dbic_fitted_noise

    n, rng = 45, np.random.default_rng(3)
    galaxy = _blob(n, 22, 22, 40.0, 3.0)
    arc = _blob(n, 30, 22, 4.0, 1.5)
    images = np.stack([galaxy + arc + rng.normal(0, 1.0, (n, n)) for _ in BANDS])
    lens, null = np.stack([galaxy + arc] * 4), np.stack([galaxy] * 4)
    mask = np.ones((n, n))
    fitted, recorded = [], []
    for sigma in (1.0, 1.5):
        stamp = Stamp(images, np.full(4, sigma), np.full(4, 1.0), 0.263, mask)
        fitted.append(_dbic_fitted_noise(stamp, lens, null, 20, 12))
        chi2 = [(((images - m) * stamp.weight)[:, stamp.mask] ** 2).sum() for m in (lens, null)]
        recorded.append(chi2[0] - chi2[1] + 8 * np.log(stamp.n_pix))
    assert fitted[0] == pytest.approx(fitted[1], rel=1e-9)
    assert recorded[1] - 8 * np.log(4 * n * n) == pytest.approx((recorded[0] - 8 * np.log(4 * n * n)) / 1.5**2)
    assert fitted[0] < 0 and fitted[0] == pytest.approx(recorded[0], rel=0.05)


def test_a_bad_evidence_noise_setting_is_refused():
    from lensdask.errors import LensdaskError

    with (
        dask.config.set({"lensdask.fit.evidence_noise": "measured"}),
        pytest.raises(LensdaskError, match="recorded or fitted"),
    ):
        settings_from_config()


def _prior_optimum(values: dict, sigmas: dict):
    """An Optimum of a lens model at ``values`` ({(component, key): value}) with marginal posterior
    ``sigmas`` (same keys; NaN: unknown), and the Model it belongs to (shear sigma 0.05, mass-light 0.1)."""
    from lensdask.fit.engine import Optimum, Parameter

    n = 21
    stamp = Stamp(np.zeros((4, n, n)), np.ones(4), np.ones(4), 0.263, np.ones((n, n)))
    model = Model(stamp, lensed=True, shear_sigma=0.05, mass_light_sigma=0.1)
    keys = [(0, "e1"), (0, "e2"), (1, "theta_E"), (1, "e1"), (1, "e2"), (2, "gamma1"), (2, "gamma2")]
    params = [Parameter(c, k, 0.0, -1.0, 4.0, 0.1) for c, k in keys]
    x = np.array([values.get(ck, 1.0 if ck == (1, "theta_E") else 0.0) for ck in keys])
    cov = np.diag([sigmas.get(ck, 0.01) ** 2 for ck in keys])
    return Optimum(params, x, 0.0, np.zeros((4, 1)), cov, 1, 1), model


def test_the_laplace_penalty_charges_prior_bound_parameters_their_occam_factor():
    """Where the data add nothing to a prior (a faint arc's shear) the parameter costs nothing; where they fix it,
    the BIC's ln n; in between 2 ln(sigma_prior / sigma_post); plus the prior's chi-square at the best fit."""
    from lensdask.fit.lensmodel import prior_occam

    settings, n_pix = FitSettings(shear_sigma=0.05, mass_light_sigma=0.1), 8100
    ln_n = np.log(n_pix)
    prior_sigmas = {(2, "gamma1"): 0.05, (2, "gamma2"): 0.05, (1, "e1"): 0.1, (1, "e2"): 0.1}
    best, model = _prior_optimum({}, prior_sigmas)
    assert prior_occam(best, model, settings, n_pix) == pytest.approx(-4 * ln_n)  # the whole BIC charge refunded
    best, model = _prior_optimum({}, {k: 1e-9 for k in prior_sigmas})
    assert prior_occam(best, model, settings, n_pix) == pytest.approx(0.0)  # fixed by the data: BIC's charge
    best, model = _prior_optimum({}, {k: s / 2 for k, s in prior_sigmas.items()})
    assert prior_occam(best, model, settings, n_pix) == pytest.approx(4 * (2 * np.log(2) - ln_n))
    # the prior's chi-square: gamma1 two sigma from 0, the SIE e1 one sigma from the light's
    best, model = _prior_optimum({(2, "gamma1"): 0.1, (0, "e1"): 0.2, (1, "e1"): 0.3}, prior_sigmas)
    assert prior_occam(best, model, settings, n_pix) == pytest.approx(4.0 + 1.0 - 4 * ln_n)
    # unknown posterior sigmas keep the BIC's charge; no prior, no change
    best, model = _prior_optimum({}, {**prior_sigmas, (2, "gamma1"): np.nan, (2, "gamma2"): np.nan})
    assert prior_occam(best, model, settings, n_pix) == pytest.approx(-2 * ln_n)
    best, model = _prior_optimum({}, prior_sigmas)
    no_shear = dataclasses.replace(settings, shear_sigma=0.0)
    assert prior_occam(best, model, no_shear, n_pix) == pytest.approx(-2 * ln_n)


def test_a_bad_evidence_penalty_setting_is_refused_and_laplace_is_read():
    from lensdask.errors import LensdaskError

    with (
        dask.config.set({"lensdask.fit.evidence_penalty": "aic"}),
        pytest.raises(LensdaskError, match="bic or laplace"),
    ):
        settings_from_config()
    with dask.config.set({"lensdask.fit.evidence_penalty": "laplace"}):
        assert settings_from_config()[0].evidence_penalty == "laplace"
