"""Paint simulated arcs on real cutouts, as they are, for injection-recovery tests. Pure: no Dask.

A real cutout (a survey galaxy, in any rotation or flip) becomes a lens system by the same
sampler and renderer as the training sets (:mod:`lensdask.simulate.run`): its velocity
dispersion (or one from the prior) and drawn redshifts give an SIS Einstein radius, a source
is drawn behind it, observing conditions are drawn, the system must pass the constraints
(config ``simulate.constraints``), and the arc is added to the cutout's own pixels with its
Poisson noise, in the cutout's units (``scale`` = the cutout's background sigma over the
simulated background rms, see :mod:`lensdask.simulate.render`). Nothing else of the cutout
changes: painted minus unpainted is the arc and its noise.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from ..errors import ConstraintError
from .constraints import Constraints, RejectionStats, sample_lens
from .inputs import Backgrounds, theta_E_sis
from .priors import draw_lensed_source, draw_redshifts
from .run import row_rng

__all__ = ["PAINT_STREAM", "paint_arcs", "aperture_flux"]

PAINT_STREAM = 0x9A1E7
"""Seed stream of painted arcs: apart from every training set and mock survey made with the same seed."""


def paint_arcs(
    bg: Backgrounds,
    indices: Sequence[int] | np.ndarray,
    seed: int,
    *,
    keys: Sequence[int] | None = None,
    constraints: Constraints | dict | None = None,
    max_draws: int | None = None,
    renderer=None,
    stats: RejectionStats | None = None,
) -> tuple[np.ndarray, pd.DataFrame]:
    """Paint one simulated arc on each of the real cutouts ``bg.images[indices]``.

    Parameters
    ----------
    bg : Backgrounds
        The real cutouts exactly as they will be scored, (n, n_bands, stamp, stamp) in their own
        flux units, with ``noise`` (n, n_bands) their background sigma (same units) and
        ``sigma_v`` (n,) km/s (NaN: drawn from the prior).
    indices : sequence of int
        Positions in ``bg`` to paint.
    seed : int
        Run seed. Row ``indices[j]`` draws only from
        :func:`~lensdask.simulate.run.row_rng` ``(seed, keys[j], PAINT_STREAM)``: its lens
        system, every rejected redraw and the arc's noise.
    keys : sequence of int, optional
        The seed key of each row (default ``indices``); inject uses ``8 * galaxy row + orientation``,
        so a galaxy in a given orientation gets the same arc whatever else is painted.
    constraints : Constraints or dict, optional
        Quality cuts the painted systems must pass; a dict overrides ``simulate.constraints``.
    max_draws : int, optional
        Draws per system before it is given up (config ``simulate.max_draws_per_lens``).
    renderer : lensdask.simulate.render.Renderer, optional
        Default :func:`~lensdask.simulate.render.get_renderer` for the configured bands, pixel scale
        and stamp; its bands and stamp must match ``bg``.
    stats : RejectionStats, optional
        Draws and rejections, updated in place.

    Returns
    -------
    images : numpy.ndarray
        (m, n_bands, stamp, stamp) float32 painted cutouts, in ``bg``'s units, for the m rows whose
        system passed the constraints within ``max_draws`` (a row that never did is left out).
    table : pandas.DataFrame
        One row per painted cutout: ``row`` (its position in ``bg``), ``key``, and the system's
        parameters: ``theta_E`` (arcsec), ``sigma_v`` (km/s), ``z_lens``, ``z_source``, source and
        mass parameters, ``seeing_<band>`` (arcsec), ``sky_<band>`` (mag/arcsec^2),
        ``magnification``, ``arc_snr_<band>``, ``contrast_<band>``, ``n_images``, ``arc_extent`` (deg).
    """
    from .. import config
    from .render import get_renderer

    if renderer is None:
        renderer = get_renderer(stamp=bg.images.shape[-1])
    bands = renderer.bands
    if bg.images.ndim != 4 or bg.images.shape[1:] != (len(bands), renderer.stamp, renderer.stamp):
        raise ValueError(
            f"cutouts of shape {bg.images.shape[1:]} do not fit the renderer "
            f"({len(bands)} bands {bands}, {renderer.stamp} px)"
        )
    if not isinstance(constraints, Constraints):
        constraints = Constraints.from_config(constraints)
    if constraints.snr_band not in bands:
        raise ValueError(f"snr_band {constraints.snr_band!r} is not among the bands {bands}")
    max_draws = int(config.get("simulate.max_draws_per_lens", max_draws))
    indices = [int(i) for i in indices]
    keys = indices if keys is None else [int(k) for k in keys]
    if len(keys) != len(indices):
        raise ValueError(f"{len(keys)} seed keys for {len(indices)} rows")

    images, rows = [], []
    for i, key in zip(indices, keys):

        def propose(rng, k=i):
            # as run.simulate_rows' lenses on real backgrounds, with the galaxy fixed
            lens = {"lens_x": 0.0, "lens_y": 0.0, "background_index": float(k)}
            lens.update(draw_redshifts(rng, bg.sigma_v[k]))
            theta_E = float(theta_E_sis(lens["sigma_v"], lens["z_lens"], lens["z_source"]))
            lens.update(draw_lensed_source(rng, bands, lens=None, theta_E=theta_E, cosmos=renderer.cosmos))
            lens.update(renderer.draw_conditions(rng))
            return lens

        def measure(params):
            cand = renderer.candidate(params, backgrounds=bg)
            cand.shape_band = constraints.snr_band
            return cand

        rng = row_rng(seed, key, PAINT_STREAM)
        try:
            params, cand = sample_lens(rng, propose, measure, constraints, renderer.worst_seeing, max_draws, stats)
        except ConstraintError:
            continue
        out = cand.finish(rng)
        images.append(out.image)
        rows.append({"row": i, "key": key, **params, **out.derived})
    shape = (0, len(bands), renderer.stamp, renderer.stamp)
    return (np.stack(images).astype(np.float32) if images else np.zeros(shape, np.float32)), pd.DataFrame(rows)


def aperture_flux(images: np.ndarray, radius: float, pixel_scale: float) -> np.ndarray:
    """Flux of each stamp's central object within ``radius`` of the stamp centre.

    Parameters
    ----------
    images : numpy.ndarray
        (n, s, s) single-band stamps, sky subtracted (no local sky is removed here).
    radius : float, arcsec
        Aperture radius; pixels whose centres lie within it count whole.
    pixel_scale : float, arcsec/px

    Returns
    -------
    numpy.ndarray
        (n,) summed pixel values, in the stamps' units.
    """
    images = np.asarray(images, dtype=np.float64)
    s = images.shape[-1]
    c = (s - 1) / 2
    yy, xx = np.mgrid[:s, :s]
    inside = np.hypot(yy - c, xx - c) * float(pixel_scale) <= float(radius)
    return images[:, inside].sum(axis=1)
