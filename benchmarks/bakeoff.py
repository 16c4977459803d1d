"""The network bake-off of issue 27: every candidate trained on one store under one wall-clock budget, then
scored, then the best two and three combined into committees and scored the same way.

The recipe (stores, seeds, validation split, budget, candidates, committees) is fixed in
``RUN/recipe.json`` by the first call, and every later call must give the same one (a recipe saved
before a field existed is read with that field's default, and written back with it). Three steps,
each resumable::

    python benchmarks/bakeoff.py --run bakeoff/ --prepare --cluster local   # the three stores (~25 min on 2 cores)
    python benchmarks/bakeoff.py --run bakeoff/ --stop-after 3600          # train for at most an hour, then exit
    python benchmarks/bakeoff.py --run bakeoff/                            # go on; score and print the table at the end
    python benchmarks/bakeoff.py --run bakeoff/ --status                   # where each candidate stands

A session's machine does not outlive it, so the issue-27 run lives in the repository,
``benchmarks/bakeoff_run/``: its recipe, the stores' digests (``stores.json``), each candidate's
ledger, card, weights and training state are committed at the end of a session, and the stores
(ignored by git) are rebuilt by ``--prepare`` in the next one. The same seed gives the same rows
whatever the chunking; the digests check it before any training goes on.

``--prepare`` simulates the training store (64,000 scene rows: lenses, plain galaxies and
look-alikes, 30% of the lenses painted on the training ``des_galaxies`` and 30% of the plain
non-lenses the training galaxies themselves, as the shipped default's store), the held-out
scene store (6,000 rows, no real galaxies, another seed) and the committees' meta store (8,000
rows, seed 6, simulated as the held-out store: see below). Each is skipped when its
``<store>.done`` is there.

Training: each candidate (architecture x seed) runs ``lensdask.train`` into ``RUN/<arch>-s<seed>/``
with ``resume`` and ``time_limit``, so a killed or stopped call goes on from its last epoch in a
later one. Its budget is wall-clock seconds, counted across calls in ``RUN/<arch>-s<seed>/budget.json``
(a heartbeat every second while it trains, so the time of an epoch cut short by a kill is spent
too). Epochs are planned once, before the first epoch, from a short calibration of the training
speed on synthetic batches (``bench_train_gpu.measure``), so that the cosine schedule ends within
the budget; ``--epochs`` fixes them instead. Training does not need the meta store.

Scoring (``RUN/<arch>-s<seed>/scores.json``, then ``RUN/table.json`` and ``RUN/table.md``):
parameters, forward GFLOPs per cutout, training wall seconds and epochs, validation AUROC (the
card's), AUROC and TPR at FPR 1e-3 on the held-out scenes (``lensdask.evaluate``), false positives
among the held-out real galaxies (``lensdask.inject --galaxies heldout``: plain stamps scoring at
or above the search threshold) and the search forward pass in cutouts/s (``bench_search.bare_forward``
over held-out cutouts, this process's torch threads).

Committees (``RUN/committee-k<k>/``, rows after the single networks): for each ``k`` in
``committee_sizes`` (default 2 and 3; sizes above the number of candidates are skipped), the
members are the ``k`` candidates of highest validation AUROC (the card's ``metrics.auroc``, ties
in recipe order) -- a rule fixed before any held-out set is scored, so held-out figures never
choose members. They are combined by ``lensdask.model.committee.build_committee`` with the
``committee_meta`` meta-classifier (default logistic) fitted on the meta store, whose rows trained
none of them (rebuilt only when the members' model ids or the meta-classifier change), and the
committee is scored as a candidate is: parameters, GFLOPs and training seconds are the sums over
its members; epochs and validation AUROC have no single value (``None``, shown as "–"); its
meta-classifier's AUROC on the meta store's held-back rows is ``meta_heldback_auroc``. The meta
store holds no real galaxies: a store painted on the training galaxies is refused by
``build_committee`` (every member trained on them), and one on the held-out galaxies would make
the committee's real FPR (``inject --galaxies heldout``) impossible. Scoring committees needs the
meta store prepared (``--prepare``); the single networks' table is written first.

The new default (``RUN/table.json`` ``decision``, and the last line of ``table.md``): once every row is
scored, :func:`choose_default` applies the rule written into ``benchmarks/RESULTS.md`` before any
held-out set was scored -- gates on the held-out real galaxies and on the search cost against the
baseline (``--baseline``, default ``vit-lens-tiny`` retrained under the recipe), then the best TPR at
FPR 1e-3 on the held-out scenes, which must beat the baseline's by more than 0.02 to change the default.
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


META_STORE = "meta.zarr"
"""The meta store's name in ``RUN`` when the recipe names none."""
COMMITTEE = "committee-k{k}"
"""A committee's directory in ``RUN`` (and its row's name)."""
COMMITTEE_RULE = (
    "committee-k<k>, for each k in committee_sizes {sizes} up to the number of candidates: the k candidates of "
    "highest validation AUROC (model card metrics.auroc, their own validation split of the training store; ties "
    "in recipe order), fixed before any held-out set is scored; combined by build_committee with a {meta} "
    "meta-classifier (config committee.*: l2, held-back fraction, seed) fitted on the meta store {store} "
    "({n} rows, simulation seed {seed}, no real galaxies, as the held-out scenes), which trained none of them; "
    "params, GFLOPs and train s are sums over the members"
)


