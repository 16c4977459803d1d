"""The network bake-off of issue 27: every candidate trained on one store under one wall-clock budget, then scored.

The recipe (stores, seeds, validation split, budget, candidates) is fixed in ``RUN/recipe.json`` by
the first call, and every later call must give the same one. Three steps, each resumable::

    python benchmarks/bakeoff.py --run bakeoff/ --prepare --cluster local   # the two stores (~25 min on 2 cores)
    python benchmarks/bakeoff.py --run bakeoff/ --stop-after 3600          # train for at most an hour, then exit
    python benchmarks/bakeoff.py --run bakeoff/                            # go on; score and print the table at the end

``--prepare`` simulates the training store (64,000 scene rows: lenses, plain galaxies and
look-alikes, 30% of the lenses painted on the training ``des_galaxies`` and 30% of the plain
non-lenses the training galaxies themselves, as the shipped default's store) and the held-out
scene store (6,000 rows, no real galaxies, another seed).

Training: each candidate (architecture x seed) runs ``lensdask.train`` into ``RUN/<arch>-s<seed>/``
with ``resume`` and ``time_limit``, so a killed or stopped call goes on from its last epoch in a
later one. Its budget is wall-clock seconds, counted across calls in ``RUN/<arch>-s<seed>/budget.json``
(a heartbeat every second while it trains, so the time of an epoch cut short by a kill is spent
too). Epochs are planned once, before the first epoch, from a short calibration of the training
speed on synthetic batches (``bench_train_gpu.measure``), so that the cosine schedule ends within
the budget; ``--epochs`` fixes them instead.

Scoring (``RUN/<arch>-s<seed>/scores.json``, then ``RUN/table.json`` and ``RUN/table.md``):
parameters, forward GFLOPs per cutout, training wall seconds and epochs, validation AUROC (the
card's), AUROC and TPR at FPR 1e-3 on the held-out scenes (``lensdask.evaluate``), false positives
among the held-out real galaxies (``lensdask.inject --galaxies heldout``: plain stamps scoring at
or above the search threshold) and the search forward pass in cutouts/s (``bench_search.bare_forward``
over held-out cutouts, this process's torch threads).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import pathlib
import sys
import threading
import time

HERE = pathlib.Path(__file__).resolve().parent
REPO = HERE.parent
BUDGET = "budget.json"
SCORES = "scores.json"
CALIBRATION_STEPS = 20
EFFICIENCY = 0.8
"""Share of the synthetic-batch training speed that an epoch keeps (reading, augmentation, validation)."""


@dataclasses.dataclass
class Recipe:
    """What every candidate shares; fixed in ``RUN/recipe.json`` by the first call."""

    train_store: str
    heldout_store: str
    n_train: int = 64_000
    train_sim_seed: int = 4
    n_heldout: int = 6_000
    heldout_sim_seed: int = 5
    galaxies: str = str(REPO.parent / "shared" / "data" / "des_galaxies")
    archs: tuple = ("vit-lens-tiny", "vit-lens-small", "resnet-lens", "convnext-lens")
    seeds: tuple = (0,)
    budget_s: float = 7200.0
    epochs: int | None = None
    batch_size: int = 128
    learning_rate: float = 1e-3
    validation_fraction: float = 0.1
    orientations: int = 8
    search_rows: int = 4096

    def candidates(self) -> list[tuple[str, int]]:
        return [(a, s) for a in self.archs for s in self.seeds]


def load_recipe(run: pathlib.Path, given: Recipe) -> Recipe:
    """The run's recipe: written by the first call; a later call must give the same one."""
    path = run / "recipe.json"
    mine = json.loads(json.dumps(dataclasses.asdict(given)))
    if path.is_file():
        saved = json.loads(path.read_text())
        diff = sorted(k for k in set(saved) | set(mine) if saved.get(k) != mine.get(k))
        if diff:
            shown = "; ".join(f"{k}: saved {saved.get(k)!r}, given {mine.get(k)!r}" for k in diff)
            raise SystemExit(f"bakeoff: {path} fixes another recipe ({shown}); use another --run")
    else:
        run.mkdir(parents=True, exist_ok=True)
        _write_json(path, mine)
    return given


def _write_json(path: pathlib.Path, obj) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str) + "\n")
    os.replace(tmp, path)


def _read_json(path: pathlib.Path, default=None):
    return json.loads(path.read_text()) if path.is_file() else default


