"""The GPU kit: the wheels lensdask needs on a machine whose image lacks them and that reaches no registry.

A lent GPU machine comes bare, with no package registry, and with an image that already holds
PyTorch, timm, numpy, pandas and the rest of :data:`IMAGE_PACKAGES`, but not dask, distributed,
zarr, astropy, lenstronomy and the like. Everything else lensdask needs travels with the working
tree as wheels, at most 64 MiB for the whole tree, so the kit is held to 60 MiB.

Three commands::

    python benchmarks/gpu_kit.py build                 # .whl/: the wheels for Python 3.12, manylinux x86-64
    python benchmarks/gpu_kit.py build --python-version 3.11 --dest build/gpu-kit-py311
    python benchmarks/gpu_kit.py rehearse              # a venv of the image's packages only, the kit, a CPU search

(``make gpu-kit`` and ``make gpu-kit-rehearsal`` run the first and the last.)

**What goes in.** The dependency closure of the installed lensdask (its Requires-Dist, followed
through each distribution's own, markers evaluated for the target Python on Linux x86-64), minus
what the image has, minus :data:`LEFT_OUT` (declared dependencies that lensdask never imports, or
that do not fit), plus :data:`ADDED`, plus lensdask itself as a wheel built from this checkout.
Each wheel is pinned to the version installed where the kit is built, the one the tests ran
against; a distribution not installed here is taken at its newest version. A distribution that
publishes no wheel (lenstronomy) is built here and must come out pure Python. ``KIT.json`` beside
the wheels lists them, their sizes and hashes, what was left out and why, and the requirements
that the image must meet.

**The rehearsal** proves that the kit installs where nothing can be fetched. It makes a venv and
links into it only the image's packages as installed here (file by file, from each one's RECORD:
no copy, no download, seconds even for a CUDA build of torch), installs the kit with
``--no-index --no-deps``, runs ``pip check`` (the only unmet requirements allowed are those of
:data:`LEFT_OUT`), and in that venv, with ``python -I`` so the checkout is not on the path: reads a
Pcodec store written with imagecodecs through the pcodec package, makes a mock survey and a
training set, trains a test model and searches the survey through a LocalCluster, with a Dask
performance report (bokeh), on the CPU.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import pathlib
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass, field

REPO = pathlib.Path(__file__).resolve().parents[1]

MAX_MIB = 60.0
"""The kit's size limit: the working tree that travels to a device call is at most 64 MiB."""

IMAGE_PACKAGES = frozenset(
    """
absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch build certifi
charset-normalizer chex click cloudpickle cmake colorama contourpy coverage cuda-bindings cuda-core cuda-pathfinder
cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops equinox etils execnet filelock flatbuffers flax fonttools
formulaic frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx huggingface-hub humanize hypothesis idna
imageio iniconfig interface-meta jax jax-cuda13-pjrt jax-cuda13-plugin jaxlib jaxtyping jinja2 joblib kiwisolver
lazy-loader lightning lightning-utilities linear-operator lineax llvmlite lxml markdown markdown-it-py markupsafe
matplotlib mdurl meson ml-dtypes mpi4py mpmath msgpack multidict multipledispatch mypy-extensions nanobind narwhals
networkx ninja numba numba-cuda numpy numpyro nvidia-cublas nvidia-cuda-cupti nvidia-cuda-nvrtc nvidia-cuda-runtime
nvidia-cudnn-cu13 nvidia-cufft nvidia-cufile nvidia-curand nvidia-cusolver nvidia-cusparse nvidia-cusparselt-cu13
nvidia-ml-py nvidia-nccl-cu13 nvidia-nvjitlink nvidia-nvshmem-cu13 nvidia-nvtx onnx onnx-ir onnxruntime onnxscript
opencv-python-headless optax opt-einsum opt-einsum-fx optimistix orbax-checkpoint packaging pandas pathspec patsy peft
pillow pip pluggy portalocker prometheus-client propcache protobuf psutil pyarrow pybind11 py-cpuinfo pygments
pyparsing pyproject-hooks pyre-extensions pytest pytest-benchmark pytest-cov pytest-mock pytest-timeout pytest-xdist
python-dateutil pytorch-lightning pyyaml regex requests rich sacrebleu safetensors scikit-build-core scikit-image
scikit-learn scipy seaborn sentencepiece sentence-transformers setuptools shellingham simplejson six sortedcontainers
statsmodels sympy tabulate tensorboard tensorboard-data-server tensorstore threadpoolctl tifffile tiktoken timm
tokenizers toolz torch torchaudio torchdiffeq torch-geometric torchmetrics torchvision tqdm transformers treescope
triton typer typing-extensions typing-inspect urllib3 uvloop wadler-lindig werkzeug wheel wrapt xarray xxhash yarl zipp
""".split()
)
"""Python distributions the lent GPU machines' image ('cuda') holds, as read on one on 2026-11-17
(the device notes' package list). The kit carries none of them; the rehearsal's venv holds only these."""

