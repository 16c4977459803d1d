"""Static HTML galleries of search candidates: true-colour, faint-feature and colour-difference views,
band stamps, scores, known-lens matches, graded from the keyboard; for candidates fitted by
``lensdask fit``, the model panel (data, lens model, residual, source) with θ_E and the evidence
(:mod:`lensdask.fit.models`).

``gallery_html(run_dir)`` writes ``RUN_DIR/gallery/index.html`` and one page per
``per_page`` candidates; images are embedded (base64), so the folder works
offline and can be copied anywhere. Grades made there stay in the browser and
export as a CSV for ``lensdask label --from-csv`` (see :mod:`lensdask.review.page`).
:class:`Gallery` renders the first page inline in a notebook.
"""

from __future__ import annotations

import functools
import json
import os
import pathlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from .. import config
from ..deprecation import renamed_function, renamed_keywords
from ..fit.models import candidate_models
from ..images import sky_noise
from ..rundir import best_candidates
from .labels import review_classes
from .page import CARD_STYLE, candidate_images, card, data_uri, document, grade_keys, header_meta


def run_summary(run_dir: pathlib.Path) -> dict:
    """``RUN_DIR/summary.json`` (empty when the run has none)."""
    path = pathlib.Path(run_dir) / "summary.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def n_candidates(run_dir: pathlib.Path, shown: int) -> int:
    """How many candidates the run has (``summary.json``), or ``shown`` when unknown."""
    return int(run_summary(run_dir).get("candidates", shown) or shown)


def _inline_src(pngs: dict[str, bytes], _i: int, name: str) -> str:
    return data_uri(pngs[name])


def render_cards(
    cand: pd.DataFrame,
    stamps: np.ndarray,
    store,
    src=None,
    start: int = 0,
    models: Sequence[dict[str, np.ndarray] | None] | None = None,
) -> str:
    """Cards of ``cand`` (images inline unless ``src(i, name)`` gives their URLs); ``start`` numbers them.

    ``models``: per row, the model arrays of a fitted candidate (:func:`lensdask.fit.models.candidate_models`),
    whose card then shows the model panel and θ_E with the evidence.
    """
    noise = sky_noise(stamps, store.bands) if len(stamps) else 1.0  # one brightness unit for the page
    out = []
    for j, (_, row) in enumerate(cand.iterrows()):
        i = start + j
        fitted = models[j] if models is not None else None
        if src is None:
            pngs = candidate_images(stamps[j], store.bands, store.pixel_scale, noise, row, fitted)
            link = functools.partial(_inline_src, pngs)
            out.append(card(i, row, store.bands, store.pixel_scale, link, store.stamp, fitted is not None))
        else:
            out.append(card(i, row, store.bands, store.pixel_scale, src, store.stamp, fitted is not None))
    return "".join(out)


@dataclass
class Gallery:
    """A written gallery: ``pages`` (HTML files), the candidates it shows, and its first page's cards."""

    index: pathlib.Path
    pages: list[pathlib.Path]
    candidates: pd.DataFrame
    _first_cards: str

    def _repr_html_(self) -> str:
        return f"<style>{CARD_STYLE}</style><div style='color:#ddd'>{self._first_cards}</div>"


@renamed_keywords(zarr="store")
def gallery_html(
    run_dir: str | os.PathLike,
    *,
    top: int = 100,
    per_page: int | None = None,
    out: str | os.PathLike | None = None,
    store: str | os.PathLike | None = None,
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
    per_page : int, optional
        Candidates per HTML page (config ``review.gallery_per_page``).
    out : str or path, optional
        Output folder (default ``RUN_DIR/gallery``).
    store : str or path, optional
        The survey store, if it moved since the search (``zarr=`` is its deprecated old name).
    candidates : pandas.DataFrame, optional
        Rows to show instead of ``candidates.parquet`` (``tile, object_id, ra, dec, score``).
    title : str, optional
        Page heading.
    """
    run_dir = pathlib.Path(run_dir)
    per_page = int(config.get("review.gallery_per_page", per_page))
    cand, opened, stamps = best_candidates(run_dir, top, store=store, candidates=candidates)
    out = pathlib.Path(out) if out is not None else run_dir / "gallery"
    out.mkdir(parents=True, exist_ok=True)
    title = title or "lensdask candidates"
    summary = run_summary(run_dir)
    meta = header_meta(summary, len(cand), n_candidates(run_dir, len(cand)))
    keys = grade_keys(review_classes())
    storage = "lensdask:grades:" + str(run_dir.resolve())
    labeller = os.environ.get("USER") or ""
    n_pages = max(1, -(-len(cand) // per_page))
    models = candidate_models(run_dir, cand, stamps.shape[1:])  # fitted candidates show their model panel
    pages = [out / ("index.html" if p == 0 else f"page-{p + 1:03d}.html") for p in range(n_pages)]
    first = ""
    for p in range(n_pages):
        lo = p * per_page
        cards = render_cards(
            cand.iloc[lo : lo + per_page],
            stamps[lo : lo + per_page],
            opened,
            start=lo,
            models=models[lo : lo + per_page],
        )
        if p == 0:
            first = cards
        nav = " ".join(
            f'<a href="{pages[q].name}">{q + 1}</a>' if q != p else f"<b>{q + 1}</b>" for q in range(n_pages)
        )
        doc = document(
            title=title,
            run=run_dir.name,
            meta=meta,
            cards=cards,
            keys=keys,
            mode="static",
            storage_key=storage,
            labeller=labeller,
            nav=f"· page {p + 1} of {n_pages}: {nav}",
            next_page=pages[p + 1].name if p + 1 < n_pages else None,
            prev_page=pages[p - 1].name if p > 0 else None,
            total=len(cand),
        )
        tmp = pages[p].with_suffix(".html.tmp")
        tmp.write_text(doc)
        os.replace(tmp, pages[p])
    return Gallery(pages[0], pages, cand, first)


gallery = renamed_function(gallery_html, "lensdask.review.gallery")
"""Deprecated name of :func:`gallery_html`."""
