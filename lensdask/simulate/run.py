"""Simulated training sets: rows computed by :func:`simulate_rows` (pure), tiles written by Dask.

Every row ``i`` of a run draws from its own generator,
``numpy.random.default_rng(numpy.random.SeedSequence(seed, spawn_key=(i,)))``: whether
it is a lens, its parameters, every rejected redraw and its noise. So a row does not
depend on how the rows were partitioned, or on which worker computed it.
"""

from __future__ import annotations

import contextlib
import math
import os
import threading
from typing import Iterable, Sequence

import dask
import numpy as np
import pandas as pd

from .. import config
from ..store import CutoutStore, create_store, open_store
from ..store import provenance as make_provenance
from .constraints import Constraints, RejectionStats, sample_lens
from .conditions import check_source
from .inputs import InputError, load_backgrounds, theta_E_sis
from .priors import draw_lens_galaxy, draw_lensed_source, draw_redshifts, lens_galaxy_keys, lensed_source_keys
from .render import get_renderer, renderer_config

CLASSES = ["non-lens", "lens"]
"""Class names of simulated stores; ``label`` indexes this list."""


def param_names(bands: Sequence[str]) -> list[str]:
    """Per-row parameter names of a simulated store with these ``bands``.

    Lens galaxy (:func:`~lensdask.simulate.priors.draw_lens_galaxy`; NaN for a real
    cutout), lensed source (:func:`~lensdask.simulate.priors.draw_lensed_source`, NaN for
    non-lenses), the measured ``magnification``, ``arc_snr_<band>``, the observing
    conditions ``seeing_<band>`` (PSF FWHM, arcsec) and ``sky_<band>`` (mag/arcsec^2), the
    arc's ``contrast_<band>`` (arc / lens flux in the arc's pixels), ``n_images`` and
    ``arc_extent`` (deg) in the S/N band, ``background_index`` (row of the real cutout set;
    NaN for a modelled galaxy), ``sigma_v`` (km/s), ``z_lens``, ``z_source`` (NaN when theta_E
    came from its prior), and ``psf_x``, ``psf_y`` (CCD position of a PSFEx PSF, px).
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
        "n_images", "arc_extent", "background_index", "sigma_v", "z_lens", "z_source", "psf_x", "psf_y",
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


_MALLOC_LOCK = threading.Lock()
_MALLOC_USERS = 0


@contextlib.contextmanager
def _malloc_keep_small_arrays():
    """Let glibc reuse freed ~150 kB arrays while simulating, inside Dask worker processes.

    Dask's nanny starts workers with ``MALLOC_TRIM_THRESHOLD_=65536``; that also freezes
    glibc's mmap threshold at 128 kB, so every float64 array of the supersampled grid
    (135 x 135 px = 146 kB) is mmap'd and unmapped anew: rendering ran 2-4x slower in a
    worker than in a plain process. Raise both thresholds while rows are simulated, then
    restore the environment's values and trim. A no-op where the variables are unset or
    where there is no glibc.
    """
    global _MALLOC_USERS
    trim = os.environ.get("MALLOC_TRIM_THRESHOLD_")
    libc = None
    if trim is not None:
        try:
            import ctypes

            libc = ctypes.CDLL("libc.so.6")
            libc.mallopt
        except (OSError, AttributeError):
            libc = None
    if libc is None:
        yield
        return
    with _MALLOC_LOCK:
        if _MALLOC_USERS == 0:
            libc.mallopt(-1, 256 * 2**20)  # M_TRIM_THRESHOLD
            libc.mallopt(-3, 32 * 2**20)  # M_MMAP_THRESHOLD
        _MALLOC_USERS += 1
    try:
        yield
    finally:
        with _MALLOC_LOCK:
            _MALLOC_USERS -= 1
            if _MALLOC_USERS == 0:
                libc.mallopt(-1, int(trim))
                libc.mallopt(-3, int(os.environ.get("MALLOC_MMAP_THRESHOLD_", 128 * 1024)))
                libc.malloc_trim(0)


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

    Returns
    -------
    images : numpy.ndarray
        (n, n_bands, stamp, stamp) float32, sky subtracted: e-/s per pixel, or the real
        cutouts' own units for rows on real backgrounds and real negatives.
    table : pandas.DataFrame
        ``object_id`` (= the global index), ``ra``, ``dec`` (0.0: simulations have no sky
        position), ``label`` (1 lens, 0 non-lens; classes ``["non-lens", "lens"]``) and the
        parameters of :func:`param_names` (NaN where not applicable).
    """
    renderer = get_renderer(bands, pixel_scale, stamp, coadd_years, supersampling, sources, backgrounds, psf,
                            conditions)
    bands = renderer.bands
    check_source(renderer.conditions, bands)
    negs = config.get("simulate.negatives", negatives) or renderer.backgrounds_path
    neg_set = None
    if negs is not None:
        neg_set = load_backgrounds(negs if "://" in negs else os.path.abspath(negs), tuple(bands),
                                   renderer.pixel_scale, renderer.stamp)
    real_neg = config.get("simulate.real_negative_fraction", real_negative_fraction)
    real_neg = (1.0 if neg_set is not None else 0.0) if real_neg is None else float(real_neg)
    if real_neg > 0 and neg_set is None:
        raise InputError(f"real_negative_fraction is {real_neg} but no real negatives were given "
                         "(simulate.negatives or simulate.backgrounds)")
    lens_fraction = float(config.get("simulate.lens_fraction", lens_fraction))
    if not isinstance(constraints, Constraints):
        constraints = Constraints.from_config(constraints)
    if constraints.snr_band not in bands:
        raise ValueError(f"snr_band {constraints.snr_band!r} is not among the bands {bands}")
    max_draws = int(config.get("simulate.max_draws_per_lens", max_draws))
    names = param_names(bands)
    theta_E_range = (constraints.theta_E_min, constraints.theta_E_max)

    bg = renderer.backgrounds
    theta_E_from = config.get("simulate.theta_E_from", theta_E_from)
    if theta_E_from not in ("sigma_v", "uniform"):
        raise ValueError(f"theta_E_from must be 'sigma_v' or 'uniform', got {theta_E_from!r}")

    def propose(rng):
        if bg is not None:
            k = int(rng.integers(len(bg)))
            lens = {"lens_x": 0.0, "lens_y": 0.0, "background_index": float(k)}
            lens.update(draw_redshifts(rng, bg.sigma_v[k]))
            theta_E = float(theta_E_sis(lens["sigma_v"], lens["z_lens"], lens["z_source"]))
            src = draw_lensed_source(rng, bands, lens=None, theta_E=theta_E, cosmos=renderer.cosmos)
        elif theta_E_from == "sigma_v":
            lens = draw_lens_galaxy(rng, bands)
            lens.update(draw_redshifts(rng))
            theta_E = float(theta_E_sis(lens["sigma_v"], lens["z_lens"], lens["z_source"]))
            src = draw_lensed_source(rng, bands, lens=lens, theta_E=theta_E, cosmos=renderer.cosmos)
        else:
            lens = draw_lens_galaxy(rng, bands)
            src = draw_lensed_source(rng, bands, lens=lens, theta_E_range=theta_E_range, cosmos=renderer.cosmos)
        lens.update(renderer.draw_conditions(rng))
        lens.update(src)
        return lens

    def measure(params):
        cand = renderer.candidate(params)
        cand.shape_band = constraints.snr_band
        return cand

    indices = [int(i) for i in indices]
    n = len(indices)
    images = np.empty((n, len(bands), renderer.stamp, renderer.stamp), dtype=np.float32)
    values = np.full((n, len(names)), np.nan)
    labels = np.zeros(n, dtype=np.int16)
    col = {name: k for k, name in enumerate(names)}
    with _malloc_keep_small_arrays():
        _fill_rows(indices, seed, stream, lens_fraction, propose, measure, renderer, constraints, max_draws,
                   stats, images, values, labels, col, neg_set, real_neg)
    table = pd.DataFrame(values, columns=names)
    table.insert(0, "label", labels)
    table.insert(0, "dec", np.zeros(n))
    table.insert(0, "ra", np.zeros(n))
    table.insert(0, "object_id", np.asarray(indices, dtype=np.int64))
    return images, table


