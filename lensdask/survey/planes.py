"""One band of a coadd tile — science image, weight map, mask — read a strip of rows at a time.

Images are opened, never read whole: astropy's ``section`` reads a strip of rows by
seeking, in plain FITS and in tile-compressed FITS (``.fits.fz``: fpack's Rice or gzip
tiles, quantised and dithered floats), where it decompresses only the compression tiles
the strip overlaps. Pixel values equal those of ``hdu.data`` (``tests/survey/test_ingest_des.py``).
Files are opened without memory maps: the pages of a mapped file stay in the process's
resident memory once read, and a Dask nanny counts them against the worker's limit (a
full-size DES tile's four compressed files, 1.2 GB, would count whole).

A pixel is **bad** when its mask has any of the configured bits set (or any bit, when
no bits are given) or its weight is 0. A weight map must be an inverse variance: a
negative or NaN weight means the file or HDU is not one (e.g. the science plane given
as weights), and is an error naming the file and HDU.
"""

from __future__ import annotations

import os
import warnings
from typing import TYPE_CHECKING

import numpy as np

from ..errors import PlaneError, TileError

if TYPE_CHECKING:
    from astropy.io.fits import HDUList


def hdu_spec(value):
    """An HDU given by number (``1``, ``"1"``) or name (``"SCI"``); None stays None."""
    if value is None or isinstance(value, (int, np.integer)):
        return None if value is None else int(value)
    text = str(value).strip()
    if not text:
        return None
    return int(text) if text.lstrip("-").isdigit() else text


def _show_hdu(hdu) -> str:
    return "first image HDU" if hdu is None else f"HDU {hdu!r}" if isinstance(hdu, str) else f"HDU {hdu}"


def wcs_of(header):
    """The celestial WCS of a header, with astropy's header-fixing chatter silenced."""
    from astropy.wcs import WCS, FITSFixedWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FITSFixedWarning)
        return WCS(header).celestial


def has_wcs(header) -> bool:
    return bool(str(header.get("CTYPE1", "")).strip())


class _Plane:
    """One image HDU of an open file: shape, header, dtype, and rows on demand."""

    def __init__(self, hdul, path: str, hdu):
        self.path, self.hdu = path, hdu
        try:
            if hdu is None:
                h = next(h for h in hdul if getattr(h, "is_image", False) and h.header.get("NAXIS", 0) >= 2)
            else:
                h = hdul[hdu]
        except (KeyError, IndexError, StopIteration):
            names = [h.name for h in hdul]
            raise TileError(f"{path}: no {_show_hdu(hdu)} (it has {names})") from None
        if not getattr(h, "is_image", False) or h.header.get("NAXIS", 0) != 2:
            raise TileError(f"{path}[{h.name or hdu}]: not a 2-D image (NAXIS={h.header.get('NAXIS')})")
        self.h = h
        self.name = h.name or str(hdu)
        self.header = h.header
        self.shape = (int(h.header["NAXIS2"]), int(h.header["NAXIS1"]))
        bitpix = int(h.header["BITPIX"])
        scaled = any(k in h.header for k in ("BSCALE", "BZERO")) and not (
            h.header.get("BSCALE", 1) == 1 and isinstance(h.header.get("BZERO", 0), int)
        )
        self.integer = bitpix > 0 and not scaled

    @property
    def where(self) -> str:
        return f"{self.path}[{self.name}]"

    def rows(self, y0: int, y1: int) -> np.ndarray:
        """Pixel rows ``y0:y1`` (0-based, all columns) as a numpy array."""
        try:
            return np.asarray(self.h.section[y0:y1, :])
        except (AttributeError, TypeError, OSError, ValueError):  # e.g. a gzip-compressed whole file
            return np.asarray(self.h.data[y0:y1, :])


