"""Simulated training sets: rows computed by :func:`simulate_rows` (pure), tiles written by Dask.

Every row ``i`` of a run draws from its own generator,
``numpy.random.default_rng(numpy.random.SeedSequence(seed, spawn_key=(i,)))``: whether
it is a lens, its parameters, every rejected redraw and its noise. So a row does not
depend on how the rows were partitioned, or on which worker computed it.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import cast

import dask
import numpy as np
import pandas as pd

from .. import config
from ..errors import LensdaskError
from ..fanout import FAILURE_COLUMNS, run_tiles, write_failures
from ..store import CutoutStore, absolute_url, create_store, open_store, psf_columns
from ..store import provenance as make_provenance
from .conditions import check_source
from .constraints import Constraints, RejectionStats, sample_lens
from .inputs import Backgrounds, InputError, galaxy_rows, load_backgrounds, real_galaxies_record, theta_E_sis
from .lookalikes import KINDS as LOOKALIKE_KINDS
from .lookalikes import render_lookalike
from .priors import draw_lens_galaxy, draw_lensed_source, draw_redshifts, lens_galaxy_keys, lensed_source_keys, mag_i
from .render import Candidate, Renderer, get_renderer, renderer_config
from .scene import SCENE_KEYS, draw_scene

CLASSES = ["non-lens", "lens"]
"""Class names of two-class simulated stores; ``label`` indexes the store's classes."""

SCENE_STREAM = 0x5CE7E
"""Seed stream of the scenes (neighbours and stars): apart from the label, central galaxy and noise."""

LOOKALIKE_ROWS_STREAM = 0x100C
"""Seed stream deciding which non-lens rows of a training store become look-alikes."""


def store_classes(lookalike_fraction: float, lookalikes) -> list[str]:
    """Classes of a simulated store: ``non-lens``, ``lens``, then each look-alike kind when planted."""
    return CLASSES + (list(lookalikes) if lookalike_fraction > 0 else [])


def param_names(bands: Sequence[str]) -> list[str]:
    """Per-row parameter names of a simulated store with these ``bands``.

    Lens galaxy (:func:`~lensdask.simulate.priors.draw_lens_galaxy`; NaN for a real
    cutout), lensed source (:func:`~lensdask.simulate.priors.draw_lensed_source`, NaN for
    non-lenses), the measured ``magnification``, ``arc_snr_<band>``, the observing
    conditions ``seeing_<band>`` (PSF FWHM, arcsec) and ``sky_<band>`` (mag/arcsec^2), the
    arc's ``contrast_<band>`` (arc / lens flux in the arc's pixels), ``n_images`` and
    ``arc_extent`` (deg) in the S/N band, ``background_index`` (row of the real cutout set;
    NaN for a modelled galaxy), ``sigma_v`` (km/s), ``z_lens``, ``z_source`` (NaN when theta_E
    came from its prior), ``psf_x``, ``psf_y`` (CCD position of a PSFEx PSF, px), and what the
    stamp's scene placed (:data:`~lensdask.simulate.scene.SCENE_KEYS`: neighbours, satellites and
    stars on the stamp, the brightest one's i magnitude and distance in arcsec, saturated stars).
    """
    bands = list(bands)
    return [
        *lens_galaxy_keys(bands),
        *lensed_source_keys(bands),
        "magnification",
        *(f"arc_snr_{b}" for b in bands),
        *(f"seeing_{b}" for b in bands),
        *(f"sky_{b}" for b in bands),
        *(f"contrast_{b}" for b in bands),
        "n_images",
        "arc_extent",
        "background_index",
        "sigma_v",
        "z_lens",
        "z_source",
        "psf_x",
        "psf_y",
        *SCENE_KEYS,
    ]


PARAMS = param_names(("g", "r", "i", "z"))
"""Parameter names for the default bands ``g, r, i, z`` (see :func:`param_names`)."""


def row_rng(seed: int, index: int, stream: int | None = None) -> np.random.Generator:
    """The generator of row ``index`` of a run with ``seed``.

    ``stream`` separates independent families of rows made with the same seed (the
    mock survey uses its own, so a survey never repeats a training set's galaxies).
    """
    key = (int(index),) if stream is None else (int(stream), int(index))
    return np.random.default_rng(np.random.SeedSequence(int(seed), spawn_key=key))


