"""Survey scale: what every DES user's command costs at 1,000 and 10,000 tiles, client beside workers.

A DES search is ~10,000 tiles. This builds, for each tile count asked, a quantised store of that
many small tiles (``--per-tile`` rows of sky noise and a galaxy-like blob each: the pixels do not
matter here, the number of tiles does), then runs each command a user runs, end to end, through the
``lensdask`` CLI in a subprocess, on the default 2-worker LocalCluster:

- ``search`` (a fresh run directory) with ``--no-report`` and with ``--report`` (the Dask performance
  report's cost: by default a search writes it only up to ``search.performance_report_max_tiles``);
- ``search --resume`` of the finished run (every tile done);
- ``merge RUN_DIR``; ``info STORE``; ``review RUN_DIR --top 100``;
- ``search --emit-htcondor DIR``;
- ``mock-survey --tiles N --per-tile 1`` (the command that writes a survey store), with ``--mock``.

For each it prints the wall seconds, the client process's own CPU seconds and peak memory, and the
workers' (every descendant process: CPU seconds summed, the largest peak memory). For a search it
also prints the seconds the tiles took (``summary.json``'s ``timings``), the client's time beyond
them (wall minus tiles: start-up, planning, the performance report, the merge, shutting the
cluster down), and the performance report's and the merge's own seconds. The last table compares
10,000 with 1,000 tiles: a step that grows linearly costs 10x, one that grows with the square of the
tile count 100x. It also prints the files and bytes of metadata (everything but the pixel shards)
per tile.

Run::

    python benchmarks/bench_scale.py                       # 1,000 and 10,000 tiles x 4 rows
    python benchmarks/bench_scale.py --tiles 1000 --mock   # also time mock-survey

Results (with the machine) go in ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np
import pandas as pd


def build_store(path: pathlib.Path, n_tiles: int, per_tile: int, seed: int = 0) -> float:
    """Write a quantised store of ``n_tiles`` tiles of ``per_tile`` rows fast; returns the seconds.

    Tiles are written many at a time (one assignment per array over a slab of tiles, so zarr
    writes their chunks concurrently) instead of one :meth:`~lensdask.store.CutoutStore.write_tile`
    call each (~30 ms a tile here): the result is the same layout, the per-tile ``count`` committed
    last.
    """
    from lensdask.quantise import quantise_measured
    from lensdask.store import create_store, store_array

    t0 = time.perf_counter()
    names = [f"DES{t // 100:04d}-{t % 100:04d}" for t in range(n_tiles)]
    store = create_store(
        path,
        tiles=names,
        capacity=per_tile,
        bands=["g", "r", "i", "z"],
        pixel_scale=0.263,
        stamp=45,
        provenance={"command": "benchmarks/bench_scale.py"},
    )
    enc = store.encoding
    g = store.group
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:45, :45] - 22.0
    blob = np.exp(-(xx**2 + (yy / 0.7) ** 2) / (2 * 3.0**2)).astype(np.float32)
    slab = 500
    for a in range(0, n_tiles, slab):
        b = min(a + slab, n_tiles)
        n = (b - a) * per_tile
        images = rng.normal(0.0, 1.0, (n, 4, 45, 45)).astype(np.float32)
        images += rng.uniform(2, 40, (n, 4, 1, 1)).astype(np.float32) * blob
        oid = np.arange(a * per_tile, b * per_tile, dtype=np.int64)
        q, scale, zero, sky, noise = quantise_measured(
            images, oid, step=float(enc["step"]), seed=int(enc["seed"]), border=int(enc["border"])
        )

        def tiles(x, k=b - a):
            return x.reshape(k, per_tile, *x.shape[1:])

        store_array(g, "images")[a:b] = tiles(q)
        for name, value in (("scale", scale), ("zero", zero), ("sky", sky), ("noise", noise)):
            store_array(g, name)[a:b] = tiles(value)
        store_array(g, "object_id")[a:b] = tiles(oid)
        store_array(g, "ra")[a:b] = tiles(rng.uniform(0, 360, n))
        store_array(g, "dec")[a:b] = tiles(rng.uniform(-60, 0, n))
        store_array(g, "label")[a:b] = -1
        store_array(g, "flags")[a:b] = 0
        store_array(g, "count")[a:b] = per_tile
    return time.perf_counter() - t0


def metadata_per_tile(path: pathlib.Path, n_tiles: int) -> tuple[float, float]:
    """Files and bytes per tile of everything but the pixel shards (``images/c/...``)."""
    files = 0
    size = 0
    for root, _dirs, names in os.walk(path):
        if os.sep + "images" + os.sep + "c" in root + os.sep:
            continue
        for name in names:
            files += 1
            size += os.path.getsize(os.path.join(root, name))
    return files / n_tiles, size / n_tiles


def run_measured(argv: list[str], env: dict) -> dict:
    """Run a command, polling its process tree; wall s, client CPU s / peak RSS, workers' CPU s / peak RSS."""
    import psutil

    # output to files, not pipes: a progress bar filling an unread pipe would block the command
    out_f = tempfile.TemporaryFile(mode="w+")
    err_f = tempfile.TemporaryFile(mode="w+")
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, env=env, stdout=out_f, stderr=err_f, text=True)
    main = psutil.Process(proc.pid)
    client_rss = 0
    client_cpu = 0.0
    kids: dict[int, dict] = {}
    while proc.poll() is None:
        try:
            with main.oneshot():
                client_rss = max(client_rss, main.memory_info().rss)
                ct = main.cpu_times()
                client_cpu = ct.user + ct.system
            for child in main.children(recursive=True):
                try:
                    with child.oneshot():
                        ct = child.cpu_times()
                        rec = kids.setdefault(child.pid, {"rss": 0, "cpu": 0.0})
                        rec["rss"] = max(rec["rss"], child.memory_info().rss)
                        rec["cpu"] = ct.user + ct.system
                except psutil.Error:
                    pass
        except psutil.Error:
            pass
        time.sleep(0.1)
    wall = time.perf_counter() - t0
    out_f.seek(0)
    err_f.seek(0)
    out, err = out_f.read(), err_f.read()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {proc.returncode}:\n{err[-3000:]}")
    return {
        "wall_s": round(wall, 2),
        "client_cpu_s": round(client_cpu, 2),
        "client_peak_mib": round(client_rss / 2**20, 1),
        "workers_cpu_s": round(sum(k["cpu"] for k in kids.values()), 2),
        "worker_peak_mib": round(max((k["rss"] for k in kids.values()), default=0) / 2**20, 1),
        "stdout": out,
    }


