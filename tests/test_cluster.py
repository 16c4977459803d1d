"""lensdask.cluster without a batch system: specs, profiles, generated job scripts, clear errors, containers."""

from __future__ import annotations

import os
import pathlib
import re
import shlex
import stat

import dask.config
import pandas as pd
import pytest
import yaml

from lensdask.cli import _cmd_fit, build_parser, main
from lensdask.cluster import batch_cluster, cluster_client, load_profile, parse_adapt, parse_spec
from lensdask.errors import ClusterError

REPO = pathlib.Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
PROFILES = yaml.safe_load((REPO / "lensdask" / "jobqueue.yaml").read_text())["jobqueue"]


def test_specs():
    assert parse_spec("local") == ("local", None)
    assert parse_spec("tcp://h:8786") == ("address", None)
    assert parse_spec("slurm") == ("slurm", "lensdask-slurm")
    assert parse_spec("htcondor-gpu") == ("htcondor", "lensdask-htcondor-gpu")
    assert parse_spec("slurm:mine") == ("slurm", "mine")
    for bad in ("moon", "pbs", "slurm:", "kubernetes:x"):
        with pytest.raises(ClusterError, match="unknown cluster"):
            parse_spec(bad)
    assert parse_adapt("0:8") == (0, 8)
    for bad in ("8", "3:1", "0:0", "a:b"):
        with pytest.raises(ClusterError, match="MIN:MAX"):
            parse_adapt(bad)


def test_every_shipped_profile_is_named_in_the_config():
    names = set(dask.config.get("lensdask.cluster.profiles").values())
    assert (
        names == set(PROFILES) == {"lensdask-htcondor", "lensdask-htcondor-gpu", "lensdask-slurm", "lensdask-slurm-gpu"}
    )


def test_cli_options_reach_the_cluster_in_any_order():
    a = build_parser().parse_args(["simulate", "--out", "x", "--n", "1", "--jobs", "3", "--cluster", "slurm"])
    assert (a.cluster, a.jobs, a.adapt) == ("slurm", 3, None)
    a = build_parser().parse_args(["search", "--zarr", "x", "--cluster", "htcondor", "--adapt", "1:9"])
    assert (a.cluster, a.adapt) == ("htcondor", "1:9")
    for cmd in (["mock-survey", "--out", "x"], ["demo"]):
        a = build_parser().parse_args(cmd + ["--jobs", "2"])
        assert (a.cluster, a.jobs) == ("local", 2)


def _job_script(spec: str) -> str:
    with batch_cluster(spec, scheduler_options={"dashboard_address": ":0"}) as cluster:
        return cluster.job_script()


@pytest.mark.parametrize("spec", ["htcondor", "htcondor-gpu"])
def test_htcondor_job_scripts(spec):
    script = _job_script(spec)
    prof = PROFILES[f"lensdask-{spec}"]
    assert script.startswith("#!/usr/bin/env condor_submit")
    assert '+SingularityImage = "/cvmfs/' in script
    assert "--worker-port=40000:40999" in script and "--nanny-port=41000:41999" in script
    assert "--death-timeout 120" in script and "--lifetime=3h" in script
    assert "/opt/lensdask/bin/python" in script
    assert f"MY.DaskWorkerCores = {prof['cores']}" in script
    gpu = spec.endswith("gpu")
    assert ("request_gpus = 1" in script) == gpu
    assert bool(re.search(r"--resources GPU=1", script)) == gpu


@pytest.mark.parametrize("spec", ["slurm", "slurm-gpu"])
def test_slurm_job_scripts(spec):
    script = _job_script(spec)
    prof = PROFILES[f"lensdask-{spec}"]
    assert f"#SBATCH -t {prof['walltime']}" in script
    assert f"#SBATCH --cpus-per-task={prof['cores']}" in script
    assert "--worker-port=40000:40999" in script and "--nanny-port=41000:41999" in script
    assert "--death-timeout 60" in script and "--lifetime=" in script
    gpu = spec.endswith("gpu")
    assert ("#SBATCH --gres=gpu:1" in script) == gpu
    assert bool(re.search(r"--resources GPU=1", script)) == gpu


