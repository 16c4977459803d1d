"""The one place that turns a cluster specification into a Dask client.

Only the CLI and notebooks create clusters; library functions take a ``client=``
or use the current one (:func:`current_client`).

Specifications
--------------
``local``
    A ``LocalCluster`` sized by ``lensdask.cluster.*``.
``tcp://HOST:PORT`` (or ``tls://``, ``ucx://``, ``inproc://``)
    A scheduler that is already running.
``htcondor``, ``htcondor-gpu``, ``slurm``, ``slurm-gpu``
    A dask-jobqueue ``HTCondorCluster`` / ``SLURMCluster`` built from the profile that
    ``lensdask.cluster.profiles.<spec>`` names (``lensdask-slurm``, ...). The scheduler
    runs in this process; workers are batch jobs.
``htcondor:PROFILE``, ``slurm:PROFILE``
    The same, with the dask-jobqueue profile ``jobqueue.PROFILE``.

Profiles come from ``lensdask/jobqueue.yaml``, installed with the package (or the file named by
``lensdask.cluster.jobqueue_file``), overridden key by key by a profile of the same name in the
user's Dask configuration.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import pathlib
import re
import shlex
import sys

from . import config
from .deprecation import renamed_keywords
from .errors import ClusterError

BATCH_KINDS = ("htcondor", "slurm")
SPECS = (
    "'local', a scheduler address 'tcp://HOST:PORT', 'htcondor', 'htcondor-gpu', 'slurm', 'slurm-gpu', "
    "or 'htcondor:PROFILE' / 'slurm:PROFILE'"
)
# Keys a lensdask profile must set itself (the rest fall back to dask-jobqueue's defaults).
REQUIRED_KEYS = {
    "htcondor": ("cores", "memory", "processes", "death-timeout", "worker-extra-args", "scheduler-options"),
    "slurm": ("cores", "memory", "processes", "death-timeout", "worker-extra-args", "scheduler-options", "walltime"),
}
DEFAULT_JOBQUEUE_FILE = pathlib.Path(__file__).resolve().parent / "jobqueue.yaml"


def current_client():
    """The active ``distributed.Client``, or None when there is none."""
    try:
        from distributed import get_client

        return get_client()
    except (ImportError, ValueError):
        return None


# -- specifications and profiles -------------------------------------------------------------------


def parse_spec(spec: str | None) -> tuple[str, str | None]:
    """Split a cluster specification into ``(kind, profile)``.

    ``kind`` is ``"local"``, ``"address"``, ``"htcondor"`` or ``"slurm"``; ``profile`` is the
    dask-jobqueue profile name for the batch kinds, else None. An empty or None ``spec`` is local.

    Raises
    ------
    ClusterError
        For an unknown specification.
    """
    spec = (spec or "local").strip()
    if spec == "local":
        return "local", None
    if re.match(r"^(tcp|tls|ucx|inproc)://", spec):
        return "address", None
    kind, sep, profile = spec.partition(":")
    if sep and kind in BATCH_KINDS and profile:
        return kind, profile
    profiles = config.get("cluster.profiles") or {}
    if not sep and spec in profiles:
        kind = spec.split("-", 1)[0]
        if kind not in BATCH_KINDS:
            raise ClusterError(
                f"lensdask.cluster.profiles.{spec} names {profiles[spec]!r}, but '{spec}' does not start with "
                f"one of {', '.join(BATCH_KINDS)}"
            )
        return kind, str(profiles[spec])
    raise ClusterError(f"unknown cluster {spec!r}: use {SPECS} (profiles: lensdask.cluster.profiles)")


def jobqueue_file() -> pathlib.Path | None:
    """The profile file in use: ``lensdask.cluster.jobqueue_file``, else the package's ``jobqueue.yaml``."""
    path = config.get("cluster.jobqueue_file")
    if path:
        path = pathlib.Path(os.path.expanduser(str(path)))
        if not path.is_file():
            raise ClusterError(f"lensdask.cluster.jobqueue_file: no such file {path}")
        return path
    return DEFAULT_JOBQUEUE_FILE if DEFAULT_JOBQUEUE_FILE.is_file() else None


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_profile(kind: str, name: str) -> dict:
    """The complete dask-jobqueue profile ``name`` for a batch system ``kind``.

    File profile, overridden by the user's ``jobqueue.<name>`` in ``dask.config``, checked for
    :data:`REQUIRED_KEYS`, then completed with dask-jobqueue's defaults for ``kind``.

    Raises
    ------
    ClusterError
        The profile does not exist, or lacks a required key (the message names
        ``jobqueue.<name>.<key>``).
    """
    import dask.config
    import dask_jobqueue  # noqa: F401  (loads dask-jobqueue's own defaults into dask.config)
    import yaml

    path = jobqueue_file()
    from_file: dict = {}
    if path is not None:
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ClusterError(f"cannot parse the jobqueue profiles in {path}: {exc}") from exc
        from_file = (data.get("jobqueue") or {}).get(name) or {}
    from_user = dask.config.get(f"jobqueue.{name}", default=None) or {}
    if not from_file and not from_user:
        where = f"{path} or " if path else ""
        raise ClusterError(
            f"no dask-jobqueue profile 'jobqueue.{name}' in {where}the Dask configuration; add one, or point "
            f"lensdask.cluster.jobqueue_file at a file that has it"
        )
    profile = _merge(copy.deepcopy(from_file), from_user)
    missing = [k for k in REQUIRED_KEYS[kind] if k not in profile]
    if missing:
        where = f" (file {path})" if path else ""
        raise ClusterError("missing profile key " + ", ".join(f"jobqueue.{name}.{k}" for k in missing) + where)
    for key in ("cores", "memory"):
        if profile.get(key) in (None, ""):
            raise ClusterError(f"profile key jobqueue.{name}.{key} must be set (it is empty)")
    base = copy.deepcopy(dask.config.get(f"jobqueue.{kind}", default={}) or {})
    return _merge(base, profile)


