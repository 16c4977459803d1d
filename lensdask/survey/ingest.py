"""Ingest real survey data into a cutout store, one Dask task per tile.

Two kinds of input:

* **Coadd tiles**: per-band FITS images with a WCS (e.g. DES coadd tiles) plus an
  object catalogue (FITS, CSV or Parquet with an id, ``ra``, ``dec`` in degrees).
  Each object's stamp is cut in every band around the pixel its sky position
  falls on *in that band's WCS*. Stamps reaching past the image edge are padded
  with NaN and flagged :data:`~lensdask.store.FLAG_EDGE`; bad pixels — mask bits
  set (``mask_bits``, default any) or weight 0 — are filled (config
  ``ingest.mask_fill``) and flagged :data:`~lensdask.store.FLAG_MASKED`. Images,
  weights and masks may share files with one HDU each (DES coadds: SCI, WGT, MSK;
  :mod:`lensdask.survey.des_tiles`). A tile is read band by band in strips of
  rows (:mod:`lensdask.survey.planes`) and written block by block
  (:mod:`lensdask.tilewriter`), so a worker's memory is a block of stamps, not the
  tile; a tile whose input is bad, or whose worker dies, fails alone
  (:mod:`lensdask.fanout`).
* **Cutout cubes**: per-band FITS cubes (n, H, W), or ``.npy`` (n, bands, H, W) /
  ``.npz`` arrays, with an optional table of ``object_id``, ``ra``, ``dec``, ``label``;
  stamps larger than the store's are cropped around the centre.

:func:`cut_stamps` is pure numpy; :func:`ingest` wires the tiles to Dask.
"""

from __future__ import annotations

import os
import pathlib
import string
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from .. import config
from ..errors import LensdaskError
from ..fanout import FAILURE_COLUMNS, write_failures
from ..fanout import failures_path as failures_path  # where lensdask.cli looks for it
from ..names import check_names
from ..store import FLAG_EDGE, FLAG_MASKED, create_store, open_store, provenance, psf_columns, store_array
from .layouts import tile_regex

if TYPE_CHECKING:
    from .layouts import PlaneRules
    from .profiles import SurveyProfile

ID_COLUMNS = ("object_id", "coadd_object_id", "id", "objid", "object")
TILE_COLUMNS = ("tile", "tilename")
MASK_FILLS = ("median", "nan")


# -- pure stamp cutting ----------------------------------------------------------------
def cut_stamps(
    image: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    stamp: int,
    *,
    bad: np.ndarray | None = None,
    mask_fill: str = "median",
) -> tuple[np.ndarray, np.ndarray]:
    """Cut ``stamp`` x ``stamp`` stamps centred on pixel positions.

    Parameters
    ----------
    image : numpy.ndarray
        (ny, nx) pixels.
    x, y : numpy.ndarray
        0-based pixel coordinates (x along columns, y along rows) of the centres;
        the stamp's centre pixel ``[stamp // 2, stamp // 2]`` is the image pixel
        nearest to (x, y).
    stamp : int
        Side, pixels.
    bad : numpy.ndarray of bool, optional
        (ny, nx) masked pixels.
    mask_fill : {"median", "nan"}
        What masked pixels become: the median of the stamp's unmasked pixels, or NaN.

    Returns
    -------
    stamps : numpy.ndarray
        (n, stamp, stamp) float32; pixels outside the image are NaN.
    flags : numpy.ndarray
        (n,) int32: FLAG_EDGE where the stamp reached past the edge (or its centre is
        off the image), FLAG_MASKED where it holds masked pixels.
    """
    if mask_fill not in MASK_FILLS:
        raise LensdaskError(f"unknown mask_fill {mask_fill!r}; use {' or '.join(MASK_FILLS)}")
    image = np.asarray(image, dtype=np.float32)
    ny, nx = image.shape
    h = stamp // 2
    pad = stamp
    padded = np.pad(image, pad, constant_values=np.nan)
    bad_p = None if bad is None else np.pad(np.asarray(bad, bool), pad, constant_values=False)
    x = np.asarray(x, float)
    y = np.asarray(y, float)
    n = len(x)
    out = np.full((n, stamp, stamp), np.nan, dtype=np.float32)
    flags = np.zeros(n, dtype=np.int32)
    finite = np.isfinite(x) & np.isfinite(y)
    cx = np.where(finite, np.floor(x + 0.5), -10 * stamp).astype(np.int64)
    cy = np.where(finite, np.floor(y + 0.5), -10 * stamp).astype(np.int64)
    for k in range(n):
        x0, y0 = cx[k] - h, cy[k] - h
        if x0 < 0 or y0 < 0 or x0 + stamp > nx or y0 + stamp > ny:
            flags[k] |= FLAG_EDGE
        if x0 + pad < 0 or y0 + pad < 0 or x0 + stamp > nx + pad or y0 + stamp > ny + pad:
            continue  # centre far off the image (or unknown): all NaN
        sl = np.s_[y0 + pad : y0 + pad + stamp, x0 + pad : x0 + pad + stamp]
        st = padded[sl].copy()
        if bad_p is not None:
            m = bad_p[sl]
            if m.any():
                flags[k] |= FLAG_MASKED
                if mask_fill == "median":
                    good = st[~m & np.isfinite(st)]
                    st[m] = np.median(good) if good.size else np.nan
                else:
                    st[m] = np.nan
        out[k] = st
    return out, flags


# -- readers ---------------------------------------------------------------------------
def read_fits_image(path, hdu=None):
    """``(data, header)`` of a FITS file's first HDU holding an image of 2 or more axes, or of ``hdu`` (an index
    or name); pixels read into memory, the header a copy.

    Raises
    ------
    LensdaskError
        The file has no image HDU.
    """
    from astropy.io import fits

    with fits.open(os.fspath(path), memmap=False) as hdul:
        if hdu is not None:
            h = hdul[hdu]
            return np.asarray(h.data), h.header.copy()
        for h in hdul:
            if h.data is not None and getattr(h, "is_image", True) and np.ndim(h.data) >= 2:
                return np.asarray(h.data), h.header.copy()
    raise LensdaskError(f"{path}: no image HDU")


def read_image_header(path, hdu=None):
    """The header of the first HDU with 2 or more axes (or of ``hdu``), without reading pixels: a cutout cube's
    (3 axes) as well as an image's (:func:`lensdask.survey.planes.read_header` takes 2-D images only)."""
    from astropy.io import fits

    with fits.open(os.fspath(path), memmap=True) as hdul:
        if hdu is not None:
            return hdul[hdu].header.copy()
        for h in hdul:
            if h.header.get("NAXIS", 0) >= 2:
                return h.header.copy()
    raise LensdaskError(f"{path}: no image HDU")


