"""The review page: candidate cards with three views, band stamps and context, graded from the keyboard.

One HTML/JavaScript page serves both the offline gallery (``mode="static"``: grades kept in the
browser's ``localStorage`` and exported as a CSV that ``lensdask label --from-csv`` reads) and the
review app (``mode="app"``: each grade is POSTed to the app, which appends it to the labels table).

Keys (:func:`grade_keys`): ``3`` definite, ``2`` probable, ``1`` possible lens, ``0`` not a lens,
then one letter per false-positive class of ``review.classes`` (``r`` ring, ``s`` spiral, …);
``←``/``→`` (or ``↑``/``↓``, ``k``/``j``) move, ``?`` shows the keys. Every name is HTML-escaped
and every value handed to the script is JSON with ``<`` escaped.
"""

from __future__ import annotations

import base64
import html
import json
from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd

from ..fit.models import PANEL_VIEW, model_panel_png, panel_title
from ..images import VIEWS, band_image, png_bytes, view_caption, view_image
from .labels import GRADES, LENS_CLASS

VIEW_SCALE = 4  # display enlargement of the 45 px views (180 px; pixels stay sharp)
BAND_SCALE = 2

CARD_STYLE = """
.card{background:#1e1e1e;margin:8px 0;padding:8px;border-radius:6px;border:2px solid #1e1e1e;font-size:12px}
.card.current{border-color:#fc6} .card.graded{background:#1d2520}
.card .views{display:flex;gap:8px;flex-wrap:wrap} .card figure{margin:0;position:relative}
.card figure img{image-rendering:pixelated;display:block} .card figcaption{font-size:11px;color:#aaa}
.card .bands{display:grid;grid-template-columns:88px 88px;gap:2px 4px} .card .bands img{width:88px;height:88px}
.card .bands figcaption{position:absolute;top:1px;left:3px;color:#fc6;font-weight:bold}
.card .info{display:flex;gap:16px;align-items:baseline;flex-wrap:wrap;margin:4px 0}
.card .score{font-weight:bold} .card .known{color:#fc6;font-weight:bold}
.card .grade{font-weight:bold;color:#7e7;min-width:12em}
.card table{border-collapse:collapse} .card td{padding:0 6px 0 0}
.card .fit{color:#fc6} .card .fit-panel{margin-top:6px} .card .fit-panel img{image-rendering:auto}
"""
"""Styles of the cards alone (safe to put inside another page, e.g. a notebook)."""

STYLE = (
    """
body{font-family:sans-serif;background:#111;color:#ddd;margin:0}
header{position:sticky;top:0;background:#1b1b1b;padding:6px 12px;border-bottom:1px solid #333;z-index:2}
header h2{margin:0 0 4px 0;font-size:17px} header .meta{font-size:12px;color:#aaa}
header input{background:#222;color:#eee;border:1px solid #555;width:9em}
#progress{font-weight:bold;color:#fc6} #help{display:none;font-size:12px;background:#222;padding:6px}
#help.on{display:block} kbd{background:#333;border:1px solid #555;border-radius:3px;padding:0 4px}
a{color:#8cf} main{padding:8px 12px}
"""
    + CARD_STYLE
)


def grade_keys(classes: Sequence[str]) -> list[dict]:
    """The keyboard map: ``[{key, class, grade, text}]`` for the grades and each false-positive class.

    Digits give the grades (3 definite, 2 probable, 1 possible lens, 0 not a lens); each other
    class of ``classes`` (not ``lens`` or ``non-lens``) gets the first letter of its name not
    already taken (and not ``j``, ``k``, used to move).
    """
    out = [
        {"key": "3", "class": LENS_CLASS, "grade": "definite", "text": "definite lens"},
        {"key": "2", "class": LENS_CLASS, "grade": "probable", "text": "probable lens"},
        {"key": "1", "class": LENS_CLASS, "grade": "possible", "text": "possible lens"},
        {"key": "0", "class": "non-lens", "grade": "no", "text": "not a lens"},
    ]
    taken = {"j", "k"}
    for c in classes:
        if c in (LENS_CLASS, "non-lens"):
            continue
        key = next((ch for ch in c.lower() if ch.isalpha() and ch not in taken), None)
        if key is None:
            continue  # no letter left: the class is still accepted by `lensdask label`
        taken.add(key)
        out.append({"key": key, "class": c, "grade": "no", "text": f"not a lens: {c}"})
    assert set(GRADES) >= {k["grade"] for k in out}
    return out


