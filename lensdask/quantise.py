"""Noise-bounded quantisation of cutouts: float pixels to small integers and back (numpy only).

A survey stamp is mostly sky noise, and storing that noise to float32 precision
costs ~30 KiB per four-band 45x45 cutout. As FITS tile compression (fpack) does,
each stamp and band is stored as integers on a step that is a fixed fraction of
its own sky noise, with subtractive dithering:

1. ``zero`` = median and ``sigma`` = 1.4826 MAD of the border frame
   (:func:`lensdask.normalise.sky_noise`, the estimate the classifier's
   normalisation uses); ``scale = step * sigma``.
2. ``q = floor((x - zero) / scale + r)``, with ``r`` in [0, 1) from a pseudo-random
   sequence fixed by the store's seed and the row's key (its ``object_id``).
3. Decoding gives ``(q + 0.5 - r) * scale + zero``: the error is uniform in
   [-scale/2, scale/2], independent of the signal, with rms ``step / sqrt(12)``
   sigma (0.095 sigma at the default step 0.33), and it averages out over pixels
   and stamps instead of piling up on the quantisation grid.

NaN pixels are stored as :data:`NAN_CODE` and decode to NaN. A band whose noise
cannot be measured (border all NaN, or constant), that holds infinite pixels, or
whose values would overflow int32 is stored losslessly instead: its int32 words
are the float32 bit patterns, marked by ``scale == 0``. The store flags such rows.

Which ``r`` a pixel gets depends only on (seed, key, band, pixel), so a row
encodes to the same integers whatever tile or position it is written to.

The sky level and noise measured in step 1 are kept too (:func:`quantise_measured`): with them
:func:`normalise_codes` gives the classifier's normalisation of the original pixels straight
from the codes, without decoding them or taking a median at read time.
"""

from __future__ import annotations

import functools
import warnings

import numpy as np

NAN_CODE = np.int32(np.iinfo(np.int32).min)
"""Integer stored for a NaN pixel of a quantised band."""

MAX_CODE = np.iinfo(np.int32).max - 1
"""Largest magnitude a quantised pixel may take; beyond it the band is stored losslessly."""

DITHER_TABLE = 1 << 16
"""Length of the dither sequence; each (row, band) starts at its own offset into it."""

MIN_BORDER_PIXELS = 16
"""Finite border pixels needed to measure the noise of a band that holds NaN."""


@functools.lru_cache(maxsize=8)
def _dither_windows(seed: int, npix: int) -> np.ndarray:
    """(DITHER_TABLE, npix) read-only view: window ``k`` is the dither of a band starting at offset ``k``."""
    table = np.random.default_rng(np.random.SeedSequence([int(seed), 0xD17E])).random(
        DITHER_TABLE + npix - 1, dtype=np.float32
    )
    win = np.lib.stride_tricks.sliding_window_view(table, npix)
    win.flags.writeable = False
    return win


