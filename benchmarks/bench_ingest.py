"""Ingest and search of one full-size DES coadd tile in the DES file layout, on one worker with a memory limit.

Writes a synthetic tile as DES ships them (lensdask.survey.synthetic_des: one .fits.fz per band
with HDUs SCI, MSK, WGT; galaxies, stars, regions without data, zero-weight pixels; a Gold-like
FITS catalogue), then, each on a fresh one-worker LocalCluster (1 thread, --memory-limit):

1. ``lensdask ingest --des-tiles`` with the default store encoding: wall time, the worker's CPU
   time and peak memory (its lifetime ru_maxrss, and its resident memory before the task);
2. the same into a float32 store, whose stamps are compared with stamps cut directly from the
   decompressed SCI planes, and whose masked / edge flags are compared with the MSK & WGT planes;
3. ``lensdask search`` of the ingested tile with the shipped model;
4. ``lensdask ingest`` on a worker limited to --small-limit: must end with exit 1 and one line
   naming the tile.

Prints a Markdown table, with the core-hours for 10,000 tiles. Big files go under --dir (default
a temporary folder) and are deleted unless --keep.

    python benchmarks/bench_ingest.py                   # full size: 10,000 px, 24,000 objects
    python benchmarks/bench_ingest.py --size 2000 --objects 600   # the tests' tile
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import platform
import resource
import shutil
import sys
import tempfile
import time

import numpy as np

BANDS = ["g", "r", "i", "z"]


def _worker_stats():
    """The worker's resident memory now, its highest sampled value, and its CPU time.

    The peak is sampled every 5 ms by :func:`_monitor` (resident memory, as the nanny's memory
    monitor measures it). ``ru_maxrss`` would not do: a worker is forked from its nanny, which
    lives in this benchmark's process, and Linux carries the parent's high-water mark into the child.
    """
    import builtins

    import psutil

    ru = resource.getrusage(resource.RUSAGE_SELF)
    rss = psutil.Process().memory_info().rss
    peak = getattr(builtins, "_bench_peak", [rss])[0]
    return {"rss": rss, "maxrss": max(peak, rss), "cpu": ru.ru_utime + ru.ru_stime}


def _monitor():
    """Start sampling this process's resident memory every 5 ms (kept in ``builtins._bench_peak``)."""
    import builtins
    import threading

    import psutil

    proc = psutil.Process()
    builtins._bench_peak = peak = [proc.memory_info().rss]

    def sample():
        while True:
            peak[0] = max(peak[0], proc.memory_info().rss)
            time.sleep(0.005)

    threading.Thread(target=sample, daemon=True, name="bench-memory").start()


INGEST_MODULES = ("lensdask.survey.ingest", "lensdask.fanout", "lensdask.workersetup")
"""What an ingest task imports on its worker (no PyTorch: the package face is lazy)."""
SEARCH_MODULES = ("lensdask.search.run",)
"""What a search task imports on its worker: PyTorch, timm and the model code included."""


def _warm(modules):
    import importlib

    for name in modules:
        importlib.import_module(name)
    return _worker_stats()


@contextlib.contextmanager
def one_worker(limit):
    from distributed import Client, LocalCluster

    with (
        LocalCluster(
            n_workers=1, threads_per_worker=1, memory_limit=limit, dashboard_address="127.0.0.1:0", silence_logs=40
        ) as cluster,
        Client(cluster) as client,
    ):
        yield cluster, client


def run_cli(argv):
    from lensdask.cli import main

    err = io.StringIO()
    t0 = time.perf_counter()
    with contextlib.redirect_stderr(err):
        code = main(argv)
    return code, time.perf_counter() - t0, err.getvalue()


def measured(limit, argv, warm=INGEST_MODULES):
    """Run a CLI command on a fresh one-worker cluster; its exit code, wall time, worker stats before and after.

    ``warm``: the modules the command's tasks import, imported on the worker before its memory is
    measured "before the task" (an empty tuple: none).
    """
    with one_worker(limit) as (cluster, client):
        before = list(client.run(_warm, warm).values())[0]
        client.run(_monitor)
        code, wall, err = run_cli(argv + ["--cluster", cluster.scheduler_address])
        after = list(client.run(_worker_stats).values())[0] if client.scheduler_info()["workers"] else None
    return code, wall, before, after, err


def expected_flags_and_check(files, cat, store):
    """Compare the stamps with the decompressed SCI planes; returns (stamp mismatches, masked ok, edge ok)."""
    from astropy.io import fits

    from lensdask.store import FLAG_EDGE, FLAG_MASKED
    from lensdask.survey.planes import wcs_of

    tile = store.read_tile(0)
    pos = {int(o): i for i, o in enumerate(tile.table["object_id"])}
    idx = np.array([pos[int(o)] for o in cat["COADD_OBJECT_ID"]])
    flags = tile.table["flags"].to_numpy()[idx]
    n, h = len(cat), store.stamp // 2
    masked, edge = np.zeros(n, bool), np.zeros(n, bool)
    mismatched = 0
    for k, b in enumerate(BANDS):
        with fits.open(files[b]) as f:
            sci, msk, wgt, header = f["SCI"].data, f["MSK"].data, f["WGT"].data, f["SCI"].header
            bad = ((msk & 1) != 0) | (wgt == 0)
            ny, nx = sci.shape
            x, y = wcs_of(header).all_world2pix(cat["RA"], cat["DEC"], 0)
            for i in range(n):
                cx, cy = int(np.floor(x[i] + 0.5)), int(np.floor(y[i] + 0.5))
                y0, y1, x0, x1 = max(cy - h, 0), min(cy + h + 1, ny), max(cx - h, 0), min(cx + h + 1, nx)
                got = tile.images[idx[i], k, y0 - (cy - h) : y1 - (cy - h), x0 - (cx - h) : x1 - (cx - h)]
                b_ = bad[y0:y1, x0:x1]
                mismatched += int((got[~b_] != sci[y0:y1, x0:x1][~b_]).sum())
                masked[i] |= b_.any()
                edge[i] |= (cx - h < 0) or (cy - h < 0) or (cx + h >= nx) or (cy + h >= ny)
            del sci, msk, wgt, bad
    mask_ok = bool((((flags & FLAG_MASKED) != 0) == masked).all())
    edge_ok = bool((((flags & FLAG_EDGE) != 0) == edge).all())
    return mismatched, mask_ok, edge_ok, int(masked.sum()), int(edge.sum())


