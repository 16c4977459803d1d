"""Training and inference throughput of a lensdask ViT, eager and torch.compile'd, bf16 on a GPU.

One call on a machine with an NVIDIA GPU gives the figures for benchmarks/RESULTS.md::

    python benchmarks/bench_train_gpu.py --json gpu.json            # vit-base, 4 x 45 x 45, bf16

and a quick check anywhere (what the test suite runs)::

    python benchmarks/bench_train_gpu.py --arch test-vit --device cpu --batch-size 8 --steps 2 --warmup 1 --compile off

Synthetic normalised-like inputs (random normal) are used: throughput does not
depend on pixel values. Training steps include the forward pass, the loss, the
backward pass and an AdamW step, exactly as in ``lensdask train`` (bf16
autocast on CUDA, float32 weights); inference is ``inference_mode`` under the
same autocast. Data loading is not included (see bench_search.py for I/O).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time


def _sync(dev):
    import torch

    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def measure(
    arch: str,
    *,
    device: str,
    stamp: int,
    bands: int,
    num_classes: int,
    batch_size: int,
    infer_batch_size: int,
    steps: int,
    warmup: int,
    compiled: bool,
) -> dict:
    """Cutouts per second for training and inference of one configuration."""
    import torch

    from lensdask.model.architectures import arch_kwargs, build_vit
    from lensdask.model.infer import autocast, resolve_device

    dev = resolve_device(device)
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    torch.manual_seed(0)
    model = build_vit(arch_kwargs(arch, in_chans=bands, img_size=stamp, num_classes=num_classes)).to(dev)
    fwd = torch.compile(model) if compiled else model
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    loss_fn = torch.nn.CrossEntropyLoss()
    x = torch.randn(batch_size, bands, stamp, stamp, device=dev)
    y = torch.randint(0, num_classes, (batch_size,), device=dev)

    def train_step(fwd=fwd, opt=opt):
        with autocast(dev):
            loss = loss_fn(fwd(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss

    model.train()
    t0 = time.perf_counter()
    for _ in range(warmup):
        train_step()
    _sync(dev)
    t_warm_train = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(steps):
        loss = train_step()
    _sync(dev)
    t_train = time.perf_counter() - t0
    if not torch.isfinite(loss.detach()):
        raise RuntimeError(f"non-finite loss {float(loss)}")

    model.eval()
    xi = torch.randn(infer_batch_size, bands, stamp, stamp, device=dev)
    with torch.inference_mode(), autocast(dev):
        t0 = time.perf_counter()
        for _ in range(warmup):
            fwd(xi)
        _sync(dev)
        t_warm_inf = time.perf_counter() - t0
        t0 = time.perf_counter()
        for _ in range(steps):
            fwd(xi)
        _sync(dev)
        t_inf = time.perf_counter() - t0
    out = {
        "arch": arch,
        "compiled": compiled,
        "device": str(dev),
        "dtype": "bf16 autocast" if dev.type == "cuda" else "float32",
        "params": int(sum(p.numel() for p in model.parameters())),
        "stamp": stamp,
        "bands": bands,
        "batch_size": batch_size,
        "infer_batch_size": infer_batch_size,
        "steps": steps,
        "train_cutouts_per_s": round(steps * batch_size / t_train, 1),
        "infer_cutouts_per_s": round(steps * infer_batch_size / t_inf, 1),
        "warmup_s": round(t_warm_train + t_warm_inf, 2),
    }
    if dev.type == "cuda":
        out["peak_gib"] = round(torch.cuda.max_memory_allocated(dev) / 2**30, 2)
        torch.cuda.reset_peak_memory_stats(dev)
    del model, fwd, opt, train_step
    if dev.type == "cuda":
        torch.cuda.empty_cache()
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--arch", default="vit-base")
    p.add_argument("--device", default="auto")
    p.add_argument("--stamp", type=int, default=45)
    p.add_argument("--bands", type=int, default=4)
    p.add_argument("--classes", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--infer-batch-size", type=int, default=1024)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--compile", choices=["both", "on", "off"], default="both")
    p.add_argument("--json", help="also write the results here")
    a = p.parse_args(argv)

    import torch

    modes = {"both": [False, True], "on": [True], "off": [False]}[a.compile]
    machine = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    print(json.dumps(machine))
    results = []
    for compiled in modes:
        try:
            r = measure(
                a.arch,
                device=a.device,
                stamp=a.stamp,
                bands=a.bands,
                num_classes=a.classes,
                batch_size=a.batch_size,
                infer_batch_size=a.infer_batch_size,
                steps=a.steps,
                warmup=a.warmup,
                compiled=compiled,
            )
        except Exception as exc:  # e.g. torch.compile without a working compiler: report, keep the other row
            r = {"arch": a.arch, "compiled": compiled, "error": f"{type(exc).__name__}: {exc}"[:500]}
        results.append(r)
        print(json.dumps(r), flush=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"machine": machine, "results": results}, f, indent=2)
    return 0 if all("error" not in r for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