# -- the stores ---------------------------------------------------------------------------
def prepare(recipe: Recipe, client=None, progress: bool = True) -> None:
    """Simulate the training and held-out stores (each skipped when a finished one is there)."""
    from lensdask import simulate

    jobs = [
        (
            recipe.train_store,
            recipe.n_train,
            recipe.train_sim_seed,
            dict(backgrounds=recipe.galaxies, galaxies="train", background_fraction=0.3, real_negative_fraction=0.3),
        ),
        (recipe.heldout_store, recipe.n_heldout, recipe.heldout_sim_seed, {}),
    ]
    for out, n, seed, kw in jobs:
        done = pathlib.Path(out + ".done")
        if done.is_file():
            print(f"{out}: done before ({n} rows, seed {seed})")
            continue
        t0 = time.perf_counter()
        simulate(out, n, seed, client=client, overwrite=True, progress=progress, **kw)
        done.write_text(json.dumps({"n": n, "seed": seed, "seconds": time.perf_counter() - t0}) + "\n")
        print(f"{out}: {n} rows, seed {seed}, {time.perf_counter() - t0:.0f} s")


# -- training -----------------------------------------------------------------------------
class Ledger:
    """A candidate's ``budget.json``: wall seconds spent (across calls), planned epochs, done.

    While :meth:`running` is active a thread adds the elapsed time every ``beat`` seconds, so a
    killed call has spent what it ran.
    """

    def __init__(self, path: pathlib.Path, budget_s: float):
        self.path = path
        self.data = _read_json(path, {"budget_s": budget_s, "elapsed_s": 0.0, "sessions": [], "done": False})

    @property
    def remaining(self) -> float:
        return float(self.data["budget_s"]) - float(self.data["elapsed_s"])

    def save(self) -> None:
        _write_json(self.path, self.data)

    def running(self, beat: float = 1.0):
        ledger = self

        class _Beat:
            def __enter__(self):
                self.base, self.t0, self.stop = float(ledger.data["elapsed_s"]), time.perf_counter(), threading.Event()
                ledger.data["sessions"].append({"started": time.strftime("%Y-%m-%dT%H:%M:%S"), "seconds": 0.0})
                self.thread = threading.Thread(target=self._beat, daemon=True)
                self.thread.start()
                return self

            def _tick(self):
                dt = time.perf_counter() - self.t0
                ledger.data["elapsed_s"] = self.base + dt
                ledger.data["sessions"][-1]["seconds"] = dt
                ledger.save()

            def _beat(self):
                while not self.stop.wait(beat):
                    self._tick()

            def __exit__(self, *exc):
                self.stop.set()
                self.thread.join()
                self._tick()

        return _Beat()


def plan_epochs(recipe: Recipe, arch: str, n_train_rows: int, stamp: int, bands: int, classes: int) -> dict:
    """Epochs that fit the budget, from the training speed on synthetic batches (not counted in the budget)."""
    sys.path.insert(0, str(HERE))
    from bench_train_gpu import measure

    if recipe.epochs:
        return {"epochs": int(recipe.epochs), "how": "fixed by the recipe"}
    steps = CALIBRATION_STEPS if recipe.budget_s >= 600 else 2
    m = measure(
        arch,
        device="cpu",
        stamp=stamp,
        bands=bands,
        num_classes=classes,
        batch_size=recipe.batch_size,
        infer_batch_size=recipe.batch_size,
        steps=steps,
        warmup=1,
        compiled=False,
    )
    rate = float(m["train_cutouts_per_s"])
    epochs = max(1, math.floor(recipe.budget_s * rate * EFFICIENCY / max(n_train_rows, 1)))
    return {"epochs": epochs, "calibration_cutouts_per_s": rate, "efficiency": EFFICIENCY, "n_train": n_train_rows}


def train_candidate(recipe: Recipe, run: pathlib.Path, arch: str, seed: int, stop_at: float | None, progress: bool):
    """Train one candidate within what is left of its budget (and of this call); True when it is done."""
    from lensdask import open_store, train

    out = run / f"{arch}-s{seed}"
    out.mkdir(parents=True, exist_ok=True)
    ledger = Ledger(out / BUDGET, recipe.budget_s)
    if ledger.data["done"]:
        return True
    if "plan" not in ledger.data:
        store = open_store(recipe.train_store)
        n_rows = int(store.n_rows)
        n_train = int(round(n_rows * (1 - recipe.validation_fraction)))
        ledger.data["plan"] = plan_epochs(recipe, arch, n_train, store.stamp, len(store.bands), len(store.classes))
        ledger.save()
    limit = max(ledger.remaining, 0.0)
    capped = stop_at is not None and stop_at - time.perf_counter() < limit
    if capped:
        limit = max(stop_at - time.perf_counter(), 0.0)
        if limit <= 0:
            return False
    resume = (out / "train_state.pt").is_file()
    print(
        f"{arch} seed {seed}: {ledger.data['elapsed_s']:.0f} of {recipe.budget_s:.0f} s spent; "
        f"{'resuming' if resume else 'starting'} for at most {limit:.0f} s "
        f"({ledger.data['plan']['epochs']} epochs planned)",
        flush=True,
    )
    with ledger.running():
        card = train(
            recipe.train_store,
            out,
            arch=arch,
            epochs=int(ledger.data["plan"]["epochs"]),
            batch_size=recipe.batch_size,
            learning_rate=recipe.learning_rate,
            device="cpu",
            seed=seed,
            validation_fraction=recipe.validation_fraction,
            patience=0,
            balance=False,
            resume=resume,
            time_limit=limit,
            command=f"benchmarks/bakeoff.py {arch} seed {seed}",
            progress=progress,
        )
    t = card["training"]
    ledger.data["done"] = not (t["stopped_at_time_limit"] and capped)
    ledger.data["epochs_run"] = len(t["history"])
    ledger.save()
    return bool(ledger.data["done"])


