"""One candidate, from its stamps to its row of fit columns; the flags, the evidence and the combined rank.
Pure: arrays and settings in, a dict or a table out; no Dask, no files.

Fit columns (every one prefixed ``fit_``; per-band ones suffixed ``_<band>``)
-------------------------------------------------------------------------------
``fit_status``         ``ok``; ``skipped: ...`` (non-finite pixels, unknown PSF or noise: not fitted);
                       ``error: ...`` (the fit raised; the run's failures table has the traceback)
``fit_theta_E``        Einstein radius (arcsec) of the SIE, and ``fit_theta_E_err`` (1 sigma, arcsec;
                       inverse Hessian, marginal over every nonlinear parameter)
``fit_q, fit_phi``     SIE axis ratio and position angle (degrees)
``fit_gamma_ext, fit_phi_ext``  external shear and its angle (degrees)
``fit_mag_lens_<b>``   lens light magnitude (AB, at the zero points of :func:`lensdask.fit.run.photometry`:
                       config ``fit.zero_points``, else those of the store's survey and pixel units)
``fit_mag_source_<b>`` unlensed source magnitude
``fit_source_x, fit_source_y``  source position (arcsec from the stamp centre, x = RA direction)
``fit_source_r``       source half-light radius (arcsec, elliptical exponential)
``fit_magnification``  total magnification of the source (lensed / unlensed flux, no PSF)
``fit_n_images``       images of a point at the source's centre
``fit_chi2nu_lens, fit_chi2nu_null``  reduced chi-square of the two models on the fitted pixels
``fit_dbic``           BIC(lens) - BIC(null): negative favours lensing
``fit_null_blobs``     light blobs of the best null model
``fit_masked``         neighbours masked (the same pixels in both models)
``fit_flags``          comma-separated: ``bound:<param>`` (a main parameter at its bound),
                       ``misfit`` (the lens model's reduced chi-square above ``fit.max_chi2nu`` and above the
                       null model's: it does not describe the stamp), ``implausible`` (|dBIC| above
                       ``fit.max_abs_dbic`` from a lens model whose reduced chi-square is above ``fit.max_chi2nu``),
                       ``hessian`` (the covariance at the best fit is singular: no errors), ``optimiser``
                       (the lens model's optimisation stopped at ``fit.max_iterations``), ``restarts``
                       (optimised again from a perturbed copy, the lens model returned to an Einstein radius
                       more than ``fit.restart_tolerance`` (fractional) away), ``source_size`` (the source's
                       half-light radius above ``fit.max_source_size`` x theta_E: a source that large makes
                       no arcs, only a halo concentric with the lens, which is the lens light's structure)
``fit_converged``      no flag but ``misfit``, ``implausible`` and ``source_size``: the optimisation found a
                       reproducible minimum inside the bounds
``fit_seconds``        wall time of the fit
"""

from __future__ import annotations

import time
import traceback

import numpy as np
import pandas as pd

from .lensmodel import FitSettings, fit_candidate
from .mask import border_noise, fit_mask

SCALAR_COLUMNS = {
    "theta_E": "fit_theta_E",
    "theta_E_err": "fit_theta_E_err",
    "q": "fit_q",
    "phi": "fit_phi",
    "gamma_ext": "fit_gamma_ext",
    "phi_ext": "fit_phi_ext",
    "source_x": "fit_source_x",
    "source_y": "fit_source_y",
    "source_r": "fit_source_r",
    "magnification": "fit_magnification",
    "chi2nu_lens": "fit_chi2nu_lens",
    "chi2nu_null": "fit_chi2nu_null",
    "dbic": "fit_dbic",
}
"""Measurements of :func:`lensdask.fit.lensmodel.fit_candidate` and the float columns they become."""


def fit_columns(bands) -> list[str]:
    """Every fit column, in table order, for a store with these ``bands``."""
    return [
        "fit_status",
        *SCALAR_COLUMNS.values(),
        *(f"fit_mag_lens_{b}" for b in bands),
        *(f"fit_mag_source_{b}" for b in bands),
        "fit_n_images",
        "fit_null_blobs",
        "fit_masked",
        "fit_flags",
        "fit_converged",
        "fit_seconds",
    ]