@contextlib.contextmanager
def _profile_in_config(name: str, profile: dict):
    """Put the complete profile in ``dask.config`` while a cluster lives (new jobs re-read it)."""
    import dask.config

    with dask.config.set({f"jobqueue.{name}": profile}):
        yield


def make_batch_cluster(kind: str, name: str, **kwargs):
    """A dask-jobqueue cluster for ``kind`` from profile ``name``; submits nothing until scaled.

    The caller must keep the profile in ``dask.config`` while the cluster lives: use
    :func:`batch_cluster` (or :func:`cluster_client`) rather than this directly.
    """
    from dask_jobqueue import HTCondorCluster, SLURMCluster

    cls = {"htcondor": HTCondorCluster, "slurm": SLURMCluster}[kind]
    tls = "security" not in kwargs and bool(config.get("cluster.tls"))
    if tls:
        from distributed.security import Security

        # Temporary credentials, made for this cluster only: workers prove themselves with them, and
        # nobody who merely reaches the scheduler's port can run code (lensdask.cluster.tls).
        kwargs["security"] = Security.temporary()
        kwargs.setdefault("protocol", "tls://")
    try:
        with _tls_directory(kind, name, tls) as scratch:
            cluster = cls(config_name=name, **kwargs)
    except KeyError as exc:
        key = str(exc).strip("'\"")
        raise ClusterError(f"missing profile key {key} (dask-jobqueue could not read it)") from exc
    except ValueError as exc:
        raise ClusterError(f"profile jobqueue.{name}: {exc}") from exc
    except OSError as exc:  # the credentials could not be written
        raise ClusterError(f"profile jobqueue.{name}.shared-temp-directory: {exc}") from exc
    if tls and kind == "htcondor":
        _transfer_credentials(cluster, name, scratch)
    return cluster


_CREDENTIAL_KEYS = ("ca_file", "cert", "key")


@contextlib.contextmanager
def _tls_directory(kind: str, name: str, tls: bool):
    """Make the folder that dask-jobqueue writes the workers' temporary credentials into.

    Slurm: ``jobqueue.<profile>.shared-temp-directory`` on the shared filesystem, created
    private (0700). HTCondor: pools need not share a filesystem, so the profile names
    ``$_CONDOR_SCRATCH_DIR`` (the job's own directory, where HTCondor puts transferred files);
    on the submit side that variable is pointed at a fresh private folder while the
    credentials are written, and yielded so they can be listed in ``transfer_input_files``.
    """
    import dask.config

    if not tls:
        yield None
        return
    shared = dask.config.get(f"jobqueue.{name}.shared-temp-directory", default=None)
    if shared is None:
        raise ClusterError(
            f"TLS (lensdask.cluster.tls) needs jobqueue.{name}.shared-temp-directory: a folder workers can "
            f"read the temporary credentials from (see deploy/README.md)"
        )
    if kind == "htcondor" and "_CONDOR_SCRATCH_DIR" in str(shared) and "_CONDOR_SCRATCH_DIR" not in os.environ:
        import tempfile

        scratch = tempfile.mkdtemp(prefix="lensdask-tls-")  # 0700
        os.environ["_CONDOR_SCRATCH_DIR"] = scratch
        try:
            yield scratch
        finally:
            del os.environ["_CONDOR_SCRATCH_DIR"]
        return
    path = os.path.expanduser(os.path.expandvars(str(shared)))
    os.makedirs(path, mode=0o700, exist_ok=True)
    yield path


