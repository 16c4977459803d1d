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

import numpy as np
import pandas as pd

from .. import config
from ..store import CutoutStore, create_store, open_store
from ..store import provenance as make_provenance
from .constraints import Constraints, RejectionStats, sample_lens
from .priors import draw_lens_galaxy, draw_lensed_source, lens_galaxy_keys, lensed_source_keys
from .render import get_renderer, renderer_config

CLASSES = ["non-lens", "lens"]
"""Class names of simulated stores; ``label`` indexes this list."""


def param_names(bands: Sequence[str]) -> list[str]:
    """Per-row parameter names of a simulated store with these ``bands``.

    Lens galaxy (:func:`~lensdask.simulate.priors.draw_lens_galaxy`), lensed source
    (:func:`~lensdask.simulate.priors.draw_lensed_source`, NaN for non-lenses), and the
    measured ``magnification``, ``arc_snr_<band>`` (NaN for non-lenses) and
    ``seeing_<band>`` (PSF FWHM, arcsec).
    """
    bands = list(bands)
    return [
        *lens_galaxy_keys(bands),
        *lensed_source_keys(bands),
        "magnification",
        *(f"arc_snr_{b}" for b in bands),
        *(f"seeing_{b}" for b in bands),
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

    Returns
    -------
    images : numpy.ndarray
        (n, n_bands, stamp, stamp) float32, e-/s per pixel, sky subtracted.
    table : pandas.DataFrame
        ``object_id`` (= the global index), ``ra``, ``dec`` (0.0: simulations have no sky
        position), ``label`` (1 lens, 0 non-lens; classes ``["non-lens", "lens"]``) and the
        parameters of :func:`param_names` (NaN where not applicable).
    """
    renderer = get_renderer(bands, pixel_scale, stamp, coadd_years, supersampling)
    bands = renderer.bands
    lens_fraction = float(config.get("simulate.lens_fraction", lens_fraction))
    if not isinstance(constraints, Constraints):
        constraints = Constraints.from_config(constraints)
    if constraints.snr_band not in bands:
        raise ValueError(f"snr_band {constraints.snr_band!r} is not among the bands {bands}")
    max_draws = int(config.get("simulate.max_draws_per_lens", max_draws))
    names = param_names(bands)
    theta_E_range = (constraints.theta_E_min, constraints.theta_E_max)

    def propose(rng):
        lens = draw_lens_galaxy(rng, bands)
        lens.update(draw_lensed_source(rng, bands, lens=lens, theta_E_range=theta_E_range))
        return lens

    indices = [int(i) for i in indices]
    n = len(indices)
    images = np.empty((n, len(bands), renderer.stamp, renderer.stamp), dtype=np.float32)
    values = np.full((n, len(names)), np.nan)
    labels = np.zeros(n, dtype=np.int16)
    col = {name: k for k, name in enumerate(names)}
    with _malloc_keep_small_arrays():
        _fill_rows(indices, seed, stream, lens_fraction, propose, renderer, constraints, max_draws, stats,
                   images, values, labels, col)
    table = pd.DataFrame(values, columns=names)
    table.insert(0, "label", labels)
    table.insert(0, "dec", np.zeros(n))
    table.insert(0, "ra", np.zeros(n))
    table.insert(0, "object_id", np.asarray(indices, dtype=np.int64))
    return images, table


def _fill_rows(indices, seed, stream, lens_fraction, propose, renderer, constraints, max_draws, stats,
               images, values, labels, col):
    for row, i in enumerate(indices):
        rng = row_rng(seed, i, stream)
        if rng.random() < lens_fraction:
            params, cand = sample_lens(rng, propose, renderer.candidate, constraints,
                                       renderer.worst_seeing, max_draws, stats)
            out = cand.finish(rng)
            labels[row] = 1
        else:
            params = draw_lens_galaxy(rng, renderer.bands)
            out = renderer.render(params, rng, lensed=False)
        images[row] = out.image
        for k, v in params.items():
            values[row, col[k]] = v
        for k, v in out.derived.items():
            values[row, col[k]] = v


# -- Dask wiring ---------------------------------------------------------------------------


def _absolute(url: str) -> str:
    return url if "://" in url else os.path.abspath(url)


def current_client(client=None):
    """``client`` if given, else the current distributed client, else None."""
    if client is not None:
        return client
    try:
        from distributed import get_client

        return get_client()
    except (ImportError, ValueError):
        return None


def compute_partitions(bag, client=None, progress: bool = True) -> list:
    """Compute a dask bag on ``client`` (or the current one), else the threaded scheduler."""
    client = current_client(client)
    if client is not None:
        future = client.compute(bag)
        if progress:
            from distributed import progress as show_progress

            show_progress(future)
        return future.result()
    if progress:
        from dask.diagnostics import ProgressBar

        with ProgressBar():
            return bag.compute(scheduler="threads")
    return bag.compute(scheduler="threads")


def _simulate_partition(part, *, url, seed, sim_kwargs):
    out = []
    for tile, start, stop in part:
        stats = RejectionStats()
        images, table = simulate_rows(range(start, stop), seed, stats=stats, **sim_kwargs)
        open_store(url, mode="r+").write_tile(tile, images, table)
        out.append(stats)
    return out


def resolve_sim_kwargs(lens_fraction=None, constraints=None, max_draws=None) -> dict:
    """Resolve every configured value now (worker processes do not see ``dask.config.set``)."""
    bands, pixel_scale, stamp, coadd_years, supersampling = renderer_config()
    if not isinstance(constraints, Constraints):
        constraints = Constraints.from_config(constraints)
    return dict(
        lens_fraction=float(config.get("simulate.lens_fraction", lens_fraction)),
        constraints=constraints,
        max_draws=int(config.get("simulate.max_draws_per_lens", max_draws)),
        bands=list(bands), pixel_scale=pixel_scale, stamp=stamp, coadd_years=coadd_years,
        supersampling=supersampling,
    )


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
    sim_kwargs = resolve_sim_kwargs(lens_fraction, constraints, max_draws)
    prov = make_provenance(
        None, seed=int(seed), n=n, partition_size=size,
        lens_fraction=sim_kwargs["lens_fraction"],
        constraints=sim_kwargs["constraints"].as_dict(),
        max_draws_per_lens=sim_kwargs["max_draws"],
        coadd_years=sim_kwargs["coadd_years"], supersampling=sim_kwargs["supersampling"],
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
