"""A mock DES survey: tiles of galaxies with a few injected lenses, and a truth table kept apart.

The store looks like an ingested survey: DES tile names (a mock of another survey: ``MOCK-<SURVEY>-0001``
..., :func:`mock_tile_names`), sky positions, large
``object_id`` integers and ``label = -1`` (unknown) everywhere; it carries no
simulation parameters, so a search run on it never sees the truth. The truth
(which objects are lenses, with their parameters) goes to a separate parquet file.

Rows are simulated by :func:`lensdask.simulate.simulate_rows` on a seed stream of
their own, so a mock survey never repeats the galaxies of a training set made with
the same seed. Lenses go through the same rejection sampler as training lenses.
"""

from __future__ import annotations

import os

import numpy as np
import pandas as pd

from .. import config
from ..simulate.lookalikes import render_lookalike
from ..simulate.priors import mag_i
from ..simulate.render import get_renderer, renderer_config
from ..simulate.run import (
    CLASSES,
    check_lookalikes,
    compute_partitions,
    psf_origins,
    resolve_sim_kwargs,
    row_rng,
    row_scene,
    simulate_rows,
    with_psf,
)
from ..store import CutoutStore, absolute_url, create_store, open_store, psf_columns
from ..store import provenance as make_provenance

TILE_SIZE = 0.7306
"""Side of a DES coadd tile, degrees."""

SURVEY_STREAM = 0x5EED
"""Seed stream of mock-survey rows (training rows use none)."""

LOOKALIKE_STREAM = SURVEY_STREAM + 3
"""Seed stream deciding which mock-survey rows become look-alikes, and drawing them."""

OBJECT_ID_BASE = 1_000_000_000
"""Object ids are ``OBJECT_ID_BASE + tile_index * 1_000_000 + row`` (DES COADD_OBJECT_ID-like)."""


def tile_name(ra: float, dec: float) -> str:
    """DES-style tile name of a tile centre, e.g. ``DES0213-3040``.

    Parameters
    ----------
    ra, dec : float, degrees
        Tile centre.

    Returns
    -------
    str
        ``DES`` + RA as ``hhmm`` + Dec sign + Dec as ``ddmm`` (truncated, like DES names).
    """
    minutes_ra = int(np.floor((ra % 360.0) / 15.0 * 60.0 + 1e-9))
    hh, mm = divmod(minutes_ra, 60)
    sign = "-" if dec < 0 else "+"
    arcmin = int(np.floor(abs(dec) * 60.0 + 1e-9))
    dd, dm = divmod(arcmin, 60)
    return f"DES{hh:02d}{mm:02d}{sign}{dd:02d}{dm:02d}"


def mock_tile_names(survey: str, names) -> list[str]:
    """The tile names of a mock survey of ``survey``, from the DES-style names of its tile centres.

    ``des`` keeps the DES-style names (:func:`tile_name`). Another survey's tiles are named
    ``MOCK-<SURVEY>-0001``, ``MOCK-<SURVEY>-0002`` ... in tile order (e.g. ``MOCK-LSST-0001``,
    ``MOCK-LEGACY-DR10-0001``): the survey's own names (tract and patch, brick, MER tile index) would
    claim real tiles, and DES's another survey's.

    Parameters
    ----------
    survey : str
        The survey profile simulated.
    names : sequence of str
        The DES-style names of the tile centres (:func:`draw_tiles`), in tile order.

    Returns
    -------
    list of str
        One name per tile, valid tile names (:func:`lensdask.names.check_name`).
    """
    names = [str(n) for n in names]
    if survey == "des":
        return names
    width = max(4, len(str(len(names))))
    return [f"MOCK-{survey.upper()}-{k:0{width}d}" for k in range(1, len(names) + 1)]


