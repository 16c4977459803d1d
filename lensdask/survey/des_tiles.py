"""The file layout of DES coadd tiles, as DES releases them (DR1, DR2, Y6).

Each band of a tile is one tile-compressed FITS file ``{tile}_{tag}_{band}.fits.fz``,
e.g. ``DES0001-0001_r4575p01_g.fits.fz``, where the processing tag (``r4575p01``)
varies from tile to tile. The file holds three image HDUs:

``SCI``
    the science image (fpack Rice, quantised floats with subtractive dither);
``MSK``
    an integer mask. DES's ``coadd_assemble`` sets it to **1** where no input
    exposure had usable data (the SWarp'ed mask weight is 0: bad columns, bleed
    trails, cosmic rays and streaks in every exposure, the chip gaps of a shallow
    patch); those pixels of SCI are then *interpolated* along columns, so they look
    like sky but hold no data. No other bit is set in DES coadd masks;
``WGT``
    the inverse variance; 0 where there is no data.

So a DES coadd pixel is bad where ``MSK & 1`` or ``WGT == 0``: the default
``lensdask.ingest.des.mask_bits: 1``. (Single-epoch DESDM masks use other bits:
``BADPIX_BPM`` 1, ``SATURATE`` 2, ``INTERP`` 4, ``CRAY`` 16, ``STAR`` 32, ``TRAIL`` 64,
...; give ``mask_bits`` for those.)

A DES Gold catalogue (``COADD_OBJECT_ID``, ``RA``, ``DEC``, ``TILENAME``, any case, FITS
or Parquet) is read as it comes: :func:`lensdask.survey.ingest.read_table`.
"""

from __future__ import annotations

import os

from .. import config

HDUS = {"image": "SCI", "mask": "MSK", "weight": "WGT"}
"""The HDU names of a DES coadd tile file."""

PATTERN = "{tile}_*_{band}.fits.fz"
"""File names of a DES coadd tile's bands; ``*`` is the processing tag."""

PSF_PATTERN = "{tile}_*_{band}_psfcat.psf"
"""File names of a DES coadd tile's PSFEx models, one per band (a tile or band without one takes its PSF
from the image header or its stars)."""

MASK_BITS = 1
"""Bits of a DES coadd MSK that mark a pixel without data (set by ``coadd_assemble``)."""


def des_layout(directory: str | os.PathLike, mask_bits: int | None = None) -> dict:
    """The ingest options that read DES coadd tiles in ``directory``.

    Parameters
    ----------
    directory : str or path
        Folder holding ``{tile}_{tag}_{band}.fits.fz`` files.
    mask_bits : int, optional
        Mask bits that make a pixel bad (config ``ingest.des.mask_bits``, default 1).

    Returns
    -------
    dict
        ``images``, ``weights``, ``masks`` (one pattern, the same file), ``hdu``,
        ``weights_hdu``, ``masks_hdu``, ``mask_bits`` and ``psf`` (the PSFEx pattern, config
        ``ingest.des.psf_pattern``), as :func:`~lensdask.survey.ingest` takes them.
    """
    pattern = os.path.join(os.fspath(directory), config.get("ingest.des.pattern") or PATTERN)
    psf = os.path.join(os.fspath(directory), config.get("ingest.des.psf_pattern") or PSF_PATTERN)
    bits = config.get("ingest.des.mask_bits", mask_bits)
    return dict(
        images=pattern,
        weights=pattern,
        masks=pattern,
        hdu=HDUS["image"],
        weights_hdu=HDUS["weight"],
        masks_hdu=HDUS["mask"],
        mask_bits=MASK_BITS if bits is None else int(bits),
        psf=psf,
    )
