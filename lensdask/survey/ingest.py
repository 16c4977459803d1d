"""Ingest real survey data into a cutout store, one Dask task per tile.

Two kinds of input:

* **Coadd tiles**: per-band FITS images with a WCS (e.g. DES coadd tiles) plus an
  object catalogue (FITS, CSV or Parquet with an id, ``ra``, ``dec`` in degrees).
  Each object's stamp is cut in every band around the pixel its sky position
  falls on *in that band's WCS*. Stamps reaching past the image edge are padded
  with NaN and flagged :data:`~lensdask.store.FLAG_EDGE`; pixels masked by a
  data-quality plane (non-zero) or a weight map (zero) are filled (config
  ``ingest.mask_fill``) and flagged :data:`~lensdask.store.FLAG_MASKED`.
* **Cutout cubes**: per-band FITS cubes (n, H, W), or ``.npy`` (n, bands, H, W) /
  ``.npz`` arrays, with an optional table of ``object_id``, ``ra``, ``dec``, ``label``;
  stamps larger than the store's are cropped around the centre.

:func:`cut_stamps` is pure numpy; :func:`ingest` wires the tiles to Dask.
"""

from __future__ import annotations

import os
import pathlib
import string
from typing import Mapping

import numpy as np
import pandas as pd

from .. import config
from ..errors import LensdaskError
from ..names import check_names
from ..store import FLAG_EDGE, FLAG_MASKED, create_store, open_store, provenance

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
def _read_fits_image(path, hdu=None):
    """(data, header) of the first HDU with a 2-D (or given) image."""
    from astropy.io import fits

    with fits.open(os.fspath(path), memmap=False) as hdul:
        if hdu is not None:
            h = hdul[hdu]
            return np.asarray(h.data), h.header.copy()
        for h in hdul:
            if h.data is not None and getattr(h, "is_image", True) and np.ndim(h.data) >= 2:
                return np.asarray(h.data), h.header.copy()
    raise LensdaskError(f"{path}: no image HDU")


def _read_header(path, hdu=None):
    from astropy.io import fits

    with fits.open(os.fspath(path), memmap=True) as hdul:
        if hdu is not None:
            return hdul[hdu].header.copy()
        for h in hdul:
            if h.header.get("NAXIS", 0) >= 2:
                return h.header.copy()
    raise LensdaskError(f"{path}: no image HDU")


def _wcs(header):
    import warnings

    from astropy.wcs import FITSFixedWarning, WCS

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FITSFixedWarning)
        return WCS(header)


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


def _expand_images(images, bands, tiles) -> dict[str, dict[str, str]]:
    """{tile: {band: path}} from a mapping or a pattern with ``{tile}`` and ``{band}``."""
    if isinstance(images, Mapping):
        return {str(t): {b: os.fspath(p) for b, p in v.items()} for t, v in images.items()}
    pattern = os.fspath(images)
    if _fields(pattern) - {"tile", "band"} or "band" not in _fields(pattern):
        raise LensdaskError(f"image pattern {pattern!r} must hold {{band}} (and {{tile}} for several tiles)")
    if "tile" not in _fields(pattern):
        tiles = tiles or [pathlib.Path(pattern.replace("{band}", "")).stem.strip("_-.") or "tile"]
        return {tiles[0]: {b: pattern.format(band=b) for b in bands}}
    if not tiles:
        import glob
        import re

        first = pattern.format(tile="*", band=bands[0])
        rx = re.escape(pattern.format(tile="\0", band=bands[0])).replace("\\\0", "(.+)").replace("\0", "(.+)")
        tiles = sorted({m.group(1) for p in glob.glob(first) if (m := re.fullmatch(rx, p))})
        if not tiles:
            raise LensdaskError(f"no files match {first!r}")
    return {t: {b: pattern.format(tile=t, band=b) for b in bands} for t in tiles}


