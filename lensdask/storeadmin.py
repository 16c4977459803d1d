"""Looking after cutout stores: describe one (``lensdask info``), rewrite one (``lensdask convert``)."""

from __future__ import annotations

import os

from .deprecation import renamed_keywords
from .errors import LensdaskError, StoreWriteError
from .store import FLOAT_ENCODING, SCHEMA, create_store, open_store, psf_columns, store_array
from .store import provenance as make_provenance


def disk_bytes(url: str) -> int | None:
    """Bytes of every file under a store (a local path or an fsspec URL); None if it cannot be listed."""
    if "://" not in url:
        return _tree_bytes(url)
    try:
        import fsspec

        fs, path = fsspec.core.url_to_fs(url)
        return int(fs.du(path, total=True))
    except Exception:  # an object store that cannot list sizes: report none rather than guess
        return None


def _tree_bytes(folder: str | os.PathLike) -> int:
    """Bytes of every file under a local folder, by ``os.scandir`` (a 10,000-tile store holds ~90,000
    files: ``pathlib.rglob`` with a ``stat`` per path took 5-8 s a walk there, this 1.6 s)."""
    total = 0
    stack = [os.fspath(folder)]
    while stack:
        try:
            entries = os.scandir(stack.pop())
        except (FileNotFoundError, NotADirectoryError):
            continue
        with entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    stack.append(entry.path)
                elif entry.is_file(follow_symlinks=False):
                    total += entry.stat(follow_symlinks=False).st_size
    return total


@renamed_keywords(url="store")
def store_info(store: str | os.PathLike) -> dict:
    """What a store holds and how, as a JSON-serialisable dict (``store``: its path or URL; ``url=`` is the
    deprecated old name).

    Keys: ``url``, ``schema``, ``version`` (the schema's number), ``bands``,
    ``pixel_scale`` (arcsec/px), ``stamp`` (px), ``survey`` (its survey profile; ``des`` for stores written
    before stores recorded it), ``tiles_written``, ``tiles``, ``rows``,
    ``capacity``, ``chunk_rows``, ``classes`` ({name: rows}, plus ``unknown`` for label -1),
    ``flags`` (rows per flag), ``encoding`` (pixels, codec, quantisation), ``bytes_on_disk``,
    ``bytes_per_cutout`` (whole store / rows), ``image_bytes_per_cutout`` (pixels only),
    ``sky_statistics`` (a quantised store: whether it keeps each row's sky level and noise, the
    arrays ``sky`` and ``noise``, and so normalises models' inputs straight from its codes;
    None for float32 stores), ``psf`` (:func:`psf_summary`), ``provenance``.
    """
    from .store import FLAG_EDGE, FLAG_LOSSLESS, FLAG_MASKED

    url = os.fspath(store)
    s = open_store(url)
    written = s.written_tiles()
    g = s.group
    labels = s.written_values("label")
    flags = s.written_values("flags")
    classes = {name: int((labels == k).sum()) for k, name in enumerate(s.classes)}
    if (labels < 0).any():
        classes["unknown"] = int((labels < 0).sum())
    rows = s.n_rows
    total = disk_bytes(url)
    images = disk_bytes(url.rstrip("/") + "/images")
    encoding = dict(s.encoding)
    if not s.quantised:
        arr = store_array(g, "images")
        encoding.setdefault("dtype", str(arr.dtype))
        encoding.setdefault("codec", _codec_names(arr))
    return {
        "url": url,
        "schema": s.schema,
        "version": int(s.schema.rsplit("/", 1)[-1]),
        "current_schema": SCHEMA,
        "bands": s.bands,
        "pixel_scale": s.pixel_scale,
        "stamp": s.stamp,
        "survey": s.survey,
        "tiles_written": len(written),
        "tiles": s.n_tiles,
        "rows": rows,
        "capacity": s.capacity,
        "chunk_rows": s.chunk_rows,
        "classes": classes,
        "flags": {
            "edge": int(((flags & FLAG_EDGE) != 0).sum()),
            "masked": int(((flags & FLAG_MASKED) != 0).sum()),
            "lossless": int(((flags & FLAG_LOSSLESS) != 0).sum()),
        },
        "encoding": encoding,
        "bytes_on_disk": total,
        "bytes_per_cutout": None if total is None or rows == 0 else total / rows,
        "image_bytes_per_cutout": None if images is None or rows == 0 else images / rows,
        "sky_statistics": s.sky_stats if s.quantised else None,
        "psf": psf_summary(s),
        "provenance": s.provenance,
    }


