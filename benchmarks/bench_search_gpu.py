"""ViT-Base (bf16 on a GPU) search throughput end to end from a Zarr store on local disk.

Writes a survey store of noisy galaxies (no simulator needed), then times, on the same rows:
  * the bare forward pass (normalised batches already on the device),
  * ``search_tile`` over every tile (read + normalise in a reader thread + forward + atomic write),
and prints cutouts/s and the projected time for the full DES (320 million cutouts) per GPU.

    python benchmarks/bench_search_gpu.py                                  # ViT-Base, cuda, bf16
    python benchmarks/bench_search_gpu.py --arch test-vit --device cpu --tiles 2 --per-tile 64   # CPU smoke test
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time

import numpy as np

DES_CUTOUTS = 320_000_000


def make_store(path, tiles, per_tile, seed=0):
    import pandas as pd

    from lensdask.store import create_store

    rng = np.random.default_rng(seed)
    s = create_store(
        path,
        tiles=[f"BENCH{t:04d}" for t in range(tiles)],
        capacity=per_tile,
        bands="griz",
        pixel_scale=0.263,
        stamp=45,
    )
    y, x = np.mgrid[:45, :45] - 22
    blob = np.exp(-(x**2 + y**2) / 20.0).astype(np.float32)
    for t in range(tiles):
        img = rng.normal(0, 1, (per_tile, 4, 45, 45)).astype(np.float32) + blob * rng.uniform(
            1, 30, (per_tile, 4, 1, 1)
        ).astype(np.float32)
        s.write_tile(
            t,
            img,
            pd.DataFrame(
                {
                    "object_id": np.arange(per_tile) + t * per_tile,
                    "ra": rng.uniform(0, 60, per_tile),
                    "dec": rng.uniform(-50, -20, per_tile),
                }
            ),
        )
    return s


def main(argv=None) -> dict:
    import torch

    from lensdask.model.checkpoint import untrained_checkpoint
    from lensdask.model.infer import autocast, resolve_device
    from lensdask.normalise import normalise
    from lensdask.search.run import search_tile
    from lensdask.search.worker import get_model

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="vit-base")
    p.add_argument("--tiles", type=int, default=8)
    p.add_argument("--per-tile", type=int, default=4096)
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    p.add_argument("--dir", default=None, help="where to write the store (default: a temporary folder on local disk)")
    p.add_argument("--json", default=None, help="also write the figures to this JSON file")
    a = p.parse_args(argv)
    dev = resolve_device(a.device)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor() or platform.machine()
    with tempfile.TemporaryDirectory(dir=a.dir) as tmp:
        model_dir = os.path.join(tmp, a.arch)
        card = untrained_checkpoint(model_dir, a.arch)
        t0 = time.perf_counter()
        store = make_store(os.path.join(tmp, "des.zarr"), a.tiles, a.per_tile)
        t_write = time.perf_counter() - t0
        model, card, dev = get_model(model_dir, card["sha256"], str(dev))
        batches = [
            torch.from_numpy(normalise(img, card["normalisation"]))
            for img, _ in store.iter_batches(a.batch_size, tiles=[0])
        ]
        n_bare = sum(len(b) for b in batches)
        with torch.inference_mode(), autocast(dev, a.precision):
            xs = [b.to(dev) for b in batches]
            model(xs[0][:16])
            if dev.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            for xb in xs:
                torch.softmax(model(xb).float(), 1).cpu()
            t_bare = time.perf_counter() - t0
        search_tile(
            store.url,
            0,
            model_dir,
            card["sha256"],
            os.path.join(tmp, "warm"),
            device=str(dev),
            batch_size=a.batch_size,
            precision=a.precision,
        )
        t0 = time.perf_counter()
        for t in range(a.tiles):
            search_tile(
                store.url,
                t,
                model_dir,
                card["sha256"],
                os.path.join(tmp, "run"),
                device=str(dev),
                batch_size=a.batch_size,
                precision=a.precision,
            )
        t_e2e = time.perf_counter() - t0
    n = a.tiles * a.per_tile
    res = {
        "device": f"{dev} ({name})",
        "arch": a.arch,
        "precision": a.precision,
        "batch_size": a.batch_size,
        "cutouts": n,
        "store_write_s": round(t_write, 2),
        "bare_cutouts_per_s": round(n_bare / t_bare, 1),
        "end_to_end_cutouts_per_s": round(n / t_e2e, 1),
        "ratio": round((n / t_e2e) / (n_bare / t_bare), 3),
        "des_320M_hours_per_gpu": round(DES_CUTOUTS / (n / t_e2e) / 3600, 1),
    }
    print(json.dumps(res, indent=2))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=2)
    return res


if __name__ == "__main__":
    main()