@dataclasses.dataclass
class Recipe:
    """What every candidate and committee shares; fixed in ``RUN/recipe.json`` by the first call.

    Attributes
    ----------
    train_store, heldout_store : str
        The training store and the held-out scene store.
    n_train, n_heldout, n_meta : int
        Rows simulated into the training, held-out and meta stores.
    train_sim_seed, heldout_sim_seed, meta_sim_seed : int
        Their simulation seeds (distinct, so no store repeats another's rows).
    galaxies : str
        Real DES galaxies: backgrounds and plain negatives of the training store (its ``train``
        split), and the held-out real galaxies of the real FPR (its ``heldout`` split).
    archs, seeds : tuple
        The candidates: every architecture with every training seed.
    budget_s : float
        Wall-clock seconds of training per candidate, across calls.
    epochs : int or None
        Fixed epochs; None plans them from a calibration (:func:`plan_epochs`).
    batch_size, learning_rate, validation_fraction :
        Training settings of every candidate (cutouts per step, peak rate, share of the training
        store held out for validation).
    orientations : int
        Rotations and flips of each held-out real galaxy in the real FPR.
    search_rows : int
        Held-out cutouts timed for the search speed.
    meta_store : str or None
        The committees' meta-classifier store; None is ``RUN/meta.zarr`` (:func:`load_recipe`).
    committee_sizes : tuple of int
        Members of each committee (each at least 2); sizes above the number of candidates are skipped.
    committee_meta : {"logistic", "mlp"}
        The committees' meta-classifier.
    """

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
    meta_store: str | None = None
    n_meta: int = 8_000
    meta_sim_seed: int = 6
    committee_sizes: tuple = (2, 3)
    committee_meta: str = "logistic"

    def candidates(self) -> list[tuple[str, int]]:
        return [(a, s) for a in self.archs for s in self.seeds]

    def committee_ks(self) -> list[int]:
        """The committee sizes built: those of ``committee_sizes`` up to the number of candidates, each once."""
        n = len(self.candidates())
        return sorted({int(k) for k in self.committee_sizes if int(k) <= n})

    def committee_rule(self) -> str:
        """How committees are made, in words (written into ``table.json``)."""
        return COMMITTEE_RULE.format(
            sizes=list(self.committee_sizes), meta=self.committee_meta, store=self.meta_store, n=self.n_meta,
            seed=self.meta_sim_seed,
        )  # fmt: skip


def recipe_defaults(run: pathlib.Path) -> dict:
    """The JSON of every recipe field that has a default, as this run would give it (``meta_store`` in ``run``)."""
    out = {f.name: f.default for f in dataclasses.fields(Recipe) if f.default is not dataclasses.MISSING}
    out["meta_store"] = str(run / META_STORE)
    return json.loads(json.dumps(out))


