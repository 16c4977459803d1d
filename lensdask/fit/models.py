"""A fitted candidate's model images, read back for people: :func:`read_models` and the model panel.

``lensdask fit`` writes, beside each chunk's rows, ``RUN_DIR/fit/chunk-<hash>.npz`` holding per
candidate ``{object_id}_lens``, ``{object_id}_null``, ``{object_id}_source`` ((n_bands, n, n) float32
images in the store's flux units: the lens model, the null model, the reconstructed unlensed source
on the image grid) and ``{object_id}_mask`` ((n, n) int8, 1 on the pixels both models were fitted on).

:func:`read_models` reads them back. Their contents are data, never trusted: only the run's own
``fit/chunk-*.npz`` files are opened (no path is built from anything inside them), keys that are not
``<integer>_<lens|null|source|mask>`` are ignored, pickled objects are refused, and an array of the
wrong shape, kind or size is left out (with a warning naming the file), as is a file that cannot be
read: such a candidate simply shows without a model panel.

The **model panel** (:func:`model_panel_figure`, :func:`model_panel_png`) shows, left to right:
the data, the lens model, the residual (data minus lens model; pixels the fit did not use are
dimmed) and the reconstructed source, all in true colour with the review page's colour function
(:func:`lensdask.images.colour_composite`: the same band scales and brightness unit, so the panel
compares with the candidate's stamps). Data and lens model use the true-colour stretch, residual
and source the faint-feature stretch. Its title gives the Einstein radius with its error and the
evidence, ΔBIC = BIC(lens) − BIC(null) (negative favours lensing). The review page, the review app
and the Zooniverse export show it for every candidate fitted with ``fit_status == "ok"`` whose
models are present (:func:`fitted_models`).
"""

from __future__ import annotations

import io
import os
import pathlib
import re
import warnings
import zipfile
import zlib
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from .. import config
from ..images import colour_composite, rgb_bands, scale_bar, sky_noise
from .candidate import evidence_usable, fitted
from .run import FIT_DIR

MODEL_ARRAYS = ("lens", "null", "source", "mask")
"""The arrays a fitted candidate has in its chunk's ``.npz``, named ``{object_id}_{name}``."""

PANEL_VIEW = "fit-model"
"""The view name of the model panel on the review page (``data-view``) and in the review app's URLs."""

MAX_ARRAY_BYTES = 64 * 2**20
"""Largest array read from a model file (uncompressed bytes): a stamp's models are tens of kB."""

_KEY = re.compile(r"(-?[0-9]{1,20})_(lens|null|source|mask)")
_DIM_UNFITTED = 0.4  # brightness of the residual's pixels that the fit did not use


def _acceptable(name: str, array: np.ndarray) -> bool:
    """Whether ``array`` has the shape and kind of the model array ``name`` (see :data:`MODEL_ARRAYS`)."""
    if name == "mask":
        return array.ndim == 2 and array.dtype.kind in "biu"
    return array.ndim == 3 and array.dtype.kind in "fiu"


def read_models(
    run_dir: str | os.PathLike, object_ids: Iterable[int] | None = None
) -> dict[int, dict[str, np.ndarray]]:
    """Read the model images of a fitted run, per candidate.

    Parameters
    ----------
    run_dir : str or path
        A run directory fitted by ``lensdask fit`` (its ``fit/chunk-*.npz`` files are read).
    object_ids : iterable of int, optional
        Read only these candidates (default: every candidate with a model file).

    Returns
    -------
    dict
        ``{object_id: {"lens", "null", "source": (n_bands, n, n) float32 images in the store's flux
        units, "mask": (n, n) int8, 1 on fitted pixels}}``; a candidate has only the arrays found.
        Empty when the run has no fit. When several chunks hold the same candidate, the file last in
        name order wins (as :func:`lensdask.fit.run.read_fits` does for the rows).

    Warns
    -----
    UserWarning
        A file that cannot be read, or an array of the wrong shape, kind or size: left out.
    """
    folder = pathlib.Path(run_dir) / FIT_DIR
    wanted = None if object_ids is None else {int(o) for o in object_ids}
    out: dict[int, dict[str, np.ndarray]] = {}
    if not folder.is_dir() or wanted == set():
        return out
    for path in sorted(folder.glob("chunk-*.npz")):
        try:
            with np.load(path, allow_pickle=False) as npz:
                for key in npz.files:
                    match = _KEY.fullmatch(key)
                    if match is None:
                        continue
                    oid, name = int(match[1]), match[2]
                    if wanted is not None and oid not in wanted:
                        continue
                    size = npz.zip.getinfo(f"{key}.npy").file_size
                    array = npz[key] if size <= MAX_ARRAY_BYTES else None
                    if array is None or not _acceptable(name, array):
                        warnings.warn(f"{path.name}: {key} is not a model image; left out", stacklevel=2)
                        continue
                    out.setdefault(oid, {})[name] = array
        except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, zlib.error) as exc:
            why = (str(exc).splitlines() or [""])[0][:120]
            warnings.warn(f"{path.name}: unreadable model file ({type(exc).__name__}: {why}); left out", stacklevel=2)
    return out