def draw_tiles(rng: np.random.Generator, n: int, ra_range, dec_range) -> pd.DataFrame:
    """Draw ``n`` tile centres, uniform on the sphere inside an RA/Dec box (degrees).

    Names are unique; a centre whose name repeats an earlier one is redrawn.

    Returns
    -------
    pandas.DataFrame
        ``tile`` (name), ``ra``, ``dec`` (centre, degrees).
    """
    names: list[str] = []
    ras: list[float] = []
    decs: list[float] = []
    s0, s1 = np.sin(np.deg2rad(dec_range[0])), np.sin(np.deg2rad(dec_range[1]))
    while len(names) < n:
        ra = float(rng.uniform(*ra_range))
        dec = float(np.rad2deg(np.arcsin(rng.uniform(s0, s1))))
        name = tile_name(ra, dec)
        if name in names:
            continue
        names.append(name)
        ras.append(ra)
        decs.append(dec)
    return pd.DataFrame({"tile": names, "ra": ras, "dec": decs})


def object_positions(rng: np.random.Generator, n: int, ra0: float, dec0: float) -> tuple[np.ndarray, np.ndarray]:
    """``n`` random positions inside the tile centred at (ra0, dec0), degrees.

    The tile spans ``TILE_SIZE`` in Dec and ``TILE_SIZE / cos(dec)`` in RA.
    """
    h = TILE_SIZE / 2
    dec = dec0 + rng.uniform(-h, h, n)
    ra = (ra0 + rng.uniform(-h, h, n) / np.cos(np.deg2rad(dec))) % 360.0
    return ra, dec


def plant_lookalikes(images, table, indices, seed, fraction, kinds, sim_kwargs) -> np.ndarray:
    """Replace some non-lens rows by look-alikes, in place; returns each row's truth class.

    Row ``i`` becomes a look-alike with probability ``fraction`` (of all rows), drawn from
    its own seed stream, so planting never changes which rows are lenses. A look-alike keeps the
    row's scene (neighbours and stars), as every other row has. A planted row's ``seeing_<band>``
    in ``table`` become the look-alike's own (the seeing its pixels were rendered with).
    """
    truth = np.where(table["label"].to_numpy() == 1, "lens", "non-lens").astype(object)
    if fraction <= 0:
        return truth
    lens_fraction = float(sim_kwargs["lens_fraction"])
    p = min(1.0, fraction / max(1.0 - lens_fraction, 1e-9))
    renderer = get_renderer(
        *renderer_config(
            sim_kwargs["bands"],
            sim_kwargs["pixel_scale"],
            sim_kwargs["stamp"],
            sim_kwargs["coadd_years"],
            sim_kwargs["supersampling"],
            sim_kwargs["sources"],
            sim_kwargs["backgrounds"],
            sim_kwargs["psf"],
            sim_kwargs["conditions"],
            sim_kwargs["survey"],
        )
    )
    for row, i in enumerate(indices):
        if truth[row] == "lens":
            continue
        rng = row_rng(seed, i, LOOKALIKE_STREAM)
        if rng.random() < p:
            kind = kinds[int(rng.integers(len(kinds)))]
            images[row], drawn = render_lookalike(
                renderer,
                rng,
                kind,
                scene_for=lambda g, i=i: row_scene(seed, i, SURVEY_STREAM, renderer, sim_kwargs["scene"], mag_i(g)),
            )
            truth[row] = kind
            for b in sim_kwargs["bands"]:
                table.loc[table.index[row], f"seeing_{b}"] = drawn[f"seeing_{b}"]
    return truth