def load_recipe(run: pathlib.Path, given: Recipe) -> Recipe:
    """The run's recipe: written by the first call; a later call must give the same one.

    A field missing from the saved ``recipe.json`` (saved before the field existed) is read as its
    default (:func:`recipe_defaults`); when the rest agrees, the file is written again with every field.

    Returns
    -------
    Recipe
        ``given``, its ``meta_store`` made ``RUN/meta.zarr`` when None.

    Raises
    ------
    SystemExit
        The saved recipe differs from ``given`` (the message names each field).
    """
    path = run / "recipe.json"
    if given.meta_store is None:
        given = dataclasses.replace(given, meta_store=str(run / META_STORE))
    mine = json.loads(json.dumps(dataclasses.asdict(given)))
    if path.is_file():
        saved = json.loads(path.read_text())
        missing = sorted(set(mine) - set(saved))
        saved = {**{k: v for k, v in recipe_defaults(run).items() if k in missing}, **saved}
        diff = sorted(k for k in set(saved) | set(mine) if saved.get(k) != mine.get(k))
        if diff:
            shown = "; ".join(f"{k}: saved {saved.get(k)!r}, given {mine.get(k)!r}" for k in diff)
            raise SystemExit(f"bakeoff: {path} fixes another recipe ({shown}); use another --run")
        if missing:
            _write_json(path, mine)
            print(f"{path}: added {', '.join(missing)} (their defaults)")
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
def prepare(recipe: Recipe, run: pathlib.Path, client=None, progress: bool = True) -> None:
    """Simulate the training, held-out and meta stores (each skipped when its ``<store>.done`` is there).

    The meta store (for the committees' meta-classifier; only when a committee is planned) is
    simulated as the held-out scenes, with its own seed: no real galaxies (see the module's notes).
    Each store's digest is recorded in ``RUN/stores.json`` the first time, and checked every later
    time (:func:`check_store`): a store rebuilt in a later session must hold the same rows.
    """
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
    if recipe.committee_ks():
        jobs.append((str(recipe.meta_store), recipe.n_meta, recipe.meta_sim_seed, {}))
    for out, n, seed, kw in jobs:
        done = pathlib.Path(out + ".done")
        if done.is_file():
            print(f"{out}: done before ({n} rows, seed {seed})")
        else:
            t0 = time.perf_counter()
            simulate(out, n, seed, client=client, overwrite=True, progress=progress, **kw)
            done.write_text(json.dumps({"n": n, "seed": seed, "seconds": time.perf_counter() - t0}) + "\n")
            print(f"{out}: {n} rows, seed {seed}, {time.perf_counter() - t0:.0f} s")
        check_store(run, out, n, seed)


STORES = "stores.json"
"""The stores' digests in ``RUN`` (kept with the run, while the stores themselves are rebuilt by ``--prepare``)."""
DIGEST_ROWS = 32
"""Rows of each tile whose stored pixels enter a store's digest (with every row of its catalogue)."""


def store_digest(path: str) -> str:
    """A SHA-256 of a store's rows: its whole catalogue and the stored pixels of each tile's first rows.

    The same recipe simulates the same rows whatever the chunking, so a store rebuilt in another
    session (on a fresh machine, from ``--prepare``) has the digest of the one it replaces.
    """
    import hashlib

    import numpy as np
    import pandas as pd

    from lensdask import open_store

    store = open_store(path)
    h = hashlib.sha256()
    h.update(pd.util.hash_pandas_object(store.read_catalog(), index=False).to_numpy().tobytes())
    for t in store.written_tiles():
        h.update(np.ascontiguousarray(store.read_images(t, 0, DIGEST_ROWS)).tobytes())
    return h.hexdigest()


def check_store(run: pathlib.Path, path: str, n: int, seed: int) -> None:
    """Record a prepared store's digest in ``RUN/stores.json``, or check it against the one recorded.

    Raises
    ------
    SystemExit
        The store differs from the one recorded for this run: candidates trained on the other rows
        must not go on, or be scored, on these.
    """
    book = _read_json(run / STORES, {})
    key = pathlib.Path(path).name
    now = {"n": int(n), "seed": int(seed), "digest": store_digest(path)}
    if key in book and book[key] != now:
        raise SystemExit(
            f"bakeoff: {path} is not the store this run was prepared with (recorded {book[key]}, now {now}); "
            f"delete it and its .done, and --prepare again with the recipe's library versions"
        )
    if key not in book:
        book[key] = now
        _write_json(run / STORES, book)
        print(f"{path}: digest {now['digest'][:12]} recorded in {run / STORES}")


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


