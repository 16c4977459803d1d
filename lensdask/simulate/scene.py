"""Scenes: the field galaxies, satellites and stars around every simulated stamp's central galaxy.

A real DES cutout is never one isolated galaxy: it holds faint field galaxies, satellites of the
central galaxy and stars, some of them cut by the stamp edge. A lens finder trained on isolated
galaxies learns that any extra light means "lens". Every simulated stamp, lens or not, therefore
draws its scene from the same distribution (:func:`draw_scene`), from a seed stream of its own, so
extra light carries no information about the label.

What is placed (numbers in the ``simulate.scene`` section of ``lensdask.yaml``, with their sources):

- **field galaxies** from DES-depth i-band number counts, ``dN/dm = density_at_22 * 10**(slope
  (i - 22))`` per arcmin^2 per mag, over the stamp grown by ``margin`` on every side (so some are cut
  by the edge); red (Sersic n 2.5-4.5, early-type colours) and blue (n 0.7-1.5, star-forming colours)
  populations, the red share falling with magnitude; sizes from a size-magnitude relation;
- **satellites** of a modelled central galaxy: Poisson number with a mean that grows with the
  central's luminosity, surface density ~ 1/r between ``radius`` limits, ``dmag`` fainter than it;
- **stars** from high-latitude star counts, over a larger area (``stars.margin``) because a bright
  star outside the stamp still throws its wings onto it; stars brighter than the saturation level
  get a Moffat halo and a saturated, bleeding core.

Pure numpy: the renderer (:mod:`~lensdask.simulate.render`) supplies zero points and the PSF
convolution. Positions are arcsec from the stamp centre (x = RA direction, y = Dec direction),
magnitudes AB, surface brightness in counts (e-/s) per pixel.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .priors import extend_magnitudes

OVERSAMPLE = 3
"""Sub-pixel sampling of the galaxy profiles before they are binned to pixels."""

KIND_FIELD, KIND_SATELLITE, KIND_STAR = 0, 1, 2

RED_COLOURS = {"g-r": (1.0, 1.6), "r-i": (0.35, 0.65), "i-z": (0.15, 0.4)}
"""Uniform colour ranges (mag) of red (early-type) field galaxies and satellites, z ~ 0.2-0.8."""

BLUE_COLOURS = {"g-r": (0.2, 0.8), "r-i": (0.05, 0.45), "i-z": (-0.05, 0.3)}
"""Uniform colour ranges (mag) of blue (star-forming) field galaxies."""

SCENE_KEYS = (
    "scene_n_galaxies",
    "scene_n_satellites",
    "scene_n_stars",
    "scene_brightest_mag_i",
    "scene_brightest_dist",
    "scene_n_saturated",
)
"""Per-row parameters recording what a scene placed (see :meth:`Scene.summary`)."""


@dataclass
class Scene:
    """The objects around one stamp's central galaxy.

    Attributes
    ----------
    kind : numpy.ndarray of int
        :data:`KIND_FIELD`, :data:`KIND_SATELLITE` or :data:`KIND_STAR` per object.
    x, y : numpy.ndarray, arcsec
        Positions from the stamp centre.
    mag : numpy.ndarray
        (n, n_bands) AB magnitudes, in the renderer's band order.
    R, n, q, phi : numpy.ndarray
        Sersic half-light radius along the major axis (arcsec), index, axis ratio, position angle
        (rad); NaN for stars.
    bands : list of str
    half : float, arcsec
        Half the stamp side.
    """

    kind: np.ndarray
    x: np.ndarray
    y: np.ndarray
    mag: np.ndarray
    R: np.ndarray
    n: np.ndarray
    q: np.ndarray
    phi: np.ndarray
    bands: list
    half: float
    saturation: float = np.inf
    wing_fraction: float = 0.0
    wing_fwhm: float = 4.0

    def __len__(self) -> int:
        return len(self.kind)

    def inside(self) -> np.ndarray:
        """Objects whose centre lies on the stamp."""
        return (np.abs(self.x) <= self.half) & (np.abs(self.y) <= self.half)

    def summary(self, zero_points: dict | None = None) -> dict:
        """The ``scene_*`` parameters of :data:`SCENE_KEYS`.

        ``scene_n_galaxies`` counts field galaxies and satellites centred on the stamp,
        ``scene_n_satellites`` the satellites among them, ``scene_n_stars`` the stars on it;
        ``scene_brightest_mag_i`` (mag) and ``scene_brightest_dist`` (arcsec from the centre) are
        those of the brightest object on the stamp (NaN if none); ``scene_n_saturated`` counts the
        saturated stars within the star margin (their halo reaches the stamp).
        """
        on = self.inside()
        gal = on & (self.kind != KIND_STAR)
        out = {
            "scene_n_galaxies": float(gal.sum()),
            "scene_n_satellites": float((on & (self.kind == KIND_SATELLITE)).sum()),
            "scene_n_stars": float((on & (self.kind == KIND_STAR)).sum()),
            "scene_brightest_mag_i": np.nan,
            "scene_brightest_dist": np.nan,
            "scene_n_saturated": float(self._saturated_mask(zero_points).sum()) if zero_points else 0.0,
        }
        if on.any():
            ib = self.bands.index("i") if "i" in self.bands else 0
            k = np.flatnonzero(on)[np.argmin(self.mag[on, ib])]
            out["scene_brightest_mag_i"] = float(self.mag[k, ib])
            out["scene_brightest_dist"] = float(np.hypot(self.x[k], self.y[k]))
        return out

    def _saturated_mask(self, zero_points: dict) -> np.ndarray:
        # a star saturates when its PSF peak (a 1" FWHM Gaussian: 1/13 of the flux per pixel) passes the level
        star = self.kind == KIND_STAR
        if not star.any() or not np.isfinite(self.saturation):
            return np.zeros(len(self), bool)
        peak = np.zeros(len(self))
        for j, b in enumerate(self.bands):
            peak = np.maximum(peak, 10.0 ** (-0.4 * (self.mag[:, j] - zero_points[b])) / 13.0)
        return star & (peak > self.saturation)

    # -- pixels ------------------------------------------------------------------------------
    def profiles(self, stamp: int, pixel_scale: float) -> np.ndarray:
        """(n, stamp, stamp) unit-flux images before the PSF (flux outside the stamp is lost).

        Galaxies are elliptical Sersic profiles sampled :data:`OVERSAMPLE` times per pixel and
        normalised by their analytic total flux; stars are points shared bilinearly between the
        four nearest pixels (stars off the stamp leave zeros here: see :meth:`outside_light`).
        """
        n_obj = len(self)
        out = np.zeros((n_obj, stamp, stamp))
        if n_obj == 0:
            return out
        m = stamp * OVERSAMPLE
        c = (np.arange(m) - (m - 1) / 2) * pixel_scale / OVERSAMPLE
        gx, gy = np.meshgrid(c, c)
        for k in range(n_obj):
            if self.kind[k] == KIND_STAR:
                _deposit_point(
                    out[k], self.x[k] / pixel_scale + (stamp - 1) / 2, self.y[k] / pixel_scale + (stamp - 1) / 2
                )
                continue
            # evaluated within 10 half-light radii (>= 95% of the flux for n <= 4.5): faint galaxies are small
            h = max(10.0 * self.R[k], 1.0) / pixel_scale
            cx, cy = self.x[k] / pixel_scale + (stamp - 1) / 2, self.y[k] / pixel_scale + (stamp - 1) / 2
            x0, x1 = max(int(np.floor(cx - h)), 0), min(int(np.ceil(cx + h)) + 1, stamp)
            y0, y1 = max(int(np.floor(cy - h)), 0), min(int(np.ceil(cy + h)) + 1, stamp)
            if x0 >= x1 or y0 >= y1:
                continue
            sub = (slice(y0 * OVERSAMPLE, y1 * OVERSAMPLE), slice(x0 * OVERSAMPLE, x1 * OVERSAMPLE))
            img = sersic(gx[sub] - self.x[k], gy[sub] - self.y[k], self.R[k], self.n[k], self.q[k], self.phi[k])
            img = img.reshape(y1 - y0, OVERSAMPLE, x1 - x0, OVERSAMPLE).mean(axis=(1, 3))
            out[k, y0:y1, x0:x1] = img * pixel_scale**2 / sersic_total(self.R[k], self.n[k], self.q[k])
        return out

    def outside_light(
        self, band_index: int, counts: np.ndarray, stamp: int, pixel_scale: float, seeing: float
    ) -> np.ndarray:
        """Light on the stamp that the stamp-sized PSF convolution cannot make (counts per pixel).

        Stars centred off the stamp (a Gaussian core of FWHM ``seeing``, arcsec) and the Moffat
        halo (beta 2, FWHM ``wing_fwhm``) of every star, a ``wing_fraction`` of its flux.
        """
        out = np.zeros((stamp, stamp))
        star = self.kind == KIND_STAR
        if not star.any():
            return out
        c = (np.arange(stamp) - (stamp - 1) / 2) * pixel_scale
        gx, gy = np.meshgrid(c, c)
        sig = seeing / (2 * np.sqrt(2 * np.log(2)))
        alpha = self.wing_fwhm / (2 * np.sqrt(2**0.5 - 1))  # Moffat beta = 2
        on = self.inside()
        for k in np.flatnonzero(star):
            r2 = (gx - self.x[k]) ** 2 + (gy - self.y[k]) ** 2
            f = counts[k]
            if self.wing_fraction > 0:
                # unit-flux Moffat with beta 2: (beta - 1) / (pi alpha^2) (1 + r^2/alpha^2)^-beta
                out += f * self.wing_fraction * pixel_scale**2 / (np.pi * alpha**2) * (1 + r2 / alpha**2) ** -2
            if not on[k]:
                out += f * pixel_scale**2 / (2 * np.pi * sig**2) * np.exp(-0.5 * r2 / sig**2)
        return out


def sersic(x, y, R, n, q, phi):
    """Elliptical Sersic surface brightness, 1 at the half-light (major-axis) radius ``R``."""
    c, s = np.cos(phi), np.sin(phi)
    u = c * x + s * y
    v = (-s * x + c * y) / q
    b = sersic_b(n)
    r = np.hypot(u, v) / R
    return np.exp(-b * (r ** (1.0 / n) - 1.0))


def sersic_b(n: float) -> float:
    """b_n of the Sersic profile (Ciotti & Bertin 1999 expansion)."""
    return 2.0 * n - 1.0 / 3.0 + 4.0 / (405.0 * n) + 46.0 / (25515.0 * n * n)


def sersic_total(R: float, n: float, q: float) -> float:
    """Total flux (arcsec^2 x the surface brightness at R) of :func:`sersic`."""
    from scipy.special import gamma

    b = sersic_b(n)
    return float(2.0 * np.pi * q * n * R * R * np.exp(b) * b ** (-2.0 * n) * gamma(2.0 * n))


def _deposit_point(img: np.ndarray, px: float, py: float) -> None:
    s = img.shape[0]
    x0, y0 = int(np.floor(px)), int(np.floor(py))
    fx, fy = px - x0, py - y0
    for dy, wy in ((0, 1 - fy), (1, fy)):
        for dx, wx in ((0, 1 - fx), (1, fx)):
            yy, xx = y0 + dy, x0 + dx
            if 0 <= yy < s and 0 <= xx < s:
                img[yy, xx] += wx * wy


def saturate(image: np.ndarray, level: float) -> np.ndarray:
    """Clip pixels at ``level`` and bleed each column's excess charge up and down the column.

    Parameters
    ----------
    image : numpy.ndarray
        (stamp, stamp) counts per pixel (e-/s).
    level : float
        Saturation level in the same units.
    """
    if not np.isfinite(level) or image.max() <= level:
        return image
    out = np.minimum(image, level)
    s = image.shape[0]
    for col in np.flatnonzero((image > level).any(axis=0)):
        excess = float((image[:, col] - level).clip(0).sum())
        rows = np.flatnonzero(image[:, col] > level)
        lo, hi = rows.min(), rows.max()
        while excess > 0 and (lo > 0 or hi < s - 1):
            for r in (lo - 1, hi + 1):
                if 0 <= r < s and excess > 0:
                    take = min(level - out[r, col], excess)
                    out[r, col] += take
                    excess -= take
            lo, hi = max(lo - 1, 0), min(hi + 1, s - 1)
    return out


# -- drawing ---------------------------------------------------------------------------------


def _colours(rng, n, colours, mag_i, bands, population):
    gr = rng.uniform(*colours["g-r"], n)
    ri = rng.uniform(*colours["r-i"], n)
    iz = rng.uniform(*colours["i-z"], n)
    m = {"i": mag_i, "r": mag_i + ri, "z": mag_i - iz}
    m["g"] = m["r"] + gr
    extend_magnitudes(rng, m, bands, population, n)
    return np.stack([m[b] for b in bands], axis=1) if n else np.zeros((0, len(bands)))


def _star_colours(rng, n, mag_i, bands):
    # high-latitude halo and thick-disc dwarfs: g-r 0.3-1.4, redder stars redder in r-i (stellar locus)
    gr = rng.uniform(0.3, 1.4, n)
    ri = np.clip(0.05 + 0.45 * (gr - 0.3) + rng.normal(0, 0.08, n), -0.1, 1.5)
    iz = np.clip(0.5 * ri + rng.normal(0, 0.04, n), -0.1, 0.8)
    m = {"i": mag_i, "r": mag_i + ri, "z": mag_i - iz}
    m["g"] = m["r"] + gr
    extend_magnitudes(rng, m, bands, "star", n)
    return np.stack([m[b] for b in bands], axis=1) if n else np.zeros((0, len(bands)))


def _power_law_mags(rng, n, slope, lo, hi):
    """``n`` magnitudes in [lo, hi] with density ~ 10**(slope m)."""
    a = slope * np.log(10.0)
    u = rng.uniform(size=n)
    return lo + np.log1p(u * np.expm1(a * (hi - lo))) / a


def _count(density_at, slope, m0, lo, hi):
    """Objects per unit area with dN/dm = density_at * 10**(slope (m - m0)) in [lo, hi]."""
    a = slope * np.log(10.0)
    return density_at * (np.exp(a * (hi - m0)) - np.exp(a * (lo - m0))) / a


def _galaxy_shapes(rng, mag_i, red):
    n = len(mag_i)
    # size-magnitude relation: ~0.5" at i = 21 shrinking by 0.1 dex per mag (Shen et al. 2003, MNRAS 343, 978,
    # at the redshifts DES reaches); red galaxies ~20% smaller at fixed magnitude
    log_r = -0.3 - 0.1 * (mag_i - 21.0) - 0.1 * red + rng.normal(0.0, 0.15, n)
    R = np.clip(10**log_r, 0.12, 3.0)
    sn = np.where(red, rng.uniform(2.5, 4.5, n), rng.uniform(0.7, 1.5, n))
    q = np.where(red, rng.uniform(0.5, 1.0, n), rng.uniform(0.25, 1.0, n))
    phi = rng.uniform(0.0, np.pi, n)
    return R, sn, q, phi


def draw_scene(
    rng: np.random.Generator,
    bands: Sequence[str],
    stamp: int,
    pixel_scale: float,
    cfg: dict,
    central_mag_i: float | None = None,
) -> Scene:
    """Draw the neighbours and stars of one stamp.

    Parameters
    ----------
    rng : numpy.random.Generator
        The scene's own generator (a seed stream apart from the row's label and central galaxy).
    bands : sequence of str
        Bands, in the store's order (of ``g, r, i, z``).
    stamp : int, px
    pixel_scale : float, arcsec/px
    cfg : dict
        The ``simulate.scene`` configuration (see ``lensdask.yaml``).
    central_mag_i : float, mag, optional
        i magnitude of a modelled central galaxy: it gets satellites. None (a real cutout, which
        has its own) places none.

    Returns
    -------
    Scene
    """
    bands = list(bands)
    half = stamp * pixel_scale / 2
    g, s = cfg["galaxies"], cfg["stars"]
    kinds, xs, ys, mags, shapes = [], [], [], [], []

    # field galaxies over the stamp grown by the margin (arcmin^2)
    side = 2 * (half + float(cfg["margin"]))
    lo, hi = g["mag_range"]
    mean = _count(float(g["density_at_22"]), float(g["slope"]), 22.0, lo, hi) * (side / 60.0) ** 2
    nf = int(rng.poisson(mean))
    mi = _power_law_mags(rng, nf, float(g["slope"]), lo, hi)
    f_red = np.clip(float(g["red_fraction_at_20"]) - float(g["red_fraction_slope"]) * (mi - 20.0), 0.1, 0.9)
    red = rng.uniform(size=nf) < f_red
    kinds.append(np.full(nf, KIND_FIELD))
    xs.append(rng.uniform(-side / 2, side / 2, nf))
    ys.append(rng.uniform(-side / 2, side / 2, nf))
    mags.append(
        np.where(
            red[:, None],
            _colours(rng, nf, RED_COLOURS, mi, bands, "red"),
            _colours(rng, nf, BLUE_COLOURS, mi, bands, "blue"),
        )
    )
    shapes.append(_galaxy_shapes(rng, mi, red))

    # satellites of a modelled central galaxy
    sat = cfg["satellites"]
    if central_mag_i is not None and float(sat["mean_at_19"]) > 0:
        lam = float(sat["mean_at_19"]) * 10 ** (-0.4 * float(sat["luminosity_slope"]) * (central_mag_i - 19.0))
        ns = int(rng.poisson(lam))
        (r_lo, r_hi), (dmag_lo, dmag_hi) = sat["radius"], sat["dmag"]
        r = rng.uniform(r_lo, r_hi, ns)  # surface density ~ 1/r: uniform in r
        a = rng.uniform(0, 2 * np.pi, ns)
        mi = central_mag_i + rng.uniform(dmag_lo, dmag_hi, ns)
        red = rng.uniform(size=ns) < float(sat["red_fraction"])
        kinds.append(np.full(ns, KIND_SATELLITE))
        xs.append(r * np.cos(a))
        ys.append(r * np.sin(a))
        mags.append(
            np.where(
                red[:, None],
                _colours(rng, ns, RED_COLOURS, mi, bands, "red"),
                _colours(rng, ns, BLUE_COLOURS, mi, bands, "blue"),
            )
        )
        shapes.append(_galaxy_shapes(rng, mi, red))

    # stars (density per deg^2), over a wider area: off-stamp bright stars still throw wings on it
    side_s = 2 * (half + float(s["margin"]))
    lo, hi = s["mag_range"]
    mean = _count(float(s["density_at_20"]), float(s["slope"]), 20.0, lo, hi) * (side_s / 3600.0) ** 2
    nst = int(rng.poisson(mean))
    mi = _power_law_mags(rng, nst, float(s["slope"]), lo, hi)
    x = rng.uniform(-side_s / 2, side_s / 2, nst)
    y = rng.uniform(-side_s / 2, side_s / 2, nst)
    # faint stars far off the stamp change nothing: keep those on the stamp (+ seeing) or bright enough for wings
    keep = (np.maximum(np.abs(x), np.abs(y)) <= half + 3.0) | (mi < float(s["wing_mag"]))
    nst = int(keep.sum())
    kinds.append(np.full(nst, KIND_STAR))
    xs.append(x[keep])
    ys.append(y[keep])
    mags.append(_star_colours(rng, nst, mi[keep], bands))
    nan = np.full(nst, np.nan)
    shapes.append((nan, nan, nan, nan))

    R, n, q, phi = (np.concatenate([sh[j] for sh in shapes]) for j in range(4))
    return Scene(
        kind=np.concatenate(kinds).astype(np.int8),
        x=np.concatenate(xs),
        y=np.concatenate(ys),
        mag=np.concatenate(mags, axis=0),
        R=R,
        n=n,
        q=q,
        phi=phi,
        bands=bands,
        half=half,
        saturation=float(s["saturation"]),
        wing_fraction=float(s["wing_fraction"]),
        wing_fwhm=float(s["wing_fwhm"]),
    )


def empty_summary() -> dict:
    """``scene_*`` parameters of a stamp without a scene (all NaN)."""
    return {k: np.nan for k in SCENE_KEYS}