def read_table(source) -> pd.DataFrame:
    """A catalogue or cutout table from a DataFrame, CSV, Parquet or FITS path; columns lower-cased."""
    if source is None:
        return None
    if isinstance(source, pd.DataFrame):
        df = source.copy()
    else:
        path = pathlib.Path(os.fspath(source))
        if not path.exists():
            raise LensdaskError(f"table {str(path)!r} does not exist")
        name = path.name.lower()
        if name.endswith((".parquet", ".pq")):
            df = pd.read_parquet(path)
        elif name.endswith((".fits", ".fit", ".fits.gz", ".fz")):
            from astropy.table import Table

            t = Table.read(path)
            t = t[[c for c in t.colnames if len(t[c].shape) <= 1]]
            for c in t.colnames:  # fixed-width FITS strings (DES TILENAME): text, without the padding
                if t[c].dtype.kind == "S":
                    t[c] = np.char.strip(np.char.decode(t[c], "ascii", "replace"))
            df = t.to_pandas()
        else:
            df = pd.read_csv(path)
    df.columns = [str(c).lower() for c in df.columns]
    return df


def _source_name(source) -> str:
    """How a message names a table: its path, or what kind of object it is."""
    if source is None:
        return "the table"
    return str(source) if isinstance(source, (str, os.PathLike)) else f"the {type(source).__name__} table"


def check_table_names(table) -> None:
    """Refuse a row table (file or DataFrame) whose ``tile`` column holds a name that is not allowed.

    Cheap enough to run before a cluster starts; :func:`ingest` runs the same check itself.
    """
    df = read_table(table)
    tc = next((c for c in TILE_COLUMNS if c in df.columns), None)
    if tc:
        # an empty cell (NaN) is no name either, not the name "nan"
        check_names(df[tc].fillna("").astype(str).str.strip(), source=_source_name(table), rows=range(1, len(df) + 1))


def _normalise_table(df: pd.DataFrame, n: int | None = None, *, need_sky: bool, source=None) -> pd.DataFrame:
    out = pd.DataFrame(index=df.index)
    idc = next((c for c in ID_COLUMNS if c in df.columns), None)
    out["object_id"] = df[idc].astype("int64") if idc else np.arange(len(df), dtype=np.int64)
    for c in ("ra", "dec"):
        if c in df.columns:
            out[c] = df[c].astype("float64")
        elif need_sky:
            raise LensdaskError(f"the catalogue lacks a {c!r} column (degrees); it has {list(df.columns)}")
        else:
            out[c] = np.nan
    if "label" in df.columns:
        out["label"] = df["label"].astype("int16")
    tc = next((c for c in TILE_COLUMNS if c in df.columns), None)
    if tc:
        out["tile"] = df[tc].fillna("").astype(str).str.strip()
        # names are data: refuse, naming the row, any that could not safely name a file
        check_names(out["tile"], source=_source_name(source), rows=range(1, len(out) + 1))
    if n is not None and len(out) != n:
        raise LensdaskError(f"the table has {len(out)} rows, the cutouts {n}")
    return out.reset_index(drop=True)


def _fields(pattern: str) -> set[str]:
    return {f for _, f, _, _ in string.Formatter().parse(pattern) if f}


def _resolve(path: str) -> tuple[str | None, str | None]:
    """(the one file ``path`` names, None) or (None, why not); ``path`` may hold ``*`` and ``?``."""
    import glob

    if not glob.has_magic(path):
        return (path, None) if os.path.exists(path) else (None, f"no file {path}")
    found = sorted(glob.glob(path))
    if not found:
        return None, f"no file matches {path}"
    if len(found) > 1:
        shown = ", ".join(os.path.basename(f) for f in found[:3])
        return None, f"{len(found)} files match {path} ({shown}): which one?"
    return found[0], None


def _expand_images(images, bands, tiles, what: str = "image") -> tuple[dict[str, dict[str, str]], dict[str, str]]:
    """``{tile: {band: path}}`` from a mapping or a pattern with ``{tile}``, ``{band}`` and wildcards.

    Returns the tiles whose every band resolves to one file, and ``{tile: reason}`` for
    the others (a band's file missing, or a wildcard matching several files).
    """
    import glob

    problems: dict[str, str] = {}
    if isinstance(images, Mapping):
        files: dict[str, dict[str, str]] = {str(t): {b: os.fspath(p) for b, p in v.items()} for t, v in images.items()}
        if tiles is not None:
            files = {t: files.get(t, {}) for t in tiles}
        for t, fb in files.items():
            gone = [
                f"{b}: no {what} file" if b not in fb else f"{b}: no file {fb[b]}"
                for b in bands
                if b not in fb or not os.path.exists(fb[b])
            ]
            if gone:
                problems[t] = f"band {gone[0]}" + (f" (and {len(gone) - 1} more bands)" if len(gone) > 1 else "")
        return {t: fb for t, fb in files.items() if t not in problems}, problems
    pattern = os.fspath(images)
    if _fields(pattern) - {"tile", "band"} or "band" not in _fields(pattern):
        raise LensdaskError(f"{what} pattern {pattern!r} must hold {{band}} (and {{tile}} for several tiles)")
    if "tile" not in _fields(pattern):
        tiles = tiles or [pathlib.Path(pattern.replace("{band}", "").replace("*", "")).stem.strip("_-.") or "tile"]
        tiles = tiles[:1]
    elif not tiles:
        found = set()
        for b in bands:  # a tile that lacks some band is found through the others, and fails
            rx = tile_regex(pattern, b)
            found |= {m.group("tile") for p in glob.glob(pattern.format(tile="*", band=b)) if (m := rx.fullmatch(p))}
        tiles = sorted(found)
        if not tiles:
            raise LensdaskError(f"no files match {pattern.format(tile='*', band=bands[0])!r}")
    files = {}
    for t in tiles:
        fb = {}
        for b in bands:
            name = pattern.format(tile=t, band=b) if "tile" in _fields(pattern) else pattern.format(band=b)
            path, why = _resolve(name)
            if path is None:
                problems.setdefault(t, f"band {b}: {why}")
            else:
                fb[b] = path
        files[t] = fb
    return {t: fb for t, fb in files.items() if t not in problems}, problems


# -- one tile (a task) ------------------------------------------------------------------
def _band_planes(files, weights, masks, band, hdu, weights_hdu, masks_hdu, mask_bits, rules=None):
    from .layouts import open_band_planes

    return open_band_planes(
        files,
        weights,
        masks,
        band,
        hdu=hdu,
        weights_hdu=weights_hdu,
        masks_hdu=masks_hdu,
        mask_bits=mask_bits,
        rules=rules,
    )


