"""One command for one device call: check every GPU path of lensdask and measure it, in under 8 minutes.

A lent GPU machine is bare, reaches no registry and is lent for minutes, so this script does
everything at once and always leaves a report, whatever fails::

    benchmarks/gpu_check.sh                       # on the GPU machine: OUT=$OUT, the kit in .whl/
    benchmarks/gpu_check.sh --cpu --tiny          # anywhere: the same steps on the CPU, a few hundred cutouts

(``gpu_check.sh`` runs this file; ``python benchmarks/gpu_check.py --help`` lists the options.)

Steps, each in a process of its own under its own time limit (a step that overruns is killed,
its worker processes with it, and the next one starts), all within one budget (``--budget``):

``env``
    Python and torch versions, the GPUs CUDA shows, and which needed packages this Python lacks
    (one line), before anything is installed.
``install``
    The kit (``.whl/``, from ``make gpu-kit``) into a temporary site (``--site``) with no index; then
    what is still missing (only what the kit leaves out on purpose may be).
``gpu_tests``
    The tests marked ``gpu``.
``data``
    A mock survey with its truth (lenstronomy, through a LocalCluster), and a larger store of its
    cutouts for throughput.
``search-<model>``
    For the default model, ``vit-small`` and ``vit-base`` (``test-vit`` with ``--tiny``), in fp32 and
    bf16 with batch size ``auto``, through a LocalCluster with one GPU worker: a search of the mock
    survey (its scores, and a warm worker), the bare forward pass on that worker (normalised
    batches already on the device), then the timed search of the large store; cutouts/s, their
    ratio to the bare forward pass, and the worker's peak GPU memory.
``scores``
    CPU scores of the same rows (the whole mock survey for the default model, its first tile for
    the others): the largest difference from the GPU's fp32 scores (at most 1e-3 to pass), the
    bf16 drift, and AUROC against the truth on CPU, GPU fp32 and GPU bf16.
``train-<arch>``
    Training throughput of ``vit-small`` and ``vit-base`` in bf16 (forward, loss, backward, AdamW on
    batches already on the device) for about a minute each.
``recipe``
    ``lensdask.train`` as the default model was trained (its architecture, batch, learning rate,
    augmentation, classes) on a labelled store of its size, for a few epochs; the time of the
    full recipe projected from them.

``$OUT/gpu_report.json`` is rewritten after every step (schema :data:`SCHEMA`), and
``$OUT/gpu_summary.txt`` and ``$OUT/gpu_check.log`` (every step's output) with it. The exit
status is 0 when every step that ran passed.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import json
import math
import os
import pathlib
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
SCHEMA = "lensdask.gpu_check/1"
DES_CUTOUTS = 320_000_000
MATCH_TOLERANCE = 1e-3
"""Largest difference between GPU fp32 and CPU scores of the same rows that passes."""


@dataclasses.dataclass
class Config:
    """Sizes and limits of one check (see :func:`make_config`)."""

    mode: str  # "gpu" or "cpu"
    tiny: bool
    device: str
    mock_tiles: int
    mock_per_tile: int
    lens_fraction: float
    big_tiles: int
    big_per_tile: int
    models: list[str]
    precisions: list[str]
    batch_size: str
    bare_seconds: float
    cpu_rows: int  # rows of the non-default models that the CPU scores too (first mock tile)
    train_archs: list[str]
    train_batch: int
    train_seconds: float
    recipe_rows: int
    recipe_epochs: int
    recipe_full_epochs: int
    budget: float
    limits: dict[str, float]
    wheels: str | None
    site: str


GPU_LIMITS = {
    "env": 60,
    "install": 120,
    "gpu_tests": 120,
    "data": 150,
    "search-default": 75,
    "search-vit-small": 90,
    "search-vit-base": 120,
    "scores": 90,
    "train-vit-small": 90,
    "train-vit-base": 90,
    "recipe": 150,
}
"""Seconds each step may take on the GPU machine; all of them together are held to the budget."""

CPU_LIMITS = {
    "env": 60,
    "install": 120,
    "gpu_tests": 240,
    "data": 240,
    "search-default": 240,
    "search-test-vit": 240,
    "scores": 180,
    "train-test-vit": 120,
    "recipe": 240,
}


def make_config(a: argparse.Namespace) -> Config:
    """The configuration for the mode the command line asks for."""
    gpu = not a.cpu
    if a.tiny:
        models, archs = ["default", "test-vit"], ["test-vit"]
        sizes = dict(
            mock_tiles=2,
            mock_per_tile=96,
            lens_fraction=0.1,
            big_tiles=2,
            big_per_tile=128,
            bare_seconds=0.5,
            cpu_rows=96,
            train_batch=32,
            train_seconds=2.0,
            recipe_rows=256,
            recipe_epochs=1,
        )
    else:
        models, archs = ["default", "vit-small", "vit-base"], ["vit-small", "vit-base"]
        sizes = dict(
            mock_tiles=4,
            mock_per_tile=1000,
            lens_fraction=0.05,
            big_tiles=16,
            big_per_tile=4096,
            bare_seconds=3.0,
            cpu_rows=1000,
            train_batch=256,
            train_seconds=45.0,
            recipe_rows=32000,
            recipe_epochs=2,
        )
    if a.recipe_epochs is not None:
        sizes["recipe_epochs"] = a.recipe_epochs
    if a.train_seconds is not None:
        sizes["train_seconds"] = a.train_seconds
    limits = dict(GPU_LIMITS if gpu and not a.tiny else CPU_LIMITS)
    for item in a.limit or []:
        name, _, seconds = item.partition("=")
        limits[name] = float(seconds)
    return Config(
        mode="gpu" if gpu else "cpu",
        tiny=bool(a.tiny),
        device="cuda" if gpu else "cpu",
        models=models,
        precisions=["fp32", "bf16"],
        batch_size="auto",
        train_archs=archs,
        recipe_full_epochs=20,
        budget=float(a.budget if a.budget is not None else (450 if gpu else 900)),
        limits=limits,
        wheels=a.wheels,
        site=a.site,
        **sizes,
    )


def step_names(cfg: Config) -> list[str]:
    """Every step, in the order run: what the project most needs first."""
    return [
        "env",
        "install",
        "gpu_tests",
        "data",
        *[f"search-{m}" for m in cfg.models],
        "scores",
        *[f"train-{a}" for a in cfg.train_archs],
        "recipe",
    ]


# -- the orchestrator: stdlib only, so that it runs before anything is installed ----------------------------------
class Orchestrator:
    """Runs the steps one after another, each under its limit, and keeps the report on disk."""

    def __init__(self, cfg: Config, out: pathlib.Path, work: pathlib.Path, only: list[str] | None):
        self.cfg, self.out, self.work = cfg, out, work
        self.names = [n for n in step_names(cfg) if only is None or n in only]
        self.t0 = time.monotonic()
        self.report: dict = {
            "schema": SCHEMA,
            "mode": cfg.mode,
            "tiny": cfg.tiny,
            "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "config": dataclasses.asdict(cfg),
            "steps": {},
        }
        self.pythonpath = [str(REPO)]  # the checkout's lensdask is what is checked; the kit's site follows it
        self.current: subprocess.Popen | None = None

    def write(self) -> None:
        """The report, summary and log as they stand (atomically: a reader never sees half a file)."""
        self.report["wall_s"] = round(time.monotonic() - self.t0, 1)
        for name, text in (
            ("gpu_report.json", json.dumps(self.report, indent=2)),
            ("gpu_summary.txt", summary(self.report)),
        ):
            tmp = self.out / f".{name}.tmp"
            tmp.write_text(text + "\n")
            os.replace(tmp, self.out / name)

    def run(self) -> int:
        self.write()
        for name in self.names:
            self.report["steps"][name] = self.run_step(name)
            self.write()
        self.report["finished"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        self.write()
        print(summary(self.report), flush=True)
        bad = [n for n, s in self.report["steps"].items() if s["status"] not in ("ok", "not needed")]
        return 1 if bad else 0

    def run_step(self, name: str) -> dict:
        left = self.cfg.budget - (time.monotonic() - self.t0)
        limit = min(float(self.cfg.limits.get(name, 120)), left)
        if name == "install" and not self.cfg.wheels:
            return {"status": "not needed", "why": "no kit given (--wheels): this Python's own packages are used"}
        if left < 5:  # too little to start a step and end it cleanly
            return {"status": "skipped", "why": f"out of time: {left:.0f} s of the {self.cfg.budget:.0f} s budget left"}
        result_path = self.work / "steps" / f"{name}.json"
        result_path.parent.mkdir(parents=True, exist_ok=True)
        result_path.unlink(missing_ok=True)
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        # env reads the image as it is; every later step sees the checkout, then the kit's site
        env["PYTHONPATH"] = "" if name == "env" else os.pathsep.join(self.pythonpath)
        cmd = [sys.executable, str(pathlib.Path(__file__).resolve()), "--run-step", name, "--work", str(self.work)]
        log = self.out / "gpu_check.log"
        t = time.monotonic()
        status = "ok"
        with open(log, "a") as f:
            f.write(f"\n===== {name} (limit {limit:.0f} s) =====\n")
            f.flush()
            # a session of its own: on a timeout the whole group goes, LocalCluster workers included
            self.current = subprocess.Popen(
                cmd, cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT, start_new_session=True
            )
            try:
                rc = self.current.wait(timeout=limit)
            except subprocess.TimeoutExpired:
                status, rc = "timeout", None
            finally:
                end_group(self.current)
                self.current = None
        seconds = round(time.monotonic() - t, 1)
        cap_log(log)
        result = json.loads(result_path.read_text()) if result_path.exists() else {}
        if status == "ok" and rc != 0:
            status = "failed"
        if status == "ok" and result.get("failed"):
            status = "failed"
        out = {**result, "status": status, "seconds": seconds, "limit_s": round(limit, 1)}
        if status != "ok":
            out["log_tail"] = tail(log, 25)
        if name == "install" and status == "ok":
            self.pythonpath.append(self.cfg.site)
        print(f"gpu_check: {name}: {status} in {seconds} s", flush=True)
        return out


def end_group(proc: subprocess.Popen) -> None:
    """End a step's process group: TERM, then KILL whatever is left a few seconds later."""
    for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            continue
        # the step itself has gone; its group may not have
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        return


