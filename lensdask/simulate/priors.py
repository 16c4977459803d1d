"""Priors of the simulated lens systems: a numpy Generator in, a flat dict of floats out.

Pure: no lenstronomy, no dask. Every parameter of one system lives in one flat
``dict[str, float]`` so it can go straight into a row of the store's ``params``.

Units and conventions
---------------------
- Angles on the sky are in arcsec, relative to the stamp centre (``x`` = RA
  direction, ``y`` = Dec direction, lenstronomy's convention).
- Ellipticities ``e1``, ``e2`` are lenstronomy's: ``e = (1 - q) / (1 + q)``,
  ``e1 = e cos 2phi``, ``e2 = e sin 2phi`` with axis ratio ``q`` and position angle
  ``phi`` (radians, from the x axis).
- Magnitudes are apparent AB magnitudes, total (intrinsic, unlensed for the source).

Keys of :func:`draw_lens_galaxy`::

    lens_x, lens_y              arcsec    centre of the lens light (and mass)
    lens_R_sersic               arcsec    half-light radius along the major axis
    lens_n_sersic                         Sersic index
    lens_e1, lens_e2                      light ellipticity
    mag_lens_<band>             mag       total magnitude per band

Keys of :func:`draw_lensed_source`::

    theta_E                     arcsec    Einstein radius of the SIE
    mass_e1, mass_e2                      SIE ellipticity (aligned with the light)
    gamma1, gamma2                        external shear components
    source_x, source_y          arcsec    source position in the source plane
    source_R_sersic             arcsec    source half-light radius
    source_n_sersic                       source Sersic index
    source_e1, source_e2                  source ellipticity
    mag_source_<band>           mag       intrinsic (unlensed) total magnitude per band
    source_index                          row of the COSMOS catalogue (NaN: Sersic source)
    source_pixel_scale          arcsec    COSMOS stamp pixel scale after resizing (NaN: Sersic)
    source_angle                rad       rotation of the COSMOS stamp (NaN: Sersic)

Keys of :func:`draw_redshifts` (SIS Einstein radius from a velocity dispersion)::

    sigma_v                     km/s      velocity dispersion of the lens
    z_lens, z_source                      redshifts
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

# Colours of red early-type galaxies at z ~ 0.3-0.6 in DES filters (g-r, r-i, i-z), uniform ranges.
LENS_COLOURS = {"g-r": (1.2, 1.6), "r-i": (0.4, 0.6), "i-z": (0.2, 0.35)}
"""Uniform ranges (mag) of the lens galaxy colours."""

SOURCE_COLOURS = {"g-r": (0.0, 0.5), "r-i": (0.0, 0.3), "i-z": (-0.05, 0.2)}
"""Uniform ranges (mag) of the colours of the blue star-forming source galaxies (z ~ 1-2)."""

LENS_MAG_I = (17.5, 20.5)
"""Uniform range of the lens galaxy i-band magnitude (mag)."""

SOURCE_MAG_I = (21.0, 26.0)
"""Range of the source i-band (intrinsic, unlensed) magnitude (mag), drawn with the density of
galaxy number counts, dN/dm ~ 10**(SOURCE_COUNT_SLOPE m): most sources are faint, so many systems
sit near the DES detection limit and the arc S/N constraint bites."""

SOURCE_COUNT_SLOPE = 0.3
"""Slope (dex per mag) of the source number counts used for the magnitude prior."""

Z_LENS = (0.2, 0.7)
"""Uniform range of the lens redshift (DES lens candidates)."""

Z_SOURCE = (1.0, 3.0)
"""Uniform range of the source redshift."""

SIGMA_V = (250.0, 35.0, 170.0, 380.0)
"""Velocity dispersion prior (km/s) when the lens galaxy has none: Normal(250, 35) clipped to 170-380
(massive early-type galaxies, the bulk of galaxy-scale lenses)."""

COSMOS_SIZE_FACTOR = (0.5, 1.0)
"""COSMOS stamps (z ~ 0.3-1) are shrunk by this uniform factor to stand in for z ~ 1-3 sources."""

THETA_E_RANGE = (0.8, 3.0)
"""Default Einstein radius range (arcsec); :mod:`lensdask.simulate.run` passes the configured one."""

SUPPORTED_BANDS = ("g", "r", "i", "z")
"""The DES bands, whose magnitudes every draw makes (from i and the g-r, r-i, i-z colours)."""

EXTRA_BANDS = ("u", "y", "VIS")
"""Bands of other survey profiles (:mod:`lensdask.survey.profiles`): u and y from a u-g and a z-y colour
drawn after the DES colours (only when asked for, so DES draws stay the same), Euclid's broad VIS from the
r, i and z fluxes (no draw)."""

EXTRA_COLOURS = {
    # Rough uniform ranges (mag) of the colours outside DES's filters, per population: red early types at
    # z ~ 0.2-0.8 are ~1.5-2.3 in u-g (SDSS red sequence) and ~0.1-0.3 in z-y; star-forming galaxies at z ~ 1-3
    # are flat in f_nu, within a few tenths of 0 (e.g. Ivezic et al. 2019 colour-colour plots)
    "lens": {"u-g": (1.5, 2.3), "z-y": (0.1, 0.3)},
    "source": {"u-g": (0.0, 0.6), "z-y": (-0.1, 0.15)},
    "red": {"u-g": (1.4, 2.3), "z-y": (0.05, 0.3)},
    "blue": {"u-g": (0.2, 1.0), "z-y": (-0.1, 0.2)},
    "disc": {"u-g": (0.8, 1.6), "z-y": (0.0, 0.25)},
    "star": {"u-g": (0.7, 2.5), "z-y": (0.0, 0.3)},
}
"""u-g and z-y colour ranges (mag) of each population, for profiles with u or y bands."""

ALL_BANDS = SUPPORTED_BANDS + EXTRA_BANDS


def _phi_q_to_e(phi: float, q: float) -> tuple[float, float]:
    e = (1.0 - q) / (1.0 + q)
    return float(e * np.cos(2 * phi)), float(e * np.sin(2 * phi))


def _e_to_phi_q(e1: float, e2: float) -> tuple[float, float]:
    e = min(float(np.hypot(e1, e2)), 0.999)
    return float(0.5 * np.arctan2(e2, e1)), (1.0 - e) / (1.0 + e)


def extend_magnitudes(rng: np.random.Generator, m: dict, bands: Sequence[str], population: str, n=None) -> dict:
    """Add the magnitudes of :data:`EXTRA_BANDS` in ``bands`` to ``m`` (g, r, i, z; floats or arrays of ``n``).

    u = g + (u-g), y = z - (z-y), colours uniform in :data:`EXTRA_COLOURS` ``[population]``, drawn with
    ``rng`` in that order and only for the bands asked for; VIS = the AB magnitude of the mean r, i, z flux
    (the VIS filter spans about 550-900 nm). Bands outside :data:`ALL_BANDS` are refused.

    Raises
    ------
    ValueError
        A band without a colour prior.
    """
    unknown = [b for b in bands if b not in m and b not in EXTRA_BANDS]
    if unknown:
        raise ValueError(f"band {unknown[0]!r} has no colour prior; supported bands are {ALL_BANDS}")
    colours = EXTRA_COLOURS[population]
    if "u" in bands:
        m["u"] = m["g"] + rng.uniform(*colours["u-g"], n)
    if "y" in bands:
        m["y"] = m["z"] - rng.uniform(*colours["z-y"], n)
    if "VIS" in bands:
        flux = sum(10.0 ** (-0.4 * np.asarray(m[b])) for b in ("r", "i", "z")) / 3.0
        m["VIS"] = -2.5 * np.log10(flux)
    return m


def mag_i(params: dict, prefix: str = "mag_lens") -> float:
    """The i magnitude of ``params`` (``<prefix>_i``), else its VIS magnitude (Euclid: no i band), else NaN."""
    return float(params.get(f"{prefix}_i", params.get(f"{prefix}_VIS", np.nan)))


def band_magnitudes(
    rng: np.random.Generator, bands: Sequence[str], mag_i: float, colours: dict, prefix: str, population: str = "lens"
) -> dict:
    """Per-band magnitudes from an i-band magnitude and colours drawn in ``colours`` (mag).

    Bands other than g, r, i, z come from :func:`extend_magnitudes` with ``population``'s colours.
    """
    gr = rng.uniform(*colours["g-r"])
    ri = rng.uniform(*colours["r-i"])
    iz = rng.uniform(*colours["i-z"])
    m = {"i": mag_i, "r": mag_i + ri, "z": mag_i - iz}
    m["g"] = m["r"] + gr
    extend_magnitudes(rng, m, bands, population)
    return {f"{prefix}_{b}": float(m[b]) for b in bands}


def draw_lens_galaxy(rng: np.random.Generator, bands: Sequence[str] = SUPPORTED_BANDS) -> dict:
    """Draw a DES-like red early-type (lens) galaxy.

    Priors (all independent unless stated):

    - centre ``lens_x``, ``lens_y`` ~ Normal(0, 0.05) arcsec (a fifth of a pixel):
      cutouts are centred on the detected galaxy;
    - ``mag_lens_i`` ~ Uniform(17.5, 20.5) mag; colours uniform in
      :data:`LENS_COLOURS` (red sequence at z ~ 0.3-0.6);
    - ``lens_R_sersic`` = 10**Normal(log10(1.0) - 0.2 (mag_i - 19), 0.12) arcsec,
      clipped to 0.3-3.0 arcsec: brighter galaxies are larger (~0.5-2" at these depths);
    - ``lens_n_sersic`` ~ Uniform(2.5, 5.5) (de Vaucouleurs-like);
    - axis ratio q ~ Uniform(0.55, 1.0), position angle uniform.

    Parameters
    ----------
    rng : numpy.random.Generator
        The only source of randomness.
    bands : sequence of str
        Bands to give magnitudes in (of ``g, r, i, z``).

    Returns
    -------
    dict
        Flat ``{name: float}`` (keys and units in the module docstring).
    """
    mag_i = rng.uniform(*LENS_MAG_I)
    out = band_magnitudes(rng, bands, mag_i, LENS_COLOURS, "mag_lens")
    log_r = np.log10(1.0) - 0.2 * (mag_i - 19.0) + rng.normal(0.0, 0.12)
    phi = rng.uniform(0.0, np.pi)
    q = rng.uniform(0.55, 1.0)
    e1, e2 = _phi_q_to_e(phi, q)
    out.update(
        lens_x=float(rng.normal(0.0, 0.05)),
        lens_y=float(rng.normal(0.0, 0.05)),
        lens_R_sersic=float(np.clip(10**log_r, 0.3, 3.0)),
        lens_n_sersic=float(rng.uniform(2.5, 5.5)),
        lens_e1=e1,
        lens_e2=e2,
    )
    return out


def draw_lensed_source(
    rng: np.random.Generator,
    bands: Sequence[str] = SUPPORTED_BANDS,
    *,
    lens: dict | None = None,
    theta_E_range: tuple[float, float] = THETA_E_RANGE,
    theta_E: float | None = None,
    cosmos=None,
) -> dict:
    """Draw an SIE + external shear deflector and a background Sersic source.

    Priors:

    - ``theta_E`` ~ Uniform(theta_E_range) arcsec, unless given (SIS from sigma_v, :func:`draw_redshifts`);
    - mass axis ratio q_m ~ Uniform(0.5, 1.0); position angle that of the light
      (``lens``) plus Normal(0, 10 deg) scatter, uniform without ``lens``;
      the mass is centred on the light;
    - external shear: amplitude ~ Uniform(0, 0.1), angle uniform;
    - source position uniform in a disc of radius 0.7 ``theta_E`` around the lens
      centre, so the source lies near the caustics and is strongly lensed;
    - ``source_R_sersic`` ~ Uniform(0.1, 0.6) arcsec, ``source_n_sersic`` ~ Uniform(0.7, 2.5),
      q ~ Uniform(0.4, 1.0), position angle uniform;
    - ``mag_source_i`` in 21-26 mag (intrinsic) with number-count density (:func:`draw_source_mag`), colours uniform in
      :data:`SOURCE_COLOURS` (blue, star-forming).

    Parameters
    ----------
    rng : numpy.random.Generator
        The only source of randomness.
    bands : sequence of str
        Bands to give source magnitudes in.
    lens : dict, optional
        Output of :func:`draw_lens_galaxy`: the mass is centred on and aligned with it.
    theta_E_range : (float, float), arcsec
        Einstein radius range.
    theta_E : float, arcsec, optional
        A given Einstein radius (e.g. from :func:`draw_redshifts`), instead of the range.
    cosmos : CosmosSources, optional
        Real COSMOS galaxies: the source is one of them (uniform), rotated uniformly and shrunk
        by :data:`COSMOS_SIZE_FACTOR`; the Sersic keys are then NaN.

    Returns
    -------
    dict
        Flat ``{name: float}`` (keys and units in the module docstring).
    """
    cx = lens["lens_x"] if lens is not None else 0.0
    cy = lens["lens_y"] if lens is not None else 0.0
    theta_E = rng.uniform(*theta_E_range) if theta_E is None else float(theta_E)
    if lens is not None:
        phi_l, _ = _e_to_phi_q(lens["lens_e1"], lens["lens_e2"])
        phi_m = phi_l + rng.normal(0.0, np.deg2rad(10.0))
    else:
        phi_m = rng.uniform(0.0, np.pi)
    q_m = rng.uniform(0.5, 1.0)
    me1, me2 = _phi_q_to_e(phi_m, q_m)
    g = rng.uniform(0.0, 0.1)
    phi_g = rng.uniform(0.0, np.pi)
    r = 0.7 * theta_E * np.sqrt(rng.uniform())
    a = rng.uniform(0.0, 2 * np.pi)
    phi_s = rng.uniform(0.0, np.pi)
    q_s = rng.uniform(0.4, 1.0)
    se1, se2 = _phi_q_to_e(phi_s, q_s)
    out = dict(
        theta_E=float(theta_E),
        mass_e1=me1,
        mass_e2=me2,
        gamma1=float(g * np.cos(2 * phi_g)),
        gamma2=float(g * np.sin(2 * phi_g)),
        source_x=float(cx + r * np.cos(a)),
        source_y=float(cy + r * np.sin(a)),
        source_R_sersic=float(rng.uniform(0.1, 0.6)),
        source_n_sersic=float(rng.uniform(0.7, 2.5)),
        source_e1=se1,
        source_e2=se2,
    )
    out.update(band_magnitudes(rng, bands, draw_source_mag(rng), SOURCE_COLOURS, "mag_source", "source"))
    if cosmos is not None:
        k = int(rng.integers(len(cosmos)))
        out.update(
            source_index=float(k),
            source_pixel_scale=float(cosmos.pixel_scale[k] * rng.uniform(*COSMOS_SIZE_FACTOR)),
            source_angle=float(rng.uniform(0.0, 2 * np.pi)),
            source_R_sersic=np.nan,
            source_n_sersic=np.nan,
            source_e1=np.nan,
            source_e2=np.nan,
        )
    else:
        out.update(source_index=np.nan, source_pixel_scale=np.nan, source_angle=np.nan)
    return out


def draw_source_mag(rng: np.random.Generator) -> float:
    """Intrinsic source i magnitude in :data:`SOURCE_MAG_I`, density ~ 10**(SOURCE_COUNT_SLOPE m)."""
    a = SOURCE_COUNT_SLOPE * np.log(10.0)
    lo, hi = SOURCE_MAG_I
    u = rng.uniform()
    return float(lo + np.log1p(u * np.expm1(a * (hi - lo))) / a)


def draw_redshifts(rng: np.random.Generator, sigma_v: float | None = None) -> dict:
    """Lens and source redshifts, and a velocity dispersion if none is given.

    ``z_lens`` ~ Uniform(:data:`Z_LENS`), ``z_source`` ~ Uniform(:data:`Z_SOURCE`) (above
    ``z_lens``), ``sigma_v`` (km/s) ~ Uniform(:data:`SIGMA_V`) unless given (a real lens galaxy's).
    """
    z_lens = rng.uniform(*Z_LENS)
    z_source = rng.uniform(max(Z_SOURCE[0], z_lens + 0.2), Z_SOURCE[1])
    if sigma_v is None or not np.isfinite(sigma_v):
        sv = float(np.clip(rng.normal(SIGMA_V[0], SIGMA_V[1]), SIGMA_V[2], SIGMA_V[3]))
    else:
        sv = float(sigma_v)
    return {"sigma_v": float(sv), "z_lens": float(z_lens), "z_source": float(z_source)}


def lens_galaxy_keys(bands: Sequence[str]) -> list[str]:
    """Names of the parameters :func:`draw_lens_galaxy` returns."""
    return [
        "lens_x",
        "lens_y",
        "lens_R_sersic",
        "lens_n_sersic",
        "lens_e1",
        "lens_e2",
        *(f"mag_lens_{b}" for b in bands),
    ]


def lensed_source_keys(bands: Sequence[str]) -> list[str]:
    """Names of the parameters :func:`draw_lensed_source` returns."""
    return [
        "theta_E",
        "mass_e1",
        "mass_e2",
        "gamma1",
        "gamma2",
        "source_x",
        "source_y",
        "source_R_sersic",
        "source_n_sersic",
        "source_e1",
        "source_e2",
        *(f"mag_source_{b}" for b in bands),
        "source_index",
        "source_pixel_scale",
        "source_angle",
    ]
