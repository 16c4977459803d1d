"""Shared fixtures and helpers: one LocalCluster, paths to ../shared/data, tiny stores, quantised-store stamps."""

from __future__ import annotations

import json
import os
import pathlib

import numpy as np
import pandas as pd
import pytest

from lensdask.model.checkpoint import untrained_checkpoint

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = pathlib.Path(os.environ.get("LENSDASK_SHARED_DATA", REPO.parent / "shared" / "data"))


def pytest_collection_modifyitems(config, items):
    """Tests marked ``gpu`` skip, saying why, where PyTorch sees no CUDA GPU."""
    gpu_tests = [item for item in items if item.get_closest_marker("gpu")]
    if not gpu_tests:
        return
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (torch.cuda.is_available() is False)")
    for item in gpu_tests:
        item.add_marker(skip)


@pytest.fixture(scope="session")
def shared_data() -> pathlib.Path:
    """The real DES and telescope data beside the project (``../shared/data``)."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real test data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def client():
    """One LocalCluster (2 worker processes, 1 thread each) shared by every test."""
    from distributed import Client, LocalCluster

    with (
        LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address="127.0.0.1:0", memory_limit="4GiB"
        ) as cluster,
        Client(cluster) as c,
    ):
        yield c


@pytest.fixture
def one_torch_thread():
    """Torch on one thread for the test (tiny networks; both cores stay free for the Dask workers)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def random_model(tmp_path_factory):
    """A randomly initialised ``test-vit`` checkpoint for 4-band 45 px stamps."""
    path = tmp_path_factory.mktemp("model") / "test-vit"
    untrained_checkpoint(path, "test-vit")
    return path


@pytest.fixture(scope="session")
def galaxy_run(tmp_path_factory, random_model):
    """A factory of tiny survey stores of noisy, red-ish galaxies, each with a finished search run.

    ``galaxy_run(name, per_tile, seed, first_id)`` writes ``des.zarr`` (two tiles of
    ``per_tile`` rows, object ids from ``first_id``) and ``run/`` (every row a candidate,
    scored by :func:`random_model`) under a new folder and returns that folder.
    """

    from lensdask.search import search
    from lensdask.store import create_store

    def make(name: str, per_tile: int, seed: int, first_id: int) -> pathlib.Path:
        tmp = tmp_path_factory.mktemp(name)
        rng = np.random.default_rng(seed)
        s = create_store(
            tmp / "des.zarr", tiles=GALAXY_TILES, capacity=per_tile + 4, bands="griz", pixel_scale=0.263, stamp=45
        )
        y, x = np.mgrid[:45, :45] - 22
        for t in range(len(GALAXY_TILES)):
            flux = rng.uniform(1, 5, size=(per_tile, 4, 1, 1)) * np.array([0.3, 0.6, 1.0, 1.2])[None, :, None, None]
            img = rng.normal(0, 0.05, (per_tile, 4, 45, 45)) + flux * np.exp(-(x**2 + y**2) / 18.0)
            s.write_tile(
                t,
                img.astype("float32"),
                pd.DataFrame(
                    {
                        "object_id": first_id + 100 * t + np.arange(per_tile),
                        "ra": 52.5 + rng.uniform(0, 0.7, per_tile),
                        "dec": -30.6 + rng.uniform(0, 0.7, per_tile),
                        "label": -np.ones(per_tile, int),
                    }
                ),
            )
        search(tmp / "des.zarr", random_model, tmp / "run", threshold=0.0, floor=0.0, progress=False)
        return tmp

    return make


GALAXY_TILES = ["DES0330-3040", "DES0333-3040"]
"""The tiles of :func:`galaxy_run` stores."""