LEFT_OUT = {
    "imagecodecs": "its 26 MB wheel does not fit in 60 MiB; only the Rice codec needs it (imported on use, "
    "a LensdaskError without it); the default Pcodec codec works through the pcodec package instead",
    "ligo-skymap": "lenscat's sky-map cross-matching (with lalsuite, healpy, reproject: about 80 MB); lensdask "
    "reads lenscat's catalogue file and never imports lenscat",
    "mgefit": "11 MB, for lenstronomy's Jeans anisotropic modelling (lenstronomy.JAMPy) alone, which lensdask "
    "never uses",
    "jampy": "lenstronomy's Jeans anisotropic modelling (lenstronomy.JAMPy, with mgefit), which lensdask never uses",
}
"""Declared dependencies the kit leaves out, each with its reason. Their own dependencies are not
followed either. The rehearsal's ``pip check`` allows exactly these to be missing."""

ADDED = {"pcodec": "reads and writes the default lensdask.pcodec codec where imagecodecs is left out"}
"""Distributions the kit carries that lensdask does not declare, each with its reason."""

MANYLINUX = [
    "manylinux_2_35_x86_64",
    "manylinux_2_34_x86_64",
    "manylinux_2_31_x86_64",
    "manylinux_2_28_x86_64",
    "manylinux_2_27_x86_64",
    "manylinux_2_24_x86_64",
    "manylinux_2_17_x86_64",
    "manylinux2014_x86_64",
    "manylinux2010_x86_64",
    "manylinux_2_5_x86_64",
    "manylinux1_x86_64",
]
"""Platform tags accepted for a device kit. The image's Python is 3.12.3 (Ubuntu 24.04's, glibc 2.39),
so any manylinux up to 2.35 runs there; pip matches each tag exactly, hence the list."""


def canonical(name: str) -> str:
    """PEP 503 name: lower case, runs of ``-``, ``_`` and ``.`` made one ``-``."""
    return re.sub(r"[-_.]+", "-", name).lower()


def marker_environment(python_version: str) -> dict[str, str]:
    """The PEP 508 marker environment of CPython ``python_version`` on Linux x86-64."""
    full = python_version if python_version.count(".") >= 2 else f"{python_version}.0"
    return {
        "python_version": ".".join(python_version.split(".")[:2]),
        "python_full_version": full,
        "implementation_name": "cpython",
        "implementation_version": full,
        "platform_python_implementation": "CPython",
        "platform_system": "Linux",
        "platform_machine": "x86_64",
        "sys_platform": "linux",
        "os_name": "posix",
        "platform_release": "",
        "platform_version": "",
    }


@dataclass
class Plan:
    """What a kit holds.

    Attributes
    ----------
    python_version : str
        The target Python, ``MAJOR.MINOR``.
    wheels : dict
        Canonical name -> ``{"version": pinned version or None, "why": who needs it}``.
    from_image : dict
        Canonical name -> the requirement specifiers that kit distributions put on it.
    left_out : dict
        Canonical name -> reason, for the :data:`LEFT_OUT` names that something required.
    """

    python_version: str
    wheels: dict[str, dict] = field(default_factory=dict)
    from_image: dict[str, list[str]] = field(default_factory=dict)
    left_out: dict[str, str] = field(default_factory=dict)


def _requirements(dist_name: str, extras: set[str], env: dict[str, str]):
    """The requirements of the installed ``dist_name`` that apply under ``env`` with ``extras``."""
    import importlib.metadata as md

    from packaging.requirements import Requirement

    for text in md.requires(dist_name) or []:
        req = Requirement(text)
        if req.marker is None or any(req.marker.evaluate({**env, "extra": e}) for e in {"", *extras}):
            yield req


