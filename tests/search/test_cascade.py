"""The two-stage cascade: a prefilter passes the top fraction of each tile (plus its own threshold) to the main
models."""

import json

import numpy as np
import pandas as pd
import pytest

from lensdask.model.checkpoint import read_card, untrained_checkpoint
from lensdask.search import search
from lensdask.search.score import CascadeTopK

from test_search import TILES, _survey

COUNTS = (30, 25, 0, 18)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A main model and a different prefilter (untrained test-vits)."""
    d = tmp_path_factory.mktemp("cascade-models")
    untrained_checkpoint(d / "main", "test-vit", seed=21)
    untrained_checkpoint(d / "pre", "test-vit", seed=22)
    return d / "main", d / "pre"


def test_top_k_kept_while_streaming_equals_top_k_of_the_whole_tile():
    rng = np.random.default_rng(0)
    scores = rng.random(3000).round(2)  # many ties
    top = CascadeTopK(k=100, threshold=0.995)
    for start in range(0, 3000, 64):  # prunes many times on the way
        idx = np.arange(start, min(start + 64, 3000))
        top.add(idx, scores[idx], np.repeat(idx[:, None], 2, axis=1).astype(np.float32))
    idx, images = top.rows()
    order = np.lexsort((np.arange(3000), -scores))
    want = set(order[:100]) | set(np.flatnonzero(scores >= 0.995))
    assert set(idx) == want and (np.diff(idx) > 0).all()
    np.testing.assert_array_equal(images[:, 0], idx)  # the pixels travel with their rows


def test_score_models_without_the_row_count_gives_the_same_rows(tmp_path, models):
    from lensdask.model.checkpoint import load_checkpoint
    from lensdask.search.score import prepare_inputs, score_models

    s = _survey(tmp_path / "s.zarr")
    main, pre = (load_checkpoint(m) for m in models)

    def batches():
        for images, table in s.iter_batches(8, tiles=[0]):
            yield prepare_inputs(images, table, [pre[1]], hold=[main[1]])

    kw = dict(prefilter=pre, keep_fraction=0.2, prefilter_threshold=1.0)
    known, _ = score_models(batches(), [main], rows_total=30, **kw)
    counted, stats = score_models(batches(), [main], rows_total=None, **kw)
    pd.testing.assert_frame_equal(known, counted)
    assert stats["prefilter"]["top_k"] == 6 and (counted["stage"] == 2).sum() == 6


def test_cascade_passes_the_top_fraction_and_scores_them_as_the_main_model_alone(tmp_path, models):
    main, pre = models
    _survey(tmp_path / "s.zarr", nan_row=3)
    common = dict(floor=0.0, progress=False, client=None, crossmatch=False, threshold=0.3)
    alone = search(tmp_path / "s.zarr", main, tmp_path / "alone", **common).scores().set_index("object_id")
    pre_alone = search(tmp_path / "s.zarr", pre, tmp_path / "pre", **common).scores().set_index("object_id")
    res = search(tmp_path / "s.zarr", main, tmp_path / "casc", prefilter=(pre, 0.2), prefilter_threshold=1.0, **common)
    sc = res.scores().set_index("object_id")
    assert len(sc) == 73  # floor 0: every row is kept, stopped ones with their prefilter score
    np.testing.assert_allclose(sc["prefilter_score"], pre_alone.loc[sc.index, "score"], rtol=1e-5, equal_nan=True)
    for name, n in zip(TILES, COUNTS):
        t = sc[(sc["tile"] == name) & ~sc["nan_pixels"]]
        k = int(np.ceil(0.2 * n))
        passed = t[t["stage"] == 2]
        assert len(passed) == k
        assert set(passed.index) == set(t["prefilter_score"].sort_values(ascending=False, kind="stable").index[:k])
        assert t.loc[t["stage"] == 1, "score"].isna().all()
    p = sc[sc["stage"] == 2]
    np.testing.assert_allclose(p["score"], alone.loc[p.index, "score"], rtol=1e-5)
    assert sc.loc[1033, "stage"] == 0 and sc.loc[1033, "nan_pixels"]
    assert res.summary["stages"] == {"prefilter": 72, "main": 6 + 5 + 4}
    cand = res.candidates
    assert (cand["stage"] == 2).all() and {"prefilter_score", "stage"} <= set(cand.columns)
    stats = json.loads((tmp_path / "casc" / "tiles" / f"{TILES[0]}.json").read_text())
    assert stats["prefilter"]["top_k"] == 6 and stats["main_scored"] == 6 and stats["prefilter"]["scored"] == 30


def test_prefilter_threshold_passes_rows_whatever_their_rank(tmp_path, models):
    main, pre = models
    _survey(tmp_path / "s.zarr")
    common = dict(floor=0.0, progress=False, client=None, crossmatch=False)
    pre_scores = search(tmp_path / "s.zarr", pre, tmp_path / "pre", **common).scores()
    thr = float(np.quantile(pre_scores["score"], 0.5))  # half of the rows reach it
    res = search(tmp_path / "s.zarr", main, tmp_path / "casc", prefilter=(pre, 0.0), prefilter_threshold=thr, **common)
    sc = res.scores()
    assert set(sc.loc[sc["stage"] == 2, "object_id"]) == set(pre_scores.loc[pre_scores["score"] >= thr, "object_id"])
    assert res.summary["prefilter"]["passed_by_threshold_only"] == res.summary["stages"]["main"]


def test_audit_says_what_the_prefilter_lost(tmp_path, models):
    main, pre = models
    _survey(tmp_path / "s.zarr")
    common = dict(floor=0.5, progress=False, client=None, crossmatch=False)
    alone = search(tmp_path / "s.zarr", main, tmp_path / "alone", **dict(common, floor=0.0)).scores()
    thr = float(np.quantile(alone["score"], 0.6))
    truth = pd.DataFrame(
        {
            "object_id": np.arange(1000, 1073),
            "tile": np.repeat(TILES[:2] + TILES[3:], COUNTS[:2] + COUNTS[3:]),
            "is_lens": np.arange(73) % 4 == 0,
        }
    )
    res = search(
        tmp_path / "s.zarr",
        main,
        tmp_path / "casc",
        prefilter=(pre, 0.2),
        prefilter_threshold=1.0,
        truth=truth,
        threshold=thr,
        **common,
    )
    sc = res.scores()
    lenses = set(truth.loc[truth["is_lens"], "object_id"])
    assert set(sc.loc[sc["audited"], "object_id"]) == lenses  # kept whatever the floor
    dropped = sc[sc["audited"] & (sc["stage"] == 1)]
    np.testing.assert_allclose(
        dropped["audit_score"], alone.set_index("object_id").loc[dropped["object_id"], "score"], rtol=1e-5
    )
    assert sc.loc[~sc["audited"] | (sc["stage"] == 2), "audit_score"].isna().all()
    au = res.summary["audit"]
    kept_alone = set(alone.loc[(alone["score"] >= thr) & alone["object_id"].isin(lenses), "object_id"])
    kept_casc = set(sc.loc[(sc["score"] >= thr) & sc["object_id"].isin(lenses), "object_id"])
    assert au["lenses"] == len(lenses) and au["dropped"] == len(dropped)
    assert au["dropped_main_would_keep"] == len(kept_alone - kept_casc) > 0
    assert au["found"] == len(kept_casc)
    assert not {"audited", "audit_score"} & set(res.candidates.columns)  # truth never enters the candidates


def test_ensemble_behind_a_prefilter(tmp_path, models, random_model):
    main, pre = models
    _survey(tmp_path / "s.zarr")
    res = search(
        tmp_path / "s.zarr",
        [main, random_model],
        tmp_path / "casc",
        prefilter=(pre, 0.5),
        prefilter_threshold=1.0,
        floor=0.0,
        progress=False,
        client=None,
        crossmatch=False,
    )
    sc = res.scores()
    p = sc[sc["stage"] == 2]
    cols = [c for c in sc.columns if c.startswith("score_")]
    assert len(cols) == 2 and p[cols].notna().all().all() and sc.loc[sc["stage"] == 1, cols].isna().all().all()
    np.testing.assert_allclose(p["score"], p[cols].mean(axis=1), rtol=1e-5)


def test_cli_cascade_search_tile_emit_and_refusals(tmp_path, models, capsys):
    from lensdask.cli import main

    mdir, pdir = models
    _survey(tmp_path / "s.zarr")
    out = tmp_path / "none"
    for bad in ("0.1", f"{pdir}:1.5", f"{pdir}:x", ":0.1"):
        code = main(
            ["search", "--zarr", str(tmp_path / "s.zarr"), "--model", str(mdir), "--prefilter", bad, "--out", str(out)]
        )
        assert code == 2 and "--prefilter" in capsys.readouterr().err
    code = main(
        ["search", "--zarr", str(tmp_path / "s.zarr"), "--model", str(mdir), "--truth", "x.parquet", "--out", str(out)]
    )
    assert code == 2 and "--prefilter" in capsys.readouterr().err
    gri = tmp_path / "gri"
    untrained_checkpoint(gri, "test-vit", bands=("g", "r", "i"))
    code = main(
        [
            "search",
            "--zarr",
            str(tmp_path / "s.zarr"),
            "--model",
            str(mdir),
            "--prefilter",
            f"{gri}:0.1",
            "--out",
            str(out),
        ]
    )
    assert code == 2 and "share bands" in capsys.readouterr().err
    assert not out.exists()  # every refusal came before any cluster or file

    spec = f"{pdir}:0.25"
    assert (
        main(
            [
                "search-tile",
                "--zarr",
                str(tmp_path / "s.zarr"),
                "--tile",
                TILES[0],
                "--model",
                str(mdir),
                "--prefilter",
                spec,
                "--prefilter-threshold",
                "1",
                "--out",
                str(tmp_path / "batch"),
            ]
        )
        == 0
    )
    one = pd.read_parquet(tmp_path / "batch" / "tiles" / f"{TILES[0]}.parquet")
    assert (one["stage"] == 2).sum() == int(np.ceil(0.25 * 30))
    assert (
        main(
            [
                "search",
                "--zarr",
                str(tmp_path / "s.zarr"),
                "--model",
                str(mdir),
                "--model",
                "default",
                "--prefilter",
                spec,
                "--prefilter-threshold",
                "0.7",
                "--out",
                str(tmp_path / "run"),
                "--emit-htcondor",
                str(tmp_path / "condor"),
            ]
        )
        == 0
    )
    sub = (tmp_path / "condor" / "search.sub").read_text()
    assert sub.count("--model ") == 2 and f"--prefilter {pdir}:0.25" in sub and "--prefilter-threshold 0.7" in sub
    from lensdask.cli import build_parser

    args = sub.split('arguments = "', 1)[1].split('"', 1)[0].split()
    parsed = build_parser().parse_args(args[2:])  # what each job will run parses as search-tile
    assert parsed.command == "search-tile" and parsed.prefilter == (str(pdir), 0.25) and len(parsed.model) == 2
    assert read_card(mdir)["model_id"]


@pytest.mark.slow
def test_cascade_benchmark_runs_on_a_tiny_survey(tmp_path):
    from conftest import load_benchmark

    bench = load_benchmark("bench_cascade")
    res = bench.main(
        [
            "--main",
            "test-vit",
            "--tiles",
            "2",
            "--per-tile",
            "30",
            "--lens-fraction",
            "0.1",
            "--keep",
            "0.2",
            "--prefilter-threshold",
            "1",
            "--audit",
            "--ensemble-with",
            "default",
            "--json",
            str(tmp_path / "r.json"),
        ]
    )
    assert res["cutouts"] == 60 and res["main_untrained"] and res["stages"] == {"prefilter": 60, "main": 12}
    assert res["cost_ratio"] > 0 and res["lenses_lost"] == res["audit"]["dropped_main_would_keep"]
    assert set(res["auroc"]) >= {"ensemble_mean", "ensemble_rank"}
    assert json.loads((tmp_path / "r.json").read_text())["keep_fraction"] == 0.2


def test_cli_cascade_search_prints_both_stages_and_the_audit(tmp_path, models, client, capsys):
    from lensdask.cli import main

    mdir, pdir = models
    _survey(tmp_path / "s.zarr")
    truth = pd.DataFrame({"object_id": np.arange(1000, 1073), "is_lens": np.arange(73) % 4 == 0})
    truth.to_parquet(tmp_path / "truth.parquet")
    code = main(
        [
            "search",
            "--zarr",
            str(tmp_path / "s.zarr"),
            "--model",
            str(mdir),
            "--prefilter",
            f"{pdir}:0.2",
            "--prefilter-threshold",
            "1",
            "--truth",
            str(tmp_path / "truth.parquet"),
            "--out",
            str(tmp_path / "run"),
            "--cluster",
            client.scheduler.address,
            "--no-crossmatch",
            "--no-report",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert "scored 73 cutouts, the main model(s) 15 (top 0.2 of each tile" in out
    assert "audit against the truth: 19 injected lenses, 14 stopped by the prefilter" in out
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["stages"] == {"prefilter": 73, "main": 15} and summary["audit"]["lenses"] == 19


def test_a_truth_table_without_a_prefilter_is_refused(tmp_path, models):
    from lensdask.errors import LensdaskError

    _survey(tmp_path / "s.zarr")
    with pytest.raises(LensdaskError, match="prefilter"):
        search(
            tmp_path / "s.zarr",
            models[0],
            tmp_path / "run",
            truth=pd.DataFrame({"object_id": [1], "is_lens": [True]}),
            progress=False,
            client=None,
        )
    assert not (tmp_path / "run").exists()