def psf_summary(s) -> dict:
    """What a store knows of its PSF: ``recorded`` (whether it keeps ``psf_fwhm``; False for stores written
    before), and per band ``rows`` with a known FWHM, the ``median``, ``min`` and ``max`` FWHM (arcsec; None
    when no row knows it), and ``origins`` ({origin: tiles}; "" for tiles that record none)."""
    import numpy as np

    if not s.psf_known:
        return {"recorded": False, "bands": {}}
    fwhm = s.written_values("psf_fwhm").reshape(-1, len(s.bands))
    written = s.written_tiles()
    origins = np.asarray(store_array(s.group, "psf_origin")[:]) if written else np.zeros((0, len(s.bands)), object)
    bands = {}
    for k, b in enumerate(s.bands):
        v = fwhm[:, k]
        v = v[np.isfinite(v)]
        per_tile: dict[str, int] = {}
        for o in origins[written, k] if written else []:
            per_tile[str(o)] = per_tile.get(str(o), 0) + 1
        bands[b] = {
            "rows": int(v.size),
            "median": round(float(np.median(v)), 4) if v.size else None,
            "min": round(float(v.min()), 4) if v.size else None,
            "max": round(float(v.max()), 4) if v.size else None,
            "origins": per_tile,
        }
    return {"recorded": True, "bands": bands}


def format_psf(psf: dict, rows: int) -> list[str]:
    """The ``psf`` lines of :func:`format_info`."""
    if not psf.get("recorded"):
        return ["psf         not recorded (a store written before lensdask kept PSFs; `lensdask fit` needs --psf)"]
    lines: list[str] = []
    for b, d in psf["bands"].items():
        origins = ", ".join(f"{o or 'unknown'} {n}" for o, n in sorted(d["origins"].items())) or "-"
        if d["rows"]:
            what = f'FWHM median {d["median"]:.3f}" ({d["min"]:.3f}-{d["max"]:.3f}") on {d["rows"]} of {rows} rows'
        else:
            what = f"FWHM unknown on all {rows} rows"
        lines.append(f"{'psf' if not lines else '':<12}{b}: {what}; tiles from {origins}")
    return lines


def _codec_names(arr) -> str:
    names = []
    for codec in arr.metadata.codecs:
        inner = getattr(codec, "codecs", None)
        for c in inner if inner else (codec,):
            cname = getattr(c, "cname", None)
            names.append(f"blosc-{cname.value}" if cname is not None else type(c).__name__)
    return "+".join(names)


def _kib(x) -> str:
    return "?" if x is None else f"{x / 1024:.2f} KiB"


def format_info(info: dict) -> str:
    """The human-readable report of :func:`store_info`."""
    enc = info["encoding"]
    if enc.get("pixels") == "quantised":
        pixels = (
            f"quantised: step {enc['step']:g} x sky noise (rms error {enc['rms_error']:.3f} sigma), "
            f"{enc['dither']} dither (seed {enc['seed']}), noise from a {enc['border']} px border; "
            f"codec {enc['codec']} (" + ", ".join(f"{k} {enc[k]}" for k in ("level", "nblock") if k in enc) + ")"
        )
        pixels += (
            "; sky level and noise stored per row (models' inputs normalised from the codes)"
            if info.get("sky_statistics")
            else "; no stored sky level and noise (inputs normalised after decoding; `lensdask convert` adds them)"
        )
    else:
        pixels = f"{enc.get('dtype', 'float32')} exact; codec {enc.get('codec', '?')}"
    old = (
        ""
        if info["schema"] == info["current_schema"]
        else f"  (older; `lensdask convert` rewrites it as {info['current_schema']})"
    )
    classes = ", ".join(f"{k} {v}" for k, v in info["classes"].items())
    prov = info["provenance"]
    total = "?" if info["bytes_on_disk"] is None else f"{info['bytes_on_disk'] / 2**20:.2f} MiB"
    lines = [
        f"store       {info['url']}",
        f"schema      {info['schema']} (version {info['version']}){old}",
        f"survey      {info.get('survey', 'des')}",
        f"bands       {','.join(info['bands'])}",
        f"pixels      {info['pixel_scale']:g} arcsec/px, stamp {info['stamp']} px",
        f"tiles       {info['tiles_written']} written of {info['tiles']}",
        f"rows        {info['rows']} (capacity {info['capacity']} per tile, {info['chunk_rows']} rows per chunk)",
        f"classes     {classes or '-'}",
        "flags       " + ", ".join(f"{k} {v}" for k, v in info["flags"].items()),
        f"encoding    {pixels}",
        f"on disk     {_kib(info['bytes_per_cutout'])} per cutout ({_kib(info['image_bytes_per_cutout'])} of pixels; "
        f"{total} in all)",
        *format_psf(info.get("psf", {}), info["rows"]),
        f"provenance  {prov.get('command', '?')}",
        f"            lensdask {prov.get('lensdask_version', '?')}, created {prov.get('created', '?')}"
        + (f", seed {prov['seed']}" if "seed" in prov else ""),
    ]
    if "converted_from" in prov:
        src = prov["converted_from"]
        pixels = src.get("encoding", {}).get("pixels")
        lines.append(f"            converted from {src.get('url')} ({src.get('schema')}, {pixels})")
    return "\n".join(lines) + "\n"