def simulate_rows(
    indices: Iterable[int],
    seed: int,
    *,
    lens_fraction: float | None = None,
    constraints: Constraints | dict | None = None,
    max_draws: int | None = None,
    bands: Sequence[str] | None = None,
    pixel_scale: float | None = None,
    stamp: int | None = None,
    coadd_years: int | None = None,
    supersampling: int | None = None,
    stats: RejectionStats | None = None,
    stream: int | None = None,
    sources: str | None = None,
    backgrounds: str | None = None,
    psf: str | None = None,
    conditions: str | None = None,
    negatives: str | None = None,
    real_negative_fraction: float | None = None,
    theta_E_from: str | None = None,
    scene: dict | None = None,
    lookalike_fraction: float | None = None,
    lookalikes: Sequence[str] | None = None,
    background_fraction: float | None = None,
    galaxies: str | Sequence[int] | None = None,
    survey: str | None = None,
) -> tuple[np.ndarray, pd.DataFrame]:
    """Simulate the rows ``indices`` of the run ``seed``. Pure: no Dask.

    Parameters
    ----------
    indices : iterable of int
        Global row indices; row ``i`` draws only from :func:`row_rng` ``(seed, i)``.
    seed : int
        Run seed.
    lens_fraction : float, optional
        Probability that a row is a lens (config ``simulate.lens_fraction``).
    constraints : Constraints or dict, optional
        Quality cuts for lenses; a dict overrides ``simulate.constraints`` keys.
    max_draws : int, optional
        Draws per lens before :class:`~lensdask.errors.ConstraintError`
        (config ``simulate.max_draws_per_lens``).
    bands, pixel_scale, stamp, coadd_years, supersampling : optional
        Renderer configuration (config ``survey.*`` and ``simulate.*``); pixel_scale in
        arcsec/px, stamp in px.
    stats : RejectionStats, optional
        Draw and rejection counts, updated in place.
    stream : int, optional
        Seed stream (see :func:`row_rng`).
    sources : str, optional
        ``"sersic"`` or a GalSim-format COSMOS catalogue (config ``simulate.sources``).
    backgrounds : str, optional
        Real lens-galaxy cutouts to paint arcs on: a folder of ``<band>.fits`` cubes (with
        ``sigma_v.txt``) or a store (config ``simulate.backgrounds``; None: modelled galaxies).
        theta_E then follows from the galaxy's sigma_v (SIS) and drawn redshifts.
    psf : str, optional
        ``"gaussian"`` or a PSFEx file (config ``simulate.psf``).
    conditions : str, optional
        ``"des"``, ``"fixed"`` or a folder of DES condition samples (config ``simulate.conditions``).
    negatives : str, optional
        Real non-lens cutouts (folder or store; config ``simulate.negatives``; default the backgrounds).
    real_negative_fraction : float, optional
        Fraction of non-lens rows taken from the real negatives as they are (config
        ``simulate.real_negative_fraction``; None: 1 when real negatives exist, else 0); the rest
        are modelled galaxies.
    theta_E_from : {"sigma_v", "uniform"}, optional
        Einstein radius of modelled lens galaxies: SIS from a drawn velocity dispersion and
        redshifts, or uniform in the constraints' range (config ``simulate.theta_E_from``).
        Real backgrounds always use their own sigma_v when known.
    scene : dict, optional
        The ``simulate.scene`` configuration: every row's field galaxies, satellites and stars
        (:func:`~lensdask.simulate.scene.draw_scene`), drawn from the seed stream
        :data:`SCENE_STREAM` whatever the row's label; ``enabled: false`` renders isolated galaxies.
    lookalike_fraction : float, optional
        Fraction of the non-lens rows that are false-positive look-alikes, each labelled with its
        own class (config ``simulate.lookalike_fraction``).
    lookalikes : sequence of str, optional
        Look-alike kinds, drawn uniformly (config ``simulate.lookalikes``).
    background_fraction : float, optional
        Fraction of lens rows painted on the real backgrounds when there are any (config
        ``simulate.background_fraction``); the rest have modelled lens galaxies.
    galaxies : str or sequence of int, optional
        Which rows of the real backgrounds and of the real negatives are used (config
        ``simulate.galaxies``; None or ``"all"``: every row): ``"train"``, ``"heldout"``,
        ``"0:20"``, ``"1,4,7"`` (see :func:`~lensdask.simulate.galaxies.select_rows`).
        ``background_index`` then counts rows of the selection.
    survey : str, optional
        Survey profile simulated (:mod:`lensdask.survey.profiles`; None: ``des``): its bands, pixel scale,
        stamp, instrument and conditions unless given (:func:`~lensdask.simulate.render.renderer_config`).

    Returns
    -------
    images : numpy.ndarray
        (n, n_bands, stamp, stamp) float32, sky subtracted: e-/s per pixel, or the real
        cutouts' own units for rows on real backgrounds and real negatives.
    table : pandas.DataFrame
        ``object_id`` (= the global index), ``ra``, ``dec`` (0.0: simulations have no sky
        position), ``label`` (index into :func:`store_classes`: 0 non-lens, 1 lens, 2... the
        look-alike kinds in order) and the
        parameters of :func:`param_names` (NaN where not applicable).
    """
    renderer = get_renderer(
        bands, pixel_scale, stamp, coadd_years, supersampling, sources, backgrounds, psf, conditions, survey
    )
    s = _row_settings(
        renderer,
        negatives=negatives,
        real_negative_fraction=real_negative_fraction,
        galaxies=galaxies,
        lens_fraction=lens_fraction,
        constraints=constraints,
        max_draws=max_draws,
        theta_E_from=theta_E_from,
        scene=scene,
        lookalike_fraction=lookalike_fraction,
        lookalikes=lookalikes,
        background_fraction=background_fraction,
    )
    return _make_rows(indices, _RowMaker(seed, stream, s, stats))


