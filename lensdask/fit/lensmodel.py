"""Fit one candidate's stamp with lenstronomy: a lens model against a null model. The fit package's only
lenstronomy importer (as :mod:`lensdask.simulate.render` is the simulation's).

Both models see the same pixels (the stamp's fit region, neighbours masked: :mod:`lensdask.fit.mask`),
the same PSF (a Gaussian of each band's recorded FWHM) and the same noise (the band's sky noise plus
the Poisson noise of the model, ``model / exposure_time``), and share the same lens light. All bands are
fitted jointly (lenstronomy's ``multi-linear``: shapes shared, amplitudes solved per band).

The fitting sequence, from a cold start:

1. **lens light**: an elliptical Sersic, PSO then Nelder-Mead;
2. **lens model**: SIE (centred on the light) + external shear + an elliptical exponential source
   (Sersic n = 1), from ``lens.starts`` starts (Einstein radius from the brightest residual's distance,
   then spread over the prior range), each PSO (global) then Nelder-Mead (local); the best is kept;
3. **null model**: the same lens light plus ``null.blobs`` unlensed elliptical exponential blobs,
   started on the brightest residuals, PSO then Nelder-Mead; the variant of lowest BIC is kept.

Uncertainties of the lens model's nonlinear parameters come from the inverse of a finite-difference
Hessian of the chi-square at the best fit (a Laplace approximation; NaN where it is not positive
definite). The evidence is ``dBIC = chi2_lens - chi2_null + (k_lens - k_null) ln(n_pix)``, ``k``
counting nonlinear parameters and linear amplitudes: negative favours lensing.

lenstronomy's PSO draws from numpy's global generator: :func:`fit_candidate` seeds it with the
candidate's own seed, under a process-wide lock, so a result does not depend on which other
candidates a task fitted, or in which order.
"""

from __future__ import annotations

import copy
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

SOURCE_N = 1.0
"""Sersic index of the lensed source and of the null model's blobs (fixed: exponential discs)."""

_GLOBAL_RNG = threading.Lock()
"""lenstronomy's PSO uses numpy's global generator: one fit per process at a time keeps it seeded per candidate."""


@dataclass(frozen=True)
class FitSettings:
    """How a candidate is fitted (config ``fit.*``; see ``lensdask/lensdask.yaml``).

    Attributes
    ----------
    supersampling : int
        Sub-pixel sampling of the surface brightness.
    exposure_time : float, s
        Image units x exposure time = counts, for the Poisson term of the noise; 0 leaves it out.
    light_pso : (int, int)
        Particles and iterations of the lens-light PSO.
    lens_pso, null_pso : (int, int)
        Particles and iterations of the lens and null models' PSO.
    simplex : int
        Iterations of the local optimiser after each PSO (scipy's ``maxiter``).
    local_method : str
        The local optimiser: a method of :func:`scipy.optimize.minimize` (``Nelder-Mead``, ``Powell``).
    lens_starts : int
        Starts of the lens model.
    null_blobs : tuple of int
        Numbers of blobs the null model is tried with.
    theta_E_range : (float, float), arcsec
        Bounds of the Einstein radius.
    hessian : bool
        Estimate uncertainties (costs ~2 n^2 likelihood evaluations, n nonlinear parameters).
    """

    supersampling: int = 1
    exposure_time: float = 0.0
    light_pso: tuple[int, int] = (30, 40)
    lens_pso: tuple[int, int] = (40, 60)
    null_pso: tuple[int, int] = (40, 60)
    simplex: int = 300
    local_method: str = "Nelder-Mead"
    lens_starts: int = 2
    null_blobs: tuple[int, ...] = (1, 2)
    theta_E_range: tuple[float, float] = (0.3, 3.5)
    hessian: bool = True


@dataclass
class ModelFit:
    """One fitted model: best parameters (lenstronomy kwargs), chi-square, parameter counts, and its
    per-band model images."""

    kwargs: dict
    chi2: float
    n_nonlinear: int
    n_linear: int
    images: np.ndarray | None = None
    starts_chi2: list = field(default_factory=list)
    sequence: Any = None

    @property
    def k(self) -> int:
        return self.n_nonlinear + self.n_linear