# -- one tile (a task) ------------------------------------------------------------------
def ingest_fits_tile(
    out: str,
    tile: int,
    files: dict[str, str],
    rows: pd.DataFrame,
    *,
    weights: dict[str, str] | None = None,
    masks: dict[str, str] | None = None,
    hdu=None,
    mask_fill: str = "median",
) -> int:
    """Cut the stamps of ``rows`` from one tile's band images and write the tile; returns rows written."""
    store = open_store(out, mode="r+")
    n = len(rows)
    images = np.empty((n, len(store.bands), store.stamp, store.stamp), dtype=np.float32)
    flags = np.zeros(n, dtype=np.int32)
    for k, band in enumerate(store.bands):
        data, header = _read_fits_image(files[band], hdu)
        bad = None
        if masks and band in masks:
            dq, _ = _read_fits_image(masks[band], hdu)
            bad = np.asarray(dq) != 0
        if weights and band in weights:
            w, _ = _read_fits_image(weights[band], hdu)
            wbad = ~(np.asarray(w) > 0)
            bad = wbad if bad is None else bad | wbad
        x, y = _wcs(header).celestial.all_world2pix(rows["ra"].to_numpy(), rows["dec"].to_numpy(), 0)
        images[:, k], f = cut_stamps(data, x, y, store.stamp, bad=bad, mask_fill=mask_fill)
        flags |= f
    table = rows[[c for c in ("object_id", "ra", "dec", "label") if c in rows.columns]].copy()
    table["flags"] = flags
    return store.write_tile(tile, images, table)