def gib(n):
    return f"{n / 2**30:.2f} GiB"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=10_000, help="tile side, px (DES: 10,000)")
    p.add_argument("--objects", type=int, default=24_000, help="catalogue objects (DES: ~24,000)")
    p.add_argument("--limit", default="3GiB", help="the worker's memory limit (the slurm profile's)")
    p.add_argument("--small-limit", default="400MB", help="a limit below what a tile needs")
    p.add_argument("--dir", help="folder for the tile and stores (default: a temporary one)")
    p.add_argument("--keep", action="store_true", help="keep the files")
    p.add_argument("--tiles", type=int, default=10_000, help="survey size for the core-hour figure")
    a = p.parse_args(argv)
    import dask

    from lensdask.store import open_store
    from lensdask.survey.synthetic_des import write_des_tile

    work = a.dir or tempfile.mkdtemp(prefix="bench_ingest_")
    os.makedirs(work, exist_ok=True)
    tiles_dir = os.path.join(work, "tiles")
    rows = []
    try:
        t0 = time.perf_counter()
        files, cat = write_des_tile(
            tiles_dir, "DES0001-0001", size=a.size, n_objects=a.objects, seed=1, catalog=os.path.join(work, "gold.fits")
        )
        t_write = time.perf_counter() - t0
        on_disk = sum(os.path.getsize(f) for f in files.values())
        print(
            f"wrote the tile in {t_write:.0f} s: {a.size} x {a.size} px, {a.objects} objects, 4 bands, "
            f"{on_disk / 2**20:.0f} MiB compressed ({a.size**2 * 4 * 3 * 4 / 2**30:.2f} GiB as planes)",
            flush=True,
        )
        base = ["ingest", "--des-tiles", tiles_dir, "--catalog", os.path.join(work, "gold.fits"), "--overwrite"]

        code, wall, before, after, err = measured(a.limit, base + ["--out", os.path.join(work, "des.zarr")])
        assert code == 0, err
        rows.append(("ingest (default store: quantised)", wall, before, after))
        print(f"ingest: exit {code}, {wall:.1f} s, worker peak {gib(after['maxrss'])}", flush=True)

        with dask.config.set({"lensdask.store.quantise.step": 0}):
            code, wall32, b32, a32, err = measured(a.limit, base + ["--out", os.path.join(work, "des32.zarr")])
        assert code == 0, err
        rows.append(("ingest (float32 store)", wall32, b32, a32))
        store32 = open_store(os.path.join(work, "des32.zarr"))
        mism, mask_ok, edge_ok, n_masked, n_edge = expected_flags_and_check(files, cat, store32)
        print(
            f"float32 ingest: {wall32:.1f} s; unmasked stamp pixels differing from the SCI planes: {mism}; "
            f"masked flags exact: {mask_ok} ({n_masked}); edge flags exact: {edge_ok} ({n_edge})",
            flush=True,
        )

        code, wall_s, bs, as_, err = measured(
            a.limit,
            [
                "search",
                "--zarr",
                os.path.join(work, "des.zarr"),
                "--out",
                os.path.join(work, "run"),
                "--no-report",
                "--no-crossmatch",
            ],
            warm=SEARCH_MODULES,
        )
        assert code == 0, err
        rows.append(("search (shipped model, CPU)", wall_s, bs, as_))
        print(f"search: exit {code}, {wall_s:.1f} s, worker peak {gib(as_['maxrss'])}", flush=True)

        with dask.config.set({"distributed.scheduler.allowed-failures": 1}):
            code_k, wall_k, _, _, err_k = measured(
                a.small_limit, base + ["--out", os.path.join(work, "k.zarr")], warm=()
            )
        lines = [ln for ln in err_k.splitlines() if ln.startswith("  tile ")]
        print(
            f"ingest on a {a.small_limit} worker: exit {code_k} in {wall_k:.0f} s; traceback: "
            f"{'Traceback' in err_k}; message: {lines}",
            flush=True,
        )

        print()
        print(
            f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
            f"python {platform.python_version()}; "
            f"one worker process, 1 thread, memory limit {a.limit}"
        )
        print()
        print(
            "| step | wall per tile | worker CPU | worker memory before the task "
            "| worker peak memory (sampled every 5 ms) | core-hours for "
            f"{a.tiles:,} tiles |"
        )
        print("|---|---|---|---|---|---|")
        for name, wall, b, af in rows:
            cpu = af["cpu"] - b["cpu"]
            print(
                f"| {name} | {wall:.1f} s | {cpu:.1f} s | {gib(b['rss'])} | {gib(af['maxrss'])} | "
                f"{cpu * a.tiles / 3600:,.0f} (CPU) / {wall * a.tiles / 3600:,.0f} (wall) |"
            )
        print()
        print(
            f"stamps equal to the decompressed SCI planes (float32 store): {mism == 0}; "
            f"masked flags exact: {mask_ok}; "
            f"edge flags exact: {edge_ok}; {a.small_limit} worker: exit {code_k}, {lines}"
        )
    finally:
        if not a.keep:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
