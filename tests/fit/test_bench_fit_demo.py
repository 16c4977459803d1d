"""benchmarks/bench_fit_demo.py's figures: what the fit keeps of the top 5N, and the top N by combined rank."""

from __future__ import annotations

import importlib.util
import pathlib

import numpy as np
import pandas as pd

REPO = pathlib.Path(__file__).resolve().parents[2]


def load_bench():
    spec = importlib.util.spec_from_file_location("bench_fit_demo", REPO / "benchmarks" / "bench_fit_demo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_figures_count_what_the_fit_keeps_and_rank_every_candidate():
    truth = pd.DataFrame(
        {
            "object_id": np.arange(8),
            "truth_class": ["lens", "lens", "ring", "non-lens", "lens", "companion", "lens", "non-lens"],
        }
    )
    # the network's best six are fitted: lenses 0, 1, 4 (1 kept, 0 with a flag, 4 with dBIC > 0), a ring it
    # keeps, and two non-lenses it rejects; 6 (a lens) and 7 were not fitted
    fits = pd.DataFrame(
        {
            "object_id": [0, 1, 2, 3, 4, 5],
            "score": [0.99, 0.98, 0.97, 0.96, 0.95, 0.94],
            "fit_status": ["ok"] * 6,
            "fit_dbic": [-50.0, -80.0, -30.0, 20.0, 15.0, -40.0],
            "fit_flags": ["bound:theta_E", "", "", "", "", "misfit"],
            "fit_converged": [False, True, True, True, True, True],
            "fit_seconds": [10.0, 12.0, 8.0, 9.0, 11.0, 30.0],
        }
    )
    candidates = pd.concat(
        [fits[["object_id", "score"]], pd.DataFrame({"object_id": [6, 7], "score": [0.5, 0.1]})], ignore_index=True
    )
    # combined: kept 1 and 2 first, then the unfitted 6, then the network's order of the rejected
    candidates["combined_rank"] = candidates["object_id"].map({1: 1, 2: 2, 6: 3, 7: 4, 0: 5, 3: 6, 4: 7, 5: 8})
    f = load_bench().figures(fits, candidates, truth, n_lenses=4)
    assert (f["fitted"], f["lenses"], f["lenses_kept"]) == (6, 3, 1)
    assert (f["non_lenses"], f["non_lenses_rejected"]) == (3, 2)
    assert f["purity_kept"] == 0.5 and f["purity_before"] == 0.5
    assert f["top_N_lenses_network"] == 0.5  # 0, 1, 2, 3
    assert f["top_N_lenses_combined"] == 0.5  # 1, 2, 6, 7: an unfitted lens enters the top N
    assert f["kept_by_class"] == {"companion": "0/1", "non-lens": "0/1", "ring": "1/1"}
    assert f["converged_lenses"] == 2 / 3 and f["seconds"]["median"] == 10.5
