"""The shared fan-out runner as simulate uses it: a failing tile is a row of the failures table."""

from __future__ import annotations

import os
import time

import dask
import numpy as np
import pandas as pd
import pytest

from lensdask.errors import ConstraintError
from lensdask.fanout import FAILURE_COLUMNS, failures_path, run_tiles
from lensdask.simulate.run import SimulationFailedError, row_rng, simulate
from lensdask.store import open_store


def _square(x):
    return x * x


def _fail_on_three(x):
    if x == 3:
        raise ValueError(f"tile {x} is corrupt")
    return x * x


def _sleep_until(flag, limit):
    """Sleep until the file ``flag`` exists or ``limit`` seconds pass: a slow tile the test can end.

    A cancelled task's thread runs on to the end, so a plain ``time.sleep`` would hold the shared
    workers (and every later test) for the whole ``limit``.
    """
    end = time.monotonic() + limit
    while time.monotonic() < end and not os.path.exists(flag):
        time.sleep(0.05)


def _jobs(f, n=5):
    return [(f"t{i}", f, (i,), {}) for i in range(n)]


@pytest.mark.parametrize("on_client", [False, True], ids=["in-process", "client"])
def test_a_tile_that_raises_is_a_failure_row_and_the_others_finish(on_client, request):
    client = request.getfixturevalue("client") if on_client else None
    results, failures = run_tiles(_jobs(_fail_on_three), client=client, progress=False)
    assert results == {"t0": 0, "t1": 1, "t2": 4, "t4": 16}
    assert [f["tile"] for f in failures] == ["t3"]
    assert failures[0]["error"] == "ValueError: tile 3 is corrupt"
    assert "_fail_on_three" in failures[0]["traceback"]
    assert set(failures[0]) == set(FAILURE_COLUMNS)


def _impossible_lenses():
    """Every lens is rejected (and every non-lens is fine): which tiles fail follows from the seed."""
    return dask.config.set(
        {"lensdask.simulate.constraints.magnification_min": 1e6, "lensdask.simulate.max_draws_per_lens": 2}
    )


def _lens_rows(seed, n, lens_fraction):
    return [i for i in range(n) if row_rng(seed, i).random() < lens_fraction]


@pytest.mark.parametrize("on_client", [False, True], ids=["in-process", "client"])
def test_simulate_fails_only_the_tiles_that_raised(tmp_path, on_client, request):
    client = request.getfixturevalue("client") if on_client else None
    seed, n = 3, 6
    lenses = _lens_rows(seed, n, 0.5)
    assert 0 < len(lenses) < n  # the seed gives both kinds of tile
    url = tmp_path / "train.zarr"
    with _impossible_lenses(), pytest.raises(SimulationFailedError) as info:
        simulate(
            url, n, seed=seed, lens_fraction=0.5, partition_size=1, client=client, progress=False, lookalike_fraction=0
        )
    failures = info.value.failures
    assert failures["tile"].tolist() == [f"sim-{i:06d}" for i in lenses]
    assert failures["error"].str.startswith("no simulated lens passed the constraints").all()
    assert f"{len(lenses)} of {n} tiles failed" in str(info.value)
    store = open_store(url)
    assert [t for t in range(n) if store.counts[t] == 1] == [i for i in range(n) if i not in lenses]
    assert all(store.counts[i] == -1 for i in lenses)
    pd.testing.assert_frame_equal(pd.read_parquet(failures_path(str(url))), failures)


def test_simulate_without_failures_removes_a_stale_failures_table(tmp_path):
    url = tmp_path / "train.zarr"
    with _impossible_lenses(), pytest.raises(SimulationFailedError):
        simulate(url, 2, seed=0, lens_fraction=1.0, partition_size=1, progress=False, lookalike_fraction=0)
    assert failures_path(str(url)).exists()
    store = simulate(url, 2, seed=0, lens_fraction=0.0, partition_size=1, progress=False, overwrite=True)
    assert list(store.counts) == [1, 1] and not failures_path(str(url)).exists()


