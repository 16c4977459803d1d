"""Each survey's coadd files, found in a folder and read as ingest reads DES tiles.

:func:`survey_files` turns a survey profile's layout (:class:`~lensdask.survey.profiles.CoaddLayout`)
and a folder into what :func:`lensdask.survey.ingest` takes: the image, weight and mask files of
every tile and band, their HDUs, and :class:`PlaneRules`, which say how a band's planes are read:

- the **weight** plane as the survey ships it: an inverse variance (DES ``WGT``, Legacy Surveys
  ``-invvar-``), a variance (HSC and LSST ``VARIANCE``: weight 1/var) or a noise rms (Euclid MER
  ``RMS``: weight 1/rms^2). A variance or rms that is NaN, infinite or 0 marks a pixel without data
  (weight 0, a bad pixel); a negative one is an error naming the file, as a negative weight is;
- the **bad mask bits** per band (Legacy Surveys ``SATUR_<B>`` and ``ALLMASK_<B>``), or the mask
  planes whose bits each mask HDU's ``MP_<NAME>`` keywords give (LSST and HSC: ``NO_DATA``, ``BAD``,
  ``SAT``), or any non-zero value.

``des`` keeps today's DES tile layout (:func:`lensdask.survey.des_tiles.des_layout`); every other
survey's files are found by glob, per band, and named by their tile (tile names hold only letters,
digits and ``. _ + -``: HSC's patch ``4,4`` becomes ``4.4``).
"""

from __future__ import annotations

import glob
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from ..errors import LensdaskError, TileError
from .profiles import SurveyProfile


@dataclass(frozen=True)
class PlaneRules:
    """How one survey's band planes are read, beyond files and HDUs.

    Attributes
    ----------
    weight_kind : {"invvar", "variance", "rms"}
        What the weight plane holds.
    band_mask_bits : mapping or None
        ``{band: bad bits}``; None: see ``mask_planes``, else any non-zero value.
    mask_planes : tuple of str
        Mask plane names whose bits the mask header's ``MP_<NAME>`` keywords give.
    """

    weight_kind: str = "invvar"
    band_mask_bits: Mapping[str, int] | None = None
    mask_planes: tuple[str, ...] = ()

    def mask_bits(self, band: str, mask_header, given: int | None) -> int | None:
        """The bits that make a pixel of ``band`` bad: ``given`` (the caller's), else the layout's.

        Raises
        ------
        TileError
            The layout names mask planes that the mask header does not define.
        """
        if given is not None:
            return int(given)
        if self.band_mask_bits is not None:
            return int(self.band_mask_bits.get(band, 0))
        if not self.mask_planes or mask_header is None:
            return None
        found = {p: mask_header.get(f"MP_{p}") for p in self.mask_planes}
        bits = [int(v) for v in found.values() if isinstance(v, (int, np.integer))]
        if not bits:
            raise TileError(
                f"the mask header defines none of the mask planes {', '.join(self.mask_planes)} "
                f"(keywords MP_{self.mask_planes[0]}, ...)"
            )
        return sum(1 << b for b in bits)


class WeightFromVariance:
    """A variance (or rms) plane read as the inverse-variance weights ingest expects.

    Wraps one plane of :class:`lensdask.survey.planes.BandPlanes`: ``rows`` returns 1/var (1/rms^2),
    0 where the variance is NaN, infinite or 0 (no data), and a negative value where it is negative
    (so the weight check refuses the plane, naming it).
    """

    def __init__(self, plane, kind: str):
        if kind not in ("variance", "rms"):
            raise ValueError(f"a weight plane of kind {kind!r} needs no conversion")
        self.plane, self.kind = plane, kind

    def __getattr__(self, name):
        return getattr(self.plane, name)

    @property
    def where(self) -> str:
        return f"{self.plane.where} ({self.kind})"

    def rows(self, y0: int, y1: int) -> np.ndarray:
        """Rows ``y0:y1`` of the weights, float64, from the variance or rms rows."""
        spread = np.asarray(self.plane.rows(y0, y1), dtype=np.float64)
        variance = spread * spread * np.sign(spread) if self.kind == "rms" else spread
        weights = np.zeros_like(variance)
        good = np.isfinite(variance) & (variance > 0)
        weights[good] = 1.0 / variance[good]
        negative = variance < 0
        weights[negative] = 1.0 / variance[negative]
        return weights


def open_band_planes(
    images, weights, masks, band, *, hdu, weights_hdu, masks_hdu, mask_bits, rules: PlaneRules | None = None
):
    """The :class:`~lensdask.survey.planes.BandPlanes` of one band of one tile, read by ``rules``.

    Parameters
    ----------
    images, weights, masks : dict
        ``{band: path}`` of the tile's files (``weights``/``masks`` may be None or lack the band).
    band : str
    hdu, weights_hdu, masks_hdu : int or str or None
        HDUs by number or name (``weights_hdu``/``masks_hdu`` None: as ``hdu``).
    mask_bits : int or None
        Bad bits given by the caller; None: the layout's (``rules``), else any non-zero value.
    rules : PlaneRules, optional
        How the survey's weight and mask planes are read (default: inverse variance, ``mask_bits``).

    Raises
    ------
    TileError
        A file or HDU missing, planes that disagree, mask planes the header does not define.
    """
    from .planes import BandPlanes

    rules = rules or PlaneRules()
    planes = BandPlanes(
        images[band],
        (weights or {}).get(band),
        (masks or {}).get(band),
        hdu=hdu,
        weight_hdu=weights_hdu if weights_hdu is not None else hdu,
        mask_hdu=masks_hdu if masks_hdu is not None else hdu,
        mask_bits=mask_bits,
    )
    try:
        mask = planes.mask
        try:
            planes.mask_bits = rules.mask_bits(band, mask.header if mask is not None else None, mask_bits)
        except TileError as exc:
            raise TileError(f"{mask.where if mask is not None else images[band]}: {exc}") from None
        if planes.weight is not None and rules.weight_kind != "invvar":
            planes.weight = WeightFromVariance(planes.weight, rules.weight_kind)
    except BaseException:
        planes.close()
        raise
    return planes