def score_text(p: float) -> str:
    """A score that does not tie at four decimals: ``1−p`` in scientific notation near 1."""
    p = float(p)
    if not np.isfinite(p):
        return "p = n/a"
    if p >= 0.99:
        q = 1.0 - p
        return f"p = {p:.6f} · 1−p = {q:.2e}" if q > 0 else "p = 1 · 1−p < 1e-7"
    return f"p = {p:.4f}"


def candidate_images(
    stamp: np.ndarray,
    bands: Sequence[str],
    pixel_scale: float,
    noise: float,
    row: pd.Series | None = None,
    models: dict[str, np.ndarray] | None = None,
) -> dict[str, bytes]:
    """PNG bytes of every picture of one card: the :data:`VIEWS` and ``band-<b>`` stamps, and the
    model panel (``PANEL_VIEW``) when ``models`` holds a fitted candidate's models
    (:func:`lensdask.fit.models.fitted_models`) and ``row`` its fit columns."""
    out = {v: png_bytes(view_image(stamp, bands, v, pixel_scale=pixel_scale, noise=noise)) for v in VIEWS}
    for k, b in enumerate(bands):
        out[f"band-{b}"] = png_bytes(band_image(stamp[k]))
    if models is not None and row is not None:
        out[PANEL_VIEW] = model_panel_png(stamp, models, bands, pixel_scale, row, noise=noise)
    return out


def data_uri(png: bytes) -> str:
    """An inline ``data:`` URI of PNG bytes (the offline page needs no other file)."""
    return "data:image/png;base64," + base64.b64encode(png).decode()


def _known(row: pd.Series) -> str:
    name = row.get("known_name")
    if not isinstance(name, str) or not name:
        return ""
    grade = row.get("known_grading")
    sep = row.get("known_sep_arcsec")
    extra = f", grade {html.escape(str(grade))}" if isinstance(grade, str) and grade else ""
    extra += f", {float(sep):.1f}″ away" if sep is not None and np.isfinite(float(sep)) else ""
    return f'<span class="known">known lens: {html.escape(name)}{extra}</span>'


def card(
    i: int,
    row: pd.Series,
    bands: Sequence[str],
    pixel_scale: float,
    src: Callable[[int, str], str],
    stamp: int,
    fitted: bool = False,
) -> str:
    """One candidate's HTML: the views, band stamps, score, tile, object, position, class probabilities.

    ``fitted``: the candidate has a lens-model fit with its models (:func:`lensdask.fit.models.fitted_models`);
    its card then shows θ_E and the evidence beside the score, and the model panel
    (``src(i, PANEL_VIEW)``) under the views.
    """
    w = stamp * VIEW_SCALE
    views = "".join(
        f'<figure><img data-view="{v}" src="{src(i, v)}" width="{w}" height="{w}" alt="{v}">'
        f"<figcaption>{html.escape(view_caption(v, bands, pixel_scale))}</figcaption></figure>"
        for v in VIEWS
    )
    singles = "".join(
        f'<figure><img data-view="band-{html.escape(b)}" src="{src(i, "band-" + b)}" alt="{html.escape(b)} band">'
        f"<figcaption>{html.escape(b)}</figcaption></figure>"
        for b in bands
    )
    probs = " ".join(f"{html.escape(c[2:])} {row[c]:.3g}" for c in row.index if c.startswith("p_") and pd.notna(row[c]))
    rank = int(row["rank"]) if "rank" in row.index and pd.notna(row["rank"]) else i + 1
    tile, oid = str(row["tile"]), int(row["object_id"])
    fit_info = fit_panel = ""
    if fitted:
        title = html.escape(panel_title(row)).replace("θ_E", "θ<sub>E</sub>")
        fit_info = f'<span class="fit">lens model: {title}</span>'
        fit_panel = (
            f'<figure class="fit-panel"><img data-view="{PANEL_VIEW}" src="{src(i, PANEL_VIEW)}" '
            'alt="lens model fit: data, lens model, residual, source">'
            "<figcaption>lens model fit: data · lens model · residual · reconstructed source</figcaption></figure>"
        )
    return (
        f'<div class="card" id="c{i}" data-index="{i}" data-tile="{html.escape(tile)}" data-object-id="{oid}">'
        f'<div class="info"><span class="score">#{rank} · {html.escape(score_text(row["score"]))}</span>'
        f'<span class="grade" data-grade=""></span>{_known(row)}{fit_info}</div>'
        f'<div class="views">{views}<div class="bands">{singles}</div></div>{fit_panel}'
        f"<table><tr><td>tile</td><td>{html.escape(tile)}</td><td>object</td><td>{oid}</td>"
        f"<td>RA, Dec</td><td>{float(row['ra']):.5f}, {float(row['dec']):.5f}</td>"
        f"<td>classes</td><td>{probs}</td></tr></table></div>"
    )


