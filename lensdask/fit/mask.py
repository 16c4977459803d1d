"""The pixels a candidate's models are fitted on, and the noise they are fitted with. Pure numpy.

Both models (lens and null) see the same pixels: a disc of ``fit_radius`` about the stamp centre,
less the neighbours. A neighbour is a connected group of pixels detected above ``snr`` (bands
summed in S/N, smoothed by 1 px; peaking above ``peak``) whose flux-weighted centre lies farther than ``mask_radius``
from the stamp centre and which does not hold the centre itself; it is masked, grown by ``grow``
pixels. A bright neighbour whose light joins the galaxy's at ``snr`` is found at a higher threshold
(:data:`LEVELS`), and masked with its wings. Light closer to the centre (arcs, counter-images,
satellites on the Einstein ring) stays in, for both models to explain.
"""

from __future__ import annotations

import numpy as np


def border_noise(images: np.ndarray, border: int = 4) -> np.ndarray:
    """Sky noise sigma of each band: 1.4826 x the MAD of its ``border`` px frame (as the store's
    quantiser measures it). ``images`` (n_bands, n, n); returns (n_bands,)."""
    images = np.asarray(images, dtype=np.float64)
    frame = np.ones(images.shape[1:], dtype=bool)
    frame[border:-border, border:-border] = False
    out = []
    for band in images:
        v = band[frame]
        v = v[np.isfinite(v)]
        out.append(1.4826 * float(np.median(np.abs(v - np.median(v)))) if v.size else np.nan)
    return np.asarray(out)


LEVELS = (1, 4, 16, 64)
"""Detection levels, in units of the threshold ``snr``: a neighbour blended with the galaxy at one level is a
separate source at a higher one."""

WING_GROW = 2
"""px per factor of 2 in level: how far a neighbour's core found above the threshold is grown, within the
light detected at the threshold, to take its wings."""


def fit_mask(
    images: np.ndarray,
    noise: np.ndarray,
    pixel_scale: float,
    *,
    fit_radius: float = 5.0,
    mask_radius: float = 3.5,
    snr: float = 3.0,
    peak: float = 5.0,
    grow: int = 2,
    smooth: float = 1.0,
) -> tuple[np.ndarray, int]:
    """(mask, neighbours): 1 on the pixels both models are fitted on, and how many neighbours were masked.

    Parameters
    ----------
    images : numpy.ndarray
        (n_bands, n, n) sky-subtracted pixels.
    noise : numpy.ndarray
        (n_bands,) sky noise sigma.
    pixel_scale : float, arcsec/px
    fit_radius : float, arcsec
        Pixels farther from the centre are not fitted.
    mask_radius : float, arcsec
        Detected sources whose flux-weighted centre lies beyond are masked as neighbours.
    snr : float
        Detection threshold of the smoothed, band-summed S/N map (per pixel, in its own sigma).
    peak : float
        A detected source is real when its S/N peaks above this (noise alone crosses ``snr`` here and there).
    grow : int, px
        Masked neighbours are grown by this many pixels.
    smooth : float, px
        Gaussian smoothing (sigma) of the S/N map before detection.
    """
    from scipy import ndimage

    images = np.asarray(images, dtype=np.float64)
    nb, n, _ = images.shape
    c = (n - 1) / 2
    yy, xx = np.mgrid[:n, :n]
    r = np.hypot(xx - c, yy - c) * pixel_scale
    inside = r <= fit_radius
    s = (images / np.asarray(noise, dtype=np.float64)[:, None, None]).sum(axis=0) / np.sqrt(nb)
    s = ndimage.gaussian_filter(s, smooth)
    # the smoothed map's own noise: sigma of a unit-variance field smoothed by a Gaussian of `smooth` px
    s_sigma = 1.0 / (2.0 * np.sqrt(np.pi) * smooth)
    detected = s > snr * s_sigma
    centre_px = (int(round(c)), int(round(c)))
    neighbours = np.zeros((n, n), dtype=bool)
    masked = 0
    weight = np.clip(s, 0, None)
    # Neighbours blended with the galaxy at the detection threshold separate at higher ones: every level
    # in LEVELS x snr is searched, and a source found at any of them counts once (by its centroid).
    for level in LEVELS:
        labels, count = ndimage.label(s > snr * level * s_sigma)
        if not count:
            break
        index = np.arange(1, count + 1)
        total = ndimage.sum(weight, labels, index)
        mx = ndimage.sum(weight * xx, labels, index) / np.maximum(total, 1e-12)
        my = ndimage.sum(weight * yy, labels, index) / np.maximum(total, 1e-12)
        far = np.hypot(mx - c, my - c) * pixel_scale > mask_radius
        real = ndimage.maximum(s, labels, index) > peak * s_sigma
        centre = labels[centre_px]
        for k, lab in enumerate(index):
            if not (far[k] and real[k] and lab != centre):
                continue
            pixels = labels == lab
            if (pixels & neighbours).any():
                continue  # found at a lower level already
            if (pixels & inside).any():  # only neighbours reaching into the fitted disc count
                if level > 1:  # a core split from a blend: its wings, within the detected light, go too
                    pixels = ndimage.binary_dilation(pixels, iterations=WING_GROW * int(np.log2(level))) & detected
                neighbours |= pixels
                masked += 1
    if grow and masked:
        neighbours = ndimage.binary_dilation(neighbours, iterations=int(grow))
    return (inside & ~neighbours).astype(np.int8), masked