def _blocks(planes, xy, order, stamp, block_rows, mask_fill, flags, stats):
    """Yield (k, bands, stamp, stamp) stamp blocks in row order, cutting each band from a strip of rows."""
    h = stamp // 2
    n = len(order)
    for s in range(0, n, block_rows):
        idx = order[s : s + block_rows]
        out = np.empty((len(idx), len(planes), stamp, stamp), dtype=np.float32)
        for k, p in enumerate(planes):
            ny = p.shape[0]
            x, y = xy[k][0][idx], xy[k][1][idx]
            cy = np.floor(y + 0.5)
            on = np.isfinite(x) & np.isfinite(y) & (cy >= -h) & (cy < ny + h)
            if on.any():
                y0 = int(max(0, cy[on].min() - h))
                y1 = int(min(ny, cy[on].max() + h + 1))
                data, bad = p.strip(y0, y1)
            else:  # every stamp of the block misses this band's image
                y0, data, bad = 0, np.empty((0, p.shape[1]), np.float32), None
            # the strip ends only at the image's edges or beyond every stamp: cut_stamps' edge flags hold
            out[:, k], f = cut_stamps(data, x, y - y0, stamp, bad=bad, mask_fill=mask_fill)
            flags[s : s + len(idx)] |= f
            stats["strip_rows"] += int(data.shape[0])
        yield out