def header_meta(summary: dict, n_shown: int, n_candidates: int) -> str:
    """The line under the title: run, model id, threshold and counts."""
    parts = [f"model {summary.get('model_id', 'unknown')}"]
    if summary.get("threshold") is not None:
        parts.append(f"threshold p ≥ {summary['threshold']}")
    parts.append(f"{n_candidates} candidates")
    if summary.get("rows_scored") is not None:
        parts.append(f"of {summary['rows_scored']} cutouts scored")
    if summary.get("tiles_searched") is not None:
        parts.append(f"in {summary['tiles_searched']} tiles")
    known = summary.get("known_lenses") or {}
    if isinstance(known, dict) and known.get("n_in_footprint") is not None:
        parts.append(f"{known['n_in_footprint']} known lenses in the footprint")
    parts.append(f"showing the best {n_shown}")
    return " · ".join(html.escape(str(p)) for p in parts)


def _json(value) -> str:
    # JSON inside <script>: "</script>" or "<!--" in a name must not end the script.
    return json.dumps(value).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def document(
    *,
    title: str,
    run: str,
    meta: str,
    cards: str,
    keys: list[dict],
    mode: str,
    storage_key: str,
    labeller: str,
    nav: str = "",
    next_page: str | None = None,
    prev_page: str | None = None,
    token: str = "",
    total: int = 0,
) -> str:
    """The whole page. ``mode`` is ``"static"`` (grades in the browser, CSV export) or ``"app"``."""
    help_rows = " ".join(f"<kbd>{html.escape(k['key'])}</kbd> {html.escape(k['text'])}" for k in keys)
    export = (
        '<button id="export" title="download every grade of this gallery as a CSV for '
        'lensdask label --from-csv">export CSV</button>'
        if mode == "static"
        else ""
    )
    config = {
        "mode": mode,
        "keys": keys,
        "storage": storage_key,
        "labeller": labeller,
        "token": token,
        "next": next_page,
        "prev": prev_page,
        "run": run,
        "total": total,
    }
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{STYLE}</style></head><body><header><h2>{html.escape(title)}</h2>"
        f'<div class="meta">run <b>{html.escape(run)}</b> · {meta}</div>'
        f'<div class="meta">reviewer <input id="labeller" value="{html.escape(labeller)}" autocomplete="off"> '
        f'<span id="progress"></span> · <kbd>?</kbd> keys {export} {nav}</div>'
        f'<div id="help">{help_rows} · <kbd>←</kbd><kbd>→</kbd> move</div></header>'
        f"<main>{cards}</main><script>const LENSDASK = {_json(config)};\n{SCRIPT}</script></body></html>"
    )