# -- the rows of simulate_rows ---------------------------------------------------------------
@dataclass(frozen=True)
class _RowSettings:
    """What every row of one :func:`simulate_rows` call shares: its inputs and choices, resolved.

    Attributes
    ----------
    renderer : Renderer
        The survey configuration the rows are rendered with (:func:`~lensdask.simulate.render.get_renderer`).
    backgrounds : Backgrounds or None
        The selected real cutouts that lenses are painted on; ``background_index`` counts their rows.
    negatives : Backgrounds or None
        The selected real non-lens cutouts.
    real_negative_fraction : float
        Share of the non-lens rows taken from ``negatives`` as they are, in [0, 1].
    lens_fraction : float
        Probability that a row is a lens.
    constraints : Constraints
        Quality cuts of the lenses.
    max_draws : int
        Draws per lens before :class:`~lensdask.errors.ConstraintError`.
    theta_E_from : {"sigma_v", "uniform"}
        How the Einstein radius (arcsec) of a modelled lens galaxy is drawn.
    scene : dict
        The ``simulate.scene`` configuration (:func:`row_scene`).
    lookalike_fraction : float
        Share of the non-lens rows that are look-alikes, in [0, 1].
    lookalikes : list of str
        The look-alike kinds, drawn uniformly.
    background_fraction : float
        Share of the lens rows painted on ``backgrounds`` when there are any, in [0, 1].
    """

    renderer: Renderer
    backgrounds: Backgrounds | None
    negatives: Backgrounds | None
    real_negative_fraction: float
    lens_fraction: float
    constraints: Constraints
    max_draws: int
    theta_E_from: str
    scene: dict
    lookalike_fraction: float
    lookalikes: list
    background_fraction: float

    @property
    def bands(self) -> list:
        """The renderer's bands, in stored order."""
        return self.renderer.bands

    def propose(self, rng: np.random.Generator) -> dict:
        """One lens system's parameters (``propose`` of :func:`~lensdask.simulate.constraints.sample_lens`).

        On a real background, theta_E (arcsec) is the SIS radius of the galaxy's sigma_v (km/s) and drawn
        redshifts; on a modelled galaxy, as ``theta_E_from`` says.
        """
        r, bg, bands = self.renderer, self.backgrounds, self.bands
        # a draw of rng only when lens galaxies are mixed, so stores without the option keep their rows
        if bg is not None and (self.background_fraction >= 1.0 or rng.random() < self.background_fraction):
            k = int(rng.integers(len(bg)))
            lens = {"lens_x": 0.0, "lens_y": 0.0, "background_index": float(k)}
            lens.update(draw_redshifts(rng, bg.sigma_v[k]))
            theta_E = float(theta_E_sis(lens["sigma_v"], lens["z_lens"], lens["z_source"]))
            src = draw_lensed_source(rng, bands, lens=None, theta_E=theta_E, cosmos=r.cosmos)
        elif self.theta_E_from == "sigma_v":
            lens = draw_lens_galaxy(rng, bands)
            lens.update(draw_redshifts(rng))
            theta_E = float(theta_E_sis(lens["sigma_v"], lens["z_lens"], lens["z_source"]))
            src = draw_lensed_source(rng, bands, lens=lens, theta_E=theta_E, cosmos=r.cosmos)
        else:
            lens = draw_lens_galaxy(rng, bands)
            theta_E_range = (self.constraints.theta_E_min, self.constraints.theta_E_max)
            src = draw_lensed_source(rng, bands, lens=lens, theta_E_range=theta_E_range, cosmos=r.cosmos)
        lens.update(r.draw_conditions(rng))
        lens.update(src)
        return lens

    def measure(self, params: dict) -> Candidate:
        """The rendered candidate of a proposed system (``measure`` of
        :func:`~lensdask.simulate.constraints.sample_lens`)."""
        cand = self.renderer.candidate(params, backgrounds=self.backgrounds)
        cand.shape_band = self.constraints.snr_band  # type: ignore[attr-defined]  # the band Renderer measures
        return cand


def _load_selected(path: str, galaxies, bands: Sequence[str], pixel_scale: float, stamp: int) -> Backgrounds:
    """The rows of the real cutouts at ``path`` that the selection ``galaxies`` keeps (:func:`galaxy_rows`).

    ``pixel_scale`` in arcsec/px, ``stamp`` in px.
    """
    return load_backgrounds(
        path, tuple(bands), pixel_scale, stamp, galaxy_rows(galaxies, path, bands, pixel_scale, stamp)
    )


def _real_negatives(
    renderer: Renderer, negatives, galaxies, real_negative_fraction
) -> tuple[Backgrounds | None, float]:
    """The real non-lens cutouts (config ``simulate.negatives``, default the backgrounds) and the share
    of non-lens rows taken from them (config ``simulate.real_negative_fraction``; None: 1 with them, else 0).

    Raises
    ------
    InputError
        A share above 0 without real negatives.
    """
    path = config.get("simulate.negatives", negatives) or renderer.backgrounds_path
    neg_set = None
    if path is not None:
        path = path if "://" in path else os.path.abspath(path)
        neg_set = _load_selected(path, galaxies, renderer.bands, renderer.pixel_scale, renderer.stamp)
    real_neg = config.get("simulate.real_negative_fraction", real_negative_fraction)
    real_neg = (1.0 if neg_set is not None else 0.0) if real_neg is None else float(real_neg)
    if real_neg > 0 and neg_set is None:
        raise InputError(
            f"real_negative_fraction is {real_neg} but no real negatives were given "
            "(simulate.negatives or simulate.backgrounds)"
        )
    return neg_set, real_neg


