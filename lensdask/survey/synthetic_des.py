"""A synthetic DES coadd tile in the DES file layout, for tests and benchmarks of ingest.

:func:`write_des_tile` writes ``{tile}_{tag}_{band}.fits.fz`` per band, as DES releases
coadd tiles (:mod:`lensdask.survey.des_tiles`): tile-compressed HDUs ``SCI`` (Rice,
quantised floats with subtractive dither 2, as fpack writes DES coadds), ``MSK``
(int32) and ``WGT`` (inverse variance, zeros kept exactly), one TAN WCS at 0.263"/px,
and a Gold-like catalogue (``COADD_OBJECT_ID``, ``RA``, ``DEC``, ``TILENAME`` as
fixed-width FITS text). The sky holds galaxies (elliptical exponential discs), stars
(some saturated), regions without data (``MSK`` bit 1, SCI interpolated along columns
and WGT copied from the neighbours, as DES's ``coadd_assemble`` does), pixels of zero
weight, and a region with only ``MSK`` bit 2 set (not a bad pixel for DES coadds).

Full size (10,000 x 10,000 px, 24,000 objects) is what ``benchmarks/bench_ingest.py``
ingests; tests use 2,000 x 2,000 px.
"""

from __future__ import annotations

import os
import pathlib

import numpy as np
import pandas as pd

NOISE = {"g": 3.0, "r": 4.0, "i": 5.5, "z": 8.0}
"""Sky noise per band (counts; any other band: 5)."""


def tile_wcs_header(tile: str, size: int, ra0: float, dec0: float, pixel_scale: float = 0.263):
    """A TAN WCS header for a ``size`` x ``size`` tile centred on (ra0, dec0) degrees."""
    from astropy.io import fits

    h = fits.Header()
    h["CTYPE1"], h["CTYPE2"] = "RA---TAN", "DEC--TAN"
    h["CRVAL1"], h["CRVAL2"] = float(ra0), float(dec0)
    h["CRPIX1"], h["CRPIX2"] = (size + 1) / 2.0, (size + 1) / 2.0
    h["CD1_1"], h["CD1_2"] = -pixel_scale / 3600.0, 0.0
    h["CD2_1"], h["CD2_2"] = 0.0, pixel_scale / 3600.0
    h["RADESYS"], h["EQUINOX"] = "ICRS", 2000.0
    h["TILENAME"] = tile
    return h


def _regions(rng, size, n, wmin, wmax, hmin, hmax):
    out = []
    for _ in range(n):
        w, hgt = int(rng.integers(wmin, wmax + 1)), int(rng.integers(hmin, hmax + 1))
        x0, y0 = int(rng.integers(0, size - w)), int(rng.integers(0, size - hgt))
        out.append((slice(y0, y0 + hgt), slice(x0, x0 + w)))
    return out


