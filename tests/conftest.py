"""Shared fixtures: one LocalCluster for the session, paths to ../shared/data, tiny stores."""

from __future__ import annotations

import os
import pathlib

import pytest

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
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0", memory_limit="4GiB"
    ) as cluster, Client(cluster) as c:
        yield c


def make_checkpoint(out, *, arch="test-vit", bands=("g", "r", "i", "z"), stamp=45, pixel_scale=0.263,
                    classes=("non-lens", "lens"), seed=0):
    """Save a randomly initialised model with a complete card; returns the card."""
    import torch

    from lensdask.model.architectures import arch_kwargs, build_vit
    from lensdask.model.checkpoint import save_checkpoint
    from lensdask.model.normalise import DEFAULT_NORMALISATION

    torch.manual_seed(seed)
    kwargs = arch_kwargs(arch, in_chans=len(bands), img_size=stamp, num_classes=len(classes))
    model = build_vit(kwargs)
    card = {
        "arch": arch, "arch_kwargs": kwargs, "bands": list(bands), "stamp": stamp,
        "pixel_scale": pixel_scale, "normalisation": dict(DEFAULT_NORMALISATION),
        "classes": list(classes), "lens_class": list(classes).index("lens"),
    }
    return save_checkpoint(model, out, card)


@pytest.fixture(scope="session")
def random_model(tmp_path_factory):
    """A randomly initialised ``test-vit`` checkpoint for 4-band 45 px stamps."""
    path = tmp_path_factory.mktemp("model") / "test-vit"
    make_checkpoint(path)
    return path