def first_epoch_seconds(plan: dict) -> float:
    """Wall seconds of a candidate's first epoch as its plan expects them (0 when the recipe fixed the epochs)."""
    if "calibration_cutouts_per_s" not in plan:
        return 0.0
    return float(plan["n_train"]) / (float(plan["calibration_cutouts_per_s"]) * float(plan["efficiency"]))


def train_candidate(recipe: Recipe, run: pathlib.Path, arch: str, seed: int, stop_at: float | None, progress: bool):
    """Train one candidate within what is left of its budget (and of this call); True when it is done."""
    from lensdask import open_store, train

    out = run / f"{arch}-s{seed}"
    out.mkdir(parents=True, exist_ok=True)
    ledger = Ledger(out / BUDGET, recipe.budget_s)
    if ledger.data["done"]:
        return True
    if stop_at is not None and time.perf_counter() >= stop_at:
        return False  # this call's time is up: not even a calibration
    if "plan" not in ledger.data:
        store = open_store(recipe.train_store)
        n_rows = int(store.n_rows)
        n_train = int(round(n_rows * (1 - recipe.validation_fraction)))
        ledger.data["plan"] = plan_epochs(recipe, arch, n_train, store.stamp, len(store.bands), len(store.classes))
        ledger.save()
    limit = max(ledger.remaining, 0.0)
    capped = stop_at is not None and stop_at - time.perf_counter() < limit
    resume = (out / "train_state.pt").is_file()
    if capped:
        limit = max(stop_at - time.perf_counter(), 0.0)
        # train() stops before an epoch that would end past its limit once it has timed one; a fresh start
        # has not, so its first epoch is estimated from the calibration
        if limit <= 0 or (not resume and limit < first_epoch_seconds(ledger.data["plan"])):
            return False
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


def _history(out: pathlib.Path) -> list[dict]:
    """A candidate's epochs so far: its training state's history (newest), else its card's, else none."""
    state = out / "train_state.pt"
    if state.is_file():
        import torch

        return json.loads(torch.load(state, map_location="cpu", weights_only=True)["history"])
    card = _read_json(out / "model_card.json", {})
    return list((card.get("training") or {}).get("history") or [])


def status(recipe: Recipe, run: pathlib.Path) -> str:
    """Where each candidate stands, as the markdown rows of RESULTS.md's training log (validation only).

    Columns: state (not started, training, done), wall seconds spent of the budget, epochs run (and
    planned), and the best validation AUROC with its epoch. Nothing held out is read.
    """
    lines = ["| candidate | state | budget spent | epochs (planned) | best validation AUROC |", "|---|---|---|---|---|"]
    for arch, seed in recipe.candidates():
        out = run / f"{arch}-s{seed}"
        ledger = _read_json(out / BUDGET)
        if ledger is None:
            lines.append(f"| `{arch}-s{seed}` | not started | 0 of {recipe.budget_s:,.0f} s | – | – |")
            continue
        history = _history(out)
        scored = [h for h in history if isinstance(h.get("val_auroc"), (int, float)) and math.isfinite(h["val_auroc"])]
        best = max(scored, key=lambda h: h["val_auroc"], default=None)
        planned = (ledger.get("plan") or {}).get("epochs", "–")
        lines.append(
            f"| `{arch}-s{seed}` | {'done' if ledger.get('done') else 'training'} | "
            f"{float(ledger['elapsed_s']):,.0f} of {float(ledger['budget_s']):,.0f} s | {len(history)} ({planned}) | "
            + (f"{best['val_auroc']:.4f} (epoch {best['epoch']}) |" if best else "– |")
        )
    return "\n".join(lines) + "\n"


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