def fitted_models(row: Mapping, models: Mapping[str, np.ndarray] | None, shape: Sequence[int]) -> dict | None:
    """The model arrays of one candidate when it has a model panel, else None.

    A candidate has one when its fit succeeded (``fit_status == "ok"``) and its lens model and
    source are present with the shape of its stamp (``shape``, (n_bands, n, n)); a mask of the
    wrong shape is dropped (the residual is then not dimmed anywhere).
    """
    if models is None or row.get("fit_status") != "ok":
        return None
    shape = tuple(int(s) for s in shape)
    if any(name not in models or tuple(models[name].shape) != shape for name in ("lens", "source")):
        return None
    kept = {name: models[name] for name in ("lens", "null", "source") if name in models}
    mask = models.get("mask")
    if mask is not None and tuple(mask.shape) == shape[1:]:
        kept["mask"] = mask
    return kept


def _number(value, digits: int) -> str:
    """``value`` with ``digits`` decimals and a true minus sign; ``n/a`` when not finite."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        return "n/a"
    return f"{v:.{digits}f}".replace("-", "−") if np.isfinite(v) else "n/a"


def theta_text(row: Mapping) -> str:
    """``θ_E = 1.23 ± 0.04″`` (arcsec; the error left out when the fit has none)."""
    err = _number(row.get("fit_theta_E_err"), 2)
    return f"θ_E = {_number(row.get('fit_theta_E'), 2)}" + ("″" if err == "n/a" else f" ± {err}″")


FLAG_WORDS = {
    "misfit": "the lens model misfits",
    "implausible": "implausible",
    "hessian": "singular covariance",
    "optimiser": "not converged",
    "restarts": "restarts disagree",
    "source_size": "source too large for arcs",
}
"""How :func:`evidence_text` says each fit flag (``bound:<param>``: ``<param> at its bound``)."""


def evidence_text(row: Mapping) -> str:
    """``ΔBIC = −12.3 (favours lensing)``: the evidence and what the fit concludes.

    ``favours lensing`` when the lens model is acceptable (:func:`lensdask.fit.candidate.evidence_usable`)
    and ΔBIC is below config ``fit.rank.dbic_threshold``, ``favours the null model`` when it is acceptable
    and ΔBIC is not, ``against lensing: <why>`` when the lens model is not acceptable (its flags), and
    ``not used: no fit`` without a fit.
    """
    text = f"ΔBIC = {_number(row.get('fit_dbic'), 1)}"
    table = pd.DataFrame([{k: row.get(k) for k in ("fit_status", "fit_flags", "fit_dbic")}])
    table["fit_dbic"] = pd.to_numeric(table["fit_dbic"], errors="coerce")
    if not fitted(table)[0]:
        return f"{text} (not used: no fit)"
    if not evidence_usable(table)[0]:
        flags = [f for f in str(row.get("fit_flags") or "").split(",") if f]
        words = [
            ("θ_E" if f == "bound:theta_E" else f.split(":", 1)[1]) + " at its bound"
            if f.startswith("bound:")
            else FLAG_WORDS.get(f, f)
            for f in flags
        ]
        return f"{text} (against lensing: {', '.join(words)})"
    threshold = float(config.get("fit.rank.dbic_threshold"))
    return f"{text} ({'favours lensing' if float(row['fit_dbic']) < threshold else 'favours the null model'})"


def panel_title(row: Mapping) -> str:
    """The model panel's title: :func:`theta_text` and :func:`evidence_text`."""
    return f"{theta_text(row)} · {evidence_text(row)}"


def _panel_images(stamp, models, bands, pixel_scale, noise) -> list[tuple[str, np.ndarray]]:
    """The four (caption, (n, n, 3) uint8) pictures of the panel."""
    data = np.asarray(stamp, dtype=np.float64)
    lens = np.asarray(models["lens"], dtype=np.float64)
    source = np.asarray(models["source"], dtype=np.float64)
    residual = colour_composite(data - lens, bands, noise=noise, view="faint")
    mask = models.get("mask")
    if mask is not None:
        dim = np.where(np.asarray(mask) > 0, 1.0, _DIM_UNFITTED)[..., None]
        residual = (residual * dim).astype(np.uint8)
    colours = "".join(rgb_bands(bands))
    return [
        (f"data ({colours})", scale_bar(colour_composite(data, bands, noise=noise), pixel_scale)),
        ("lens model", colour_composite(lens, bands, noise=noise)),
        ("residual (faint)", residual),
        ("source, unlensed (faint)", colour_composite(source, bands, noise=noise, view="faint")),
    ]


