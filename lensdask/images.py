"""Pictures of cutouts for people: true-colour composites, views that show arcs, single bands, PNG bytes.

One colour function serves the review page, the review app, the notebook widget, the Zooniverse
subjects and the simulation gallery: :func:`colour_composite`. It works on **fluxes**: every band
is multiplied by a fixed scale factor (config ``review.colour.scales``, DES defaults) that is the
same for every stamp, so colour follows flux ratios, not signal-to-noise, and colours can be
compared across a page. Only the overall brightness is set by the sky noise (one number for all
bands, which leaves colours unchanged: Lupton et al. 2004 asinh composites keep colour ratios).

Views (:data:`VIEWS`):

``colour``
    True colour, stretched to show the lens galaxy.
``faint``
    The same colours stretched for faint features (arcs, tidal features): the lens core saturates.
``residual``
    True colour after a smooth model of the central galaxy is taken away in every band: the
    median flux in elliptical annuli (shape from the galaxy's second moments). Arcs, which fill
    little of any annulus, stay; the lens light goes.
``difference``
    A colour-difference image (Gavazzi et al. 2014, RingFinder): a blue band minus a red band,
    the red band first blurred to the blue band's seeing (config ``review.colour.seeing``) and
    scaled so that the central galaxy cancels. Arcs (bluer than the lens) are blue, redder light
    orange; a smooth red lens galaxy disappears.

Pure compute: arrays in, arrays or PNG bytes out (matplotlib's Agg writer; no display needed).
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np

from . import config

VIEWS = ("colour", "faint", "residual", "difference")
"""The views of a candidate, in the order the review page shows them."""

RGB_BANDS = ("i", "r", "g")
"""Bands mapped to red, green and blue when the configuration does not say (reddest first)."""


def _border(x: np.ndarray, border: int = 4) -> np.ndarray:
    edge = np.concatenate([x[:border].ravel(), x[-border:].ravel(), x[:, :border].ravel(), x[:, -border:].ravel()])
    return edge[np.isfinite(edge)]


def _mad(values: np.ndarray) -> float:
    if values.size == 0:
        return 0.0
    return float(1.4826 * np.median(np.abs(values - np.median(values))))


def band_scales(bands: Sequence[str], scales: dict | None = None) -> np.ndarray:
    """Flux multipliers of ``bands``, in their order (config ``review.colour.scales``; 1 for a band not listed)."""
    scales = dict(config.get("review.colour.scales", scales) or {})
    return np.array([float(scales.get(b, 1.0)) for b in bands])


def rgb_bands(bands: Sequence[str], rgb: Sequence[str] | None = None) -> list[str]:
    """The bands shown as red, green, blue: config ``review.colour.rgb`` when all are present, else the reddest
    three."""
    bands = list(bands)
    rgb = list(config.get("review.colour.rgb", rgb) or RGB_BANDS)
    if all(b in bands for b in rgb):
        return rgb
    pick = bands[::-1][:3]
    return pick + [pick[-1]] * (3 - len(pick))


def sky_noise(stamps: np.ndarray, bands: Sequence[str], *, scales: dict | None = None) -> float:
    """Sky noise of the scaled, band-averaged flux, from the stamp border (robust MAD).

    Parameters
    ----------
    stamps : numpy.ndarray
        One (n_bands, s, s) stamp or many (n, n_bands, s, s) in the same flux units.
    bands : sequence of str
        Band names in stamp order.

    Returns
    -------
    float
        The median over stamps of the border MAD of the mean scaled flux of the RGB bands (flux
        units). One number for a whole page gives every stamp the same brightness scale too.
    """
    stamps = np.asarray(stamps, dtype=np.float64)
    if stamps.ndim == 3:
        stamps = stamps[None]
    bands = list(bands)
    s = band_scales(bands, scales)
    idx = [bands.index(b) for b in rgb_bands(bands)]
    mean = np.mean([stamps[:, k] * s[k] for k in idx], axis=0)
    per = [_mad(_border(m)) for m in mean]
    per = [v for v in per if np.isfinite(v) and v > 0]
    if not per:
        return 1.0
    return float(np.median(per))


def _planes(stamp, bands, scales, noise):
    bands = list(bands)
    s = band_scales(bands, scales)
    if noise is None:
        noise = sky_noise(stamp, bands, scales=scales)
    out = []
    for b in rgb_bands(bands):
        k = bands.index(b)
        x = np.nan_to_num(np.asarray(stamp[k], dtype=np.float64), nan=0.0) * s[k]
        out.append(x / noise)
    return out


def colour_composite(
    stamp: np.ndarray,
    bands: Sequence[str],
    *,
    scales: dict | None = None,
    noise: float | None = None,
    Q: float | None = None,
    stretch: float | None = None,
    view: str = "colour",
) -> np.ndarray:
    """A true-colour (s, s, 3) uint8 composite of one cutout, from its fluxes.

    Parameters
    ----------
    stamp : numpy.ndarray
        (n_bands, s, s) fluxes (any unit, the same for every band of the store).
    bands : sequence of str
        Band names in ``stamp`` order; red, green, blue are config ``review.colour.rgb`` (i, r, g).
    scales : dict, optional
        Flux multiplier per band (config ``review.colour.scales``): fixed, so colour means flux ratio.
    noise : float, optional
        Brightness unit, flux units (default :func:`sky_noise` of this stamp; pass one value for a
        page so that brightness compares too). Colours do not depend on it.
    Q, stretch : float, optional
        Asinh softening and linear range (noise units) of
        :func:`astropy.visualization.make_lupton_rgb` (config ``review.colour.Q``/``stretch``, or
        ``faint_Q``/``faint_stretch`` for ``view="faint"``).
    view : {"colour", "faint"}
        True colour for the lens galaxy, or the high-contrast stretch for faint features.
    """
    from astropy.visualization import make_lupton_rgb

    if view not in ("colour", "faint"):
        raise ValueError(f"view must be 'colour' or 'faint', not {view!r}")
    prefix = "" if view == "colour" else "faint_"
    Q = float(config.get(f"review.colour.{prefix}Q", Q))
    stretch = float(config.get(f"review.colour.{prefix}stretch", stretch))
    r, g, b = _planes(stamp, bands, scales, noise)
    with np.errstate(invalid="ignore", divide="ignore"):  # astropy divides by the intensity, 0 on the sky
        return make_lupton_rgb(r, g, b, minimum=0.0, stretch=stretch, Q=Q)


def difference_image(
    stamp: np.ndarray,
    bands: Sequence[str],
    *,
    pair: Sequence[str] | None = None,
    scales: dict | None = None,
    radius: float = 3.0,
) -> tuple[np.ndarray, float]:
    """Colour-difference image ``blue - alpha * red`` in which the central galaxy cancels.

    Parameters
    ----------
    stamp : numpy.ndarray
        (n_bands, s, s) fluxes.
    bands : sequence of str
        Band names in stamp order.
    pair : (str, str), optional
        Blue and red band (config ``review.colour.difference``: g, i).
    radius : float, pixels
        Aperture around the stamp centre in which ``alpha`` is measured (the lens light).

    Returns
    -------
    (numpy.ndarray, float)
        The (s, s) difference in scaled flux units, and ``alpha``, the blue/red flux ratio of the
        central galaxy (0 when the centre has no red flux).
    """
    bands = list(bands)
    blue, red = list(config.get("review.colour.difference", pair))
    if blue not in bands or red not in bands:
        blue, red = bands[0], bands[-1]
    s = band_scales(bands, scales)
    xb = np.nan_to_num(np.asarray(stamp[bands.index(blue)], dtype=np.float64)) * s[bands.index(blue)]
    xr = np.nan_to_num(np.asarray(stamp[bands.index(red)], dtype=np.float64)) * s[bands.index(red)]
    seeing = dict(config.get("review.colour.seeing") or {})
    pixel_scale = float(config.get("survey.pixel_scale"))
    if blue in seeing and red in seeing and seeing[blue] > seeing[red]:
        from scipy.ndimage import gaussian_filter

        # match the red band's PSF to the blue band's (Gaussian seeing), so the lens cancels at every radius
        sigma = np.sqrt(seeing[blue] ** 2 - seeing[red] ** 2) / 2.3548 / pixel_scale
        xr = gaussian_filter(xr, sigma, mode="nearest")
    n = xb.shape[0]
    y, x = np.mgrid[:n, : xb.shape[1]]
    centre = (x - (xb.shape[1] - 1) / 2) ** 2 + (y - (n - 1) / 2) ** 2 <= radius**2
    fr = xr[centre].sum() - np.median(_border(xr)) * centre.sum()
    fb = xb[centre].sum() - np.median(_border(xb)) * centre.sum()
    alpha = float(fb / fr) if fr > 0 and fb > 0 else 0.0
    return xb - alpha * xr, alpha


def lens_model(stamp: np.ndarray, *, radius: float = 6.0, max_q: float = 0.3) -> np.ndarray:
    """A smooth model of the central galaxy in every band: medians in elliptical annuli.

    Parameters
    ----------
    stamp : numpy.ndarray
        (n_bands, s, s) fluxes.
    radius : float, pixels
        Aperture in which the galaxy's shape (axis ratio, position angle) is measured from the
        second moments of the band sum.
    max_q : float
        Smallest axis ratio allowed (a very flat fit would follow an arc or an edge-on neighbour).

    Returns
    -------
    numpy.ndarray
        (n_bands, s, s) model, sky included (the outer annuli hold the sky level).
    """
    x = np.nan_to_num(np.asarray(stamp, dtype=np.float64))
    nb, ny, nx = x.shape
    yy, xx = np.mgrid[:ny, :nx]
    dy, dx = yy - (ny - 1) / 2, xx - (nx - 1) / 2
    total = x.sum(axis=0)
    w = np.clip(total - np.median(_border(total)), 0, None) * (dx**2 + dy**2 <= radius**2)
    if w.sum() > 0:
        mxx, myy, mxy = (w * dx * dx).sum() / w.sum(), (w * dy * dy).sum() / w.sum(), (w * dx * dy).sum() / w.sum()
        theta = 0.5 * np.arctan2(2 * mxy, mxx - myy)
        root = np.sqrt(((mxx - myy) / 2) ** 2 + mxy**2)
        a2, b2 = (mxx + myy) / 2 + root, (mxx + myy) / 2 - root
        q = float(np.clip(np.sqrt(max(b2, 0.0) / a2), max_q, 1.0)) if a2 > 0 else 1.0
    else:
        theta, q = 0.0, 1.0
    u = dx * np.cos(theta) + dy * np.sin(theta)
    v = -dx * np.sin(theta) + dy * np.cos(theta)
    rr = np.sqrt(u**2 + (v / q) ** 2)
    edges = np.concatenate([[0.0, 1.0], np.arange(2.0, rr.max() + 2.0, 1.0)])
    which = np.digitize(rr.ravel(), edges) - 1
    centres = np.array([rr.ravel()[which == k].mean() if (which == k).any() else np.nan for k in range(len(edges))])
    ok = np.isfinite(centres)
    model = np.empty_like(x)
    for b in range(nb):
        flat = x[b].ravel()
        med = np.array([np.median(flat[which == k]) if (which == k).any() else np.nan for k in range(len(edges))])
        model[b] = np.interp(rr, centres[ok], med[ok])
    return model


def residual_view(stamp, bands, *, noise: float | None = None, scales: dict | None = None) -> np.ndarray:
    """True colour of ``stamp`` minus :func:`lens_model` (the faint-feature stretch): arcs without the lens light."""
    if noise is None:
        noise = sky_noise(stamp, bands, scales=scales)
    return colour_composite(
        np.asarray(stamp, dtype=np.float64) - lens_model(stamp), bands, scales=scales, noise=noise, view="faint"
    )


def difference_view(stamp, bands, *, noise: float | None = None, scales: dict | None = None, pair=None) -> np.ndarray:
    """The colour-difference image as an (s, s, 3) uint8 picture: bluer than the lens blue, redder orange.

    ``noise`` (flux units) sets the brightness as in :func:`colour_composite`.
    """
    diff, _ = difference_image(stamp, bands, pair=pair, scales=scales)
    unit = noise if noise is not None else (_mad(_border(diff)) or 1.0)
    v = np.arcsinh(diff / (2.0 * unit)) / np.arcsinh(25.0)
    v = np.clip(v, -1.0, 1.0)
    pos, neg = np.clip(v, 0, 1), np.clip(-v, 0, 1)
    rgb = np.stack([0.35 * pos + 1.0 * neg, 0.65 * pos + 0.55 * neg, 1.0 * pos + 0.1 * neg], axis=-1)
    return (np.clip(rgb, 0, 1) * 255).astype(np.uint8)


def band_image(x: np.ndarray, *, softening: float = 3.0, top: float = 200.0) -> np.ndarray:
    """One band as an (s, s) uint8 grey image with an asinh stretch in units of its sky noise.

    Unlike a percentile clip, faint structure and the galaxy show together: 0 is the sky,
    ``softening`` sky sigmas is the asinh knee and ``top`` sigmas is white.
    """
    x = np.nan_to_num(np.asarray(x, dtype=np.float64))
    edge = _border(x)
    sky = float(np.median(edge)) if edge.size else 0.0
    sig = _mad(edge) or float(np.std(x)) or 1.0
    v = np.arcsinh(np.clip(x - sky, 0, None) / (softening * sig)) / np.arcsinh(top / softening)
    return (np.clip(v, 0, 1) * 255).astype(np.uint8)


def scale_bar(image: np.ndarray, pixel_scale: float, arcsec: float | None = None) -> np.ndarray:
    """Draw a white scale bar ``arcsec`` long (config ``review.colour.scale_bar``) at the bottom left.

    Parameters
    ----------
    image : numpy.ndarray
        (s, s, 3) or (s, s) uint8; a copy is returned.
    pixel_scale : float, arcsec/pixel
    arcsec : float, optional
    """
    arcsec = float(config.get("review.colour.scale_bar", arcsec))
    img = np.array(image, copy=True)
    n = max(1, int(round(arcsec / pixel_scale)))
    y = 2  # row 0 is the bottom: images are shown with origin="lower", as FITS stores them
    if n + 2 < img.shape[1] and y + 1 < img.shape[0]:
        img[y, 2 : 2 + n] = 255
        img[y + 1, 2] = img[y + 1, 1 + n] = 255  # end ticks
    return img


def view_image(stamp, bands, view: str, *, pixel_scale: float | None = None, noise: float | None = None) -> np.ndarray:
    """One view (see :data:`VIEWS`) of a stamp as (s, s, 3) uint8, with a scale bar when ``pixel_scale`` is given."""
    if view in ("colour", "faint"):
        img = colour_composite(stamp, bands, noise=noise, view=view)
    elif view == "residual":
        img = residual_view(stamp, bands, noise=noise)
    elif view == "difference":
        img = difference_view(stamp, bands, noise=noise)
    else:
        raise ValueError(f"unknown view {view!r}; views: {VIEWS}")
    return scale_bar(img, pixel_scale) if pixel_scale else img


def view_caption(view: str, bands: Sequence[str], pixel_scale: float | None = None) -> str:
    """A one-line caption naming the bands of a view (and the scale bar), for pages and plots."""
    bar = f" · bar {float(config.get('review.colour.scale_bar')):g}″" if pixel_scale else ""
    if view == "difference":
        blue, red = list(config.get("review.colour.difference"))
        if blue not in bands or red not in bands:
            blue, red = bands[0], bands[-1]
        return f"{blue} − α·{red}{bar}"
    r, g, b = rgb_bands(bands)
    what = {"colour": "true colour", "faint": "faint features", "residual": "lens light removed"}[view]
    return f"{what} {r}{g}{b}{bar}"


def png_bytes(image: np.ndarray, *, scale: int = 1, cmap: str = "gray") -> bytes:
    """PNG of an RGB (s, s, 3) uint8 image or a single band (s, s), enlarged ``scale`` times.

    Row 0 is at the bottom (``origin="lower"``, as FITS images and matplotlib plots of stamps).
    A float single band is shown with :func:`band_image`; a uint8 one as it is.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib import pyplot as plt

    img = np.asarray(image)
    if img.ndim == 2:
        if img.dtype != np.uint8:
            img = band_image(img)
        img = (plt.get_cmap(cmap)(img.astype(np.float64) / 255.0)[..., :3] * 255).astype(np.uint8)
    if scale > 1:
        img = np.repeat(np.repeat(img, scale, axis=0), scale, axis=1)
    buf = io.BytesIO()
    plt.imsave(buf, img, format="png", origin="lower")
    return buf.getvalue()
