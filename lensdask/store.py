"""The cutout store: one Zarr v3 group holding multi-band stamps tile by tile.

The same format serves training sets and survey data. Layout (schema
``lensdask.cutouts/2``)::

    attributes  schema, bands, pixel_scale (arcsec/px), stamp (px), classes,
                params (names of the per-row simulation parameters), provenance,
                encoding (how the pixels are stored, see below), survey (the survey profile
                of its cutouts, lensdask.survey.profiles; stores written before it are ``des``)
    images      (n_tiles, capacity, n_bands, stamp, stamp)  int32 (quantised) or float32
                chunks (1, chunk_rows, ...), one shard per tile
    scale, zero (n_tiles, capacity, n_bands)  float32   quantised stores only: step and
                offset of each row and band (scale 0: that band is stored losslessly)
    sky, noise  (n_tiles, capacity, n_bands)  float32   quantised stores only (written since
                they were introduced; older /2 stores lack them): sky level and sky noise of each
                row and band measured on the pixels written, flux units, NaN where not measurable
    psf_fwhm    (n_tiles, capacity, n_bands)  float32   PSF FWHM (arcsec) of each row and band, NaN
                unknown (written since it was introduced; older stores lack it and still open)
    psf_origin  (n_tiles, n_bands)  str   where each tile's PSF came from: ``simulated`` (the seeing
                drawn per row), ``psfex:<file>``, ``header:<keyword>``, ``stars`` (measured), "" unknown
    count       (n_tiles,)            int64  rows written in each tile; -1 = not written
    tile        (n_tiles,)            str    tile names
    object_id   (n_tiles, capacity)   int64
    ra, dec     (n_tiles, capacity)   float64, degrees
    label       (n_tiles, capacity)   int16  index into ``classes``; -1 = unknown
    flags       (n_tiles, capacity)   int32  bit set: FLAG_EDGE (1), FLAG_MASKED (2),
                                             FLAG_LOSSLESS (4); 0 = clean
    params/<p>  (n_tiles, capacity)   float32, NaN where not applicable

Pixels are stored one of two ways (attribute ``encoding``, config ``store.quantise``):
``quantised`` (the default) keeps integers on a step that is a fraction of each
stamp and band's sky noise, with subtractive dithering, entropy-coded (Pcodec
or Rice: :mod:`lensdask.quantise`, :mod:`lensdask.codecs`); ``float32`` keeps the values
exactly (Blosc). Readers get float32 pixels either way, or the models' normalised inputs
(:meth:`CutoutStore.read_normalised`, :meth:`CutoutStore.iter_normalised`: one read path for
training, evaluation and search), which a quantised store with ``sky`` and ``noise`` computes
straight from its codes. Stores of schema
``lensdask.cutouts/1`` (always float32) still open; ``lensdask convert`` rewrites them.

A tile is one shard of ``images`` and one chunk of every per-row array, so one
task writes a tile in one go and no two writers ever touch the same shard
(zarr-python #3514). ``count`` is written last: a tile whose count is -1 was
never committed, and rewriting a tile is idempotent, so tile writes are safe
to retry.

This module does I/O only: it hands out numpy arrays and pandas tables and
never decides how work is chunked.
"""

from __future__ import annotations

import datetime
import os
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd
import zarr
from zarr.codecs import BloscCodec, Crc32cCodec

from . import config
from .codecs import CODECS
from .errors import LensdaskError, StoreNotFoundError, StoreSchemaError, StoreWriteError
from .names import check_names
from .quantise import dequantise, quantise_measured

SCHEMA = "lensdask.cutouts/2"

DEFAULT_SURVEY = "des"
"""The survey of a store that records none (written before stores recorded their survey)."""
"""Schema name and version written to every new store."""

READABLE_SCHEMAS = ("lensdask.cutouts/1", SCHEMA)
"""Schemas this lensdask opens: /1 (float32 pixels, no ``encoding``) and /2."""

ROW_COLUMNS = {
    "object_id": ("int64", -1),
    "ra": ("float64", np.nan),
    "dec": ("float64", np.nan),
    "label": ("int16", -1),
    "flags": ("int32", 0),
}
"""Per-row arrays every store has: name -> (dtype, fill value)."""

FLAG_EDGE = 1
"""``flags`` bit: the stamp reached past the image edge; the missing pixels are padded (NaN)."""
FLAG_MASKED = 2
"""``flags`` bit: some pixels were masked by the data-quality plane."""
FLAG_LOSSLESS = 4
"""``flags`` bit: a quantised store kept some band of this row losslessly (float32), because
its sky noise could not be measured (all NaN or a constant border), it held infinite pixels,
or its values overflowed the integer range."""

FLOAT_ENCODING = {"pixels": "float32"}
"""The ``encoding`` of a store that keeps pixel values exactly (and of every schema /1 store)."""

PARAM_DTYPE = "float32"


def _storage_options(url: str) -> dict | None:
    if "://" in url and url.split("://", 1)[0] in ("file", "local"):
        return {"auto_mkdir": True}
    return None


def _is_local(url: str) -> bool:
    return "://" not in url


def absolute_url(url: str | os.PathLike) -> str:
    """A store location that means the same from any working directory: a URL (``scheme://...``) as it is,
    a local path made absolute. Dask workers may start elsewhere, so a store is named this way before it is
    handed to them."""
    url = os.fspath(url)
    return url if "://" in url else os.path.abspath(url)


