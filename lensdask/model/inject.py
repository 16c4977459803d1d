"""Injection-recovery on real cutouts: paint simulated arcs on real galaxies, score both versions.

The simulated validation set of :func:`~lensdask.model.train.train` says how well a model
separates simulations. On real sky that number can mislead twice over: real galaxies are not
the modelled ones (their neighbours, colours and noise differ), and a model may flag plain
real galaxies. :func:`inject` measures both on real cutouts the model never trained on:

* each real cutout, in up to 8 rotations/flips, is scored as it is (a non-lens: the false-
  positive rate at the operating threshold, with a Clopper-Pearson interval);
* the same oriented cutout with a simulated arc painted on it (:func:`~lensdask.simulate.paint.paint_arcs`,
  the training simulator and constraints) is scored too (completeness, by Einstein radius, arc
  S/N and lens-galaxy magnitude; AUROC painted vs unpainted).

Galaxies a model trained on are refused (:func:`~lensdask.simulate.galaxies.check_disjoint`).
"""

from __future__ import annotations

import math
import os
import pathlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from .. import config
from ..errors import LensdaskError, ModelMismatchError
from ..simulate.galaxies import N_DIHEDRAL, check_disjoint, dihedral, fingerprints, select_rows

if TYPE_CHECKING:
    import torch

    from ..simulate.constraints import Constraints

__all__ = ["inject", "clopper_pearson", "read_real_cutouts"]


