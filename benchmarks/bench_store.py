"""Store size and read speed: quantised (Pcodec) against float32 (Blosc lz4) on one mock survey.

Prints, for the same cutouts in both encodings,
  * bytes on disk per cutout (the pixels, and the whole store),
  * the quantisation error, rms in units of each stamp's sky noise,
  * decoding alone and the models' inputs (decoding + normalising; a quantised store with its
    rows' sky statistics normalises straight from the codes), cutouts per second on one core (one thread:
    a search worker reads its tile in its own process, so throughput scales with cores), and
    that times 8,
  * the end-to-end CPU search in this process (read, normalise, default model, per-tile write),
    with torch on every core and with one core left to the reader thread (as in a Dask worker),
    and the ratio quantised / float32; both from the page cache (the store read just before) and,
    where this process may drop the page cache (root on Linux), from disk: a survey search reads
    every tile once, from a store far larger than memory, so the cold read is the survey's case.
The machine may be shared and noisy: each speed is the best of ``--repeat`` interleaved runs. Run:

    python benchmarks/bench_store.py                     # 4 tiles x 500 cutouts, the mock survey's defaults
    python benchmarks/bench_store.py --tiles 2 --per-tile 250 --repeat 2
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")  # the per-core figures: numpy and torch on one thread

import numpy as np  # noqa: E402


def read_rate(store, batch: int, normalise_too: bool) -> float:
    """Cutouts per second reading every tile in ``batch``-row blocks into one reused buffer: the pixels,
    or with ``normalise_too`` the default model's inputs, as search reads them (``iter_normalised``)."""
    t0 = time.perf_counter()
    n = 0
    if normalise_too:
        for inputs, _ in store.iter_normalised(batch, [None]):
            n += len(inputs.bad)
    else:
        for images, _ in store.iter_batches(batch, reuse=True):
            n += len(images)
    return n / (time.perf_counter() - t0)


DROP_CACHES = "/proc/sys/vm/drop_caches"


def can_drop_caches() -> bool:
    """Whether this process may empty the kernel's page cache (root on Linux)."""
    return os.access(DROP_CACHES, os.W_OK)


def drop_caches() -> None:
    """Write dirty pages back and empty the page cache, so the next read comes from disk."""
    os.sync()
    with open(DROP_CACHES, "w") as fh:
        fh.write("3\n")


