"""Fit one candidate's stamps: a lens model against a null model. With :mod:`lensdask.fit.engine`, the fit
package's only lenstronomy importers (as :mod:`lensdask.simulate.render` is the simulation's).

Both models see the same pixels (the stamp's fit region, neighbours masked: :mod:`lensdask.fit.mask`),
the same PSF (a Gaussian of each band's recorded FWHM) and the same noise (the band's sky noise plus
the Poisson noise of the light, ``light / exposure_time``), and start from the same lens light. All bands
are fitted jointly: shapes shared, amplitudes solved per band (non-negative).

The fitting sequence, from a cold start (each optimisation bounded trust-region least squares,
:func:`lensdask.fit.engine.optimise`):

1. **lens light**: an elliptical Sersic started from the stamp's light moments, fitted with a robust
   (Cauchy) loss so that arcs and satellites weigh little, then (``light_profiles`` 2) with a concentric
   envelope, a second Sersic, that both models keep;
2. **starts**: Einstein radii scanned over ``theta_E_grid`` values of the prior range; for each, the
   source starts where the residual light (data less the lens light) maps back to in the source plane
   through a round SIE, and the chi-square is evaluated with the amplitudes solved; the ``lens_starts``
   best local minima of the scan are kept;
3. **lens model**: the lens light, SIE (centred on the light) + external shear and an elliptical
   exponential source, all free, optimised from each start; the best is kept and, when ``confirm``,
   optimised again from a perturbed copy (seeded by the candidate): a fit is confirmed when the second
   optimisation returns to it; one that lands lower and elsewhere instead becomes the best and is confirmed
   in turn, up to ``confirm_rounds`` times;
4. **null model**: the same lens light plus ``null_blobs`` unlensed elliptical exponential blobs,
   started on the brightest residual peaks with two sizes; the variant of lowest BIC is kept.

Uncertainties of the lens model's nonlinear parameters come from the optimiser's Jacobian at the best fit
(Gauss-Newton covariance ``(J^T J)^-1``, marginal over every nonlinear parameter). The evidence is
``dBIC = chi2_lens - chi2_null + (k_lens - k_null) ln(n_pix)``, ``k`` counting nonlinear parameters and
linear amplitudes: negative favours lensing. With ``evidence_noise="fitted"`` each band's noise level is a
free parameter of both models (Gaussian noise of unknown scale, profiled out), so the chi-square difference
becomes ``sum_b m ln(chi2_lens,b / chi2_null,b)`` over the ``m`` fitted pixels of each band: a recorded
noise that is too high (a border crowded by neighbours) no longer dilutes the evidence, and one too low for
the residuals of a real galaxy's structure no longer inflates it. With ``evidence_penalty="laplace"`` the
lens model's prior-bound parameters (external shear, SIE ellipticity) are charged their Occam factors under
their priors instead of ln(n_pix) each (:func:`prior_occam`).

Deterministic: the only random draw is the confirmation's perturbation, from the candidate's own seed, so
a result does not depend on which other candidates a task fitted, or in which order.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from .engine import SOURCE_N, Model, Optimum, Parameter, Stamp, chi2_at, optimise

__all__ = ["SOURCE_N", "FitSettings", "fit_candidate", "residual_peaks"]


@dataclass(frozen=True)
class FitSettings:
    """How a candidate is fitted (config ``fit.*``; see ``lensdask/lensdask.yaml``).

    Attributes
    ----------
    supersampling : int
        Sub-pixels per side of the surface brightness everywhere.
    core_supersampling : int
        Sub-pixels per side in the pixels about the lens light's centre.
    exposure_time : float, s
        Image units x exposure time = counts, for the Poisson term of the noise; 0 leaves it out.
    theta_E_grid : int
        Einstein radii scanned over ``theta_E_range`` for the lens model's starts.
    lens_starts : int
        Lens-model optimisations, from the best minima of the scan.
    null_blobs : tuple of int
        Numbers of blobs the null model is tried with.
    lens_blobs : tuple of int
        Numbers of unlensed blobs (satellites, neighbours) the lens model is tried with, started on the
        brightest residuals, so that light the null model's blobs explain is not forced through the lens.
    null_starts : int
        Starts of each null model: 1, the first fit's lens light; 2, that and the lens model's.
    max_iterations : int
        Most iterations of one optimisation (each costs a Jacobian: one model evaluation per parameter).
    confirm : bool
        Optimise the best lens model again from a perturbed copy (the ``restarts`` flag).
    confirm_rounds : int
        Confirmations at most: a confirmation that lands on a lower chi-square elsewhere becomes the best
        and is itself confirmed, while rounds remain.
    restart_tolerance : float
        A confirmation whose Einstein radius differs from the best's by more than this fraction did not
        return to it (config ``fit.restart_tolerance``, which the ``restarts`` flag uses too).
    theta_E_range : (float, float), arcsec
        Bounds of the Einstein radius.
    shear_sigma : float
        Prior of each external shear component: Gaussian about 0 of this sigma (0: none).
    mass_light_sigma : float
        Prior of each SIE ellipticity component: Gaussian about the lens light's of this sigma (0: none).
    source_r_max : float, arcsec
        Upper bound of the source's (and the blobs') half-light radius.
    light_profiles : int
        Sersic profiles of the lens light, in both models: 1, or 2 (concentric, each its own size, index and
        ellipticity: :class:`lensdask.fit.engine.Model`).
    ftol : float
        An optimisation has converged when a step changes the chi-square by less than this fraction of it.
    core_point : bool
        A point source at the lens light's centre in every model (:class:`lensdask.fit.engine.Model`).
    null_ring_blobs : tuple of int
        Null models with an unlensed ring concentric with the lens light (:class:`lensdask.fit.engine.Model`
        ``ring``), tried with these numbers of blobs besides ``null_blobs``' variants; empty: none.
    evidence_noise : str
        The noise of the evidence (``dbic``): ``recorded``, each band's recorded sigma (with the Poisson
        term); ``fitted``, that sigma times a level fitted per band in each model (see the module's notes).
        The optimisations and the choice among variants always use the recorded noise.
    evidence_penalty : str
        What the evidence (``dbic``) charges the lens model for its prior-bound parameters (the external
        shear and the SIE ellipticity): ``bic``, ln(n_pix) each, as every other parameter; ``laplace``, each
        one's Occam factor under its Gaussian prior, ``2 ln(sigma_prior / sigma_post)`` capped at ln(n_pix),
        plus the prior's chi-square at the best fit (:func:`prior_occam`).
    """

    supersampling: int = 1
    core_supersampling: int = 5
    exposure_time: float = 0.0
    theta_E_grid: int = 15
    lens_starts: int = 2
    null_blobs: tuple[int, ...] = (1, 2, 3)
    lens_blobs: tuple[int, ...] = (0, 1, 2)
    null_starts: int = 2
    max_iterations: int = 100
    confirm: bool = True
    confirm_rounds: int = 1
    restart_tolerance: float = 0.03
    theta_E_range: tuple[float, float] = (0.3, 3.5)
    shear_sigma: float = 0.05
    mass_light_sigma: float = 0.1
    source_r_max: float = 2.0
    light_profiles: int = 1
    ftol: float = 1e-7
    core_point: bool = False
    null_ring_blobs: tuple[int, ...] = ()
    evidence_noise: str = "recorded"
    evidence_penalty: str = "bic"


LENS_CENTRE_BOX = 0.6
"""arcsec: the lens light's centre stays within this of the stamp centre (each axis)."""

FIRST_LIGHT_BOX = 0.25
"""arcsec: ... and within this in the first, light-only fit (a bright arc or counter-image blended with the
lens must not draw it away; the joint fits free it to :data:`LENS_CENTRE_BOX`)."""


def _light_parameters(light: list[dict], *, box: float = LENS_CENTRE_BOX, envelope: int | None = None):
    """The lens light's parameters, started at ``light`` ([main] or [main, envelope] Sersic kwargs); with
    ``envelope`` (its component index), the second profile's too, started at ``light[1]`` or, when there
    is none, at twice the main profile's size with index 1."""
    cx, cy = 0.0, 0.0
    main = light[0]
    out = [
        Parameter(0, "R_sersic", main["R_sersic"], 0.05, 6.0, 0.1),
        Parameter(0, "n_sersic", main["n_sersic"], 0.5, 8.0, 0.3),
        Parameter(0, "e1", main["e1"], -0.6, 0.6, 0.05),
        Parameter(0, "e2", main["e2"], -0.6, 0.6, 0.05),
        Parameter(0, "center_x", main["center_x"], cx - box, cx + box, 0.05),
        Parameter(0, "center_y", main["center_y"], cy - box, cy + box, 0.05),
    ]
    if envelope is not None:
        env = light[1] if len(light) > 1 else {**main, "R_sersic": min(2 * main["R_sersic"], 6.0), "n_sersic": 1.0}
        out += [
            Parameter(envelope, "R_sersic", env["R_sersic"], 0.05, 6.0, 0.1),
            Parameter(envelope, "n_sersic", env["n_sersic"], 0.5, 8.0, 0.3),
            Parameter(envelope, "e1", env["e1"], -0.6, 0.6, 0.05),
            Parameter(envelope, "e2", env["e2"], -0.6, 0.6, 0.05),
        ]
    return out


def _lens_light(model: Model, comps: list[dict]) -> list[dict]:
    """The lens light's Sersic kwargs of a fit's components: [main] or [main, envelope]."""
    return [comps[0]] + ([comps[-1]] if model.envelope_component is not None else [])


SOURCE_R_MIN = 0.02
"""arcsec: lower bound of a source's or blob's half-light radius, far below the PSF (an unresolved source)."""


def _blob_parameters(component: int, x: float, y: float, r: float, half: float, r_max: float) -> list[Parameter]:
    return [
        Parameter(component, "R_sersic", r, SOURCE_R_MIN, r_max, 0.1, lower_is_limit=False),
        Parameter(component, "e1", 0.0, -0.6, 0.6, 0.05),
        Parameter(component, "e2", 0.0, -0.6, 0.6, 0.05),
        Parameter(component, "center_x", x, -half, half, 0.1),
        Parameter(component, "center_y", y, -half, half, 0.1),
    ]


RING_WIDTH = (0.05, 1.5)
"""arcsec: bounds of a null-model ring's width (Gaussian sigma in elliptical radius)."""


def _ring_parameters(component: int, light: dict, radius: float, half: float) -> list[Parameter]:
    """A null-model ring's parameters: radius started at ``radius`` (the lens model's Einstein radius, where
    the lensed light it would replace lies), width 0.3 arcsec, the lens light's ellipticity."""
    lo, hi = 0.2, max(half, 0.5)
    return [
        Parameter(component, "R_ring", float(np.clip(radius, lo * 1.01, hi * 0.99)), lo, hi, 0.1),
        Parameter(component, "w_ring", 0.3, *RING_WIDTH, 0.05),
        Parameter(component, "e1", float(np.clip(light["e1"], -0.5, 0.5)), -0.6, 0.6, 0.05),
        Parameter(component, "e2", float(np.clip(light["e2"], -0.5, 0.5)), -0.6, 0.6, 0.05),
    ]


def _lens_parameters(
    light: list[dict], theta_E: float, source: tuple, settings: FitSettings, half: float, blobs=(), envelope=None
):
    """The lens model's parameters: lens light, SIE, shear, source, then unlensed blobs started at ``blobs``
    ((ra, dec) arcsec each), and the lens light's envelope (component ``envelope``) if any."""
    lo, hi = settings.theta_E_range
    sx, sy, sr = source
    out = [
        *_light_parameters(light, envelope=envelope),
        Parameter(1, "theta_E", theta_E, lo, hi, 0.05),
        Parameter(1, "e1", 0.0, -0.5, 0.5, 0.05),
        Parameter(1, "e2", 0.0, -0.5, 0.5, 0.05),
        Parameter(2, "gamma1", 0.0, -0.3, 0.3, 0.02),
        Parameter(2, "gamma2", 0.0, -0.3, 0.3, 0.02),
        *_blob_parameters(3, sx, sy, sr, half, settings.source_r_max),
    ]
    for j, (bx, by) in enumerate(blobs):
        out += _blob_parameters(4 + j, bx, by, 0.3, half, settings.source_r_max)
    return out


def light_moments(stamp: Stamp, radius: float = 1.0) -> dict:
    """A first lens light: centred on the stamp (a candidate's stamp is cut about the catalogued galaxy,
    whose centroid a bright arc can pull but whose light is most concentrated there), with the size and
    ellipticity of the light's moments within ``radius`` arcsec of the centre (Sersic index 4)."""
    from scipy import ndimage

    snr = ndimage.gaussian_filter((stamp.images / stamp.noise[:, None, None]).sum(axis=0), 1.0)
    cx, cy = 0.0, 0.0
    w = np.clip(snr, 0, None) * ((np.hypot(stamp.x - cx, stamp.y - cy) <= radius) & stamp.mask)
    total = w.sum()
    if total <= 0:
        return {"R_sersic": 0.8, "n_sersic": 4.0, "e1": 0.0, "e2": 0.0, "center_x": cx, "center_y": cy}
    dx, dy = stamp.x - cx, stamp.y - cy
    qxx, qyy, qxy = (w * dx * dx).sum() / total, (w * dy * dy).sum() / total, (w * dx * dy).sum() / total
    denom = qxx + qyy + 2 * np.sqrt(max(qxx * qyy - qxy**2, 0.0))
    e1, e2 = ((qxx - qyy) / denom, 2 * qxy / denom) if denom > 0 else (0.0, 0.0)
    r = float(np.clip(2 * np.sqrt(max(qxx + qyy, 1e-4)), 0.3, 3.0))
    return {
        "R_sersic": r,
        "n_sersic": 4.0,
        "e1": float(np.clip(e1, -0.4, 0.4)),
        "e2": float(np.clip(e2, -0.4, 0.4)),
        "center_x": cx,
        "center_y": cy,
    }


def residual_snr(stamp: Stamp, residual: np.ndarray) -> np.ndarray:
    """Band-summed S/N of ``residual`` (n_bands, n, n), smoothed by 1 px, zero off the fitted pixels; its own
    noise is ~``1 / (2 sqrt(pi))`` per pixel."""
    from scipy import ndimage

    s = (residual / stamp.noise[:, None, None]).sum(axis=0) / np.sqrt(stamp.nb)
    return ndimage.gaussian_filter(s, 1.0) * stamp.mask


def residual_peaks(stamp: Stamp, residual: np.ndarray, k: int = 2, min_separation: float = 3.0):
    """Up to ``k`` (ra, dec) positions (arcsec) of the brightest residual light, at least ``min_separation``
    px apart."""
    snr = residual_snr(stamp, residual)
    out: list[tuple[int, int]] = []
    for idx in np.argsort(snr, axis=None)[::-1][:400]:
        r, c = np.unravel_index(idx, snr.shape)
        if snr[r, c] <= 0:
            break
        if all((c - pc) ** 2 + (r - pr) ** 2 >= min_separation**2 for pr, pc in out):
            out.append((int(r), int(c)))
        if len(out) == k:
            break
    return [(float(stamp.x[r, c]), float(stamp.y[r, c])) for r, c in out]


def _source_start(stamp: Stamp, snr_map: np.ndarray, light: list[dict], theta_E: float) -> tuple[float, float, float]:
    """Where the residual light maps back to through a round SIS of ``theta_E`` (S/N-weighted mean and
    spread of the mapped pixels, arcsec), about the lens centre when there is none."""
    cx, cy = light[0]["center_x"], light[0]["center_y"]
    sel = snr_map > 2.0 / (2 * np.sqrt(np.pi))
    if sel.sum() < 3:
        return cx, cy, 0.2
    dx, dy = stamp.x[sel] - cx, stamp.y[sel] - cy
    r = np.maximum(np.hypot(dx, dy), 1e-3)
    bx, by = dx - theta_E * dx / r, dy - theta_E * dy / r
    w = snr_map[sel]
    mx, my = float((w * bx).sum() / w.sum()), float((w * by).sum() / w.sum())
    spread = float(np.sqrt((w * ((bx - mx) ** 2 + (by - my) ** 2)).sum() / w.sum()))
    return cx + mx, cy + my, float(np.clip(spread, 0.1, 0.8))


def _scan(
    stamp: Stamp, model: Model, light: list[dict], residual: np.ndarray, settings: FitSettings, half: float, blobs=()
):
    """The lens model's starts: (chi2, theta_E, source) of a scan in theta_E (with unlensed blobs at
    ``blobs``), best first: the ``lens_starts`` best local minima (made up with the next best radii where
    there are fewer), then the other minima, then the other radii, each by chi-square."""
    lo, hi = settings.theta_E_range
    snr_map = residual_snr(stamp, residual)
    grid = np.geomspace(lo * 1.05, hi * 0.95, settings.theta_E_grid)
    rows = []
    for theta in grid:
        src = _source_start(stamp, snr_map, light, float(theta))
        params = _lens_parameters(light, float(theta), src, settings, half, blobs, model.envelope_component)
        rows.append((chi2_at(model, params, [p.start for p in params]), float(theta), src))
    chi = np.array([r[0] for r in rows])
    minima = [
        i for i in range(len(chi)) if (i == 0 or chi[i] <= chi[i - 1]) and (i == len(chi) - 1 or chi[i] <= chi[i + 1])
    ]
    minima.sort(key=lambda i: chi[i])
    by_chi2 = [int(i) for i in np.argsort(chi, kind="stable")]
    first = minima[: settings.lens_starts]
    first += [i for i in by_chi2 if i not in first][: settings.lens_starts - len(first)]  # fewer minima than starts
    rest = [i for i in minima if i not in first] + [i for i in by_chi2 if i not in first and i not in minima]
    return [rows[i] for i in first + rest]


def _confirm(model: Model, best: Optimum, settings: FitSettings, rng: np.random.Generator) -> Optimum:
    """The best lens model optimised again from a perturbed copy: Einstein radius x U(0.9, 1.1), source
    moved by up to 0.15 arcsec on each axis."""
    starts = []
    for p, v in zip(best.params, best.x):
        if p.key == "theta_E":
            v = v * rng.uniform(0.9, 1.1)
        elif p.component == 3 and p.key in ("center_x", "center_y"):
            v = v + rng.uniform(-0.15, 0.15)
        starts.append(Parameter(p.component, p.key, float(np.clip(v, p.lower, p.upper)), p.lower, p.upper, p.scale))
    return optimise(model, starts, max_iterations=settings.max_iterations, ftol=settings.ftol)


def _confirmed(model: Model, best: Optimum, settings: FitSettings, rng: np.random.Generator):
    """(best, restart_dchi2, restart_dtheta): the best lens model after up to ``confirm_rounds``
    confirmations (:func:`_confirm`), with the last confirmation's chi-square less the best's and their
    relative Einstein-radius difference (NaN without ``confirm``). A confirmation that lands lower becomes
    the best; when it also moved the Einstein radius by more than ``restart_tolerance``, it is confirmed in
    turn while rounds remain."""
    restart_dchi2 = restart_dtheta = float("nan")
    if not settings.confirm:
        return best, restart_dchi2, restart_dtheta
    for _ in range(max(settings.confirm_rounds, 1)):
        again = _confirm(model, best, settings, rng)
        restart_dchi2 = again.chi2 - best.chi2
        restart_dtheta = abs(again.value("theta_E", 1) / best.value("theta_E", 1) - 1)
        if again.chi2 >= best.chi2:
            break  # the best stands (confirmed, or a worse basin nearby: the restarts flag decides)
        best = again
        if restart_dtheta <= settings.restart_tolerance:
            break  # the same solution, a little lower
    return best, restart_dchi2, restart_dtheta


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
        Seeds the confirmation's perturbation.
    settings : FitSettings, optional
    zero_points : numpy.ndarray, optional
        (n_bands,) AB magnitude of a source of one image unit of total flux; magnitudes are NaN without them.

    Returns
    -------
    dict
        The measurements behind the fit columns of :mod:`lensdask.fit.candidate` (the per-band ones as
        arrays ``mag_lens``, ``mag_source``), the flags' inputs ``at_bound``, ``hessian_ok`` (the
        covariance is finite), ``restart_dchi2`` (chi-square of the confirmation less the best's, NaN
        without one), ``restart_dtheta`` (their relative Einstein-radius difference), ``optimiser_ok``,
        plus ``model_lens``, ``model_null`` (n_bands, n, n) model images and ``source_image``
        (n_bands, n, n): the reconstructed source, unlensed, on the image grid.
    """
    with _one_blas_thread():
        return _fit(images, noise, psf_fwhm, pixel_scale, mask, seed, settings or FitSettings(), zero_points)


def _one_blas_thread():
    """Linear algebra on one thread for the fit (the optimiser's small SVDs are several times slower spread
    over busy cores; parallelism is across candidates). A no-op without threadpoolctl."""
    import contextlib

    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - threadpoolctl comes with scikit-learn
        return contextlib.nullcontext()
    return threadpool_limits(limits=1, user_api="blas")


def _fit(images, noise, psf_fwhm, pixel_scale, mask, seed: int, settings: FitSettings, zero_points) -> dict:
    t0 = time.perf_counter()

    stamp = Stamp(
        images,
        noise,
        psf_fwhm,
        pixel_scale,
        mask,
        exposure_time=settings.exposure_time,
        supersampling=settings.supersampling,
        core_supersampling=settings.core_supersampling,
    )
    half = float(np.hypot(stamp.x, stamp.y)[stamp.mask].max()) if stamp.mask.any() else stamp.n * stamp.pixel_scale / 2
    rng = np.random.default_rng(int(seed) % 2**63)

    # 1. the lens light, robustly (arcs and satellites are outliers)
    light_model = Model(stamp, lensed=False, core_point=settings.core_point)
    light = [light_moments(stamp)]
    for profiles in range(1, settings.light_profiles + 1):  # one Sersic, then (if asked) with its envelope
        light_model = Model(stamp, lensed=False, light_profiles=profiles, core_point=settings.core_point)
        first = optimise(
            light_model,
            _light_parameters(light, box=FIRST_LIGHT_BOX, envelope=light_model.envelope_component),
            max_iterations=settings.max_iterations,
            ftol=settings.ftol,
            loss="cauchy",
        )
        light = _lens_light(light_model, light_model.components(first.params, first.x))
    comps = light_model.components(first.params, first.x)
    light_images = np.einsum("cbyx,bc->byx", light_model.templates(comps), first.amps)
    residual = stamp.images - light_images

    # 2-3. the lens model, without and with unlensed blobs on the brightest residuals, from the scan's best
    # starts; the variant of lowest BIC is kept and confirmed
    peaks = residual_peaks(stamp, residual, k=max((*settings.null_blobs, *settings.lens_blobs, 1)))
    tried: list[tuple[float, Model, Optimum]] = []
    for k in settings.lens_blobs:
        if k > len(peaks):
            continue
        model = Model(
            stamp,
            lensed=True,
            blobs=k,
            shear_sigma=settings.shear_sigma,
            mass_light_sigma=settings.mass_light_sigma,
            light_profiles=settings.light_profiles,
            core_point=settings.core_point,
        )
        placements: list[tuple[tuple[float, float], ...]] = (
            [()]
            if k == 0
            else [tuple(peaks[(j + s) % len(peaks)] for j in range(k)) for s in range(min(2, len(peaks)))]
        )
        for blobs in placements:
            starts = _scan(stamp, model, light, residual, settings, half, blobs)
            for _, theta, src in starts[: settings.lens_starts if k == 0 else 1]:
                params = _lens_parameters(light, theta, src, settings, half, blobs, model.envelope_component)
                fit = optimise(model, params, max_iterations=settings.max_iterations, ftol=settings.ftol)
                tried.append((_bic(fit, model, stamp), model, fit))
    _, lens_model, best = min(tried, key=lambda t: t[0])
    best, restart_dchi2, restart_dtheta = _confirmed(lens_model, best, settings, rng)

    # 4. the null model: the lens light (from the first fit, and from the lens model) and unlensed blobs
    lights = [light, _lens_light(lens_model, lens_model.components(best.params, best.x))]
    lights = lights[: max(settings.null_starts, 1)]
    null: Optimum | None = None
    null_model: Model | None = None
    variants = [(k, False) for k in settings.null_blobs] + [(k, True) for k in settings.null_ring_blobs]
    theta_best = best.value("theta_E", 1)
    for k, ring in variants:
        model = Model(
            stamp,
            lensed=False,
            blobs=k,
            light_profiles=settings.light_profiles,
            core_point=settings.core_point,
            ring=ring,
        )
        for start in lights:
            blob_params: list[Parameter] = []
            for j in range(k):
                c0 = start[0]
                bx, by = peaks[j] if j < len(peaks) else (c0["center_x"] + 0.8 * (j + 1), c0["center_y"])
                blob_params += _blob_parameters(1 + j, bx, by, 0.3, half, settings.source_r_max)
            if model.ring_component is not None:
                blob_params += _ring_parameters(model.ring_component, start[0], theta_best, half)
            params = _light_parameters(start, envelope=model.envelope_component) + blob_params
            fit = optimise(model, params, max_iterations=settings.max_iterations, ftol=settings.ftol)
            if null is None or _bic(fit, model, stamp) < _bic(null, null_model, stamp):
                null, null_model = fit, model
    assert null is not None and null_model is not None
    return _measurements(
        stamp, lens_model, best, null_model, null, settings, zero_points, restart_dchi2, restart_dtheta, t0
    )


def _k(fit: Optimum, model: Model, stamp: Stamp) -> int:
    """Parameters a BIC counts: nonlinear ones and one amplitude per component and band."""
    return len(fit.params) + model.n_components * stamp.nb


def _bic(fit: Optimum, model: Model | None, stamp: Stamp) -> float:
    assert model is not None
    return fit.chi2 + _k(fit, model, stamp) * np.log(max(stamp.n_pix, 2))


def _dbic_fitted_noise(stamp: Stamp, model_lens, model_null, k_lens: int, k_null: int) -> float:
    """BIC(lens) - BIC(null) of two model images (n_bands, n, n), each band's noise level a free parameter
    of both models (:class:`FitSettings` ``evidence_noise="fitted"``)."""
    chi2_lens = (((stamp.images - model_lens) * stamp.weight)[:, stamp.mask] ** 2).sum(axis=1)
    chi2_null = (((stamp.images - model_null) * stamp.weight)[:, stamp.mask] ** 2).sum(axis=1)
    m = int(stamp.mask.sum())
    return float(m * np.log(chi2_lens / chi2_null).sum() + (k_lens - k_null) * np.log(max(stamp.n_pix, 2)))


PRIOR_BOUND = (("gamma1", 2, "shear_sigma"), ("gamma2", 2, "shear_sigma"), ("e1", 1, "mass_light_sigma"),
               ("e2", 1, "mass_light_sigma"))  # fmt: skip
"""The lens model's parameters under a Gaussian prior: (key, component, the FitSettings field of its sigma)."""