def _convert_tile(src: str, dst: str, t: int) -> int:
    """Decode tile ``t`` of ``src`` and write it to the same tile of ``dst``; returns its rows."""
    s = open_store(src)
    tile = s.read_tile(t)
    table = tile.table.drop(columns=["tile", "row"])
    out = open_store(dst, mode="r+")
    if s.psf_known:  # the PSF travels with the rows
        fwhm = s.read_psf(t)
        for k, c in enumerate(psf_columns(s.bands)):
            table[c] = fwhm[:, k]
        out.write_psf_origin(t, s.psf_origins(t))
    return out.write_tile(t, tile.images, table)


def convert(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    *,
    quantise_step: float | None = None,
    overwrite: bool = False,
    client=None,
    command: str | None = None,
):
    """Rewrite a store as the current schema, its pixels encoded anew.

    Parameters
    ----------
    src, dst : str or path
        The store to read (schema /1 or /2) and the one to write.
    quantise_step : float, units of the sky noise, optional
        Encoding of ``dst`` (config ``store.quantise.step``; 0 keeps float32 values exactly).
    overwrite : bool
        Replace an existing ``dst``.
    client : distributed.Client, optional
        Convert one tile per task on it; otherwise tile by tile in this process.
    command : str, optional
        For the provenance of ``dst``.

    Returns
    -------
    store : CutoutStore
        ``dst``.
    failures : list of dict
        ``{"tile", "tile_index", "error"}`` for every tile that could not be read or written
        (a corrupt chunk fails its tile only; that tile of ``dst`` stays unwritten).
    """
    src, dst = os.fspath(src), os.fspath(dst)
    if os.path.abspath(src) == os.path.abspath(dst):
        raise LensdaskError(f"convert writes a new store: the output {dst!r} is the input")
    s = open_store(src)
    attrs = s.attrs
    prov = make_provenance(
        command, converted_from={"url": src, "schema": s.schema, "encoding": s.encoding, "provenance": s.provenance}
    )
    d = create_store(
        dst,
        tiles=s.tiles,
        capacity=s.capacity,
        bands=s.bands,
        pixel_scale=s.pixel_scale,
        stamp=s.stamp,
        classes=s.classes,
        params=s.params,
        provenance=prov,
        chunk_rows=s.chunk_rows,
        dtype=str(store_array(s.group, "images").dtype) if not s.quantised else None,
        quantise_step=quantise_step,
        survey=s.survey,
        overwrite=overwrite,
    )
    extra = {
        k: v
        for k, v in attrs.items()
        if k not in ("schema", "bands", "pixel_scale", "stamp", "classes", "params", "provenance", "encoding", "survey")
    }
    if extra:  # attributes this lensdask does not interpret travel as they are
        d.group.attrs.update(extra)
    tiles = s.written_tiles()
    failures = []
    if client is not None:
        from distributed import wait

        futures = client.map(_convert_tile, [src] * len(tiles), [dst] * len(tiles), tiles, pure=False)
        wait(futures)
        for t, fut in zip(tiles, futures):
            if fut.status == "error":
                failures.append({"tile": s.tiles[t], "tile_index": t, "error": repr(fut.exception())})
    else:
        for t in tiles:
            try:
                _convert_tile(src, dst, t)
            except (StoreWriteError, KeyboardInterrupt):
                raise
            except Exception as exc:  # a corrupt chunk: this tile fails, the others go on
                failures.append({"tile": s.tiles[t], "tile_index": t, "error": repr(exc)})
    return open_store(dst), failures


__all__ = ["convert", "format_info", "store_info", "disk_bytes", "FLOAT_ENCODING"]