def make_tiny_store(
    path,
    *,
    tiles=None,
    rows=30,
    capacity=None,
    bands="griz",
    stamp=45,
    pixel_scale=0.263,
    seed=0,
    noise=0.05,
    flux=(0.5, 3.0),
    width=20.0,
    labels=None,
    first_id=0,
    chunk_rows=None,
    quantise_step=None,
    **create,
):
    """A tiny cutout store at ``path``: sky noise plus one galaxy-like blob per stamp.

    Creates the store and writes ``rows`` rows into each of its tiles; every call with the
    same arguments writes the same pixels. Tests take it as the :func:`tiny_store` fixture.

    Parameters
    ----------
    path : str or path
        Where the store goes: a local path or an fsspec URL (``memory://`` ...).
    tiles : int or sequence of str, optional
        The tile names, or how many tiles to make (one per count of ``rows`` if that is a
        sequence, else 2). Made tiles step 0.75 degrees in ra from ``DES0040-3000`` (ra 10,
        dec -30), named as DES names them; each tile's rows lie within 0.35 degrees of its centre.
    rows : int or sequence of int, default 30
        Rows written into each tile, or one count per tile; ``0`` leaves the store empty.
    capacity : int, optional
        Rows a tile may hold; the most rows of any tile if omitted (at least 1).
    bands : str or sequence of str, default "griz"
        Filter names.
    stamp : int, default 45
        Stamp side in pixels.
    pixel_scale : float, default 0.263
        Arcsec per pixel (DES).
    seed : int, default 0
        Seeds the one random generator that draws every tile's pixels, then its ra and dec.
    noise : float, default 0.05
        Sky noise sigma.
    flux : (float, float), default (0.5, 3.0)
        The galaxy's peak flux is drawn uniformly from this range for each stamp and band.
    width : float, default 20.0
        The galaxy's profile is ``exp(-r**2 / width)``, ``r`` in pixels from the stamp's centre.
    labels : int or sequence of int, optional
        Each row's label: one for every row, or one per row of a tile (the same for every
        tile); ``-1`` (not labelled, as in survey stores) if omitted.
    first_id : int, default 0
        Tile ``t`` holds object ids ``first_id + stride * t + row``, ``stride`` the least
        multiple of 1000 above the largest tile's rows.
    chunk_rows : int, optional
        Rows per chunk (config ``store.chunk_rows`` if omitted).
    quantise_step : float, optional
        The quantisation step, ``0`` for exact float32 (config ``store.quantise.step`` if omitted).
    **create
        Further keywords of :func:`lensdask.store.create_store` (``params``, ``classes``, ``overwrite`` ...).

    Returns
    -------
    CutoutStore
        The store, open for writing.

    Notes
    -----
    For each tile in turn the generator draws the noise ``normal(0, noise, (rows, bands,
    stamp, stamp))``, then the peak fluxes ``uniform(*flux, (rows, bands, 1, 1))``, then
    ``rows`` ra and ``rows`` dec, so a test can redraw the pixels it expects.
    """

    from lensdask.store import create_store

    if tiles is None:
        tiles = 2 if isinstance(rows, int) else len(rows)
    # tile t is centred on ra 10 + 0.75 t, dec -30, and named as DES names it (DEShhmm-ddmm)
    names = (
        [f"DES{(40 + 3 * t) // 60:02d}{(40 + 3 * t) % 60:02d}-3000" for t in range(tiles)]
        if isinstance(tiles, int)
        else list(tiles)
    )
    counts = [rows] * len(names) if isinstance(rows, int) else list(rows)
    if len(counts) != len(names):
        raise ValueError(f"{len(counts)} row counts for {len(names)} tiles")
    most = max(counts, default=0)
    s = create_store(
        path,
        tiles=names,
        capacity=capacity or max(most, 1),
        bands=bands,
        pixel_scale=pixel_scale,
        stamp=stamp,
        chunk_rows=chunk_rows,
        quantise_step=quantise_step,
        **create,
    )
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:stamp, :stamp] - stamp // 2
    blob = np.exp(-(x**2 + y**2) / width)
    stride = 1000 * (most // 1000 + 1)
    label = -1 if labels is None else labels
    for t, k in enumerate(counts):
        if k == 0:
            continue
        nb = len(s.bands)
        img = rng.normal(0, noise, (k, nb, stamp, stamp)) + blob * rng.uniform(*flux, (k, nb, 1, 1))
        s.write_tile(
            t,
            img.astype("float32"),
            pd.DataFrame(
                {
                    "object_id": first_id + stride * t + np.arange(k),
                    "ra": 10 + 0.75 * t + rng.uniform(-0.35, 0.35, k),
                    "dec": -30 + rng.uniform(-0.35, 0.35, k),
                    "label": np.array(np.broadcast_to(label, k), int),
                }
            ),
        )
    return s


@pytest.fixture(scope="session")
def tiny_store():
    """The factory :func:`make_tiny_store` of tiny cutout stores (sky noise and a galaxy-like blob per stamp)."""
    return make_tiny_store


def load_benchmark(name: str):
    """The module of ``benchmarks/<name>.py`` (benchmarks are scripts, not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# Quantised stores: noise-dominated stamps and the tables, empty stores and damaged shards the tests write.

SKY_SIGMA = 2.5
"""Sky noise sigma of :func:`sky_stamps` (counts)."""


def sky_stamps(n, seed=0, stamp=45, sky=7.0):
    """Noise-dominated stamps: sky + Gaussian noise (sigma SKY_SIGMA) + a faint galaxy."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:stamp, :stamp] - stamp // 2
    blob = np.exp(-(x**2 + y**2) / 8.0)
    img = sky + rng.normal(0, SKY_SIGMA, (n, 4, stamp, stamp)) + blob * rng.uniform(0, 40, (n, 4, 1, 1))
    return img.astype("float32")


def table_rows(n, start=0):
    """The table of ``n`` rows (object ids from ``start``) for stamps written to a store."""
    return pd.DataFrame({"object_id": np.arange(start, start + n), "ra": 10.0, "dec": -30.0})


EMPTY_STORE = {"rows": 0, "capacity": 64, "chunk_rows": 32}
"""Keywords of :func:`make_tiny_store` for an empty store (two tiles unless told): the test writes the pixels."""


def write_v1_store(path, x):
    """A store as lensdask wrote it before schema /2: float32 pixels and no 'encoding'."""
    s = make_tiny_store(path, **EMPTY_STORE, quantise_step=0)
    s.write_tile(0, x, table_rows(len(x)))
    meta = path / "zarr.json"
    doc = json.loads(meta.read_text())
    doc["attributes"]["schema"] = "lensdask.cutouts/1"
    del doc["attributes"]["encoding"]
    meta.write_text(json.dumps(doc))


def corrupt_first_chunk(store_path, tile):
    """Flip bytes inside the first chunk of ``tile``'s image shard, so its checksum fails."""
    shard = store_path / "images" / "c" / str(tile) / "0" / "0" / "0" / "0"
    data = bytearray(shard.read_bytes())
    for k in range(40, 400):  # inside the first chunk's Rice stream
        data[k] ^= 0x5A
    shard.write_bytes(bytes(data))