LOG_MAX_BYTES = 8 * 2**20
"""A device call brings back files of at most 16 MiB: a longer log keeps its end."""


def cap_log(path: pathlib.Path) -> None:
    """Cut ``path`` to its last :data:`LOG_MAX_BYTES` / 2 bytes once it is longer than :data:`LOG_MAX_BYTES`."""
    if path.stat().st_size > LOG_MAX_BYTES:
        with open(path, "rb") as f:
            f.seek(-LOG_MAX_BYTES // 2, os.SEEK_END)
            end = f.read()
        path.write_bytes(b"[... earlier output cut ...]\n" + end)


def tail(path: pathlib.Path, lines: int) -> str:
    text = path.read_text(errors="replace").splitlines()
    return "\n".join(text[-lines:])


def fmt(x, spec: str = ",.0f") -> str:
    return "n/a" if x is None or (isinstance(x, float) and not math.isfinite(x)) else format(x, spec)


def summary(report: dict) -> str:
    """A few lines for a person: what ran, what failed, the figures."""
    steps = report["steps"]
    env = steps.get("env", {})
    gpus = ", ".join(g["name"] for g in env.get("gpus", [])) or "no GPU"
    lines = [
        f"lensdask GPU check ({report['mode']}{', tiny' if report['tiny'] else ''}): {gpus}; "
        f"Python {env.get('python', '?')}, torch {env.get('torch', '?')}; {report.get('wall_s', 0):.0f} s "
        f"of a {report['config']['budget']:.0f} s budget"
    ]
    for name, s in steps.items():
        head = f"{name}: {s['status']}" + (f" in {s['seconds']} s" if "seconds" in s else "")
        detail = ""
        if name == "env":
            detail = s.get("missing_line", "")
        elif name == "install":
            detail = s.get("why", "") or s.get("missing_line", "")
        elif name == "gpu_tests":
            detail = s.get("counts_line", "")
        elif name == "data":
            mock, big = s.get("mock", {}), s.get("big", {})
            detail = f"mock survey {mock.get('cutouts', '?')} cutouts, large store {big.get('cutouts', '?')}"
        elif name == "scores":
            detail = "; ".join(
                f"{r['model']}: fp32 max |GPU-CPU| {fmt(r.get('fp32_max_abs_diff'), '.1e')} "
                f"({'within' if r.get('fp32_match') else 'NOT within'} {MATCH_TOLERANCE:g}), "
                f"bf16 max drift {fmt(r.get('bf16_max_abs_diff'), '.1e')}, AUROC cpu {fmt(r.get('auroc_cpu'), '.4f')} "
                f"bf16 {fmt(r.get('auroc_bf16'), '.4f')}"
                for r in s.get("models", [])
            )
        elif name.startswith("train-"):
            rate = fmt(s.get("train_cutouts_per_s"))
            detail = f"{rate} cutouts/s ({s.get('precision', '?')}, batch {s.get('batch_size', '?')})"
        elif name == "recipe":
            detail = (
                f"{s.get('epochs', '?')} epochs of {fmt(s.get('train_rows'))} rows in "
                f"{fmt(s.get('train_seconds'), '.1f')} s; "
                f"{s.get('full_epochs', '?')} epochs ~ {fmt(s.get('projected_full_s'))} s"
            )
        if s.get("why") and name != "install":
            detail = s["why"]
        if s["status"] not in ("ok", "not needed") and s.get("error"):
            detail = f"{detail} {s['error']}".strip()
        lines.append(f"{head}{': ' + detail if detail else ''}")
        for r in s.get("runs", []) if name.startswith("search-") else []:
            lines.append(
                f"    {r['precision']:>4}  {fmt(r.get('cutouts_per_s')):>9} cutouts/s end to end  "
                f"{fmt(r.get('bare_cutouts_per_s')):>9} bare  ratio {fmt(r.get('ratio'), '.2f')}  "
                f"batch {r.get('batch_size', '?')}  peak GPU {fmt(r.get('gpu_peak_allocated_gib'), '.2f')} GiB"
            )
    return "\n".join(lines)


# -- the steps: each runs in its own process and writes what it found as it goes ------------------------------------
class Step:
    """Where a step writes: ``record`` merges into its JSON file at once, so a killed step leaves what it had."""

    def __init__(self, work: pathlib.Path, name: str):
        self.work, self.name = work, name
        self.cfg = Config(**json.loads((work / "config.json").read_text()))
        self.path = work / "steps" / f"{name}.json"
        self.data: dict = {}

    def record(self, **kw) -> None:
        self.data.update(kw)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=2, default=_json_default))
        os.replace(tmp, self.path)