def search_seconds(url: str, out: str, cold: bool = False) -> float:
    """Seconds of one end-to-end search in this process; ``cold``: the page cache emptied first."""
    from lensdask.search import search

    if cold:
        drop_caches()
    t0 = time.perf_counter()
    search(url, None, out, progress=False, client=None, crossmatch=False, report=False)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiles", type=int, default=4)
    ap.add_argument("--per-tile", type=int, default=500)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--batch", type=int, default=256, help="rows per read (a multiple of the chunk rows)")
    ap.add_argument("--workdir", default=None)
    a = ap.parse_args()

    import dask
    import torch

    from lensdask.quantise import measure_noise
    from lensdask.store import open_store
    from lensdask.storeadmin import convert, disk_bytes
    from lensdask.survey import mock_survey

    torch.set_num_threads(1)
    work = a.workdir or tempfile.mkdtemp(prefix="bench_store-")
    f_url, q_url = os.path.join(work, "f32.zarr"), os.path.join(work, "q.zarr")
    t0 = time.perf_counter()
    with dask.config.set({"lensdask.store.quantise.step": 0}):
        mock_survey(f_url, a.tiles, a.per_tile, seed=7, overwrite=True, progress=False)
    t1 = time.perf_counter()
    convert(f_url, q_url, overwrite=True)
    t2 = time.perf_counter()
    f, q = open_store(f_url), open_store(q_url)
    n = f.n_rows
    print(
        f"machine: {platform.node()} {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"torch {torch.__version__}; {a.tiles} tiles x {a.per_tile} cutouts = {n}, "
        f"{len(f.bands)} bands x {f.stamp}x{f.stamp} px; mock survey {t1 - t0:.1f} s, convert {t2 - t1:.1f} s"
    )

    x = np.concatenate([f.read_images(t) for t in f.written_tiles()])
    y = np.concatenate([q.read_images(t) for t in q.written_tiles()])
    _, sigma = measure_noise(x, 4)
    rms = float(np.sqrt(np.mean(((y - x) / sigma[..., None, None]) ** 2)))
    print(
        f"quantisation: step {q.encoding['step']} sigma, error rms {rms:.4f} sigma (expected "
        f"{q.encoding['rms_error']:.4f}); lossless rows {int((q.read_catalog()['flags'] & 4 != 0).sum())}"
    )
    xf = np.concatenate([f.read_normalised(t).inputs[0] for t in f.written_tiles()])
    xq = np.concatenate([q.read_normalised(t).inputs[0] for t in q.written_tiles()])
    how = "straight from the codes" if q.sky_stats else "after decoding (no stored sky statistics)"
    diff = f"{float(np.sqrt(np.mean((xq - xf) ** 2))):.4f}" if xq.shape == xf.shape else "? (other rows non-finite)"
    print(
        f"model inputs: the quantised store's normalised {how}; rms difference from the float32 store's "
        f"{diff} (normalised units)"
    )

    print(f"\n{'':12s} {'pixels/cutout':>14s} {'store/cutout':>13s}")
    for name, url in [("float32+lz4", f_url), ("quantised", q_url)]:
        print(
            f"{name:12s} {disk_bytes(os.path.join(url, 'images')) / n / 1024:11.2f} KiB "
            f"{disk_bytes(url) / n / 1024:10.2f} KiB"
        )

    rates = {k: [] for k in ("f-dec", "q-dec", "f-norm", "q-norm")}
    for _ in range(a.repeat):
        rates["f-dec"].append(read_rate(f, a.batch, False))
        rates["q-dec"].append(read_rate(q, a.batch, False))
        rates["f-norm"].append(read_rate(f, a.batch, True))
        rates["q-norm"].append(read_rate(q, a.batch, True))
    best = {k: max(v) for k, v in rates.items()}
    print(f"\none core, best of {a.repeat}: cutouts/s {'decode':>10s} {'model inputs':>17s} {'x 8 cores':>10s}")
    for name, k in [("float32+lz4", "f"), ("quantised", "q")]:
        print(f"{name:31s} {best[k + '-dec']:10.0f} {best[k + '-norm']:17.0f} {8 * best[k + '-norm']:10.0f}")

    cores = os.cpu_count() or 1
    cases = [
        (cores, False, "torch on every core, reading between forward passes; page cache"),
        (max(1, cores - 1), False, "torch leaving a core to the reader thread, as in a Dask worker; page cache"),
    ]
    if can_drop_caches():
        cases.append((max(1, cores - 1), True, "as in a Dask worker; page cache emptied before each run: from disk"))
    else:
        print("\n(not root: the search from disk, with the page cache emptied, is not measured)")
    for threads, cold, what in cases:
        torch.set_num_threads(threads)
        secs = {"f": [], "q": []}
        for i in range(a.repeat):  # interleaved, so that the load of a shared machine hits both alike
            secs["f"].append(search_seconds(f_url, os.path.join(work, f"run-f{threads}{cold:d}-{i}"), cold))
            secs["q"].append(search_seconds(q_url, os.path.join(work, f"run-q{threads}{cold:d}-{i}"), cold))
        bf, bq = min(secs["f"]), min(secs["q"])
        mf, mq = float(np.median(secs["f"])), float(np.median(secs["q"]))
        print(f"\nsearch in this process, default model, torch {threads} thread(s) ({what}), best of {a.repeat}:")
        print(f"  float32+lz4 {n / bf:8.0f} cutouts/s ({bf:.2f} s)\n  quantised   {n / bq:8.0f} cutouts/s ({bq:.2f} s)")
        print(f"  quantised / float32 speed: best {bf / bq:.3f}, median {mf / mq:.3f}")
        runs = {k: [round(x, 2) for x in v] for k, v in secs.items()}
        print(f"  all runs (s): float32 {runs['f']}, quantised {runs['q']}")


if __name__ == "__main__":
    main()
