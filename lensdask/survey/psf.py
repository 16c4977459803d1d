"""The PSF of an ingested tile, per band: from a PSFEx model, the image header, or the tile's stars.

An ingest records each tile's PSF FWHM per band (the store's ``psf_fwhm``, one value for every
row of the tile, and ``psf_origin``), trying in turn:

1. a PSFEx model of the tile and band, when one is given (DES ships one per tile and band):
   its ``PSF_FWHM`` header keyword (image pixels) times the pixel scale, else the FWHM of its
   kernel at the image centre;
2. a FWHM keyword of the image header (config ``ingest.psf.header_keywords``: keyword -> unit,
   ``px`` or ``arcsec``), the first one present with a positive value;
3. the FWHM measured on bright, unsaturated point sources of a strip of the image
   (:func:`star_fwhm`), when enough are found.

Otherwise the FWHM is NaN and the origin "" (unknown). Pure: arrays and headers in, numbers out.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import numpy as np

HEADER_KEYWORDS = {"PSF_FWHM": "px", "FWHM": "px", "SEEING": "arcsec", "PSFSEE": "arcsec"}
"""Header keywords holding a PSF FWHM and their units, tried in order (config ``ingest.psf.header_keywords``)."""

LOCUS_WIDTH = 0.08
"""Half-width (in ln FWHM) of the stellar locus :func:`star_fwhm` takes its stars from."""

FWHM_RANGE = (0.3, 5.0)
"""Plausible FWHM range (arcsec): values outside are not taken from headers or stars."""


def psfex_fwhm(path: str, pixel_scale: float, x: float | None = None, y: float | None = None) -> float:
    """FWHM (arcsec) of a PSFEx model: its ``PSF_FWHM`` keyword (image px) x ``pixel_scale``, or where
    that is missing the FWHM of its kernel at image position (x, y) (default the polynomial's centre).

    Raises
    ------
    lensdask.simulate.inputs.InputError
        The file is missing or is not a PSFEx model.
    """
    from astropy.io import fits

    from ..simulate.inputs import kernel_fwhm, load_psfex

    model = load_psfex(os.fspath(path))
    with fits.open(os.fspath(path)) as h:
        value = h[1].header.get("PSF_FWHM")
    if value is not None and np.isfinite(float(value)) and float(value) > 0:
        return float(value) * float(pixel_scale)
    x = model.polzero[0] if x is None else x
    y = model.polzero[1] if y is None else y
    return kernel_fwhm(model.kernel(x, y, pixel_scale, pixel_scale), pixel_scale)


def header_fwhm(header: Mapping, pixel_scale: float, keywords: Mapping[str, str] | None = None) -> tuple[float, str]:
    """(FWHM arcsec, keyword) from the first of ``keywords`` (:data:`HEADER_KEYWORDS`) that ``header`` holds
    with a value in :data:`FWHM_RANGE`; (NaN, "") when none does."""
    for key, unit in (keywords or HEADER_KEYWORDS).items():
        if unit not in ("px", "arcsec"):
            raise ValueError(f"header keyword {key}: unit {unit!r} is neither 'px' nor 'arcsec'")
        try:
            value = float(header.get(key))  # type: ignore[arg-type]
        except (TypeError, ValueError):
            continue
        fwhm = value * float(pixel_scale) if unit == "px" else value
        if np.isfinite(fwhm) and FWHM_RANGE[0] <= fwhm <= FWHM_RANGE[1]:
            return fwhm, key
    return float("nan"), ""


def star_fwhm(
    image: np.ndarray,
    pixel_scale: float,
    *,
    snr_min: float = 50.0,
    saturation: float | None = None,
    min_stars: int = 5,
    box: int = 15,
    max_sources: int = 200,
) -> tuple[float, int]:
    """FWHM (arcsec) of the point sources of ``image``, and how many were used.

    Peaks (local maxima of a 3x3 box) above ``snr_min`` times the image's noise (1.4826 MAD) and
    below ``saturation`` (default: 0.8 of the image's maximum, so saturated cores are left out),
    the brightest in their ``box`` px cut-out, get a circular Gaussian fitted (centre, sigma,
    amplitude, background; sigma corrected for the pixel's own width, 1/12 px^2). Stars share one
    size and galaxies do not: the FWHM is the median of the sources within :data:`LOCUS_WIDTH` (in
    ln FWHM) of the most crowded size. Returns (NaN, n) with fewer than ``min_stars`` such sources.

    Parameters
    ----------
    image : numpy.ndarray
        (ny, nx) sky-subtracted pixels (NaN allowed).
    pixel_scale : float, arcsec/px
    max_sources : int
        Fit at most this many of the brightest peaks.
    """
    from scipy import ndimage, optimize

    img = np.asarray(image, dtype=np.float64)
    finite = np.isfinite(img)
    if finite.sum() < 100:
        return float("nan"), 0
    sky = float(np.median(img[finite]))
    sigma = 1.4826 * float(np.median(np.abs(img[finite] - sky)))
    if not sigma > 0:
        return float("nan"), 0
    x = np.where(finite, img - sky, 0.0)
    top = 0.8 * float(x.max()) if saturation is None else float(saturation) - sky
    peaks = (x == ndimage.maximum_filter(x, size=3)) & (x > snr_min * sigma) & (x < top)
    h = box // 2
    ys, xs = np.nonzero(peaks)
    keep = (ys >= h) & (ys < x.shape[0] - h) & (xs >= h) & (xs < x.shape[1] - h)
    ys, xs = ys[keep], xs[keep]
    order = np.argsort(-x[ys, xs])[:max_sources]
    yy, xx = np.mgrid[-h : h + 1, -h : h + 1].astype(np.float64)

    def gauss(_, a, x0, y0, s, b):
        return (a * np.exp(-0.5 * ((xx - x0) ** 2 + (yy - y0) ** 2) / s**2) + b).ravel()

    sizes = []
    for yc, xc in zip(ys[order], xs[order]):
        cut = x[yc - h : yc + h + 1, xc - h : xc + h + 1]
        if cut.max() > cut[h, h] or not np.isfinite(img[yc - h : yc + h + 1, xc - h : xc + h + 1]).all():
            continue  # a brighter neighbour (a blend), or missing pixels
        try:
            fit, _ = optimize.curve_fit(gauss, None, cut.ravel(), p0=(cut[h, h], 0.0, 0.0, 1.5, 0.0), maxfev=400)
        except (RuntimeError, optimize.OptimizeWarning):
            continue
        s2 = fit[3] ** 2 - 1.0 / 12.0
        if s2 > 0 and abs(fit[1]) < 2 and abs(fit[2]) < 2:
            sizes.append(2.0 * np.sqrt(2.0 * np.log(2.0) * s2) * float(pixel_scale))
    if len(sizes) < min_stars:
        return float("nan"), len(sizes)
    s = np.asarray(sizes)
    # stars share one size (the stellar locus); galaxies scatter over many
    near = np.abs(np.log(s)[:, None] - np.log(s)[None, :]) <= LOCUS_WIDTH
    mode = s[int(np.argmax(near.sum(axis=1)))]
    stars = s[np.abs(np.log(s / mode)) <= LOCUS_WIDTH]
    if len(stars) < min_stars:
        return float("nan"), len(stars)
    fwhm = float(np.median(stars))
    return (fwhm, len(stars)) if FWHM_RANGE[0] <= fwhm <= FWHM_RANGE[1] else (float("nan"), len(stars))


def tile_psf(
    pixel_scale: float,
    *,
    psfex: str | None = None,
    header: Mapping | None = None,
    strip=None,
    keywords: Mapping[str, str] | None = None,
) -> tuple[float, str]:
    """(FWHM arcsec, origin) of one tile and band, trying a PSFEx file, then the header, then stars.

    Parameters
    ----------
    pixel_scale : float, arcsec/px
    psfex : str, optional
        The tile and band's PSFEx model.
    header : mapping, optional
        The image header.
    strip : callable, optional
        ``strip() -> numpy.ndarray``: pixels to measure stars on (read only if needed).
    keywords : mapping, optional
        Header keywords and units (:data:`HEADER_KEYWORDS`).

    Returns
    -------
    (float, str)
        The FWHM (NaN unknown) and its origin: ``psfex:<file name>``, ``header:<keyword>``,
        ``stars`` or "".
    """
    if psfex is not None:
        return psfex_fwhm(psfex, pixel_scale), f"psfex:{os.path.basename(os.fspath(psfex))}"
    if header is not None:
        fwhm, key = header_fwhm(header, pixel_scale, keywords)
        if key:
            return fwhm, f"header:{key}"
    if strip is not None:
        fwhm, _ = star_fwhm(strip(), pixel_scale)
        if np.isfinite(fwhm):
            return fwhm, "stars"
    return float("nan"), ""
