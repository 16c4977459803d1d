"""Shared fixtures: one LocalCluster for the session, paths to ../shared/data, tiny stores."""

from __future__ import annotations

import os
import pathlib

import pytest

from lensdask.model.checkpoint import untrained_checkpoint

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = pathlib.Path(os.environ.get("LENSDASK_SHARED_DATA", REPO.parent / "shared" / "data"))


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