SCRIPT = r"""
(function () {
  const C = LENSDASK, cards = Array.from(document.querySelectorAll('.card'));
  const keyMap = {}; C.keys.forEach(k => { keyMap[k.key] = k; });
  const nameBox = document.getElementById('labeller');
  const stored = localStorage.getItem('lensdask:labeller'); if (stored) nameBox.value = stored;
  nameBox.addEventListener('change', () => {
    localStorage.setItem('lensdask:labeller', nameBox.value.trim()); load();
  });
  // grades: "tile/object_id" -> {tile, object_id, class, grade, labeller, time}
  let cur = 0, grades = {}, others = {};
  const keyOf = c => c.dataset.tile + '/' + c.dataset.objectId;
  function local() { try { return JSON.parse(localStorage.getItem(C.storage) || '{}'); } catch (e) { return {}; } }
  function show() {
    let n = 0;
    cards.forEach((c, i) => {
      const g = grades[keyOf(c)], badge = c.querySelector('.grade');
      const mine = g && g.labeller === nameBox.value.trim();
      c.classList.toggle('graded', !!mine); c.classList.toggle('current', i === cur);
      badge.textContent = (mine ? (g.grade === 'no' ? 'not a lens: ' + g['class'] : g.grade + ' lens') : '') +
        (others[keyOf(c)] ? ' (' + others[keyOf(c)] + ' other reviewer' + (others[keyOf(c)] > 1 ? 's)' : ')') : '');
      badge.dataset.grade = mine ? g.grade : ''; badge.dataset.cls = mine ? g['class'] : '';
      if (mine) n++;
    });
    const total = C.mode === 'static'
      ? Object.values(local()).filter(g => g.labeller === nameBox.value.trim()).length : n;
    document.getElementById('progress').textContent =
      'candidate ' + (cur + 1) + ' of ' + cards.length + ' · graded ' + n + ' / ' + cards.length +
      (C.mode === 'static' ? ' here, ' + total + ' in this gallery' : '');
  }
  function go(i) {
    if (i >= cards.length && C.next) { location.href = C.next; return; }
    if (i < 0 && C.prev) { location.href = C.prev + '#last'; return; }
    cur = Math.max(0, Math.min(cards.length - 1, i));
    show(); cards[cur].scrollIntoView({block: 'center'});
  }
  async function load() {
    const who = nameBox.value.trim();
    if (C.mode === 'app') {
      const r = await fetch('api/grades?labeller=' + encodeURIComponent(who), {headers: {'X-Lensdask-Token': C.token}});
      const got = r.ok ? await r.json() : {grades: {}, others: {}};
      grades = got.grades; others = got.others;
    } else {
      grades = {}; const all = local();
      Object.keys(all).forEach(k => { if (all[k].labeller === who) grades[k.split('|')[1]] = all[k]; });
    }
    show();
  }
  let queue = Promise.resolve();   // grades reach the app one after another, in the order given
  function grade(k) {
    const who = nameBox.value.trim();
    if (!who) { alert('type your name in the reviewer box first'); nameBox.focus(); return; }
    const c = cards[cur], key = keyOf(c), before = grades[key];
    const g = {tile: c.dataset.tile, object_id: Number(c.dataset.objectId), 'class': k['class'],
      grade: k.grade, labeller: who, time: new Date().toISOString().replace(/\.\d+Z$/, '+00:00')};
    if (C.mode === 'app') {
      const body = JSON.stringify({index: Number(c.dataset.index), 'class': g['class'], grade: g.grade, labeller: who});
      queue = queue.then(() => fetch('api/grade', {method: 'POST', headers: {'Content-Type': 'application/json',
        'X-Lensdask-Token': C.token}, body: body})).then(async r => {
          if (!r.ok) { grades[key] = before; show(); alert('grade not saved: ' + await r.text()); }
        }, () => { grades[key] = before; show(); alert('grade not saved: the review app does not answer'); });
    } else {
      const all = local(); all[who + '|' + key] = g; localStorage.setItem(C.storage, JSON.stringify(all));
    }
    grades[key] = g; go(cur + 1);
  }
  function csvCell(v) {
    let s = String(v); if (typeof v === 'string' && /^[=+\-@]/.test(s)) s = "'" + s;
    return /[",\n]/.test(s) ? '"' + s.replace(/"/g, '""') + '"' : s;
  }
  window.lensdaskCSV = function () {
    const rows = [['tile', 'object_id', 'class', 'labeller', 'time', 'grade']];
    Object.values(local()).forEach(g => rows.push([g.tile, g.object_id, g['class'], g.labeller, g.time, g.grade]));
    return rows.map(r => r.map(csvCell).join(',')).join('\n') + '\n';
  };
  const exp = document.getElementById('export');
  if (exp) exp.addEventListener('click', () => {
    const a = document.createElement('a');
    a.href = URL.createObjectURL(new Blob([window.lensdaskCSV()], {type: 'text/csv'}));
    a.download = 'labels-' + C.run.replace(/[^A-Za-z0-9._+-]/g, '_') + '.csv';
    document.body.appendChild(a); a.click(); a.remove();
  });
  document.addEventListener('keydown', e => {
    if (e.target === nameBox || e.ctrlKey || e.metaKey || e.altKey) return;
    const k = e.key;
    if (k === 'ArrowRight' || k === 'ArrowDown' || k === 'j') { go(cur + 1); e.preventDefault(); }
    else if (k === 'ArrowLeft' || k === 'ArrowUp' || k === 'k') { go(cur - 1); e.preventDefault(); }
    else if (k === '?') { document.getElementById('help').classList.toggle('on'); }
    else if (keyMap[k.toLowerCase()]) { grade(keyMap[k.toLowerCase()]); e.preventDefault(); }
  });
  cards.forEach((c, i) => c.addEventListener('click', () => go(i)));
  if (location.hash === '#last') cur = cards.length - 1;
  load().then(() => go(cur));
})();
"""