def _json_default(x):
    if hasattr(x, "item"):
        return x.item()
    return str(x)


def _kit_manifest(cfg: Config) -> dict | None:
    if cfg.wheels and (pathlib.Path(cfg.wheels) / "KIT.json").exists():
        return json.loads((pathlib.Path(cfg.wheels) / "KIT.json").read_text())
    return None


def needed_packages(cfg: Config) -> tuple[list[str], dict[str, list[str]], dict[str, str]]:
    """``(names, image requirements, left out)``: what lensdask needs here, from the kit's manifest or this
    Python's installed lensdask."""
    manifest = _kit_manifest(cfg)
    if manifest is not None:
        names = [w["name"] for w in manifest["wheels"]] + list(manifest["from_image"])
        return sorted(set(names)), manifest["from_image"], manifest["left_out"]
    import gpu_kit

    plan = gpu_kit.plan_kit("{}.{}".format(*sys.version_info[:2]))
    return sorted({*plan.wheels, *plan.from_image, "lensdask"}), plan.from_image, plan.left_out


def missing_and_conflicts(names, from_image) -> tuple[list[str], list[str]]:
    """Which of ``names`` this Python lacks, and which image requirements its installed versions break."""
    import importlib.metadata as md

    missing, conflicts = [], []
    for name in names:
        try:
            version = md.version(name)
        except md.PackageNotFoundError:
            missing.append(name)
            continue
        for spec in from_image.get(name, []):
            text = spec.split(" (from ")[0]
            if text == "any":
                continue
            try:
                from packaging.specifiers import SpecifierSet

                if version not in SpecifierSet(text, prereleases=True):
                    conflicts.append(f"{name} {version} does not meet {spec}")
            except ImportError:
                break
    return missing, conflicts