def _data(images, noise, psf_fwhm, pixel_scale, settings: FitSettings, mask):
    """lenstronomy's ``multi_band_list`` and mask list for the stamps of one candidate."""
    from lenstronomy.Util.simulation_util import data_configure_simple

    nb, n, _ = images.shape
    bands = []
    for b in range(nb):
        kw = data_configure_simple(n, pixel_scale, exposure_time=1.0, background_rms=float(noise[b]))
        kw["image_data"] = np.asarray(images[b], dtype=float)
        if settings.exposure_time > 0:
            kw["exposure_time"] = float(settings.exposure_time)
        else:  # no Poisson term: lenstronomy adds model / exposure_time to the variance
            kw["exposure_time"] = 1e12
        psf = {"psf_type": "GAUSSIAN", "fwhm": float(psf_fwhm[b]), "truncation": 4}
        numerics = {"supersampling_factor": int(settings.supersampling), "supersampling_convolution": False}
        bands.append([kw, psf, numerics])
    return bands, [np.asarray(mask, dtype=int)] * nb


def _sersic(init, sigma, lower, upper, fixed=None):
    return [init, sigma, fixed or {}, lower, upper]


def _light_params(cx=0.0, cy=0.0, r=1.0, n=4.0, e1=0.0, e2=0.0, *, fix_n=False, box=1.0, r_max=5.0):
    init = {"R_sersic": r, "n_sersic": n, "e1": e1, "e2": e2, "center_x": cx, "center_y": cy}
    sigma = {"R_sersic": 0.3, "n_sersic": 1.0, "e1": 0.1, "e2": 0.1, "center_x": 0.1, "center_y": 0.1}
    lower = {"R_sersic": 0.05, "n_sersic": 0.5, "e1": -0.5, "e2": -0.5, "center_x": cx - box, "center_y": cy - box}
    upper = {"R_sersic": r_max, "n_sersic": 8.0, "e1": 0.5, "e2": 0.5, "center_x": cx + box, "center_y": cy + box}
    fixed = {"n_sersic": SOURCE_N} if fix_n else {}
    return init, sigma, fixed, lower, upper


LIGHT_SHAPE = ["R_sersic", "n_sersic", "e1", "e2"]
"""The lens light's shape parameters, held at their stage-1 values during the global search of stages 2 and 3."""


def _run(
    bands,
    masks,
    kwargs_model,
    kwargs_params,
    constraints,
    settings: FitSettings,
    pso,
    *,
    hold_light=False,
    bands_compute=None,
) -> ModelFit:
    """PSO then Nelder-Mead from ``kwargs_params``; the best fit with its chi-square and parameter counts.

    ``hold_light``: the first lens-light component's shape stays fixed during the PSO and is freed for the
    Nelder-Mead. ``bands_compute``: the bands the likelihood uses (default all).
    """
    import contextlib
    import io
    import warnings

    from lenstronomy.Workflow.fitting_sequence import FittingSequence

    data = {"multi_band_list": bands, "multi_band_type": "multi-linear"}
    likelihood = {"image_likelihood_mask_list": masks, "check_bounds": True, "check_positive_flux": True}
    if bands_compute is not None:
        likelihood["bands_compute"] = list(bands_compute)
    steps: list = []
    if pso[0] > 0 and pso[1] > 0:
        if hold_light:
            steps.append(["update_settings", {"lens_light_add_fixed": [[0, LIGHT_SHAPE]]}])
        steps.append(["PSO", {"sigma_scale": 1.0, "n_particles": int(pso[0]), "n_iterations": int(pso[1])}])
        if hold_light:
            steps.append(["update_settings", {"lens_light_remove_fixed": [[0, LIGHT_SHAPE]]}])
    if settings.simplex > 0:
        steps.append(["SIMPLEX", {"n_iterations": int(settings.simplex), "method": settings.local_method}])
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        # lenstronomy prints its progress whatever verbose says; the local optimiser's iteration cap is ours
        warnings.filterwarnings("ignore", "Maximum number of iterations", RuntimeWarning)
        seq = FittingSequence(data, kwargs_model, constraints, likelihood, kwargs_params, verbose=False)
        seq.fit_sequence(steps)
        kwargs = seq.best_fit()
        logl = seq.best_fit_likelihood()
    n_nonlinear = seq.param_class.num_param()[0]
    n_linear = seq.param_class.num_param_linear() * (len(bands) if bands_compute is None else sum(bands_compute))
    return ModelFit(kwargs, -2.0 * float(logl), int(n_nonlinear), int(n_linear), sequence=seq)