def empty_row(bands, status: str) -> dict:
    """A row of fit columns for a candidate not fitted (or whose fit failed), with ``status``."""
    row: dict = {c: np.nan for c in fit_columns(bands)}
    row.update(
        fit_status=status,
        fit_n_images=-1,
        fit_null_blobs=-1,
        fit_masked=-1,
        fit_flags="",
        fit_converged=False,
        fit_seconds=0.0,
    )
    return row


PHYSICS_FLAGS = ("misfit", "implausible", "source_size")
"""Flags about what the converged lens model says, not about the optimisation."""


def flags_of(
    result: dict,
    *,
    max_abs_dbic: float,
    restart_tolerance: float,
    max_chi2nu: float = np.inf,
    max_source_size: float = np.inf,
) -> list[str]:
    """The flags (see the module's columns) of one fit's measurements."""
    flags = [f"bound:{p}" for p in result["at_bound"].split(",") if p]
    poor = result["chi2nu_lens"] > max_chi2nu
    # both models above max_chi2nu: structure neither describes (a real galaxy's arms or bar), the same pixels
    # for both, so the evidence still compares them; only a lens model worse than the null does not describe it
    if poor and result["chi2nu_lens"] > result.get("chi2nu_null", -np.inf):
        flags.append("misfit")
    if poor and abs(result["dbic"]) > max_abs_dbic:
        flags.append("implausible")
    if not result["hessian_ok"]:
        flags.append("hessian")
    if not result.get("optimiser_ok", True):
        flags.append("optimiser")
    if np.isfinite(result["restart_dtheta"]) and result["restart_dtheta"] > restart_tolerance:
        flags.append("restarts")
    if result.get("source_r", 0.0) > max_source_size * result.get("theta_E", np.inf):
        flags.append("source_size")
    return flags


def fit_row(
    images: np.ndarray,
    psf_fwhm: np.ndarray,
    noise: np.ndarray | None,
    bands,
    pixel_scale: float,
    *,
    seed: int,
    settings: FitSettings,
    conf: dict,
) -> tuple[dict, dict | None, str | None]:
    """Fit one candidate: (its fit columns, its model images or None, the traceback if the fit raised).

    Parameters
    ----------
    images : numpy.ndarray
        (n_bands, n, n) stamps.
    psf_fwhm : numpy.ndarray
        (n_bands,) PSF FWHM, arcsec.
    noise : numpy.ndarray, optional
        (n_bands,) sky noise sigma; measured on the stamp's border when None or not finite.
    bands : list of str
    pixel_scale : float, arcsec/px
    seed : int
        The candidate's own seed (:func:`candidate_seed`).
    settings : FitSettings
    conf : dict
        ``fit_radius, mask_radius, mask_snr, max_abs_dbic, restart_tolerance, zero_points``, and optionally
        ``max_chi2nu``, ``max_source_size``; ``zero_points`` is ``{band: AB mag of one image unit}``
        (a band it does not name, or None: NaN magnitudes).

    Notes
    -----
    A candidate with non-finite pixels, PSF or noise is skipped with a status, never fitted on
    filled pixels.
    """
    images = np.asarray(images, dtype=np.float64)
    if not np.isfinite(images).all():
        bad = [b for b, band in zip(bands, images) if not np.isfinite(band).all()]
        return empty_row(bands, f"skipped: non-finite pixels in {','.join(bad)}"), None, None
    psf_fwhm = np.asarray(psf_fwhm, dtype=np.float64)
    if not (np.isfinite(psf_fwhm).all() and (psf_fwhm > 0).all()):
        bad = [b for b, v in zip(bands, psf_fwhm) if not (np.isfinite(v) and v > 0)]
        return empty_row(bands, f"skipped: no PSF in {','.join(bad)}"), None, None
    measured = border_noise(images)
    noise = measured if noise is None else np.where(np.isfinite(noise) & (np.asarray(noise) > 0), noise, measured)
    if not (np.isfinite(noise).all() and (noise > 0).all()):
        return empty_row(bands, "skipped: sky noise not measurable"), None, None
    mask, masked = fit_mask(
        images,
        noise,
        pixel_scale,
        fit_radius=float(conf["fit_radius"]),
        mask_radius=float(conf["mask_radius"]),
        snr=float(conf["mask_snr"]),
    )
    zp = conf.get("zero_points")
    zero_points = None if not zp else np.array([float(zp.get(b, np.nan)) for b in bands])
    t0 = time.perf_counter()
    try:
        res = fit_candidate(
            images, noise, psf_fwhm, pixel_scale, mask, seed=seed, settings=settings, zero_points=zero_points
        )
    except Exception as exc:  # one candidate's failure is a status and a failures row, never the run's end
        row = empty_row(bands, f"error: {type(exc).__name__}: {exc}"[:300])
        row["fit_seconds"] = time.perf_counter() - t0
        return row, None, traceback.format_exc()[-2000:]
    flags = flags_of(
        res,
        max_abs_dbic=float(conf["max_abs_dbic"]),
        restart_tolerance=float(conf["restart_tolerance"]),
        max_chi2nu=float(conf.get("max_chi2nu", np.inf)),
        max_source_size=float(conf.get("max_source_size", np.inf)),
    )
    row = {"fit_status": "ok"}
    row.update({col: float(res[key]) for key, col in SCALAR_COLUMNS.items()})
    for k, b in enumerate(bands):
        row[f"fit_mag_lens_{b}"] = float(res["mag_lens"][k])
        row[f"fit_mag_source_{b}"] = float(res["mag_source"][k])
    row.update(
        fit_n_images=int(res["n_images"]),
        fit_null_blobs=int(res["null_blobs"]),
        fit_masked=int(masked),
        fit_flags=",".join(flags),
        fit_converged=all(f in PHYSICS_FLAGS for f in flags),
        fit_seconds=time.perf_counter() - t0,
    )
    models = {"lens": res["model_lens"], "null": res["model_null"], "source": res["source_image"], "mask": mask}
    return row, models, None