def _row_settings(
    renderer: Renderer,
    *,
    negatives,
    real_negative_fraction,
    galaxies,
    lens_fraction,
    constraints,
    max_draws,
    theta_E_from,
    scene,
    lookalike_fraction,
    lookalikes,
    background_fraction,
) -> _RowSettings:
    """Fill :func:`simulate_rows`' arguments left at None from the configuration, read the inputs, and check them.

    ``renderer`` is the one the rows are rendered with (:func:`~lensdask.simulate.render.get_renderer`).

    Raises
    ------
    InputError
        Unreadable inputs, or real negatives asked for but not given.
    ValueError
        An ``snr_band`` outside the bands, an unknown ``theta_E_from`` or look-alike kind, a fraction
        outside [0, 1].
    """
    bands = renderer.bands
    check_source(renderer.conditions, bands)
    galaxies = config.get("simulate.galaxies", galaxies)
    neg_set, real_neg = _real_negatives(renderer, negatives, galaxies, real_negative_fraction)
    lens_fraction = float(config.get("simulate.lens_fraction", lens_fraction))
    constraints = _resolve_constraints(constraints, bands, renderer.survey)
    max_draws = int(config.get("simulate.max_draws_per_lens", max_draws))
    bg, bg_path = renderer.backgrounds, renderer.backgrounds_path  # bg was read from bg_path
    if bg is not None and bg_path is not None and galaxies is not None:  # the selected rows only
        bg = _load_selected(bg_path, galaxies, bands, renderer.pixel_scale, renderer.stamp)
    theta_E_from = config.get("simulate.theta_E_from", theta_E_from)
    if theta_E_from not in ("sigma_v", "uniform"):
        raise ValueError(f"theta_E_from must be 'sigma_v' or 'uniform', got {theta_E_from!r}")
    scene = dict(config.get("simulate.scene", scene))
    lookalike_fraction = float(config.get("simulate.lookalike_fraction", lookalike_fraction))
    lookalikes = list(config.get("simulate.lookalikes", lookalikes))
    check_lookalikes(lookalike_fraction, lookalikes)
    background_fraction = float(config.get("simulate.background_fraction", background_fraction))
    check_background_fraction(background_fraction)
    return _RowSettings(
        renderer=renderer,
        backgrounds=bg,
        negatives=neg_set,
        real_negative_fraction=real_neg,
        lens_fraction=lens_fraction,
        constraints=constraints,
        max_draws=max_draws,
        theta_E_from=theta_E_from,
        scene=scene,
        lookalike_fraction=lookalike_fraction,
        lookalikes=lookalikes,
        background_fraction=background_fraction,
    )


def _make_rows(indices: Iterable[int], maker: _RowMaker) -> tuple[np.ndarray, pd.DataFrame]:
    """The rows ``indices`` made by ``maker``: :func:`simulate_rows`' images and table."""
    bands, stamp = maker.settings.bands, maker.settings.renderer.stamp
    names = param_names(bands)
    indices = [int(i) for i in indices]
    n = len(indices)
    images = np.empty((n, len(bands), stamp, stamp), dtype=np.float32)
    values = np.full((n, len(names)), np.nan)
    labels = np.zeros(n, dtype=np.int16)
    col = {name: k for k, name in enumerate(names)}
    for row, i in enumerate(indices):
        image, params, labels[row] = maker.make(i)
        images[row] = image
        for k, v in params.items():
            values[row, col[k]] = v
    table = pd.DataFrame(values, columns=names)
    table.insert(0, "label", labels)
    table.insert(0, "dec", np.zeros(n))
    table.insert(0, "ra", np.zeros(n))
    table.insert(0, "object_id", np.asarray(indices, dtype=np.int64))
    return images, table


def check_lookalikes(lookalike_fraction: float, lookalikes) -> None:
    """Refuse unknown look-alike kinds, and a fraction outside [0, 1]."""
    unknown = sorted(set(lookalikes) - set(LOOKALIKE_KINDS))
    if unknown:
        raise ValueError(f"unknown look-alikes {unknown}; known: {list(LOOKALIKE_KINDS)}")
    if lookalike_fraction > 0 and not lookalikes:
        raise ValueError("lookalike_fraction is above 0 but no look-alike kinds are given")
    if not 0.0 <= lookalike_fraction <= 1.0:
        raise ValueError(f"lookalike_fraction must be in [0, 1], got {lookalike_fraction}")


def check_background_fraction(background_fraction: float) -> None:
    """Refuse a share of lenses on real backgrounds outside [0, 1]."""
    if not 0.0 <= background_fraction <= 1.0:
        raise ValueError(f"background_fraction must be in [0, 1], got {background_fraction}")