@dataclass
class SurveyFiles:
    """A survey's coadd files in one folder, as :func:`lensdask.survey.ingest` takes them.

    Attributes
    ----------
    images, weights, masks : str or dict or None
        Patterns (DES) or ``{tile: {band: path}}``.
    psf : str or None
        Pattern of PSFEx models (DES).
    hdu, weights_hdu, masks_hdu : int or str or None
    mask_bits : int or None
        Bad bits for every band (DES, or the caller's); None: ``rules`` decide.
    rules : PlaneRules
    problems : dict
        ``{tile: reason}`` of tiles whose files are ambiguous (several match one band).
    """

    images: object
    weights: object
    masks: object
    psf: object
    hdu: object
    weights_hdu: object
    masks_hdu: object
    mask_bits: int | None
    rules: PlaneRules = field(default_factory=PlaneRules)
    problems: dict = field(default_factory=dict)


def tile_regex(pattern: str, band: str) -> re.Pattern:
    """A regex matching the files of ``pattern`` (with ``{tile}``, ``{band}``, ``*`` and ``?``) for ``band``,
    capturing the tile name as group ``tile``."""
    text = pattern.replace("{band}", "\0b").replace("{tile}", "\0t")
    out = []
    for ch in text:
        out.append({"*": "[^/]*", "?": "[^/]"}.get(ch, re.escape(ch)))
    rx = "".join(out).replace(re.escape("\0t"), "(?P<tile>[^/]+?)", 1).replace(re.escape("\0t"), "(?P=tile)")
    return re.compile(rx.replace(re.escape("\0b"), re.escape(band)))


_UNSAFE = re.compile(r"[^A-Za-z0-9._+-]")


def tile_name(token: str) -> str:
    """A file name's tile part as a tile name: characters other than letters, digits and ``. _ + -`` become ``.``."""
    return _UNSAFE.sub(".", token)


def survey_files(profile: SurveyProfile, directory: str | os.PathLike, *, mask_bits: int | None = None) -> SurveyFiles:
    """Find the coadd files of ``profile``'s layout in ``directory``.

    Parameters
    ----------
    profile : SurveyProfile
    directory : str or path
        The coadd folder the layout's patterns are relative to.
    mask_bits : int, optional
        Bad bits for every band, instead of the layout's.

    Returns
    -------
    SurveyFiles

    Raises
    ------
    LensdaskError
        ``directory`` is not a folder, or holds no image of the layout.
    """
    d = os.fspath(directory)
    if not os.path.isdir(d):
        raise LensdaskError(f"--coadds {d!r} is not a folder")
    lay = profile.layout
    if profile.name == "des":
        from .des_tiles import des_layout

        des = des_layout(d, mask_bits)
        return SurveyFiles(
            des["images"],
            des["weights"],
            des["masks"],
            des["psf"],
            des["hdu"],
            des["weights_hdu"],
            des["masks_hdu"],
            des["mask_bits"],
        )
    problems: dict[str, str] = {}
    images = _find(d, lay.image, profile, "image", problems)
    if not images and not problems:
        first = os.path.join(d, lay.image).format(tile="*", band=lay.file_band(profile.bands[0]))
        raise LensdaskError(f"no {profile.name} coadd files in {d!r}: nothing matches {first!r}")
    weights = _find(d, lay.weight, profile, "weight map", problems) if lay.weight else None
    masks = _find(d, lay.mask, profile, "mask", problems) if lay.mask else None
    return SurveyFiles(
        images,
        weights,
        masks,
        os.path.join(d, lay.psf) if lay.psf else None,
        lay.image_hdu,
        lay.weight_hdu,
        lay.mask_hdu,
        mask_bits,
        PlaneRules(lay.weight_kind, lay.mask_bits, lay.mask_planes),
        problems,
    )


def _find(directory: str, pattern: str, profile: SurveyProfile, what: str, problems: dict) -> dict:
    """``{tile: {band: path}}`` of the files of one plane; a tile with several files for a band goes to ``problems``."""
    full = os.path.join(directory, pattern)
    found: dict[str, dict[str, str]] = {}
    for band in profile.bands:
        token = profile.layout.file_band(band)
        rx = tile_regex(full, token)
        by_tile: dict[str, list[str]] = {}
        for path in sorted(glob.glob(full.format(tile="*", band=token))):
            m = rx.fullmatch(path)
            if m:
                by_tile.setdefault(tile_name(m.group("tile")), []).append(path)
        for tile, paths in by_tile.items():
            if len(paths) == 1:
                found.setdefault(tile, {})[band] = paths[0]
            else:
                shown = ", ".join(os.path.basename(p) for p in paths[:3])
                problems.setdefault(tile, f"{what} of band {band}: {len(paths)} files match ({shown}): which one?")
    return dict(sorted(found.items()))