def prior_occam(best: Optimum, model: Model, settings: FitSettings, n_pix: int) -> float:
    """What the Laplace evidence charges the lens model for its prior-bound parameters, less what the BIC does
    (-2 ln units, as ``dbic``; negative: the BIC over-charges).

    The BIC charges every parameter ln(n_pix), the Occam factor of a parameter the data alone constrain. A
    parameter under a Gaussian prior of sigma ``s_p`` is charged, in Laplace's approximation to the evidence,
    its prior's chi-square at the best fit plus ``2 ln(s_p / s_post)``, ``s_post`` its marginal posterior
    sigma (the optimiser's covariance, whose Jacobian holds the prior's rows): nothing where the data add
    nothing to the prior (a faint arc says little about the shear). Each is capped at ln(n_pix); a parameter
    whose ``s_post`` is not finite keeps the BIC's charge.

    Returns
    -------
    float
        ``sum_i [min(ln n, max(0, 2 ln(s_p,i / s_post,i))) - ln n] + chi2_prior`` over the prior-bound
        parameters (0 without priors).
    """
    ln_n = float(np.log(max(n_pix, 2)))
    prior = model.prior_residuals(model.components(best.params, best.x))
    total = float(prior @ prior)
    for key, component, field in PRIOR_BOUND:
        s_p = float(getattr(settings, field))
        if s_p <= 0:
            continue
        s_post = best.error(key, component)
        if np.isfinite(s_post) and s_post > 0:
            total += min(ln_n, max(0.0, 2 * np.log(s_p / s_post))) - ln_n
    return total