def _resolve_constraints(
    constraints: Constraints | dict | None, bands: Sequence[str], survey: str = "des"
) -> Constraints:
    """``constraints``, or the configured ``simulate.constraints`` with the keys of a dict overriding them.

    A ``survey`` other than ``des`` whose bands lack the configured ``snr_band`` (Euclid VIS has no g) measures
    the S/N in its first band, unless the ``snr_band`` was given.

    Raises
    ------
    ValueError
        Their ``snr_band`` is not among ``bands``.
    """
    if not isinstance(constraints, Constraints):
        given = isinstance(constraints, dict) and constraints.get("snr_band") is not None
        constraints = Constraints.from_config(constraints)
        if survey != "des" and not given and constraints.snr_band not in bands and len(bands):
            import dataclasses

            constraints = dataclasses.replace(constraints, snr_band=str(bands[0]))
    if constraints.snr_band not in bands:
        raise ValueError(f"snr_band {constraints.snr_band!r} is not among the bands {list(bands)}")
    return constraints


def row_scene(
    seed: int,
    index: int,
    stream: int | None,
    renderer,
    cfg: dict,
    central_mag_i: float | None = None,
    real: bool = False,
):
    """The scene of row ``index`` of a run (None when scenes are off, or for a real cutout with ``on_real`` off).

    Drawn from its own seed stream (:data:`SCENE_STREAM`), so a row's neighbours and stars do not
    depend on its label. ``central_mag_i`` (mag) of a modelled central galaxy gives it satellites;
    a real cutout (``real``) gets field galaxies and stars only.
    """
    if not cfg.get("enabled", True) or (real and not cfg.get("on_real", False)):
        return None
    srng = row_rng(seed, index, SCENE_STREAM ^ (stream or 0))
    mag = None if real or central_mag_i is None or not np.isfinite(central_mag_i) else float(central_mag_i)
    return draw_scene(srng, renderer.bands, renderer.stamp, renderer.pixel_scale, cfg, central_mag_i=mag)


@dataclass(frozen=True)
class _RowMaker:
    """Makes row ``i`` of a run: a lens, a look-alike, a real negative or a modelled non-lens, in its scene.

    Attributes
    ----------
    seed : int
        Run seed.
    stream : int or None
        Seed stream (:func:`row_rng`).
    settings : _RowSettings
        What every row shares.
    stats : RejectionStats or None
        Lens draws and rejections, updated in place.
    """

    seed: int
    stream: int | None
    settings: _RowSettings
    stats: RejectionStats | None

    def scene(self, i, central_mag_i=None, real=False):
        """:func:`row_scene` of row ``i`` (``central_mag_i`` in mag)."""
        s = self.settings
        return row_scene(self.seed, i, self.stream, s.renderer, s.scene, central_mag_i, real)

    def make(self, i: int) -> tuple[np.ndarray, dict, int]:
        """Row ``i``: its image (bands, stamp, stamp), parameters and label (index into :func:`store_classes`)."""
        s = self.settings
        rng = row_rng(self.seed, i, self.stream)
        if rng.random() < s.lens_fraction:
            return self._lens(i, rng)
        if s.lookalike_fraction > 0:
            lrng = row_rng(self.seed, i, LOOKALIKE_ROWS_STREAM ^ (self.stream or 0))
            if lrng.random() < s.lookalike_fraction:
                return self._lookalike(i, lrng)
        if s.real_negative_fraction > 0 and rng.random() < s.real_negative_fraction:
            return self._real_negative(i, rng)
        return self._modelled_non_lens(i, rng)

    def _lens(self, i: int, rng: np.random.Generator) -> tuple[np.ndarray, dict, int]:
        """A lens that passes the constraints, drawn with ``rng`` (label 1)."""
        s = self.settings
        params, cand = sample_lens(
            rng, s.propose, s.measure, s.constraints, s.renderer.worst_seeing, s.max_draws, self.stats
        )
        cand.scene = self.scene(i, mag_i(params), real=cand.bg)
        out = cand.finish(rng)
        return out.image, {**params, **out.derived}, 1

    def _lookalike(self, i: int, lrng: np.random.Generator) -> tuple[np.ndarray, dict, int]:
        """A look-alike of a kind drawn with ``lrng``, labelled with its kind's class."""
        s = self.settings
        kind = s.lookalikes[int(lrng.integers(len(s.lookalikes)))]
        image, params = render_lookalike(s.renderer, lrng, kind, scene_for=lambda g: self.scene(i, mag_i(g)))
        return (
            image,
            {k: v for k, v in params.items() if not k.startswith("fp_") and not k.startswith("mag_fp_")},
            store_classes(s.lookalike_fraction, s.lookalikes).index(kind),
        )

    def _real_negative(self, i: int, rng: np.random.Generator) -> tuple[np.ndarray, dict, int]:
        """A real non-lens cutout drawn with ``rng``, as it is or in its scene (label 0)."""
        r, neg_set = self.settings.renderer, self.settings.negatives
        assert neg_set is not None  # a real_negative_fraction above 0 has them (_real_negatives)
        k = int(rng.integers(len(neg_set)))
        params = {"background_index": float(k), "sigma_v": float(neg_set.sigma_v[k])}
        scene = self.scene(i, real=True)
        if scene is None:
            return neg_set.images[k], params, 0
        params.update(r.draw_conditions(rng))
        out = r.render(params, rng, lensed=False, backgrounds=neg_set, scene=scene)
        return out.image, {**params, **out.derived}, 0

    def _modelled_non_lens(self, i: int, rng: np.random.Generator) -> tuple[np.ndarray, dict, int]:
        """A modelled galaxy without a lensed source, drawn with ``rng`` (label 0)."""
        r = self.settings.renderer
        params = draw_lens_galaxy(rng, r.bands)
        params.update(r.draw_conditions(rng))
        out = r.render(params, rng, lensed=False, scene=self.scene(i, mag_i(params)))
        return out.image, {**params, **out.derived}, 0