def _mix(z: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser on uint64 arrays (wrapping arithmetic)."""
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def dither_offsets(keys: np.ndarray, n_bands: int, seed: int) -> np.ndarray:
    """(n, n_bands) offsets into the dither sequence for rows with integer ``keys``."""
    k = np.asarray(keys, dtype=np.int64).astype(np.uint64)
    with np.errstate(over="ignore"):
        base = _mix(k * np.uint64(0x9E3779B97F4A7C15) + np.uint64(int(seed) & 0xFFFFFFFFFFFFFFFF))
        z = _mix(base[:, None] + np.arange(1, n_bands + 1, dtype=np.uint64)[None, :])
    return (z % np.uint64(DITHER_TABLE)).astype(np.int64)


def dither(keys: np.ndarray, n_bands: int, npix: int, seed: int) -> np.ndarray:
    """(n, n_bands, npix) float32 dither values in [0, 1) of rows with ``keys``."""
    return _dither_windows(int(seed), int(npix))[dither_offsets(keys, n_bands, seed)]


def measure_noise(x: np.ndarray, border: int) -> tuple[np.ndarray, np.ndarray]:
    """Sky level and noise per stamp and band, (n, b) float64 each, NaN where not measurable.

    Uses :func:`lensdask.normalise.sky_noise`; bands whose border holds NaN
    (edge-padded stamps) are measured on the finite border pixels, if there are at
    least :data:`MIN_BORDER_PIXELS`. A sigma of 0 (a constant border) is returned as NaN.
    """
    from .normalise import MAD_TO_SIGMA, border_pixels, sky_noise

    bg, sigma = sky_noise(x, border)
    redo = np.isnan(sigma) | np.isnan(bg)
    if redo.any():
        edge = border_pixels(x, border).astype(np.float64)[redo]
        edge = np.where(np.isfinite(edge), edge, np.nan)
        enough = np.isfinite(edge).sum(axis=-1) >= MIN_BORDER_PIXELS
        with np.errstate(invalid="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN slices: left NaN, refused below
            b2 = np.nanmedian(edge, axis=-1)
            s2 = MAD_TO_SIGMA * np.nanmedian(np.abs(edge - b2[:, None]), axis=-1)
        bg[redo] = np.where(enough, b2, np.nan)
        sigma[redo] = np.where(enough, s2, np.nan)
    sigma = np.where(sigma > 0, sigma, np.nan)
    return bg, sigma


STEPS_PER_OCTAVE = 16
"""Quantisation steps lie on the grid ``2**(k / 16)`` (flux units): the configured fraction of the
noise is rounded down to it (by 4.2% at most), so that decoded pixels, written again, find their
own step (:func:`_grid_scale_zero`) and give the same integers."""

ZERO_GRID = 1024
"""The offset is a multiple of this many steps: 0 for sky-subtracted stamps, near the sky level otherwise."""

REENCODE_TOLERANCE = 0.05
"""How far from whole steps (in steps) border pixels may lie and still count as already quantised."""


def _grid_scale_zero(x, r, target, bg, border):
    """Step and offset, (n, b) float32 each: ``target`` (flux units) rounded down onto the step grid,
    ``bg`` rounded to :data:`ZERO_GRID` steps.

    If a stamp and band was decoded from this quantisation (same step grid, same dither), its
    border pixels sit on whole steps of its old step, which lies on the grid one step or so from
    the new estimate (decoding added 0.09 sigma of noise): that step is taken again, so the row
    is stored with the same integers and decodes to the same values, bit for bit.
    """
    from .normalise import border_pixels

    with np.errstate(invalid="ignore", divide="ignore"):
        e = np.floor(np.log2(target) * STEPS_PER_OCTAVE)
    ok = np.isfinite(e)
    e = np.where(ok, e, 0.0)
    scale = np.exp2(e / STEPS_PER_OCTAVE).astype(np.float32)
    zero = _zero(bg, scale)
    edge = border_pixels(x, border).astype(np.float64)
    redge = border_pixels(r, border).astype(np.float64)
    for shift in (0, 1, -1, 2, -2):
        cand = np.exp2((e + shift) / STEPS_PER_OCTAVE).astype(np.float32)
        z = _zero(bg, cand)
        with np.errstate(invalid="ignore", divide="ignore"):
            v = (edge - z[..., None]) / cand[..., None] + redge - 0.5
            dev = np.abs(v - np.round(v))
        fits = (
            ok
            & (np.where(np.isfinite(dev), dev, 0.0).max(axis=-1) < REENCODE_TOLERANCE)
            & (np.isfinite(dev).sum(axis=-1) >= MIN_BORDER_PIXELS)
        )
        if fits.any():
            scale = np.where(fits, cand, scale)
            zero = np.where(fits, z, zero)
            ok = ok & ~fits  # found: later candidates leave these alone
            if not ok.any():
                break
    return np.where(np.isfinite(target), scale, np.nan).astype(np.float32), zero.astype(np.float32)


def _zero(bg, scale):
    with np.errstate(invalid="ignore"):
        k = np.round(np.asarray(bg, np.float64) / (ZERO_GRID * np.asarray(scale, np.float64)))
    return (np.where(np.isfinite(k), k, 0.0) * ZERO_GRID * scale).astype(np.float32)


def quantise(
    images: np.ndarray, keys: np.ndarray, *, step: float, seed: int, border: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Quantise stamps: the codes, step and offset of :func:`quantise_measured`, without the sky statistics."""
    return quantise_measured(images, keys, step=step, seed=seed, border=border)[:3]


def quantise_measured(
    images: np.ndarray, keys: np.ndarray, *, step: float, seed: int, border: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Quantise stamps on a step that is a fraction of each stamp and band's sky noise.

    Parameters
    ----------
    images : numpy.ndarray
        (n, b, s, s) pixel values (any flux unit; rounded to float32 first).
    keys : numpy.ndarray
        (n,) int64 per-row keys choosing the dither (the rows' ``object_id``).
    step : float, units of the sky noise sigma
        Quantisation step, rounded down onto the grid :data:`STEPS_PER_OCTAVE`; the rms error is
        at most ``step / sqrt(12)`` sigma.
    seed : int
        Dither seed (stored with the store).
    border : int, pixels
        Width of the border frame the noise is measured on.

    Returns
    -------
    q : numpy.ndarray
        (n, b, s, s) int32 codes.
    scale, zero : numpy.ndarray
        (n, b) float32: step and offset in flux units; ``scale == 0`` marks a band
        stored losslessly (``q`` holds its float32 bits). Pixels decoded from this quantisation
        (same seed and keys) quantise to the same integers, step and offset.
    sky, noise : numpy.ndarray
        (n, b) float32, flux units: the sky level (median) and sky noise (1.4826 MAD) of the
        border frame of the pixels given (:func:`measure_noise`), NaN where not measurable.
        Where the border is finite and not constant they are the background and sigma that
        :func:`lensdask.normalise.normalise` finds for these pixels, so a store can
        normalise its rows straight from the codes (:func:`normalise_codes`).
    """
    x = np.ascontiguousarray(images, dtype=np.float32)
    n, b, s, _ = x.shape
    if n == 0:
        empty = np.zeros((0, b), np.float32)
        return np.zeros(x.shape, np.int32), empty, empty.copy(), empty.copy(), empty.copy()
    bg, sigma = measure_noise(x, border)
    r = dither(keys, b, s * s, seed).reshape(x.shape)
    scale, zero = _grid_scale_zero(x, r, float(step) * sigma, bg, border)
    finite = np.isfinite(x)
    ok = np.isfinite(scale) & (scale > 0) & np.isfinite(zero) & ~np.isinf(x).any(axis=(2, 3))
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        v = np.floor((x.astype(np.float64) - zero[..., None, None]) / scale[..., None, None] + r)
        over = (np.abs(np.where(finite, v, 0.0)) > MAX_CODE).any(axis=(2, 3))
        ok &= ~over
        q = np.where(finite, v, 0.0).astype(np.int32)
    q[~finite] = NAN_CODE
    lossless = ~ok
    if lossless.any():
        q[lossless] = x[lossless].view(np.int32)
        scale[lossless] = 0.0
        zero[lossless] = 0.0
    return q, scale, zero, bg.astype(np.float32), sigma.astype(np.float32)


def dequantise(
    q: np.ndarray, scale: np.ndarray, zero: np.ndarray, keys: np.ndarray, *, seed: int, out: np.ndarray | None = None
) -> np.ndarray:
    """Pixel values of quantised stamps: the inverse of :func:`quantise`, float32.

    Parameters
    ----------
    q : numpy.ndarray
        (n, b, s, s) int32 codes.
    scale, zero : numpy.ndarray
        (n, b) float32, as :func:`quantise` returned them.
    keys : numpy.ndarray
        (n,) the same row keys.
    seed : int
    out : numpy.ndarray, optional
        (n, b, s, s) float32 to write into.
    """
    q = np.asarray(q)
    n, b, s, _ = q.shape
    if out is None:
        out = np.empty(q.shape, dtype=np.float32)
    if n == 0:
        return out
    scale = np.asarray(scale, dtype=np.float32)
    zero = np.asarray(zero, dtype=np.float32)
    r = dither(keys, b, s * s, seed).reshape(q.shape)
    # three passes over the pixels: q - r (int32 -> float32, exact below 2**24 steps), * scale, + offset
    np.subtract(q, r, out=out, dtype=np.float32, casting="unsafe")
    out *= scale[..., None, None]
    out += (zero + np.float32(0.5) * scale)[..., None, None]
    lossless = scale == 0
    if q.min() == NAN_CODE:  # a reduction, no mask, for the usual stamp without NaN
        nan = q == NAN_CODE
        nan[lossless] = False
        out[nan] = np.nan
    if lossless.any():
        out[lossless] = q[lossless].view(np.float32)
    return out


FLOAT32_MAX = float(np.finfo(np.float32).max)

NORMALISE_CHUNK = 32
"""Stamps per working block of :func:`normalise_codes`: the codes, the dither and the output of a
block (three ~1 MiB arrays for 4 bands of 45x45 px) stay in cache between the passes."""


def codes_normalisable(scale: np.ndarray, zero: np.ndarray, sky: np.ndarray, noise: np.ndarray) -> np.ndarray:
    """(n,) bool: rows whose every band :func:`normalise_codes` may normalise straight from the codes.

    A band qualifies when it is quantised (``scale > 0``, finite step and offset), its stored sky
    level is finite and its stored noise finite and > 0, and no code can decode to an infinite
    value. Rows holding a NaN code are found by :func:`normalise_codes` itself. Every other row
    goes through decoding and :func:`lensdask.normalise.normalise`.

    Parameters
    ----------
    scale, zero, sky, noise : numpy.ndarray
        (n, b) float32, flux units: step, offset, sky level and sky noise of each row and band.
    """
    scale = np.asarray(scale, dtype=np.float64)
    zero = np.asarray(zero, dtype=np.float64)
    noise = np.asarray(noise, dtype=np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        ok = (scale > 0) & np.isfinite(scale) & np.isfinite(zero) & np.isfinite(sky) & (noise > 0) & np.isfinite(noise)
        ok &= np.abs(zero) + (MAX_CODE + 2.0) * scale < FLOAT32_MAX
    return ok.all(axis=1)


def normalise_codes(
    q: np.ndarray,
    scale: np.ndarray,
    zero: np.ndarray,
    sky: np.ndarray,
    noise: np.ndarray,
    keys: np.ndarray,
    *,
    seed: int,
    softening: float,
) -> tuple[np.ndarray, np.ndarray]:
    """The classifier's ``asinh-noise`` normalisation of quantised stamps, straight from their codes.

    ``asinh((x - sky) / (noise * softening))`` for the decoded pixels
    ``x = (q - r + 0.5) * scale + zero`` (:func:`dequantise`), written as
    ``asinh((q - r) * a + c)`` with ``a = scale / (noise * softening)`` and
    ``c = (zero + scale / 2 - sky) / (noise * softening)`` per row and band: four passes over a
    block of stamps in cache (codes minus dither, times ``a``, plus ``c``, asinh), no decoded
    pixels and no median at read time. With the sky level and noise the quantiser measured on the
    original pixels, this is :func:`lensdask.normalise.normalise` of those pixels up to the
    quantisation error (rms ``step / sqrt(12) / softening`` in the linear range, normalised units).

    Parameters
    ----------
    q : numpy.ndarray
        (n, b, s, s) int32 codes.
    scale, zero : numpy.ndarray
        (n, b) float32, flux units: step and offset (:func:`quantise`).
    sky, noise : numpy.ndarray
        (n, b) float32, flux units: the sky level and sky noise to normalise with
        (:func:`quantise_measured`).
    keys : numpy.ndarray
        (n,) the rows' dither keys.
    seed : int
        The store's dither seed.
    softening : float, units of the sky noise
        The asinh knee (:data:`lensdask.normalise.DEFAULT_NORMALISATION`).

    Returns
    -------
    y : numpy.ndarray
        (n, b, s, s) float32 normalised stamps. Valid only for the rows
        :func:`codes_normalisable` accepts and ``nan_rows`` does not mark.
    nan_rows : numpy.ndarray
        (n,) bool: rows holding a :data:`NAN_CODE` (a NaN pixel, or in a lossless band the bits
        of -0.0); their ``y`` is not the normalisation.
    """
    q = np.asarray(q)
    n, b, s, _ = q.shape
    npix = s * s
    out = np.empty(q.shape, dtype=np.float32)
    nan_rows = np.zeros(n, dtype=bool)
    if n == 0:
        return out, nan_rows
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):  # rows refused by codes_normalisable
        per_noise = 1.0 / (np.asarray(noise, np.float64) * float(softening))
        scale64 = np.asarray(scale, np.float64)
        a = (scale64 * per_noise).astype(np.float32)[..., None]
        c = ((np.asarray(zero, np.float64) + 0.5 * scale64 - np.asarray(sky, np.float64)) * per_noise).astype(
            np.float32
        )[..., None]
    windows = _dither_windows(int(seed), npix)
    offsets = dither_offsets(keys, b, seed)
    codes = q.reshape(n, b, npix)
    y_all = out.reshape(n, b, npix)
    with np.errstate(invalid="ignore", over="ignore"):
        for start in range(0, n, NORMALISE_CHUNK):
            stop = min(start + NORMALISE_CHUNK, n)
            block = codes[start:stop]
            r = windows[offsets[start:stop]]  # a gather: np.take would copy the whole strided table first
            y = y_all[start:stop]
            np.subtract(block, r, out=y, dtype=np.float32, casting="unsafe")
            y *= a[start:stop]
            y += c[start:stop]
            np.arcsinh(y, out=y)
            if block.min() == NAN_CODE:
                nan_rows[start:stop] = (block == NAN_CODE).any(axis=(1, 2))
    return out, nan_rows