def residual_radius(residual, noise, mask, pixel_scale, centre, *, snr: float = 2.0, r_min: float = 0.5) -> float:
    """Flux-weighted median distance (arcsec) from ``centre`` of the residual light above ``snr`` (bands summed
    in S/N, smoothed by 1 px) beyond ``r_min``: where arcs are, a first guess of the Einstein radius; NaN if none."""
    from scipy import ndimage

    nb, n, _ = residual.shape
    s = ndimage.gaussian_filter((residual / noise[:, None, None]).sum(axis=0) / np.sqrt(nb), 1.0)
    c = (n - 1) / 2
    yy, xx = np.mgrid[:n, :n]
    x = (c - xx) * pixel_scale  # lenstronomy's ra runs against the pixel x axis
    y = (yy - c) * pixel_scale
    r = np.hypot(x - centre[0], y - centre[1])
    sel = (s > snr / (2 * np.sqrt(np.pi))) & (mask > 0) & (r > r_min)
    if sel.sum() < 3:
        return float("nan")
    w = s[sel]
    order = np.argsort(r[sel])
    cum = np.cumsum(w[order])
    return float(r[sel][order][np.searchsorted(cum, cum[-1] / 2)])


def _model_images(bands, masks, kwargs_model, kwargs) -> tuple[np.ndarray, list[dict]]:
    """Per-band model images and per-band kwargs (with their solved amplitudes)."""
    from lenstronomy.Analysis.image_reconstruction import MultiBandImageReconstruction

    rec = MultiBandImageReconstruction(
        bands,
        kwargs_model,
        copy.deepcopy(kwargs),
        multi_band_type="multi-linear",
        kwargs_likelihood={"image_likelihood_mask_list": masks},
        verbose=False,
    )
    images = np.stack([m.model for m in rec.model_band_list])
    return images, [m.kwargs_model for m in rec.model_band_list]


def residual_peaks(residual: np.ndarray, noise: np.ndarray, mask: np.ndarray, pixel_scale: float, k: int = 2):
    """Up to ``k`` (x, y) positions (arcsec from the stamp centre) of the brightest residual light
    (bands summed in S/N, smoothed by 1 px), at least 3 px apart."""
    from scipy import ndimage

    snr = (residual / noise[:, None, None]).sum(axis=0)
    snr = ndimage.gaussian_filter(snr, 1.0) * mask
    n = snr.shape[0]
    c = (n - 1) / 2
    out: list[tuple[float, float]] = []
    flat = np.argsort(snr, axis=None)[::-1]
    for idx in flat[:400]:
        y, x = np.unravel_index(idx, snr.shape)
        if snr[y, x] <= 0:
            break
        if all((x - px) ** 2 + (y - py) ** 2 >= 9 for px, py in out):
            out.append((x, y))
        if len(out) == k:
            break
    return [((c - x) * pixel_scale, (y - c) * pixel_scale) for x, y in out]  # lenstronomy's ra runs against x