class BandPlanes:
    """The science image, weight map and mask of one band of one tile.

    Parameters
    ----------
    image : str
        FITS file of the science image.
    weight, mask : str, optional
        FITS files of the inverse-variance map (0 = no data) and the integer mask;
        may be the same file as ``image`` (DES coadds: HDUs SCI, MSK, WGT).
    hdu, weight_hdu, mask_hdu : int or str, optional
        HDU of each, by number or name; None: the first 2-D image HDU.
    mask_bits : int, optional
        Mask bits that make a pixel bad; None: any non-zero value.

    Raises
    ------
    TileError
        A file or HDU is missing, the planes differ in shape or WCS, or the mask is not integer.
    """

    def __init__(
        self, image, weight=None, mask=None, *, hdu=None, weight_hdu=None, mask_hdu=None, mask_bits: int | None = None
    ):
        from astropy.io import fits

        self._open: dict[str, HDUList] = {}

        def plane(path, h):
            path = os.fspath(path)
            if path not in self._open:
                if not os.path.exists(path):
                    raise TileError(f"{path} does not exist")
                try:
                    self._open[path] = fits.open(path, memmap=False, lazy_load_hdus=True)
                except OSError as exc:
                    raise TileError(f"{path}: not a readable FITS file ({exc})") from None
            return _Plane(self._open[path], path, hdu_spec(h))

        try:
            self.image = plane(image, hdu)
            self.weight = plane(weight, weight_hdu) if weight is not None else None
            self.mask = plane(mask, mask_hdu) if mask is not None else None
            self.mask_bits = None if mask_bits is None else int(mask_bits)
            self.wcs = wcs_of(self.image.header)
            self._check_agree()
        except BaseException:
            self.close()
            raise

    @property
    def shape(self) -> tuple[int, int]:
        return self.image.shape

    def _check_agree(self) -> None:
        if self.mask is not None and not self.mask.integer:
            raise PlaneError(
                f"mask {self.mask.where} holds floating-point values (BITPIX "
                f"{self.mask.header['BITPIX']}), not an integer bit plane: is it the science image?"
            )
        for other, what in ((self.weight, "weight map"), (self.mask, "mask")):
            if other is None:
                continue
            if other.shape != self.image.shape:
                raise TileError(
                    f"{what} {other.where} is {other.shape[1]}x{other.shape[0]} px, the image "
                    f"{self.image.where} {self.image.shape[1]}x{self.image.shape[0]} px"
                )
            if has_wcs(other.header):
                ny, nx = self.image.shape
                px = np.array([[0, 0], [nx - 1, 0], [0, ny - 1], [nx - 1, ny - 1], [nx / 2, ny / 2]], float)
                ra, dec = self.wcs.all_pix2world(px[:, 0], px[:, 1], 0)
                x, y = wcs_of(other.header).all_world2pix(ra, dec, 0)
                off = float(np.nanmax(np.hypot(x - px[:, 0], y - px[:, 1])))
                if not off < 0.01:
                    raise TileError(
                        f"{what} {other.where} has another WCS than the image {self.image.where} "
                        f"(the same sky is {off:.3g} px apart)"
                    )

    def strip(self, y0: int, y1: int) -> tuple[np.ndarray, np.ndarray | None]:
        """Rows ``y0:y1`` of the image (float32) and of the bad-pixel plane (None when neither weight nor mask).

        Raises
        ------
        TileError
            The weight rows hold negative or NaN values.
        """
        data = np.asarray(self.image.rows(y0, y1), dtype=np.float32)
        bad = None
        if self.mask is not None:
            m = self.mask.rows(y0, y1)
            bad = (m != 0) if self.mask_bits is None else ((m.astype(np.int64) & self.mask_bits) != 0)
        if self.weight is not None:
            w = self.weight.rows(y0, y1)
            wrong = ~(w >= 0)
            if wrong.any():
                neg, nan = int((w < 0).sum()), int(np.isnan(w).sum())
                raise PlaneError(
                    f"weight map {self.weight.where} holds {neg} negative and {nan} NaN values in rows "
                    f"{y0}-{y1 - 1}: not an inverse-variance map (the science plane given as weights?)"
                )
            wbad = w == 0
            bad = wbad if bad is None else bad | wbad
        return data, bad

    def check(self, n_strips: int = 3, rows: int = 64) -> None:
        """Read a few strips (top, middle, bottom) to catch a wrong weight map or mask early and cheaply."""
        ny = self.shape[0]
        rows = min(rows, ny)
        for y0 in sorted({0, max(0, ny // 2 - rows // 2), ny - rows})[:n_strips]:
            self.strip(y0, y0 + rows)

    def close(self) -> None:
        for h in self._open.values():
            try:
                h.close()
            except Exception:  # closing a file we only read: nothing to lose
                pass
        self._open.clear()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def read_header(path, hdu=None):
    """The header of an image HDU (a copy), without reading pixels."""
    from astropy.io import fits

    path = os.fspath(path)
    with fits.open(path, memmap=True, lazy_load_hdus=True) as hdul:
        return _Plane(hdul, path, hdu_spec(hdu)).header.copy()