def ingest_fits_tile(
    out: str,
    tile: int,
    files: dict[str, str],
    rows: pd.DataFrame,
    *,
    weights: dict[str, str] | None = None,
    masks: dict[str, str] | None = None,
    hdu=None,
    weights_hdu=None,
    masks_hdu=None,
    mask_bits: int | None = None,
    mask_fill: str = "median",
    block_rows: int | None = None,
    psf: dict[str, str] | None = None,
    rules=None,
) -> dict:
    """Cut the stamps of ``rows`` from one tile's band images and write the tile; the unit of work of an ingest.

    Memory is bounded by a block of stamps, not by the tile: rows are ordered by their
    pixel row in the first band, and each block of ``block_rows`` rows is cut from the
    strip of image rows it covers, band by band, then encoded into the tile's shard
    (:func:`lensdask.tilewriter.write_tile_streamed`).

    Parameters
    ----------
    out : str
        The store (created by :func:`ingest`).
    tile : int
        Tile index.
    files, weights, masks : dict
        ``{band: path}`` of the images, weight maps and masks (the same file is fine).
    rows : pandas.DataFrame
        The tile's objects: ``object_id``, ``ra``, ``dec`` (degrees), optionally ``label``.
    hdu, weights_hdu, masks_hdu : int or str, optional
        HDUs by number or name (``weights_hdu``/``masks_hdu`` default to ``hdu``).
    mask_bits : int, optional
        Mask bits that make a pixel bad; None: any non-zero value.
    mask_fill : {"median", "nan"}
    block_rows : int, optional
        Rows cut and encoded together (config ``ingest.block_rows``; rounded up to whole store chunks).
    psf : dict, optional
        ``{band: path}`` of the tile's PSFEx models. Each band's PSF FWHM, recorded for every row
        (the store's ``psf_fwhm`` and ``psf_origin``), comes from its PSFEx model, else the image
        header, else the tile's stars (:func:`lensdask.survey.psf.tile_psf`).
    rules : lensdask.survey.layouts.PlaneRules, optional
        How the survey's weight and mask planes are read (a variance as weights, bad bits per band
        or from the mask header); default: inverse-variance weights and ``mask_bits``.

    Returns
    -------
    dict
        ``tile``, ``rows``, ``edge_rows``, ``masked_rows``, ``off_image_rows`` (centre off the
        first band's image), ``strip_rows`` (image rows read, all bands), ``psf_fwhm`` and
        ``psf_origin`` (per band), ``seconds``.

    Raises
    ------
    TileError
        A band's file or HDU is missing, its planes differ in shape or WCS, its weights are not
        an inverse variance.
    """
    from ..tilewriter import write_tile_streamed

    t0 = time.perf_counter()
    store = open_store(out, mode="r+")
    chunk = store.chunk_rows
    block_rows = int(config.get("ingest.block_rows", block_rows))
    block_rows = max(chunk, -(-block_rows // chunk) * chunk)
    planes = []
    try:
        for band in store.bands:
            planes.append(_band_planes(files, weights, masks, band, hdu, weights_hdu, masks_hdu, mask_bits, rules))
        ra, dec = rows["ra"].to_numpy(float), rows["dec"].to_numpy(float)
        xy = [p.wcs.all_world2pix(ra, dec, 0) for p in planes]
        y_first = np.where(np.isfinite(xy[0][1]), xy[0][1], np.inf)
        order = np.argsort(y_first, kind="stable")  # rows by pixel row: a block reads one strip of the image
        table = rows.iloc[order][[c for c in ("object_id", "ra", "dec", "label") if c in rows.columns]]
        table = table.reset_index(drop=True)
        fwhm, origins = _tile_psfs(planes, store.bands, store.pixel_scale, psf or {})
        for c, v in zip(psf_columns(store.bands), fwhm):
            table[c] = np.float32(v)
        store.write_psf_origin(tile, origins)
        flags = np.zeros(len(table), dtype=np.int32)
        table["flags"] = 0
        stats = {"strip_rows": 0}
        ny, nx = planes[0].shape
        x0, y0 = xy[0][0][order], xy[0][1][order]
        cx, cy = np.floor(x0 + 0.5), np.floor(y0 + 0.5)
        off = ~(np.isfinite(cx) & np.isfinite(cy) & (cx >= 0) & (cx < nx) & (cy >= 0) & (cy < ny))

        blocks = _blocks(planes, xy, order, store.stamp, block_rows, mask_fill, flags, stats)

        def gen():  # flags are known once every block is cut; the writer reads the table after the last
            yield from blocks
            table["flags"] = flags

        n = write_tile_streamed(store, tile, table, gen())
    finally:
        for p in planes:
            p.close()
    return {
        "tile": store.tiles[tile],
        "rows": int(n),
        "edge_rows": int(((flags & FLAG_EDGE) != 0).sum()),
        "masked_rows": int(((flags & FLAG_MASKED) != 0).sum()),
        "off_image_rows": int(off.sum()),
        "strip_rows": stats["strip_rows"],
        "psf_fwhm": {b: (round(float(v), 4) if np.isfinite(v) else None) for b, v in zip(store.bands, fwhm)},
        "psf_origin": dict(zip(store.bands, origins)),
        "seconds": round(time.perf_counter() - t0, 3),
    }


def _tile_psfs(planes, bands, pixel_scale: float, psfex: dict[str, str]) -> tuple[list[float], list[str]]:
    """Each band's PSF FWHM (arcsec, NaN unknown) and origin for one tile (:func:`lensdask.survey.psf.tile_psf`).

    Stars are measured on at most ``ingest.psf.star_rows`` image rows about the image's middle.
    """
    from .psf import tile_psf

    keywords = dict(config.get("ingest.psf.header_keywords") or {}) or None
    n_rows = int(config.get("ingest.psf.star_rows"))
    fwhm, origins = [], []
    for band, p in zip(bands, planes):

        def strip(p=p):
            ny = p.shape[0]
            y0 = max(0, ny // 2 - n_rows // 2)
            data, bad = p.strip(y0, min(ny, y0 + n_rows))
            return np.where(bad, np.nan, data) if bad is not None else data

        v, origin = tile_psf(pixel_scale, psfex=psfex.get(band), header=p.image.header, strip=strip, keywords=keywords)
        fwhm.append(v)
        origins.append(origin)
    return fwhm, origins


def _assign_tiles(
    cat: pd.DataFrame, files: dict[str, dict[str, str] | None], bands, hdu
) -> tuple[dict[str, pd.DataFrame], np.ndarray]:
    """Rows of each tile, and a mask of the rows in none of them.

    By a ``tile`` column when there is one, else the tile whose image holds the object
    farthest from its edge.
    """
    from .planes import read_header, wcs_of

    names = list(files)
    if "tile" in cat.columns:
        per = {t: cat[cat["tile"] == t].drop(columns="tile").reset_index(drop=True) for t in names}
        return per, ~cat["tile"].isin(names).to_numpy()
    best = np.full(len(cat), -1)
    margin = np.full(len(cat), -np.inf)
    ra, dec = cat["ra"].to_numpy(), cat["dec"].to_numpy()
    for i, t in enumerate(names):
        tile_files = files[t]
        if not tile_files:  # a tile whose files are missing (None or empty) holds nothing
            continue
        header = read_header(tile_files[bands[0]], hdu)
        nx, ny = int(header["NAXIS1"]), int(header["NAXIS2"])
        x, y = wcs_of(header).all_world2pix(ra, dec, 0)
        m = np.minimum(np.minimum(x + 0.5, nx - 0.5 - x), np.minimum(y + 0.5, ny - 0.5 - y))
        m = np.where(np.isfinite(m), m, -np.inf)
        take = (m > 0) & (m > margin)
        best[take] = i
        margin[take] = m[take]
    return {t: cat[best == i].reset_index(drop=True) for i, t in enumerate(names)}, best < 0


# -- cubes and arrays -----------------------------------------------------------------
def _crop(a: np.ndarray, stamp: int) -> np.ndarray:
    s = a.shape[-1]
    if a.shape[-2] != s:
        raise LensdaskError(f"cutouts must be square, got {a.shape[-2]}x{s}")
    if s < stamp:
        raise LensdaskError(f"cutouts of {s} px are smaller than the store's {stamp} px stamps")
    o = (s - stamp) // 2
    return a[..., o : o + stamp, o : o + stamp]


def load_cutouts(cubes=None, arrays=None, bands=None, hdu=None) -> tuple[np.ndarray, pd.DataFrame | None]:
    """(n, bands, H, W) pixels from per-band FITS cubes or a .npy / .npz file, and any table inside an .npz."""
    if cubes is not None:
        if isinstance(cubes, Mapping):
            paths = {b: os.fspath(p) for b, p in cubes.items()}
        else:
            pattern = os.fspath(cubes)
            if "band" not in _fields(pattern):
                raise LensdaskError(f"cube pattern {pattern!r} must hold {{band}}")
            paths = {b: pattern.format(band=b) for b in bands}
        missing = [b for b in bands if b not in paths or not os.path.exists(paths[b])]
        if missing:
            raise LensdaskError(f"no cube for bands {missing} ({paths})")
        planes = [np.asarray(read_fits_image(paths[b], hdu)[0], dtype=np.float32) for b in bands]
        if len({p.shape for p in planes}) != 1 or planes[0].ndim != 3:
            raise LensdaskError(f"band cubes must all be (n, H, W) of one shape, got {[p.shape for p in planes]}")
        return np.stack(planes, axis=1), None
    path = pathlib.Path(os.fspath(arrays))
    if not path.exists():
        raise LensdaskError(f"{str(path)!r} does not exist")
    if path.suffix == ".npy":
        return np.load(path, mmap_mode="r"), None
    if path.suffix == ".npz":
        with np.load(path) as z:
            keys = list(z.keys())
            if "images" in keys:
                imgs = z["images"]
            elif all(b in keys for b in bands):
                imgs = np.stack([z[b] for b in bands], axis=1)
            else:
                raise LensdaskError(f"{path}: expected an 'images' array or one per band {list(bands)}; found {keys}")
            extra = {k: z[k] for k in keys if k in ("object_id", "id", "ra", "dec", "label", "tile")}
        return imgs, (pd.DataFrame(extra) if extra else None)
    raise LensdaskError(f"{path}: arrays must be .npy or .npz")


def ingest_cutout_tile(out: str, tile: int, images: np.ndarray, rows: pd.DataFrame) -> int:
    """Write one tile of already cut stamps (cropped to the store's stamp)."""
    store = open_store(out, mode="r+")
    images = np.asarray(_crop(np.asarray(images, dtype=np.float32), store.stamp))
    table = rows[[c for c in ("object_id", "ra", "dec", "label") if c in rows.columns]].copy()
    return store.write_tile(tile, images, table)


# -- the command ----------------------------------------------------------------------
@dataclass
class IngestReport:
    """What :func:`ingest` did (with ``return_report=True``).

    Attributes
    ----------
    store : CutoutStore
    tiles : list of dict
        Statistics of every tile written (see :func:`ingest_fits_tile`).
    failures : pandas.DataFrame
        ``tile, error, traceback`` of every tile that failed; its ``count`` stays -1.
    objects : int
        Catalogue rows read.
    outside : int
        Catalogue rows in no tile ingested (their ``TILENAME`` is not among the tiles, or
        their position is on none of the images); they are not in the store.
    outside_tiles : list of str
        The most common tile names of those rows (up to 10), when the catalogue names tiles.
    seconds : float
    """

    store: object
    tiles: list = field(default_factory=list)
    failures: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=FAILURE_COLUMNS))
    objects: int = 0
    outside: int = 0
    outside_tiles: list = field(default_factory=list)
    seconds: float = 0.0

    def summary(self) -> dict:
        keys = ("rows", "edge_rows", "masked_rows", "off_image_rows")
        out = {k: sum(t.get(k, 0) for t in self.tiles) for k in keys}
        out.update(
            tiles_written=len(self.tiles),
            tiles_failed=self.failures["tile"].tolist(),
            objects=self.objects,
            outside=self.outside,
            outside_tiles=self.outside_tiles,
            seconds=self.seconds,
        )
        return out


class IngestFailedError(LensdaskError):
    """Raised by :func:`ingest` (without ``return_report``) after the other tiles finished, when some failed."""

    def __init__(self, report: IngestReport):
        self.report = report
        f = report.failures
        super().__init__(f"{len(f)} tiles failed: " + "; ".join(f"{r.tile}: {r.error}" for r in f.itertuples()))


def ingest(
    out: str | os.PathLike,
    *,
    images=None,
    catalog=None,
    weights=None,
    masks=None,
    des_tiles=None,
    survey: str | None = None,
    coadds=None,
    tiles: list[str] | None = None,
    cubes=None,
    arrays=None,
    table=None,
    bands: list[str] | str | None = None,
    stamp: int | None = None,
    pixel_scale: float | None = None,
    per_tile: int | None = None,
    tile_prefix: str = "cutouts-",
    hdu=None,
    weights_hdu=None,
    masks_hdu=None,
    mask_bits: int | None = None,
    mask_fill: str | None = None,
    block_rows: int | None = None,
    psf=None,
    client=None,
    overwrite: bool = False,
    progress: bool = True,
    return_report: bool = False,
):
    """Ingest coadd tile images + a catalogue, or cutout cubes / arrays, into a new cutout store.

    One task per tile. A tile whose task fails — bad input of that tile, or a worker that
    died running it (e.g. killed at its memory limit) — is listed in the report's
    ``failures`` (and ``<store>.failures.parquet`` beside a local store) and left unwritten
    (``count`` -1), while every other tile completes.

    Parameters
    ----------
    out : str or path
        The store to create.
    images : str or mapping, optional
        Per-band images with WCS: a pattern like ``"tiles/{tile}_{band}.fits"``, which may
        hold ``*`` and ``?`` (each must match one file per tile and band; tiles are found by
        glob when ``tiles`` is not given), or ``{tile: {band: path}}``.
    catalog : path or DataFrame
        With ``images``: object id (``object_id``/``coadd_object_id``/``id``), ``ra``,
        ``dec`` (degrees), optional ``tile``/``tilename`` (else each object goes to the
        tile holding it farthest from the edge) and ``label``; column names in any case
        (a DES Gold catalogue is read as it comes).
    weights, masks : str or mapping, optional
        Inverse-variance maps (0 = no data; negative or NaN values are an error) and
        integer masks (see ``mask_bits``), patterned like ``images``; may name the image
        files themselves, with other HDUs.
    des_tiles : str or path, optional
        A folder of DES coadd tiles as DES releases them, ``{tile}_{tag}_{band}.fits.fz``
        with HDUs SCI, MSK and WGT (see :mod:`lensdask.survey.des_tiles`); sets
        ``images``, ``weights``, ``masks``, the three HDUs and ``mask_bits``
        (config ``ingest.des.mask_bits``, default 1).
    survey : str, optional
        A survey profile (:func:`lensdask.survey.profiles.get_profile`: ``des``, ``legacy-dr10``,
        ``hsc-pdr3``, ``lsst``, ``euclid-vis``): its bands, pixel scale and stamp are the store's
        defaults, the input is checked against it before any work (bands, pixel scale within 1 %,
        flux-unit header keywords), and the store records it. None: ``des``, unchecked, as before profiles.
    coadds : str or path, optional
        A folder of the survey's coadd files in its layout (:func:`lensdask.survey.layouts.survey_files`):
        sets ``images``, ``weights``, ``masks``, their HDUs and the bad mask bits (``mask_bits``
        overrides them for every band). With ``survey`` None, the DES layout, as ``des_tiles``.
    tiles : list of str, optional
        Tile names to ingest.
    cubes : str or mapping, optional
        Per-band FITS cubes (n, H, W): a pattern with ``{band}`` or ``{band: path}``.
    arrays : path, optional
        ``.npy`` (n, bands, H, W), or ``.npz`` with ``images`` (or one array per band)
        and optionally ``object_id``, ``ra``, ``dec``, ``label``.
    table : path or DataFrame, optional
        Row table for cubes / arrays (``object_id``, ``ra``, ``dec``, ``label``, ``tile``).
    bands : list of str, optional
        Bands in store order (config ``survey.bands``).
    stamp : int, optional
        Stamp side, pixels (config ``survey.stamp``).
    pixel_scale : float, arcsec/pixel, optional
        Config ``survey.pixel_scale``; images whose WCS scale differs by more than 5 % are refused.
    per_tile : int, optional
        Rows per tile for cubes / arrays without a tile column (config ``ingest.per_tile``).
    hdu : int or str, optional
        HDU of the images, by number or name (config ``ingest.hdu``; default the first image HDU).
    weights_hdu, masks_hdu : int or str, optional
        HDUs of the weight maps and masks (config ``ingest.weights_hdu`` / ``masks_hdu``;
        default ``hdu``).
    mask_bits : int, optional
        Mask bits that make a pixel bad (config ``ingest.mask_bits``; null: any non-zero value).
    mask_fill : {"median", "nan"}, optional
        Config ``ingest.mask_fill``.
    block_rows : int, optional
        Stamps cut and written together (config ``ingest.block_rows``): a tile's memory.
    psf : str or mapping, optional
        The tiles' PSFEx models, patterned like ``images`` (``"psf/{tile}_{band}_psfcat.psf"``) or
        ``{tile: {band: path}}``; with ``des_tiles``, ``{tile}_*_{band}_psfcat.psf`` in that folder.
        Each tile records its PSF FWHM per band: from its PSFEx model where there is one, else from
        the image header (config ``ingest.psf.header_keywords``), else measured on its stars
        (:mod:`lensdask.survey.psf`); NaN where none of these gives one. Cutout cubes and arrays
        record no PSF.
    client : distributed.Client, optional
        Where the tile tasks run; default the current client, else in this process.
    overwrite : bool
        Replace an existing store.
    progress : bool
        Show a progress bar over tiles.
    return_report : bool
        Return ``(store, IngestReport)``; otherwise the store, and failed tiles raise
        :class:`IngestFailedError` once the others are done.

    Returns
    -------
    CutoutStore, or (CutoutStore, IngestReport)

    Raises
    ------
    LensdaskError
        Bad input, before any tile is written: no files, a pixel scale that differs, a
        weight map with negative or NaN values or a floating-point mask in the first tile
        (checked on a few strips, naming the file and HDU).
    """
    from ..cluster import current_client

    t_start = time.perf_counter()
    opts = _resolve_options(
        images=images,
        weights=weights,
        masks=masks,
        des_tiles=des_tiles,
        survey=survey,
        coadds=coadds,
        cubes=cubes,
        arrays=arrays,
        bands=bands,
        stamp=stamp,
        pixel_scale=pixel_scale,
        hdu=hdu,
        weights_hdu=weights_hdu,
        masks_hdu=masks_hdu,
        mask_bits=mask_bits,
        mask_fill=mask_fill,
        block_rows=block_rows,
        psf=psf,
    )
    out = _store_location(out)
    client = client if client is not None else current_client()
    store_args = dict(
        bands=opts.bands,
        pixel_scale=opts.pixel_scale,
        stamp=opts.stamp,
        survey=opts.survey,
        overwrite=overwrite,
        provenance=provenance(
            inputs=_input_names(
                images=opts.images,
                catalog=catalog,
                cubes=cubes,
                arrays=arrays,
                table=table,
                des_tiles=des_tiles,
                coadds=coadds,
                psf=opts.psf if isinstance(opts.psf, (str, os.PathLike)) else None,
            )
        ),
    )
    report = IngestReport(store=None)
    if opts.images is not None:
        plan = _plan_fits_tiles(out, opts, catalog, tiles, store_args, report)
    else:
        plan = _plan_cutout_tiles(out, opts, cubes, arrays, table, per_tile, tile_prefix, store_args, report)
    report.store = store = _run_plan(out, plan, report, client, progress, t_start)
    if return_report:
        return store, report
    if len(report.failures):
        raise IngestFailedError(report)
    return store


# -- the steps of ingest ----------------------------------------------------------------
@dataclass(frozen=True)
class _Options:
    """How :func:`ingest` reads its input: the arguments, a DES layout, else the configuration, checked.

    Attributes
    ----------
    images, weights, masks : str or mapping or None
        Patterns or ``{tile: {band: path}}`` of the tile images, weight maps and masks.
    bands : list of str
        Bands in store order.
    stamp : int
        Stamp side, pixels.
    pixel_scale : float
        Arcsec per pixel.
    hdu, weights_hdu, masks_hdu : int or str or None
        HDUs by number or name.
    mask_bits : int or None
        Mask bits that make a pixel bad; None: any non-zero value.
    mask_fill : str
        ``"median"`` or ``"nan"``.
    block_rows : int or None
        Stamps cut and written together (None: config ``ingest.block_rows``, read by the task).
    psf : str or mapping or None
        Pattern or ``{tile: {band: path}}`` of the tiles' PSFEx models.
    survey : str
        The survey the store records (``des`` unless one is named).
    profile : SurveyProfile or None
        The named survey's profile, which the input is checked against; None when none is named.
    rules : PlaneRules or None
        How the survey's weight and mask planes are read (None: inverse variance, ``mask_bits``).
    layout_problems : dict
        ``{tile: reason}`` of tiles whose survey files are ambiguous.
    """

    images: object
    weights: object
    masks: object
    bands: list
    stamp: int
    pixel_scale: float
    hdu: object
    weights_hdu: object
    masks_hdu: object
    mask_bits: int | None
    mask_fill: str
    block_rows: int | None
    psf: object = None
    survey: str = "des"
    profile: SurveyProfile | None = None
    rules: PlaneRules | None = None
    layout_problems: dict = field(default_factory=dict)


def _resolve_options(
    *,
    images,
    weights,
    masks,
    des_tiles,
    cubes,
    arrays,
    bands,
    stamp,
    pixel_scale,
    hdu,
    weights_hdu,
    masks_hdu,
    mask_bits,
    mask_fill,
    block_rows,
    psf=None,
    survey=None,
    coadds=None,
) -> _Options:
    """Fill :func:`ingest`'s options from ``des_tiles``, a survey's profile and layout, and the configuration,
    and check them.

    Raises
    ------
    LensdaskError
        ``des_tiles`` with ``images`` or not a folder, an unknown survey, ``coadds`` with ``images`` or
        ``des_tiles``, mask bits that are not positive, an unknown mask fill, or not exactly one input
        (images, DES tiles, coadds, cubes or arrays).
    """
    from .planes import hdu_spec

    profile = None
    if survey is not None:
        from .profiles import check_store_against_profile, get_profile

        profile = get_profile(survey)
        bands = bands if bands is not None else list(profile.bands)
        pixel_scale = pixel_scale if pixel_scale is not None else profile.pixel_scale
        stamp = stamp if stamp is not None else profile.stamp
        check_store_against_profile(_InputImages([str(b) for b in bands], float(pixel_scale)), profile)
    rules, layout_problems = None, {}
    if coadds is not None:
        from .layouts import survey_files
        from .profiles import get_profile

        if images is not None or des_tiles is not None:
            raise LensdaskError("give coadds (with a survey) or images or des_tiles, not several")
        found = survey_files(profile or get_profile("des"), coadds, mask_bits=mask_bits)
        images, weights, masks = found.images, found.weights, found.masks
        psf = found.psf if psf is None else psf
        hdu, weights_hdu, masks_hdu, mask_bits = found.hdu, found.weights_hdu, found.masks_hdu, found.mask_bits
        rules, layout_problems = found.rules, found.problems
    if des_tiles is not None and profile is not None and profile.name != "des":
        raise LensdaskError(f"des_tiles reads DES tiles; give the {profile.name} files as coadds (--coadds DIR)")
    if des_tiles is not None:
        from .des_tiles import des_layout

        if images is not None:
            raise LensdaskError("give des_tiles or images, not both")
        d = os.fspath(des_tiles)
        if not os.path.isdir(d):
            raise LensdaskError(f"--des-tiles {d!r} is not a folder")
        lay = des_layout(d, mask_bits)
        images, weights, masks = lay["images"], lay["weights"], lay["masks"]
        psf = lay["psf"] if psf is None else psf
        hdu, weights_hdu, masks_hdu, mask_bits = lay["hdu"], lay["weights_hdu"], lay["masks_hdu"], lay["mask_bits"]
    bands = list(config.get("survey.bands", bands))
    stamp = int(config.get("survey.stamp", stamp))
    pixel_scale = float(config.get("survey.pixel_scale", pixel_scale))
    hdu = hdu_spec(config.get("ingest.hdu", hdu))
    weights_hdu = hdu_spec(config.get("ingest.weights_hdu", weights_hdu))
    masks_hdu = hdu_spec(config.get("ingest.masks_hdu", masks_hdu))
    mask_bits = config.get("ingest.mask_bits", mask_bits)
    if mask_bits is not None:
        mask_bits = int(mask_bits)
        if mask_bits <= 0:
            raise LensdaskError(f"mask bits {mask_bits} must be a positive integer (e.g. 1, or 5 for bits 1 and 4)")
    mask_fill = str(config.get("ingest.mask_fill", mask_fill))
    if mask_fill not in MASK_FILLS:
        raise LensdaskError(f"unknown mask_fill {mask_fill!r}; use {' or '.join(MASK_FILLS)}")
    if sum(v is not None for v in (images, cubes, arrays)) != 1:
        raise LensdaskError("give exactly one of images (with a catalogue), des_tiles, coadds, cubes or arrays")
    return _Options(
        images,
        weights,
        masks,
        bands,
        stamp,
        pixel_scale,
        hdu,
        weights_hdu,
        masks_hdu,
        mask_bits,
        mask_fill,
        block_rows,
        psf,
        survey=profile.name if profile is not None else "des",
        profile=profile,
        rules=rules,
        layout_problems=layout_problems,
    )


def _store_location(out) -> str:
    """The store's URL, or its absolute path when local."""
    out = os.fspath(out)
    return out if "://" in out else os.path.abspath(out)


def _input_names(**inputs) -> dict:
    """The inputs given, for the store's provenance: paths as text, other objects by type name."""
    return {
        k: (os.fspath(v) if isinstance(v, (str, os.PathLike)) else type(v).__name__)
        for k, v in inputs.items()
        if v is not None
    }


@dataclass
class _Plan:
    """The tiles of a new store and the tasks that fill them.

    Attributes
    ----------
    names : list of str
        Every tile of the store, in store order.
    jobs : list of tuple
        ``(tile name, function, args, kwargs)`` of each tile to write (:func:`~lensdask.fanout.run_tiles`).
    problems : dict
        ``{tile: reason}`` of the tiles that failed before any task ran (missing files, unreadable input).
    """

    names: list
    jobs: list = field(default_factory=list)
    problems: dict = field(default_factory=dict)


@dataclass
class _TileFiles:
    """The files of the tile images, by tile and band.

    Attributes
    ----------
    names : list of str
        The tiles, in store order: those with all their files and those without.
    images, weights, masks : dict
        ``{tile: {band: path}}``; ``weights`` and ``masks`` empty when not given.
    problems : dict
        ``{tile: reason}`` of the tiles lacking a file.
    """

    names: list
    images: dict
    weights: dict
    masks: dict
    problems: dict

    @property
    def good(self) -> list:
        """The tiles without a problem, in store order."""
        return [t for t in self.names if t not in self.problems]


def _find_tile_files(opts: _Options, tiles: list[str] | None) -> _TileFiles:
    """Resolve the image, weight and mask files of every tile, refusing names that cannot name a file.

    Raises
    ------
    LensdaskError
        A tile name that is not allowed, or no tile with every band's files.
    """
    images = opts.images
    if tiles is not None:
        check_names(tiles, source="--tiles", rows=range(1, len(tiles) + 1))
    files, problems = _expand_images(images, opts.bands, tiles)
    problems.update({t: r for t, r in opts.layout_problems.items() if tiles is None or t in tiles})
    files = {t: fb for t, fb in files.items() if t not in problems}
    names = sorted(set(files) | set(problems)) if not isinstance(images, Mapping) else list(files) + list(problems)
    if tiles is not None:
        names = [t for t in tiles if t in names]
    check_names(
        names,
        source=f"the tiles matching {images!r}" if isinstance(images, str) else "the tile images",
        rows=range(1, len(names) + 1),
    )
    wfiles: dict[str, dict[str, str]] = {}
    mfiles: dict[str, dict[str, str]] = {}
    for extra, kind, into in ((opts.weights, "weight", wfiles), (opts.masks, "mask", mfiles)):
        if extra is None:
            continue
        got, why = _expand_images(extra, opts.bands, list(files), what=kind)
        into.update(got)
        for t, reason in why.items():
            problems.setdefault(t, f"{kind} map: {reason}" if kind == "weight" else f"mask: {reason}")
    found = _TileFiles(names, files, wfiles, mfiles, problems)
    if not found.good:
        raise LensdaskError("no tile has every band's files: " + "; ".join(f"{t}: {r}" for t, r in problems.items()))
    return found


def _check_first_tile(opts: _Options, found: _TileFiles) -> None:
    """Refuse bad input before any tile is written, on the first tile that can be read.

    The planes of that tile are checked on a few strips (a wrong weight map or mask is wrong
    in every tile), and its pixel scale against the store's. With a survey profile, the store's
    bands, the images' pixel scale and their flux-unit keywords are checked against it
    (:func:`~lensdask.survey.profiles.check_store_against_profile`). A tile whose own files
    disagree (shapes, WCS) is added to ``found.problems``, and the next one is checked.

    Raises
    ------
    LensdaskError
        A pixel scale more than 5 % off, bad weights or masks, or no tile that can be read.
    SurveyMismatchError
        Input that contradicts the survey's profile, one line each.
    """
    from astropy.wcs.utils import proj_plane_pixel_scales

    from ..errors import PlaneError, TileError

    bands = opts.bands
    for t in found.good:
        try:
            for b in bands:
                with _band_planes(
                    found.images[t],
                    found.weights.get(t),
                    found.masks.get(t),
                    b,
                    opts.hdu,
                    opts.weights_hdu,
                    opts.masks_hdu,
                    opts.mask_bits,
                    opts.rules,
                ) as planes:
                    if b == bands[0]:
                        scale = float(np.mean(proj_plane_pixel_scales(planes.wcs)) * 3600.0)
                        if opts.profile is not None:
                            _check_profile(opts.profile, opts, scale, found.images[t])
                        if abs(scale / opts.pixel_scale - 1) > 0.05:
                            raise LensdaskError(
                                f"the images are at {scale:.4f} arcsec/px, the store at {opts.pixel_scale} arcsec/px"
                            )
                    planes.check()
        except PlaneError as exc:
            raise LensdaskError(f"{exc} (tile {t}; nothing was written)") from None
        except TileError as exc:
            found.problems[t] = str(exc)
            continue
        return
    raise LensdaskError("no tile could be read: " + "; ".join(f"{t}: {r}" for t, r in found.problems.items()))


@dataclass(frozen=True)
class _InputImages:
    """What a profile is checked against before ingest: the store's bands and the images' pixel scale (arcsec/px)."""

    bands: list
    pixel_scale: float


def _check_profile(profile: SurveyProfile, opts: _Options, scale: float, files: dict[str, str]) -> None:
    """Check the store's bands, the images' pixel scale ``scale`` (arcsec/px) and each band's image headers
    (the primary HDU's and the image HDU's, e.g. HSC's FLUXMAG0 and LSST's BUNIT) against ``profile``.

    Raises
    ------
    SurveyMismatchError
        One line for each contradiction.
    """
    from astropy.io import fits

    from .planes import read_header
    from .profiles import check_store_against_profile

    headers = {}
    for b in opts.bands:
        if b not in files:
            continue
        header = fits.Header(fits.getheader(files[b], 0))
        header.update(read_header(files[b], opts.hdu))
        headers[f"{files[b]} (band {b})"] = header
    check_store_against_profile(_InputImages(list(opts.bands), scale), profile, headers=headers)


def _catalogue_by_tile(catalog, found: _TileFiles, opts: _Options, report: IngestReport) -> dict[str, pd.DataFrame]:
    """Read the catalogue and split it by tile (every tile, empty where it holds nothing).

    Counts the catalogue's objects, and those in no tile, into ``report``.
    """
    cat = _normalise_table(read_table(catalog), need_sky=True, source=catalog)
    report.objects = len(cat)
    per, outside = _assign_tiles(cat, {t: found.images.get(t) for t in found.names}, opts.bands, opts.hdu)
    for t in found.names:
        per.setdefault(t, cat.iloc[:0].drop(columns="tile", errors="ignore"))
    report.outside = int(outside.sum())
    if "tile" in cat.columns and report.outside:
        report.outside_tiles = cat.loc[outside, "tile"].value_counts().index[:10].tolist()
    return per


def _plan_fits_tiles(out: str, opts: _Options, catalog, tiles, store_args: dict, report: IngestReport) -> _Plan:
    """Check the tile images, create the store, and plan one :func:`ingest_fits_tile` task per good tile.

    Parameters
    ----------
    out : str
        The store to create.
    opts : _Options
    catalog, tiles
        As :func:`ingest` takes them.
    store_args : dict
        Keyword arguments of :func:`~lensdask.store.create_store` besides ``tiles`` and ``capacity``.
    report : IngestReport
        Receives the catalogue's object count and the objects in no tile.

    Raises
    ------
    LensdaskError
        No catalogue, or bad input (see :func:`_find_tile_files`, :func:`_check_first_tile`).
    """
    if catalog is None:
        raise LensdaskError("ingest of tile images needs a catalogue (id, ra, dec)")
    found = _find_tile_files(opts, tiles)
    _check_first_tile(opts, found)
    good, names = found.good, found.names
    per = _catalogue_by_tile(catalog, found, opts, report)
    psf_files = _psf_files(opts.psf, opts.bands, good)
    create_store(out, tiles=names, capacity=max([len(per[t]) for t in good] + [1]), **store_args)
    plan = _Plan(names, problems=found.problems)
    for t in good:
        plan.jobs.append(
            (
                t,
                ingest_fits_tile,
                (out, names.index(t), found.images[t], per[t]),
                dict(
                    weights=found.weights.get(t),
                    masks=found.masks.get(t),
                    hdu=opts.hdu,
                    weights_hdu=opts.weights_hdu,
                    masks_hdu=opts.masks_hdu,
                    mask_bits=opts.mask_bits,
                    mask_fill=opts.mask_fill,
                    block_rows=opts.block_rows,
                    psf=psf_files.get(t),
                    rules=opts.rules,
                ),
            )
        )
    return plan


def _psf_files(psf, bands, tiles) -> dict[str, dict[str, str]]:
    """``{tile: {band: path}}`` of the PSFEx models found for ``tiles`` (a pattern like the images', or a
    mapping); a tile or band without one is left out, and its PSF comes from the header or the stars."""
    if psf is None:
        return {}
    if isinstance(psf, Mapping):
        return {
            str(t): {b: os.fspath(f) for b, f in v.items() if os.path.exists(os.fspath(f))}
            for t, v in psf.items()
            if str(t) in tiles
        }
    pattern = os.fspath(psf)
    if _fields(pattern) - {"tile", "band"} or "band" not in _fields(pattern):
        raise LensdaskError(f"PSF pattern {pattern!r} must hold {{band}} (and {{tile}} for several tiles)")
    out: dict[str, dict[str, str]] = {}
    for t in tiles:
        for b in bands:
            path, _ = _resolve(pattern.format(tile=t, band=b) if "tile" in _fields(pattern) else pattern.format(band=b))
            if path is not None:
                out.setdefault(t, {})[b] = path
    return out


def _plan_cutout_tiles(
    out: str, opts: _Options, cubes, arrays, table, per_tile, tile_prefix: str, store_args: dict, report: IngestReport
) -> _Plan:
    """Load the cutouts, group them into tiles, create the store, and plan one :func:`ingest_cutout_tile` task each.

    Rows go to the tiles of a ``tile`` column when the table has one, else ``per_tile`` at a time
    to tiles named ``<tile_prefix>0000``, ``<tile_prefix>0001``...

    Parameters
    ----------
    out : str
        The store to create.
    opts : _Options
    cubes, arrays, table, per_tile, tile_prefix
        As :func:`ingest` takes them.
    store_args : dict
        Keyword arguments of :func:`~lensdask.store.create_store` besides ``tiles`` and ``capacity``.
    report : IngestReport
        Receives the object count.

    Raises
    ------
    LensdaskError
        Cutouts of the wrong shape, or a table that does not match them.
    """
    bands = opts.bands
    pix, inner = load_cutouts(cubes, arrays, bands, opts.hdu)
    n = pix.shape[0]
    if pix.ndim != 4 or pix.shape[1] != len(bands):
        raise LensdaskError(f"cutouts have shape {pix.shape}; expected (n, {len(bands)} bands {bands}, H, W)")
    _crop(pix[:0], opts.stamp)
    src = read_table(table) if table is not None else inner
    if src is not None:
        rows = _normalise_table(src, n, need_sky=False, source=table if table is not None else arrays)
    else:
        rows = _normalise_table(pd.DataFrame(index=range(n)), need_sky=False)
    if "tile" in rows.columns:
        names = list(dict.fromkeys(rows["tile"]))
        groups = [np.flatnonzero(rows["tile"].to_numpy() == t) for t in names]
    else:
        per_tile = int(config.get("ingest.per_tile", per_tile))
        groups = [np.arange(s, min(s + per_tile, n)) for s in range(0, n, per_tile)] or [np.arange(0)]
        names = [f"{tile_prefix}{k:04d}" for k in range(len(groups))]
    report.objects = n
    create_store(out, tiles=names, capacity=max([len(g) for g in groups] + [1]), **store_args)
    plan = _Plan(names)
    for i, g in enumerate(groups):
        plan.jobs.append(
            (
                names[i],
                ingest_cutout_tile,
                (out, i, np.asarray(pix[g]), rows.iloc[g].drop(columns="tile", errors="ignore")),
                {},
            )
        )
    return plan


def _tile_record(tile: str, result: object) -> dict:
    """The report's record of one written tile: its task's record, or ``{"tile", "rows"}`` from its row count."""
    if isinstance(result, dict):
        return result
    if isinstance(result, (int, np.integer)):
        return {"tile": tile, "rows": int(result)}
    raise LensdaskError(f"tile {tile}: the ingest task returned {result!r}, neither a record nor a row count")


def _run_plan(out: str, plan: _Plan, report: IngestReport, client, progress: bool, t_start: float):
    """Run the tile tasks, record the outcome, and return the store opened for reading.

    Fills ``report`` (tiles, failures, seconds), marks failed tiles unwritten (``count`` -1),
    writes the ingest summary into the store's provenance, and writes (or removes) the
    failures table beside a local store.

    Parameters
    ----------
    out : str
        The store.
    plan : _Plan
    report : IngestReport
    client : distributed.Client or None
        Where the tasks run; None: one after another in this process.
    progress : bool
        Show a progress bar over tiles.
    t_start : float
        :func:`time.perf_counter` when the ingest began, seconds.
    """
    from ..fanout import run_tiles

    names = plan.names
    results, failed = run_tiles(
        plan.jobs, client=client, progress=progress, desc="ingest", key_prefix="ingest-tile", register_setup=False
    )  # set up in the first task: see run_tiles
    failed = [{"tile": t, "error": r, "traceback": ""} for t, r in plan.problems.items() if t in names] + failed
    failed.sort(key=lambda r: names.index(r["tile"]))
    report.tiles = [_tile_record(t, r) for t, r in results.items()]
    report.failures = pd.DataFrame(failed, columns=FAILURE_COLUMNS)
    report.seconds = round(time.perf_counter() - t_start, 2)
    store = open_store(out, mode="r+")
    for t in report.failures["tile"]:  # a failed tile is unwritten, even if a dying worker got to commit it
        store_array(store.group, "count")[names.index(t)] = -1
    summary = report.summary()
    store.group.attrs["provenance"] = {
        **store.provenance,
        "ingest": {k: v for k, v in summary.items() if k != "tiles_failed"}
        | {"failures": report.failures[["tile", "error"]].to_dict("records")},
    }
    write_failures(out, report.failures)
    return open_store(out)