def installed_versions(names) -> dict[str, str | None]:
    """The installed version of each of ``names`` (None where it is not installed)."""
    import importlib.metadata as md

    out: dict[str, str | None] = {}
    for name in sorted(names):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = None
    return out


def step_env(s: Step) -> None:
    """The image as it is: versions, GPUs, and what is missing."""
    s.record(
        python=platform.python_version(),
        executable=sys.executable,
        platform=platform.platform(),
        glibc="-".join(platform.libc_ver()),
        cpus=os.cpu_count(),
    )
    try:
        import torch

        gpus = []
        if torch.cuda.is_available():
            for i in range(torch.cuda.device_count()):
                p = torch.cuda.get_device_properties(i)
                gpus.append(
                    {
                        "name": p.name,
                        "capability": f"{p.major}.{p.minor}",
                        "memory_gib": round(p.total_memory / 2**30, 1),
                        "multiprocessors": p.multi_processor_count,
                    }
                )
        s.record(
            torch=torch.__version__,
            torch_cuda=torch.version.cuda,
            cuda_available=torch.cuda.is_available(),
            gpus=gpus,
            bf16_supported=bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported()),
        )
    except ImportError as exc:
        s.record(torch=None, error=f"torch does not import: {exc}", failed=True)
    names, from_image, left_out = needed_packages(s.cfg)
    missing, conflicts = missing_and_conflicts(names, from_image)
    s.record(
        image_versions=installed_versions(from_image),
        needed=len(names),
        missing=missing,
        missing_line=f"missing here ({len(missing)} of {len(names)} needed): {', '.join(missing) or 'none'}",
        image_conflicts=conflicts,
        left_out_by_the_kit=sorted(left_out),
    )
    if s.cfg.mode == "gpu" and not s.data.get("cuda_available"):
        s.record(failed=True, error="CUDA is not visible to torch")


def step_install(s: Step) -> None:
    """The kit into ``site`` with no index; then what is still missing."""
    import importlib

    wheels = sorted(str(p) for p in pathlib.Path(s.cfg.wheels).glob("*.whl"))
    if not wheels:
        s.record(failed=True, error=f"no wheels in {s.cfg.wheels}: run make gpu-kit where a registry is reachable")
        return
    shutil.rmtree(s.cfg.site, ignore_errors=True)
    cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile", "--no-cache-dir"]
    res = subprocess.run([*cmd, "--target", s.cfg.site, *wheels], capture_output=True, text=True)
    s.record(wheels=len(wheels), pip_returncode=res.returncode, pip_output=(res.stdout + res.stderr)[-2000:])
    if res.returncode != 0:
        s.record(failed=True, error="pip install of the kit failed")
        return
    sys.path.insert(0, s.cfg.site)
    importlib.invalidate_caches()
    names, from_image, left_out = needed_packages(s.cfg)
    missing, conflicts = missing_and_conflicts(names, from_image)
    unexpected = [m for m in missing if m not in left_out]
    s.record(
        still_missing=missing,
        missing_line=f"still missing: {', '.join(missing) or 'none'} (left out: {', '.join(sorted(left_out))})",
        image_conflicts=conflicts,
    )
    if unexpected:
        s.record(failed=True, error=f"needed but neither in the image nor in the kit: {', '.join(unexpected)}")