def _transfer_credentials(cluster, name: str, scratch) -> None:
    """HTCondor: ship the credential files with every worker job (``transfer_input_files``)."""
    import weakref

    handles = [getattr(cluster, f"_job_{k}") for k in _CREDENTIAL_KEYS if hasattr(cluster, f"_job_{k}")]
    files = [h.name for h in handles]
    if not files:
        return
    import dask.config

    # dask-jobqueue reads the profile's directives when the keyword is not given: start from them
    extra = cluster._job_kwargs.get("job_extra_directives")
    if extra is None:
        extra = dask.config.get(f"jobqueue.{name}.job-extra-directives", default=None)
    extra = dict(extra or {})
    given = [f for f in str(extra.get("transfer_input_files", "")).split(",") if f.strip()]
    extra["transfer_input_files"] = ",".join(given + files)
    extra.setdefault("should_transfer_files", "YES")
    cluster._job_kwargs["job_extra_directives"] = extra
    if scratch is not None and pathlib.Path(scratch).name.startswith("lensdask-tls-"):
        weakref.finalize(cluster, _remove_credentials, handles, scratch)


def _remove_credentials(handles, scratch) -> None:
    for h in handles:  # closing a temporary file deletes it
        try:
            h.close()
        except OSError:
            pass
    import shutil

    shutil.rmtree(scratch, ignore_errors=True)


@contextlib.contextmanager
def batch_cluster(spec: str, **kwargs):
    """A dask-jobqueue cluster for a batch ``spec``, with its profile in effect; closed on exit.

    Useful to inspect what would be submitted (``cluster.job_script()``) without a pool.
    """
    kind, name = parse_spec(spec)
    if kind not in BATCH_KINDS or name is None:  # a batch kind always has its profile name
        raise ClusterError(f"{spec!r} is not a batch-system cluster; use 'htcondor' or 'slurm'")
    profile = load_profile(kind, name)
    with _profile_in_config(name, profile):
        cluster = make_batch_cluster(kind, name, **kwargs)
        try:
            yield cluster
        finally:
            cluster.close()


def parse_adapt(text: str) -> tuple[int, int]:
    """``"MIN:MAX"`` → ``(MIN, MAX)`` jobs; a clear error otherwise."""
    m = re.fullmatch(r"\s*(\d+)\s*:\s*(\d+)\s*", str(text))
    if not m or int(m.group(2)) < max(1, int(m.group(1))):
        raise ClusterError(f"--adapt {text!r}: use MIN:MAX jobs with 0 <= MIN <= MAX and MAX >= 1, e.g. 1:20")
    return int(m.group(1)), int(m.group(2))


# -- clients ------------------------------------------------------------------------------------------


def _print_dashboard(client, quiet):
    if not quiet:
        print(f"Dask dashboard: {client.dashboard_link}", flush=True)


def _ready(client, quiet):
    """Show the dashboard link. The worker setup (:mod:`lensdask.workersetup`) is registered by
    :func:`lensdask.fanout.run_tiles` when a command submits its tiles (see its ``register_setup``)."""
    _print_dashboard(client, quiet)


