"""benchmarks/bakeoff.py end to end at toy scale: stores, a budget split over two calls, the table, a committee.

Two candidates (``test-vit``, ``test-resnet``), 300 training rows, 120 held-out rows and 120 meta
rows, an 8-second budget each; the first call stops after 5 s (as a job slot would end), the
second goes on from the saved epochs. The budget's seconds must add up across the calls, not
restart. The default committee sizes (2, 3) give one committee of the two (3 is skipped); training
goes on without the meta store, scoring the committee needs it.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import pathlib
import sys
import time

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
"""The repository (not ``conftest.REPO``: ``tests/model/conftest.py`` may shadow that module name)."""

pytestmark = pytest.mark.skipif(
    not (REPO.parent / "shared" / "data" / "des_galaxies").is_dir(), reason="needs ../shared/data/des_galaxies"
)


def load_bakeoff():
    """benchmarks/bakeoff.py as a module (registered first: its dataclass looks its module up)."""
    spec = importlib.util.spec_from_file_location("bakeoff", REPO / "benchmarks" / "bakeoff.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["bakeoff"] = module
    spec.loader.exec_module(module)
    return module


def test_bakeoff_resumes_within_its_budget_and_tabulates(tmp_path, one_torch_thread, capsys):
    bakeoff = load_bakeoff()
    run = tmp_path / "run"
    args = [
        "--run", str(run), "--n-train", "300", "--n-heldout", "120", "--archs", "test-vit", "test-resnet",
        "--budget", "8", "--orientations", "1", "--search-rows", "128", "--n-meta", "120", "--no-progress",
        "--baseline", "test-vit-s0",
    ]  # fmt: skip
    assert bakeoff.main([*args, "--prepare"]) == 0
    for store in ("train", "heldout", "meta"):
        assert (run / f"{store}.zarr.done").is_file()
    book = json.loads((run / "stores.json").read_text())
    assert set(book) == {"train.zarr", "heldout.zarr", "meta.zarr"} and book["heldout.zarr"]["seed"] == 5
    # a store rebuilt, as on a later session's fresh machine, holds the same rows; another store is refused
    (run / "heldout.zarr.done").unlink()
    assert bakeoff.main([*args, "--prepare"]) == 0
    assert json.loads((run / "stores.json").read_text()) == book
    tampered = {**book, "heldout.zarr": {**book["heldout.zarr"], "digest": "0" * 64}}
    (run / "stores.json").write_text(json.dumps(tampered))
    with pytest.raises(SystemExit, match="not the store this run was prepared with"):
        bakeoff.main([*args, "--prepare"])
    (run / "stores.json").write_text(json.dumps(book))
    meta_done = run / "meta.zarr.done"
    meta_done.rename(run / "meta.zarr.done.aside")  # training must not need the meta store

    assert bakeoff.main([*args, "--stop-after", "5"]) == 3  # not finished: go on later
    first = json.loads((run / "test-vit-s0" / "budget.json").read_text())
    assert not first["done"] and 0 < first["elapsed_s"] < 8 and len(first["sessions"]) == 1
    assert (run / "test-vit-s0" / "train_state.pt").is_file()
    assert "run the same command again" in capsys.readouterr().out
    assert bakeoff.main([*args, "--status"]) == 0
    log = capsys.readouterr().out
    assert "| `test-vit-s0` | training |" in log and "| `test-resnet-s0` | not started | 0 of 8 s |" in log

    with pytest.raises(SystemExit, match="another recipe"):
        bakeoff.main([*args, "--budget", "7"])
    with pytest.raises(SystemExit, match="another recipe .*committee_sizes"):
        bakeoff.main([*args, "--committee-sizes", "2"])

    with pytest.raises(SystemExit, match=r"meta store .*meta\.zarr is not prepared; run with --prepare"):
        bakeoff.main(args)  # trains to the end and scores the single networks, then needs the meta store
    assert (run / "table.md").read_text().count("\n") == 4  # the single networks so far
    (run / "meta.zarr.done.aside").rename(meta_done)
    assert bakeoff.main(args) == 0
    second = json.loads((run / "test-vit-s0" / "budget.json").read_text())
    assert second["done"] and len(second["sessions"]) == 2
    assert second["elapsed_s"] >= first["elapsed_s"] + second["sessions"][1]["seconds"] - 1e-6
    assert second["elapsed_s"] < 8 + 3  # the budget, overrun by at most about one (short) epoch
    card = json.loads((run / "test-vit-s0" / "model_card.json").read_text())
    assert card["training"]["wall_seconds"] > 0 and card["arch"] == "test-vit"

    table = json.loads((run / "table.json").read_text())
    cols = {
        "params", "gflops", "train_s", "heldout_auroc", "heldout_tpr_fpr_1e-3", "real_fpr", "real_false_positives",
        "real_plain", "search_cutouts_per_s",
    }  # fmt: skip
    assert [r["candidate"] for r in table["rows"]] == ["test-vit-s0", "test-resnet-s0", "committee-k2"]
    for row in table["rows"]:
        assert cols <= set(row) and all(row[c] is not None for c in cols)
        assert row["real_plain"] == 10 and row["search_cutouts_per_s"] > 0
    singles, committee = table["rows"][:2], table["rows"][2]
    for row in singles:
        assert row["epochs"] >= 1 and row["val_auroc"] is not None
    assert table["rows"][1]["family"] == "resnet"

    # the committee: members by validation AUROC (never held-out figures), sums over them, its own scores
    ranked = sorted(singles, key=lambda r: -r["val_auroc"])  # stable: ties in recipe order
    assert committee["members"] == [r["candidate"] for r in ranked]
    assert committee["member_model_ids"] == [r["model_id"] for r in ranked]
    assert committee["family"] == "committee" and committee["meta"] == "logistic"
    assert committee["params"] == sum(r["params"] for r in singles)
    assert committee["gflops"] == pytest.approx(sum(r["gflops"] for r in singles), abs=2e-4)
    assert committee["train_s"] == pytest.approx(sum(r["train_s"] for r in singles), abs=0.2)
    assert committee["epochs"] is None and committee["val_auroc"] is None
    assert 0 <= committee["heldout_auroc"] <= 1 and 0 <= committee["meta_heldback_auroc"] <= 1
    ccard = json.loads((run / "committee-k2" / "model_card.json").read_text())
    assert ccard["model_id"] == committee["model_id"] and ccard["committee"]["meta"]["kind"] == "logistic"
    assert ccard["committee"]["meta"]["fitted_on"]["data"].endswith("meta.zarr")
    assert not (run / "committee-k3").exists()  # 3 members asked of 2 candidates: skipped
    assert "validation AUROC" in table["committee_rule"] and "seed 6" in table["committee_rule"]
    decision = table["decision"]
    assert decision["baseline"] == "test-vit-s0" and set(decision["gates"]) == {r["candidate"] for r in table["rows"]}
    assert decision["winner"] in (None, *decision["gates"]) and decision["reason"]
    md = (run / "table.md").read_text()
    assert md.count("\n") == 7 and "TPR @ FPR 1e-3" in md and "/10)" in md and "New default: " in md
    assert f"committee-k2 ({' + '.join(committee['members'])})" in md and "| – |" in md

    capsys.readouterr()
    assert bakeoff.main([*args, "--status"]) == 0
    log = capsys.readouterr().out
    assert log.count("| done |") == 2 and f"{singles[0]['val_auroc']:.4f} (epoch" in log
    assert bakeoff.main(args) == 0  # again: nothing trained, built or scored anew
    assert "committee-k2: built before" in capsys.readouterr().out
    assert json.loads((run / "table.json").read_text())["rows"] == table["rows"]


def test_a_recipe_saved_before_a_field_existed_is_read_with_its_default(tmp_path, capsys):
    bakeoff = load_bakeoff()
    run = tmp_path / "run"
    run.mkdir()
    given = bakeoff.Recipe(train_store=str(run / "train.zarr"), heldout_store=str(run / "heldout.zarr"))
    new = ("meta_store", "n_meta", "meta_sim_seed", "committee_sizes", "committee_meta")
    old = {k: v for k, v in json.loads(json.dumps(dataclasses.asdict(given))).items() if k not in new}
    (run / "recipe.json").write_text(json.dumps(old))

    # a new field given another value than its default is another recipe; the file is left as it was
    for changed in (dict(n_meta=5), dict(meta_store=str(tmp_path / "elsewhere.zarr")), dict(committee_sizes=(2,))):
        with pytest.raises(SystemExit, match=f"another recipe .*{next(iter(changed))}: saved"):
            bakeoff.load_recipe(run, dataclasses.replace(given, **changed))
    with pytest.raises(SystemExit, match="another recipe .*budget_s"):  # an old field still counts
        bakeoff.load_recipe(run, dataclasses.replace(given, budget_s=1.0))
    assert json.loads((run / "recipe.json").read_text()) == old

    # the defaults are accepted, and the recipe written back with every field
    recipe = bakeoff.load_recipe(run, given)
    assert recipe.meta_store == str(run / "meta.zarr") and recipe.committee_ks() == [2, 3]
    assert "added committee_meta, committee_sizes, meta_sim_seed, meta_store, n_meta" in capsys.readouterr().out
    saved = json.loads((run / "recipe.json").read_text())
    assert saved == {**old, "meta_store": str(run / "meta.zarr"), "n_meta": 8000, "meta_sim_seed": 6,
                     "committee_sizes": [2, 3], "committee_meta": "logistic"}  # fmt: skip
    assert bakeoff.load_recipe(run, given) == recipe and capsys.readouterr().out == ""  # as saved now
    with pytest.raises(SystemExit, match="another recipe .*n_meta"):
        bakeoff.load_recipe(run, dataclasses.replace(given, n_meta=5))


def test_a_call_that_is_out_of_time_starts_no_new_candidate(tmp_path, monkeypatch):
    bakeoff = load_bakeoff()
    recipe = bakeoff.Recipe(train_store=str(tmp_path / "train.zarr"), heldout_store=str(tmp_path / "heldout.zarr"))
    started = []
    monkeypatch.setattr("lensdask.train", lambda *a, **k: started.append(k) or {})
    monkeypatch.setattr(bakeoff, "plan_epochs", lambda *a, **k: pytest.fail("calibrated after the call's time"))
    now = time.perf_counter()
    # no time left in the call: neither a calibration nor a start
    assert bakeoff.train_candidate(recipe, tmp_path, "test-vit", 0, now - 1, False) is False
    # a planned first epoch of 1,250 s (1,000 rows at 1 cutout/s x 0.8) does not fit in the call's 60 s left
    ledger = bakeoff.Ledger(tmp_path / "test-vit-s0" / bakeoff.BUDGET, recipe.budget_s)
    ledger.data["plan"] = {"epochs": 5, "calibration_cutouts_per_s": 1.0, "efficiency": 0.8, "n_train": 1000}
    ledger.save()
    assert bakeoff.first_epoch_seconds(ledger.data["plan"]) == pytest.approx(1250.0)
    assert bakeoff.train_candidate(recipe, tmp_path, "test-vit", 0, time.perf_counter() + 60, False) is False
    assert started == [] and json.loads(ledger.path.read_text())["sessions"] == []


def _row(name, tpr, auroc=0.98, fp=0, speed=600.0):
    return {
        "candidate": name, "heldout_tpr_fpr_1e-3": tpr, "heldout_auroc": auroc, "real_false_positives": fp,
        "search_cutouts_per_s": speed,
    }  # fmt: skip


def test_the_default_is_chosen_by_the_written_rule():
    choose = load_bakeoff().choose_default
    base = _row("vit-lens-tiny-s0", 0.20, 0.980, 0, 600.0)
    rows = [
        base,
        _row("vit-lens-small-s0", 0.45, 0.990, 1, 300.0),  # the best TPR, but a real false positive
        _row("resnet-lens-s0", 0.50, 0.991, 0, 150.0),  # better still, but 4x the search cost
        _row("convnext-lens-s0", 0.30, 0.986, 0, 700.0),
        _row("committee-k2", 0.31, 0.984, 0, 250.0),  # within 0.02 of the best passing TPR, lower AUROC
    ]
    d = choose(rows, "vit-lens-tiny-s0")
    assert d["gates"]["vit-lens-small-s0"] and d["gates"]["resnet-lens-s0"] and not d["gates"]["committee-k2"]
    assert "real plain" in d["gates"]["vit-lens-small-s0"][0] and "cutouts/s" in d["gates"]["resnet-lens-s0"][0]
    assert d["winner"] == "convnext-lens-s0" and d["change"]  # ties on TPR: the higher held-out AUROC
    assert "+0.100 over vit-lens-tiny-s0: it becomes the default" in d["reason"]

    rows[3] = _row("convnext-lens-s0", 0.21, 0.990, 0, 700.0)
    rows[4] = _row("committee-k2", 0.215, 0.990, 0, 250.0)
    d = choose(rows, "vit-lens-tiny-s0")  # the best within 0.02 of the baseline: no change
    assert d["winner"] == "convnext-lens-s0" and not d["change"] and "the shipped default stays" in d["reason"]

    assert choose(rows, "vit-lens-base-s0")["winner"] is None  # no baseline row: nothing changes
    none_pass = [_row(r["candidate"], 0.9, fp=2) for r in rows]
    d = choose(none_pass, "vit-lens-tiny-s0")
    assert d["winner"] is None and not d["change"] and "no row passes" in d["reason"]