# -- Dask wiring ---------------------------------------------------------------------------


def compute_partitions(bag, client=None, progress: bool = True) -> list:
    """Compute a dask bag, one task per partition, and return its items in order.

    Runs on ``client`` (or the current distributed client) with a progress bar over
    partitions (tiles), else on the local threaded scheduler. Either way the workers (or
    this process) get the lensdask worker setup (:mod:`lensdask.workersetup`).
    """
    from tqdm.auto import tqdm

    from ..cluster import current_client
    from ..workersetup import current_setup, register

    client = client if client is not None else current_client()
    parts = bag.to_delayed()
    if client is not None:
        from distributed import as_completed

        register(client)
        futures = client.compute(parts)
        with tqdm(total=len(futures), desc="tiles", unit="tile", disable=not progress) as bar:
            for _ in as_completed(futures, loop=client.loop):
                bar.update()
        return [item for part in client.gather(futures) for item in part]
    current_setup()
    if progress:
        from dask.diagnostics import ProgressBar

        with ProgressBar():
            results = dask.compute(*parts, scheduler="threads")
    else:
        results = dask.compute(*parts, scheduler="threads")
    return [item for part in results for item in part]


def simulate_tile(url: str, tile: int, start: int, stop: int, seed: int, sim_kwargs: dict) -> RejectionStats:
    """Simulate rows ``start`` to ``stop`` (excluded) of the run ``seed`` and write them as tile ``tile``.

    One tile task of :func:`simulate`; ``sim_kwargs`` is :func:`resolve_sim_kwargs`'s.

    Returns
    -------
    RejectionStats
        The tile's lens draws and rejections.
    """
    stats = RejectionStats()
    images, table = simulate_rows(range(start, stop), seed, stats=stats, **sim_kwargs)
    store = open_store(url, mode="r+")
    store.write_psf_origin(tile, psf_origins(sim_kwargs))
    store.write_tile(tile, images, with_psf(table, sim_kwargs["bands"]))
    return stats


def with_psf(table: pd.DataFrame, bands: Sequence[str]) -> pd.DataFrame:
    """``table`` with each band's PSF FWHM (``psf_fwhm_<band>``, arcsec) copied from the seeing the
    rows drew (``seeing_<band>``): what a store records as the rows' PSF (NaN where none was drawn,
    e.g. a real cutout used as it is)."""
    out = table.copy()
    for b, c in zip(bands, psf_columns(bands)):
        out[c] = table[f"seeing_{b}"].to_numpy(dtype=np.float32) if f"seeing_{b}" in table.columns else np.nan
    return out


def psf_origins(sim_kwargs: dict) -> list[str]:
    """The ``psf_origin`` of a simulated tile, per band: ``simulated`` (a Gaussian of the drawn seeing), or
    ``simulated psfex:<file name>`` (a PSFEx model's kernel, whose FWHM the rows record)."""
    psf = sim_kwargs.get("psf") or "gaussian"
    origin = "simulated" if psf == "gaussian" else f"simulated psfex:{os.path.basename(str(psf))}"
    return [origin] * len(sim_kwargs["bands"])


class SimulationFailedError(LensdaskError):
    """Raised by :func:`simulate` after the other tiles finished, when some tiles failed.

    Attributes
    ----------
    url : str
        The store; its failed tiles are unwritten (``count`` -1).
    failures : pandas.DataFrame
        ``tile, error, traceback`` of every failed tile (also ``<store>.failures.parquet``
        beside a local store).
    """

    def __init__(self, url: str, failures: pd.DataFrame, n_tiles: int):
        self.url = url
        self.failures = failures
        super().__init__(
            f"{len(failures)} of {n_tiles} tiles failed: "
            + "; ".join(f"{r.tile}: {r.error}" for r in failures.itertuples())
        )


