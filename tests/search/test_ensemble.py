"""Ensembles: several models score every tile (read once), per-model columns, mean or rank average, agreement."""

import numpy as np
import pandas as pd
import pytest

from lensdask.errors import LensdaskError, ModelMismatchError
from lensdask.model.checkpoint import read_card, untrained_checkpoint
from lensdask.model.ensemble import combine_scores, model_column
from lensdask.search import search
from lensdask.store import create_store

from test_search import TILES, _survey


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Two different untrained test-vit checkpoints (other seeds than the session's random_model)."""
    d = tmp_path_factory.mktemp("ens-models")
    for k in (1, 2):
        untrained_checkpoint(d / f"m{k}", "test-vit", seed=10 + k)
    return d / "m1", d / "m2"


def _col(path):
    return model_column(read_card(path)["model_id"])


def test_model_columns_are_safe_names():
    assert model_column("vit-lens-tiny-492ce68824d0") == "score_vit_lens_tiny_492ce68824d0"
    assert model_column("a b/../c;DROP") == "score_a_b_c_DROP"
    assert model_column("--") == "score_model"


def test_combine_mean_and_rank():
    s = np.array([[0.9, 0.2], [0.1, 0.8], [0.5, 0.5], [np.nan, np.nan]])
    np.testing.assert_allclose(combine_scores(s, "mean")[:3], [0.55, 0.45, 0.5], rtol=1e-6)
    # ranks among the three scored rows: model 0 -> 3,1,2 ; model 1 -> 1,3,2 ; mean / 3
    np.testing.assert_allclose(combine_scores(s, "rank")[:3], [2 / 3, 2 / 3, 2 / 3], rtol=1e-6)
    assert np.isnan(combine_scores(s, "mean")[3]) and np.isnan(combine_scores(s, "rank")[3])
    with pytest.raises(LensdaskError, match="combination"):
        combine_scores(s, "median")


def test_ensemble_reads_each_tile_once_and_keeps_every_models_score(tmp_path, models, monkeypatch):
    from lensdask.search import run
    from lensdask.store import CutoutStore

    monkeypatch.setattr(run, "current_client", lambda: None)  # in this process, even beside the session cluster

    _survey(tmp_path / "s.zarr", nan_row=3)
    a, b = models
    one = {
        m: search(
            tmp_path / "s.zarr", m, tmp_path / f"one-{m.name}", floor=0.0, progress=False, client=None, crossmatch=False
        )
        .scores()
        .set_index("object_id")
        for m in models
    }
    reads = []
    real = CutoutStore.iter_normalised

    def counting(self, *args, **kwargs):
        reads.append(tuple(kwargs.get("tiles") or ()))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(CutoutStore, "iter_normalised", counting)
    res = search(
        tmp_path / "s.zarr",
        [a, b],
        tmp_path / "ens",
        floor=0.0,
        threshold=0.45,
        progress=False,
        client=None,
        crossmatch=False,
    )
    assert sorted(reads) == [(0,), (1,), (2,), (3,)]  # each tile read once, for both models
    sc = res.scores().set_index("object_id")
    assert len(sc) == 73
    for m in models:  # each column is exactly what that model alone gives
        np.testing.assert_allclose(sc[_col(m)], one[m].loc[sc.index, "score"], rtol=1e-5, equal_nan=True)
    np.testing.assert_allclose(sc["score"], (sc[_col(a)] + sc[_col(b)]) / 2, rtol=1e-5)
    assert sc.loc[1033, "nan_pixels"] and np.isnan(sc.loc[1033, "score"])
    cand = res.candidates
    want = (cand[[_col(a), _col(b)]] >= 0.45).sum(axis=1)
    assert (cand["n_agree"] == want).all() and set(cand["n_agree"]) <= {0, 1, 2}
    assert (cand["score"] >= 0.45).all() and cand["score"].is_monotonic_decreasing
    assert res.summary["models"] == [read_card(m)["model_id"] for m in models]
    assert res.summary["combine"] == "mean"


def test_rank_average_is_the_mean_rank_in_the_tile(tmp_path, models):
    _survey(tmp_path / "s.zarr")
    a, b = models
    res = search(
        tmp_path / "s.zarr",
        [a, b],
        tmp_path / "rank",
        combine="rank",
        floor=0.0,
        progress=False,
        client=None,
        crossmatch=False,
    )
    sc = res.scores()
    t0 = sc[sc["tile"] == TILES[0]]
    want = (t0[_col(a)].rank() + t0[_col(b)].rank()) / 2 / len(t0)
    np.testing.assert_allclose(t0["score"], want, rtol=1e-5)
    assert res.summary["combine"] == "rank"


def test_models_must_agree_before_any_work(tmp_path, models):
    _survey(tmp_path / "s.zarr")
    gri = tmp_path / "gri"
    untrained_checkpoint(gri, "test-vit", bands=("g", "r", "i"))
    with pytest.raises(ModelMismatchError, match="share bands"):
        search(tmp_path / "s.zarr", [models[0], gri], tmp_path / "run", progress=False, client=None)
    big = tmp_path / "big"
    untrained_checkpoint(big, "test-vit", stamp=63)
    with pytest.raises(ModelMismatchError, match="stamp"):
        search(tmp_path / "s.zarr", [models[0], big], tmp_path / "run", progress=False, client=None)
    with pytest.raises(LensdaskError, match="twice"):
        search(tmp_path / "s.zarr", [models[0], models[0]], tmp_path / "run", progress=False, client=None)
    assert not (tmp_path / "run").exists()


def test_resume_skips_only_tiles_of_the_same_ensemble(tmp_path, models):
    _survey(tmp_path / "s.zarr")
    a, b = models
    first = search(tmp_path / "s.zarr", [a, b], tmp_path / "run", progress=False, client=None, crossmatch=False)
    again = search(
        tmp_path / "s.zarr", [a, b], tmp_path / "run", resume=True, progress=False, client=None, crossmatch=False
    )
    assert again.summary["tiles_resumed"] == 4
    pd.testing.assert_frame_equal(first.candidates, again.candidates)
    other = search(
        tmp_path / "s.zarr",
        [a, b],
        tmp_path / "run",
        resume=True,
        combine="rank",
        progress=False,
        client=None,
        crossmatch=False,
    )
    assert other.summary["tiles_resumed"] == 0  # another combination is another run


def test_cli_ensemble_search_tile_and_merge_match_search(tmp_path, models, client, capsys):
    from lensdask.cli import main

    _survey(tmp_path / "s.zarr")
    a, b = models
    code = main(
        [
            "search",
            "--zarr",
            str(tmp_path / "s.zarr"),
            "--model",
            str(a),
            "--model",
            str(b),
            "--out",
            str(tmp_path / "run"),
            "--cluster",
            client.scheduler.address,
            "--no-crossmatch",
            "--no-report",
            "--threshold",
            "0.4",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0 and "ensemble of 2 models" in out
    for t in range(4):
        assert (
            main(
                [
                    "search-tile",
                    "--zarr",
                    str(tmp_path / "s.zarr"),
                    "--tile",
                    str(t),
                    "--model",
                    str(a),
                    "--model",
                    str(b),
                    "--out",
                    str(tmp_path / "batch"),
                ]
            )
            == 0
        )
    assert main(["merge", str(tmp_path / "batch"), "--threshold", "0.4"]) == 0
    got = pd.read_parquet(tmp_path / "batch" / "candidates.parquet")
    want = pd.read_parquet(tmp_path / "run" / "candidates.parquet")
    # merge cross-matches with known lenses by default (known_* columns); the search was told not to
    pd.testing.assert_frame_equal(got[want.columns], want, check_exact=False, rtol=1e-5)
    assert {_col(a), _col(b), "n_agree"} <= set(got.columns)


def _labelled(path, n=48, seed=0):
    rng = np.random.default_rng(seed)
    s = create_store(
        path,
        tiles=["T0", "T1"],
        capacity=n,
        bands="griz",
        pixel_scale=0.263,
        stamp=45,
        chunk_rows=16,
        classes=["non-lens", "lens"],
    )
    y, x = np.mgrid[:45, :45] - 22
    for t in range(2):
        lab = np.arange(n) % 2
        img = rng.normal(0, 0.05, size=(n, 4, 45, 45)) + (
            np.exp(-(x**2 + y**2) / 20.0) * (1 + 2 * lab)[:, None, None, None]
        )
        s.write_tile(
            t,
            img.astype("float32"),
            pd.DataFrame({"object_id": np.arange(n) + 100 * t, "ra": 0.0, "dec": 0.0, "label": lab}),
        )
    return s


def test_evaluate_reports_each_model_and_the_ensemble(tmp_path, models, capsys):
    from lensdask import evaluate
    from lensdask.cli import main
    from lensdask.model.metrics import binary_metrics

    _labelled(tmp_path / "t.zarr")
    a, b = models
    r = evaluate(tmp_path / "t.zarr", [a, b], progress=False, roc_path=tmp_path / "roc.png")
    assert [m["model_id"] for m in r["models"]] == [read_card(m)["model_id"] for m in models]
    for m, path in zip(r["models"], models):
        assert m["auroc"] == pytest.approx(evaluate(tmp_path / "t.zarr", path, progress=False)["auroc"])
    assert r["combine"] == "mean" and r["n_pos"] == 48 and (tmp_path / "roc.png").stat().st_size > 0
    rank = evaluate(tmp_path / "t.zarr", [a, b], progress=False, combine="rank")
    assert 0.0 <= rank["auroc"] <= 1.0
    # the ensemble's AUROC is the AUROC of the mean probability, each model given the store's inputs for it
    from lensdask.model.checkpoint import load_checkpoint
    from lensdask.model.infer import forward_proba, input_size
    from lensdask.store import open_store

    st = open_store(tmp_path / "t.zarr")
    y = np.concatenate([st.read_table(t)["label"].to_numpy() for t in range(2)]) == 1

    def lens_probability(path):
        net, card = load_checkpoint(path)
        return np.concatenate(
            [
                forward_proba(
                    net,
                    st.read_normalised(t, specs=[card["normalisation"]]).inputs[0],
                    batch_size=64,
                    device="cpu",
                    size=input_size(card),
                )[:, 1]
                for t in range(2)
            ]
        )

    p = np.mean([lens_probability(m) for m in models], axis=0)
    assert r["auroc"] == pytest.approx(binary_metrics(y, p)["auroc"], abs=1e-6)
    code = main(["evaluate", "--model", str(a), "--model", str(b), "--data", str(tmp_path / "t.zarr")])
    out = capsys.readouterr().out
    assert code == 0 and out.count("AUROC") >= 3 and "ensemble (mean)" in out
