"""The GPU kit and the GPU check: what a lent GPU machine runs first must work before one is lent.

The rehearsal makes a venv that holds only the device image's packages and runs the device's
command there on the CPU (``benchmarks/gpu_check.py --cpu --tiny`` with the kit of
``benchmarks/gpu_kit.py``, installed with no index), so the script, the kit and the report format
are checked on every submission; the other tests check the check's time limits and the kit's plan.
"""

from __future__ import annotations

import importlib.metadata as md
import importlib.util
import json
import math
import os
import re
import subprocess
import sys
import time

import numpy as np
import pytest

from lensdask.errors import LensdaskError

from conftest import REPO


def _load_kit_module():
    """benchmarks/gpu_kit.py as a module (registered first: its dataclass looks its module up)."""
    spec = importlib.util.spec_from_file_location("gpu_kit", REPO / "benchmarks" / "gpu_kit.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_kit"] = module
    spec.loader.exec_module(module)
    return module


gpu_kit = _load_kit_module()


def _check(args, out, **env):
    """Run benchmarks/gpu_check.sh with this Python; its exit status and its report."""
    t = time.perf_counter()
    res = subprocess.run(
        ["bash", str(REPO / "benchmarks" / "gpu_check.sh"), "--out", str(out), *args],
        env={**os.environ, "PYTHON": sys.executable, **env},
        capture_output=True,
        text=True,
    )
    report = json.loads((out / "gpu_report.json").read_text())
    return res, report, time.perf_counter() - t


