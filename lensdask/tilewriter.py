"""Write one tile of a cutout store block by block, never holding the tile's pixels or its shard whole.

A tile is one Zarr shard (see :mod:`lensdask.store`). Zarr writes part of a shard by
reading the whole shard, changing it and writing it back, so a tile written in row
blocks through ``zarr`` costs memory of the whole compressed shard, twice, and I/O of
one shard per block. :func:`write_tile_streamed` instead encodes each inner chunk with
the array's own codecs as its rows arrive, appends it to the shard file, and writes the
shard index last: memory is one chunk of rows, whatever the tile's size.

The result is the same shard Zarr writes (``tests/survey/test_ingest_des.py`` checks it
byte for byte against :meth:`CutoutStore.write_tile`), committed like a tile write:
``count`` is -1 while the tile changes and its row count last. On a local store the
shard is written to a temporary file and renamed into place; on other stores
(``s3://``, ``memory://``) the encoded chunks are gathered and set in one go, so there
memory is the compressed shard.
"""

from __future__ import annotations

import os
import pathlib
import threading
from collections.abc import Iterable

import numpy as np
import pandas as pd

from .errors import StoreWriteError
from .store import CutoutStore, store_array


class _ShardStream:
    """Encode chunks of one shard of ``array`` in row order and write the shard with its index."""

    def __init__(self, array, tile: int):
        from zarr.codecs.sharding import ShardingCodec, _ShardIndex
        from zarr.core.buffer import default_buffer_prototype

        codecs = array.metadata.codecs
        if len(codecs) != 1 or not isinstance(codecs[0], ShardingCodec):
            raise StoreWriteError("the store's images are not sharded one shard per tile; cannot stream a tile")
        self.codec = codec = codecs[0]
        meta = array.metadata
        self.shard_shape = tuple(meta.chunk_grid.chunk_shape)
        self.chunk_shape = tuple(codec.chunk_shape)
        if self.shard_shape[2:] != self.chunk_shape[2:] or self.shard_shape[0] != 1 or self.chunk_shape[0] != 1:
            raise StoreWriteError(f"unexpected chunking {self.chunk_shape} in shards {self.shard_shape}")
        self.rows = self.chunk_shape[1]
        self.chunks_per_shard = tuple(s // c for s, c in zip(self.shard_shape, self.chunk_shape))
        shard_spec = meta.get_chunk_spec((tile, 0, 0, 0, 0), array._async_array.config, default_buffer_prototype())
        self.chunk_spec = codec._get_chunk_spec(shard_spec)
        self.dtype = np.dtype(array.dtype)
        self.fill = array.fill_value
        self.index = _ShardIndex.create_empty(self.chunks_per_shard)
        self.store = array.store
        self.key = f"{array._async_array.store_path.path}/{meta.encode_chunk_key((tile, 0, 0, 0, 0))}"
        self.at_start = codec.index_location.value == "start"
        self.index_size = codec._shard_index_size(self.chunks_per_shard) if self.at_start else 0
        from zarr.storage import LocalStore

        self.path = pathlib.Path(self.store.root) / self.key if isinstance(self.store, LocalStore) else None
        self.parts: list[bytes] = []
        self.offset = self.index_size
        self.n_chunks = 0
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
            self.file = open(self.tmp, "wb")
            self.file.write(b"\0" * self.index_size)

    def _encode(self, chunk: np.ndarray) -> bytes | None:
        from zarr.core.buffer import default_buffer_prototype
        from zarr.core.sync import sync

        fill = self.fill
        if np.issubdtype(self.dtype, np.floating) and np.isnan(fill):
            empty = np.isnan(chunk).all()
        else:
            empty = (chunk == fill).all()
        if empty:
            return None  # Zarr keeps no chunk that equals the fill value (write_empty_chunks=False)
        nd = default_buffer_prototype().nd_buffer.from_numpy_array(chunk)
        (buf,) = sync(self.codec.codec_pipeline.encode([(nd, self.chunk_spec)]))
        return None if buf is None else buf.to_bytes()

    def add(self, k: int, chunk: np.ndarray) -> None:
        """Encode chunk ``k`` of the shard (``chunk_shape`` rows, the store's dtype) and append it."""
        data = self._encode(np.ascontiguousarray(chunk.reshape(self.chunk_shape)))
        if data is None:
            return
        coords = (0, k, 0, 0, 0)
        self.index.set_chunk_slice(coords, slice(self.offset, self.offset + len(data)))
        self.offset += len(data)
        self.n_chunks += 1
        if self.path is not None:
            self.file.write(data)
        else:
            self.parts.append(data)

    def finish(self) -> None:
        """Write the index and put the shard in place (or remove it when no chunk holds data)."""
        from zarr.core.buffer import default_buffer_prototype
        from zarr.core.sync import sync

        index = sync(self.codec._encode_shard_index(self.index)).to_bytes() if self.n_chunks else b""
        if self.path is not None:
            try:
                if self.at_start:
                    self.file.seek(0)
                    self.file.write(index)
                else:
                    self.file.write(index)
                self.file.close()
                if self.n_chunks:
                    os.replace(self.tmp, self.path)
                else:
                    self.tmp.unlink(missing_ok=True)
                    self.path.unlink(missing_ok=True)
            except BaseException:
                self.abort()
                raise
            return
        if not self.n_chunks:
            sync(self.store.delete(self.key))
            return
        data = index + b"".join(self.parts) if self.at_start else b"".join(self.parts) + index
        self.parts.clear()
        sync(self.store.set(self.key, default_buffer_prototype().buffer.from_bytes(data)))

    def abort(self) -> None:
        if self.path is not None:
            try:
                self.file.close()
            finally:
                self.tmp.unlink(missing_ok=True)


def write_tile_streamed(store: CutoutStore, tile: int | str, table: pd.DataFrame, blocks: Iterable[np.ndarray]) -> int:
    """Write all rows of one tile from image blocks that arrive in row order.

    Pixels are stored as :meth:`CutoutStore.write_tile` stores them (quantised row by row
    with the store's encoding, or float32), so the shard is the same.

    Parameters
    ----------
    store : CutoutStore
        Open for writing (``mode="r+"``).
    tile : int or str
        Tile index or name.
    table : pandas.DataFrame
        The tile's n rows: ``object_id``, ``ra``, ``dec`` (degrees), optionally ``label``
        and ``flags``. Its ``flags`` may be completed while the blocks are produced (e.g.
        found while cutting): they are read after the last block.
    blocks : iterable of numpy.ndarray
        (k, n_bands, stamp, stamp) float pixel blocks, in row order, n rows in all.

    Returns
    -------
    int
        The number of rows written.
    """
    from .store import FLAG_LOSSLESS

    t = store.tile_index(tile)
    n = len(table)
    if n > store.capacity:
        raise StoreWriteError(f"tile {t}: {n} rows exceed the store's capacity of {store.capacity}")
    for c in ("object_id", "ra", "dec"):
        if c not in table.columns:
            raise StoreWriteError(f"tile {t}: table lacks the column {c!r}")
    g = store.group
    nb = len(store.bands)
    oid = np.full(n, -1, np.int64) if n == 0 else table["object_id"].to_numpy(dtype=np.int64)
    lossless = np.zeros(n, dtype=bool)
    quantised = getattr(store, "quantised", False)
    if quantised:
        from .quantise import quantise_measured

        enc = store.encoding
        # step, offset, and where the store keeps them the sky level and noise, of each row and band
        per_band = {
            name: np.full((store.capacity, nb), np.nan, dtype=np.float32)
            for name in ("scale", "zero") + (("sky", "noise") if getattr(store, "sky_stats", False) else ())
        }
    store_array(g, "count")[t] = -1  # uncommitted while the rows change
    stream = _ShardStream(store_array(g, "images"), t)
    shape = (nb, store.stamp, store.stamp)
    buf = np.full((stream.rows, *shape), stream.fill, dtype=stream.dtype)
    filled = k = done = 0
    try:
        for block in blocks:
            block = np.asarray(block)
            if block.shape[1:] != shape:
                raise StoreWriteError(f"tile {t}: image block of shape {block.shape}, expected (rows, *{shape})")
            start = done + filled
            if start + len(block) > n:
                raise StoreWriteError(f"tile {t}: more image rows than the {n} table rows")
            if quantised:
                block, scale, zero, sky, noise = quantise_measured(
                    block,
                    store._keys(t, start, oid[start : start + len(block)]),
                    step=float(enc["step"]),
                    seed=int(enc["seed"]),
                    border=int(enc["border"]),
                )
                for name, value in (("scale", scale), ("zero", zero), ("sky", sky), ("noise", noise)):
                    if name in per_band:
                        per_band[name][start : start + len(block)] = value
                lossless[start : start + len(block)] = (scale == 0).any(axis=1)
            else:
                block = block.astype(stream.dtype, copy=False)
            i = 0
            while i < len(block):
                take = min(stream.rows - filled, len(block) - i)
                buf[filled : filled + take] = block[i : i + take]
                filled += take
                i += take
                if filled == stream.rows:
                    stream.add(k, buf)
                    k += 1
                    done += filled
                    filled = 0
                    buf[:] = stream.fill
        if filled:
            stream.add(k, buf)
            done += filled
        if done != n:
            raise StoreWriteError(f"tile {t}: {done} image rows for {n} table rows")
        stream.finish()
    except BaseException:
        stream.abort()
        raise
    if quantised:
        for name, value in per_band.items():
            store_array(g, name)[t] = value
    rows = store.row_arrays(table)
    rows["flags"][:n] |= np.where(lossless, FLAG_LOSSLESS, 0).astype(np.int32)
    return store.commit_rows(t, rows, table)