def _noop(i: int) -> int:
    return i


def progress_bar_cost(n_tiles: int) -> dict:
    """Seconds the fan-out's own loop takes over ``n_tiles`` no-op tiles in this process, with and
    without its tqdm progress bar (what the bar costs the client per tile)."""
    import io
    from contextlib import redirect_stderr

    from lensdask.fanout import run_tiles

    jobs = [(f"T{i:05d}", _noop, (i,), {}) for i in range(n_tiles)]
    best = {False: float("inf"), True: float("inf")}
    with redirect_stderr(io.StringIO()):
        run_tiles(jobs[:10], client=None, progress=True)  # the worker setup, once
        for _ in range(3):
            for progress in (False, True):
                t0 = time.perf_counter()
                run_tiles(jobs, client=None, progress=progress)
                best[progress] = min(best[progress], time.perf_counter() - t0)
    out = {"without_bar_s": round(best[False], 3), "with_bar_s": round(best[True], 3)}
    out["bar_us_per_tile"] = round((out["with_bar_s"] - out["without_bar_s"]) / n_tiles * 1e6, 1)
    return out


def bench_tiles(n_tiles: int, per_tile: int, work: pathlib.Path, mock: bool) -> list[dict]:
    """Every command at ``n_tiles`` tiles: one row each."""
    lensdask = [sys.executable, "-m", "lensdask.cli"]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    store = work / f"scale-{n_tiles}.zarr"
    run = work / f"run-{n_tiles}"
    rows = []

    def row(command: str, m: dict, summary: dict | None = None) -> None:
        m = dict(m)
        m.pop("stdout", None)
        timings = (summary or {}).get("timings", {})
        tiles_s = timings.get("tiles", summary.get("seconds")) if summary else None
        own = m["wall_s"] - tiles_s if tiles_s is not None else m["wall_s"]
        rows.append(
            {
                "tiles": n_tiles,
                "command": command,
                **m,
                "tiles_s": tiles_s,
                "client_own_s": round(own, 2),
                **{f"{k}_s": v for k, v in timings.items() if k != "tiles"},
            }
        )
        print(f"  {command:<28} {rows[-1]}", flush=True)

    build_s = build_store(store, n_tiles, per_tile)
    files, size = metadata_per_tile(store, n_tiles)
    rows.append(
        {
            "tiles": n_tiles,
            "command": "build store (bench, bulk)",
            "wall_s": round(build_s, 2),
            "metadata_files_per_tile": round(files, 2),
            "metadata_bytes_per_tile": round(size),
        }
    )
    print(f"  {'build store (bench, bulk)':<28} {rows[-1]}", flush=True)
    common = ["--zarr", str(store), "--threshold", "0.0", "--no-crossmatch"]
    for name, extra in (("search --no-report", ["--no-report"]), ("search --report", ["--report"])):
        shutil.rmtree(run, ignore_errors=True)
        m = run_measured([*lensdask, "search", *common, "--out", str(run), *extra], env)
        row(name, m, json.loads((run / "summary.json").read_text()))
    m = run_measured([*lensdask, "search", *common, "--out", str(run), "--resume"], env)
    row("search --resume (all done)", m, json.loads((run / "summary.json").read_text()))
    row("merge", run_measured([*lensdask, "merge", str(run), "--threshold", "0.0"], env))
    row("info", run_measured([*lensdask, "info", str(store)], env))
    row("review --top 100", run_measured([*lensdask, "review", str(run), "--top", "100"], env))
    condor = work / f"condor-{n_tiles}"
    shutil.rmtree(condor, ignore_errors=True)
    row(
        "search --emit-htcondor",
        run_measured(
            [*lensdask, "search", "--zarr", str(store), "--out", str(run), "--emit-htcondor", str(condor)], env
        ),
    )
    if mock:
        mock_store = work / f"mock-{n_tiles}.zarr"
        row(
            "mock-survey --per-tile 1",
            run_measured(
                [*lensdask, "mock-survey", "--out", str(mock_store), "--tiles", str(n_tiles), "--per-tile", "1"], env
            ),
        )
        shutil.rmtree(mock_store, ignore_errors=True)
    shutil.rmtree(store, ignore_errors=True)
    shutil.rmtree(run, ignore_errors=True)
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tiles", type=int, nargs="+", default=[1000, 10000], help="tile counts (default 1000 10000)")
    p.add_argument("--per-tile", type=int, default=4, help="rows per tile (default 4)")
    p.add_argument("--mock", action="store_true", help="also time mock-survey writing a store of as many tiles")
    p.add_argument("--workdir", help="where stores and runs go (default: a temporary folder)")
    p.add_argument("--json", help="also write the rows as JSON here")
    a = p.parse_args(argv)
    work = pathlib.Path(a.workdir or tempfile.mkdtemp(prefix="bench-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"machine: {os.cpu_count()} cores; python {sys.version.split()[0]}; work in {work}")
    rows = []
    for n in a.tiles:
        print(f"{n} tiles x {a.per_tile} rows:", flush=True)
        rows += bench_tiles(n, a.per_tile, work, a.mock)
    table = pd.DataFrame(rows)
    cols = [
        "wall_s",
        "client_own_s",
        "tiles_s",
        "report_s",
        "merge_s",
        "client_cpu_s",
        "client_peak_mib",
        "workers_cpu_s",
        "worker_peak_mib",
    ]
    print()
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(table.set_index(["tiles", "command"])[[c for c in cols if c in table]].to_string())
    if len(a.tiles) >= 2:
        lo, hi = min(a.tiles), max(a.tiles)
        by = table.set_index(["command", "tiles"])
        print(f"\ngrowth from {lo} to {hi} tiles ({hi / lo:g}x the tiles; linear = {hi / lo:g}x):")
        for command in table["command"].unique():
            try:
                a_, b_ = by.loc[(command, lo)], by.loc[(command, hi)]
            except KeyError:
                continue
            for c in ("wall_s", "client_own_s", "client_peak_mib"):
                if c in by and pd.notna(a_[c]) and pd.notna(b_[c]) and a_[c] > 0:
                    print(f"  {command:<28} {c:<16} {a_[c]:>9.2f} -> {b_[c]:>9.2f}  ({b_[c] / a_[c]:.1f}x)")
    bar = progress_bar_cost(max(a.tiles))
    print(f"\nprogress bar over {max(a.tiles)} no-op tiles in-process: {bar}")
    if a.json:
        pathlib.Path(a.json).write_text(table.to_json(orient="records", indent=1))
    if not a.workdir:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
