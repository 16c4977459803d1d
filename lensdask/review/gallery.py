"""Static HTML galleries of search candidates: colour composites, single bands, scores, matches.

``gallery(run_dir)`` writes ``RUN_DIR/gallery/index.html`` and one page per
``per_page`` candidates; images are embedded (base64), so the folder works
offline and can be copied anywhere. :class:`Gallery` renders the first page
inline in a notebook.
"""

from __future__ import annotations

import base64
import html
import os
import pathlib
from dataclasses import dataclass

import numpy as np
import pandas as pd

from .cutouts import best_candidates
from .images import colour_composite, png_bytes

STYLE = """
body{font-family:sans-serif;background:#111;color:#ddd;margin:1em}
a{color:#8cf} .grid{display:flex;flex-wrap:wrap;gap:10px}
.card{background:#222;padding:6px;border-radius:6px;width:300px;font-size:12px}
.card img{image-rendering:pixelated} .bands img{width:56px;height:56px;margin-right:2px}
.known{color:#fc6;font-weight:bold} table{border-collapse:collapse} td{padding:0 6px 0 0}
"""


def _img(png: bytes, width: int, title: str = "") -> str:
    data = base64.b64encode(png).decode()
    return f'<img src="data:image/png;base64,{data}" width="{width}" title="{html.escape(title)}">'


def _card(row: pd.Series, stamp: np.ndarray, bands: list[str]) -> str:
    rgb = _img(png_bytes(colour_composite(stamp, bands), scale=4), 288, "colour composite")
    singles = "".join(_img(png_bytes(stamp[k], scale=2), 56, b) for k, b in enumerate(bands))
    probs = " ".join(
        f"{c[2:]}={row[c]:.3f}" for c in row.index if c.startswith("p_") and pd.notna(row[c])
    )
    known = ""
    name_col = next((c for c in ("known_name", "lenscat_name") if c in row.index), None)
    if name_col and isinstance(row[name_col], str) and row[name_col]:
        known = f'<div class="known">known lens: {html.escape(row[name_col])}</div>'
    rank = f"#{int(row['rank'])} " if "rank" in row.index else ""
    return (
        f'<div class="card">{rgb}<div class="bands">{singles}</div>'
        f"<b>{rank}score {row['score']:.4f}</b>{known}<table>"
        f"<tr><td>tile</td><td>{html.escape(str(row['tile']))}</td></tr>"
        f"<tr><td>object</td><td>{int(row['object_id'])}</td></tr>"
        f"<tr><td>RA, Dec</td><td>{row['ra']:.5f}, {row['dec']:.5f}</td></tr>"
        f"<tr><td>classes</td><td>{probs}</td></tr></table></div>"
    )


@dataclass
class Gallery:
    """A written gallery: ``pages`` (HTML files), the candidates it shows, and its first page's cards."""

    index: pathlib.Path
    pages: list[pathlib.Path]
    candidates: pd.DataFrame
    _first_cards: str

    def _repr_html_(self) -> str:
        return f"<style>{STYLE}</style><div class='grid'>{self._first_cards}</div>"


def gallery(
    run_dir: str | os.PathLike,
    *,
    top: int = 100,
    per_page: int = 50,
    out: str | os.PathLike | None = None,
    zarr: str | os.PathLike | None = None,
    candidates: pd.DataFrame | None = None,
    title: str | None = None,
) -> Gallery:
    """Write a paged, offline HTML gallery of the best ``top`` candidates of a search run.

    Parameters
    ----------
    run_dir : str or path
        A search run directory (``candidates.parquet``, ``summary.json``).
    top : int
        Number of candidates shown, best score first.
    per_page : int
        Candidates per HTML page.
    out : str or path, optional
        Output folder (default ``RUN_DIR/gallery``).
    zarr : str or path, optional
        The survey store, if it moved since the search.
    candidates : pandas.DataFrame, optional
        Rows to show instead of ``candidates.parquet`` (``tile, object_id, ra, dec, score``).
    title : str, optional
        Page heading.
    """
    run_dir = pathlib.Path(run_dir)
    cand, store, stamps = best_candidates(run_dir, top, zarr=zarr, candidates=candidates)
    out = pathlib.Path(out) if out is not None else run_dir / "gallery"
    out.mkdir(parents=True, exist_ok=True)
    title = title or f"lensdask candidates — {run_dir.name}"
    n_pages = max(1, -(-len(cand) // per_page))
    pages = [out / ("index.html" if p == 0 else f"page-{p + 1:03d}.html") for p in range(n_pages)]
    first = ""
    for p in range(n_pages):
        rows = cand.iloc[p * per_page : (p + 1) * per_page]
        cards = "".join(_card(row, stamps[i], store.bands) for i, row in rows.iterrows())
        if p == 0:
            first = cards
        nav = " ".join(
            f'<a href="{pages[q].name}">{q + 1}</a>' if q != p else f"<b>{q + 1}</b>" for q in range(n_pages)
        )
        doc = (
            f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{STYLE}</style></head><body><h2>{html.escape(title)}</h2>"
            f"<p>{len(cand)} candidates, page {p + 1} of {n_pages}: {nav}</p>"
            f"<div class='grid'>{cards}</div><p>{nav}</p></body></html>"
        )
        tmp = pages[p].with_suffix(".html.tmp")
        tmp.write_text(doc)
        os.replace(tmp, pages[p])
    return Gallery(pages[0], pages, cand, first)