def step_gpu_tests(s: Step) -> None:
    """The tests marked ``gpu`` (on a CPU they skip, saying why)."""
    files = sorted(str(p.relative_to(REPO)) for p in (REPO / "tests").rglob("test_*.py") if "mark.gpu" in p.read_text())
    cmd = [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider", "-rs", *files]
    res = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    out = res.stdout + res.stderr
    print(out[-6000:])
    counts = {k: 0 for k in ("passed", "failed", "skipped", "error", "deselected")}
    last = [line for line in out.splitlines() if re.search(r"\d+ (passed|failed|skipped|error|deselected)", line)]
    for n, what in re.findall(r"(\d+) (passed|failed|skipped|errors?|deselected)", last[-1] if last else ""):
        counts[what.rstrip("s") if what.startswith("error") else what] += int(n)
    s.record(
        files=files,
        returncode=res.returncode,
        counts=counts,
        counts_line=", ".join(f"{v} {k}" for k, v in counts.items() if v),
    )
    if res.returncode != 0 or (s.cfg.mode == "gpu" and (counts["skipped"] or not counts["passed"])):
        s.record(failed=True, error=f"pytest exit {res.returncode}; {s.data['counts_line']}")


def _cluster(cfg: Config, gpu_worker: bool):
    """A LocalCluster and its client: one worker that holds the GPU, or one CPU worker per core."""
    from distributed import Client, LocalCluster

    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if gpu_worker:
        kw: dict = dict(n_workers=1, threads_per_worker=1 if cfg.mode == "gpu" else cpus)
        if cfg.mode == "gpu":
            kw["resources"] = {"GPU": 1}
    else:
        kw = dict(n_workers=cpus, threads_per_worker=1)
    cluster = LocalCluster(processes=True, dashboard_address="127.0.0.1:0", memory_limit=0, **kw)
    return cluster, Client(cluster)


def _replicate(source, url: str, tiles: int, per_tile: int, *, classes=None, first_id: int, seed: int) -> float:
    """Write a store of ``tiles`` x ``per_tile`` cutouts drawn from ``source``'s pixels, tiles in parallel threads.

    Each cutout is one of the source's, turned by a multiple of 90 degrees, so the pixels (and what the
    codec makes of them) stay those of the mock survey. With ``classes``, rows get random labels.
    Returns the seconds taken.
    """
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np
    import pandas as pd

    from lensdask.store import create_store, open_store

    t0 = time.perf_counter()
    pix = np.concatenate([source.read_tile(t).images for t in source.written_tiles()])
    kw = {"classes": classes} if classes else {}
    create_store(
        url,
        tiles=[f"T{t:04d}" for t in range(tiles)],
        capacity=per_tile,
        bands=source.bands,
        pixel_scale=source.pixel_scale,
        stamp=source.stamp,
        overwrite=True,
        **kw,
    )

    def write(t: int) -> None:
        rng = np.random.default_rng(seed + t)
        pick = rng.integers(0, len(pix), per_tile)
        img = np.rot90(pix[pick], k=t % 4, axes=(2, 3)).copy()
        table = {
            "object_id": first_id + t * per_tile + np.arange(per_tile),
            "ra": rng.uniform(0, 1, per_tile),
            "dec": rng.uniform(0, 1, per_tile),
        }
        if classes:
            table["label"] = rng.integers(0, len(classes), per_tile)
        open_store(url, mode="r+").write_tile(t, img, pd.DataFrame(table))

    threads = min(tiles, max(1, (os.cpu_count() or 1)))
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(write, range(tiles)))
    return time.perf_counter() - t0


def step_data(s: Step) -> None:
    """The mock survey (with truth) and the large store of its cutouts."""
    import pandas as pd

    import lensdask
    from lensdask.store import open_store
    from lensdask.survey.mock import mock_survey

    cfg = s.cfg
    s.record(lensdask=lensdask.__file__)
    t0 = time.perf_counter()
    many = (os.cpu_count() or 1) >= 4  # lenstronomy in processes; on a small machine threads start faster
    cluster, client = _cluster(cfg, gpu_worker=False) if many else (None, None)
    try:
        store, truth = mock_survey(
            s.work / "mock.zarr",
            cfg.mock_tiles,
            cfg.mock_per_tile,
            cfg.lens_fraction,
            seed=0,
            client=client,
            overwrite=True,
            progress=False,
        )
    finally:
        if cluster is not None:
            client.close()
            cluster.close()
    lenses = int(pd.read_parquet(truth)["is_lens"].sum())
    s.record(
        mock={
            "tiles": cfg.mock_tiles,
            "cutouts": int(store.counts.sum()),
            "lenses": lenses,
            "seconds": round(time.perf_counter() - t0, 1),
        }
    )
    big = str(s.work / "big.zarr")
    sec = _replicate(open_store(s.work / "mock.zarr"), big, cfg.big_tiles, cfg.big_per_tile, first_id=10**9, seed=1)
    size = sum(f.stat().st_size for f in pathlib.Path(big).rglob("*") if f.is_file())
    s.record(
        big={
            "tiles": cfg.big_tiles,
            "cutouts": cfg.big_tiles * cfg.big_per_tile,
            "seconds": round(sec, 1),
            "mib": round(size / 2**20, 1),
        }
    )