def _dbic(stamp, lens_model, best, null_model, null, settings, model_lens, model_null) -> float:
    """BIC(lens) - BIC(null) as ``settings`` ask: the noise recorded or fitted, the priors' charge BIC's or
    Laplace's (see :class:`FitSettings`)."""
    k_lens, k_null = _k(best, lens_model, stamp), _k(null, null_model, stamp)
    if settings.evidence_noise == "recorded":
        dbic = float(_bic(best, lens_model, stamp) - _bic(null, null_model, stamp))
    else:
        dbic = _dbic_fitted_noise(stamp, model_lens, model_null, k_lens, k_null)
    if settings.evidence_penalty == "laplace":
        dbic += prior_occam(best, lens_model, settings, stamp.n_pix)
    return dbic


def _measurements(stamp, lens_model, best, null_model, null, settings, zero_points, restart_dchi2, restart_dtheta, t0):
    from lenstronomy.Util.param_util import ellipticity2phi_q, shear_cartesian2polar

    comps = lens_model.components(best.params, best.x)
    light, sie, shear, src = comps[0], comps[1], comps[2], comps[3]
    kwargs_lens = Model.kwargs_lens(comps)
    phi, q = ellipticity2phi_q(sie["e1"], sie["e2"])
    phi_shear, gamma = shear_cartesian2polar(shear["gamma1"], shear["gamma2"])
    templates = lens_model.templates(comps)
    model_lens = np.einsum("cbyx,bc->byx", templates, best.amps)
    null_comps = null_model.components(null.params, null.x)
    model_null = np.einsum("cbyx,bc->byx", null_model.templates(null_comps), null.amps)
    env, point = lens_model.envelope_amplitude, lens_model.core_point_amplitude
    per_band = [
        {
            "kwargs_lens": kwargs_lens,
            "kwargs_lens_light": [{**light, "amp": float(best.amps[b, 0])}]
            + ([{**lens_model.envelope(comps), "amp": float(best.amps[b, env])}] if env is not None else []),
            "kwargs_source": [{**src, "n_sersic": SOURCE_N, "amp": float(best.amps[b, 1])}],
            "point_flux": 0.0 if point is None else float(best.amps[b, point]),
        }
        for b in range(stamp.nb)
    ]
    mags_lens, mags_src, mu = _photometry(per_band, zero_points)
    n_images = _image_count(kwargs_lens, src["center_x"], src["center_y"])
    k_lens, k_null = _k(best, lens_model, stamp), _k(null, null_model, stamp)
    names = {
        (1, "theta_E"): "theta_E",
        (1, "e1"): "e1",
        (1, "e2"): "e2",
        (2, "gamma1"): "gamma1",
        (2, "gamma2"): "gamma2",
        (3, "R_sersic"): "source_r",
    }
    at_bound = ",".join(names[cb] for cb in best.at_bound() if cb in names)
    return {
        "theta_E": float(sie["theta_E"]),
        "theta_E_err": best.error("theta_E", 1),
        "q": float(q),
        "phi": float(np.degrees(phi)),
        "e1": float(sie["e1"]),
        "e2": float(sie["e2"]),
        "e1_err": best.error("e1", 1),
        "e2_err": best.error("e2", 1),
        "gamma_ext": float(gamma),
        "phi_ext": float(np.degrees(phi_shear)),
        "gamma1_err": best.error("gamma1", 2),
        "gamma2_err": best.error("gamma2", 2),
        "lens_x": float(light["center_x"]),
        "lens_y": float(light["center_y"]),
        "source_x": float(src["center_x"]),
        "source_y": float(src["center_y"]),
        "source_r": float(src["R_sersic"]),
        "mag_lens": mags_lens,
        "mag_source": mags_src,
        "magnification": mu,
        "n_images": int(n_images),
        "chi2_lens": best.chi2,
        "chi2_null": null.chi2,
        "chi2nu_lens": best.chi2 / max(stamp.n_pix - k_lens, 1),
        "chi2nu_null": null.chi2 / max(stamp.n_pix - k_null, 1),
        "k_lens": k_lens,
        "k_null": k_null,
        "n_pix": stamp.n_pix,
        "null_blobs": int(null_model.blobs),
        "dbic": _dbic(stamp, lens_model, best, null_model, null, settings, model_lens, model_null),
        "restart_dchi2": float(restart_dchi2),
        "restart_dtheta": float(restart_dtheta),
        "optimiser_ok": bool(best.status > 0),
        "at_bound": at_bound,
        "hessian_ok": best.cov is not None and bool(np.isfinite(best.error("theta_E", 1))),
        "seconds": time.perf_counter() - t0,
        "model_lens": model_lens.astype(np.float32),
        "model_null": model_null.astype(np.float32),
        "source_image": _source_image(stamp, per_band).astype(np.float32),
    }


