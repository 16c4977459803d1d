"""Shared fixtures: one LocalCluster for the session, paths to ../shared/data, tiny stores."""

from __future__ import annotations

import os
import pathlib

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

    with LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address="127.0.0.1:0", memory_limit="4GiB"
    ) as cluster, Client(cluster) as c:
        yield c


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
    import numpy as np
    import pandas as pd

    from lensdask.search import search
    from lensdask.store import create_store

    def make(name: str, per_tile: int, seed: int, first_id: int) -> pathlib.Path:
        tmp = tmp_path_factory.mktemp(name)
        rng = np.random.default_rng(seed)
        s = create_store(tmp / "des.zarr", tiles=GALAXY_TILES, capacity=per_tile + 4, bands="griz",
                         pixel_scale=0.263, stamp=45)
        y, x = np.mgrid[:45, :45] - 22
        for t in range(len(GALAXY_TILES)):
            flux = rng.uniform(1, 5, size=(per_tile, 4, 1, 1)) * np.array([0.3, 0.6, 1.0, 1.2])[None, :, None, None]
            img = rng.normal(0, 0.05, (per_tile, 4, 45, 45)) + flux * np.exp(-(x**2 + y**2) / 18.0)
            s.write_tile(t, img.astype("float32"), pd.DataFrame(
                {"object_id": first_id + 100 * t + np.arange(per_tile), "ra": 52.5 + rng.uniform(0, .7, per_tile),
                 "dec": -30.6 + rng.uniform(0, .7, per_tile), "label": -np.ones(per_tile, int)}))
        search(tmp / "des.zarr", random_model, tmp / "run", threshold=0.0, floor=0.0, progress=False)
        return tmp

    return make


GALAXY_TILES = ["DES0330-3040", "DES0333-3040"]
"""The tiles of :func:`galaxy_run` stores."""


def load_benchmark(name: str):
    """The module of ``benchmarks/<name>.py`` (benchmarks are scripts, not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