def model_dir(work: pathlib.Path, name: str) -> tuple[str, str]:
    """``(directory, weights sha256)`` of a model of the check: the shipped default, or a random one of ``name``."""
    from lensdask.model.checkpoint import default_model_dir, read_card, untrained_checkpoint

    if name == "default":
        d = default_model_dir()
        return str(d), read_card(d)["sha256"]
    d = work / "models" / name
    card = read_card(d) if (d / "model_card.json").exists() else untrained_checkpoint(d, name)
    return str(d), card["sha256"]


def bare_forward(
    model: str, sha: str, device: str, precision: str, batch_size, store_url: str, rows: int, seconds: float
) -> dict:
    """On the worker: the model's own speed, on normalised batches of the store already on the device."""
    import numpy as np
    import torch

    from lensdask.model.infer import autocast, input_size, resize, resolve_batch_size
    from lensdask.search.worker import get_model
    from lensdask.store import open_store

    net, card, dev = get_model(model, sha, device)
    bs = resolve_batch_size(batch_size, dev)
    batches, n = [], 0
    for inputs, _ in open_store(store_url).iter_normalised(bs, [card.get("normalisation")]):
        batches.append(torch.from_numpy(np.ascontiguousarray(inputs.inputs[0])).to(dev))
        n += len(batches[-1])
        if n >= rows:
            break
    size = input_size(card)

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    with torch.inference_mode(), autocast(dev, precision):
        torch.softmax(net(resize(batches[0], size)).float(), 1).cpu()  # warm: kernels chosen, memory pooled
        sync()
        t0, done = time.perf_counter(), 0
        while True:
            for xb in batches:
                torch.softmax(net(resize(xb, size)).float(), 1).cpu()  # as the search does: probabilities back
            done += n
            if time.perf_counter() - t0 >= seconds:
                break
        sync()
        elapsed = time.perf_counter() - t0
    return {"bare_cutouts_per_s": done / elapsed, "batch_size": bs, "bare_cutouts": done}


def worker_memory(reset: bool = False) -> dict:
    """On the worker: its peak GPU memory since the last reset (and its resident memory)."""
    import psutil
    import torch

    out = {"worker_rss_gib": psutil.Process().memory_info().rss / 2**30}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        free, total = torch.cuda.mem_get_info()
        out.update(
            gpu_peak_allocated_gib=torch.cuda.max_memory_allocated() / 2**30,
            gpu_peak_reserved_gib=torch.cuda.max_memory_reserved() / 2**30,
            gpu_used_gib=(total - free) / 2**30,
            gpu_total_gib=total / 2**30,
        )
        if reset:
            torch.cuda.reset_peak_memory_stats()
    return out


def step_search(s: Step, model: str) -> None:
    """One model, both precisions: mock survey, bare forward pass, timed search of the large store."""
    import lensdask
    from lensdask.model.checkpoint import read_card

    cfg = s.cfg
    mdir, sha = model_dir(s.work, model)
    card = read_card(mdir)
    s.record(model=model, arch=card["arch"], model_dir=mdir, runs=[])
    cluster, client = _cluster(cfg, gpu_worker=True)
    big = str(s.work / "big.zarr")
    try:
        for precision in cfg.precisions:
            run: dict = {"precision": precision}
            common = dict(
                client=client,
                device=cfg.device,
                precision=precision,
                batch_size=cfg.batch_size,
                floor=0.0,
                crossmatch=False,
                progress=False,
            )
            # the mock survey: its scores for the comparison with the CPU, and a warm worker (model loaded,
            # kernels chosen); with the Dask performance report (bokeh), which the timed search leaves out
            t = time.perf_counter()
            mock_run = s.work / "runs" / f"{model}-{precision}-mock"
            lensdask.search(s.work / "mock.zarr", model=mdir, out=mock_run, report=True, **common)
            run["mock_seconds"] = round(time.perf_counter() - t, 2)
            run["performance_report"] = (mock_run / "dask-report.html").is_file()
            fut = client.submit(
                bare_forward,
                mdir,
                sha,
                cfg.device,
                precision,
                cfg.batch_size,
                big,
                cfg.big_per_tile * 4,
                cfg.bare_seconds,
                pure=False,
                resources={"GPU": 1} if cfg.mode == "gpu" else None,
            )
            run.update(fut.result())
            client.run(worker_memory, True)
            t = time.perf_counter()
            big_run = s.work / "runs" / f"{model}-{precision}-big"
            res = lensdask.search(big, model=mdir, out=big_run, report=False, **common)
            call = time.perf_counter() - t
            mem = next(iter(client.run(worker_memory).values()))
            rows = int(res.summary["rows"])
            rate = rows / float(res.summary["seconds"])
            run.update(
                cutouts=rows,
                seconds=res.summary["seconds"],
                cutouts_per_s=rate,
                call_seconds=round(call, 2),
                call_cutouts_per_s=rows / call,
                ratio=rate / run["bare_cutouts_per_s"],
                des_320M_hours=DES_CUTOUTS / rate / 3600,
                failed_tiles=len(res.summary["tiles_failed"]),
                **mem,
            )
            s.data["runs"].append({k: (round(v, 4) if isinstance(v, float) else v) for k, v in run.items()})
            s.record()
            if run["failed_tiles"]:
                s.record(failed=True, error=f"{run['failed_tiles']} tiles failed in the {precision} search")
    finally:
        client.close()
        cluster.close()