def test_user_config_overrides_the_file_key_by_key():
    with dask.config.set({"jobqueue.lensdask-slurm.queue": "short", "jobqueue.lensdask-slurm.cores": 3}):
        prof = load_profile("slurm", "lensdask-slurm")
        assert prof["queue"] == "short" and prof["cores"] == 3
        assert prof["walltime"] == PROFILES["lensdask-slurm"]["walltime"]
        script = _job_script("slurm")
    assert "#SBATCH -p short" in script and "--cpus-per-task=3" in script


def test_missing_profile_and_missing_key_name_the_setting(tmp_path, capsys):
    broken = {"jobqueue": {"lensdask-slurm": {k: v for k, v in PROFILES["lensdask-slurm"].items() if k != "memory"}}}
    path = tmp_path / "jq.yaml"
    path.write_text(yaml.safe_dump(broken))
    with dask.config.set({"lensdask.cluster.jobqueue_file": str(path)}):
        with pytest.raises(ClusterError, match=r"jobqueue\.lensdask-slurm\.memory"):
            load_profile("slurm", "lensdask-slurm")
        with pytest.raises(ClusterError, match=r"jobqueue\.lensdask-htcondor'"):
            load_profile("htcondor", "lensdask-htcondor")
        code = main(["simulate", "--out", str(tmp_path / "t.zarr"), "--n", "2", "--cluster", "slurm"])
    assert code == 2 and "jobqueue.lensdask-slurm.memory" in capsys.readouterr().err
    with dask.config.set({"lensdask.cluster.jobqueue_file": str(tmp_path / "nope.yaml")}):
        with pytest.raises(ClusterError, match="lensdask.cluster.jobqueue_file"):
            load_profile("slurm", "lensdask-slurm")
    with pytest.raises(ClusterError, match=r"jobqueue\.no-such-profile"):
        load_profile("slurm", "no-such-profile")


def test_jobs_and_adapt_are_for_batch_systems(tmp_path, capsys):
    code = main(["mock-survey", "--out", str(tmp_path / "x.zarr"), "--tiles", "1", "--per-tile", "2", "--jobs", "2"])
    assert code == 2 and "--jobs and --adapt" in capsys.readouterr().err
    with pytest.raises(ClusterError, match="not both"):
        with cluster_client("slurm", jobs=2, adapt="1:2"):
            pass


@pytest.fixture
def fake_slurm(tmp_path, monkeypatch):
    """sbatch/squeue/scancel stand-ins that accept jobs which never start, and log what they were asked."""
    bin_ = tmp_path / "bin"
    bin_.mkdir()
    log = tmp_path / "calls.log"
    scripts = {
        "sbatch": 'echo "sbatch $$" >> "$LOG"; echo "Submitted batch job $$"',
        "scancel": 'echo "scancel $*" >> "$LOG"',
        "squeue": "true",
    }
    for name, body in scripts.items():
        f = bin_ / name
        f.write_text(f"#!/bin/sh\nLOG={shlex.quote(str(log))}\n{body}\n")
        f.chmod(f.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_}{os.pathsep}{os.environ['PATH']}")
    return log


def test_workers_that_never_connect_are_a_clear_error_and_their_jobs_are_cancelled(fake_slurm, tmp_path):
    with dask.config.set(
        {
            "jobqueue.lensdask-slurm.log-directory": str(tmp_path / "logs"),
            "jobqueue.lensdask-slurm.scheduler-options": {"dashboard_address": ":0"},
        }
    ):
        with pytest.raises(ClusterError) as err:
            with cluster_client("slurm", jobs=2, worker_timeout="3s", quiet=True):
                pytest.fail("no worker can connect")
    msg = str(err.value)
    assert "lensdask.cluster.worker_timeout" in msg and "jobqueue.lensdask-slurm" in msg and "cancelled" in msg
    calls = fake_slurm.read_text().split("\n")
    submitted = {c.split()[1] for c in calls if c.startswith("sbatch")}
    cancelled = {j for c in calls if c.startswith("scancel") for j in c.split()[1:]}
    assert len(submitted) == 2 and submitted <= cancelled


