"""Cross-match of search results with catalogues of known lenses (by default ``lenscat``'s).

``lenscat`` ships ~33,000 known lenses and candidates as ``lenscat/data/catalog.csv``.
Its package import pulls in ligo.skymap (seconds), so the CSV is located without
importing the package and read with pandas.
"""

from __future__ import annotations

import importlib.util
import os
import pathlib

import numpy as np
import pandas as pd

from . import config
from .errors import LensdaskError

KNOWN_COLUMNS = ["known_name", "known_grading", "known_type", "known_ref", "known_sep_arcsec"]
"""Columns :func:`crossmatch` adds: the nearest known lens within the radius (name, grade
("confident"/"probable"), lens type, reference URL, separation in arcsec); empty / NaN when none."""


def lenscat_path() -> pathlib.Path:
    """Path of the catalogue CSV inside the installed ``lenscat`` package."""
    spec = importlib.util.find_spec("lenscat")
    if spec is None or not spec.submodule_search_locations:
        raise LensdaskError("the lenscat package is not installed: pip install lenscat, or give a catalogue path")
    return pathlib.Path(list(spec.submodule_search_locations)[0]) / "data" / "catalog.csv"


def known_lenses(catalog: str | os.PathLike | pd.DataFrame | None = None) -> pd.DataFrame:
    """Known lenses as ``name, ra, dec (degrees), grading, type, zlens, ref``.

    Parameters
    ----------
    catalog : path or DataFrame, optional
        A CSV / Parquet / FITS table with name, RA and Dec columns (lenscat's own
        ``RA [deg]`` / ``DEC [deg]`` headers are understood); ``None`` reads config
        ``crossmatch.catalog``, and if that is empty, lenscat's shipped catalogue.
    """
    catalog = config.get("crossmatch.catalog", catalog)
    if catalog is None or (isinstance(catalog, str) and not catalog):
        catalog = lenscat_path()
    if isinstance(catalog, pd.DataFrame):
        df = catalog.copy()
    else:
        path = pathlib.Path(os.fspath(catalog))
        if not path.exists():
            raise LensdaskError(f"known-lens catalogue {str(path)!r} does not exist")
        if path.suffix in (".parquet", ".pq"):
            df = pd.read_parquet(path)
        elif path.suffix.lower() in (".fits", ".fit", ".gz") and ".csv" not in path.name:
            from astropy.table import Table

            df = Table.read(path).to_pandas()
        else:
            df = pd.read_csv(path)
    rename = {}
    for c in df.columns:
        key = c.lower().split(" [")[0].strip()
        if key in ("ra", "dec", "name", "grading", "type", "zlens", "ref"):
            rename[c] = key
    df = df.rename(columns=rename)
    missing = [c for c in ("name", "ra", "dec") if c not in df.columns]
    if missing:
        raise LensdaskError(f"known-lens catalogue lacks the columns {missing} (has {list(df.columns)})")
    for c in ("grading", "type", "zlens", "ref"):
        if c not in df.columns:
            df[c] = ""
    df = df[["name", "ra", "dec", "grading", "type", "zlens", "ref"]].copy()
    df["ra"] = pd.to_numeric(df["ra"], errors="coerce")
    df["dec"] = pd.to_numeric(df["dec"], errors="coerce")
    df = df[np.isfinite(df["ra"]) & np.isfinite(df["dec"])].reset_index(drop=True)
    for c in ("name", "grading", "type", "zlens", "ref"):
        df[c] = df[c].fillna("").astype(str)
    return df


def _unit_vectors(ra, dec) -> np.ndarray:
    ra, dec = np.radians(np.asarray(ra, float)), np.radians(np.asarray(dec, float))
    return np.stack([np.cos(dec) * np.cos(ra), np.cos(dec) * np.sin(ra), np.sin(dec)], axis=-1)


def _nearest(ra, dec, cat_ra, cat_dec) -> tuple[np.ndarray, np.ndarray]:
    """Index of the nearest catalogue entry and its separation (arcsec) for each position (KD-tree on unit vectors)."""
    from scipy.spatial import cKDTree

    n = len(np.asarray(ra))
    if n == 0 or len(cat_ra) == 0:
        return np.full(n, -1), np.full(n, np.inf)
    tree = cKDTree(_unit_vectors(cat_ra, cat_dec))
    pts = _unit_vectors(ra, dec)
    ok = np.isfinite(pts).all(axis=1)
    idx = np.full(n, -1)
    sep = np.full(n, np.inf)
    if ok.any():
        chord, i = tree.query(pts[ok])
        idx[ok] = i
        sep[ok] = np.degrees(2 * np.arcsin(np.clip(chord / 2, 0, 1))) * 3600.0
    return idx, sep