def step_scores(s: Step) -> None:
    """CPU scores of the same rows against the GPU's fp32 and bf16 scores, and AUROC on the truth."""
    import numpy as np
    import pandas as pd

    from lensdask.model.metrics import auroc
    from lensdask.rundir import read_scores
    from lensdask.search.run import search_tile
    from lensdask.store import open_store
    from lensdask.survey.mock import default_truth_path

    cfg = s.cfg
    store = open_store(s.work / "mock.zarr")
    truth = pd.read_parquet(default_truth_path(store.url))[["object_id", "is_lens"]]
    results = []
    s.record(models=results)
    for model in cfg.models:
        runs = {p: s.work / "runs" / f"{model}-{p}-mock" for p in cfg.precisions}
        if not all((d / "tiles").is_dir() for d in runs.values()):
            results.append({"model": model, "error": "no GPU scores (its search step did not finish)"})
            s.record(failed=True)
            continue
        mdir, sha = model_dir(s.work, model)
        ref = s.work / "runs" / f"{model}-cpu"
        tiles = store.written_tiles() if model == "default" else store.written_tiles()[:1]
        t = time.perf_counter()
        for tile in tiles:
            search_tile(store.url, tile, mdir, sha, str(ref), device="cpu", precision="fp32", floor=0.0, batch_size=64)
        cpu_seconds = time.perf_counter() - t
        table = read_scores(ref)[["object_id", "score"]].rename(columns={"score": "cpu"})
        for p, d in runs.items():
            table = table.merge(read_scores(d)[["object_id", "score"]].rename(columns={"score": p}), on="object_id")
        table = table.merge(truth, on="object_id")
        fp32 = np.abs(table["fp32"] - table["cpu"])
        bf16 = np.abs(table["bf16"] - table["fp32"])
        r = {
            "model": model,
            "rows": len(table),
            "cpu_seconds": round(cpu_seconds, 2),
            "fp32_max_abs_diff": float(fp32.max()),
            "fp32_match": bool(fp32.max() <= MATCH_TOLERANCE),
            "bf16_max_abs_diff": float(bf16.max()),
            "bf16_mean_abs_diff": float(bf16.mean()),
            "bf16_vs_cpu_max_abs_diff": float(np.abs(table["bf16"] - table["cpu"]).max()),
            "lenses": int(table["is_lens"].sum()),
        }
        for col in ("cpu", "fp32", "bf16"):
            r[f"auroc_{col}"] = auroc(table["is_lens"].to_numpy(bool), table[col].to_numpy())
        r["auroc_change_bf16"] = r["auroc_bf16"] - r["auroc_fp32"]
        results.append(r)
        s.record(models=results)
        if len(table) == 0 or not r["fp32_match"]:
            s.record(
                failed=True, error=f"{model}: GPU fp32 scores differ from CPU scores by {r['fp32_max_abs_diff']:.2e}"
            )