def resolve_sim_kwargs(
    lens_fraction=None,
    constraints=None,
    max_draws=None,
    *,
    sources=None,
    backgrounds=None,
    psf=None,
    conditions=None,
    negatives=None,
    real_negative_fraction=None,
    lookalike_fraction=None,
    lookalikes=None,
    background_fraction=None,
    scene=None,
    galaxies=None,
    survey=None,
) -> dict:
    """Resolve every configured value now (worker processes do not see ``dask.config.set``).

    Paths become absolute, and the inputs they name are read once here, so a missing or
    mismatched file fails before any task is submitted. ``galaxies`` (config
    ``simulate.galaxies``) becomes ``"all"`` or the explicit list of selected rows. ``survey`` (None:
    ``des``) is the survey profile simulated (:func:`~lensdask.simulate.render.renderer_config`); an
    unknown one raises :class:`~lensdask.survey.profiles.UnknownSurveyError`.
    """
    (bands, pixel_scale, stamp, coadd_years, supersampling, sources, backgrounds, psf, conditions, survey) = (
        renderer_config(None, None, None, None, None, sources, backgrounds, psf, conditions, survey)
    )
    constraints = _resolve_constraints(constraints, bands, survey)
    negatives = config.get("simulate.negatives", negatives) or None
    if negatives is not None and "://" not in str(negatives):
        negatives = os.path.abspath(os.fspath(negatives))
    kw = dict(
        lens_fraction=float(config.get("simulate.lens_fraction", lens_fraction)),
        constraints=constraints,
        max_draws=int(config.get("simulate.max_draws_per_lens", max_draws)),
        bands=list(bands),
        pixel_scale=pixel_scale,
        stamp=stamp,
        coadd_years=coadd_years,
        supersampling=supersampling,
        sources=sources,
        backgrounds=backgrounds,
        psf=psf,
        conditions=conditions,
        theta_E_from=config.get("simulate.theta_E_from"),
        negatives=negatives,
        real_negative_fraction=config.get("simulate.real_negative_fraction", real_negative_fraction),
        scene=dict(config.get("simulate.scene", scene)),
        lookalike_fraction=float(config.get("simulate.lookalike_fraction", lookalike_fraction)),
        lookalikes=list(config.get("simulate.lookalikes", lookalikes)),
        background_fraction=float(config.get("simulate.background_fraction", background_fraction)),
        survey=survey,
    )
    check_lookalikes(kw["lookalike_fraction"], kw["lookalikes"])
    check_background_fraction(kw["background_fraction"])
    check_source(conditions, bands)
    get_renderer(
        *renderer_config(
            bands, pixel_scale, stamp, coadd_years, supersampling, sources, backgrounds, psf, conditions, survey
        )
    )  # reads and checks the inputs now
    if negatives is not None:
        load_backgrounds(negatives, tuple(bands), pixel_scale, stamp)
    kw["galaxies"] = _resolve_galaxies(config.get("simulate.galaxies", galaxies), kw)
    return kw


def _resolve_galaxies(galaxies, kw) -> str | list[int]:
    # a galaxy selection made explicit here, so that workers never read the split from their own config
    if galaxies is None or (isinstance(galaxies, str) and galaxies.strip().lower() == "all"):
        return "all"
    sources = [p for p in (kw["backgrounds"], kw["negatives"]) if p is not None]
    if not sources:
        raise InputError(
            f"galaxies {galaxies!r} selects real cutouts, but the simulation has none "
            "(give simulate.backgrounds or simulate.negatives)"
        )
    args = (tuple(kw["bands"]), kw["pixel_scale"], kw["stamp"])
    selected = galaxy_rows(galaxies, sources[0], *args)
    assert selected is not None  # None means all rows, and galaxies is not None or "all" here
    rows = list(selected)
    for p in sources[1:]:
        galaxy_rows(rows, p, *args)  # the same rows must exist in the negatives
    return rows


def real_galaxies(sim_kwargs: dict) -> dict | None:
    """The provenance ``real_galaxies`` of a resolved simulation (see
    :func:`~lensdask.simulate.inputs.real_galaxies_record`): source, rows and fingerprints of
    every real background and negative it may use; None when it uses none."""
    args = (tuple(sim_kwargs["bands"]), sim_kwargs["pixel_scale"], sim_kwargs["stamp"])
    sel = sim_kwargs.get("galaxies", "all")
    bg, neg = (
        None if p is None else _load_selected(p, sel, *args)
        for p in (sim_kwargs["backgrounds"], sim_kwargs["negatives"] or sim_kwargs["backgrounds"])
    )
    return real_galaxies_record(bg, neg)