# -- scoring ------------------------------------------------------------------------------
def search_speed(model_dir: pathlib.Path, store_path: str, rows: int, repeat: int = 2) -> float:
    """Cutouts/s of the search's forward pass over held-out cutouts (``bench_search.bare_forward``)."""
    import torch

    sys.path.insert(0, str(HERE))
    from lensdask import open_store
    from lensdask.model.checkpoint import load_checkpoint
    from lensdask.model.infer import resolve_batch_size

    from bench_search import bare_forward, normalised_batches

    model, card = load_checkpoint(model_dir, device="cpu")
    store = open_store(store_path)
    batches, n = [], 0
    for b in normalised_batches(store, card, resolve_batch_size("auto", "cpu")):
        batches.append(b[: rows - n])
        n += len(batches[-1])
        if n >= rows:
            break
    best = min(bare_forward(model, card, batches, torch.device("cpu")) for _ in range(repeat))
    return n / best


def score_candidate(recipe: Recipe, run: pathlib.Path, arch: str, seed: int, progress: bool) -> dict:
    """The table row of one trained candidate (cached in its ``scores.json``)."""
    import torch

    from lensdask import evaluate, inject
    from lensdask.model.architectures import build_model, family_of, forward_gflops
    from lensdask.model.checkpoint import read_card

    out = run / f"{arch}-s{seed}"
    cached = _read_json(out / SCORES)
    card = read_card(out)
    if cached and cached.get("model_id") == card["model_id"]:
        return cached
    kwargs, t = card["arch_kwargs"], card["training"]
    with torch.device("meta"):
        net = build_model(kwargs)
    side = int(card.get("input_size") or card["stamp"])
    held = evaluate(recipe.heldout_store, out, progress=False)
    real = inject(recipe.galaxies, out, galaxies="heldout", orientations=recipe.orientations, progress=False)
    ledger = _read_json(out / BUDGET, {})
    row = {
        "candidate": f"{arch}-s{seed}",
        "arch": arch,
        "seed": seed,
        "family": family_of(kwargs),
        "model_id": card["model_id"],
        "params": int(sum(p.numel() for p in net.parameters())),
        "gflops": round(forward_gflops(net, family_of(kwargs), len(card["bands"]), side), 4),
        "train_s": round(float(ledger.get("elapsed_s", t.get("wall_seconds", math.nan))), 1),
        "epochs": len(t["history"]),
        "epochs_planned": int(t["epochs"]),
        "best_epoch": int(t["best_epoch"]),
        "train_cutouts_per_s": round(float(t["cutouts_per_second"]), 1),
        "val_auroc": card.get("metrics", {}).get("auroc"),
        "heldout_auroc": held["auroc"],
        "heldout_tpr_fpr_1e-3": held["tpr_fpr_1e-3"],
        "real_false_positives": int(real["false_positives"]),
        "real_plain": int(real["n_unpainted"]),
        "real_fpr": real["fpr"],
        "real_auroc": real["auroc"],
        "search_cutouts_per_s": round(search_speed(out, recipe.heldout_store, recipe.search_rows), 1),
    }
    _write_json(out / SCORES, row)
    return row


COLUMNS = [
    ("candidate", "candidate", "{}"),
    ("params", "params", "{:,}"),
    ("gflops", "GFLOPs", "{:.4f}"),
    ("train_s", "train s", "{:.0f}"),
    ("epochs", "epochs", "{}"),
    ("val_auroc", "val AUROC", "{:.4f}"),
    ("heldout_auroc", "held-out AUROC", "{:.4f}"),
    ("heldout_tpr_fpr_1e-3", "TPR @ FPR 1e-3", "{:.3f}"),
    ("real_fpr", "real FPR", "{:.3f}"),
    ("search_cutouts_per_s", "search cutouts/s", "{:.0f}"),
]