def _assign_tiles(cat: pd.DataFrame, files: dict[str, dict[str, str]], bands, hdu) -> dict[str, pd.DataFrame]:
    """Rows of each tile: by a ``tile`` column, else the tile whose image holds the object farthest from its edge."""
    names = list(files)
    if "tile" in cat.columns:
        return {t: cat[cat["tile"] == t].drop(columns="tile").reset_index(drop=True) for t in names}
    best = np.full(len(cat), -1)
    margin = np.full(len(cat), -np.inf)
    ra, dec = cat["ra"].to_numpy(), cat["dec"].to_numpy()
    for i, t in enumerate(names):
        header = _read_header(files[t][bands[0]], hdu)
        nx, ny = int(header["NAXIS1"]), int(header["NAXIS2"])
        x, y = _wcs(header).celestial.all_world2pix(ra, dec, 0)
        m = np.minimum(np.minimum(x + 0.5, nx - 0.5 - x), np.minimum(y + 0.5, ny - 0.5 - y))
        m = np.where(np.isfinite(m), m, -np.inf)
        take = (m > 0) & (m > margin)
        best[take] = i
        margin[take] = m[take]
    return {t: cat[best == i].reset_index(drop=True) for i, t in enumerate(names)}


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
        planes = [np.asarray(_read_fits_image(paths[b], hdu)[0], dtype=np.float32) for b in bands]
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
def ingest(
    out: str | os.PathLike,
    *,
    images=None,
    catalog=None,
    weights=None,
    masks=None,
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
    mask_fill: str | None = None,
    client=None,
    overwrite: bool = False,
    progress: bool = True,
):
    """Ingest coadd tile images + a catalogue, or cutout cubes / arrays, into a new cutout store.

    Parameters
    ----------
    out : str or path
        The store to create.
    images : str or mapping, optional
        Per-band images with WCS: a pattern like ``"tiles/{tile}_{band}.fits"``
        (tiles found by glob when ``tiles`` is not given) or ``{tile: {band: path}}``.
    catalog : path or DataFrame
        With ``images``: object id (``object_id``/``coadd_object_id``/``id``), ``ra``,
        ``dec`` (degrees), optional ``tile``/``tilename`` (else each object goes to the
        tile holding it farthest from the edge) and ``label``.
    weights, masks : str or mapping, optional
        Inverse-variance maps (0 = masked) and data-quality planes (non-zero =
        masked), patterned like ``images``.
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
        FITS HDU of the images (config ``ingest.hdu``; default the first image HDU).
    mask_fill : {"median", "nan"}, optional
        Config ``ingest.mask_fill``.
    client : distributed.Client, optional
        Where the tile tasks run; default the current client, else in this process.
    overwrite : bool
        Replace an existing store.

    Returns
    -------
    CutoutStore
    """
    from ..cluster import current_client

    bands = list(config.get("survey.bands", bands))
    stamp = int(config.get("survey.stamp", stamp))
    pixel_scale = float(config.get("survey.pixel_scale", pixel_scale))
    hdu = config.get("ingest.hdu", hdu)
    mask_fill = str(config.get("ingest.mask_fill", mask_fill))
    if mask_fill not in MASK_FILLS:
        raise LensdaskError(f"unknown mask_fill {mask_fill!r}; use {' or '.join(MASK_FILLS)}")
    if sum(v is not None for v in (images, cubes, arrays)) != 1:
        raise LensdaskError("give exactly one of images (with a catalogue), cubes or arrays")
    out = os.fspath(out)
    if "://" not in out:
        out = os.path.abspath(out)
    client = client if client is not None else current_client()
    prov = provenance(inputs={
        k: (v if isinstance(v, str) else type(v).__name__)
        for k, v in dict(images=images, catalog=catalog, cubes=cubes, arrays=arrays, table=table).items()
        if v is not None
    })

    jobs = []  # (function, args, kwargs)
    if images is not None:
        if catalog is None:
            raise LensdaskError("ingest of tile images needs a catalogue (id, ra, dec)")
        if tiles is not None:
            check_names(tiles, source="--tiles", rows=range(1, len(tiles) + 1))
        files = _expand_images(images, bands, tiles)
        check_names(files, source=f"the tiles matching {images!r}" if isinstance(images, str) else "the tile images",
                    rows=range(1, len(files) + 1))
        wfiles = _expand_images(weights, bands, list(files)) if weights is not None else {}
        mfiles = _expand_images(masks, bands, list(files)) if masks is not None else {}
        for t, fb in files.items():
            missing = [b for b in bands if b not in fb or not os.path.exists(fb[b])]
            if missing:
                raise LensdaskError(f"tile {t}: no image for bands {missing} ({fb})")
        header = _read_header(next(iter(files.values()))[bands[0]], hdu)
        from astropy.wcs.utils import proj_plane_pixel_scales

        scale = float(np.mean(proj_plane_pixel_scales(_wcs(header).celestial)) * 3600.0)
        if abs(scale / pixel_scale - 1) > 0.05:
            raise LensdaskError(f"the images are at {scale:.4f} arcsec/px, the store at {pixel_scale} arcsec/px")
        cat = _normalise_table(read_table(catalog), need_sky=True, source=catalog)
        per = _assign_tiles(cat, files, bands, hdu)
        names = list(files)
        capacity = max([len(r) for r in per.values()] + [1])
        create_store(out, tiles=names, capacity=capacity, bands=bands, pixel_scale=pixel_scale, stamp=stamp,
                     provenance=prov, overwrite=overwrite)
        for i, t in enumerate(names):
            jobs.append((ingest_fits_tile, (out, i, files[t], per[t]),
                         dict(weights=wfiles.get(t), masks=mfiles.get(t), hdu=hdu, mask_fill=mask_fill)))
    else:
        pix, inner = load_cutouts(cubes, arrays, bands, hdu)
        n = pix.shape[0]
        if pix.ndim != 4 or pix.shape[1] != len(bands):
            raise LensdaskError(f"cutouts have shape {pix.shape}; expected (n, {len(bands)} bands {bands}, H, W)")
        _crop(pix[:0], stamp)
        src = read_table(table) if table is not None else inner
        rows = _normalise_table(src, n, need_sky=False, source=table if table is not None else arrays) if src is not None else _normalise_table(pd.DataFrame(index=range(n)), need_sky=False)
        if "tile" in rows.columns:
            names = list(dict.fromkeys(rows["tile"]))
            groups = [np.flatnonzero(rows["tile"].to_numpy() == t) for t in names]
        else:
            per_tile = int(config.get("ingest.per_tile", per_tile))
            groups = [np.arange(s, min(s + per_tile, n)) for s in range(0, n, per_tile)] or [np.arange(0)]
            names = [f"{tile_prefix}{k:04d}" for k in range(len(groups))]
        capacity = max([len(g) for g in groups] + [1])
        create_store(out, tiles=names, capacity=capacity, bands=bands, pixel_scale=pixel_scale, stamp=stamp,
                     provenance=prov, overwrite=overwrite)
        for i, g in enumerate(groups):
            jobs.append((ingest_cutout_tile, (out, i, np.asarray(pix[g]), rows.iloc[g].drop(columns="tile", errors="ignore")), {}))

    from tqdm.auto import tqdm

    bar = tqdm(total=len(jobs), desc="ingest", unit="tile", disable=not progress)
    if client is None:
        for f, a, k in jobs:
            f(*a, **k)
            bar.update()
    else:
        from distributed import as_completed

        futs = [client.submit(f, *a, **k, pure=False) for f, a, k in jobs]
        for fut in as_completed(futs, loop=client.loop):
            fut.result()  # a failed tile is an error: the store would be incomplete
            bar.update()
    bar.close()
    return open_store(out)
