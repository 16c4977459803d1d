"""False-positive look-alikes: galaxies that fool lens finders, with their own truth class.

Each look-alike is an ordinary (lens-like) galaxy from
:func:`~lensdask.simulate.priors.draw_lens_galaxy` plus one feature that mimics a
lensed arc, drawn at pixel level, convolved with the system's PSF in every band,
and noised like the galaxy (sky + Poisson, with the system's own DES conditions):

``ring``
    A ring galaxy: an elliptical Gaussian annulus of radius 1.0-3.0 arcsec and
    width 0.15-0.35 arcsec, with 1-3 star-forming knots (azimuthal modulation),
    blue colours, i = 20.5-22.5 mag.
``spiral``
    Two logarithmic spiral arms (pitch 12-25 deg) in an exponential disc of scale
    length 0.8-2.0 arcsec around the bulge, blue colours, i = 19.5-21.5 mag.
``merger``
    A close pair: a second red galaxy (Sersic n 1.5-4, R 0.4-1.2 arcsec) 1.5-4.0
    arcsec away, 0-1.5 mag fainter than the first.
``companion``
    A compact blue companion (Gaussian, sigma 0.1-0.3 arcsec) 1.2-3.0 arcsec
    away, i = 21.0-23.0 mag: the commonest mimic of a lensed image.
``edge-on``
    An edge-on disc around the galaxy's bulge: an exponential disc of scale length
    0.6-1.6 arcsec and axis ratio 0.08-0.25 (a thin, curved-looking streak in poor
    seeing), blue-ish colours, i = 19.0-21.0 mag.
``group``
    A compact group: 2-4 more red galaxies (Sersic n 1.5-4, R 0.3-0.9 arcsec)
    1.2-4.5 arcsec from the centre, each 0.3-2.5 mag fainter than the first.

Every look-alike also gets the stamp's scene (field galaxies, satellites, stars;
:mod:`~lensdask.simulate.scene`) when one is given, as every other row does.

Pure numpy apart from the renderer (PSF and noise); no Dask.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from .priors import LENS_COLOURS, SOURCE_COLOURS, band_magnitudes, draw_lens_galaxy, mag_i
from .scene import sersic

if TYPE_CHECKING:
    from .render import Renderer

GROUP_MAX = 4
"""Most extra members of a compact group."""

DISC_COLOURS = {"g-r": (0.5, 1.0), "r-i": (0.2, 0.45), "i-z": (0.05, 0.3)}
"""Uniform colour ranges (mag) of edge-on discs (dusty, redder than star-forming knots)."""

KINDS = ("ring", "spiral", "merger", "companion", "edge-on", "group")
"""Look-alike classes, named as in the review classes (config ``review.classes``)."""

OVERSAMPLE = 3


def _grid(stamp: int, pixel_scale: float):
    """Sub-pixel coordinates (arcsec) of a ``stamp`` x ``stamp`` grid, oversampled."""
    n = stamp * OVERSAMPLE
    c = (np.arange(n) - (n - 1) / 2) * pixel_scale / OVERSAMPLE
    return np.meshgrid(c, c)


def _bin(img: np.ndarray, stamp: int) -> np.ndarray:
    img = img.reshape(stamp, OVERSAMPLE, stamp, OVERSAMPLE).mean(axis=(1, 3))
    total = img.sum()
    return img / total if total > 0 else img


def _rotated(x, y, angle, q=1.0):
    c, s = np.cos(angle), np.sin(angle)
    return (c * x + s * y), (-s * x + c * y) / q


def draw_feature(rng: np.random.Generator, kind: str, bands: Sequence[str]) -> dict:
    """Parameters of one look-alike feature (flat dict; arcsec, deg, mag)."""
    if kind not in KINDS:
        raise ValueError(f"unknown look-alike {kind!r}; known: {KINDS}")
    p = {"fp_angle": float(rng.uniform(0, 2 * np.pi))}
    if kind == "ring":
        p.update(
            fp_radius=rng.uniform(1.0, 3.0),
            fp_width=rng.uniform(0.15, 0.35),
            fp_q=rng.uniform(0.6, 1.0),
            fp_knots=float(rng.integers(1, 4)),
            fp_knot_amp=rng.uniform(0.3, 0.9),
            fp_knot_phase=rng.uniform(0, 2 * np.pi),
        )
        p.update(band_magnitudes(rng, bands, rng.uniform(20.5, 22.5), SOURCE_COLOURS, "mag_fp", "source"))
    elif kind == "spiral":
        p.update(fp_scale=rng.uniform(0.8, 2.0), fp_pitch=np.radians(rng.uniform(12, 25)), fp_q=rng.uniform(0.6, 1.0))
        p.update(band_magnitudes(rng, bands, rng.uniform(19.5, 21.5), SOURCE_COLOURS, "mag_fp", "source"))
    elif kind == "merger":
        p.update(
            fp_offset=rng.uniform(1.5, 4.0),
            fp_R=rng.uniform(0.4, 1.2),
            fp_n=rng.uniform(1.5, 4.0),
            fp_q=rng.uniform(0.5, 1.0),
            fp_dmag=rng.uniform(0.0, 1.5),
        )
    elif kind == "companion":
        p.update(fp_offset=rng.uniform(1.2, 3.0), fp_sigma=rng.uniform(0.1, 0.3))
        p.update(band_magnitudes(rng, bands, rng.uniform(21.0, 23.0), SOURCE_COLOURS, "mag_fp", "source"))
    elif kind == "edge-on":
        p.update(fp_scale=rng.uniform(0.6, 1.6), fp_q=rng.uniform(0.08, 0.25))
        p.update(band_magnitudes(rng, bands, rng.uniform(19.0, 21.0), DISC_COLOURS, "mag_fp", "disc"))
    else:  # group: member k's flux is 10**(-0.4 fp_dmag_k) of the first's; total magnitudes set in render
        m = int(rng.integers(2, GROUP_MAX + 1))
        p["fp_members"] = m
        for k in range(GROUP_MAX):
            on = k < m
            r, a = rng.uniform(1.2, 4.5), rng.uniform(0, 2 * np.pi)
            p.update(
                {
                    f"fp_x{k}": r * np.cos(a) if on else np.nan,
                    f"fp_y{k}": r * np.sin(a) if on else np.nan,
                    f"fp_R{k}": rng.uniform(0.3, 0.9) if on else np.nan,
                    f"fp_n{k}": rng.uniform(1.5, 4.0) if on else np.nan,
                    f"fp_q{k}": rng.uniform(0.5, 1.0) if on else np.nan,
                    f"fp_dmag{k}": rng.uniform(0.3, 2.5) if on else np.nan,
                }
            )
    return {k: float(v) for k, v in p.items()}


def feature_profile(kind: str, p: dict, stamp: int, pixel_scale: float) -> np.ndarray:
    """Unit-flux (stamp, stamp) surface brightness of a feature, before the PSF."""
    x, y = _grid(stamp, pixel_scale)
    if kind == "ring":
        u, v = _rotated(x, y, p["fp_angle"], p["fp_q"])
        r, phi = np.hypot(u, v), np.arctan2(v, u)
        knots = 1 + p["fp_knot_amp"] * np.cos(p["fp_knots"] * phi + p["fp_knot_phase"])
        img = np.exp(-0.5 * ((r - p["fp_radius"]) / p["fp_width"]) ** 2) * knots
    elif kind == "spiral":
        u, v = _rotated(x, y, p["fp_angle"], p["fp_q"])
        r, phi = np.hypot(u, v) + 1e-3, np.arctan2(v, u)
        arms = np.cos(phi - np.log(r / 0.3) / np.tan(p["fp_pitch"])) ** 2  # 2 arms
        img = np.exp(-r / p["fp_scale"]) * arms**4 * (r > 0.4)
    elif kind == "merger":
        dx, dy = p["fp_offset"] * np.cos(p["fp_angle"]), p["fp_offset"] * np.sin(p["fp_angle"])
        u, v = _rotated(x - dx, y - dy, p["fp_angle"] * 1.7, p["fp_q"])
        n = p["fp_n"]
        b = 2 * n - 1 / 3 + 4 / (405 * n)
        img = np.exp(-b * ((np.hypot(u, v) / p["fp_R"]) ** (1 / n) - 1))
    elif kind == "companion":
        dx, dy = p["fp_offset"] * np.cos(p["fp_angle"]), p["fp_offset"] * np.sin(p["fp_angle"])
        img = np.exp(-0.5 * ((x - dx) ** 2 + (y - dy) ** 2) / p["fp_sigma"] ** 2)
    elif kind == "edge-on":
        img = sersic(x, y, 1.678 * p["fp_scale"], 1.0, p["fp_q"], p["fp_angle"])
    else:
        img = np.zeros_like(x)
        for k in range(int(p["fp_members"])):
            one = sersic(
                x - p[f"fp_x{k}"], y - p[f"fp_y{k}"], p[f"fp_R{k}"], p[f"fp_n{k}"], p[f"fp_q{k}"], p["fp_angle"] + k
            )
            img += one / one.sum() * 10 ** (-0.4 * p[f"fp_dmag{k}"])
    return _bin(img, stamp)


def render_lookalike(
    renderer: Renderer, rng: np.random.Generator, kind: str, scene_for=None
) -> tuple[np.ndarray, dict]:
    """One look-alike of ``kind``: (n_bands, stamp, stamp) float32 image (e-/s) and its parameters.

    Parameters
    ----------
    renderer : lensdask.simulate.render.Renderer
        Supplies the DES conditions, PSF, zero points and noise model.
    rng : numpy.random.Generator
        The only source of randomness.
    kind : str
        One of :data:`KINDS`.
    scene_for : callable, optional
        ``scene_for(galaxy_params) -> Scene``: the stamp's neighbours and stars.
    """
    bands = renderer.bands
    galaxy = draw_lens_galaxy(rng, bands)
    galaxy.update(renderer.draw_conditions(rng))
    feature = draw_feature(rng, kind, bands)
    if kind == "merger":
        second = band_magnitudes(rng, bands, mag_i(galaxy) + feature["fp_dmag"], LENS_COLOURS, "mag_fp")
        feature.update(second)
    elif kind == "group":
        # the members' total, from the first member's flux (0.3-2.5 mag fainter than the central galaxy)
        first = mag_i(galaxy) + feature["fp_dmag0"]
        total = first - 2.5 * np.log10(
            sum(
                10 ** (-0.4 * (feature[f"fp_dmag{k}"] - feature["fp_dmag0"])) for k in range(int(feature["fp_members"]))
            )
        )
        feature.update(band_magnitudes(rng, bands, total, LENS_COLOURS, "mag_fp"))
    cand = renderer.candidate(galaxy, scene=None if scene_for is None else scene_for(galaxy))
    unit = feature_profile(kind, feature, renderer.stamp, renderer.pixel_scale)
    image = np.empty((len(bands), renderer.stamp, renderer.stamp), dtype=np.float32)
    noise = rng.standard_normal(image.shape)
    for k, b in enumerate(bands):
        ll = cand.lens_light(b) + cand.scene_light(b)
        feat = cand.conv(b).convolution2d(unit * renderer.magnitude2cps(b, feature[f"mag_fp_{b}"]))
        var = cand.background_rms[b] ** 2 + np.maximum(ll + feat, 0.0) / cand.exposure_time[b]
        image[k] = ll + feat + np.sqrt(var) * noise[k]
    params = {**galaxy, **feature}
    if cand.scene is not None:
        params.update(cand.scene.summary(renderer._zp))
    for b in bands:
        params[f"seeing_{b}"], params[f"sky_{b}"] = cand.seeing[b], cand.sky[b]
    return image, params
