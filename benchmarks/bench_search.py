"""Search throughput: end to end from the Zarr store, beside the bare model forward pass.

Prints cutouts per second for
  * the bare forward pass in this process (the same batches already in memory, normalised, as
    tensors; torch's default threads),
  * ``search()`` in this process (read + normalise, forward, per-tile write), and the same with
    the reading in a thread beside torch's (what a search does when torch leaves a core free),
  * the bare forward pass inside the workers of a LocalCluster (each worker scores the batches of
    its tiles, already in memory; all workers at once),
  * ``search()`` on that LocalCluster (one tile per task, the model loaded once per worker),
and the ratios end-to-end / bare. The machine is shared and noisy, so each figure is the best of
``--repeat`` interleaved runs (the model is warm in every process first). Run:

    python benchmarks/bench_search.py                                   # default model
    python benchmarks/bench_search.py --arch vit-base --tiles 4 --per-tile 96
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time

import torch


def bare_forward(model, card, batches, device) -> float:
    """Seconds for the forward pass alone over ``batches`` (normalised tensors)."""
    from lensdask.model.infer import autocast

    with torch.inference_mode(), autocast(device):
        model(batches[0][:8])  # warm-up
        t0 = time.perf_counter()
        for xb in batches:
            torch.softmax(model(xb).float(), dim=1).cpu()
        return time.perf_counter() - t0


def normalised_batches(store, card, batch_size: int, tiles=None) -> list:
    from lensdask.normalise import normalise

    return [
        torch.from_numpy(normalise(images, card["normalisation"]))
        for images, _ in store.iter_batches(batch_size, tiles=tiles)
    ]


def bare_forward_task(zarr: str, tile: int, model_dir: str, sha256: str, batch_size: int) -> tuple[tuple, float]:
    """On a worker: the bare forward pass over one tile's batches, with the worker's cached model.

    Returns the task slot (worker address, thread) and the seconds of the forward pass.
    """
    import threading

    from distributed import get_worker

    from lensdask.search.worker import get_model
    from lensdask.store import open_store

    model, card, dev = get_model(model_dir, sha256, "cpu")
    batches = normalised_batches(open_store(zarr), card, batch_size, tiles=[tile])
    return (get_worker().address, threading.get_ident()), bare_forward(model, card, batches, dev)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default=None, help="random-weight architecture (default: the shipped model)")
    parser.add_argument("--tiles", type=int, default=8)
    parser.add_argument("--per-tile", type=int, default=2000)
    parser.add_argument(
        "--batch-size", default="auto", help="cutouts per forward pass (auto: the search's CPU default)"
    )
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads-per-worker", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=3, help="interleaved runs of each measurement; the best is kept")
    args = parser.parse_args(argv)

    from distributed import Client, LocalCluster

    from lensdask.model.checkpoint import default_model_dir, load_checkpoint, untrained_checkpoint
    from lensdask.model.infer import resolve_batch_size
    from lensdask.search import search
    from lensdask.store import open_store

    device = torch.device("cpu")
    args.batch_size = resolve_batch_size(args.batch_size, device)
    print(
        f"machine: {platform.node()} {platform.machine()} {os.cpu_count()} cores; torch {torch.__version__} "
        f"({torch.get_num_threads()} threads in this process)"
    )
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = default_model_dir()
        if args.arch:
            model_dir = os.path.join(tmp, args.arch)
            untrained_checkpoint(model_dir, args.arch)
        des = os.path.join(tmp, "des.zarr")
        # noisy galaxies written straight to the store: independent of the simulator, same pixels every run
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        from bench_search_gpu import make_store

        t0 = time.perf_counter()
        make_store(des, args.tiles, args.per_tile)
        print(f"survey store of {args.tiles * args.per_tile} cutouts written in {time.perf_counter() - t0:.1f} s")
        store = open_store(des)
        model, card = load_checkpoint(model_dir, device="cpu")
        batches = normalised_batches(store, card, args.batch_size)
        n = sum(len(b) for b in batches)
        opts = dict(batch_size=args.batch_size, device="cpu", progress=False, crossmatch=False, report=False)
        best = {}

        def keep(name, seconds):
            best[name] = min(best.get(name, float("inf")), seconds)

        def timed(fn):
            t0 = time.perf_counter()
            fn()
            return time.perf_counter() - t0

        # No client exists now, so search() runs the tiles one after another in this process.
        search(des, model_dir, os.path.join(tmp, "warm-up"), client=None, **opts)
        import importlib

        run = importlib.import_module("lensdask.search.run")
        between = run._reader_has_a_core
        for r in range(args.repeat):
            keep("bare", bare_forward(model, card, batches, device))
            keep(
                "process", timed(lambda r=r: search(des, model_dir, os.path.join(tmp, f"proc{r}"), client=None, **opts))
            )
            run._reader_has_a_core = lambda device: True  # the alternative: a reader thread beside torch's threads
            try:
                keep(
                    "process-thread",
                    timed(lambda r=r: search(des, model_dir, os.path.join(tmp, f"thr{r}"), client=None, **opts)),
                )
            finally:
                run._reader_has_a_core = between
        del batches
        with (
            LocalCluster(
                n_workers=args.workers, threads_per_worker=args.threads_per_worker, dashboard_address=":0"
            ) as cluster,
            Client(cluster) as client,
        ):
            best["cold"] = timed(lambda: search(des, model_dir, os.path.join(tmp, "cold"), client=client, **opts))
            for r in range(args.repeat):
                futures = [
                    client.submit(
                        bare_forward_task, des, t, str(model_dir), card["sha256"], args.batch_size, pure=False
                    )
                    for t in range(args.tiles)
                ]
                per_slot: dict = {}  # the task slots run side by side: the busiest one sets the pace
                for slot, seconds in client.gather(futures):
                    per_slot[slot] = per_slot.get(slot, 0.0) + seconds
                keep("bare-workers", max(per_slot.values()))
                keep(
                    "cluster",
                    timed(lambda r=r: search(des, model_dir, os.path.join(tmp, f"dist{r}"), client=client, **opts)),
                )

    layout = f"{args.workers}x{args.threads_per_worker} thr"
    print(
        f"model {card['model_id']} ({card['arch']}), "
        f"{n} cutouts of {len(card['bands'])}x{card['stamp']}x{card['stamp']}, "
        f"batch {args.batch_size}; best of {args.repeat}"
    )
    print(f"bare forward pass, this process           {n / best['bare']:10.1f} cutouts/s")
    print(
        f"search, in process                        {n / best['process']:10.1f} cutouts/s   "
        f"ratio to bare {best['bare'] / best['process']:.2f}"
    )
    print(
        f"  the same with a reader thread beside torch {n / best['process-thread']:10.1f} cutouts/s   "
        f"ratio to bare {best['bare'] / best['process-thread']:.2f}"
        + ("   (not used: torch's threads hold every core)" if not between(device) else "")
    )
    print(
        f"bare forward pass, LocalCluster {layout:9s} {n / best['bare-workers']:10.1f} cutouts/s   "
        f"ratio to bare in this process {best['bare'] / best['bare-workers']:.2f}"
    )
    print(
        f"search, LocalCluster {layout:9s}            {n / best['cluster']:10.1f} cutouts/s   "
        f"ratio to bare {best['bare'] / best['cluster']:.2f}, to bare in the workers "
        f"{best['bare-workers'] / best['cluster']:.2f}   (first run, loading the model on each worker: "
        f"{n / best['cold']:.1f} cutouts/s)"
    )


if __name__ == "__main__":
    main()