def _mock_partition(part, *, url, seed, per_tile, sim_kwargs, lookalike_fraction=0.0, lookalikes=()):
    truths = []
    for t, name, ra0, dec0 in part:
        indices = range(t * per_tile, (t + 1) * per_tile)
        images, table = simulate_rows(indices, seed, stream=SURVEY_STREAM, **sim_kwargs)
        truth_class = plant_lookalikes(images, table, indices, seed, lookalike_fraction, lookalikes, sim_kwargs)
        ra, dec = object_positions(row_rng(seed, t, SURVEY_STREAM + 1), per_tile, ra0, dec0)
        object_id = OBJECT_ID_BASE + t * 1_000_000 + np.arange(per_tile, dtype=np.int64)
        rows = pd.DataFrame(
            {"object_id": object_id, "ra": ra, "dec": dec, "label": np.full(per_tile, -1, dtype=np.int16)}
        )
        # the seeing each row was rendered with is its PSF, in the store; the rest of the truth stays apart
        psf = with_psf(table, sim_kwargs["bands"])
        for c in psf_columns(sim_kwargs["bands"]):
            rows[c] = psf[c].to_numpy()
        store = open_store(url, mode="r+")
        store.write_psf_origin(t, psf_origins(sim_kwargs))
        store.write_tile(t, images, rows)
        truth = table.drop(columns=["object_id", "ra", "dec", "label"])
        # a look-alike replaced the row's galaxy: its simulation parameters no longer apply
        truth.loc[~np.isin(truth_class, ["lens", "non-lens"])] = np.nan
        truth.insert(0, "truth_class", truth_class)
        truth.insert(0, "is_lens", table["label"].to_numpy() == 1)
        truth.insert(0, "dec", dec)
        truth.insert(0, "ra", ra)
        truth.insert(0, "object_id", object_id)
        truth.insert(0, "row", np.arange(per_tile))
        truth.insert(0, "tile", name)
        truths.append(truth)
    return truths


def default_truth_path(out: str) -> str:
    """``<out without .zarr>.truth.parquet``: ``des.zarr`` -> ``des.truth.parquet``."""
    base = os.fspath(out).rstrip("/")
    if base.endswith(".zarr"):
        base = base[: -len(".zarr")]
    return base + ".truth.parquet"