def step_train(s: Step, arch: str) -> None:
    """Training throughput of ``arch``: bf16 autocast on CUDA (float32 weights), batches already on the device."""
    import torch

    from lensdask.model.architectures import arch_kwargs, build_vit
    from lensdask.model.infer import autocast, resolve_device

    cfg = s.cfg
    dev = resolve_device(cfg.device)
    if dev.type == "cuda":  # as lensdask.train sets them
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    torch.manual_seed(0)
    model = build_vit(arch_kwargs(arch, in_chans=4, img_size=45, num_classes=2)).to(dev).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    loss_fn = torch.nn.CrossEntropyLoss()
    x = torch.randn(cfg.train_batch, 4, 45, 45, device=dev)
    y = torch.randint(0, 2, (cfg.train_batch,), device=dev)

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    def steps(n: int):
        for _ in range(n):
            with autocast(dev):  # bf16 on CUDA, as lensdask.train
                loss = loss_fn(model(x).float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        sync()
        return loss

    s.record(
        arch=arch,
        precision="bf16" if dev.type == "cuda" else "fp32",
        batch_size=cfg.train_batch,
        params=sum(p.numel() for p in model.parameters()),
        device=str(dev),
    )
    t = time.perf_counter()
    steps(3)
    s.record(warmup_s=round(time.perf_counter() - t, 2))
    t0, n, chunk = time.perf_counter(), 0, 1
    while time.perf_counter() - t0 < cfg.train_seconds:
        loss = steps(chunk)
        n += chunk
        chunk = min(chunk * 2, 20)  # few syncs, yet the time checked often enough
        elapsed = time.perf_counter() - t0
        s.record(steps=n, timed_s=round(elapsed, 2), train_cutouts_per_s=round(n * cfg.train_batch / elapsed, 1))
    if not torch.isfinite(loss.detach()):
        s.record(failed=True, error=f"non-finite loss {float(loss)}")
    if dev.type == "cuda":
        s.record(gpu_peak_allocated_gib=round(torch.cuda.max_memory_allocated(dev) / 2**30, 2))


def step_recipe(s: Step) -> None:
    """``lensdask.train`` as the default model was trained, on a labelled store of its size, for a few epochs."""
    from lensdask.model.checkpoint import default_model_dir, read_card
    from lensdask.model.train import train
    from lensdask.store import open_store

    cfg = s.cfg
    card = read_card(default_model_dir())
    rec = card["training"]
    url = str(s.work / "recipe.zarr")
    tiles = max(1, cfg.recipe_rows // 4000)
    per_tile = -(-cfg.recipe_rows // tiles)
    sec = _replicate(
        open_store(s.work / "mock.zarr"), url, tiles, per_tile, classes=card["classes"], first_id=2 * 10**9, seed=7
    )
    s.record(
        store_rows=tiles * per_tile,
        store_seconds=round(sec, 1),
        arch=card["arch"],
        batch_size=rec["batch_size"],
        epochs=cfg.recipe_epochs,
        full_epochs=cfg.recipe_full_epochs,
    )
    t = time.perf_counter()
    out = train(
        url,
        s.work / "recipe-model",
        arch=card["arch"],
        epochs=cfg.recipe_epochs,
        batch_size=rec["batch_size"],
        learning_rate=rec["learning_rate"],
        validation_fraction=rec["validation_fraction"],
        seed=rec["seed"],
        device=cfg.device,
        patience=0,  # random labels: every epoch is run, as the recipe ran all 20
        balance=False,
        progress=False,
    )
    seconds = time.perf_counter() - t
    per_epoch = seconds / cfg.recipe_epochs
    s.record(
        train_rows=out["training"]["n_train"],
        train_seconds=round(seconds, 2),
        seconds_per_epoch=round(per_epoch, 2),
        train_cutouts_per_s=round(out["training"]["n_train"] * cfg.recipe_epochs / seconds, 1),
        # an upper bound: the set-up (reading the store into memory) is counted in every epoch
        projected_full_s=round(per_epoch * cfg.recipe_full_epochs, 1),
    )


def run_step(name: str, work: pathlib.Path) -> int:
    """Run one step in this process; an exception is recorded before it propagates."""
    s = Step(work, name)
    s.record()
    try:
        if name == "env":
            step_env(s)
        elif name == "install":
            step_install(s)
        elif name == "gpu_tests":
            step_gpu_tests(s)
        elif name == "data":
            step_data(s)
        elif name.startswith("search-"):
            step_search(s, name[len("search-") :])
        elif name == "scores":
            step_scores(s)
        elif name.startswith("train-"):
            step_train(s, name[len("train-") :])
        elif name == "recipe":
            step_recipe(s)
        else:
            raise ValueError(f"unknown step {name!r}")
    except BaseException as exc:
        s.record(failed=True, error=f"{type(exc).__name__}: {exc}"[:1000])
        raise
    return 1 if s.data.get("failed") else 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=os.environ.get("OUT") or "gpu-check-out", help="report folder (default $OUT)")
    p.add_argument("--cpu", action="store_true", help="run every step on the CPU (no GPU needed)")
    p.add_argument("--tiny", action="store_true", help="a few hundred cutouts and the test architecture (CI)")
    p.add_argument(
        "--wheels", default=None, help="the kit to install first (default .whl when it exists, unless --cpu)"
    )
    p.add_argument("--site", default="/tmp/lensdask-gpu-site", help="where the kit is installed (default %(default)s)")
    p.add_argument("--budget", type=float, default=None, help="seconds for all steps (default 450 on a GPU, 900 --cpu)")
    p.add_argument("--limit", action="append", metavar="STEP=SECONDS", help="another time limit for one step")
    p.add_argument("--steps", default=None, help="comma-separated steps to run (default all)")
    p.add_argument("--recipe-epochs", type=int, default=None, help="epochs of the recipe step (default 2; 1 --tiny)")
    p.add_argument("--train-seconds", type=float, default=None, help="timed seconds of each train step")
    p.add_argument("--work", default=None, help="working folder (default a temporary one, removed)")
    p.add_argument("--run-step", default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.run_step:
        return run_step(a.run_step, pathlib.Path(a.work))
    if a.wheels is None and not a.cpu and (REPO / ".whl").is_dir():
        a.wheels = str(REPO / ".whl")
    cfg = make_config(a)
    out = pathlib.Path(a.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_check.log").write_text("")
    with contextlib.ExitStack() as stack:
        work = (
            pathlib.Path(a.work)
            if a.work
            else pathlib.Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="lensdask-gpu-check-")))
        )
        work.mkdir(parents=True, exist_ok=True)
        (work / "config.json").write_text(json.dumps(dataclasses.asdict(cfg)))
        orch = Orchestrator(cfg, out, work, a.steps.split(",") if a.steps else None)

        def stop(signum, frame):  # the device call's own limit: end the step in hand, keep the report
            raise KeyboardInterrupt

        signal.signal(signal.SIGTERM, stop)
        try:
            return orch.run()
        except KeyboardInterrupt:
            if orch.current is not None:
                end_group(orch.current)
            orch.report["interrupted"] = True
            orch.write()
            return 130


if __name__ == "__main__":
    sys.exit(main())