def crossmatch(
    table: pd.DataFrame, *, radius: float | None = None, catalog: str | os.PathLike | pd.DataFrame | None = None
) -> pd.DataFrame:
    """``table`` (with ``ra``, ``dec`` in degrees) plus the nearest known lens within ``radius``.

    Parameters
    ----------
    table : pandas.DataFrame
        Candidates or any rows with ``ra``, ``dec``.
    radius : float, arcsec, optional
        Match radius (config ``crossmatch.radius``).
    catalog : optional
        See :func:`known_lenses`.

    Returns
    -------
    pandas.DataFrame
        A copy with :data:`KNOWN_COLUMNS` added.
    """
    radius = float(config.get("crossmatch.radius", radius))
    cat = catalog if isinstance(catalog, pd.DataFrame) and "grading" in catalog.columns else known_lenses(catalog)
    out = table.copy()
    idx, sep = _nearest(out["ra"].to_numpy(), out["dec"].to_numpy(), cat["ra"].to_numpy(), cat["dec"].to_numpy())
    hit = sep <= radius
    for col, src in (
        ("known_name", "name"),
        ("known_grading", "grading"),
        ("known_type", "type"),
        ("known_ref", "ref"),
    ):
        vals = np.full(len(out), "", dtype=object)
        vals[hit] = cat[src].to_numpy()[idx[hit]]
        out[col] = vals
    out["known_sep_arcsec"] = np.where(hit, sep, np.nan)
    return out


def _in_boxes(ra, dec, boxes) -> np.ndarray:
    ra = np.mod(np.asarray(ra, float), 360.0)
    dec = np.asarray(dec, float)
    inside = np.zeros(len(ra), dtype=bool)
    for b in boxes:
        if b.get("ra_min") is None:
            continue
        in_dec = (dec >= b["dec_min"]) & (dec <= b["dec_max"])
        if b["ra_min"] <= b["ra_max"]:
            in_ra = (ra >= b["ra_min"]) & (ra <= b["ra_max"])
        else:  # box across RA 0
            in_ra = (ra >= b["ra_min"]) | (ra <= b["ra_max"])
        inside |= in_ra & in_dec
    return inside


def known_lens_report(
    scores: pd.DataFrame,
    tile_stats: list[dict],
    *,
    threshold: float,
    radius: float | None = None,
    catalog: str | os.PathLike | pd.DataFrame | None = None,
) -> tuple[pd.DataFrame, dict]:
    """Known lenses inside the searched footprint, and how many scored above ``threshold``.

    The footprint is the union of the searched tiles' sky boxes (``ra_min`` ...
    in each tile's statistics), widened by ``radius``. Each known lens inside it
    is matched to the nearest kept row within ``radius``.

    Returns
    -------
    table : pandas.DataFrame
        ``name, ra, dec, grading, type, ref, tile, object_id, sep_arcsec, score, above_threshold``
        (object_id -1 and score NaN when no kept row lies within the radius).
    summary : dict
        ``radius_arcsec, in_footprint, matched, above_threshold, found`` (names above threshold).
    """
    radius = float(config.get("crossmatch.radius", radius))
    cat = known_lenses(catalog)
    pad = radius / 3600.0
    boxes = []
    for s in tile_stats:
        if s and s.get("ra_min") is not None:
            cosd = max(np.cos(np.radians(max(abs(s["dec_min"]), abs(s["dec_max"])))), 1e-3)
            boxes.append(
                {
                    "ra_min": (s["ra_min"] - pad / cosd) % 360,
                    "ra_max": (s["ra_max"] + pad / cosd) % 360,
                    "dec_min": s["dec_min"] - pad,
                    "dec_max": s["dec_max"] + pad,
                }
            )
    inside = cat[_in_boxes(cat["ra"], cat["dec"], boxes)].reset_index(drop=True)
    rows = scores[~scores["nan_pixels"].astype(bool)] if "nan_pixels" in scores.columns else scores
    idx, sep = _nearest(
        inside["ra"].to_numpy(), inside["dec"].to_numpy(), rows["ra"].to_numpy(), rows["dec"].to_numpy()
    )
    hit = sep <= radius
    table = inside[["name", "ra", "dec", "grading", "type", "ref"]].copy()
    table["tile"] = np.where(hit, rows["tile"].to_numpy()[np.where(hit, idx, 0)] if len(rows) else "", "")
    table["object_id"] = np.where(hit, rows["object_id"].to_numpy()[np.where(hit, idx, 0)] if len(rows) else -1, -1)
    table["sep_arcsec"] = np.where(hit, sep, np.nan)
    table["score"] = np.where(hit, rows["score"].to_numpy()[np.where(hit, idx, 0)] if len(rows) else np.nan, np.nan)
    table["above_threshold"] = table["score"] >= threshold
    summary = {
        "radius_arcsec": radius,
        "in_footprint": int(len(table)),
        "matched": int(hit.sum()),
        "above_threshold": int(table["above_threshold"].sum()),
        "found": table.loc[table["above_threshold"], "name"].tolist()[:100],
    }
    return table, summary