def fit_candidate(
    images: np.ndarray,
    noise: np.ndarray,
    psf_fwhm: np.ndarray,
    pixel_scale: float,
    mask: np.ndarray,
    *,
    seed: int,
    settings: FitSettings | None = None,
    zero_points: np.ndarray | None = None,
) -> dict:
    """Fit the lens model and the null model to one candidate's stamps; returns the measurements.

    Parameters
    ----------
    images : numpy.ndarray
        (n_bands, n, n) sky-subtracted pixels, all finite.
    noise : numpy.ndarray
        (n_bands,) sky noise sigma of each band, image units.
    psf_fwhm : numpy.ndarray
        (n_bands,) PSF FWHM of each band, arcsec.
    pixel_scale : float, arcsec/px
    mask : numpy.ndarray
        (n, n) 1 where both models are fitted, 0 elsewhere (:func:`lensdask.fit.mask.fit_mask`).
    seed : int
        Seeds numpy's global generator (lenstronomy's PSO) for this fit.
    settings : FitSettings, optional
    zero_points : numpy.ndarray, optional
        (n_bands,) AB magnitude of a source of one image unit of total flux; magnitudes are NaN without them.

    Returns
    -------
    dict
        The measurements behind the fit columns of :mod:`lensdask.fit.candidate` (the per-band ones as
        arrays ``mag_lens``, ``mag_source``), the flags' inputs ``at_bound``, ``hessian_ok``,
        ``restart_dchi2``, plus ``model_lens``, ``model_null`` (n_bands, n, n) model images and
        ``source_image`` (n_bands, n, n): the reconstructed source, unlensed, on the image grid.
    """
    settings = settings or FitSettings()
    with _GLOBAL_RNG:
        state = np.random.get_state()
        np.random.seed(int(seed) % 2**32)
        try:
            return _fit(images, noise, psf_fwhm, pixel_scale, mask, settings, zero_points)
        finally:
            np.random.set_state(state)