def plan_kit(python_version: str = "3.12", root: str = "lensdask") -> Plan:
    """Walk ``root``'s installed dependency closure and sort it into kit, image and left out.

    Parameters
    ----------
    python_version : str
        Target Python (markers are evaluated for it, on Linux x86-64).
    root : str
        The distribution whose needs the kit meets; it must be installed where this runs.

    Returns
    -------
    Plan

    Raises
    ------
    SystemExit
        A kit dependency is not installed here, so neither its version nor its own needs are known.
    """
    import importlib.metadata as md

    env = marker_environment(python_version)
    plan = Plan(".".join(python_version.split(".")[:2]))
    seen: dict[str, set[str]] = {}
    stack: list[tuple[str, set[str], str]] = [(root, set(), "the kit's root")]
    for name, why in ADDED.items():
        stack.append((name, set(), why))
    while stack:
        name, extras, why = stack.pop()
        key = canonical(name)
        if key in seen and extras <= seen[key]:
            continue
        seen[key] = seen.get(key, set()) | extras
        try:
            version = md.version(name)
        except md.PackageNotFoundError:
            version = None
        if key != canonical(root):
            entry = plan.wheels.setdefault(key, {"version": version, "why": why})
            if why not in entry["why"].split("; "):
                entry["why"] = f"{entry['why']}; {why}"
        if version is None:
            if key in ADDED:  # not a lensdask dependency: taken at its newest, its needs read from nothing
                continue
            raise SystemExit(f"gpu_kit: {name} (needed: {why}) is not installed here; install lensdask first")
        for req in _requirements(name, extras, env):
            dep = canonical(req.name)
            if dep in LEFT_OUT:
                plan.left_out[dep] = LEFT_OUT[dep]
            elif dep in IMAGE_PACKAGES:
                specs = plan.from_image.setdefault(dep, [])
                spec = f"{req.specifier} (from {key})" if str(req.specifier) else f"any (from {key})"
                if spec not in specs:
                    specs.append(spec)
            else:
                stack.append((req.name, set(req.extras), f"needed by {key}"))
    return plan


def _pip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    """Run this Python's pip quietly; its output is returned, and shown when it fails."""
    cmd = [sys.executable, "-m", "pip", *args]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if check and res.returncode != 0:
        noise = re.compile(r"^WARNING: Location .* is ignored")
        err = "\n".join(line for line in (res.stdout + res.stderr).splitlines() if not noise.match(line))
        raise SystemExit(f"gpu_kit: {' '.join(cmd)} failed:\n{err[-3000:]}")
    return res


def _platform_args(python_version: str) -> list[str]:
    """pip download options that pick wheels for CPython ``python_version`` on manylinux x86-64.

    For the running Python (the rehearsal's kit) none: pip then takes the tags this interpreter
    accepts, which also keeps out wheels newer than this machine's glibc.
    """
    if python_version == "{}.{}".format(*sys.version_info[:2]):
        return []
    args = ["--python-version", python_version, "--implementation", "cp"]
    for tag in MANYLINUX:
        args += ["--platform", tag]
    return args


def _wheel_name(path: pathlib.Path) -> tuple[str, str, str]:
    """``(canonical name, version, tags)`` read off a wheel's file name."""
    parts = path.name[: -len(".whl")].split("-")
    return canonical(parts[0]), parts[1], "-".join(parts[-3:])


def _fetch(name: str, version: str | None, python_version: str, dest: pathlib.Path) -> pathlib.Path:
    """Download the wheel of ``name==version`` for the target into ``dest``, or build a pure one.

    Raises
    ------
    SystemExit
        No wheel for the target, and what the source distribution builds is not pure Python.
    """
    spec = f"{name}=={version}" if version else name
    with tempfile.TemporaryDirectory(dir=dest) as tmp:
        got = _pip(
            "download",
            "-q",
            "--no-deps",
            "--only-binary=:all:",
            *_platform_args(python_version),
            "-d",
            tmp,
            spec,
            check=False,
        )
        if got.returncode != 0:
            # no wheel published (lenstronomy ships a source distribution only): build it here, pure Python or nothing
            _pip("wheel", "-q", "--no-deps", "-w", tmp, spec)
        (wheel,) = pathlib.Path(tmp).glob("*.whl")
        _, _, tags = _wheel_name(wheel)
        if got.returncode != 0 and not tags.endswith("-none-any"):
            raise SystemExit(f"gpu_kit: {spec} has no wheel for Python {python_version} and builds a binary one here")
        target = dest / wheel.name
        shutil.move(str(wheel), target)
    return target