def model_panel_figure(
    stamp: np.ndarray,
    models: Mapping[str, np.ndarray],
    bands: Sequence[str],
    pixel_scale: float,
    row: Mapping,
    *,
    noise: float | None = None,
    numbers: bool = True,
    dpi: int = 100,
):
    """A fitted candidate's model panel: data, lens model, residual, source, in true colour.

    Parameters
    ----------
    stamp : numpy.ndarray
        (n_bands, n, n) the candidate's stamps, flux units of the store.
    models : mapping
        Its model arrays (:func:`read_models`; ``lens`` and ``source`` needed, ``mask`` dims the
        residual's unfitted pixels).
    bands : sequence of str
        Band names in stamp order.
    pixel_scale : float, arcsec/pixel
        For the scale bar on the data (config ``review.colour.scale_bar``).
    row : mapping
        The candidate's fit columns: ``fit_theta_E``, ``fit_theta_E_err`` (arcsec), ``fit_dbic``,
        ``fit_status``, ``fit_flags``.
    noise : float, optional
        Brightness unit, flux units (default :func:`lensdask.images.sky_noise` of ``stamp``); pass
        the page's value so that the panel's brightness compares with its stamps.
    numbers : bool
        Title the panel with θ_E ± error and ΔBIC (:func:`panel_title`); False leaves the numbers
        out (the Zooniverse subjects, which show volunteers no score).
    dpi : int
        Dots per inch of the figure (1.9 inches per picture).

    Returns
    -------
    matplotlib.figure.Figure
        Made without pyplot (safe in the review app's threads); not shown.
    """
    from matplotlib.figure import Figure

    if noise is None:
        noise = sky_noise(stamp, bands)
    pictures = _panel_images(stamp, models, bands, pixel_scale, noise)
    fig = Figure(figsize=(1.9 * len(pictures), 2.35 if numbers else 2.15), dpi=dpi, facecolor="#1e1e1e")
    axes = fig.subplots(1, len(pictures))
    for ax, (caption, image) in zip(axes, pictures):
        ax.imshow(image, origin="lower", interpolation="nearest")
        ax.set_title(caption, color="#ddd", fontsize=8)
        ax.set_axis_off()
    if numbers:
        fig.suptitle(panel_title(row).replace("θ_E", r"$\theta_\mathrm{E}$"), color="#fc6", fontsize=9)
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.02, top=0.78 if numbers else 0.86, wspace=0.04)
    return fig


def model_panel_png(
    stamp: np.ndarray,
    models: Mapping[str, np.ndarray],
    bands: Sequence[str],
    pixel_scale: float,
    row: Mapping,
    *,
    noise: float | None = None,
    numbers: bool = True,
    dpi: int = 100,
) -> bytes:
    """PNG bytes (RGB) of :func:`model_panel_figure`, with the same parameters."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    fig = model_panel_figure(stamp, models, bands, pixel_scale, row, noise=noise, numbers=numbers, dpi=dpi)
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", facecolor=fig.get_facecolor(), pil_kwargs={"optimize": True})
    return _rgb_png(buf.getvalue())


def _rgb_png(png: bytes) -> bytes:
    """The same PNG without its alpha channel (an RGB picture, smaller)."""
    from PIL import Image

    with Image.open(io.BytesIO(png)) as img:
        out = io.BytesIO()
        img.convert("RGB").save(out, format="PNG", optimize=True)
    return out.getvalue()


def candidate_models(
    run_dir: str | os.PathLike, candidates: pd.DataFrame, shape: Sequence[int]
) -> list[dict[str, np.ndarray] | None]:
    """Per row of ``candidates``, its model arrays when it has a model panel (:func:`fitted_models`), else None.

    Parameters
    ----------
    run_dir : str or path
        The run the candidates come from (its ``fit/chunk-*.npz`` are read for the fitted rows only).
    candidates : pandas.DataFrame
        Rows with ``object_id`` and, for fitted runs, the fit columns (``candidates.parquet``).
    shape : sequence of int
        (n_bands, n, n) of the candidates' stamps.

    Returns
    -------
    list
        One entry per row, in order; all None when the run has no fit.
    """
    if "fit_status" not in candidates.columns:
        return [None] * len(candidates)
    ok = (candidates["fit_status"] == "ok").to_numpy()
    if not ok.any():
        return [None] * len(candidates)
    models = read_models(run_dir, candidates.loc[ok, "object_id"].astype(np.int64))
    return [
        fitted_models(row, models.get(int(row["object_id"])), shape) if fit else None
        for fit, row in zip(ok, candidates.to_dict("records"))
    ]
