"""Per-stamp normalisation of multi-band cutouts (numpy, float32).

Simulated training sets and real coadds disagree on flux units (counts,
nanomaggies, ADU at different zero points) and on depth. The classifier should
see neither, so each stamp and band is expressed in units of its own background
noise and then compressed with an asinh stretch:

1. ``sigma`` = 1.4826 x MAD of the pixels in a border frame of width
   ``border`` pixels (a robust standard deviation of the sky noise; the centre,
   where the lens and its arcs are, is excluded). ``background`` = median of
   the same pixels.
2. ``x = (image - background) / sigma``, in units of sky noise.
3. ``y = asinh(x / softening)``: linear within a few sigma of the sky, then
   logarithmic, so a bright central galaxy does not swamp faint arcs.

The result does not change when a stamp is multiplied by a positive constant
(a different zero point or unit), nor when a constant sky level is added.

Degenerate stamps never produce NaN or inf from finite input: where the border
MAD is zero (noiseless simulations), the MAD of the whole stamp is used, then
its standard deviation, and for a constant stamp ``sigma = 1`` so the output is
all zeros. Non-finite input pixels stay non-finite (callers flag such rows,
see :func:`lensdask.model.infer.nonfinite_rows`).

The specification dict is stored in the model card and applied identically in
training, evaluation and search.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass

import numpy as np

from .errors import LensdaskError

DEFAULT_NORMALISATION: dict = {"method": "asinh-noise", "softening": 3.0, "border": 4}
"""``method``: ``"asinh-noise"`` or ``"none"``; ``softening``: asinh knee, in units of
the sky noise; ``border``: width of the frame used for the noise estimate, pixels."""

METHODS = ("asinh-noise", "none")
MAD_TO_SIGMA = 1.4826
_CHUNK = 64  # stamps per working block: small enough to stay in cache (large temporaries cost page faults)


def normalisation_spec(spec: dict | None = None) -> dict:
    """``spec`` completed with the defaults and checked; ``None`` gives the defaults.

    Raises
    ------
    LensdaskError
        Unknown method or a non-positive softening / negative border.
    """
    out = dict(DEFAULT_NORMALISATION)
    if spec:
        out.update(spec)
    if out["method"] not in METHODS:
        raise LensdaskError(f"unknown normalisation method {out['method']!r}; known: {', '.join(METHODS)}")
    out["softening"] = float(out["softening"])
    out["border"] = int(out["border"])
    if not out["softening"] > 0:
        raise LensdaskError(f"normalisation softening must be > 0, got {out['softening']}")
    if out["border"] < 0:
        raise LensdaskError(f"normalisation border must be >= 0 pixels, got {out['border']}")
    return out


@functools.lru_cache(maxsize=16)
def _border_index(stamp: int, border: int) -> np.ndarray:
    """Flat indices of the frame of width ``border`` in a (stamp, stamp) image, row-major."""
    mask = np.ones((stamp, stamp), dtype=bool)
    mask[border:-border, border:-border] = False
    return np.flatnonzero(mask)


def border_pixels(x: np.ndarray, border: int) -> np.ndarray:
    """(n, b, k) pixels of the frame of width ``border`` around each (s, s) stamp, C-contiguous.

    ``np.take`` rather than a boolean mask: the mask's result is laid out with the
    pixel axis outermost, and partitioning along a strided axis is ~3x slower.
    """
    n, b, s, _ = x.shape
    if border <= 0 or 2 * border >= s:
        return x.reshape(n, b, s * s)
    return np.take(x.reshape(n, b, s * s), _border_index(s, border), axis=-1)


def _median(a: np.ndarray) -> np.ndarray:
    """``np.median(a, axis=-1)`` in float64, without sorting whole rows.

    One partition around the upper middle element; the lower middle one is the
    maximum of the part before it. Rows holding a NaN give NaN, as ``np.median`` does.
    """
    k = a.shape[-1]
    h = k // 2
    part = np.partition(a, h, axis=-1)
    upper = part[..., h].astype(np.float64)
    if k % 2:
        med = upper
    else:
        med = (part[..., :h].max(axis=-1).astype(np.float64) + upper) / 2.0
    nan = np.isnan(a).any(axis=-1)
    if nan.any():
        med = np.where(nan, np.nan, med)
    return med


def sky_noise(x: np.ndarray, border: int) -> tuple[np.ndarray, np.ndarray]:
    """Sky background (median) and sky noise (1.4826 MAD) of the border frame, each (n, b) float64.

    ``x`` is (n, b, s, s) float32. No fallbacks: a stamp and band whose frame holds a
    NaN gives NaN, a noiseless frame gives sigma 0. The medians pick exact pixel values
    (their mean for an even count); the absolute deviations are taken in float32, like
    the pixels themselves. The store's quantiser measures its step with this too.
    """
    edge = border_pixels(x, border)
    bg = _median(edge)
    sigma = MAD_TO_SIGMA * _median(np.abs(edge - bg[..., None].astype(np.float32)))
    return bg, sigma


def _robust_scale(x: np.ndarray, border: int) -> tuple[np.ndarray, np.ndarray]:
    """Background (median) and noise sigma (1.4826 MAD) of float32 stamps, each (n, b) float64."""
    bg, sigma = sky_noise(x, border)
    bad = ~(sigma > 0)
    if bad.any():  # noiseless border: fall back to the whole stamp (rare: plain np.median)
        return _fallback_scale(x, bg, sigma, bad)
    # NaN input keeps sigma NaN (the row is flagged elsewhere); only finite zeros were replaced
    return bg, sigma


def _fallback_scale(x, bg, sigma, bad):
    """Sigma from the whole stamp where the border's MAD is zero; 1 for a constant stamp."""
    n, b, s, _ = x.shape
    with np.errstate(invalid="ignore", over="ignore"):  # inf pixels: the row is flagged anyway
        flat = x.reshape(n, b, s * s).astype(np.float64)
        med = np.median(flat, axis=-1)
        whole = MAD_TO_SIGMA * np.median(np.abs(flat - med[..., None]), axis=-1)
        sigma = np.where(bad, whole, sigma)
        bad = ~(sigma > 0)
        if bad.any():
            sigma = np.where(bad, flat.std(axis=-1), sigma)
            sigma = np.where(sigma > 0, sigma, 1.0)  # constant stamp -> zeros
    return bg, sigma