def build_lensdask_wheel(dest: pathlib.Path) -> pathlib.Path:
    """A wheel of this checkout's lensdask (pure Python, with its package data), built from a clean copy.

    A copy, so that nothing is written into the working tree and no stale ``build/`` leaks into the wheel.
    """
    with tempfile.TemporaryDirectory() as tmp:
        src = pathlib.Path(tmp) / "src"
        src.mkdir()
        for item in ("setup.cfg", "pyproject.toml", "README.md"):
            shutil.copy2(REPO / item, src / item)
        shutil.copytree(REPO / "lensdask", src / "lensdask", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        out = pathlib.Path(tmp) / "out"
        # no build isolation: the setuptools installed here builds it, with no download
        _pip("wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(out), str(src))
        (wheel,) = out.glob("lensdask-*.whl")
        with zipfile.ZipFile(wheel) as z:
            names = set(z.namelist())
        for needed in ("lensdask/data/default_model/model.safetensors", "lensdask/lensdask.yaml"):
            if needed not in names:
                raise SystemExit(f"gpu_kit: the lensdask wheel lacks {needed}")
        target = dest / wheel.name
        target.unlink(missing_ok=True)
        shutil.move(str(wheel), target)
    return target


def _sha256(path: pathlib.Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def build(python_version: str = "3.12", dest: str | os.PathLike = REPO / ".whl", max_mib: float = MAX_MIB) -> dict:
    """Fill ``dest`` with the kit's wheels for ``python_version`` and write ``dest/KIT.json``.

    Wheels already in ``dest`` at the pinned version are kept (no download); any other wheel
    there is removed, so the folder holds one version of each distribution.

    Returns
    -------
    dict
        The manifest written to ``KIT.json``.

    Raises
    ------
    SystemExit
        A wheel cannot be had, or the kit is larger than ``max_mib``.
    """
    t0 = time.perf_counter()
    dest = pathlib.Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    plan = plan_kit(python_version)
    have = {_wheel_name(p)[:2]: p for p in dest.glob("*.whl")}
    keep: dict[str, pathlib.Path] = {}
    for name, entry in sorted(plan.wheels.items()):
        version = entry["version"]
        found = [p for (n, v), p in have.items() if n == name and (version is None or v == version)]
        if found:
            keep[name] = found[0]
        else:
            keep[name] = _fetch(name, version, plan.python_version, dest)
            print(f"gpu_kit: {keep[name].name}", flush=True)
    keep["lensdask"] = build_lensdask_wheel(dest)
    for p in dest.glob("*.whl"):
        if p not in keep.values():
            p.unlink()
    wheels = []
    for name, path in sorted(keep.items()):
        entry = plan.wheels.get(name, {"why": "the package itself"})
        wheels.append(
            {
                "name": name,
                "version": _wheel_name(path)[1],
                "file": path.name,
                "bytes": path.stat().st_size,
                "sha256": _sha256(path),
                "why": entry["why"],
            }
        )
    total = sum(w["bytes"] for w in wheels)
    manifest = {
        "python_version": plan.python_version,
        "platforms": MANYLINUX if _platform_args(plan.python_version) else ["this machine's"],
        "built_on": f"Python {platform.python_version()}, {platform.platform()}",
        "total_bytes": total,
        "total_mib": round(total / 2**20, 2),
        "max_mib": max_mib,
        "wheels": wheels,
        "left_out": plan.left_out,
        "from_image": dict(sorted(plan.from_image.items())),
        "seconds": round(time.perf_counter() - t0, 1),
    }
    (dest / "KIT.json").write_text(json.dumps(manifest, indent=2) + "\n")
    biggest = ", ".join(f"{w['file']} {w['bytes'] / 2**20:.1f}" for w in sorted(wheels, key=lambda w: -w["bytes"])[:5])
    print(f"gpu_kit: {len(wheels)} wheels for Python {plan.python_version} in {dest}: {total / 2**20:.1f} MiB")
    print(f"gpu_kit: largest (MiB): {biggest}")
    if total > max_mib * 2**20:
        raise SystemExit(f"gpu_kit: the kit is {total / 2**20:.1f} MiB, over its {max_mib:g} MiB limit")
    return manifest


# -- the rehearsal -------------------------------------------------------------------------
def image_here(kit: set[str]) -> set[str]:
    """The :data:`IMAGE_PACKAGES` installed here, with the installed distributions they need.

    The image is whole: whatever its packages need, it has. Here they may be other versions that
    need other distributions (a newer huggingface-hub needs httpx2), so those come along, unless
    the kit carries them or leaves them out on purpose: then the rehearsal would hide a gap.
    """
    import importlib.metadata as md

    env = marker_environment("{}.{}.{}".format(*sys.version_info[:3]))
    names = {canonical(d.metadata["Name"] or ""): d.metadata["Name"] for d in md.distributions()}
    todo = [n for n in IMAGE_PACKAGES if n in names]
    out: set[str] = set()
    while todo:
        name = todo.pop()
        if name in out:
            continue
        out.add(name)
        for req in _requirements(names[name], set(), env):
            dep = canonical(req.name)
            if dep in names and dep not in out and dep not in kit and dep not in LEFT_OUT:
                todo.append(dep)
    return out


def link_image_packages(site: pathlib.Path, image: set[str], skip: set[str]) -> list[str]:
    """Symlink into ``site`` every file of the distributions ``image`` installed in this environment.

    File by file from each distribution's RECORD, so that a folder two distributions share (a
    namespace package) gets only the image's files. Scripts and anything outside site-packages
    are left out. ``skip``: canonical names the venv already holds (pip, setuptools).

    Returns
    -------
    list of str
        The distributions linked, ``name==version``.
    """
    import importlib.metadata as md

    linked: list[str] = []
    done: set[str] = set()
    for dist in md.distributions():
        name = canonical(dist.metadata["Name"] or "")
        if name not in image or name in skip or name in done:
            continue
        done.add(name)
        base = pathlib.Path(str(dist.locate_file(""))).resolve()
        for rel in dist.files or []:
            if rel.parts[0] == ".." or str(rel).endswith(".pyc"):
                continue
            src, dst = base / rel, site / rel
            if not src.exists() or dst.exists():
                continue
            dst.parent.mkdir(parents=True, exist_ok=True)
            os.symlink(src, dst)
        linked.append(f"{name}=={dist.version}")
    return sorted(linked)


def _venv_site(venv: pathlib.Path) -> pathlib.Path:
    py = venv / "bin" / "python"
    out = subprocess.run(
        [str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    )
    return pathlib.Path(out.stdout.strip())


def unmet_requirements(venv: pathlib.Path) -> list[tuple[str, str, str]]:
    """``pip check`` in ``venv``: ``(distribution, requirement, problem)`` for each unmet requirement."""
    res = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "check"], capture_output=True, text=True)
    out = []
    for line in res.stdout.splitlines():
        m = re.match(r"^(\S+) \S+ requires (\S+?),? which is not installed", line)
        if m:
            out.append((canonical(m.group(1)), canonical(re.split(r"[<>=!~\[; ]", m.group(2))[0]), "missing"))
            continue
        m = re.match(r"^(\S+) \S+ has requirement (\S+?)[<>=!~\[; ,].*, but you have", line)
        if m:
            out.append((canonical(m.group(1)), canonical(m.group(2)), line))
    return out


def compare_kits(mine: dict, theirs: dict) -> dict:
    """Check that two kits (``KIT.json`` manifests) for two Pythons hold the same distributions.

    They must pin every distribution both hold to one version; a distribution only one holds must
    be one that only its Python needs (a marker: dask needs importlib-metadata below 3.12).

    Returns
    -------
    dict
        ``{"same_versions": n, "only_<python>": [...]}``.

    Raises
    ------
    SystemExit
        The kits disagree: the older one needs ``make gpu-kit`` again.
    """
    a = {w["name"]: w["version"] for w in mine["wheels"]}
    b = {w["name"]: w["version"] for w in theirs["wheels"]}
    differ = {n: (a[n], b[n]) for n in a.keys() & b.keys() if a[n] != b[n]}
    need_a = set(plan_kit(mine["python_version"]).wheels) | {"lensdask"}
    need_b = set(plan_kit(theirs["python_version"]).wheels) | {"lensdask"}
    unexplained = sorted((a.keys() - b.keys()) & need_b) + sorted((b.keys() - a.keys()) & need_a)
    if differ or unexplained:
        raise SystemExit(
            f"gpu_kit: the kits for Python {mine['python_version']} and {theirs['python_version']} disagree "
            f"(versions {differ}, missing from one {unexplained}): run make gpu-kit again"
        )
    return {
        "same_versions": len(a.keys() & b.keys()),
        f"only_{mine['python_version']}": sorted(a.keys() - b.keys()),
        f"only_{theirs['python_version']}": sorted(b.keys() - a.keys()),
    }


def rehearse(
    kit: str | os.PathLike | None = None,
    device_kit: str | os.PathLike | None = None,
    keep: str | None = None,
    check_out: str | os.PathLike | None = None,
) -> dict:
    """Install the kit where only the image's packages are, with no index, and use it as the device would.

    Parameters
    ----------
    kit : path, optional
        The kit for this machine's Python (default ``build/gpu-kit-pyXY``, built or refreshed first).
    device_kit : path, optional
        The device kit (``.whl``); when it exists, it must hold the same distributions at the same versions.
    keep : path, optional
        Make the venv here and keep it (default: a temporary folder, removed).
    check_out : path, optional
        Where the GPU check run in the venv writes its report (default: inside the temporary folder).

    Returns
    -------
    dict
        What was checked and how long each part took.

    Raises
    ------
    SystemExit
        Any part failed.
    """
    t0 = time.perf_counter()
    times: dict[str, float] = {}
    here = "{}.{}".format(*sys.version_info[:2])
    kit = pathlib.Path(kit) if kit else REPO / "build" / f"gpu-kit-py{here.replace('.', '')}"
    manifest = build(here, kit)
    times["kit"] = round(time.perf_counter() - t0, 1)
    result: dict = {"python": platform.python_version(), "kit": str(kit), "kit_mib": manifest["total_mib"]}
    if device_kit and (pathlib.Path(device_kit) / "KIT.json").exists():
        dev = json.loads((pathlib.Path(device_kit) / "KIT.json").read_text())
        result["device_kit"] = {"path": str(device_kit), "mib": dev["total_mib"], **compare_kits(manifest, dev)}
    with contextlib.ExitStack() as stack:
        tmp = pathlib.Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="lensdask-rehearsal-")))
        venv = pathlib.Path(keep) if keep else tmp / "venv"
        shutil.rmtree(venv, ignore_errors=True)
        t = time.perf_counter()
        base = getattr(sys, "_base_executable", sys.executable)
        subprocess.run([base, "-m", "venv", str(venv)], check=True)
        site = _venv_site(venv)
        have = {canonical(p.name.split("-")[0]) for p in site.glob("*.dist-info")}
        kit_names = {w["name"] for w in manifest["wheels"]}
        result["image_packages"] = link_image_packages(site, image_here(kit_names), have)
        times["venv"] = round(time.perf_counter() - t, 1)
        py = str(venv / "bin" / "python")
        clean_env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "OUT")}

        # 1. the device's command, on the CPU: image check, the kit into a site with no index, every step
        t = time.perf_counter()
        out = pathlib.Path(check_out) if check_out else tmp / "gpu-check"
        check = [py, str(REPO / "benchmarks" / "gpu_check.py"), "--cpu", "--tiny", "--out", str(out)]
        res = subprocess.run([*check, "--wheels", str(kit), "--site", str(tmp / "site")], env=clean_env)
        report = json.loads((out / "gpu_report.json").read_text())
        statuses = {n: st["status"] for n, st in report["steps"].items()}
        result["gpu_check"] = {"report": str(out / "gpu_report.json"), "statuses": statuses}
        if res.returncode != 0:
            raise SystemExit(f"gpu_kit: the GPU check (CPU mode) failed in the rehearsal venv: {statuses}")
        times["gpu_check"] = round(time.perf_counter() - t, 1)

        # 2. the kit installed into the venv itself: pip check, then lensdask from its wheel alone
        t = time.perf_counter()
        wheels = sorted(str(p) for p in kit.glob("*.whl"))
        subprocess.run(
            [py, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile", *wheels], check=True
        )
        unmet = [u for u in unmet_requirements(venv) if u[0] in kit_names]
        bad = [u for u in unmet if u[2] != "missing" or u[1] not in LEFT_OUT]
        if bad:
            raise SystemExit(f"gpu_kit: requirements of the kit that neither it nor the image meets: {bad}")
        result["left_out_unmet"] = sorted({u[1] for u in unmet})
        data = tmp / "data"
        data.mkdir()
        written = _pcodec_store_here(data)
        # -I: neither the checkout nor PYTHONPATH on the path, and cwd a scratch folder: only the venv's
        # lensdask can import
        res2 = subprocess.run(
            [py, "-I", str(pathlib.Path(__file__).resolve()), "smoke", "--data", str(data)],
            cwd=data,
            capture_output=True,
            text=True,
            env=clean_env,
        )
        if res2.returncode != 0:
            raise SystemExit(f"gpu_kit: the smoke run in the rehearsal venv failed:\n{res2.stderr[-6000:]}")
        result["smoke"] = {**json.loads(res2.stdout.strip().splitlines()[-1]), "store_from": written}
        times["smoke"] = round(time.perf_counter() - t, 1)
    times["total"] = round(time.perf_counter() - t0, 1)
    result["seconds"] = times
    print(json.dumps(result, indent=2))
    return result


def _pcodec_store_here(data: pathlib.Path) -> str:
    """Write a small Pcodec store with this environment's coder, and its pixels as read here, into ``data``."""
    import numpy as np
    import pandas as pd

    from lensdask.codecs import pcodec_backend
    from lensdask.store import create_store

    rng = np.random.default_rng(3)
    s = create_store(data / "here.zarr", tiles=["T0"], capacity=24, bands="griz", pixel_scale=0.263, stamp=45)
    img = rng.normal(0, 1, (24, 4, 45, 45)).astype(np.float32) * rng.uniform(0.5, 5, (24, 4, 1, 1)).astype(np.float32)
    table = pd.DataFrame({"object_id": np.arange(24), "ra": rng.uniform(0, 1, 24), "dec": rng.uniform(0, 1, 24)})
    s.write_tile(0, img, table)
    np.save(data / "here.npy", s.read_tile(0).images)
    return pcodec_backend().__name__


def smoke(data: str) -> dict:
    """What the rehearsal runs inside its venv with ``python -I``: lensdask from the kit's wheel alone.

    Reads a Pcodec store written with imagecodecs (through pcodec: imagecodecs must be absent) and
    searches it with the default model shipped in the wheel, known lenses cross-matched.
    """
    import importlib.util

    import numpy as np

    import lensdask
    from lensdask.store import open_store

    d = pathlib.Path(data)
    if importlib.util.find_spec("imagecodecs") is not None:
        raise SystemExit("imagecodecs is importable in the rehearsal venv: the kit must do without it")
    got = open_store(d / "here.zarr").read_tile(0).images
    if not np.array_equal(got, np.load(d / "here.npy")):
        raise SystemExit("a Pcodec store written with imagecodecs reads differently through pcodec")
    result = lensdask.search(d / "here.zarr", out=d / "run", device="cpu", floor=0.0, progress=False)
    scores = result.scores()
    if len(scores) != 24 or not np.isfinite(scores["score"]).all():
        raise SystemExit(f"search scored {len(scores)} rows, expected 24 finite scores")
    return {
        "lensdask": lensdask.__file__,
        "search_rows": len(scores),
        "model": result.summary["model_id"],
        "crossmatched": result.summary.get("known_lenses") is not None,
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="download and build the kit's wheels")
    b.add_argument("--python-version", default="3.12", help="target Python, MAJOR.MINOR (default 3.12, the image's)")
    b.add_argument("--dest", default=str(REPO / ".whl"), help="the kit's folder (default .whl)")
    b.add_argument("--max-mib", type=float, default=MAX_MIB, help="fail above this size (default %(default)s)")
    r = sub.add_parser("rehearse", help="install the kit into a venv of the image's packages only, and use it")
    r.add_argument("--kit", default=None, help="this Python's kit (default build/gpu-kit-pyXY, made or refreshed)")
    r.add_argument("--device-kit", default=str(REPO / ".whl"), help="the device kit to compare (default .whl)")
    r.add_argument("--keep", default=None, help="make the venv here and keep it")
    r.add_argument("--check-out", default=None, help="where the GPU check in the venv writes its report")
    s = sub.add_parser("smoke", help="(run by rehearse inside its venv)")
    s.add_argument("--data", required=True)
    sub.add_parser("plan", help="print what the kit would hold, without downloading")
    a = p.parse_args(argv)
    if a.command == "build":
        build(a.python_version, a.dest, a.max_mib)
    elif a.command == "rehearse":
        rehearse(a.kit, a.device_kit, a.keep, a.check_out)
    elif a.command == "smoke":
        print(json.dumps(smoke(a.data)))
    else:
        plan = plan_kit()
        print(json.dumps({"wheels": plan.wheels, "left_out": plan.left_out, "from_image": plan.from_image}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