def _fit(images, noise, psf_fwhm, pixel_scale, mask, settings: FitSettings, zero_points) -> dict:
    from lenstronomy.Util.param_util import ellipticity2phi_q, shear_cartesian2polar

    t0 = time.perf_counter()
    images = np.asarray(images, dtype=float)
    noise = np.asarray(noise, dtype=float)
    nb, n, _ = images.shape
    bands, masks = _data(images, noise, psf_fwhm, pixel_scale, settings, mask)
    half = n * pixel_scale / 2

    # 1. the lens light alone, on the redder half of the bands (where arcs, mostly blue, are faintest)
    light_model = {"lens_light_model_list": ["SERSIC_ELLIPSE"]}
    red = [b >= nb // 2 for b in range(nb)] if nb > 1 else None
    light = _run(
        bands,
        masks,
        light_model,
        {"lens_light_model": _param_lists([_light_params()])},
        {},
        settings,
        settings.light_pso,
        bands_compute=red,
    )
    light_images, _ = _model_images(bands, masks, light_model, light.kwargs)
    ll = light.kwargs["kwargs_lens_light"][0]
    cx, cy = float(ll["center_x"]), float(ll["center_y"])
    residual = images - light_images
    peaks = residual_peaks(residual, noise, mask, pixel_scale, k=2)
    r_arc = residual_radius(residual, noise, mask, pixel_scale, (cx, cy))
    light_init = _light_params(cx, cy, float(ll["R_sersic"]), float(ll["n_sersic"]), float(ll["e1"]), float(ll["e2"]))

    # 2. the lens model, from several starts: the residual light's radius, then spread over the range
    lo, hi = settings.theta_E_range
    first = r_arc if np.isfinite(r_arc) else 0.5 * (lo + hi)
    starts = [float(np.clip(first, lo * 1.1, hi * 0.9))]
    others: list[float] = list(np.linspace(lo, hi, settings.lens_starts + 1)[1:]) if settings.lens_starts > 1 else []
    starts += [float(t) for t in others][: settings.lens_starts - 1]
    lens_model = {
        "lens_model_list": ["SIE", "SHEAR"],
        "source_light_model_list": ["SERSIC_ELLIPSE"],
        "lens_light_model_list": ["SERSIC_ELLIPSE"],
    }
    constraints = {"joint_lens_with_light": [[0, 0, ["center_x", "center_y"]]]}
    best: ModelFit | None = None
    chi2s = []
    for theta_E in starts:
        lens = [
            [
                {"theta_E": theta_E, "e1": 0.0, "e2": 0.0, "center_x": cx, "center_y": cy},
                {"theta_E": 0.2 * theta_E, "e1": 0.15, "e2": 0.15, "center_x": 0.1, "center_y": 0.1},
                {},
                {"theta_E": lo, "e1": -0.5, "e2": -0.5, "center_x": cx - 1, "center_y": cy - 1},
                {"theta_E": hi, "e1": 0.5, "e2": 0.5, "center_x": cx + 1, "center_y": cy + 1},
            ],
            [
                {"gamma1": 0.0, "gamma2": 0.0},
                {"gamma1": 0.05, "gamma2": 0.05},
                {"ra_0": 0, "dec_0": 0},
                {"gamma1": -0.3, "gamma2": -0.3},
                {"gamma1": 0.3, "gamma2": 0.3},
            ],
        ]
        source = _light_params(cx, cy, 0.3, SOURCE_N, fix_n=True, box=1.5, r_max=1.5)
        source[1].update({"center_x": 0.3, "center_y": 0.3, "R_sersic": 0.2})
        params = {
            "lens_model": _param_lists(lens),
            "source_model": _param_lists([source]),
            "lens_light_model": _param_lists([light_init]),
        }
        fit = _run(bands, masks, lens_model, params, constraints, settings, settings.lens_pso, hold_light=True)
        chi2s.append(fit.chi2)
        if best is None or fit.chi2 < best.chi2:
            best = fit
    assert best is not None
    best.starts_chi2 = sorted(chi2s)
    best.images, per_band = _model_images(bands, masks, lens_model, best.kwargs)

    # 3. the null model: the same lens light and unlensed blobs
    null: ModelFit | None = None
    n_pix = int(mask.sum()) * nb
    for k in settings.null_blobs:
        blobs = []
        for j in range(k):
            bx, by = peaks[j] if j < len(peaks) else (cx + 0.8 * (j + 1), cy)
            blobs.append(_light_params(bx, by, 0.3, SOURCE_N, fix_n=True, box=min(1.5, half), r_max=2.0))
        model = {"lens_light_model_list": ["SERSIC_ELLIPSE"] * (k + 1)}
        fit = _run(
            bands,
            masks,
            model,
            {"lens_light_model": _param_lists([light_init, *blobs])},
            {},
            settings,
            settings.null_pso,
            hold_light=True,
        )
        fit.kwargs["n_blobs"] = k
        if null is None or _bic(fit, n_pix) < _bic(null, n_pix):
            null = fit
    assert null is not None
    null_model = {"lens_light_model_list": ["SERSIC_ELLIPSE"] * (null.kwargs["n_blobs"] + 1)}
    null.images, _ = _model_images(bands, masks, null_model, {k: v for k, v in null.kwargs.items() if k != "n_blobs"})

    # measurements
    sie, shear = best.kwargs["kwargs_lens"]
    src = best.kwargs["kwargs_source"][0]
    phi, q = ellipticity2phi_q(sie["e1"], sie["e2"])
    phi_shear, gamma = shear_cartesian2polar(shear["gamma1"], shear["gamma2"])
    errors = _errors(best) if settings.hessian else {}
    mags_lens, mags_src, mu = _photometry(bands, masks, lens_model, per_band, zero_points, pixel_scale)
    n_images = _image_count(best.kwargs["kwargs_lens"], src["center_x"], src["center_y"])
    dof = max(n_pix - best.k, 1)
    dof_null = max(n_pix - null.k, 1)
    out = {
        "theta_E": float(sie["theta_E"]),
        "theta_E_err": errors.get("theta_E", np.nan),
        "q": float(q),
        "phi": float(np.degrees(phi)),
        "e1": float(sie["e1"]),
        "e2": float(sie["e2"]),
        "e1_err": errors.get("e1", np.nan),
        "e2_err": errors.get("e2", np.nan),
        "gamma_ext": float(gamma),
        "phi_ext": float(np.degrees(phi_shear)),
        "gamma1_err": errors.get("gamma1", np.nan),
        "gamma2_err": errors.get("gamma2", np.nan),
        "lens_x": float(sie["center_x"]),
        "lens_y": float(sie["center_y"]),
        "source_x": float(src["center_x"]),
        "source_y": float(src["center_y"]),
        "source_r": float(src["R_sersic"]),
        "mag_lens": mags_lens,
        "mag_source": mags_src,
        "magnification": mu,
        "n_images": int(n_images),
        "chi2_lens": best.chi2,
        "chi2_null": null.chi2,
        "chi2nu_lens": best.chi2 / dof,
        "chi2nu_null": null.chi2 / dof_null,
        "k_lens": best.k,
        "k_null": null.k,
        "n_pix": n_pix,
        "null_blobs": int(null.kwargs["n_blobs"]),
        "dbic": float(_bic(best, n_pix) - _bic(null, n_pix)),
        "restart_dchi2": float(best.starts_chi2[1] - best.starts_chi2[0]) if len(best.starts_chi2) > 1 else np.nan,
        "at_bound": _at_bound(sie, shear, src, settings),
        "hessian_ok": bool(errors.get("ok", False)),
        "seconds": time.perf_counter() - t0,
        "model_lens": best.images.astype(np.float32),
        "model_null": null.images.astype(np.float32),
        "source_image": _source_image(bands, masks, lens_model, per_band).astype(np.float32),
    }
    return out


def _param_lists(components):
    """lenstronomy's ``[init, sigma, fixed, lower, upper]`` from a list of per-component 5-tuples."""
    return [[c[i] for c in components] for i in range(5)]


def _bic(fit: ModelFit, n_pix: int) -> float:
    return fit.chi2 + fit.k * np.log(max(n_pix, 2))


def _at_bound(sie, shear, src, settings: FitSettings, tol: float = 0.02) -> str:
    """Names of the lens model's main parameters within ``tol`` of their range from a bound ("" none)."""
    lo, hi = settings.theta_E_range
    checks = {
        "theta_E": (sie["theta_E"], lo, hi),
        "e1": (sie["e1"], -0.5, 0.5),
        "e2": (sie["e2"], -0.5, 0.5),
        "gamma1": (shear["gamma1"], -0.3, 0.3),
        "gamma2": (shear["gamma2"], -0.3, 0.3),
        "source_r": (src["R_sersic"], 0.05, 1.5),
    }
    return ",".join(k for k, (v, a, b) in checks.items() if min(v - a, b - v) <= tol * (b - a))


def _errors(fit: ModelFit) -> dict:
    """1-sigma errors of theta_E, e1, e2, gamma1, gamma2: the inverse of the finite-difference Hessian of
    -ln L = chi2 / 2 over every nonlinear parameter at the best fit (so the errors are marginal over the
    others). ``ok`` False, and no errors, where the Hessian is not positive definite."""
    seq = fit.sequence
    param = seq.param_class
    like = seq.likelihood_class
    x0 = np.asarray(param.kwargs2args(**fit.kwargs), dtype=float)
    _, names = param.num_param()
    lower, upper = (np.asarray(v, dtype=float) for v in like.param_limits)
    h = np.maximum(1e-3 * (upper - lower), 1e-4)

    def f(x):
        return -float(like.logL(x))

    m = len(x0)
    eye = np.eye(m) * h[:, None]
    f0 = f(x0)
    fp = np.array([f(x0 + eye[i]) for i in range(m)])
    fm = np.array([f(x0 - eye[i]) for i in range(m)])
    hess = np.diag((fp - 2 * f0 + fm) / h**2)
    for i in range(m):
        for j in range(i + 1, m):
            hess[i, j] = hess[j, i] = (f(x0 + eye[i] + eye[j]) - fp[i] - fp[j] + f0) / (h[i] * h[j])
    out: dict = {"ok": False}
    try:
        np.linalg.cholesky(hess)
        cov = np.linalg.inv(hess)
    except np.linalg.LinAlgError:
        return out
    sd = np.sqrt(np.clip(np.diag(cov), 0, None))
    wanted = {
        "theta_E_lens0": "theta_E",
        "e1_lens0": "e1",
        "e2_lens0": "e2",
        "gamma1_lens1": "gamma1",
        "gamma2_lens1": "gamma2",
    }
    for i, name in enumerate(names):
        if name in wanted:
            out[wanted[name]] = float(sd[i])
    out["ok"] = True
    return out


def _photometry(bands, masks, kwargs_model, per_band, zero_points, pixel_scale):
    """Lens and (unlensed) source magnitudes per band, and the source's total magnification."""
    from lenstronomy.LightModel.light_model import LightModel

    light = LightModel(["SERSIC_ELLIPSE"])
    nb = len(bands)
    mag_lens = np.full(nb, np.nan)
    mag_src = np.full(nb, np.nan)
    mus = []
    for b, kw in enumerate(per_band):
        f_lens = float(np.sum(light.total_flux(kw["kwargs_lens_light"])))
        f_src = float(np.sum(light.total_flux(kw["kwargs_source"])))
        if zero_points is not None:
            if f_lens > 0:
                mag_lens[b] = zero_points[b] - 2.5 * np.log10(f_lens)
            if f_src > 0:
                mag_src[b] = zero_points[b] - 2.5 * np.log10(f_src)
        if f_src > 0:
            mus.append(_lensed_flux(kw, pixel_scale) / f_src)
    return mag_lens, mag_src, float(np.median(mus)) if mus else np.nan


def _lensed_flux(kw, pixel_scale, n: int = 121, scale: float = 0.1) -> float:
    """Total flux of the lensed source (no PSF) on a fine grid about the lens."""
    from lenstronomy.LensModel.lens_model import LensModel
    from lenstronomy.LightModel.light_model import LightModel

    c = (np.arange(n) - (n - 1) / 2) * scale
    x, y = np.meshgrid(c, c)
    lens = LensModel(["SIE", "SHEAR"])
    bx, by = lens.ray_shooting(x.ravel(), y.ravel(), kw["kwargs_lens"])
    sb = LightModel(["SERSIC_ELLIPSE"]).surface_brightness(bx, by, kw["kwargs_source"])
    return float(np.sum(sb) * scale**2)


def _source_image(bands, masks, kwargs_model, per_band) -> np.ndarray:
    """The reconstructed source, unlensed and without PSF, on the image grid (per band, image units)."""
    from lenstronomy.Data.pixel_grid import PixelGrid
    from lenstronomy.LightModel.light_model import LightModel

    kw_data = bands[0][0]
    n = kw_data["image_data"].shape[0]
    grid = PixelGrid(n, n, kw_data["transform_pix2angle"], kw_data["ra_at_xy_0"], kw_data["dec_at_xy_0"])
    x, y = grid.pixel_coordinates
    light = LightModel(["SERSIC_ELLIPSE"])
    area = abs(np.linalg.det(kw_data["transform_pix2angle"]))
    return np.stack([light.surface_brightness(x, y, kw["kwargs_source"]).reshape(n, n) * area for kw in per_band])


def _image_count(kwargs_lens, x_source, y_source) -> int:
    """Images of a point at the source's centre."""
    from lenstronomy.LensModel.lens_model import LensModel
    from lenstronomy.LensModel.Solver.lens_equation_solver import LensEquationSolver

    solver = LensEquationSolver(LensModel(["SIE", "SHEAR"]))
    x, _ = solver.image_position_from_source(
        x_source, y_source, kwargs_lens, search_window=8.0, min_distance=0.05, precision_limit=1e-8
    )
    return len(x)
