"""lensdask on a real Slurm cluster (deploy/slurm/start-single-node.sh starts one on this machine).

Skipped, with the reason, where `sinfo` is missing or no node is idle. Outputs under
``--cluster slurm`` must equal those of the LocalCluster, and a search must survive a worker job
being cancelled with ``scancel``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time

import dask.config
import numpy as np
import pandas as pd
import pytest

from lensdask.cli import main
from lensdask.store import open_store

pytestmark = [pytest.mark.slurm, pytest.mark.timeout(480)]  # a hung batch job must not hang CI


def _slurm_state() -> str | None:
    """None when a Slurm node can take jobs, else why not."""
    if shutil.which("sinfo") is None or shutil.which("sbatch") is None:
        return "Slurm is not installed (run deploy/slurm/start-single-node.sh as root)"
    try:
        out = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=10)
    except subprocess.TimeoutExpired:
        return "sinfo timed out: slurmctld is not answering"
    states = out.stdout.split()
    if out.returncode != 0 or not any(s.rstrip("*") in ("idle", "mixed") for s in states):
        return (
            f"no idle Slurm node (sinfo: {out.stdout.strip() or out.stderr.strip()}); "
            "run deploy/slurm/start-single-node.sh"
        )
    return None


def _jobs(name: str, states: str = "PD,R,CG,CF") -> list[tuple[str, str]]:
    out = subprocess.run(["squeue", "-h", "-n", name, "-t", states, "-o", "%i %T"], capture_output=True, text=True)
    return [tuple(ln.split()) for ln in out.stdout.splitlines() if ln.strip()]


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    """Profile overrides for these tests: a unique job name, logs in a temp dir, any free dashboard port."""
    why = _slurm_state()
    if why:
        print(f"\nSKIP slurm tests: {why}")
        pytest.skip(why)
    name = f"lensdask-test-{os.getpid()}"
    logs = tmp_path_factory.mktemp("slurm-logs")
    overrides = {
        "jobqueue.lensdask-slurm.name": name,
        "jobqueue.lensdask-slurm.log-directory": str(logs),
        "jobqueue.lensdask-slurm.memory": "2GiB",
        "jobqueue.lensdask-slurm.scheduler-options": {"port": 0, "dashboard_address": "127.0.0.1:0"},
        "lensdask.cluster.worker_timeout": "90s",
        # TLS as in production: temporary credentials, the workers' copy in a private folder
        "lensdask.cluster.tls": True,
        "jobqueue.lensdask-slurm.shared-temp-directory": str(tmp_path_factory.mktemp("slurm-tls")),
    }
    with dask.config.set(overrides):
        yield name
    # Leave the queue as we found it: every job of these tests is gone (closing the cluster cancels them).
    deadline = time.time() + 30
    while _jobs(name) and time.time() < deadline:
        time.sleep(1)
    left = _jobs(name)
    if left:
        subprocess.run(["scancel", "-n", name])
    assert not left, f"worker jobs left in the queue: {left}"


def _same_store(a, b):
    sa, sb = open_store(a), open_store(b)
    assert list(sa.tiles) == list(sb.tiles)
    for t in range(sa.n_tiles):
        ta, tb = sa.read_tile(t), sb.read_tile(t)
        np.testing.assert_array_equal(ta.images, tb.images)
        pd.testing.assert_frame_equal(ta.table, tb.table)


def test_simulate_and_search_under_slurm_equal_local(slurm, tmp_path, random_model, capsys):
    sim = ["simulate", "--n", "12", "--seed", "4", "--partition-size", "6"]
    assert main(sim + ["--out", str(tmp_path / "local.zarr")]) == 0
    assert main(sim + ["--out", str(tmp_path / "slurm.zarr"), "--cluster", "slurm", "--jobs", "2"]) == 0
    out = capsys.readouterr().out
    assert "slurm cluster (profile lensdask-slurm): 2 worker jobs, scheduler tls://" in out
    _same_store(tmp_path / "local.zarr", tmp_path / "slurm.zarr")

    search = ["search", "--zarr", str(tmp_path / "slurm.zarr"), "--model", str(random_model), "--threshold", "0.2"]
    assert main(search + ["--out", str(tmp_path / "run-local")]) == 0
    assert main(search + ["--out", str(tmp_path / "run-slurm"), "--cluster", "slurm", "--adapt", "1:2"]) == 0
    want = pd.read_parquet(tmp_path / "run-local" / "candidates.parquet")
    got = pd.read_parquet(tmp_path / "run-slurm" / "candidates.parquet")
    pd.testing.assert_frame_equal(got, want)


def test_search_survives_a_cancelled_worker_job(slurm, tmp_path, random_model, capsys):
    from lensdask.survey import mock_survey

    tiles, per_tile = 10, 120
    mock_survey(str(tmp_path / "des.zarr"), tiles=tiles, per_tile=per_tile, lens_fraction=0.05, seed=9, progress=False)
    run = tmp_path / "run"
    result = {}

    def go():
        # batch 8: slow enough per tile that the cancel lands mid-search
        result["code"] = main(
            [
                "search",
                "--zarr",
                str(tmp_path / "des.zarr"),
                "--model",
                str(random_model),
                "--out",
                str(run),
                "--threshold",
                "0",
                "--batch-size",
                "8",
                "--cluster",
                "slurm",
                "--jobs",
                "2",
            ]
        )

    th = threading.Thread(target=go)
    th.start()
    cancelled = None
    deadline = time.time() + 120
    while th.is_alive() and time.time() < deadline:
        running = [j for j, state in _jobs(slurm, "R")]
        done = len(list((run / "tiles").glob("*.json"))) if (run / "tiles").exists() else 0
        if running and 1 <= done < tiles:
            cancelled = running[0]
            subprocess.run(["scancel", cancelled], check=True)
            break
        time.sleep(0.2)
    th.join(timeout=300)
    assert not th.is_alive(), "search did not finish after a worker job was cancelled"
    assert cancelled is not None, "the search finished before a worker job could be cancelled"
    assert result["code"] == 0
    scores = pd.read_parquet(run / "candidates.parquet")
    assert len(scores) == tiles * per_tile  # threshold 0: every row
    assert scores.groupby("tile").size().eq(per_tile).all()
    import json

    summary = json.loads((run / "summary.json").read_text())
    assert summary["tiles_searched"] == tiles and not summary["tiles_failed"]