def candidate_seed(seed: int, object_id: int) -> int:
    """A candidate's own seed, from the run seed and its object id (numpy ``SeedSequence``): the same
    whatever chunk fits it."""
    return int(
        np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(object_id) & 0xFFFFFFFFFFFFFFFF]).generate_state(1)[0]
    )


def evidence_usable(table: pd.DataFrame) -> np.ndarray:
    """Rows whose lens model is acceptable, so that their dBIC counts: fitted, no flag (converged, inside
    the bounds, describing the stamp)."""
    flags = table["fit_flags"].fillna("").astype(str).to_numpy()
    return fitted(table) & (flags == "")


def fitted(table: pd.DataFrame) -> np.ndarray:
    """Rows fitted (status ``ok``, a finite dBIC)."""
    return (table["fit_status"] == "ok").to_numpy() & np.isfinite(table["fit_dbic"].to_numpy(float))


def combined_score(table: pd.DataFrame, *, weight: float, cap: float) -> np.ndarray:
    """The combined log-odds of network score and lensing evidence (config ``fit.rank``).

    ``logit(score) + weight * E`` with ``E = clip(-dBIC / 2, -cap, cap)`` where the lens model is
    acceptable (:func:`evidence_usable`), ``E = -cap`` where a fitted lens model is not (at a bound, not
    converged, or not describing the stamp: the physics does not support a lens), and ``E = 0`` where there
    is no fit. ``-dBIC / 2`` approximates the log Bayes factor of lens against null, ``weight`` tempers
    it (the models are approximate), ``cap`` bounds it.
    """
    p = np.clip(table["score"].to_numpy(float), 1e-6, 1 - 1e-6)
    out = np.log(p / (1 - p))
    ev = np.zeros(len(table))
    if "fit_dbic" in table.columns:
        use = evidence_usable(table)
        ev[fitted(table) & ~use] = -cap
        ev[use] = np.clip(-table["fit_dbic"].to_numpy(float)[use] / 2.0, -cap, cap)
    return out + float(weight) * ev


def favours_lens(table: pd.DataFrame, threshold: float = 0.0) -> np.ndarray:
    """Rows the fit keeps: an acceptable lens model (:func:`evidence_usable`) whose evidence favours lensing
    (``fit_dbic < threshold``), and rows not fitted (the fit neither confirms nor rejects them)."""
    use = evidence_usable(table)
    dbic = table["fit_dbic"].to_numpy(float)
    return np.where(use, dbic < threshold, ~fitted(table))
