"""Simulator throughput: accepted lenses per second beside a bare lenstronomy render.

Usage::

    python benchmarks/bench_simulate.py [--n 400] [--seed 0] [--constraint arc_snr_min=100 ...]

Prints, for the configured DES setup (bands, stamp, supersampling from lensdask.yaml):

- the bare lenstronomy rate: per band ``SimAPI.magnitude2amplitude`` + a reused
  ``ImageModel.image`` + ``noise_for_model``, on parameters drawn beforehand;
- lensdask's accepted-lens rate in one process (``simulate_rows``, lens_fraction 1,
  priors + rejection sampling + render + noise), and the ratio of the two;
- the rate of ``simulate()`` on a 2-worker LocalCluster (1 thread each), writing a store;
- the acceptance fraction of every constraint.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=400, help="lenses per measurement (default 400)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--constraint",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override lensdask.simulate.constraints.KEY (repeatable)",
    )
    ap.add_argument("--no-cluster", action="store_true", help="skip the LocalCluster measurement")
    args = ap.parse_args(argv)

    from lensdask.simulate import RejectionStats, priors, simulate, simulate_rows
    from lensdask.simulate.constraints import Constraints
    from lensdask.simulate.render import bare_render, get_renderer

    over = {}
    for kv in args.constraint:
        k, v = kv.split("=", 1)
        over[k] = v if k == "snr_band" else float(v)
    cons = Constraints.from_config(over)
    n = args.n
    r = get_renderer()
    print(f"configuration: {r}")
    print(f"constraints:   {cons.as_dict()}")

    # bare lenstronomy render, parameters drawn beforehand
    rng = np.random.default_rng(args.seed)
    systems = []
    for _ in range(n):
        p = priors.draw_lens_galaxy(rng, r.bands)
        p.update(priors.draw_lensed_source(rng, r.bands, lens=p, theta_E_range=(cons.theta_E_min, cons.theta_E_max)))
        systems.append(p)
    bare_render(r, systems[0], 0)
    t = time.perf_counter()
    for i, p in enumerate(systems):
        bare_render(r, p, i)
    bare = n / (time.perf_counter() - t)
    print(f"bare lenstronomy render:        {bare:8.1f} systems/s  ({1e3 / bare:.2f} ms each)")

    # lensdask, one process
    simulate_rows(range(1), args.seed, lens_fraction=1.0, constraints=cons)
    stats = RejectionStats()
    t = time.perf_counter()
    simulate_rows(range(n), args.seed, lens_fraction=1.0, constraints=cons, stats=stats)
    single = n / (time.perf_counter() - t)
    print(
        f"lensdask simulate_rows (1 proc): {single:8.1f} accepted lenses/s  "
        f"({1e3 / single:.2f} ms each; ratio to bare render {single / bare:.2f})"
    )

    if not args.no_cluster:
        from distributed import Client, LocalCluster

        with (
            LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=":0") as cluster,
            Client(cluster) as client,
            tempfile.TemporaryDirectory() as d,
        ):
            simulate(
                os.path.join(d, "warm.zarr"),
                4,
                seed=args.seed,
                lens_fraction=1.0,
                partition_size=2,
                client=client,
                progress=False,
                constraints=over,
            )  # builds a renderer per worker
            t = time.perf_counter()
            simulate(
                os.path.join(d, "bench.zarr"),
                n,
                seed=args.seed,
                lens_fraction=1.0,
                partition_size=max(1, n // 8),
                client=client,
                progress=False,
                constraints=over,
            )
            dask_rate = n / (time.perf_counter() - t)
        print(
            f"lensdask simulate() 2 workers:   {dask_rate:8.1f} accepted lenses/s "
            f"(store written; ratio to 1-proc bare render {dask_rate / bare:.2f})"
        )

    print(f"acceptance: {stats.accepted} lenses from {stats.draws} draws ({stats.acceptance_fraction:.1%})")
    for name, frac in stats.acceptance().items():
        print(f"  {name:26s} rejected {stats.rejected[name]:6d}   passed {frac:7.1%} of draws reaching it")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