@contextlib.contextmanager
def cluster_client(
    spec: str | None = "local",
    *,
    quiet: bool = False,
    jobs: int | None = None,
    adapt: str | tuple[int, int] | None = None,
    worker_timeout: str | float | None = None,
):
    """Open a Dask client for ``spec`` and close what was opened on exit.

    Parameters
    ----------
    spec : str, optional
        See the module docstring: ``local`` (default), ``tcp://HOST:PORT``, ``htcondor``,
        ``htcondor-gpu``, ``slurm``, ``slurm-gpu``, ``htcondor:PROFILE``, ``slurm:PROFILE``.
    quiet : bool
        Do not print the dashboard link.
    jobs : int, optional
        Batch systems: keep this many worker jobs (config ``cluster.jobs``); a job that ends
        (walltime, preemption, ``scancel``) is replaced.
    adapt : str or (int, int), optional
        Batch systems: ``"MIN:MAX"`` jobs, scaled with the work instead of ``jobs``.
    worker_timeout : str or float, optional
        Batch systems: how long to wait for the first worker to connect (config
        ``cluster.worker_timeout``); then a :class:`ClusterError` and every job is cancelled.

    Yields
    ------
    distributed.Client
        Its workers get :class:`~lensdask.workersetup.WorkerSetup` when a command submits its
        tiles (:func:`lensdask.fanout.run_tiles`), or in their first task.
    """
    from distributed import Client, LocalCluster

    kind, profile = parse_spec(spec)
    if kind != "local" and kind not in BATCH_KINDS and (jobs is not None or adapt is not None):
        raise ClusterError("--jobs and --adapt apply to --cluster htcondor|slurm only")
    if kind == "local":
        if jobs is not None or adapt is not None:
            raise ClusterError(
                "--jobs and --adapt apply to --cluster htcondor|slurm only (local: lensdask.cluster.n_workers)"
            )
        cfg = config.effective()["cluster"]
        # LocalCluster logs a warning when the preferred dashboard port is taken; it then picks another.
        logging.getLogger("distributed.node").setLevel(logging.ERROR)
        with (
            LocalCluster(
                n_workers=int(cfg["n_workers"]),
                threads_per_worker=int(cfg["threads_per_worker"]),
                dashboard_address=cfg["dashboard_address"],
                memory_limit=cfg["memory_limit"],
                processes=True,
            ) as cluster,
            Client(cluster) as client,
        ):
            _ready(client, quiet)
            yield client
        return
    if kind == "address":
        try:
            client = Client(spec, timeout="30s")
        except (OSError, ValueError) as exc:
            raise ClusterError(f"cannot reach the Dask scheduler at {spec}: {exc}") from exc
        try:
            _ready(client, quiet)
            yield client
        finally:
            client.close()
        return
    with _batch_client(kind, profile, quiet=quiet, jobs=jobs, adapt=adapt, worker_timeout=worker_timeout) as client:
        yield client


@contextlib.contextmanager
def _batch_client(kind, name, *, quiet, jobs, adapt, worker_timeout):
    from dask.utils import parse_timedelta
    from distributed import Client

    if adapt is not None and jobs is not None:
        raise ClusterError("give --jobs N or --adapt MIN:MAX, not both")
    if adapt is not None:
        lo, hi = adapt if isinstance(adapt, tuple) else parse_adapt(adapt)
    else:
        n = int(config.get("cluster.jobs", jobs))
        if n < 1:
            raise ClusterError(f"--jobs must be at least 1 (lensdask.cluster.jobs), got {n}")
        lo = hi = n
    timeout_key = "lensdask.cluster.worker_timeout"
    try:
        timeout = parse_timedelta(config.get("cluster.worker_timeout", worker_timeout))
    except (ValueError, TypeError) as exc:
        raise ClusterError(f"{timeout_key}: {exc}") from exc
    profile = load_profile(kind, name)
    with _profile_in_config(name, profile):
        cluster = make_batch_cluster(kind, name)
        client = None
        try:
            client = Client(cluster)
            # Adapting with minimum = maximum keeps N jobs alive: a job that ends is resubmitted.
            # Ask for at least one job first, so that a scheduler no worker reaches is found out now.
            cluster.adapt(minimum_jobs=max(1, lo), maximum_jobs=hi)
            try:
                client.wait_for_workers(1, timeout=timeout)
            except TimeoutError as exc:
                sched = profile.get("scheduler-options") or {}
                raise ClusterError(
                    f"no {kind} worker connected within {timeout:g} s ({timeout_key}). Check that jobs start "
                    f"(queue, jobqueue.{name}.cores/memory/queue), that workers can run "
                    f"jobqueue.{name}.python ({profile.get('python') or 'this interpreter'}), and that they "
                    f"reach the scheduler at {cluster.scheduler_address} (jobqueue.{name}.scheduler-options: "
                    f"{sched}). Every submitted job was cancelled."
                ) from exc
            if lo != max(1, lo):
                cluster.adapt(minimum_jobs=lo, maximum_jobs=hi)
            if not quiet:
                what = f"{lo}:{hi} adaptive" if adapt is not None else f"{hi}"
                print(
                    f"{kind} cluster (profile {name}): {what} worker jobs, scheduler {cluster.scheduler_address}",
                    flush=True,
                )
            _ready(client, quiet)
            yield client
        finally:
            # Closing the cluster cancels every job it submitted (condor_rm / scancel).
            if client is not None:
                client.close()
            cluster.close()