def _fill_rows(indices, seed, stream, lens_fraction, propose, measure, renderer, constraints, max_draws, stats,
               images, values, labels, col, neg_set, real_neg):
    for row, i in enumerate(indices):
        rng = row_rng(seed, i, stream)
        if rng.random() < lens_fraction:
            params, cand = sample_lens(rng, propose, measure, constraints,
                                       renderer.worst_seeing, max_draws, stats)
            out = cand.finish(rng)
            labels[row] = 1
        elif real_neg > 0 and rng.random() < real_neg:
            k = int(rng.integers(len(neg_set)))
            images[row] = neg_set.images[k]
            values[row, col["background_index"]] = k
            values[row, col["sigma_v"]] = neg_set.sigma_v[k]
            continue
        else:
            params = draw_lens_galaxy(rng, renderer.bands)
            params.update(renderer.draw_conditions(rng))
            out = renderer.render(params, rng, lensed=False)
        images[row] = out.image
        for k, v in params.items():
            values[row, col[k]] = v
        for k, v in out.derived.items():
            values[row, col[k]] = v


# -- Dask wiring ---------------------------------------------------------------------------


def _absolute(url: str) -> str:
    return url if "://" in url else os.path.abspath(url)


def compute_partitions(bag, client=None, progress: bool = True) -> list:
    """Compute a dask bag, one task per partition, and return its items in order.

    Runs on ``client`` (or the current distributed client) with a progress bar over
    partitions (tiles), else on the local threaded scheduler.
    """
    from tqdm.auto import tqdm

    from ..cluster import current_client

    client = client if client is not None else current_client()
    parts = bag.to_delayed()
    if client is not None:
        from distributed import as_completed

        futures = client.compute(parts)
        with tqdm(total=len(futures), desc="tiles", unit="tile", disable=not progress) as bar:
            for _ in as_completed(futures, loop=client.loop):
                bar.update()
        results = client.gather(futures)
    elif progress:
        from dask.diagnostics import ProgressBar

        with ProgressBar():
            results = dask.compute(*parts, scheduler="threads")
    else:
        results = dask.compute(*parts, scheduler="threads")
    return [item for part in results for item in part]