def provenance(command: str | None = None, **extra) -> dict:
    """Provenance attributes for a new store or model card.

    Parameters
    ----------
    command : str, optional
        The command line or API call that made the product; defaults to ``sys.argv``.
    **extra
        Further JSON-serialisable items (seed, inputs, ...).
    """
    from ._version import __version__

    prov = {
        "command": command if command is not None else " ".join(sys.argv),
        "lensdask_version": __version__,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    prov.update(extra)
    return prov


def store_array(group: zarr.Group, name: str) -> zarr.Array:
    """The store's array ``name`` (every member a lensdask store reads or writes by name is an array).

    Raises
    ------
    StoreSchemaError
        ``name`` is a group in this store.
    """
    member = group[name]
    if not isinstance(member, zarr.Array):
        raise StoreSchemaError(f"store member {name!r} is a group, not an array")
    return member


@dataclass(frozen=True)
class TileData:
    """The rows of one tile: ``images`` (n, n_bands, stamp, stamp) and their ``table``."""

    name: str
    index: int
    images: np.ndarray
    table: pd.DataFrame


class CutoutStore:
    """An open cutout store. Create one with :func:`create_store` or :func:`open_store`."""

    def __init__(self, group: zarr.Group, url: str):
        self.group = group
        self.url = url
        attrs: dict[str, Any] = dict(group.attrs)  # JSON values, of the forms open_store checked
        self.bands: list[str] = list(attrs["bands"])
        self.pixel_scale: float = float(attrs["pixel_scale"])
        self.stamp: int = int(attrs["stamp"])
        self.classes: list[str] = list(attrs["classes"])
        self.params: list[str] = list(attrs.get("params", []))
        self.provenance: dict = dict(attrs.get("provenance", {}))
        self.schema: str = str(attrs.get("schema"))
        self.encoding: dict = dict(attrs.get("encoding", FLOAT_ENCODING))
        self.survey: str = str(attrs.get("survey", DEFAULT_SURVEY))
        """The survey profile of the cutouts (:mod:`lensdask.survey.profiles`); ``des`` for stores written before
        stores recorded it."""
        """How the pixels are stored: ``{"pixels": "float32"}`` or ``{"pixels": "quantised",
        "step": sigma fraction, "seed", "border": px, "codec", "nblock"}``."""
        self.quantised: bool = self.encoding.get("pixels") == "quantised"
        self.sky_stats: bool = self.quantised and all(name in group for name in SKY_ARRAYS)
        """Whether the rows' sky level and noise are stored (:data:`SKY_ARRAYS`), so that the
        models' inputs are normalised straight from the codes."""
        self.psf_known: bool = all(name in group for name in PSF_ARRAYS)
        """Whether the store keeps each row's PSF FWHM per band (:data:`PSF_ARRAYS`); stores
        written before it was introduced do not, and read alike."""
        images = store_array(group, "images")
        self.n_tiles: int = int(images.shape[0])
        self.capacity: int = int(images.shape[1])
        self.chunk_rows: int = int(images.chunks[1])
        """Rows per compressed chunk: a read of fewer rows still decodes the whole chunk."""
        # Per-tile metadata, read on first use and then kept: ``count`` is one chunk per tile (so
        # tile writers never share a chunk), and reading it whole costs one file per tile.
        self._names: tuple[str, ...] | None = None
        self._counts: np.ndarray | None = None
        self._known: dict[int, tuple[str, int]] = {}  # tile -> (name, count) handed to a task
        self._by_name: dict[str, int] | None = None

    # -- description -----------------------------------------------------------------
    def __repr__(self) -> str:
        return (
            f"CutoutStore({self.url!r}, tiles={self.n_tiles}, rows={self.n_rows}, "
            f"bands={''.join(self.bands)}, stamp={self.stamp}, classes={self.classes})"
        )

    @property
    def attrs(self) -> dict:
        return dict(self.group.attrs)

    @property
    def tiles(self) -> list[str]:
        """Tile names, in tile-index order (a new list each time; :meth:`tile_name` for one).

        Read once, on first use, and kept (:meth:`refresh` reads them again).
        """
        return list(self._tile_names())

    def _tile_names(self) -> tuple[str, ...]:
        if self._names is None:
            self._names = tuple(str(t) for t in np.asarray(store_array(self.group, "tile")[:]))
        return self._names

    @property
    def counts(self) -> np.ndarray:
        """Rows written per tile; -1 for a tile never written (a read-only array).

        A snapshot: read once, on first use, and kept, so a loop over tiles costs one read of
        the ``count`` array (one small file per tile), not one per tile. Writes through this
        object keep it in step; after tiles were written by other processes (the tasks of a
        fan-out), call :meth:`refresh`, or open the store again.
        """
        if self._counts is None:
            self._counts = np.array(store_array(self.group, "count")[:], dtype=np.int64)
        view = self._counts.view()
        view.flags.writeable = False
        return view

    def refresh(self) -> CutoutStore:
        """Forget the tile names and counts read so far: the next use reads them again. Returns ``self``."""
        self._names = None
        self._counts = None
        self._known = {}
        self._by_name = None
        return self

    def know_tile(self, t: int, name: str, count: int) -> CutoutStore:
        """Take tile ``t``'s name and row count as given instead of reading them. Returns ``self``.

        A task that works on one tile gets these in its arguments from the client, which read
        the store's per-tile arrays once for the whole run: reading them in every task would
        cost one read of the ``tile`` array (every name) per task.
        """
        self._known[int(t)] = (str(name), int(count))
        return self

    def tile_name(self, t: int) -> str:
        """The name of tile ``t`` (given by :meth:`know_tile`, or from :attr:`tiles`)."""
        known = self._known.get(int(t))
        return known[0] if known is not None else self._tile_names()[t]

    def _set_count(self, t: int, n: int) -> None:
        """Write tile ``t``'s count (the commit mark) and keep what this object knows in step."""
        store_array(self.group, "count")[t] = n
        if self._counts is not None:
            self._counts[t] = n
        if t in self._known:
            self._known[t] = (self._known[t][0], n)

    @property
    def n_rows(self) -> int:
        """Total rows in committed tiles."""
        c = self.counts
        return int(c[c > 0].sum())

    def written_tiles(self) -> list[int]:
        """Indices of the tiles whose write was committed."""
        return [int(i) for i in np.flatnonzero(self.counts >= 0)]

    def written_values(self, name: str, slab: int = 256) -> np.ndarray:
        """Every written row's value of the per-row array ``name`` (``label``, ``flags``, ...), one array.

        Read ``slab`` tiles at a time (zarr fetches a slab's chunks concurrently), so a store of
        10,000 tiles costs 40 reads, not 10,000, and memory holds one slab, not the whole array.
        """
        arr = store_array(self.group, name)
        counts = self.counts
        parts = []
        for a in range(0, self.n_tiles, slab):
            b = min(a + slab, self.n_tiles)
            n = counts[a:b]
            if not (n > 0).any():
                continue
            values = np.asarray(arr[a:b, : int(n.max())])
            keep = np.arange(values.shape[1])[None, :] < n[:, None]
            parts.append(values[keep])
        return np.concatenate(parts) if parts else np.zeros(0, dtype=arr.dtype)

    def tile_index(self, tile: int | str) -> int:
        """The index of a tile given by index or name."""
        if isinstance(tile, (int, np.integer)):
            if not 0 <= tile < self.n_tiles:
                raise IndexError(f"tile index {tile} outside 0..{self.n_tiles - 1}")
            return int(tile)
        for t, (name, _) in self._known.items():  # a task's own tile, without reading every name
            if name == tile:
                return t
        if self._by_name is None:
            self._by_name = {name: i for i, name in enumerate(self._tile_names())}
        index = self._by_name.get(tile)
        if index is None:
            raise KeyError(f"no tile named {tile!r} in {self.url}")
        return index

    @property
    def lens_class(self) -> int:
        """Index of the lens class in ``classes``."""
        return self.classes.index("lens")

    # -- writing ---------------------------------------------------------------------
    def write_tile(self, tile: int | str, images: np.ndarray, table: pd.DataFrame) -> int:
        """Write all rows of one tile, replacing whatever the tile held.

        Parameters
        ----------
        tile : int or str
            Tile index or name.
        images : numpy.ndarray
            (n, n_bands, stamp, stamp) pixel values, in the store's band order.
        table : pandas.DataFrame
            n rows with ``object_id``, ``ra``, ``dec`` (degrees), optionally ``label``
            (index into ``classes``, -1 unknown), any of the store's ``params`` and the PSF
            FWHM of each band, ``psf_fwhm_<band>`` (arcsec; :func:`psf_columns`).

        Returns
        -------
        int
            The number of rows written.
        """
        t = self.tile_index(tile)
        images = np.asarray(images)
        n = len(table)
        expected = (n, len(self.bands), self.stamp, self.stamp)
        if images.shape != expected:
            raise StoreWriteError(
                f"tile {t}: images have shape {images.shape}, expected {expected} "
                f"(rows, bands {self.bands}, stamp, stamp)"
            )
        if n > self.capacity:
            raise StoreWriteError(f"tile {t}: {n} rows exceed the store's capacity of {self.capacity}")
        missing = [c for c in ("object_id", "ra", "dec") if c not in table.columns]
        if missing:
            raise StoreWriteError(f"tile {t}: table lacks the columns {missing}")
        known = set(ROW_COLUMNS) | set(self.params) | {"tile", "row"} | set(psf_columns(self.bands))
        unknown = [c for c in table.columns if c not in known]
        if unknown:
            raise StoreWriteError(
                f"tile {t}: columns {unknown} are neither row columns {list(ROW_COLUMNS)} "
                f"nor parameters declared when the store was created {self.params}"
            )
        if "label" in table.columns:
            labels = table["label"].to_numpy()
            bad = (labels < -1) | (labels >= len(self.classes))
            if bad.any():
                raise StoreWriteError(
                    f"tile {t}: labels {sorted(set(labels[bad].tolist()))} are not indices "
                    f"into classes {self.classes} (or -1 for unknown)"
                )

        g = self.group
        rows = self.row_arrays(table)
        if self.quantised:
            enc = self.encoding
            q, scale, zero, sky, noise = quantise_measured(
                images,
                self._keys(t, 0, rows["object_id"][:n]),
                step=float(enc["step"]),
                seed=int(enc["seed"]),
                border=int(enc["border"]),
            )
            rows["flags"][:n] |= np.where((scale == 0).any(axis=1), FLAG_LOSSLESS, 0).astype(np.int32)
        self._set_count(t, -1)  # uncommitted while the rows change
        pixels = store_array(g, "images")
        if n and self.quantised:
            pixels[t, :n] = q
            per_band = [("scale", scale), ("zero", zero)] + ([("sky", sky), ("noise", noise)] if self.sky_stats else [])
            for name, value in per_band:
                full = np.full((self.capacity, len(self.bands)), np.nan, dtype=np.float32)
                full[:n] = value
                store_array(g, name)[t] = full
        elif n:
            pixels[t, :n] = images.astype(pixels.dtype, copy=False)
        return self.commit_rows(t, rows, table)

    def row_arrays(self, table: pd.DataFrame) -> dict[str, np.ndarray]:
        """The per-row arrays of a tile holding ``table``'s rows, each ``capacity`` long.

        Rows past ``len(table)`` hold the fill values. The ``FLAG_LOSSLESS`` bit is
        cleared: this store's own encoding sets it, never a copied table.
        """
        n = len(table)
        rows = {}
        for name, (dtype, fill) in ROW_COLUMNS.items():
            row = np.full(self.capacity, fill, dtype=dtype)
            if name in table.columns:
                row[:n] = table[name].to_numpy(dtype=dtype)
            rows[name] = row
        rows["flags"] &= ~np.int32(FLAG_LOSSLESS)
        return rows

    def commit_rows(self, t: int, rows: dict[str, np.ndarray], table: pd.DataFrame) -> int:
        """Write a tile's per-row arrays, ``params`` and PSF FWHM (``psf_fwhm_<band>`` columns of ``table``;
        NaN where absent), then its ``count`` (the commit mark).

        Call after the tile's pixels are written. Returns the number of rows, ``len(table)``.
        """
        n = len(table)
        g = self.group
        for name, row in rows.items():
            store_array(g, name)[t] = row
        for p in self.params:
            row = np.full(self.capacity, np.nan, dtype=PARAM_DTYPE)
            if p in table.columns:
                row[:n] = table[p].to_numpy(dtype=PARAM_DTYPE, na_value=np.nan)
            store_array(g, f"params/{p}")[t] = row
        if self.psf_known:
            fwhm = np.full((self.capacity, len(self.bands)), np.nan, dtype=np.float32)
            for k, c in enumerate(psf_columns(self.bands)):
                if c in table.columns:
                    fwhm[:n, k] = table[c].to_numpy(dtype=np.float32, na_value=np.nan)
            store_array(g, "psf_fwhm")[t] = fwhm
        self._set_count(t, n)
        return n

    def write_psf_origin(self, tile: int | str, origins: Sequence[str]) -> None:
        """Record where tile ``tile``'s PSF came from, one string per band (see :data:`PSF_ORIGINS`).

        Tile-level provenance beside the per-row ``psf_fwhm``; a store without PSF arrays ignores it.
        """
        if not self.psf_known:
            return
        t = self.tile_index(tile)
        origins = [str(o) for o in origins]
        if len(origins) != len(self.bands):
            raise StoreWriteError(f"tile {t}: {len(origins)} PSF origins for the bands {self.bands}")
        store_array(self.group, "psf_origin")[t] = np.asarray(origins, dtype=object)

    def add_tiles(self, names: Sequence[str]) -> list[int]:
        """Grow the store by empty tiles named ``names``; returns their indices.

        Only the first axis of every array grows; existing tiles are untouched.
        Changing the store's shape is not safe while another process adds tiles
        (tile writes to distinct tiles remain safe).
        """
        names = check_names([str(n) for n in names], source="the tiles to add", rows=range(1, len(names) + 1))
        clash = sorted(set(names) & set(self.tiles)) + sorted({n for n in names if names.count(n) > 1})
        if clash:
            raise StoreWriteError(f"tile names {clash} already exist in {self.url}")
        g = self.group
        n0 = self.n_tiles
        n1 = n0 + len(names)
        arrays = ["images", "count", "tile", *ROW_COLUMNS] + [f"params/{p}" for p in self.params]
        arrays += list(QUANTISE_ARRAYS) if self.quantised else []
        arrays += list(SKY_ARRAYS) if self.sky_stats else []
        arrays += list(PSF_ARRAYS) if self.psf_known else []
        for name in arrays:
            arr = store_array(g, name)
            arr.resize((n1, *arr.shape[1:]))
        store_array(g, "count")[n0:n1] = -1
        store_array(g, "tile")[n0:n1] = np.asarray(names, dtype=object)
        self.n_tiles = n1
        self.refresh()
        return list(range(n0, n1))

    def add_classes(self, classes: Sequence[str]) -> list[str]:
        """Append class names not yet in ``classes`` (existing labels keep their indices)."""
        new = [c for c in dict.fromkeys(classes) if c not in self.classes]
        if new:
            self.classes = self.classes + new
            self.group.attrs["classes"] = self.classes
        return self.classes

    # -- reading ---------------------------------------------------------------------
    def tile_rows(self, t: int) -> int:
        """Rows written in tile ``t``, -1 if never written: as given (:meth:`know_tile`), from the
        :attr:`counts` snapshot, or read (one chunk of ``count``)."""
        if t in self._known:
            return self._known[t][1]
        if self._counts is not None:
            return int(self._counts[t])
        return int(np.asarray(store_array(self.group, "count")[t]))

    def _count(self, t: int) -> int:
        """Rows of tile ``t``; an error if it was never written."""
        n = self.tile_rows(t)
        if n < 0:
            raise StoreWriteError(f"tile {t} ({self.tile_name(t)}) of {self.url} has not been written")
        return n

    def read_table(self, tile: int | str, start: int = 0, stop: int | None = None) -> pd.DataFrame:
        """Per-row metadata of rows ``start:stop`` of one tile (no pixels)."""
        t = self.tile_index(tile)
        n = self._count(t)
        stop = n if stop is None else min(stop, n)
        g = self.group
        cols = {"tile": np.full(stop - start, self.tile_name(t), dtype=object), "row": np.arange(start, stop)}
        for name in ROW_COLUMNS:
            cols[name] = np.asarray(store_array(g, name)[t, start:stop])
        for p in self.params:
            cols[p] = np.asarray(store_array(g, f"params/{p}")[t, start:stop])
        return pd.DataFrame(cols)

    def read_images(self, tile: int | str, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Pixels of rows ``start:stop`` of one tile, (n, n_bands, stamp, stamp) float32 (or float16)."""
        t = self.tile_index(tile)
        n = self._count(t)
        stop = n if stop is None else min(stop, n)
        raw = np.asarray(store_array(self.group, "images")[t, start:stop])
        if not self.quantised:
            return raw
        g = self.group
        return self._decode(
            t,
            start,
            raw,
            store_array(g, "scale")[t, start:stop],
            store_array(g, "zero")[t, start:stop],
            np.asarray(store_array(g, "object_id")[t, start:stop]),
        )

    def read_psf(self, tile: int | str, start: int = 0, stop: int | None = None) -> np.ndarray:
        """PSF FWHM (arcsec) of rows ``start:stop`` of one tile, (n, n_bands) float32; NaN where unknown,
        and everywhere for a store that does not keep it (:attr:`psf_known`)."""
        t = self.tile_index(tile)
        n = self._count(t)
        stop = n if stop is None else min(stop, n)
        if not self.psf_known:
            return np.full((max(stop - start, 0), len(self.bands)), np.nan, dtype=np.float32)
        return np.asarray(store_array(self.group, "psf_fwhm")[t, start:stop], dtype=np.float32)

    def read_noise(self, tile: int | str, start: int = 0, stop: int | None = None) -> np.ndarray | None:
        """Sky noise sigma (flux units) of rows ``start:stop`` of one tile, (n, n_bands) float32, as the
        quantiser measured it; None for a store that does not keep it (:attr:`sky_stats`)."""
        if not self.sky_stats:
            return None
        t = self.tile_index(tile)
        n = self._count(t)
        stop = n if stop is None else min(stop, n)
        return np.asarray(store_array(self.group, "noise")[t, start:stop], dtype=np.float32)

    def psf_origins(self, tile: int | str) -> list[str]:
        """Where tile ``tile``'s PSF came from, one string per band ("" unknown; all "" without PSF arrays)."""
        if not self.psf_known:
            return [""] * len(self.bands)
        t = self.tile_index(tile)
        return [str(o) for o in np.asarray(store_array(self.group, "psf_origin")[t])]

    def _keys(self, t: int, start: int, object_id: np.ndarray) -> np.ndarray:
        """Dither keys of rows ``start:start+len(object_id)`` of tile ``t``: the object id, or
        for rows without one (-1) a negative key from the row's place in the store."""
        oid = np.asarray(object_id, dtype=np.int64)
        place = -1 - (np.int64(t) * self.capacity + start + np.arange(len(oid), dtype=np.int64))
        return np.where(oid >= 0, oid, place)

    def _decode(self, t, start, raw, scale, zero, object_id, out=None) -> np.ndarray:
        """Float32 pixels of quantised rows ``start:`` of tile ``t`` (see :func:`lensdask.quantise.dequantise`)."""
        return dequantise(raw, scale, zero, self._keys(t, start, object_id), seed=int(self.encoding["seed"]), out=out)

    def read_tile(self, tile: int | str) -> TileData:
        """All rows of one tile, pixels and table."""
        t = self.tile_index(tile)
        return TileData(self.tile_name(t), t, self.read_images(t), self.read_table(t))

    def read_catalog(self) -> pd.DataFrame:
        """Per-row metadata of every committed tile, one table."""
        frames = [self.read_table(t) for t in self.written_tiles()]
        if not frames:
            return self.read_table_empty()
        return pd.concat(frames, ignore_index=True)

    def read_table_empty(self) -> pd.DataFrame:
        cols = ["tile", "row", *ROW_COLUMNS, *self.params]
        return pd.DataFrame({c: [] for c in cols})

    def iter_batches(self, batch_size: int, tiles: Iterable[int] | None = None, *, reuse: bool = False):
        """Yield ``(images, table)`` batches of at most ``batch_size`` rows, tile by tile.

        Reads the pixels one batch at a time, so a store larger than memory can be
        streamed; a tile's table (a few columns per row) is read once, whole.

        Parameters
        ----------
        batch_size : int
            Rows per batch; a multiple of :attr:`chunk_rows` decodes each chunk once.
        tiles : iterable of int, optional
            Tile indices (default: every written tile).
        reuse : bool
            Decode every batch into one buffer: ``images`` is then overwritten by the
            next batch, so a consumer must be done with it (or copy it) before asking
            for the next. Saves an allocation and its page faults per batch.
        """
        pix = None
        for block in self._stored_blocks(batch_size, tiles, reuse=reuse, sky=False):
            if not self.quantised:
                yield block.values, block.table
                continue
            out = None
            if reuse:
                if pix is None:
                    pix = np.empty((min(batch_size, self.capacity), *block.values.shape[1:]), dtype=np.float32)
                out = pix[: len(block.values)]
            yield (
                self._decode(block.t, block.start, block.values, block.scale, block.zero, block.object_id, out=out),
                block.table,
            )

    def iter_normalised(
        self, batch_size: int, specs: Sequence[dict | None], tiles: Iterable[int] | None = None, *, raw: bool = False
    ):
        """Yield ``(inputs, table)``: the models' inputs of at most ``batch_size`` rows, tile by tile.

        As :meth:`iter_batches`, with the rows made ready for models as :meth:`read_normalised`
        makes them. The stored values are read into one reused buffer; nothing yielded refers
        to it.

        Parameters
        ----------
        batch_size : int
            Rows per batch; a multiple of :attr:`chunk_rows` decodes each chunk once.
        specs : sequence of dict or None
            Normalisation specifications (model cards' ``normalisation``).
        tiles : iterable of int, optional
            Tile indices (default: every written tile).
        raw : bool
            Also hand out every row's float32 pixels (``inputs.raw``).

        Yields
        ------
        inputs : lensdask.normalise.ModelInputs
        table : pandas.DataFrame
        """
        for block in self._stored_blocks(batch_size, tiles, reuse=True, sky=True):
            yield self._model_inputs(block, specs, raw), block.table

    def read_normalised(
        self,
        tile: int | str,
        start: int = 0,
        stop: int | None = None,
        specs: Sequence[dict | None] = (None,),
        *,
        raw: bool = False,
    ):
        """The models' inputs of rows ``start:stop`` of one tile.

        Rows with a non-finite pixel are left out (``inputs.bad`` marks them). Float32 stores,
        quantised stores without :data:`SKY_ARRAYS`, and rows or normalisations the codes
        cannot serve (see :func:`lensdask.quantise.codes_normalisable`: NaN pixels, lossless
        bands, unmeasurable noise; a ``border`` other than the store's, method ``none``) are
        decoded and given :func:`lensdask.normalise.normalise`; the other rows of a
        quantised store are normalised straight from their codes with the sky level and noise
        measured when they were written (:func:`lensdask.quantise.normalise_codes`).

        Parameters
        ----------
        tile : int or str
        start, stop : int
            Row range within the tile (``stop`` defaults to its count).
        specs : sequence of dict or None
            Normalisation specifications (model cards' ``normalisation``); equal ones share
            one array.
        raw : bool
            Also return every row's float32 pixels (``inputs.raw``), decoded.

        Returns
        -------
        lensdask.normalise.ModelInputs
        """
        t = self.tile_index(tile)
        n = self._count(t)
        stop = n if stop is None else min(stop, n)
        return self._model_inputs(self._stored_block(t, start, stop, sky=True), specs, raw)

    def _stored_block(self, t: int, start: int, stop: int, *, sky: bool) -> _StoredBlock:
        """Rows ``start:stop`` of tile ``t`` as stored (codes, or float pixels) with their per-row arrays."""
        g = self.group
        block = _StoredBlock(t, start, np.asarray(store_array(g, "images")[t, start:stop]))
        if not self.quantised:
            return block
        block.object_id = np.asarray(store_array(g, "object_id")[t, start:stop])
        block.scale = np.asarray(store_array(g, "scale")[t, start:stop])
        block.zero = np.asarray(store_array(g, "zero")[t, start:stop])
        if sky and self.sky_stats:
            block.sky = np.asarray(store_array(g, "sky")[t, start:stop])
            block.noise = np.asarray(store_array(g, "noise")[t, start:stop])
        return block

    def _stored_blocks(self, batch_size: int, tiles: Iterable[int] | None, *, reuse: bool, sky: bool):
        """:class:`_StoredBlock` of at most ``batch_size`` rows, tile by tile; their values in one
        reused buffer if ``reuse``. The per-row arrays of a tile are read once, whole."""
        images = store_array(self.group, "images")
        g = self.group
        buf = None
        for t in self.written_tiles() if tiles is None else tiles:
            table = self.read_table(t)
            n = len(table)
            per_row = {}
            if self.quantised:
                names = QUANTISE_ARRAYS + (SKY_ARRAYS if sky and self.sky_stats else ())
                per_row = {name: np.asarray(store_array(g, name)[t, :n]) for name in names}
                oid = table["object_id"].to_numpy()
            for start in range(0, n, batch_size):
                stop = min(start + batch_size, n)
                batch = table.iloc[start:stop].reset_index(drop=True)
                out = None
                if reuse:
                    if buf is None:
                        buf = np.empty((min(batch_size, self.capacity), *images.shape[2:]), dtype=images.dtype)
                    out = buf[: stop - start]
                    images.get_basic_selection((t, slice(start, stop)), out=_nd_buffer(out))
                else:
                    out = np.asarray(images[t, start:stop])
                block = _StoredBlock(t, start, out, batch)
                if self.quantised:
                    block.object_id = oid[start:stop]
                    for name, value in per_row.items():
                        setattr(block, name, value[start:stop])
                yield block

    def _model_inputs(self, block: _StoredBlock, specs: Sequence[dict | None], raw: bool):
        """:class:`~lensdask.normalise.ModelInputs` of one stored block (see :meth:`read_normalised`)."""
        from .normalise import ModelInputs, model_inputs, nonfinite_rows, normalisation_spec, normalise, spec_key
        from .quantise import codes_normalisable, normalise_codes

        full = [normalisation_spec(spec) for spec in specs]
        if not self.quantised:
            return model_inputs(block.values, full, keep_raw=raw)
        object_id, scale, zero, sky, noise = block.object_id, block.scale, block.zero, block.sky, block.noise
        if object_id is None or scale is None or zero is None:
            raise LensdaskError(
                f"tile {block.t} of the quantised store {self.url} was read without its rows' "
                "object ids, scales and offsets"
            )
        q = block.values
        n = len(q)
        keys = self._keys(block.t, block.start, object_id)
        seed = int(self.encoding["seed"])
        border = int(self.encoding["border"])
        from_codes = [
            sky is not None and noise is not None and spec["method"] == "asinh-noise" and spec["border"] == border
            for spec in full
        ]
        fused: dict[str, np.ndarray] = {}
        ok = np.zeros(n, dtype=bool)
        if sky is not None and noise is not None and any(from_codes):
            ok = codes_normalisable(scale, zero, sky, noise)
            for spec, direct in zip(full, from_codes):
                if direct and spec_key(spec) not in fused:
                    y, nan_rows = normalise_codes(
                        q, scale, zero, sky, noise, keys, seed=seed, softening=spec["softening"]
                    )
                    fused[spec_key(spec)] = y
                    ok &= ~nan_rows
        # decoded pixels: of every row when asked for or some normalisation needs them,
        # else of the rows the codes cannot serve
        every = raw or not all(from_codes)
        rows = np.arange(n) if every else np.flatnonzero(~ok)
        pix = self._decode(block.t, block.start, q if every else q[rows], scale[rows], zero[rows], object_id[rows])
        bad = np.zeros(n, dtype=bool)
        bad[rows] = nonfinite_rows(pix)
        good = ~bad
        done: dict[str, np.ndarray] = {}
        inputs = []
        for spec, direct in zip(full, from_codes):
            key = spec_key(spec)
            if key not in done:
                if direct:
                    x = fused[spec_key(spec)]
                    redo = np.flatnonzero(~ok & good)
                    if redo.size:
                        x[redo] = normalise(pix[np.searchsorted(rows, redo)], spec)
                    done[key] = x[good] if bad.any() else x
                else:
                    done[key] = normalise(pix[good[rows]] if bad.any() else pix, spec)
            inputs.append(done[key])
        return ModelInputs(inputs, bad, pix if raw else None)

    def to_dask(self):
        """The pixels as a lazy float dask array with one chunk per tile (NaN in rows not written)."""
        import dask.array as da

        arr = store_array(self.group, "images")
        if not self.quantised:
            return da.from_zarr(arr, chunks=(1, self.capacity, *arr.shape[2:]))
        import dask

        shape = (1, self.capacity, *arr.shape[2:])
        blocks = [
            da.from_delayed(dask.delayed(_decoded_tile)(self.url, t), shape=shape, dtype=np.float32)
            for t in range(self.n_tiles)
        ]
        return da.concatenate(blocks, axis=0)


@dataclass
class _StoredBlock:
    """Rows ``start:`` of tile ``t`` as stored: ``values`` (codes or float pixels), their table,
    and for a quantised store the rows' ``object_id`` and per-band arrays (``sky``/``noise``
    None when not read or not stored)."""

    t: int
    start: int
    values: np.ndarray
    table: pd.DataFrame | None = None
    object_id: np.ndarray | None = None
    scale: np.ndarray | None = None
    zero: np.ndarray | None = None
    sky: np.ndarray | None = None
    noise: np.ndarray | None = None


def _nd_buffer(out: np.ndarray):
    """``out`` as the zarr buffer a read writes into."""
    from zarr.buffer.cpu import NDBuffer

    return NDBuffer.from_numpy_array(out)


def _decoded_tile(url: str, t: int) -> np.ndarray:
    """Every row of tile ``t`` of a quantised store, decoded, (1, capacity, ...); NaN past its count."""
    s = open_store(url)
    g = s.group
    out = s._decode(
        t,
        0,
        np.asarray(store_array(g, "images")[t]),
        store_array(g, "scale")[t],
        store_array(g, "zero")[t],
        np.asarray(store_array(g, "object_id")[t]),
    )
    return out[None]


QUANTISE_ARRAYS = ("scale", "zero")
"""Per-row, per-band float32 arrays of a quantised store: step and offset (flux units)."""

PSF_ARRAYS = ("psf_fwhm", "psf_origin")
"""The PSF arrays of stores written since they were introduced: ``psf_fwhm`` (n_tiles, capacity,
n_bands) float32, arcsec, NaN unknown; ``psf_origin`` (n_tiles, n_bands) str. Older stores lack
them and still open (:attr:`CutoutStore.psf_known` False)."""

PSF_ORIGINS = ("simulated", "psfex", "header", "stars")
"""Kinds of ``psf_origin`` (a PSFEx origin is ``psfex:<file name>``, a header one ``header:<keyword>``)."""


def psf_columns(bands: Sequence[str]) -> list[str]:
    """Table columns holding each band's PSF FWHM (arcsec) for :meth:`CutoutStore.write_tile`: ``psf_fwhm_<band>``."""
    return [f"psf_fwhm_{b}" for b in bands]


SKY_ARRAYS = ("sky", "noise")
"""Per-row, per-band float32 arrays of a quantised store written since they were introduced: the
sky level (median of the normalisation border, flux units) and sky noise (1.4826 MAD of it, flux
units) the quantiser measured, NaN where not measurable. Stores without them read alike, their
inputs normalised after decoding."""


Compressor = Literal["lz4", "zstd"]

COMPRESSORS: tuple[Compressor, ...] = ("lz4", "zstd")
"""Blosc compressors a new store may use (config ``store.compressor``)."""


def _compressor_name() -> Compressor:
    name = str(config.get("store.compressor"))
    for known in COMPRESSORS:
        if name == known:
            return known
    raise StoreWriteError(f"unknown store compressor {name!r}; use one of {', '.join(COMPRESSORS)}")


def _open_group(url: str, mode: Literal["r", "r+", "w"]) -> zarr.Group:
    return zarr.open_group(url, mode=mode, zarr_format=3, storage_options=_storage_options(url))


def create_store(
    url: str | os.PathLike,
    *,
    tiles: Sequence[str],
    capacity: int,
    bands: Sequence[str],
    pixel_scale: float,
    stamp: int,
    classes: Sequence[str] = ("non-lens", "lens"),
    params: Sequence[str] = (),
    provenance: dict | None = None,
    chunk_rows: int | None = None,
    dtype: str | None = None,
    quantise_step: float | None = None,
    survey: str = DEFAULT_SURVEY,
    overwrite: bool = False,
) -> CutoutStore:
    """Create an empty cutout store.

    Parameters
    ----------
    url : str or path
        Local path or fsspec URL (``memory://``, ``file://``, ``s3://`` ...).
    tiles : sequence of str
        Tile names; their number fixes the first axis.
    capacity : int
        Maximum rows per tile. Rounded up to a multiple of ``chunk_rows``.
    bands : sequence of str
        Filter names in the order stored, e.g. ``["g", "r", "i", "z"]``.
    pixel_scale : float
        Arcsec per pixel.
    stamp : int
        Stamp side in pixels.
    classes : sequence of str
        Class names; a row's ``label`` indexes this list. Must contain ``"lens"``.
    params : sequence of str
        Names of per-row float parameters (simulation truth: ``theta_E`` ...).
    provenance : dict, optional
        See :func:`provenance`; made from ``sys.argv`` if omitted.
    chunk_rows : int, optional
        Rows per chunk inside a tile's shard (config ``store.chunk_rows``).
    dtype : str, optional
        ``float32`` or ``float16`` (config ``store.dtype``), for stores that keep pixel values exactly.
    quantise_step : float, units of the sky noise, optional
        Store integers on this fraction of each stamp and band's sky noise (rms error
        ``step / sqrt(12)`` sigma); 0 keeps the values exactly (config ``store.quantise.step``,
        where null also means exact).
    survey : str
        The survey profile of the cutouts (:mod:`lensdask.survey.profiles`), recorded as attribute ``survey``.
    overwrite : bool
        Replace an existing store; otherwise an existing path is an error.
    """
    url = os.fspath(url)
    if "lens" not in classes:
        raise StoreWriteError(f"classes {list(classes)} must include 'lens'")
    if len(set(classes)) != len(classes):
        raise StoreWriteError(f"classes {list(classes)} repeat a name")
    tiles = [str(t) for t in tiles]
    check_names(tiles, source="the new store's tile list", rows=range(1, len(tiles) + 1))  # before anything is written
    if _is_local(url) and os.path.exists(url) and not overwrite:
        raise FileExistsError(f"{url} exists; pass overwrite=True (CLI: --overwrite) to replace it")
    chunk_rows = int(config.get("store.chunk_rows", chunk_rows))
    chunk_rows = max(1, min(chunk_rows, int(capacity)))
    capacity = int(-(-max(int(capacity), 1) // chunk_rows) * chunk_rows)
    dtype = config.get("store.dtype", dtype)
    encoding = encoding_for(quantise_step)
    n_tiles = len(tiles)
    nb = len(bands)

    g = _open_group(url, mode="w")
    image_array: dict[str, Any] = dict(  # shared keyword arguments of create_array
        shape=(n_tiles, capacity, nb, stamp, stamp),
        chunks=(1, chunk_rows, nb, stamp, stamp),
        shards=(1, capacity, nb, stamp, stamp),
        dimension_names=["tile", "row", "band", "y", "x"],
    )
    if encoding["pixels"] == "quantised":
        # a checksum per chunk: a corrupt chunk fails its read instead of decoding to noise
        codec = CODECS[encoding["codec"].split(".", 1)[1]]
        options = {k: encoding[k] for k in ("nblock", "level") if k in encoding}
        g.create_array(
            "images",
            dtype="int32",
            fill_value=int(np.iinfo(np.int32).min),
            serializer=codec(**options),
            compressors=[Crc32cCodec()],
            **image_array,
        )
        for name in QUANTISE_ARRAYS + SKY_ARRAYS:
            g.create_array(
                name,
                shape=(n_tiles, capacity, nb),
                chunks=(1, capacity, nb),
                dtype="float32",
                fill_value=np.nan,
                dimension_names=["tile", "row", "band"],
            )
    else:
        compressor = BloscCodec(
            cname=_compressor_name(), clevel=int(config.get("store.compressor_level")), shuffle="shuffle"
        )
        g.create_array("images", dtype=dtype, fill_value=np.nan, compressors=compressor, **image_array)
        encoding = {**encoding, "dtype": str(np.dtype(dtype)), "codec": f"blosc-{_compressor_name()}"}
    g.create_array(
        "psf_fwhm",
        shape=(n_tiles, capacity, nb),
        chunks=(1, capacity, nb),
        dtype="float32",
        fill_value=np.nan,
        dimension_names=["tile", "row", "band"],
    )
    # one chunk per tile, so tile writers never share one
    g.create_array("psf_origin", shape=(n_tiles, nb), chunks=(1, nb), dtype=str, dimension_names=["tile", "band"])
    g.create_array("count", shape=(n_tiles,), chunks=(1,), dtype="int64", fill_value=-1)
    names = g.create_array("tile", shape=(n_tiles,), chunks=(max(n_tiles, 1),), dtype=str)
    if n_tiles:
        names[:] = np.asarray(list(tiles), dtype=object)
    for name, (dt, fill) in ROW_COLUMNS.items():
        g.create_array(
            name,
            shape=(n_tiles, capacity),
            chunks=(1, capacity),
            dtype=dt,
            fill_value=fill,
            dimension_names=["tile", "row"],
        )
    if params:
        pg = g.create_group("params")
        for p in params:
            pg.create_array(
                p,
                shape=(n_tiles, capacity),
                chunks=(1, capacity),
                dtype=PARAM_DTYPE,
                fill_value=np.nan,
                dimension_names=["tile", "row"],
            )
    g.attrs.update(
        {
            "schema": SCHEMA,
            "bands": list(bands),
            "pixel_scale": float(pixel_scale),
            "stamp": int(stamp),
            "classes": list(classes),
            "params": list(params),
            "provenance": provenance if provenance is not None else globals()["provenance"](),
            "encoding": encoding,
            "survey": str(survey),
        }
    )
    return CutoutStore(g, url)


def encoding_for(quantise_step: float | None = None) -> dict:
    """The ``encoding`` attribute of a new store: quantised on ``quantise_step`` sky-noise sigmas,
    or float32 for 0 (config ``store.quantise``; a null step there also means float32).

    Raises
    ------
    StoreWriteError
        A negative or non-finite step, or a step above 2 sigma (errors above 0.58 sigma rms).
    """
    step = quantise_step if quantise_step is not None else config.get("store.quantise.step")
    if step is None:
        return dict(FLOAT_ENCODING)
    try:
        step = float(step)
    except (TypeError, ValueError):
        step = float("nan")
    if not (0.0 <= step <= MAX_STEP):
        raise StoreWriteError(
            f"quantisation step {quantise_step!r} must be in [0, {MAX_STEP}] sky-noise sigma (0: lossless)"
        )
    if step == 0:
        return dict(FLOAT_ENCODING)
    codec = str(config.get("store.quantise.codec"))
    if codec not in CODECS:
        raise StoreWriteError(f"unknown integer codec {codec!r} (store.quantise.codec); use one of {', '.join(CODECS)}")
    options = (
        {"nblock": int(config.get("store.quantise.nblock"))}
        if codec == "rice"
        else {"level": int(config.get("store.quantise.level"))}
    )
    return {
        "pixels": "quantised",
        "step": step,
        "rms_error": round(step / np.sqrt(12.0), 6),
        "dither": "subtractive",
        "seed": int(config.get("store.quantise.seed")),
        "border": int(config.get("store.quantise.border")),
        "codec": f"lensdask.{codec}",
        **options,
    }


MAX_STEP = 2.0
"""Largest quantisation step a store accepts, in sky-noise sigma."""


def open_store(url: str | os.PathLike, mode: Literal["r", "r+"] = "r") -> CutoutStore:
    """Open an existing cutout store and check its schema.

    Parameters
    ----------
    url : str or path
        Local path or fsspec URL.
    mode : {"r", "r+"}
        Read only, or read and write tiles.

    Raises
    ------
    StoreNotFoundError
        Nothing at ``url``.
    StoreSchemaError
        Something is there, but not a ``lensdask.cutouts/1`` store.
    """
    url = os.fspath(url)
    if _is_local(url) and not os.path.exists(url):
        raise StoreNotFoundError(f"no cutout store at {url!r}: the path does not exist")
    try:
        g = _open_group(url, mode=mode)
    except (FileNotFoundError, zarr.errors.GroupNotFoundError) as exc:
        raise StoreNotFoundError(f"no cutout store at {url!r}: {exc}") from exc
    except (ValueError, zarr.errors.BaseZarrError) as exc:
        raise StoreSchemaError(
            f"{url!r} is not a Zarr v3 group ({exc}); expected a lensdask store of schema {SCHEMA!r}"
        ) from exc
    found = g.attrs.get("schema")
    if found not in READABLE_SCHEMAS:
        what = "no 'schema' attribute" if found is None else f"schema {found!r}"
        raise StoreSchemaError(
            f"{url!r} has {what}; this lensdask reads schema {SCHEMA!r} (and {', '.join(READABLE_SCHEMAS[:-1])}). "
            "Re-create the store with this version (lensdask simulate / ingest / mock-survey)."
        )
    required = ["images", "count", "tile", *ROW_COLUMNS]
    encoding = g.attrs.get("encoding", FLOAT_ENCODING)
    if not isinstance(encoding, Mapping) or encoding.get("pixels") not in ("float32", "quantised"):
        raise StoreSchemaError(f"{url!r}: unknown pixel encoding {encoding!r}")
    if encoding.get("pixels") == "quantised":
        required += list(QUANTISE_ARRAYS)
    params = g.attrs.get("params", [])
    if not isinstance(params, list):
        raise StoreSchemaError(f"{url!r}: attribute 'params' is {params!r}, not a list of parameter names")
    missing = [a for a in required if a not in g]
    missing += [f"params/{p}" for p in params if f"params/{p}" not in g]
    if missing:
        raise StoreSchemaError(f"{url!r} claims schema {found!r} but lacks the arrays {missing}")
    return CutoutStore(g, url)
