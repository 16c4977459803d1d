"""Search throughput: end to end from the Zarr store, beside the bare model forward pass.

Prints cutouts per second for
  * the bare forward pass (the same batches already in memory, normalised, as tensors),
  * ``search()`` in this process (read + normalise + forward + write per tile),
  * ``search()`` on a LocalCluster (one tile per task, model loaded once per worker;
    timed on the second run, after the workers hold the model, and also cold),
and the ratios end-to-end / bare, all measured in one run. Run:

    python benchmarks/bench_search.py                       # default model, 4 tiles x 500
    python benchmarks/bench_search.py --arch vit-base --tiles 2 --per-tile 128
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time

import torch


def bare_forward(model, card, store, batch_size: int, device) -> tuple[float, int]:
    """Seconds for the forward pass alone over every row of ``store``, in batches of ``batch_size``."""
    from lensdask.model.infer import autocast
    from lensdask.model.normalise import normalise

    batches = [
        torch.from_numpy(normalise(images, card["normalisation"])).to(device)
        for images, _ in store.iter_batches(batch_size)
    ]
    n = sum(len(b) for b in batches)
    with torch.inference_mode(), autocast(device):
        model(batches[0][:8])  # warm-up
        t0 = time.perf_counter()
        for xb in batches:
            torch.softmax(model(xb).float(), dim=1).cpu()
        return time.perf_counter() - t0, n


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default=None, help="random-weight architecture (default: the shipped model)")
    parser.add_argument("--tiles", type=int, default=4)
    parser.add_argument("--per-tile", type=int, default=500)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)

    from distributed import Client, LocalCluster

    from lensdask.model.checkpoint import default_model_dir, load_checkpoint, untrained_checkpoint
    from lensdask.model.infer import resolve_device
    from lensdask.search import search
    from lensdask.store import open_store

    device = resolve_device(args.device)
    print(f"machine: {platform.node()} {platform.machine()} {os.cpu_count()} cores; torch {torch.__version__} "
          f"({torch.get_num_threads()} threads); device {device}"
          + (f" ({torch.cuda.get_device_name()})" if device.type == "cuda" else ""))
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = default_model_dir()
        if args.arch:
            model_dir = os.path.join(tmp, args.arch)
            untrained_checkpoint(model_dir, args.arch)
        des = os.path.join(tmp, "des.zarr")
        # noisy galaxies written straight to the store: independent of the simulator, same pixels every run
        import sys

        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        from bench_search_gpu import make_store

        t0 = time.perf_counter()
        make_store(des, args.tiles, args.per_tile)
        print(f"survey store of {args.tiles * args.per_tile} cutouts written in {time.perf_counter() - t0:.1f} s")
        # No client exists now, so search() runs the tiles one after another in this process.
        store = open_store(des)
        model, card = load_checkpoint(model_dir, device=str(device))
        t_bare, n = bare_forward(model, card, store, args.batch_size, device)
        opts = dict(batch_size=args.batch_size, device=str(device), progress=False, crossmatch=False, report=False)
        search(des, model_dir, os.path.join(tmp, "warm-up"), client=None, **opts)
        t_bare = min(t_bare, bare_forward(model, card, store, args.batch_size, device)[0])  # best of two
        t0 = time.perf_counter()
        search(des, model_dir, os.path.join(tmp, "run-local"), client=None, **opts)
        t_proc = time.perf_counter() - t0
        with LocalCluster(n_workers=args.workers, threads_per_worker=1, dashboard_address=":0") as cluster, \
                Client(cluster) as client:
            t0 = time.perf_counter()
            search(des, model_dir, os.path.join(tmp, "run-cold"), client=client, **opts)
            t_cold = time.perf_counter() - t0  # includes loading the model on each worker
            t0 = time.perf_counter()
            search(des, model_dir, os.path.join(tmp, "run-dist"), client=client, **opts)
            t_dist = time.perf_counter() - t0

    print(f"model {card['model_id']} ({card['arch']}), {n} cutouts of {len(card['bands'])}x{card['stamp']}x{card['stamp']}, batch {args.batch_size}")
    print(f"bare forward pass            {n / t_bare:10.1f} cutouts/s")
    print(f"search, in process           {n / t_proc:10.1f} cutouts/s   ratio to bare {t_bare / t_proc:.2f}")
    print(f"search, LocalCluster {args.workers}x1 thr  {n / t_dist:10.1f} cutouts/s   ratio to bare {t_bare / t_dist:.2f}"
          f"   (first run, loading the model on each worker: {n / t_cold:.1f} cutouts/s)")


if __name__ == "__main__":
    main()