def simulate(
    out: str | os.PathLike,
    n: int,
    seed: int = 0,
    *,
    lens_fraction: float | None = None,
    partition_size: int | None = None,
    client=None,
    overwrite: bool = False,
    progress: bool = True,
    constraints: dict | None = None,
    max_draws: int | None = None,
    return_stats: bool = False,
    sources: str | None = None,
    backgrounds: str | None = None,
    psf: str | None = None,
    conditions: str | None = None,
    negatives: str | None = None,
    real_negative_fraction: float | None = None,
    lookalike_fraction: float | None = None,
    lookalikes: Sequence[str] | None = None,
    background_fraction: float | None = None,
    galaxies: str | Sequence[int] | None = None,
    survey: str | None = None,
) -> CutoutStore | tuple[CutoutStore, RejectionStats]:
    """Simulate a training store of ``n`` rows, one task per tile (:func:`lensdask.fanout.run_tiles`).

    Parameters
    ----------
    out : str or path
        Store path or URL to create.
    n : int
        Number of rows.
    seed : int
        Run seed; row ``i`` depends only on ``(seed, i)``.
    lens_fraction : float, optional
        Probability that a row is a lens (config ``simulate.lens_fraction``).
    partition_size : int, optional
        Rows per tile ``sim-NNNNNN`` (config ``simulate.partition_size``).
    client : distributed.Client, optional
        Where to compute; default the current client, else this process, one tile after another.
    overwrite : bool
        Replace an existing store.
    progress : bool
        Show a progress bar.
    constraints : dict, optional
        Overrides of ``simulate.constraints``.
    max_draws : int, optional
        Overrides ``simulate.max_draws_per_lens``.
    return_stats : bool
        Also return the :class:`~lensdask.simulate.constraints.RejectionStats` of the run.
    sources, backgrounds, psf, conditions, negatives, real_negative_fraction : optional
        Inputs of the simulation (see :func:`simulate_rows`; config ``simulate.*``). Files are
        checked before any task starts.
    lookalike_fraction, lookalikes, background_fraction : optional
        False-positive look-alike classes and the share of lenses painted on real backgrounds
        (see :func:`simulate_rows`; config ``simulate.*``). The store's classes are
        :func:`store_classes`. Every row is drawn in a scene (config ``simulate.scene``).
    galaxies : str or sequence of int, optional
        Rows of the real backgrounds and negatives to use (config ``simulate.galaxies``; e.g.
        ``"train"``, see :func:`simulate_rows`). The store's provenance ``real_galaxies`` records
        the source, rows and fingerprints of the real cutouts the run may use (null: none).
    survey : str, optional
        The survey profile simulated (:mod:`lensdask.survey.profiles`; None: ``des``, exactly as before
        profiles): its bands, pixel scale, stamp, instrument and conditions. The store records it
        (attribute ``survey``).

    Returns
    -------
    CutoutStore
        The written store, opened for reading (and the stats if ``return_stats``).

    Raises
    ------
    SimulationFailedError
        Some tiles failed (their task raised, or their worker died); raised after every
        other tile was written, with the failures table. On ``KeyboardInterrupt`` the
        pending tiles are cancelled and the interrupt is re-raised.
    """
    n = int(n)
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    url = absolute_url(out)
    size = int(config.get("simulate.partition_size", partition_size))
    n_tiles = math.ceil(n / size)
    sim_kwargs = resolve_sim_kwargs(
        lens_fraction,
        constraints,
        max_draws,
        sources=sources,
        backgrounds=backgrounds,
        psf=psf,
        conditions=conditions,
        negatives=negatives,
        real_negative_fraction=real_negative_fraction,
        lookalike_fraction=lookalike_fraction,
        lookalikes=lookalikes,
        background_fraction=background_fraction,
        galaxies=galaxies,
        survey=survey,
    )
    prov = make_provenance(
        None,
        seed=int(seed),
        n=n,
        partition_size=size,
        lens_fraction=sim_kwargs["lens_fraction"],
        constraints=sim_kwargs["constraints"].as_dict(),
        max_draws_per_lens=sim_kwargs["max_draws"],
        coadd_years=sim_kwargs["coadd_years"],
        supersampling=sim_kwargs["supersampling"],
        **{
            k: sim_kwargs[k]
            for k in (
                "sources",
                "backgrounds",
                "psf",
                "conditions",
                "negatives",
                "real_negative_fraction",
                "lookalike_fraction",
                "lookalikes",
                "background_fraction",
                "scene",
                "galaxies",
            )
        },
        real_galaxies=real_galaxies(sim_kwargs),
    )
    tiles = [f"sim-{t:06d}" for t in range(n_tiles)]
    create_store(
        url,
        tiles=tiles,
        capacity=min(size, n),
        bands=sim_kwargs["bands"],
        pixel_scale=sim_kwargs["pixel_scale"],
        stamp=sim_kwargs["stamp"],
        classes=store_classes(sim_kwargs["lookalike_fraction"], sim_kwargs["lookalikes"]),
        params=param_names(sim_kwargs["bands"]),
        provenance=prov,
        overwrite=overwrite,
        survey=sim_kwargs["survey"],
    )
    from ..cluster import current_client

    jobs: list[tuple[str, Callable, tuple, dict]] = [
        (name, simulate_tile, (url, t, t * size, min(n, (t + 1) * size), int(seed), sim_kwargs), {})
        for t, name in enumerate(tiles)
    ]
    client = client if client is not None else current_client()
    results, failed = run_tiles(jobs, client=client, progress=progress, desc="tiles", key_prefix="simulate-tile")
    failures = pd.DataFrame(failed, columns=FAILURE_COLUMNS)
    if len(failures):
        import zarr

        count = open_store(url, mode="r+").group["count"]
        assert isinstance(count, zarr.Array)  # create_store made it
        for name in failures["tile"]:  # a failed tile is unwritten, even if a dying worker got to commit it
            count[tiles.index(name)] = -1
    write_failures(url, failures)
    if len(failures):
        raise SimulationFailedError(url, failures, n_tiles)
    store = open_store(url)
    if return_stats:
        total = RejectionStats()
        for name in tiles:  # in tile order, whatever order the tasks finished in
            total = total + cast(RejectionStats, results[name])
        return store, total
    return store