# -- --emit-htcondor, search-tile and merge --------------------------------------------------------


def _run_submit_file(sub: pathlib.Path, tiles_txt: pathlib.Path) -> None:
    """Run every job of a `queue tile,name from tiles.txt` submit description, in-process."""
    text = sub.read_text()
    args = shlex.split(re.search(r'^arguments = "(.*)"$', text, re.M).group(1))
    assert args[:2] == ["-m", "lensdask.cli"]
    assert re.search(r"^queue tile,name from tiles\.txt$", text, re.M)
    for line in tiles_txt.read_text().splitlines():
        tile, name = (s.strip() for s in line.split(","))
        assert main([a.replace("$(tile)", tile).replace("$(name)", name) for a in args[2:]]) == 0


def test_emit_htcondor_gives_the_same_candidates_as_a_dask_search(tmp_path, client, random_model, capsys):
    from lensdask.search import search
    from lensdask.survey import mock_survey

    store, _ = mock_survey(
        str(tmp_path / "des.zarr"), tiles=3, per_tile=30, lens_fraction=0.1, seed=5, client=client, progress=False
    )
    dask_run = search(
        tmp_path / "des.zarr", random_model, tmp_path / "dask-run", client=client, threshold=0.0, progress=False
    )
    # A threshold that keeps about half the rows, so that the threshold reaches merge too.
    thr = float(dask_run.scores()["score"].median())
    dask_run = search(
        tmp_path / "des.zarr", random_model, tmp_path / "dask-run", client=client, threshold=thr, progress=False
    )
    emit = tmp_path / "condor"
    assert (
        main(
            [
                "search",
                "--zarr",
                str(tmp_path / "des.zarr"),
                "--model",
                str(random_model),
                "--out",
                str(tmp_path / "condor-run"),
                "--threshold",
                repr(thr),
                "--cluster",
                "htcondor-gpu",
                "--emit-htcondor",
                str(emit),
                "--fit-top",
                "7",
            ]
        )
        == 0
    )
    said = capsys.readouterr().out
    assert "condor_submit_dag search.dag" in said and "fit.sub" in said
    assert not (tmp_path / "condor-run" / "candidates.parquet").exists()  # nothing was searched
    sub = (emit / "search.sub").read_text()
    assert "request_gpus = 1" in sub and '+SingularityImage = "/cvmfs/' in sub
    assert "executable = /opt/lensdask/bin/python" in sub and "max_retries" in sub
    assert (emit / "tiles.txt").read_text().splitlines() == [f"{i}, {n}" for i, n in enumerate(store.tiles)]
    dag = (emit / "search.dag").read_text()
    assert "JOB tiles search.sub" in dag and "PARENT tiles CHILD merge" in dag
    # the fit stage after the merge: lensdask fit RUN_DIR --top N, on CPUs
    assert "JOB fit fit.sub" in dag and "PARENT merge CHILD fit" in dag
    fit_sub = (emit / "fit.sub").read_text()
    assert (
        "universe = vanilla" in fit_sub and "request_gpus" not in fit_sub and '+SingularityImage = "/cvmfs/' in fit_sub
    )
    assert "DASK_LENSDASK__CLUSTER__N_WORKERS=4" in fit_sub and "max_retries" in fit_sub
    fit_args = shlex.split(re.search(r'^arguments = "(.*)"$', fit_sub, re.M).group(1))
    assert fit_args[:2] == ["-m", "lensdask.cli"]
    parsed = build_parser().parse_args(fit_args[2:])  # the real CLI parser reads them
    assert parsed.func is _cmd_fit and parsed.run_dir == str(tmp_path / "condor-run")
    assert parsed.top == 7 and parsed.cluster == "local"
    merge_args = shlex.split(re.search(r'^arguments = "(.*)"$', (emit / "merge.sub").read_text(), re.M).group(1))
    assert "universe = local" in (emit / "merge.sub").read_text()

    _run_submit_file(emit / "search.sub", emit / "tiles.txt")
    assert main(merge_args[2:]) == 0
    got = pd.read_parquet(tmp_path / "condor-run" / "candidates.parquet")
    want = pd.read_parquet(tmp_path / "dask-run" / "candidates.parquet")
    assert 0 < len(want) < 90
    pd.testing.assert_frame_equal(got, want)
    assert len(dask_run.candidates) == len(got)