def normalise(images: np.ndarray, spec: dict | None = None) -> np.ndarray:
    """Normalise stamps for the classifier.

    Parameters
    ----------
    images : numpy.ndarray
        (n, n_bands, stamp, stamp) pixel values in any flux unit (one unit per
        stamp and band; sky-subtracted or not). Computed in float32: float64
        input is rounded to float32 first, float16 is promoted exactly.
    spec : dict, optional
        Normalisation specification (see :data:`DEFAULT_NORMALISATION`), as
        stored in a model card. ``None`` uses the defaults.

    Returns
    -------
    numpy.ndarray
        float32 array of the same shape: for ``"asinh-noise"``,
        ``asinh((image - background) / (sigma * softening))`` with background and
        sigma (sky noise) estimated per stamp and band from the border frame.
        Finite wherever the input row is finite.
    """
    spec = normalisation_spec(spec)
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != images.shape[-2]:
        raise LensdaskError(f"expected (n, bands, stamp, stamp) images, got shape {images.shape}")
    if spec["method"] == "none":
        return images.astype(np.float32, copy=True)
    out = np.empty(images.shape, dtype=np.float32)
    for start in range(0, images.shape[0], _CHUNK):
        x = images[start : start + _CHUNK]
        if x.dtype != np.float32:
            x = x.astype(np.float32)
        y = out[start : start + _CHUNK]
        bg, sigma = _robust_scale(x, spec["border"])
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            scale = (1.0 / (sigma * spec["softening"])).astype(np.float32)
            np.subtract(x, bg.astype(np.float32)[..., None, None], out=y)  # three passes over the pixels
            np.multiply(y, scale[..., None, None], out=y)
            np.arcsinh(y, out=y)
    return out


def nonfinite_rows(images: np.ndarray) -> np.ndarray:
    """Boolean (n,) mask of the stamps holding any NaN or infinite pixel."""
    images = np.asarray(images)
    if images.shape[0] == 0:
        return np.zeros(0, dtype=bool)
    return ~np.isfinite(images.reshape(images.shape[0], -1)).all(axis=1)


def spec_key(spec: dict | None) -> str:
    """A string naming a normalisation: equal for specifications that normalise alike."""
    return json.dumps(normalisation_spec(spec), sort_keys=True)


@dataclass(frozen=True)
class ModelInputs:
    """A batch of stamps made ready for models, and what was kept out of it.

    ``inputs[i]`` is the (n_finite, bands, stamp, stamp) float32 input of the i-th
    normalisation asked for (those equal share one array); ``bad`` the (n,) mask of rows
    with a non-finite pixel, which no model sees; ``raw`` the (n, bands, stamp, stamp)
    float32 pixels of every row when they were asked for, else None. Nothing here refers
    to a buffer the reader reuses.
    """

    inputs: list
    bad: np.ndarray
    raw: np.ndarray | None = None


def model_inputs(images: np.ndarray, specs, *, keep_raw: bool = False) -> ModelInputs:
    """Normalise the finite rows of a batch of pixels for one or more normalisations.

    Parameters
    ----------
    images : numpy.ndarray
        (n, bands, stamp, stamp) pixel values; may be a buffer the caller overwrites next.
    specs : sequence of dict or None
        Normalisation specifications (model cards' ``normalisation``); equal ones are
        computed once and share their array.
    keep_raw : bool
        Also return a float32 copy of ``images``.
    """
    images = np.asarray(images)
    bad = nonfinite_rows(images)
    good = images[~bad] if bad.any() else images
    done: dict[str, np.ndarray] = {}
    inputs = []
    for spec in specs:
        key = spec_key(spec)
        if key not in done:
            done[key] = normalise(good, spec)
        inputs.append(done[key])
    raw = np.array(images, dtype=np.float32, copy=True) if keep_raw else None
    return ModelInputs(inputs, bad, raw)