def test_simulate_on_a_client_writes_what_it_writes_in_process(tmp_path, client):
    local, local_stats = simulate(
        tmp_path / "a.zarr", 5, seed=8, lens_fraction=0.5, partition_size=2, progress=False, return_stats=True
    )
    dist, dist_stats = simulate(
        tmp_path / "b.zarr",
        5,
        seed=8,
        lens_fraction=0.5,
        partition_size=2,
        progress=False,
        return_stats=True,
        client=client,
    )
    for t in range(local.n_tiles):
        np.testing.assert_array_equal(local.read_images(t), dist.read_images(t))
    pd.testing.assert_frame_equal(local.read_catalog(), dist.read_catalog())
    assert (local_stats.draws, local_stats.accepted) == (dist_stats.draws, dist_stats.accepted)


def test_in_process_errors_named_in_raise_in_process_stop_the_run():
    def constraint(x):
        raise ConstraintError("no lens passes")

    with pytest.raises(ConstraintError):
        run_tiles([("a", constraint, (1,), {})], progress=False, raise_in_process=(ConstraintError,))
    # without it, the same error is the tile's failure
    _, failures = run_tiles([("a", constraint, (1,), {})], progress=False)
    assert failures == [{"tile": "a", "error": "no lens passes", "traceback": ""}]


@pytest.mark.parametrize("on_client", [False, True], ids=["in-process", "client"])
def test_results_reach_the_callback_as_tiles_finish_and_the_bar_counts_skipped_tiles(on_client, request, monkeypatch):
    import tqdm.auto

    client = request.getfixturevalue("client") if on_client else None
    bars = []
    real = tqdm.auto.tqdm

    def recording_tqdm(*args, **kwargs):
        bars.append(real(*args, **kwargs))
        return bars[-1]

    monkeypatch.setattr(tqdm.auto, "tqdm", recording_tqdm)
    seen = []
    results, failures = run_tiles(
        _jobs(_fail_on_three),
        client=client,
        progress=True,
        skipped=2,
        on_result=lambda tile, value: seen.append((tile, value)),
        postfix=lambda: {"seen": len(seen)},
    )
    assert sorted(seen) == sorted(results.items()) and len(seen) == 4  # never the failed tile
    assert [f["tile"] for f in failures] == ["t3"]
    (bar,) = bars
    assert (bar.n, bar.total) == (2 + 5, 2 + 5)
    assert bar.postfix == "seen=4"


def test_an_interrupt_cancels_the_tiles_still_running(client, tmp_path):
    end = tmp_path / "end"
    jobs = [("quick", _square, (2,), {})] + [(f"slow{i}", _sleep_until, (str(end), 30), {}) for i in range(4)]

    def interrupt(tile, value):
        raise KeyboardInterrupt

    t0 = time.monotonic()
    try:
        with pytest.raises(KeyboardInterrupt):
            run_tiles(jobs, client=client, progress=False, key_prefix="interrupted", on_result=interrupt)
        assert time.monotonic() - t0 < 20  # no wait for the slow tiles
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            keys = [k for ks in client.processing().values() for k in ks if str(k).startswith("interrupted-")]
            if not keys:
                break
            time.sleep(0.2)
        assert not keys, f"still scheduled after the interrupt: {keys}"
    finally:
        end.touch()  # the cancelled tiles' threads still run: free the shared workers for the next tests


def test_a_client_that_is_not_the_default_runs_the_tiles(monkeypatch):
    """A notebook may hold several clients, none of them the default: the one given is used."""
    import distributed.client
    from distributed import Client, LocalCluster

    monkeypatch.setattr(distributed.client, "_get_global_client", lambda: None)  # no default client at all
    with (
        LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=":0") as cluster,
        Client(cluster, set_as_default=False) as client,
    ):
        results, failures = run_tiles(_jobs(_fail_on_three), client=client, progress=False)
    assert results == {"t0": 0, "t1": 1, "t2": 4, "t4": 16} and [f["tile"] for f in failures] == ["t3"]