def test_emit_htcondor_leaves_out_the_fit_of_a_store_without_psf(galaxy_run, random_model, tmp_path, capsys):
    made = galaxy_run("condor-nopsf", per_tile=2, seed=3, first_id=60)  # its rows record no PSF
    emit = tmp_path / "condor"
    argv = ["search", "--zarr", str(made / "des.zarr"), "--model", str(random_model), "--out", str(tmp_path / "r")]
    assert main([*argv, "--emit-htcondor", str(emit)]) == 0
    said = capsys.readouterr().out
    assert "no fit stage" in said and "records no PSF in band g" in said and "--psf FWHM" in said
    assert not (emit / "fit.sub").exists() and "fit" not in (emit / "search.dag").read_text()


def test_search_tile_and_merge_errors(tmp_path, random_model, capsys):
    assert main(["merge", str(tmp_path / "empty")]) == 2
    assert "no finished tiles" in capsys.readouterr().err
    from lensdask.survey import mock_survey

    mock_survey(str(tmp_path / "d.zarr"), tiles=1, per_tile=5, lens_fraction=0.0, seed=1, progress=False)
    for tile in ("7", "DES-nope"):
        assert (
            main(
                [
                    "search-tile",
                    "--zarr",
                    str(tmp_path / "d.zarr"),
                    "--tile",
                    tile,
                    "--model",
                    str(random_model),
                    "--out",
                    str(tmp_path / "run"),
                ]
            )
            == 2
        )
        assert "--tile" in capsys.readouterr().err


# -- container recipes -----------------------------------------------------------------------------


