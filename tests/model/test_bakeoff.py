"""benchmarks/bakeoff.py end to end at toy scale: stores, a budget split over two calls, the table.

Two candidates (``test-vit``, ``test-resnet``), 300 training rows and 120 held-out rows, a
6-second budget each; the first call stops after 2 s (as a job slot would end), the second goes
on from the saved epochs. The budget's seconds must add up across the calls, not restart.
"""

from __future__ import annotations

import importlib.util
import json
import sys

import pytest
import torch

from conftest import REPO

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


@pytest.fixture
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_bakeoff_resumes_within_its_budget_and_tabulates(tmp_path, one_thread, capsys):
    bakeoff = load_bakeoff()
    run = tmp_path / "run"
    args = [
        "--run", str(run), "--n-train", "300", "--n-heldout", "120", "--archs", "test-vit", "test-resnet",
        "--budget", "8", "--orientations", "1", "--search-rows", "128", "--no-progress",
    ]  # fmt: skip
    assert bakeoff.main([*args, "--prepare"]) == 0
    assert (run / "train.zarr.done").is_file() and (run / "heldout.zarr.done").is_file()

    assert bakeoff.main([*args, "--stop-after", "5"]) == 3  # not finished: go on later
    first = json.loads((run / "test-vit-s0" / "budget.json").read_text())
    assert not first["done"] and 0 < first["elapsed_s"] < 8 and len(first["sessions"]) == 1
    assert (run / "test-vit-s0" / "train_state.pt").is_file()
    assert "run the same command again" in capsys.readouterr().out

    with pytest.raises(SystemExit, match="another recipe"):
        bakeoff.main([*args, "--budget", "7"])

    assert bakeoff.main(args) == 0
    second = json.loads((run / "test-vit-s0" / "budget.json").read_text())
    assert second["done"] and len(second["sessions"]) == 2
    assert second["elapsed_s"] >= first["elapsed_s"] + second["sessions"][1]["seconds"] - 1e-6
    assert second["elapsed_s"] < 8 + 3  # the budget, overrun by at most about one (short) epoch
    card = json.loads((run / "test-vit-s0" / "model_card.json").read_text())
    assert card["training"]["wall_seconds"] > 0 and card["arch"] == "test-vit"

    table = json.loads((run / "table.json").read_text())
    cols = {
        "params", "gflops", "train_s", "epochs", "val_auroc", "heldout_auroc", "heldout_tpr_fpr_1e-3",
        "real_fpr", "real_false_positives", "real_plain", "search_cutouts_per_s",
    }  # fmt: skip
    assert [r["candidate"] for r in table["rows"]] == ["test-vit-s0", "test-resnet-s0"]
    for row in table["rows"]:
        assert cols <= set(row) and all(row[c] is not None for c in cols)
        assert row["real_plain"] == 10 and row["search_cutouts_per_s"] > 0 and row["epochs"] >= 1
    assert table["rows"][1]["family"] == "resnet"
    md = (run / "table.md").read_text()
    assert md.count("\n") == 4 and "TPR @ FPR 1e-3" in md and "/10)" in md
