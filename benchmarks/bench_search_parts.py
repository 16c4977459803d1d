"""Where a CPU search spends its time per cutout, part by part, and what each choice is worth.

Prints microseconds per cutout (4 bands x 45 x 45 px) for
  * reading pixels from the store: lz4 vs zstd stores, a new array per read vs one reused buffer,
  * the per-stamp normalisation (border median and MAD, asinh),
  * the forward pass of the model on one torch thread (a Dask worker's) at several batch sizes,
  * that forward pass under a Dask nanny's ``MALLOC_TRIM_THRESHOLD_=65536``, with and without
    :func:`lensdask.workersetup.tune_malloc` (each in a fresh process).
Best of ``--repeat`` runs each. Run:

    python benchmarks/bench_search_parts.py
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

FORWARD_SNIPPET = """
import sys, time, torch
torch.set_num_threads(1)
from lensdask.model.checkpoint import default_model_dir, load_checkpoint
from lensdask.workersetup import tune_malloc
if sys.argv[1] == "tuned":
    tune_malloc()
model, card = load_checkpoint(default_model_dir())
x = torch.randn(1024, 4, 45, 45)
best = 1e9
with torch.inference_mode():
    model(x[:64])
    for _ in range(3):
        t0 = time.perf_counter()
        for s in range(0, 1024, 64):
            torch.softmax(model(x[s:s + 64]), 1).numpy()
        best = min(best, time.perf_counter() - t0)
print(best / 1024 * 1e6)
"""


def best_of(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=4096, help="cutouts per measurement")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)

    import dask
    import torch

    from lensdask.model.checkpoint import default_model_dir, load_checkpoint
    from lensdask.normalise import normalise
    from lensdask.workersetup import tune_malloc

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from bench_search_gpu import make_store

    tune_malloc()  # as in a search worker
    n, r = args.rows, args.repeat
    us = lambda seconds: seconds / n * 1e6  # noqa: E731
    print(f"machine: {os.uname().nodename} {os.cpu_count()} cores; torch {torch.__version__}; {n} cutouts, best of {r}")
    with tempfile.TemporaryDirectory() as tmp:
        stores = {}
        for name in ("lz4", "zstd"):
            with dask.config.set({"lensdask.store.compressor": name}):
                stores[name] = make_store(os.path.join(tmp, f"{name}.zarr"), 1, n)
            images_dir = os.path.join(tmp, f"{name}.zarr", "images")
            size = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(images_dir) for f in fs)
            print(f"store, {name:4s}: {size / (n * 4 * 45 * 45 * 4):.3f} of the raw float32 size")
        for name, store in stores.items():
            for reuse in (False, True):
                t = best_of(lambda store=store, reuse=reuse: [None for _ in store.iter_batches(256, reuse=reuse)], r)
                how = "one reused buffer" if reuse else "new array per read"
                print(f"read, {name:4s}, {how:18s} {us(t):7.1f} us/cutout")
        images = np.asarray(stores["lz4"].read_images(0))
        t = best_of(lambda: [normalise(images[s : s + 256]) for s in range(0, n, 256)], r)
        print(f"normalise (blocks of 256)                  {us(t):7.1f} us/cutout")

        model, card = load_checkpoint(default_model_dir())
        torch.set_num_threads(1)
        x = torch.from_numpy(normalise(images))
        with torch.inference_mode():
            model(x[:64])
            for bs in (32, 64, 128, 256):
                t = best_of(lambda bs=bs: [torch.softmax(model(x[s : s + bs]), 1).numpy() for s in range(0, n, bs)], r)
                print(f"forward, {card['arch']}, 1 thread, batch {bs:3d}   {us(t):7.1f} us/cutout")
    env = dict(os.environ, MALLOC_TRIM_THRESHOLD_="65536")
    for mode in ("plain", "tuned"):
        out = subprocess.run(
            [sys.executable, "-c", FORWARD_SNIPPET, mode], env=env, capture_output=True, text=True, check=True
        )
        label = "with tune_malloc()" if mode == "tuned" else "as a Dask nanny starts it"
        print(
            f"forward, 1 thread, batch 64, MALLOC_TRIM_THRESHOLD_=65536, {label:26s} "
            f"{float(out.stdout.split()[-1]):7.1f} us/cutout"
        )


if __name__ == "__main__":
    main()