def mock_survey(
    out: str | os.PathLike,
    tiles: int | None = None,
    per_tile: int | None = None,
    lens_fraction: float | None = None,
    seed: int = 0,
    *,
    truth: str | os.PathLike | None = None,
    lookalike_fraction: float | None = None,
    lookalikes=None,
    survey: str | None = None,
    client=None,
    overwrite: bool = False,
    progress: bool = True,
) -> tuple[CutoutStore, str]:
    """Make a DES-like survey store (or one of another survey) with injected lenses, and its truth table.

    Parameters
    ----------
    out : str or path
        Store path or URL to create.
    tiles : int, optional
        Number of tiles (config ``mock_survey.tiles``); centres uniform in
        ``mock_survey.ra_range`` x ``mock_survey.dec_range`` (degrees).
    per_tile : int, optional
        Objects per tile (config ``mock_survey.per_tile``).
    lens_fraction : float, optional
        Probability that an object is a lens (config ``mock_survey.lens_fraction``).
    seed : int
        Survey seed; object ``k`` depends only on ``(seed, k)``.
    truth : str or path, optional
        Truth parquet path; default :func:`default_truth_path` of ``out``.
    lookalike_fraction : float, optional
        Fraction of objects planted as false-positive look-alikes
        (config ``mock_survey.lookalike_fraction``); see :mod:`lensdask.simulate.lookalikes`.
    lookalikes : sequence of str, optional
        Look-alike kinds to plant, drawn uniformly (config ``mock_survey.lookalikes``).
    survey : str, optional
        The survey profile simulated (:mod:`lensdask.survey.profiles`; None: ``des``, exactly as before
        profiles): its bands, pixel scale, stamp, instrument and conditions; recorded in the store. Tiles
        of ``des`` are named as DES names them, another survey's ``MOCK-<SURVEY>-0001`` ...
        (:func:`mock_tile_names`).
    client : distributed.Client, optional
        Where to compute; default the current client, else the local threaded scheduler.
    overwrite : bool
        Replace an existing store (and truth file).
    progress : bool
        Show a progress bar.

    Returns
    -------
    (CutoutStore, str)
        The survey store, opened for reading, and the truth parquet path. The truth has
        ``tile``, ``row``, ``object_id``, ``ra``, ``dec`` (degrees), ``is_lens``, ``truth_class``
        (``lens``, ``non-lens`` or a look-alike kind) and the
        simulation parameters (``theta_E`` arcsec, ``magnification``, ``arc_snr_<band>``,
        ...; NaN for non-lenses).
    """
    import dask.bag as db

    n_tiles = int(config.get("mock_survey.tiles", tiles))
    per_tile = int(config.get("mock_survey.per_tile", per_tile))
    lens_fraction = float(config.get("mock_survey.lens_fraction", lens_fraction))
    lookalike_fraction = float(config.get("mock_survey.lookalike_fraction", lookalike_fraction))
    lookalikes = list(config.get("mock_survey.lookalikes", lookalikes))
    check_lookalikes(lookalike_fraction, lookalikes)
    if not 0 <= lens_fraction + lookalike_fraction <= 1:
        raise ValueError(
            f"lens_fraction + lookalike_fraction must be in [0, 1], got {lens_fraction + lookalike_fraction}"
        )
    if n_tiles < 1 or per_tile < 1:
        raise ValueError(f"tiles and per_tile must be at least 1, got {n_tiles} and {per_tile}")
    ra_range = config.get("mock_survey.ra_range")
    dec_range = config.get("mock_survey.dec_range")
    url = absolute_url(out)
    truth_path = os.fspath(truth) if truth is not None else default_truth_path(url)
    if os.path.exists(truth_path) and not overwrite:
        raise FileExistsError(f"{truth_path} exists; pass overwrite=True (CLI: --overwrite) to replace it")
    # the survey plants its own look-alikes (truth classes, not labels): none from the training-set option
    sim_kwargs = resolve_sim_kwargs(lens_fraction=lens_fraction, lookalike_fraction=0.0, survey=survey)

    centres = draw_tiles(row_rng(seed, 0, SURVEY_STREAM + 2), n_tiles, ra_range, dec_range)
    centres["tile"] = mock_tile_names(sim_kwargs["survey"], centres["tile"])  # the same centres, named
    prov = make_provenance(
        None,
        seed=int(seed),
        tiles=n_tiles,
        per_tile=per_tile,
        lens_fraction=lens_fraction,
        lookalike_fraction=lookalike_fraction,
        lookalikes=lookalikes,
        truth=os.path.abspath(truth_path) if "://" not in truth_path else truth_path,
        coadd_years=sim_kwargs["coadd_years"],  # the depth simulated (des): lensdask fit's exposure time
    )
    create_store(
        url,
        tiles=list(centres["tile"]),
        capacity=per_tile,
        bands=sim_kwargs["bands"],
        pixel_scale=sim_kwargs["pixel_scale"],
        stamp=sim_kwargs["stamp"],
        classes=CLASSES,
        params=(),
        provenance=prov,
        overwrite=overwrite,
        survey=sim_kwargs["survey"],
    )
    parts = [(t, r.tile, float(r.ra), float(r.dec)) for t, r in enumerate(centres.itertuples())]
    bag = db.from_sequence(parts, npartitions=n_tiles).map_partitions(
        _mock_partition,
        url=url,
        seed=int(seed),
        per_tile=per_tile,
        sim_kwargs=sim_kwargs,
        lookalike_fraction=lookalike_fraction,
        lookalikes=lookalikes,
    )
    truths = compute_partitions(bag, client, progress)
    table = pd.concat(truths, ignore_index=True)
    d = os.path.dirname(os.path.abspath(truth_path)) if "://" not in truth_path else None
    if d:
        os.makedirs(d, exist_ok=True)
    table.to_parquet(truth_path, index=False)
    return open_store(url), truth_path