def markdown(rows: list[dict]) -> str:
    """The table as markdown (real FPR shown with its count, e.g. ``0.000 (0/80)``)."""

    def cell(row, key, fmt):
        v = row.get(key)
        if v is None or (isinstance(v, float) and not math.isfinite(v)):
            return "–"
        text = fmt.format(v)
        if key == "real_fpr":
            text += f" ({row['real_false_positives']}/{row['real_plain']})"
        if key == "epochs" and row.get("epochs_planned") != v:
            text += f" of {row['epochs_planned']}"
        return text

    lines = ["| " + " | ".join(h for _, h, _ in COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(cell(r, k, f) for k, _, f in COLUMNS) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, help="bake-off directory (recipe, candidates, table)")
    parser.add_argument("--prepare", action="store_true", help="simulate the training and held-out stores, then stop")
    parser.add_argument("--cluster", default=None, help="Dask cluster for --prepare (e.g. local); default in-process")
    parser.add_argument("--train-store", default=None, help="default RUN/train.zarr")
    parser.add_argument("--heldout-store", default=None, help="default RUN/heldout.zarr")
    parser.add_argument("--n-train", type=int, default=Recipe.n_train)
    parser.add_argument("--n-heldout", type=int, default=Recipe.n_heldout)
    parser.add_argument("--train-sim-seed", type=int, default=Recipe.train_sim_seed)
    parser.add_argument("--heldout-sim-seed", type=int, default=Recipe.heldout_sim_seed)
    parser.add_argument("--galaxies", default=Recipe.galaxies, help="real DES galaxies (training and held-out rows)")
    parser.add_argument("--archs", nargs="+", default=list(Recipe.archs))
    parser.add_argument("--seeds", nargs="+", type=int, default=list(Recipe.seeds))
    parser.add_argument("--budget", type=float, default=Recipe.budget_s, help="wall seconds per candidate")
    parser.add_argument("--epochs", type=int, default=None, help="fixed epochs instead of planning them")
    parser.add_argument("--batch-size", type=int, default=Recipe.batch_size)
    parser.add_argument("--validation-fraction", type=float, default=Recipe.validation_fraction)
    parser.add_argument("--orientations", type=int, default=Recipe.orientations)
    parser.add_argument("--search-rows", type=int, default=Recipe.search_rows)
    parser.add_argument("--stop-after", type=float, default=None, help="end this call's training after SECONDS")
    parser.add_argument("--no-progress", action="store_true")
    a = parser.parse_args(argv)

    t_start = time.perf_counter()
    run = pathlib.Path(a.run)
    recipe = load_recipe(
        run,
        Recipe(
            train_store=a.train_store or str(run / "train.zarr"),
            heldout_store=a.heldout_store or str(run / "heldout.zarr"),
            n_train=a.n_train,
            train_sim_seed=a.train_sim_seed,
            n_heldout=a.n_heldout,
            heldout_sim_seed=a.heldout_sim_seed,
            galaxies=a.galaxies,
            archs=tuple(a.archs),
            seeds=tuple(a.seeds),
            budget_s=a.budget,
            epochs=a.epochs,
            batch_size=a.batch_size,
            validation_fraction=a.validation_fraction,
            orientations=a.orientations,
            search_rows=a.search_rows,
        ),
    )
    progress = not a.no_progress
    if a.prepare:
        if a.cluster:
            from lensdask import cluster_client

            with cluster_client(a.cluster) as client:
                prepare(recipe, client, progress)
        else:
            prepare(recipe, None, progress)
        return 0
    for store in (recipe.train_store, recipe.heldout_store):
        if not pathlib.Path(store + ".done").is_file():
            raise SystemExit(f"bakeoff: {store} is not prepared; run with --prepare first")
    stop_at = None if a.stop_after is None else t_start + a.stop_after
    pending = [
        (arch, seed)
        for arch, seed in recipe.candidates()
        if not train_candidate(recipe, run, arch, seed, stop_at, progress)
    ]
    if pending:
        print(f"stopped after {a.stop_after:g} s; not finished: {', '.join(f'{x}-s{s}' for x, s in pending)}")
        print(f"run the same command again to go on ({run})")
        return 3
    rows = [score_candidate(recipe, run, arch, seed, progress) for arch, seed in recipe.candidates()]
    _write_json(run / "table.json", {"recipe": dataclasses.asdict(recipe), "rows": rows})
    table = markdown(rows)
    (run / "table.md").write_text(table)
    print(table, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
