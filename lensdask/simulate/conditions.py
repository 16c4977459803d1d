"""Observing conditions per band: seeing (PSF FWHM) and sky brightness. Pure: no lenstronomy.

Two sources, chosen by ``lensdask.simulate.conditions``:

- ``des`` (default): a parametric model of DES wide-field conditions, shipped in code:
  ln(seeing) ~ Normal(mu, sd), sky ~ Normal(mean, sd) with correlation ``rho`` between
  ln(seeing) and sky. g, r, i were fitted to ~5,500 joint DES samples per band
  (deeplenstronomy's ``2d{g,r,i}_DES.txt``, in ``../shared/data/des_conditions``);
  z has no such samples: its medians are lenstronomy's DES z settings (0.84" scaled by the
  i-band ratio of sample median to lenstronomy's value, 18.72 mag/arcsec^2) with the
  i-band scatter. Seeing is clipped to 0.6-2.5".
- a folder of joint sample files ``2d<band>_DES.txt`` (two columns: seeing FWHM arcsec,
  sky mag/arcsec^2): one row is drawn per band and system (bands without a file use the
  parametric model).

The bands of one system are drawn independently (DES coadds combine different nights).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping, Sequence

import numpy as np

from ..errors import LensdaskError

DES_CONDITIONS = {
    #       ln-seeing mean, ln-seeing sd, sky mean (mag/arcsec^2), sky sd, corr(ln seeing, sky)
    "g": (0.2290, 0.1545, 21.677, 0.190, 0.045),
    "r": (0.0632, 0.1510, 20.610, 0.219, 0.110),
    "i": (-0.0251, 0.1345, 19.445, 0.283, 0.135),
    "z": (-0.0700, 0.1345, 18.720, 0.283, 0.135),
}
"""Parametric DES conditions per band: (mean, sd) of ln(FWHM/arcsec), (mean, sd) of sky (mag/arcsec^2), rho."""

SEEING_CLIP = (0.6, 2.5)
"""Range (arcsec) the sampled seeing is clipped to."""


class ConditionsError(LensdaskError):
    """Observing-condition samples are missing or malformed."""


@functools.lru_cache(maxsize=8)
def _load_samples(folder: str, band: str) -> np.ndarray | None:
    path = os.path.join(folder, f"2d{band}_DES.txt")
    if not os.path.exists(path):
        return None
    try:
        arr = np.loadtxt(path, comments="#", ndmin=2)
    except ValueError as exc:
        raise ConditionsError(f"cannot read observing conditions {path}: {exc}") from None
    if arr.shape[1] < 2 or len(arr) == 0:
        raise ConditionsError(f"{path} must have two columns (seeing arcsec, sky mag/arcsec^2)")
    return np.ascontiguousarray(arr[:, :2], dtype=float)


def check_source(source: str, bands: Sequence[str]) -> str:
    """Validate ``simulate.conditions``: ``"des"``, ``"fixed"`` or a folder of sample files."""
    if source in ("des", "fixed"):
        return source
    if not os.path.isdir(source):
        raise ConditionsError(
            f"observing-conditions folder {source!r} not found "
            f"(lensdask.simulate.conditions: 'des', 'fixed' or a folder of 2d<band>_DES.txt)"
        )
    if not any(_load_samples(source, b) is not None for b in bands):
        raise ConditionsError(f"no 2d<band>_DES.txt file for bands {list(bands)} in {source!r}")
    return os.path.abspath(source)


def draw_conditions(
    rng: np.random.Generator,
    bands: Sequence[str],
    source: str = "des",
    fixed: Mapping[str, tuple[float, float]] | None = None,
    model: Mapping[str, Sequence[float]] | None = None,
    clip: Mapping[str, tuple[float, float]] | None = None,
) -> dict:
    """Draw one system's conditions.

    Parameters
    ----------
    rng : numpy.random.Generator
    bands : sequence of str
    source : str
        ``"des"`` (parametric), ``"fixed"`` (``fixed[band] = (seeing, sky)``, no randomness)
        or a folder of ``2d<band>_DES.txt`` sample files.
    fixed : mapping, optional
        Per band (seeing arcsec, sky mag/arcsec^2) for ``source="fixed"``.
    model : mapping, optional
        Per band, the parametric model ``(ln-seeing mean, ln-seeing sd, sky mean, sky sd, rho)`` of
        ``source="des"`` (and of bands without samples); default :data:`DES_CONDITIONS`. A survey
        profile's (:meth:`lensdask.survey.profiles.SurveyProfile.conditions`).
    clip : mapping, optional
        Per band, the range (arcsec) the seeing is clipped to; default :data:`SEEING_CLIP` for every band.

    Returns
    -------
    dict
        ``seeing_<band>`` (PSF FWHM, arcsec) and ``sky_<band>`` (mag/arcsec^2).
    """
    out = {}
    for b in bands:
        if source == "fixed":
            if fixed is None:
                raise ConditionsError("conditions source 'fixed' needs fixed= (per band (seeing, sky))")
            seeing, sky = fixed[b]
        else:
            samples = None if source == "des" else _load_samples(source, b)
            if samples is not None:
                seeing, sky = samples[rng.integers(len(samples))]
            else:
                mu, sd, smu, ssd, rho = (DES_CONDITIONS if model is None else model)[b]
                z1, z2 = rng.standard_normal(2)
                seeing = np.exp(mu + sd * z1)
                sky = smu + ssd * (rho * z1 + np.sqrt(1 - rho * rho) * z2)
        out[f"seeing_{b}"] = float(np.clip(seeing, *(SEEING_CLIP if clip is None else clip[b])))
        out[f"sky_{b}"] = float(sky)
    return out


def condition_keys(bands: Sequence[str]) -> list[str]:
    return [*(f"seeing_{b}" for b in bands), *(f"sky_{b}" for b in bands)]