def _network_size(card: dict) -> tuple[int, float]:
    """Parameters and forward GFLOPs per cutout of one network (not a committee), from its card."""
    import torch

    from lensdask.model.architectures import build_model, family_of, forward_gflops

    kwargs = card["arch_kwargs"]
    with torch.device("meta"):
        net = build_model(kwargs)
    side = int(card.get("input_size") or card["stamp"])
    params = int(sum(p.numel() for p in net.parameters()))
    return params, float(forward_gflops(net, family_of(kwargs), len(card["bands"]), side))


def _budget_seconds(model_dir: pathlib.Path, card: dict) -> float:
    """Wall seconds a network trained: its ``budget.json`` (all calls), else its card's ``wall_seconds``."""
    ledger = _read_json(model_dir / BUDGET, {})
    return float(ledger.get("elapsed_s", card["training"].get("wall_seconds", math.nan)))


def score_model(recipe: Recipe, model_dir: pathlib.Path, name: str, progress: bool, seed: int | None = None) -> dict:
    """The table row of one trained network or committee in ``model_dir`` (cached in its ``scores.json``).

    Parameters
    ----------
    recipe : Recipe
        Its held-out stores and scoring settings.
    model_dir : pathlib.Path
        A candidate's directory, or a committee's (``lensdask.model.committee``).
    name : str
        The row's ``candidate``.
    progress : bool
        Unused (the scoring passes are quiet).
    seed : int, optional
        The candidate's training seed (None for a committee).

    Returns
    -------
    dict
        The row; see the module's docstring. A committee's ``params``, ``gflops`` and ``train_s`` are
        sums over its members (their own ``budget.json``, else card), its ``epochs``, ``epochs_planned``,
        ``best_epoch``, ``train_cutouts_per_s`` and ``val_auroc`` are None, and it adds ``members`` (their
        directory names), ``member_model_ids``, ``meta`` and ``meta_heldback_auroc`` (its meta-classifier's
        AUROC on the meta store's held-back rows, beside ``meta_heldback_auroc_mean``, the members' mean's).
    """
    from lensdask import evaluate, inject
    from lensdask.model.architectures import family_of
    from lensdask.model.checkpoint import committee_members, is_committee, read_card

    out = pathlib.Path(model_dir)
    cached = _read_json(out / SCORES)
    card = read_card(out)
    if cached and cached.get("model_id") == card["model_id"]:
        return cached
    held = evaluate(recipe.heldout_store, out, progress=False)
    real = inject(recipe.galaxies, out, galaxies="heldout", orientations=recipe.orientations, progress=False)
    row: dict = {"candidate": name, "arch": card["arch"], "seed": seed}
    extra: dict = {}
    if is_committee(card):
        members = [(d, rec, read_card(d)) for d, rec in committee_members(out, card)]
        sizes = [_network_size(c) for _, _, c in members]
        heldback = (card.get("metrics") or {}).get("heldback") or {}
        extra = dict(
            members=[pathlib.Path(r["source"]).name for _, r, _ in members],
            member_model_ids=[r["model_id"] for _, r, _ in members],
            meta=card["committee"]["meta"]["kind"],
            meta_heldback_auroc=heldback.get("auroc"),
            meta_heldback_auroc_mean=heldback.get("auroc_mean"),
        )
        row.update(
            family="committee",
            model_id=card["model_id"],
            params=sum(p for p, _ in sizes),
            gflops=round(sum(g for _, g in sizes), 4),
            train_s=round(sum(_budget_seconds(pathlib.Path(r["source"]), c) for _, r, c in members), 1),
            epochs=None,
            epochs_planned=None,
            best_epoch=None,
            train_cutouts_per_s=None,
            val_auroc=None,
        )
    else:
        t = card["training"]
        params, gflops = _network_size(card)
        row.update(
            family=family_of(card["arch_kwargs"]),
            model_id=card["model_id"],
            params=params,
            gflops=round(gflops, 4),
            train_s=round(_budget_seconds(out, card), 1),
            epochs=len(t["history"]),
            epochs_planned=int(t["epochs"]),
            best_epoch=int(t["best_epoch"]),
            train_cutouts_per_s=round(float(t["cutouts_per_second"]), 1),
            val_auroc=card.get("metrics", {}).get("auroc"),
        )
    row.update(
        {
            "heldout_auroc": held["auroc"],
            "heldout_tpr_fpr_1e-3": held["tpr_fpr_1e-3"],
            "real_false_positives": int(real["false_positives"]),
            "real_plain": int(real["n_unpainted"]),
            "real_fpr": real["fpr"],
            "real_auroc": real["auroc"],
            "search_cutouts_per_s": round(search_speed(out, recipe.heldout_store, recipe.search_rows), 1),
        }
    )
    row.update(extra)
    _write_json(out / SCORES, row)
    return row