# -- HTCondor without a scheduler: one batch job per tile ----------------------------------------------


def _submit_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


@renamed_keywords(zarr="store")
def emit_htcondor_search(
    directory: str | os.PathLike,
    *,
    store: str,
    model_dir: str | list[str],
    run_dir: str,
    tiles: list[tuple[int, str]],
    threshold: float,
    floor: float,
    batch_size: int | str,
    device: str,
    spec: str = "htcondor",
    combine: str | None = None,
    prefilter: tuple[str, float] | None = None,
    prefilter_threshold: float | None = None,
    fit: bool = True,
    fit_top: int | None = None,
) -> dict:
    """Write an HTCondor submission of a search as one job per tile, plus a DAG that merges and fits.

    ``store`` is the survey store's path or URL (``zarr=`` is its deprecated old name).
    ``model_dir`` may list several models (an ensemble, with ``combine``); ``prefilter``
    is ``(model_dir, keep_fraction)`` of a cascade's first stage, with ``prefilter_threshold``.
    ``fit_top`` is how many of the best candidates the fit stage fits (config ``fit.top``);
    ``fit=False`` leaves the fit stage out, for a store that records no PSF (``lensdask fit``
    refuses it without ``--psf``, which only a person can choose: fit such a run by hand).

    Files written into ``directory``:

    ``search.sub``
        One job per line of ``tiles.txt`` (``queue tile,name from tiles.txt``), each running
        ``python -m lensdask.cli search-tile``; resources, container and extra directives from
        the dask-jobqueue profile of ``spec``.
    ``merge.sub``
        ``lensdask merge RUN_DIR`` in the local universe (on the submit machine).
    ``fit.sub``
        With ``fit``: ``lensdask fit RUN_DIR --top N`` (:mod:`lensdask.fit`) as one vanilla-universe
        job with the profile's cores, memory, disk, container and directives, but no GPU (the
        fit runs on CPUs): its chunks run on a LocalCluster of one single-threaded worker per core.
        It is retried after preemption and resumes by candidate; bad input (exit 2) or a
        candidate whose fit raised (exit 1) is not retried.
    ``search.dag``
        ``condor_submit_dag search.dag``: every tile, then the merge, then (with ``fit``) the
        fit (``PARENT merge CHILD fit``).
    ``tiles.txt``
        ``index, name`` of every tile to search.

    Returns
    -------
    dict
        Paths of the files written (``fit.sub`` only with ``fit``).
    """
    kind, name = parse_spec(spec)
    if kind != "htcondor" or name is None:  # htcondor always has its profile name
        kind, name = "htcondor", config.get("cluster.profiles")["htcondor"]
    profile = load_profile(kind, name)
    d = pathlib.Path(directory)
    (d / "logs").mkdir(parents=True, exist_ok=True)
    python = profile.get("python") or sys.executable
    extra = profile.get("job-extra-directives") or {}
    if isinstance(extra, list):  # a Slurm-style list has no meaning here
        extra = {}
    from dask.utils import parse_bytes

    mem_mb = parse_bytes(str(profile["memory"])) // 2**20
    disk_kb = parse_bytes(str(profile.get("disk") or "4GiB")) // 1024
    dirs = [model_dir] if isinstance(model_dir, (str, os.PathLike)) else list(model_dir)
    models = " ".join(f"--model {shlex.quote(str(m))}" for m in dirs)
    tile_args = (
        f"-m lensdask.cli search-tile --zarr {shlex.quote(store)} --tile $(tile) {models} "
        f"--out {shlex.quote(run_dir)} --batch-size {shlex.quote(str(batch_size))} --floor {float(floor)!r} "
        f"--device {device}"
    )
    if combine is not None and len(dirs) > 1:
        tile_args += f" --combine {shlex.quote(str(combine))}"
    if prefilter is not None:
        tile_args += f" --prefilter {shlex.quote(f'{prefilter[0]}:{float(prefilter[1])!r}')}"
        if prefilter_threshold is not None:
            tile_args += f" --prefilter-threshold {float(prefilter_threshold)!r}"
    lines = [
        f"# lensdask search as one HTCondor job per tile (profile jobqueue.{name}).",
        "# Submit everything, merge included:  condor_submit_dag search.dag",
        "# or only the tiles:                  condor_submit search.sub   (then: lensdask merge RUN_DIR)",
        "# Every job reads the store and the model and writes RUN_DIR/tiles/<tile>.parquet + .json, exactly",
        "# as a Dask tile task does. Paths must exist where jobs run (shared filesystem, or see deploy/README.md",
        "# for staging with transfer_input_files/OSDF on pools without one).",
        "universe = vanilla",
        f"executable = {python}",
        "transfer_executable = false",
        f'arguments = "{tile_args}"',
        f"request_cpus = {int(profile['cores'])}",
        f"request_memory = {mem_mb}",
        f"request_disk = {disk_kb}",
        # One tile per thread budget; torch follows OMP_NUM_THREADS.
        f'environment = "OMP_NUM_THREADS={int(profile["cores"])}"',
    ]
    lines += [f"{k} = {_submit_value(v)}" for k, v in extra.items()]
    lines += [
        "log = logs/search.log",
        "output = logs/tile-$(name).out",
        "error = logs/tile-$(name).err",
        "# retry a tile whose job failed (preemption, a bad node): tiles are idempotent",
        "max_retries = 3",
        "queue tile,name from tiles.txt",
        "",
    ]
    (d / "search.sub").write_text("\n".join(lines))
    from .names import safe_component

    # $(name) names log files (and a line of tiles.txt is split on commas and spaces): encode it once
    (d / "tiles.txt").write_text("".join(f"{int(i)}, {safe_component(n)}\n" for i, n in tiles))
    merge_args = f"-m lensdask.cli merge {shlex.quote(run_dir)} --threshold {float(threshold)!r}"
    (d / "merge.sub").write_text(
        "\n".join(
            [
                "# lensdask merge: candidates.parquet from the per-tile outputs (runs on the submit machine)",
                "universe = local",
                f"executable = {sys.executable}",
                f'arguments = "{merge_args}"',
                "log = logs/merge.log",
                "output = logs/merge.out",
                "error = logs/merge.err",
                "queue",
                "",
            ]
        )
    )
    dag = "JOB tiles search.sub\nJOB merge merge.sub\nPARENT tiles CHILD merge\n"
    written = ["search.sub", "merge.sub", "search.dag", "tiles.txt"]
    (d / "fit.sub").unlink(missing_ok=True)  # a DAG written again without the fit stage has no stale one
    if fit:
        top = int(config.get("fit.top", fit_top))
        cores = int(profile["cores"])
        fit_args = f"-m lensdask.cli fit {shlex.quote(run_dir)} --top {top}"
        cpu_only = {k: v for k, v in extra.items() if k.lower() not in ("request_gpus", "+requestgpus")}
        fit_lines = [
            f"# lensdask fit: lens model vs null model for the {top} best candidates, after the merge (profile",
            f"# jobqueue.{name}, no GPU). Its chunks run on a LocalCluster of {cores} single-threaded workers.",
            "# A retried job (preemption) fits only the candidates not yet fitted.",
            "universe = vanilla",
            f"executable = {python}",
            "transfer_executable = false",
            f'arguments = "{fit_args}"',
            f"request_cpus = {cores}",
            f"request_memory = {mem_mb}",
            f"request_disk = {disk_kb}",
            f'environment = "OMP_NUM_THREADS=1 DASK_LENSDASK__CLUSTER__N_WORKERS={cores} '
            'DASK_LENSDASK__CLUSTER__THREADS_PER_WORKER=1"',
        ]
        fit_lines += [f"{k} = {_submit_value(v)}" for k, v in cpu_only.items()]
        fit_lines += [
            "log = logs/fit.log",
            "output = logs/fit.out",
            "error = logs/fit.err",
            "# retry after preemption or a bad node; not after bad input (2) or a candidate whose fit raised (1)",
            "max_retries = 2",
            "retry_until = ExitCode == 1 || ExitCode == 2",
            "queue",
            "",
        ]
        (d / "fit.sub").write_text("\n".join(fit_lines))
        dag += "JOB fit fit.sub\nPARENT merge CHILD fit\n"
        written.insert(2, "fit.sub")
    (d / "search.dag").write_text(dag)
    return {k: d / k for k in written}