def _finite_positive(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def test_a_step_over_its_limit_is_ended_and_the_report_says_so(tmp_path):
    """One step that overruns is killed, and the report (written after every step) still names every step."""
    res, report, seconds = _check(["--cpu", "--tiny", "--steps", "env,data,recipe", "--limit", "data=1"], tmp_path)
    assert res.returncode == 1
    steps = report["steps"]
    assert steps["env"]["status"] == "ok"
    assert steps["data"]["status"] == "timeout" and steps["data"]["limit_s"] == 1.0 and "log_tail" in steps["data"]
    assert steps["recipe"]["status"] == "failed" and "error" in steps["recipe"]  # no data: fails, and says why
    assert report["finished"] and seconds < 120


def test_a_step_is_skipped_once_the_budget_is_spent(tmp_path):
    """The data step overruns its 2 s (it makes a mock survey): 4.5 s of the budget are left, too few for the next."""
    args = ["--cpu", "--tiny", "--steps", "data,recipe", "--budget", "6.5", "--limit", "data=2"]
    res, report, _ = _check(args, tmp_path)
    assert report["steps"]["data"]["status"] == "timeout"
    skipped = report["steps"]["recipe"]
    assert skipped["status"] == "skipped" and skipped["why"].startswith("out of time")
    assert res.returncode == 1


def test_the_kit_holds_what_the_image_lacks_and_nothing_it_has():
    plan = gpu_kit.plan_kit("3.12")
    for name in ("dask", "distributed", "dask-jobqueue", "bokeh", "zarr", "numcodecs", "astropy", "lenstronomy"):
        assert name in plan.wheels
    assert {"lenscat", "pcodec", "tornado", "tblib", "zict", "pyerfa", "astropy-iers-data"} <= set(plan.wheels)
    assert not set(plan.wheels) & gpu_kit.IMAGE_PACKAGES
    assert not set(plan.wheels) & set(gpu_kit.LEFT_OUT)
    assert "imagecodecs" in plan.left_out and "torch" in plan.from_image
    # every requirement of lensdask is carried, in the image, or left out with a reason
    env = gpu_kit.marker_environment("3.12")
    for req in gpu_kit._requirements("lensdask", set(), env):
        name = gpu_kit.canonical(req.name)
        assert name in plan.wheels or name in plan.from_image or name in plan.left_out, name
    # pinned to what the tests run against
    assert plan.wheels["zarr"]["version"] == md.version("zarr")


def test_kit_marker_environment_follows_the_target_python():
    from packaging.markers import Marker

    assert Marker('python_version < "3.12"').evaluate(gpu_kit.marker_environment("3.11"))
    assert not Marker('python_version < "3.12"').evaluate(gpu_kit.marker_environment("3.12"))


def test_rice_without_imagecodecs_says_what_to_install(monkeypatch):
    from lensdask.codecs import RiceCodec

    monkeypatch.setitem(sys.modules, "imagecodecs", None)  # import imagecodecs now raises ImportError
    with pytest.raises(LensdaskError, match="needs the imagecodecs package.*pip install imagecodecs"):
        RiceCodec().encode_array(np.zeros((2, 4), np.int32))


def test_pcodec_without_either_package_says_what_to_install(monkeypatch):
    from lensdask.codecs import PcodecCodec

    monkeypatch.setitem(sys.modules, "imagecodecs", None)
    monkeypatch.setitem(sys.modules, "pcodec", None)
    with pytest.raises(LensdaskError, match="pip install pcodec"):
        PcodecCodec().decode_array(np.zeros(8, np.uint8), (2, 4))


def check_cpu_report(report: dict, installed: bool) -> None:
    """The report of ``gpu_check --cpu --tiny``: every step ran and passed, with finite figures."""
    assert report["schema"] == "lensdask.gpu_check/1" and report["mode"] == "cpu" and report["tiny"]
    steps = report["steps"]
    names = ["env", "install", "gpu_tests", "data", "search-default", "search-test-vit", "scores", "train-test-vit"]
    assert list(steps) == [*names, "recipe"]
    assert all(s["status"] == "ok" for n, s in steps.items()), {n: s["status"] for n, s in steps.items()}
    env, install = steps["env"], steps["install"]
    assert env["python"] and env["torch"] and env["missing_line"].startswith("missing here")
    assert env["image_versions"]["torch"] == md.version("torch")
    if installed:  # before the kit, the image lacks what the kit carries; after it, only what it leaves out
        assert {"lensdask", "dask", "distributed", "zarr", "astropy", "lenstronomy", "pcodec"} <= set(env["missing"])
        assert set(install["still_missing"]) <= set(gpu_kit.LEFT_OUT) and not install["image_conflicts"]
    assert steps["gpu_tests"]["counts"]["skipped"] >= 1 and not steps["gpu_tests"]["counts"]["failed"]
    for model in ("default", "test-vit"):
        runs = steps[f"search-{model}"]["runs"]
        assert [r["precision"] for r in runs] == ["fp32", "bf16"]
        for r in runs:
            assert r["cutouts"] == 256 and r["batch_size"] == 64 and r["performance_report"]  # "auto" on a CPU
            assert all(
                _finite_positive(r[k]) for k in ("cutouts_per_s", "bare_cutouts_per_s", "ratio", "worker_rss_gib")
            )
    scores = {m["model"]: m for m in steps["scores"]["models"]}
    assert scores["default"]["rows"] == 192 and scores["test-vit"]["rows"] == 96
    for m in scores.values():
        assert m["fp32_match"] and m["fp32_max_abs_diff"] <= 1e-3
        assert math.isfinite(m["bf16_max_abs_diff"]) and math.isfinite(m["auroc_change_bf16"])
    assert scores["default"]["auroc_cpu"] > 0.8  # the shipped model finds the mock survey's lenses
    assert _finite_positive(steps["train-test-vit"]["train_cutouts_per_s"])
    recipe = steps["recipe"]
    assert recipe["arch"] == "vit-lens-tiny" and recipe["epochs"] == 1 and _finite_positive(recipe["projected_full_s"])


@pytest.mark.slow
def test_rehearsal_of_the_bare_image_runs_the_gpu_check_on_the_cpu_with_the_kit(tmp_path):
    """Both kits from the registry (the device's, for 3.12, at most 60 MiB), then the rehearsal with this Python's:
    the device's command in CPU mode where only the image's packages are, and lensdask from its wheel alone."""
    script = str(REPO / "benchmarks" / "gpu_kit.py")
    device = tmp_path / "whl"
    subprocess.run([sys.executable, script, "build", "--dest", str(device)], check=True)
    manifest = json.loads((device / "KIT.json").read_text())
    assert manifest["python_version"] == "3.12" and manifest["total_mib"] <= 60
    assert {w["name"] for w in manifest["wheels"]} >= {"lensdask", "dask", "zarr", "pcodec", "lenstronomy"}
    assert all(
        re.search(r"-(cp312-cp312|cp3\d+-abi3|py3(12)?-none|py2\.py3-none)-", w["file"]) for w in manifest["wheels"]
    )
    out = tmp_path / "check"
    res = subprocess.run(
        [sys.executable, script, "rehearse", "--kit", str(tmp_path / "kit"), "--device-kit", str(device)]
        + ["--check-out", str(out)],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    check_cpu_report(json.loads((out / "gpu_report.json").read_text()), installed=True)
    result = json.loads(res.stdout[res.stdout.rindex("\n{\n") :])
    assert result["device_kit"]["same_versions"] >= 20
    assert set(result["left_out_unmet"]) <= set(gpu_kit.LEFT_OUT)
    assert "torch==" + md.version("torch") in result["image_packages"]
    assert not any(p.startswith(("dask==", "zarr==", "imagecodecs==")) for p in result["image_packages"])
    smoke = result["smoke"]
    assert "lensdask-rehearsal-" in smoke["lensdask"]  # imported from the venv, not from the checkout
    assert smoke["search_rows"] == 24 and smoke["crossmatched"] and smoke["model"].startswith("vit-lens-tiny")
    assert smoke["store_from"] == "imagecodecs"  # written with imagecodecs here, read through pcodec there