def write_des_tile(
    directory: str | os.PathLike,
    tile: str = "DES0001-0001",
    *,
    size: int = 2000,
    n_objects: int = 600,
    bands=("g", "r", "i", "z"),
    tag: str = "r4575p01",
    ra0: float = 0.5,
    dec0: float = -0.5,
    star_fraction: float = 0.1,
    seed: int = 0,
    catalog: str | os.PathLike | None = None,
) -> tuple[dict[str, pathlib.Path], pd.DataFrame]:
    """Write one synthetic DES coadd tile (one file per band) and return its files and catalogue.

    Parameters
    ----------
    directory : str or path
        Folder to write into (created).
    tile : str
        Tile name, e.g. ``DES0001-0001``.
    size : int
        Image side, pixels (DES: 10,000).
    n_objects : int
        Catalogue objects (galaxies and stars; DES: ~24,000 per tile).
    bands : sequence of str
    tag : str
        Processing tag in the file names.
    ra0, dec0 : float, degrees
        Tile centre.
    star_fraction : float
        Share of the objects that are stars.
    seed : int
    catalog : str or path, optional
        Also write the catalogue here (FITS, with ``TILENAME`` as fixed-width text).

    Returns
    -------
    files : dict
        ``{band: path}``.
    catalogue : pandas.DataFrame
        ``COADD_OBJECT_ID, RA, DEC, TILENAME, EXTENDED_CLASS`` (0 star, 3 galaxy).
    """
    from astropy.io import fits
    from astropy.wcs import WCS

    directory = pathlib.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    header = tile_wcs_header(tile, size, ra0, dec0)
    wcs = WCS(header)
    # objects everywhere, a few right at the edges (their stamps are edge-padded)
    x = rng.uniform(-0.4, size - 0.6, n_objects)
    y = rng.uniform(-0.4, size - 0.6, n_objects)
    ra, dec = wcs.all_pix2world(x, y, 0)
    star = rng.random(n_objects) < star_fraction
    mag = np.where(star, rng.uniform(15.0, 24.0, n_objects), rng.uniform(19.0, 26.0, n_objects))
    r_e = np.where(star, 0.0, rng.lognormal(np.log(2.5), 0.4, n_objects))  # px
    q = rng.uniform(0.3, 1.0, n_objects)
    pa = rng.uniform(0, np.pi, n_objects)
    colour = rng.normal(0, 0.3, n_objects)
    # no-data regions (MSK 1): bleed-trail columns and patches; zero-weight patches; MSK bit 2 only
    nodata = _regions(rng, size, max(2, size // 400), 3, 8, size // 20, size // 5)
    nodata += _regions(rng, size, max(1, size // 1000), size // 40, size // 20, size // 40, size // 20)
    zero_w = _regions(rng, size, max(1, size // 1000), size // 40, size // 20, size // 40, size // 20)
    bit2 = _regions(rng, size, max(1, size // 1000), size // 40, size // 20, size // 40, size // 20)
    files = {}
    half = 15
    yy, xx = np.mgrid[-half : half + 1, -half : half + 1].astype(np.float32)
    for k, band in enumerate(bands):
        brng = np.random.default_rng([seed, k])
        sigma = NOISE.get(band, 5.0)
        sci = brng.standard_normal((size, size), dtype=np.float32) * np.float32(sigma)
        seeing = 1.0 / 0.263 / 2.355 * (1.1 - 0.05 * k)  # gaussian PSF sigma, px
        flux = 10 ** (-0.4 * (mag + colour * (k - 1.5) - 30.0))  # zero point 30, as DES coadds
        for i in range(n_objects):
            cx, cy = int(np.floor(x[i] + 0.5)), int(np.floor(y[i] + 0.5))
            dx, dy = xx - (x[i] - cx), yy - (y[i] - cy)
            if star[i]:
                prof = np.exp(-0.5 * (dx * dx + dy * dy) / seeing**2)
            else:
                c, s = np.cos(pa[i]), np.sin(pa[i])
                u, v = c * dx + s * dy, (-s * dx + c * dy) / q[i]
                rr = np.sqrt(u * u + v * v + seeing**2)
                prof = np.exp(-1.678 * rr / r_e[i])
            prof *= flux[i] / prof.sum()
            y0, y1, x0, x1 = cy - half, cy + half + 1, cx - half, cx + half + 1
            sy0, sx0 = max(0, -y0), max(0, -x0)
            sy1, sx1 = prof.shape[0] - max(0, y1 - size), prof.shape[1] - max(0, x1 - size)
            sci[max(0, y0) : min(size, y1), max(0, x0) : min(size, x1)] += prof[sy0:sy1, sx0:sx1]
        np.minimum(sci, 40000.0, out=sci)  # saturated stars
        wgt = np.full((size, size), 1.0 / sigma**2, dtype=np.float32)
        wgt *= (1.0 + 0.2 * np.sin(np.arange(size, dtype=np.float32) / size * 6.0))[None, :]
        msk = np.zeros((size, size), dtype=np.int32)
        for sl in nodata:  # as coadd_assemble: MSK 1, SCI interpolated along columns, WGT from the neighbours
            msk[sl] |= 1
            top, bot = max(sl[0].start - 1, 0), min(sl[0].stop, size - 1)
            sci[sl] = 0.5 * (sci[top, sl[1]] + sci[bot, sl[1]])[None, :]
        for sl in zero_w:
            wgt[sl] = 0.0
        for sl in bit2:
            msk[sl] |= 2
        hdr = header.copy()
        hdr["BAND"] = band
        hdus = fits.HDUList(
            [
                fits.PrimaryHDU(),
                fits.CompImageHDU(
                    sci, header=hdr, name="SCI", compression_type="RICE_1", quantize_level=16, quantize_method=2
                ),
                fits.CompImageHDU(msk, header=header.copy(), name="MSK", compression_type="RICE_1"),
                fits.CompImageHDU(
                    wgt,
                    header=header.copy(),
                    name="WGT",
                    compression_type="RICE_1",
                    quantize_level=16,
                    quantize_method=2,
                ),
            ]
        )
        path = directory / f"{tile}_{tag}_{band}.fits.fz"
        hdus.writeto(path, overwrite=True)
        files[band] = path
        del sci, wgt, msk, hdus
    cat = pd.DataFrame(
        {
            "COADD_OBJECT_ID": (10**9 + seed * 10**6 + np.arange(n_objects)).astype(np.int64),
            "RA": ra,
            "DEC": dec,
            "TILENAME": tile,
            "EXTENDED_CLASS": np.where(star, 0, 3).astype(np.int16),
        }
    )
    if catalog is not None:
        write_catalog(cat, catalog)
    return files, cat


def write_catalog(cat: pd.DataFrame, path: str | os.PathLike) -> pathlib.Path:
    """Write a catalogue as DES does: FITS, text columns fixed-width bytes."""
    from astropy.table import Table

    t = Table.from_pandas(cat)
    for c in t.colnames:
        if t[c].dtype.kind in ("O", "U"):
            t[c] = np.char.encode(np.asarray(t[c], dtype=str), "ascii")
    t.write(path, overwrite=True)
    return pathlib.Path(path)