def clopper_pearson(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """The Clopper-Pearson (exact binomial) interval of a rate ``k / n``.

    Returns
    -------
    (float, float)
        Lower and upper bounds; (0, 1) when ``n`` is 0.
    """
    from scipy.stats import beta

    k, n = int(k), int(n)
    if n <= 0:
        return 0.0, 1.0
    a = (1.0 - float(confidence)) / 2
    lo = 0.0 if k == 0 else float(beta.ppf(a, k, n - k + 1))
    hi = 1.0 if k == n else float(beta.ppf(1 - a, k + 1, n - k))
    return lo, hi


def read_real_cutouts(source, bands) -> dict:
    """Real cutouts in the given band order, as stored (not cropped).

    Parameters
    ----------
    source : str or path
        A ``lensdask.cutouts/1`` store (rows labelled ``lens`` are skipped, as for simulation
        backgrounds), a folder of ``<band>.fits`` cubes (n, H, W) with optional ``sigma_v.txt``
        (km/s), or a ``.npy`` (n, bands, H, W) / ``.npz`` (``images`` or one array per band;
        optional ``bands``, ``pixel_scale``, ``sigma_v``).
    bands : sequence of str
        The bands wanted, in order (the model's).

    Returns
    -------
    dict
        ``images`` (n, n_bands, H, W) float32, ``sigma_v`` (n,) km/s (NaN when unknown),
        ``pixel_scale`` (arcsec/px, or None when the source does not say), ``source`` (str).

    Raises
    ------
    ModelMismatchError
        A band is missing, or the bands differ in names or order (stores and ``.npz`` with
        ``bands``), or an array has another number of bands.
    LensdaskError
        Nothing readable at ``source``.
    """
    from ..simulate.inputs import header_pixel_scale
    from ..survey.ingest import load_cutouts, read_image_header

    bands = list(bands)
    path = pathlib.Path(os.fspath(source))
    src = str(source) if "://" in str(source) else str(path.resolve())
    if "://" in str(source) or (path / "zarr.json").exists():
        from ..store import open_store

        s = open_store(source)
        if list(s.bands) != bands:
            raise ModelMismatchError(
                f"bands differ: the model takes {bands}, store {s.url!r} holds {list(s.bands)} (order matters)"
            )
        lens = s.classes.index("lens") if "lens" in s.classes else None
        imgs, sig = [], []
        for t in s.written_tiles():
            tile = s.read_tile(t)
            keep = np.ones(len(tile.table), bool) if lens is None else tile.table["label"].to_numpy() != lens
            imgs.append(tile.images[keep])
            sig.append(
                tile.table["sigma_v"].to_numpy()[keep] if "sigma_v" in tile.table else np.full(int(keep.sum()), np.nan)
            )
        shape = (0, len(bands), s.stamp, s.stamp)
        images = np.concatenate(imgs) if imgs else np.zeros(shape, np.float32)
        sigma_v = np.concatenate(sig).astype(float) if sig else np.zeros(0)
        return {
            "images": np.asarray(images, np.float32),
            "sigma_v": sigma_v,
            "pixel_scale": float(s.pixel_scale),
            "source": src,
        }
    if not path.exists():
        raise LensdaskError(f"cutouts {str(source)!r} not found")
    if path.is_dir():
        have = sorted(p.stem for p in path.glob("*.fits"))
        missing = [b for b in bands if b not in have]
        if missing:
            raise ModelMismatchError(
                f"bands differ: the model takes {bands}; {src} has cubes for {have} (missing {missing})"
            )
        images, _ = load_cutouts(cubes={b: path / f"{b}.fits" for b in bands}, bands=bands)
        scales = {ps for b in bands if (ps := header_pixel_scale(read_image_header(path / f"{b}.fits"))) is not None}
        if len(scales) > 1:
            raise LensdaskError(f"{src}: the band cubes have different pixel scales {sorted(scales)}")
        sigma_v = np.full(len(images), np.nan)
        sig_path = path / "sigma_v.txt"
        if sig_path.exists():
            v = np.loadtxt(sig_path, comments="#", ndmin=1).astype(float).ravel()
            if len(v) != len(images):
                raise LensdaskError(f"{sig_path}: {len(v)} velocity dispersions for {len(images)} cutouts")
            sigma_v = v
        return {
            "images": np.asarray(images, np.float32),
            "sigma_v": sigma_v,
            "pixel_scale": scales.pop() if scales else None,
            "source": src,
        }
    extra = {}
    if path.suffix == ".npz":
        with np.load(path) as z:
            extra = {k: z[k] for k in ("bands", "pixel_scale", "sigma_v") if k in z}
        if "bands" in extra and [str(b) for b in np.atleast_1d(extra["bands"])] != bands:
            raise ModelMismatchError(
                f"bands differ: the model takes {bands}, {src} holds "
                f"{[str(b) for b in np.atleast_1d(extra['bands'])]} (order matters)"
            )
    try:
        images, _ = load_cutouts(arrays=path, bands=bands)
    except LensdaskError as exc:
        if "expected an 'images' array or one per band" in str(exc):
            raise ModelMismatchError(f"bands differ: the model takes {bands}; {exc}") from None
        raise
    images = np.asarray(images, np.float32)
    if images.ndim != 4 or images.shape[1] != len(bands):
        raise ModelMismatchError(
            f"{src}: cutouts of shape {images.shape}; the model takes (n, {len(bands)}, H, W) for bands {bands}"
        )
    sigma_v = np.asarray(extra.get("sigma_v", np.full(len(images), np.nan)), float).ravel()
    if len(sigma_v) != len(images):
        raise LensdaskError(f"{src}: {len(sigma_v)} velocity dispersions for {len(images)} cutouts")
    ps = float(extra["pixel_scale"]) if "pixel_scale" in extra else None
    return {"images": images, "sigma_v": sigma_v, "pixel_scale": ps, "source": src}


def _card_with_training_galaxies(card: dict) -> dict:
    """The card, with ``training_galaxies`` rebuilt for cards made before it existed.

    Such a model trained on every row of its store's ``backgrounds`` and ``negatives`` (provenance);
    they are read again to fingerprint them. Cards that have the field are returned as they are.
    """
    from ..simulate.galaxies import SplitError
    from ..simulate.inputs import InputError, load_backgrounds, real_galaxies_record

    if "training_galaxies" in card:
        return card
    prov = (card.get("training") or {}).get("data_provenance") or {}
    paths = [p for p in (prov.get("backgrounds"), prov.get("negatives")) if p]
    if not paths:
        return card
    sets = []
    for p in dict.fromkeys(paths):
        try:
            sets.append(load_backgrounds(p, tuple(card["bands"]), float(card["pixel_scale"]), int(card["stamp"])))
        except InputError as exc:
            raise SplitError(
                f"model {card.get('model_id', '?')} trained on real cutouts from {p!r}, which cannot "
                f"be read to check that the evaluated galaxies are not among them ({exc})"
            ) from None
    return {**card, "training_galaxies": real_galaxies_record(sets[0], sets[1] if len(sets) > 1 else None)}


def _crop(a: np.ndarray, stamp: int) -> np.ndarray:
    o = (a.shape[-1] - stamp) // 2
    return a[..., o : o + stamp, o : o + stamp]


def inject(
    cutouts: str | os.PathLike,
    model: str | os.PathLike | None = None,
    *,
    galaxies=None,
    orientations: int | None = None,
    seed: int = 0,
    threshold: float | None = None,
    constraints: Constraints | dict | None = None,
    max_draws: int | None = None,
    zeropoint: float | None = None,
    aperture: float | None = None,
    n_bins: int | None = None,
    top: int | None = None,
    out: str | os.PathLike | None = None,
    png: str | os.PathLike | None = None,
    json_path: str | os.PathLike | None = None,
    record: bool = False,
    batch_size: int | str | None = None,
    device: str | None = None,
    progress: bool = True,
    survey: str | None = None,
    adapt_survey: bool = False,
) -> dict:
    """Injection-recovery of a model on real cutouts: arcs painted on real galaxies vs the galaxies alone.

    Parameters
    ----------
    cutouts : str or path
        Real cutouts: a cutout store, a folder of per-band FITS cubes (e.g.
        ``../shared/data/des_galaxies``) or a ``.npy`` / ``.npz`` file (see
        :func:`read_real_cutouts`). Stamps larger than the model's are cropped around the centre.
        Named ``cutouts``, not ``store``, because it need not be a store.
    model : str, path or None
        Checkpoint directory; ``None`` uses the default model.
    galaxies : str or sequence of int, optional
        Rows to use (:func:`~lensdask.simulate.galaxies.select_rows`: ``"all"``, ``"train"``,
        ``"heldout"``, ``"0:20"``, ``"1,4,7"``); None: all.
    orientations : int, optional
        Rotations/flips of each cutout, 1-8 (the first ``orientations`` of
        :func:`~lensdask.simulate.galaxies.dihedral`; config ``inject.orientations``, 8).
    seed : int
        Seed of the painted systems; cutout row r in orientation o draws from
        ``row_rng(seed, 8 r + o, PAINT_STREAM)``.
    threshold : float, optional
        Operating lens probability (config ``search.threshold``).
    constraints : Constraints or dict, optional
        Quality cuts of the painted systems; a dict overrides ``simulate.constraints``.
    max_draws : int, optional
        Draws per painted system (config ``simulate.max_draws_per_lens``); a cutout on which no
        system passes is counted in ``n_paint_failed`` and scored unpainted only.
    zeropoint : float, mag, optional
        Of the lens magnitude ``zeropoint - 2.5 log10(flux)`` (config ``inject.zeropoint``, 30.0:
        the DES coadd convention for fluxes in nanomaggy-like units). ``des_galaxies`` fluxes are
        in relative units, so their magnitudes are relative too (only differences mean anything).
    aperture : float, arcsec, optional
        Radius of the lens-flux aperture around the stamp centre (config ``inject.aperture``, 2.0),
        in the i band (else the reddest band).
    n_bins : int, optional
        Bins of the completeness curves (config ``inject.bins``).
    top : int, optional
        Highest-scoring unpainted cutouts listed and drawn (config ``inject.top``).
    survey : str, optional
        The survey profile of the cutouts (:mod:`lensdask.survey.profiles`): a store's must be it (None:
        what the store records); folders and arrays record none (None: ``des``).
    adapt_survey : bool
        A model trained on another survey than the cutouts' is adapted to their bands and pixel scale
        (:func:`~lensdask.model.pretrained.adapt_to_survey`) instead of refused; arcs are then painted as
        that survey sees them.
    out : str or path, optional
        Folder for ``inject.json``, ``completeness.png`` and ``top_unpainted.png``.
    png : str or path, optional
        Prefix of the two PNGs instead: ``PREFIX_completeness.png``, ``PREFIX_top_unpainted.png``
        (``PREFIX/completeness.png`` ... when it is a folder or ends with ``/``).
    json_path : str or path, optional
        Also write the result there as JSON.
    record : bool
        Append the result to the model card's ``evaluations`` (weights untouched).
    batch_size : int or "auto", optional
        Cutouts per forward pass (config ``search.batch_size``).
    device : str, optional
        ``"auto"``, ``"cpu"``, ``"cuda"`` (config ``search.device``).
    progress : bool
        A tqdm progress bar over cutouts.

    Returns
    -------
    dict
        ``kind`` ("inject"), ``model_id``, ``model``, ``cutouts``, ``galaxies`` (the spec), ``rows``
        (original rows scored), ``rows_nonfinite`` and ``rows_no_noise`` (skipped), ``n_cutouts``
        (real cutouts scored), ``n_nonfinite`` (cutouts with a non-finite pixel, skipped),
        ``n_no_noise`` (no measurable background noise, skipped), ``orientations``, ``n_unpainted``,
        ``n_painted``, ``n_paint_failed``, ``seed``, ``threshold``;
        :func:`~lensdask.model.metrics.binary_metrics` of painted (positive) vs unpainted
        (``auroc``, ``tpr0``, ``tpr10``, ``tpr_fpr_1e-3``, ``tpr_fpr_1e-4``); ``false_positives``,
        ``fpr`` (fraction of unpainted scoring at or above the threshold) and ``fpr_interval``
        (95% Clopper-Pearson; orientations of one galaxy are not independent, so it is optimistic
        by up to a factor sqrt(orientations) in width); ``completeness`` and
        ``completeness_interval`` of the painted ones; ``completeness_by``: bins (``lo``, ``hi``,
        ``n``, ``found``, ``completeness``) over ``theta_E`` (arcsec), ``arc_snr_<snr band>`` and
        ``lens_mag_<band>`` (mag); ``top_unpainted``: the best-scoring unpainted cutouts (``row``,
        ``orientation``, ``score``); ``constraints``, ``zeropoint``, ``aperture``, ``pixel_scale``,
        and ``completeness_png``, ``top_unpainted_png``, ``json`` when written.

    Raises
    ------
    ModelSurveyError
        The model was trained on another survey than the cutouts', without ``adapt_survey``.
    SurveyMismatchError, UnknownSurveyError
        A store of another survey than ``survey``, or an unknown ``survey``.
    ModelMismatchError
        Bands, stamp size or pixel scale of the cutouts differ from the model card; raised
        before any cutout is painted or scored.
    SplitError
        Some selected cutouts are galaxies the model trained on (card ``training_galaxies``; for
        cards older than that field, every row of the training store's ``backgrounds`` and
        ``negatives``, read again), or the selection is invalid.
    LensdaskError
        No usable cutout, or other bad input.
    TypeError
        A model where the cutouts belong (the order before: ``inject(model, cutouts)``).
    """
    from .checkpoint import refuse_model_as_store

    refuse_model_as_store(cutouts, "inject(cutouts, model)")
    s = _settings(threshold, orientations, zeropoint, aperture, n_bins, top)
    m = _read_model(cutouts, model, survey, adapt_survey)
    constraints = _constraints(constraints, list(m.card["bands"]))
    cut = _usable_cutouts(cutouts, m.card, galaxies)  # everything read and checked before any work
    sc = _on_device(m, device, batch_size)
    p = _paint(cut, sc.card, s.orientations, seed, constraints, max_draws, progress)
    s_plain = _lens_probability(sc.net, sc.card, p.oriented, sc.batch_size, sc.dev)
    s_paint = _lens_probability(sc.net, sc.card, p.painted, sc.batch_size, sc.dev)
    order = np.argsort(-s_plain, kind="mergesort")[: s.top]  # the top unpainted, best first
    result = _result(sc.card, m.model_dir, galaxies, seed, cut, p, s_plain, s_paint, order, s, constraints)
    _draw_figures(result, _png_paths(png, out), p, s_plain, order, list(sc.card["bands"]), cut.source)
    _write_json(result, json_path, out)
    if record:
        from .evaluate import record_evaluation

        record_evaluation(m.model_dir, result)
    return result


# -- the steps of inject ----------------------------------------------------------------------
def _cutouts_survey(cutouts, survey: str | None):
    """The survey of the cutouts, as :func:`~lensdask.model.pretrained.adapt_to_survey` takes a target.

    A store: itself, checked against ``survey`` when given (:func:`lensdask.survey.profiles.check_store_survey`);
    folders and arrays: the profile of ``survey`` (None: ``des``), its bands, stamp and pixel scale.
    """
    from types import SimpleNamespace

    from ..survey.profiles import check_store_survey, get_profile

    path = pathlib.Path(os.fspath(cutouts))
    if "://" in str(cutouts) or (path / "zarr.json").exists():
        from ..store import open_store

        store = open_store(cutouts)
        check_store_survey(store, survey)
        return store
    profile = get_profile(survey or "des")
    return SimpleNamespace(
        bands=list(profile.bands), stamp=profile.stamp, pixel_scale=profile.pixel_scale, survey=profile.name
    )


@dataclass(frozen=True)
class _Model:
    """The model of one :func:`inject`, read for the cutouts' survey.

    Attributes
    ----------
    model_dir : pathlib.Path
        Its checkpoint directory.
    card : dict
        Its card; adapted to the cutouts' survey when ``net`` is.
    net : torch.nn.Module or None
        The network adapted to the cutouts' survey, on the CPU; None when it needs no adapting (its
        weights are loaded once the cutouts are checked).
    """

    model_dir: pathlib.Path
    card: dict
    net: torch.nn.Module | None


def _read_model(cutouts, model, survey: str | None, adapt_survey: bool) -> _Model:
    """Read :func:`inject`'s ``model`` (None: the shipped model of the cutouts' survey) and check its survey.

    Raises
    ------
    ModelSurveyError
        The model was trained on another survey than the cutouts', without ``adapt_survey``.
    SurveyMismatchError, UnknownSurveyError
        As :func:`_cutouts_survey` raises them.
    """
    from .checkpoint import check_survey, load_checkpoint, read_card, resolve_model_dir

    target = _cutouts_survey(cutouts, survey)
    model_dir = resolve_model_dir(model, target.survey)
    card = read_card(model_dir)
    if not check_survey(card, target.survey, str(cutouts), adapt_survey=adapt_survey):
        return _Model(model_dir, card, None)
    from .pretrained import adapt_to_survey

    net, card = load_checkpoint(model_dir, device="cpu")
    net, card = adapt_to_survey(net, card, target)
    return _Model(model_dir, card, net)


@dataclass(frozen=True)
class _Scorer:
    """The model's network on the device that scores the cutouts.

    Attributes
    ----------
    net : torch.nn.Module
        The network, on ``dev``.
    card : dict
        Its card.
    dev : torch.device
        Where it runs.
    batch_size : int
        Cutouts per forward pass.
    """

    net: torch.nn.Module
    card: dict
    dev: torch.device
    batch_size: int


def _on_device(m: _Model, device: str | None, batch_size: int | str | None) -> _Scorer:
    """The network of ``m`` on ``device`` (config ``search.device``), with ``batch_size`` (config
    ``search.batch_size``) resolved for it; the weights are loaded here unless ``m`` was adapted."""
    from .checkpoint import load_checkpoint
    from .infer import resolve_batch_size, resolve_device

    dev = resolve_device(device)
    batch_size = resolve_batch_size(config.get("search.batch_size", batch_size), dev)
    if m.net is not None:
        m.net.to(dev)
        return _Scorer(m.net, m.card, dev, batch_size)
    net, card = load_checkpoint(m.model_dir, device=dev)
    return _Scorer(net, card, dev, batch_size)


@dataclass(frozen=True)
class _Settings:
    """The options of one :func:`inject`: arguments, else configuration, checked.

    Attributes
    ----------
    threshold : float
        Operating lens probability.
    orientations : int
        Rotations/flips of each cutout, 1-8.
    zeropoint : float
        Of the lens magnitudes, mag.
    aperture : float
        Radius of the lens-flux aperture, arcsec.
    n_bins : int
        Bins of the completeness curves.
    top : int
        Highest-scoring unpainted cutouts listed and drawn.
    """

    threshold: float
    orientations: int
    zeropoint: float
    aperture: float
    n_bins: int
    top: int


def _settings(threshold, orientations, zeropoint, aperture, n_bins, top) -> _Settings:
    """Fill :func:`inject`'s options left at None from the configuration, and check them.

    Raises
    ------
    LensdaskError
        Orientations outside 1-8, fewer than one bin, a negative ``top`` or an aperture not above 0.
    """
    threshold = float(config.get("search.threshold", threshold))
    orientations = int(config.get("inject.orientations", orientations))
    if not 1 <= orientations <= N_DIHEDRAL:
        raise LensdaskError(f"orientations must be 1..{N_DIHEDRAL}, got {orientations}")
    zeropoint = float(config.get("inject.zeropoint", zeropoint))
    aperture = float(config.get("inject.aperture", aperture))
    n_bins = int(config.get("inject.bins", n_bins))
    top = int(config.get("inject.top", top))
    if n_bins < 1 or top < 0 or aperture <= 0:
        raise LensdaskError(f"bins must be >= 1, top >= 0 and aperture > 0 (got {n_bins}, {top}, {aperture})")
    return _Settings(threshold, orientations, zeropoint, aperture, n_bins, top)


def _constraints(constraints: Constraints | dict | None, bands: list[str]) -> Constraints:
    """``constraints``, or ``simulate.constraints`` with a dict's keys overriding them.

    Raises
    ------
    LensdaskError
        Their ``snr_band`` is not among the model's ``bands``.
    """
    from ..simulate.constraints import Constraints

    if not isinstance(constraints, Constraints):
        constraints = Constraints.from_config(constraints)
    if constraints.snr_band not in bands:
        raise LensdaskError(f"snr_band {constraints.snr_band!r} is not among the model's bands {bands}")
    return constraints


@dataclass(frozen=True)
class _Cutouts:
    """The selected real cutouts, and those of them that can be painted and scored.

    Attributes
    ----------
    source : str
        Where they were read (:func:`read_real_cutouts`).
    rows : numpy.ndarray
        (n,) the selected rows of the source.
    nonfinite, no_noise : numpy.ndarray
        (n,) bool: a non-finite pixel; no measurable background noise (skipped).
    ok : numpy.ndarray
        Positions in ``rows`` of the usable cutouts.
    crops : numpy.ndarray
        (n_ok, bands, stamp, stamp) float32 usable cutouts cropped to the model's stamp.
    noise : numpy.ndarray
        (n_ok, bands) background noise of each band, in the cutouts' units.
    sigma_v : numpy.ndarray
        (n_ok,) velocity dispersion, km/s (NaN when unknown).
    """

    source: str
    rows: np.ndarray
    nonfinite: np.ndarray
    no_noise: np.ndarray
    ok: np.ndarray
    crops: np.ndarray
    noise: np.ndarray
    sigma_v: np.ndarray

    @property
    def used_rows(self) -> np.ndarray:
        """The source rows of the usable cutouts."""
        return self.rows[self.ok]


def _checked_cutouts(cutouts, card: dict) -> dict:
    """:func:`read_real_cutouts` of ``cutouts`` in the model's bands, checked against its card.

    Raises
    ------
    ModelMismatchError
        Smaller stamps, or another pixel scale.
    LensdaskError
        Cutouts that are not square, or none.
    """
    bands, stamp, card_ps = list(card["bands"]), int(card["stamp"]), float(card["pixel_scale"])
    where = card.get("model_id", card["arch"])
    real = read_real_cutouts(cutouts, bands)
    full = real["images"]
    if full.shape[-1] != full.shape[-2]:
        raise LensdaskError(f"{real['source']}: cutouts must be square, got {full.shape[-2]}x{full.shape[-1]}")
    if full.shape[-1] < stamp:
        raise ModelMismatchError(
            f"stamp sizes differ: model {where} takes {stamp} px stamps, {real['source']} "
            f"holds {full.shape[-1]} px cutouts (smaller; larger ones are cropped)"
        )
    if real["pixel_scale"] is not None and not math.isclose(real["pixel_scale"], card_ps, rel_tol=1e-3):
        raise ModelMismatchError(
            f"pixel scales differ: model {where} was trained at {card_ps} arcsec/px, "
            f"{real['source']} is at {real['pixel_scale']} arcsec/px"
        )
    if len(full) == 0:
        raise LensdaskError(f"{real['source']} holds no cutouts")
    return real


def _usable_cutouts(cutouts, card: dict, galaxies, *, check_split: bool = True) -> _Cutouts:
    """The selected cutouts (``galaxies``) of :func:`_checked_cutouts`, their usable ones cropped.
    ``check_split=False`` lets galaxies the model trained on through: only for work that does not evaluate
    the model (``benchmarks/bench_fit.py --galaxies train`` tunes the lens modelling on them).

    Raises
    ------
    LensdaskError
        None of them is usable.
    SplitError
        Some usable ones are galaxies the model trained on, or the selection is invalid.
    """
    from ..simulate.inputs import border_sigma

    real = _checked_cutouts(cutouts, card)
    rows = select_rows(galaxies, len(real["images"]))
    full = real["images"][rows]
    nonfinite = ~np.isfinite(full.reshape(len(full), -1)).all(axis=1)
    n_bands = len(card["bands"])
    noise = np.full((len(full), n_bands), np.nan)
    for k in np.flatnonzero(~nonfinite):
        noise[k] = [border_sigma(full[k, j]) for j in range(n_bands)]
    no_noise = ~nonfinite & ~(noise > 0).all(axis=1)
    ok = np.flatnonzero(~nonfinite & ~no_noise)
    if ok.size == 0:
        raise LensdaskError(
            f"none of the {len(rows)} selected cutouts of {real['source']} is usable "
            f"({int(nonfinite.sum())} with non-finite pixels, {int(no_noise.sum())} without "
            "measurable background noise)"
        )
    crops = np.ascontiguousarray(_crop(full[ok], int(card["stamp"])), dtype=np.float32)
    if check_split:
        check_disjoint(_card_with_training_galaxies(card), fingerprints(crops), names=rows[ok].tolist())
    return _Cutouts(real["source"], rows, nonfinite, no_noise, ok, crops, noise[ok], real["sigma_v"][rows][ok])


@dataclass(frozen=True)
class _Painted:
    """The usable cutouts in each orientation, and the same with an arc painted on.

    Attributes
    ----------
    oriented : numpy.ndarray
        (n_ok * orientations, bands, stamp, stamp) float32, unpainted.
    cut_of, orient_of : numpy.ndarray
        Of each oriented cutout: its position among the usable cutouts, and its orientation.
    painted : numpy.ndarray
        (n_painted, bands, stamp, stamp) float32, the oriented cutouts an arc could be painted on.
    table : pandas.DataFrame
        Their systems (:func:`~lensdask.simulate.paint.paint_arcs`; ``row``: position in ``oriented``).
    acceptance : float
        Fraction of the drawn systems that passed the constraints.
    """

    oriented: np.ndarray
    cut_of: np.ndarray
    orient_of: np.ndarray
    painted: np.ndarray
    table: pd.DataFrame
    acceptance: float


def _paint(
    cut: _Cutouts, card: dict, orientations: int, seed: int, constraints: Constraints, max_draws, progress: bool
) -> _Painted:
    """Orient every usable cutout and paint an arc on each orientation.

    Usable cutout ``c`` in orientation ``o`` draws its system from ``row_rng(seed, 8 row + o, PAINT_STREAM)``,
    ``row`` its source row.
    """
    from tqdm.auto import tqdm

    from ..simulate.constraints import RejectionStats
    from ..simulate.inputs import Backgrounds
    from ..simulate.paint import paint_arcs
    from ..simulate.render import get_renderer
    from .checkpoint import card_survey

    n_ok = len(cut.ok)
    oriented = np.stack(
        [np.ascontiguousarray(dihedral(cut.crops[c], o)) for c in range(n_ok) for o in range(orientations)]
    ).astype(np.float32)
    cut_of = np.repeat(np.arange(n_ok), orientations)  # position among the usable cutouts
    orient_of = np.tile(np.arange(orientations), n_ok)
    bg = Backgrounds(
        oriented,
        np.repeat(cut.noise, orientations, axis=0),
        np.repeat(cut.sigma_v, orientations),
        cut.source,
        np.repeat(cut.used_rows, orientations),
    )
    renderer = get_renderer(
        list(card["bands"]), float(card["pixel_scale"]), int(card["stamp"]), survey=card_survey(card)
    )
    stats = RejectionStats()
    painted_parts, tables = [], []
    for c in tqdm(range(n_ok), desc="inject", unit="cutout", disable=not progress):
        idx = np.flatnonzero(cut_of == c)
        im, tab = paint_arcs(
            bg,
            idx,
            seed,
            keys=(N_DIHEDRAL * int(cut.used_rows[c]) + orient_of[idx]).tolist(),
            constraints=constraints,
            max_draws=max_draws,
            renderer=renderer,
            stats=stats,
        )
        painted_parts.append(im)
        tables.append(tab)
    ptab = (
        pd.concat([t for t in tables if len(t)], ignore_index=True)
        if any(len(t) for t in tables)
        else pd.DataFrame({"row": pd.Series([], dtype=int)})
    )
    return _Painted(oriented, cut_of, orient_of, np.concatenate(painted_parts), ptab, stats.acceptance_fraction)


def _lens_probability(net, card: dict, images: np.ndarray, batch_size: int, dev) -> np.ndarray:
    """The model's lens probability (n,) of ``images``; empty for no images."""
    from .infer import predict_proba

    if not len(images):
        return np.zeros(0)
    return predict_proba(net, card, images, batch_size=batch_size, device=dev)[:, int(card["lens_class"])].astype(float)


def _completeness_curves(
    cut: _Cutouts, p: _Painted, found: np.ndarray, s: _Settings, constraints: Constraints, card: dict
) -> dict:
    """Completeness of the painted cutouts (``found``: scored at or above the threshold) in bins of
    ``theta_E`` (arcsec), arc S/N and the lens galaxy's magnitude (mag, in the i band, else the reddest)."""
    from ..simulate.paint import aperture_flux
    from .metrics import bin_edges, completeness_by

    bands = list(card["bands"])
    mag_band = "i" if "i" in bands else bands[-1]
    flux = aperture_flux(cut.crops[:, bands.index(mag_band)], s.aperture, float(card["pixel_scale"]))
    with np.errstate(divide="ignore", invalid="ignore"):
        lens_mag = np.where(flux > 0, s.zeropoint - 2.5 * np.log10(np.where(flux > 0, flux, 1.0)), np.nan)
    ptab = p.table
    pos = ptab["row"].to_numpy().astype(int)  # positions in oriented
    curves = {}
    snr_key = f"arc_snr_{constraints.snr_band}"
    for name, values in (
        ("theta_E", ptab["theta_E"].to_numpy() if len(ptab) else np.zeros(0)),
        (snr_key, ptab[snr_key].to_numpy() if len(ptab) else np.zeros(0)),
        (f"lens_mag_{mag_band}", lens_mag[p.cut_of[pos]] if len(pos) else np.zeros(0)),
    ):
        edges = bin_edges(values, s.n_bins)
        curves[name] = completeness_by(values, found, edges) if edges.size else []
    return curves


def _result(
    card: dict,
    model_dir,
    galaxies,
    seed: int,
    cut: _Cutouts,
    p: _Painted,
    s_plain: np.ndarray,
    s_paint: np.ndarray,
    order: np.ndarray,
    s: _Settings,
    constraints: Constraints,
) -> dict:
    """:func:`inject`'s result, before the files: the scores ``s_plain`` of the oriented cutouts and
    ``s_paint`` of the painted ones, and ``order``, the positions of the top unpainted in ``p.oriented``."""
    from .metrics import binary_metrics

    found = s_paint >= s.threshold
    metrics = binary_metrics(np.r_[np.ones(len(s_paint), bool), np.zeros(len(s_plain), bool)], np.r_[s_paint, s_plain])
    k_fp = int((s_plain >= s.threshold).sum())
    k_found = int(found.sum())
    rows = cut.rows
    return {
        "kind": "inject",
        "model_id": card.get("model_id"),
        "model": str(model_dir),
        "cutouts": cut.source,
        "galaxies": galaxies
        if galaxies is None or isinstance(galaxies, str)
        else [int(g) for g in np.atleast_1d(galaxies)],
        "rows": cut.used_rows.tolist(),
        "rows_nonfinite": rows[cut.nonfinite].tolist(),
        "rows_no_noise": rows[cut.no_noise].tolist(),
        "n_cutouts": int(len(cut.ok)),
        "n_nonfinite": int(cut.nonfinite.sum()),
        "n_no_noise": int(cut.no_noise.sum()),
        "orientations": s.orientations,
        "n_unpainted": int(len(s_plain)),
        "n_painted": int(len(s_paint)),
        "n_paint_failed": int(len(s_plain) - len(s_paint)),
        "seed": int(seed),
        "threshold": s.threshold,
        **{k: metrics[k] for k in ("auroc", "tpr0", "tpr10", "tpr_fpr_1e-3", "tpr_fpr_1e-4")},
        "false_positives": k_fp,
        "fpr": k_fp / len(s_plain),
        "fpr_interval": list(clopper_pearson(k_fp, len(s_plain))),
        "completeness": k_found / len(s_paint) if len(s_paint) else math.nan,
        "completeness_interval": list(clopper_pearson(k_found, len(s_paint))),
        "completeness_by": _completeness_curves(cut, p, found, s, constraints, card),
        "top_unpainted": [
            {"row": int(cut.used_rows[p.cut_of[j]]), "orientation": int(p.orient_of[j]), "score": float(s_plain[j])}
            for j in order
        ],
        "paint_acceptance": p.acceptance,
        "constraints": constraints.as_dict(),
        "zeropoint": s.zeropoint,
        "aperture": s.aperture,
        "pixel_scale": float(card["pixel_scale"]),
    }


def _png_paths(png, out) -> dict:
    """The figures' paths, ``completeness`` and ``top_unpainted``: by the ``png`` prefix, else in the folder
    ``out``; {} for neither."""
    if png is not None:
        prefix = os.fspath(png)
        in_dir = prefix.endswith(("/", os.sep)) or os.path.isdir(prefix)
        return {
            k: pathlib.Path(prefix) / f"{k}.png" if in_dir else pathlib.Path(f"{prefix}_{k}.png")
            for k in ("completeness", "top_unpainted")
        }
    if out is not None:
        return {k: pathlib.Path(os.fspath(out)) / f"{k}.png" for k in ("completeness", "top_unpainted")}
    return {}


def _draw_figures(
    result: dict, pngs: dict, p: _Painted, s_plain: np.ndarray, order: np.ndarray, bands: list[str], source: str
) -> None:
    """Draw the completeness curves and the top unpainted cutouts (``order``: their positions in ``p.oriented``,
    ``s_plain`` their scores) to ``pngs`` (:func:`_png_paths`) and name them in ``result``; nothing for no ``pngs``."""
    if not pngs:
        return
    title = f"{result['model_id']} on {pathlib.PurePath(source).name}"
    plot_completeness(result, pngs["completeness"], title=title)
    plot_top(
        p.oriented[order],
        s_plain[order],
        [(r["row"], r["orientation"]) for r in result["top_unpainted"]],
        bands,
        pngs["top_unpainted"],
        title=f"highest-scoring unpainted: {title}",
        threshold=result["threshold"],
    )
    result["completeness_png"] = str(pngs["completeness"])
    result["top_unpainted_png"] = str(pngs["top_unpainted"])


def _write_json(result: dict, json_path, out) -> None:
    """Write ``result`` as JSON to ``json_path`` and ``out/inject.json`` (those given); ``json`` names the first."""
    from .evaluate import _write_result

    for path in (json_path, None if out is None else pathlib.Path(os.fspath(out)) / "inject.json"):
        if path is not None:
            result.setdefault("json", str(pathlib.Path(os.fspath(path))))
            _write_result(result, path)


def plot_completeness(result: dict, path, *, title: str = "") -> None:
    """PNG of the painted cutouts' completeness vs each parameter of ``result["completeness_by"]``."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib import pyplot as plt

    curves = result["completeness_by"]
    units = {"theta_E": "theta_E (arcsec)"}
    fig, axes = plt.subplots(1, max(len(curves), 1), figsize=(4.2 * max(len(curves), 1), 3.6), squeeze=False)
    for ax, (name, bins) in zip(axes[0], curves.items()):
        bins = [b for b in bins if b["n"] > 0]
        if bins:
            x = np.array([(b["lo"] + b["hi"]) / 2 for b in bins])
            y = np.array([b["completeness"] for b in bins])
            ci = np.array([clopper_pearson(b["found"], b["n"]) for b in bins])
            ax.errorbar(x, y, yerr=[y - ci[:, 0], ci[:, 1] - y], fmt="o-", capsize=3)
            for xi, b in zip(x, bins):
                ax.annotate(f"n={b['n']}", (xi, 0.03), ha="center", fontsize=7, color="grey")
        ax.axhline(result["fpr"], color="C3", ls="--", lw=1, label=f"unpainted FPR {result['fpr']:.3f}")
        ax.set_ylim(0, 1.05)
        ax.set_xlabel(
            units.get(
                name,
                name.replace("lens_mag_", "lens magnitude ").replace("arc_snr_", "arc S/N, ")
                + (" (mag)" if name.startswith("lens_mag") else ""),
            )
        )
        ax.set_ylabel(f"completeness at p >= {result['threshold']:g}")
        if name.startswith("arc_snr_"):
            from matplotlib.ticker import NullFormatter, ScalarFormatter

            ax.set_xscale("log")
            ax.xaxis.set_major_formatter(ScalarFormatter())
            ax.xaxis.set_minor_formatter(NullFormatter())
        ax.legend(fontsize=7, loc="center right")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path = pathlib.Path(os.fspath(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_top(images, scores, names, bands, path, *, title: str = "", threshold: float | None = None) -> None:
    """PNG grid of gri colour composites (:func:`~lensdask.images.colour_composite`) with their scores."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib import pyplot as plt

    from ..images import colour_composite

    n = len(images)
    cols = min(max(n, 1), 6)
    nrows = max(1, math.ceil(n / cols))
    fig, axes = plt.subplots(nrows, cols, figsize=(1.9 * cols, 2.2 * nrows + 0.4), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, img, s, (row, o) in zip(axes.ravel(), images, scores, names):
        ax.imshow(colour_composite(img, bands), origin="lower")
        flag = "" if threshold is None or s < threshold else " *"
        ax.set_title(f"row {row} o{o}: {s:.3f}{flag}", fontsize=7)
    fig.suptitle(title, fontsize=8)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.35 / (2.2 * nrows + 0.4)))
    path = pathlib.Path(os.fspath(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