def _photometry(per_band, zero_points):
    """Lens and (unlensed) source magnitudes per band, and the source's total magnification."""
    from lenstronomy.LightModel.light_model import LightModel

    light = LightModel(["SERSIC_ELLIPSE"])
    lens_light = LightModel(["SERSIC_ELLIPSE"] * len(per_band[0]["kwargs_lens_light"]))
    nb = len(per_band)
    mag_lens = np.full(nb, np.nan)
    mag_src = np.full(nb, np.nan)
    mus = []
    for b, kw in enumerate(per_band):
        f_lens = float(np.sum(lens_light.total_flux(kw["kwargs_lens_light"]))) + kw.get("point_flux", 0.0)
        f_src = float(np.sum(light.total_flux(kw["kwargs_source"])))
        if zero_points is not None:
            if f_lens > 0:
                mag_lens[b] = zero_points[b] - 2.5 * np.log10(f_lens)
            if f_src > 0:
                mag_src[b] = zero_points[b] - 2.5 * np.log10(f_src)
        if f_src > 0:
            mus.append(_lensed_flux(kw) / f_src)
    return mag_lens, mag_src, float(np.median(mus)) if mus else np.nan


def _lensed_flux(kw, n: int = 121, scale: float = 0.1) -> float:
    """Total flux of the lensed source (no PSF) on a fine grid about the lens."""
    from lenstronomy.LensModel.lens_model import LensModel
    from lenstronomy.LightModel.light_model import LightModel

    c = (np.arange(n) - (n - 1) / 2) * scale
    x, y = np.meshgrid(c + kw["kwargs_lens"][0]["center_x"], c + kw["kwargs_lens"][0]["center_y"])
    lens = LensModel(["SIE", "SHEAR"])
    bx, by = lens.ray_shooting(x.ravel(), y.ravel(), kw["kwargs_lens"])
    sb = LightModel(["SERSIC_ELLIPSE"]).surface_brightness(bx, by, kw["kwargs_source"])
    return float(np.sum(sb) * scale**2)


def _source_image(stamp: Stamp, per_band) -> np.ndarray:
    """The reconstructed source, unlensed and without PSF, on the image grid (per band, image units)."""
    from lenstronomy.LightModel.light_model import LightModel

    light = LightModel(["SERSIC_ELLIPSE"])
    x, y = stamp.x.ravel(), stamp.y.ravel()
    return np.stack(
        [light.surface_brightness(x, y, kw["kwargs_source"]).reshape(stamp.n, stamp.n) * stamp.area for kw in per_band]
    )


def _image_count(kwargs_lens, x_source, y_source) -> int:
    """Images of a point at the source's centre."""
    from lenstronomy.LensModel.lens_model import LensModel
    from lenstronomy.LensModel.Solver.lens_equation_solver import LensEquationSolver

    solver = LensEquationSolver(LensModel(["SIE", "SHEAR"]))
    x, _ = solver.image_position_from_source(
        x_source, y_source, kwargs_lens, search_window=8.0, min_distance=0.05, precision_limit=1e-8
    )
    return len(x)