def score_candidate(recipe: Recipe, run: pathlib.Path, arch: str, seed: int, progress: bool) -> dict:
    """The table row of one trained candidate, ``RUN/<arch>-s<seed>`` (:func:`score_model`)."""
    return score_model(recipe, run / f"{arch}-s{seed}", f"{arch}-s{seed}", progress, seed=seed)


# -- committees ---------------------------------------------------------------------------
def by_validation_auroc(run: pathlib.Path, recipe: Recipe) -> list[str]:
    """The candidates' directory names, best validation AUROC (card ``metrics.auroc``) first, ties in recipe order.

    Only the cards are read: no held-out figure can change the order. A missing or non-finite AUROC
    ranks last.
    """
    from lensdask.model.checkpoint import read_card

    def val(name: str) -> float:
        v = (read_card(run / name).get("metrics") or {}).get("auroc")
        return float(v) if isinstance(v, (int, float)) and math.isfinite(v) else -math.inf

    names = [f"{arch}-s{seed}" for arch, seed in recipe.candidates()]
    return sorted(names, key=lambda n: -val(n))  # stable: ties keep the recipe's order


def build_committees(recipe: Recipe, run: pathlib.Path, progress: bool) -> list[tuple[pathlib.Path, str]]:
    """Build ``RUN/committee-k<k>`` for each size of :meth:`Recipe.committee_ks` (kept when already built of
    the same members, by model id, and meta-classifier).

    Returns
    -------
    list of (pathlib.Path, str)
        Each committee's directory and row name, smallest first.
    """
    from lensdask.model.checkpoint import CARD, read_card
    from lensdask.model.committee import build_committee

    ranked = by_validation_auroc(run, recipe)
    built = []
    for k in recipe.committee_ks():
        name = COMMITTEE.format(k=k)
        out = run / name
        members = [run / m for m in ranked[:k]]
        ids = [read_card(m)["model_id"] for m in members]
        card = _read_json(out / CARD)
        same = (
            card is not None
            and [m.get("model_id") for m in card.get("committee", {}).get("members", [])] == ids
            and card["committee"].get("meta", {}).get("kind") == recipe.committee_meta
        )
        if same:
            print(f"{name}: built before ({', '.join(ranked[:k])})")
        else:
            t0 = time.perf_counter()
            build_committee(
                str(recipe.meta_store), members, out, meta=recipe.committee_meta, overwrite=True,
                progress=progress, command=f"benchmarks/bakeoff.py {name}",
            )  # fmt: skip
            print(f"{name}: {', '.join(ranked[:k])}, {recipe.committee_meta} meta, {time.perf_counter() - t0:.0f} s")
        built.append((out, name))
    return built


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
    """The table as markdown (real FPR shown with its count, e.g. ``0.000 (0/80)``; a committee with its
    members, e.g. ``committee-k2 (vit-lens-tiny-s0 + resnet-lens-s0)``; no value: "–")."""

    def cell(row, key, fmt):
        v = row.get(key)
        if v is None or (isinstance(v, float) and not math.isfinite(v)):
            return "–"
        text = fmt.format(v)
        if key == "real_fpr":
            text += f" ({row['real_false_positives']}/{row['real_plain']})"
        if key == "candidate" and row.get("members"):
            text += f" ({' + '.join(row['members'])})"
        if key == "epochs" and row.get("epochs_planned") != v:
            text += f" of {row['epochs_planned']}"
        return text

    lines = ["| " + " | ".join(h for _, h, _ in COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(cell(r, k, f) for k, _, f in COLUMNS) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, help="bake-off directory (recipe, candidates, table)")
    parser.add_argument("--prepare", action="store_true", help="simulate the three stores, then stop")
    parser.add_argument("--status", action="store_true", help="print where each candidate stands, then stop")
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
    parser.add_argument("--meta-store", default=None, help="the committees' meta store (default RUN/meta.zarr)")
    parser.add_argument("--n-meta", type=int, default=Recipe.n_meta)
    parser.add_argument("--meta-sim-seed", type=int, default=Recipe.meta_sim_seed)
    parser.add_argument(
        "--committee-sizes", nargs="*", type=int, default=list(Recipe.committee_sizes),
        help="members of each committee (at least 2; none: no committees)",
    )  # fmt: skip
    parser.add_argument("--committee-meta", default=Recipe.committee_meta, choices=("logistic", "mlp"))
    parser.add_argument("--stop-after", type=float, default=None, help="end this call's training after SECONDS")
    parser.add_argument(
        "--baseline", default=None,
        help="the row the new default must beat (default vit-lens-tiny-s<first seed>: today's architecture, retrained)",
    )  # fmt: skip
    parser.add_argument("--no-progress", action="store_true")
    a = parser.parse_args(argv)

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
            meta_store=a.meta_store,
            n_meta=a.n_meta,
            meta_sim_seed=a.meta_sim_seed,
            committee_sizes=tuple(a.committee_sizes),
            committee_meta=a.committee_meta,
        ),
    )
    if any(k < 2 for k in recipe.committee_sizes):
        raise SystemExit(f"bakeoff: a committee needs at least two members, got sizes {list(recipe.committee_sizes)}")
    progress = not a.no_progress
    if a.status:
        print(status(recipe, run), end="")
        return 0
    if a.prepare:
        if a.cluster:
            from lensdask import cluster_client

            with cluster_client(a.cluster) as client:
                prepare(recipe, run, client, progress)
        else:
            prepare(recipe, run, None, progress)
        return 0
    for store, n, seed in (
        (recipe.train_store, recipe.n_train, recipe.train_sim_seed),
        (recipe.heldout_store, recipe.n_heldout, recipe.heldout_sim_seed),
    ):
        if not pathlib.Path(store + ".done").is_file():
            raise SystemExit(f"bakeoff: {store} is not prepared; run with --prepare first")
        check_store(run, store, n, seed)
    stop_at = None if a.stop_after is None else time.perf_counter() + a.stop_after  # from here: checks excluded
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
    write_table(run, recipe, rows)
    if recipe.committee_ks():
        if not pathlib.Path(f"{recipe.meta_store}.done").is_file():
            raise SystemExit(
                f"bakeoff: the committees' meta store {recipe.meta_store} is not prepared; run with --prepare, then "
                f"this command again for the committee rows ({run / 'table.md'} has the single networks)"
            )
        rows += [score_model(recipe, d, name, progress) for d, name in build_committees(recipe, run, progress)]
    decision = choose_default(rows, a.baseline or f"vit-lens-tiny-s{recipe.seeds[0]}")
    write_table(run, recipe, rows, decision)
    print(markdown(rows), end="")
    print(f"\nNew default: {decision['reason']}.")
    return 0