def _simulate_partition(part, *, url, seed, sim_kwargs):
    out = []
    for tile, start, stop in part:
        stats = RejectionStats()
        images, table = simulate_rows(range(start, stop), seed, stats=stats, **sim_kwargs)
        open_store(url, mode="r+").write_tile(tile, images, table)
        out.append(stats)
    return out


def resolve_sim_kwargs(lens_fraction=None, constraints=None, max_draws=None, *, sources=None, backgrounds=None,
                       psf=None, conditions=None, negatives=None, real_negative_fraction=None) -> dict:
    """Resolve every configured value now (worker processes do not see ``dask.config.set``).

    Paths become absolute, and the inputs they name are read once here, so a missing or
    mismatched file fails before any task is submitted.
    """
    (bands, pixel_scale, stamp, coadd_years, supersampling, sources, backgrounds, psf,
     conditions) = renderer_config(None, None, None, None, None, sources, backgrounds, psf, conditions)
    if not isinstance(constraints, Constraints):
        constraints = Constraints.from_config(constraints)
    if constraints.snr_band not in bands:
        raise ValueError(f"snr_band {constraints.snr_band!r} is not among the bands {list(bands)}")
    negatives = config.get("simulate.negatives", negatives) or None
    if negatives is not None and "://" not in str(negatives):
        negatives = os.path.abspath(os.fspath(negatives))
    kw = dict(
        lens_fraction=float(config.get("simulate.lens_fraction", lens_fraction)),
        constraints=constraints,
        max_draws=int(config.get("simulate.max_draws_per_lens", max_draws)),
        bands=list(bands), pixel_scale=pixel_scale, stamp=stamp, coadd_years=coadd_years,
        supersampling=supersampling, sources=sources, backgrounds=backgrounds, psf=psf, conditions=conditions,
        theta_E_from=config.get("simulate.theta_E_from"),
        negatives=negatives, real_negative_fraction=config.get("simulate.real_negative_fraction",
                                                               real_negative_fraction),
    )
    check_source(conditions, bands)
    get_renderer(*renderer_config(bands, pixel_scale, stamp, coadd_years, supersampling, sources, backgrounds,
                                  psf, conditions))  # reads and checks the inputs now
    if negatives is not None:
        load_backgrounds(negatives, tuple(bands), pixel_scale, stamp)
    return kw


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
) -> CutoutStore | tuple[CutoutStore, RejectionStats]:
    """Simulate a training store of ``n`` rows, one tile per Dask bag partition.

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
        Rows per partition, and per tile ``sim-NNNNNN`` (config ``simulate.partition_size``).
    client : distributed.Client, optional
        Where to compute; default the current client, else the local threaded scheduler.
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

    Returns
    -------
    CutoutStore
        The written store, opened for reading (and the stats if ``return_stats``).
    """
    import dask.bag as db

    n = int(n)
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    url = _absolute(os.fspath(out))
    size = int(config.get("simulate.partition_size", partition_size))
    n_tiles = math.ceil(n / size)
    sim_kwargs = resolve_sim_kwargs(lens_fraction, constraints, max_draws, sources=sources,
                                    backgrounds=backgrounds, psf=psf, conditions=conditions, negatives=negatives,
                                    real_negative_fraction=real_negative_fraction)
    prov = make_provenance(
        None, seed=int(seed), n=n, partition_size=size,
        lens_fraction=sim_kwargs["lens_fraction"],
        constraints=sim_kwargs["constraints"].as_dict(),
        max_draws_per_lens=sim_kwargs["max_draws"],
        coadd_years=sim_kwargs["coadd_years"], supersampling=sim_kwargs["supersampling"],
        **{k: sim_kwargs[k] for k in ("sources", "backgrounds", "psf", "conditions", "negatives",
                                      "real_negative_fraction")},
    )
    create_store(
        url, tiles=[f"sim-{t:06d}" for t in range(n_tiles)], capacity=min(size, n),
        bands=sim_kwargs["bands"], pixel_scale=sim_kwargs["pixel_scale"], stamp=sim_kwargs["stamp"],
        classes=CLASSES, params=param_names(sim_kwargs["bands"]), provenance=prov, overwrite=overwrite,
    )
    parts = [(t, t * size, min(n, (t + 1) * size)) for t in range(n_tiles)]
    bag = db.from_sequence(parts, npartitions=n_tiles).map_partitions(
        _simulate_partition, url=url, seed=int(seed), sim_kwargs=sim_kwargs
    )
    results = compute_partitions(bag, client, progress)
    store = open_store(url)
    if return_stats:
        total = RejectionStats()
        for s in results:
            total = total + s
        return store, total
    return store