def test_dockerfile_structure():
    lines = [ln for ln in (DEPLOY / "Dockerfile").read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    # Join continuation lines, then every instruction must be a Dockerfile keyword.
    joined, cur = [], ""
    for ln in lines:
        cur += ln.rstrip("\\") + " "
        if not ln.endswith("\\"):
            joined.append(cur.strip())
            cur = ""
    assert not cur, "a continuation line runs off the end"
    keywords = {"FROM", "ARG", "ENV", "RUN", "COPY", "WORKDIR", "CMD", "ENTRYPOINT", "LABEL", "USER"}
    assert all(j.split()[0] in keywords for j in joined), joined
    assert joined[0].startswith("FROM ")
    text = " ".join(joined)
    assert "pip install /src/lensdask" in text and "/opt/lensdask/bin" in text
    for copy in (j.split() for j in joined if j.startswith("COPY ")):
        for path in copy[1:-1]:
            assert (REPO / path).exists(), f"COPY source {path} missing"


def test_apptainer_definition_structure():
    text = (DEPLOY / "lensdask.def").read_text()
    header = [ln for ln in text.split("\n%", 1)[0].splitlines() if ln.strip() and not ln.startswith("#")]
    assert dict(ln.split(":", 1) for ln in header).keys() >= {"Bootstrap", "From"}
    sections = re.findall(r"^%(\w+)", text, re.M)
    assert set(sections) <= {
        "files",
        "environment",
        "post",
        "runscript",
        "test",
        "labels",
        "help",
        "setup",
        "startscript",
    }
    assert len(sections) == len(set(sections)) and {"post", "files", "runscript"} <= set(sections)
    post = re.search(r"^%post\n(.*?)(?=^%)", text, re.M | re.S).group(1)
    assert "pip install --no-cache-dir /src/lensdask" in post and "python -m venv /opt/lensdask" in post
    files = re.search(r"^%files\n(.*?)(?=^%)", text, re.M | re.S).group(1)
    for ln in files.splitlines():
        if ln.strip() and not ln.strip().startswith("#"):
            assert (REPO / ln.split()[0]).exists()
    # Both images put lensdask where the HTCondor profiles start workers.
    assert all(p["python"] == "/opt/lensdask/bin/python" for n, p in PROFILES.items() if "htcondor" in n)


def test_start_script_is_valid_bash():
    import subprocess

    for script in (DEPLOY / "slurm" / "start-single-node.sh", REPO / ".ci" / "run"):
        assert subprocess.run(["bash", "-n", str(script)]).returncode == 0


def test_installed_package_carries_the_jobqueue_profiles(tmp_path):
    """A plain `pip install` (no checkout) must still find the profiles of --cluster slurm|htcondor."""
    import shutil
    import subprocess
    import sys
    import zipfile

    from lensdask.cluster import DEFAULT_JOBQUEUE_FILE

    src = tmp_path / "src"
    src.mkdir()
    for name in ("setup.cfg", "pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    shutil.copytree(REPO / "lensdask", src / "lensdask", ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(tmp_path / "wheel"),
            str(src),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = (tmp_path / "wheel").glob("lensdask-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "lensdask/jobqueue.yaml" in names and "lensdask/lensdask.yaml" in names
    assert DEFAULT_JOBQUEUE_FILE.parent == REPO / "lensdask"  # found next to the code, wherever it is installed
    assert yaml.safe_load(DEFAULT_JOBQUEUE_FILE.read_text())["jobqueue"] == PROFILES


# -- TLS on batch clusters ---------------------------------------------------------------------------


@pytest.mark.parametrize("spec", ["htcondor", "htcondor-gpu", "slurm", "slurm-gpu"])
def test_batch_clusters_use_tls_with_temporary_credentials(spec, tmp_path, monkeypatch):
    import os
    import stat

    monkeypatch.setenv("HOME", str(tmp_path))  # the Slurm profiles write the workers' copy under $HOME
    with batch_cluster(spec, scheduler_options={"dashboard_address": "127.0.0.1:0"}) as cluster:
        assert cluster.scheduler_address.startswith("tls://")
        assert cluster.security.require_encryption
        script = cluster.job_script()
        assert " tls://" in script and "--protocol tls://" in script
        files = re.findall(r"--tls-(?:ca-file|cert|key) (\S+?)['\s]", script + " ")
        assert len(files) == 3
        if spec.startswith("htcondor"):
            # no shared filesystem: the credentials travel with the job into its scratch directory
            assert all(f.startswith("$_CONDOR_SCRATCH_DIR/") for f in files)
            sent = re.search(r"^transfer_input_files = (.*)$", script, re.M).group(1).split(",")
            assert [os.path.basename(f) for f in sent] == [os.path.basename(f) for f in files]
            local = sent
        else:
            assert all(f.startswith("$HOME/.lensdask/tls/") for f in files)
            local = [f.replace("$HOME", str(tmp_path)) for f in files]
        for f in local:
            assert os.path.isfile(f) and stat.S_IMODE(os.stat(f).st_mode) == 0o600
            assert stat.S_IMODE(os.stat(os.path.dirname(f)).st_mode) == 0o700
        key = next(f for f in local if ".key." in f)
        assert "PRIVATE KEY" in open(key).read()


def test_tls_can_be_turned_off_and_dashboards_default_to_loopback():
    with dask.config.set({"lensdask.cluster.tls": False}):
        with batch_cluster("slurm", scheduler_options={"dashboard_address": "127.0.0.1:0"}) as cluster:
            assert cluster.scheduler_address.startswith("tcp://") and "--tls-key" not in cluster.job_script()
    for name, prof in PROFILES.items():
        assert prof["scheduler-options"]["dashboard_address"].startswith("127.0.0.1:"), name
        assert prof.get("shared-temp-directory"), name