# -- the new default ---------------------------------------------------------------------
TPR_KEY = "heldout_tpr_fpr_1e-3"
TPR_MARGIN = 0.02
"""TPR at FPR 1e-3 within this of the best ties (about 2 sigma at TPR ~0.2 with 3,000 lenses); the winner must beat
the baseline by more than this to become the default."""
COST_LIMIT = 3.0
"""Search cost per cutout, at most this many times the baseline's (search cutouts/s at least 1/COST_LIMIT of it)."""
DEFAULT_RULE = (
    "Among the rows (candidates and committees) that pass both gates -- 0 held-out real plain stamps at or above "
    "the search threshold, and search cutouts/s at least 1/{cost:g} of the baseline {baseline}'s -- the highest "
    "TPR at FPR 1e-3 on the held-out scenes wins; rows within {margin:g} of it tie, and among them the higher "
    "held-out AUROC wins, then the faster search. The default changes only if the winner beats the baseline by "
    "more than {margin:g} in TPR at FPR 1e-3 (benchmarks/RESULTS.md, fixed before any held-out set was scored)."
)


def choose_default(rows: list[dict], baseline: str) -> dict:
    """Apply the rule for the new default (``benchmarks/RESULTS.md``, issue 27) to the scored rows.

    Parameters
    ----------
    rows : list of dict
        The table's rows (:func:`score_model`): ``candidate``, ``real_false_positives``,
        ``search_cutouts_per_s``, ``heldout_tpr_fpr_1e-3``, ``heldout_auroc``.
    baseline : str
        The row of today's architecture retrained under the recipe (e.g. ``vit-lens-tiny-s0``): the
        search-cost gate and the margin to beat are measured against it.

    Returns
    -------
    dict
        ``rule`` (in words), ``baseline``, ``gates`` (``{candidate: reasons it fails, [] when it passes}``),
        ``winner`` (the best row passing both gates, or None), ``change`` (True when the winner beats the
        baseline by more than :data:`TPR_MARGIN`; then it becomes the default) and ``reason`` (one line).
    """
    by_name = {r["candidate"]: r for r in rows}
    out: dict = {
        "rule": DEFAULT_RULE.format(cost=COST_LIMIT, baseline=baseline, margin=TPR_MARGIN),
        "baseline": baseline,
        "gates": {},
        "winner": None,
        "change": False,
    }
    base = by_name.get(baseline)
    if base is None:
        out["reason"] = f"no row {baseline!r} to measure against: the shipped default stays"
        return out
    min_speed = float(base["search_cutouts_per_s"]) / COST_LIMIT
    for r in rows:
        fails = []
        if int(r["real_false_positives"]) != 0:
            fails.append(f"{r['real_false_positives']} real plain stamps at or above the threshold")
        if not float(r["search_cutouts_per_s"]) >= min_speed:
            speed = f"{r['search_cutouts_per_s']:.0f}"
            fails.append(f"search {speed} cutouts/s < {min_speed:.0f} (1/{COST_LIMIT:g} of {baseline}'s)")
        out["gates"][r["candidate"]] = fails
    passing = [r for r in rows if not out["gates"][r["candidate"]]]
    if not passing:
        out["reason"] = "no row passes both gates: the shipped default stays"
        return out
    best_tpr = max(float(r[TPR_KEY]) for r in passing)
    tied = [r for r in passing if float(r[TPR_KEY]) >= best_tpr - TPR_MARGIN]
    winner = max(tied, key=lambda r: (float(r["heldout_auroc"]), float(r["search_cutouts_per_s"])))
    gain = float(winner[TPR_KEY]) - float(base[TPR_KEY])
    out["winner"] = winner["candidate"]
    out["change"] = bool(winner["candidate"] != baseline and gain > TPR_MARGIN)
    out["reason"] = (
        f"{winner['candidate']} wins (TPR at FPR 1e-3 {float(winner[TPR_KEY]):.3f}, held-out AUROC "
        f"{float(winner['heldout_auroc']):.4f}), "
        + (
            f"{gain:+.3f} over {baseline}: it becomes the default"
            if out["change"]
            else f"{gain:+.3f} over {baseline}, not more than {TPR_MARGIN:g}: the shipped default stays"
        )
    )
    return out


def write_table(run: pathlib.Path, recipe: Recipe, rows: list[dict], decision: dict | None = None) -> None:
    """``RUN/table.json`` (the recipe, the committee rule, the rows and, once every row is scored, the
    ``decision`` of :func:`choose_default`) and ``RUN/table.md`` (the decision's reason below the table)."""
    rule = recipe.committee_rule() if recipe.committee_ks() else None
    table = {"recipe": dataclasses.asdict(recipe), "committee_rule": rule, "rows": rows}
    if decision is not None:
        table["decision"] = decision
    _write_json(run / "table.json", table)
    (run / "table.md").write_text(markdown(rows) + (f"\nNew default: {decision['reason']}.\n" if decision else ""))


if __name__ == "__main__":
    sys.exit(main())
