"""Search: one task per tile, flagged NaN rows, resumable, failures reported, band checks."""

import json

import numpy as np
import pandas as pd
import pytest

from lensdask.errors import ModelMismatchError, StoreNotFoundError
from lensdask.model.checkpoint import read_card, untrained_checkpoint
from lensdask.search import read_scores, search, search_tile
from lensdask.search.worker import load_counts, loaded_models
from lensdask.store import create_store, open_store

TILES = ["DES0101-2958", "DES0104-2958", "DES0107-2958", "DES0110-2958"]


def _survey(path, per_tile=(30, 25, 0, 18), nan_row=None, seed=0):
    """A small survey store of noisy blobs; tile 2 is empty, optionally one NaN row in tile 1."""
    rng = np.random.default_rng(seed)
    s = create_store(path, tiles=TILES, capacity=32, bands="griz", pixel_scale=0.263, stamp=45, chunk_rows=16)
    y, x = np.mgrid[:45, :45] - 22
    blob = np.exp(-(x**2 + y**2) / 20.0)
    oid = 1000
    for t, n in enumerate(per_tile):
        img = rng.normal(0, 0.05, size=(n, 4, 45, 45)) + blob * rng.uniform(0.5, 3, size=(n, 4, 1, 1))
        if nan_row is not None and t == 1:
            img[nan_row, 2, 10, 10] = np.nan
        table = pd.DataFrame(
            {
                "object_id": np.arange(oid, oid + n),
                "ra": 15.3 + rng.uniform(0, 0.7, n),
                "dec": -30.0 + rng.uniform(0, 0.7, n),
                "label": -np.ones(n, int),
            }
        )
        oid += n
        s.write_tile(t, img.astype("float32"), table)
    return s


def test_in_process_and_on_cluster_agree(tmp_path, client, random_model):
    _survey(tmp_path / "s.zarr", nan_row=3)
    local = search(
        tmp_path / "s.zarr", random_model, tmp_path / "run1", threshold=0.3, floor=0.0, progress=False, client=None
    )
    dist = search(
        tmp_path / "s.zarr", random_model, tmp_path / "run2", threshold=0.3, floor=0.0, progress=False, client=client
    )
    pd.testing.assert_frame_equal(local.candidates, dist.candidates, check_exact=False, rtol=1e-5)
    scores = read_scores(tmp_path / "run2")
    assert len(scores) == 73 and scores["object_id"].is_unique
    # the NaN row is kept, flagged, and not a candidate; every other row has a probability
    flagged = scores[scores["nan_pixels"]]
    assert flagged["object_id"].tolist() == [1000 + 30 + 3] and flagged["score"].isna().all()
    assert scores.loc[~scores["nan_pixels"], "score"].between(0, 1).all()
    assert 1033 not in set(dist.candidates["object_id"])
    assert dist.summary["rows_nan"] == 1 and dist.summary["rows"] == 73
    cand = pd.read_parquet(tmp_path / "run2" / "candidates.parquet")
    assert {"rank", "tile", "object_id", "ra", "dec", "score", "model", "p_lens", "p_non_lens"} <= set(cand.columns)
    assert cand["score"].is_monotonic_decreasing and (cand["score"] >= 0.3).all()
    assert cand["rank"].tolist() == list(range(1, len(cand) + 1))
    np.testing.assert_allclose(cand["p_lens"] + cand["p_non_lens"], 1, rtol=1e-5)
    # the workers loaded the model themselves, by hash (never shipped in the graph), each at most
    # once although each scored several tiles
    sha = read_card(random_model)["sha256"]
    held = client.run(loaded_models)
    assert any(key[0] == sha for keys in held.values() for key in keys)
    assert all(n.get(sha, 0) <= 1 for n in client.run(load_counts).values())


def test_floor_keeps_only_high_rows_but_counts_all(tmp_path, random_model):
    _survey(tmp_path / "s.zarr")
    full = search(tmp_path / "s.zarr", random_model, tmp_path / "full", floor=0.0, progress=False)
    med = float(np.median(full.scores()["score"]))
    part = search(tmp_path / "s.zarr", random_model, tmp_path / "part", floor=med, progress=False)
    kept = part.scores()
    assert (kept["score"] >= med).all() and 0 < len(kept) < 73
    stats = json.loads((tmp_path / "part" / "tiles" / f"{TILES[0]}.json").read_text())
    assert stats["rows"] == 30 and sum(stats["histogram"]) == 30


def test_resume_redoes_only_unfinished_tiles(tmp_path, random_model):
    _survey(tmp_path / "s.zarr")
    first = search(tmp_path / "s.zarr", random_model, tmp_path / "run", threshold=0.0, progress=False)
    marker = tmp_path / "run" / "tiles" / f"{TILES[1]}.json"
    marker.unlink()  # as if the run had been interrupted inside this tile
    before = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "run" / "tiles").glob("*.json")}
    again = search(tmp_path / "s.zarr", random_model, tmp_path / "run", threshold=0.0, resume=True, progress=False)
    after = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "run" / "tiles").glob("*.json")}
    assert again.summary["tiles_resumed"] == 3
    assert all(after[k] == v for k, v in before.items())  # finished tiles untouched
    pd.testing.assert_frame_equal(first.candidates, again.candidates)


def test_corrupt_tile_is_reported_and_the_rest_completes(tmp_path, client, random_model):
    _survey(tmp_path / "s.zarr")
    shard = tmp_path / "s.zarr" / "images" / "c" / "3" / "0" / "0" / "0" / "0"
    shard.write_bytes(b"this is not a zarr shard" * 10)
    result = search(tmp_path / "s.zarr", random_model, tmp_path / "run", floor=0.0, progress=False, client=client)
    assert result.failures["tile"].tolist() == [TILES[3]]
    assert result.summary["tiles_failed"] == [TILES[3]]
    assert len(result.scores()) == 30 + 25
    assert (tmp_path / "run" / "failures.parquet").exists()


def test_bands_that_do_not_match_are_refused(tmp_path, random_model):
    _survey(tmp_path / "s.zarr")
    wrong = tmp_path / "gri-model"
    untrained_checkpoint(wrong, "test-vit", bands=("g", "r", "i"))
    with pytest.raises(ModelMismatchError, match="bands"):
        search(tmp_path / "s.zarr", wrong, tmp_path / "run", progress=False)
    order = tmp_path / "zirg-model"
    untrained_checkpoint(order, "test-vit", bands=("z", "i", "r", "g"))
    with pytest.raises(ModelMismatchError, match="bands"):
        search(tmp_path / "s.zarr", order, tmp_path / "run", progress=False)
    assert not (tmp_path / "run" / "candidates.parquet").exists()


def test_missing_store(tmp_path, random_model):
    with pytest.raises(StoreNotFoundError):
        search(tmp_path / "absent.zarr", random_model, tmp_path / "run", progress=False)


def test_one_tile_in_process(tmp_path, random_model):
    _survey(tmp_path / "s.zarr")
    card = read_card(random_model)
    stats = search_tile(
        str(tmp_path / "s.zarr"), 0, str(random_model), card["sha256"], str(tmp_path / "run"), device="cpu"
    )
    assert stats["rows"] == 30 and stats["tile"] == TILES[0]
    out = pd.read_parquet(tmp_path / "run" / "tiles" / f"{TILES[0]}.parquet")
    assert len(out) == 30 and (out["model"] == card["model_id"]).all()
    assert not list((tmp_path / "run" / "tiles").glob(".*tmp"))  # no temporary files left


def _sorted(df):
    return df.sort_values(["tile", "object_id"]).reset_index(drop=True)


def test_killed_worker_gives_exactly_the_rows_of_a_clean_run(tmp_path, random_model):
    import os
    import signal
    import threading
    import time

    from distributed import Client, LocalCluster

    _survey(tmp_path / "s.zarr", nan_row=2)
    clean = search(tmp_path / "s.zarr", random_model, tmp_path / "clean", threshold=0.3, progress=False, client=None)
    killed = {}
    with (
        LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0", memory_limit="2GiB"
        ) as cluster,
        Client(cluster) as c,
    ):
        pids = c.run(os.getpid)

        def kill_first_busy_worker():
            deadline = time.time() + 60
            while time.time() < deadline and not killed:
                for addr, keys in c.processing().items():
                    if any(str(k).startswith("search-tile") for k in keys) and addr in pids:
                        os.kill(pids[addr], signal.SIGKILL)  # the worker process ends mid-task
                        killed[addr] = keys
                        return
                time.sleep(0.005)

        th = threading.Thread(target=kill_first_busy_worker)
        th.start()
        result = search(
            tmp_path / "s.zarr", random_model, tmp_path / "run", threshold=0.3, progress=False, client=c, report=True
        )
        th.join()
    assert killed, "no worker was killed"
    assert result.failures.empty and result.summary["tiles_searched"] == 4
    pd.testing.assert_frame_equal(_sorted(result.scores()), _sorted(clean.scores()), check_exact=False, rtol=1e-5)
    pd.testing.assert_frame_equal(result.candidates, clean.candidates, check_exact=False, rtol=1e-5)
    assert not list((tmp_path / "run" / "tiles").glob(".*"))  # no half-written files
    assert (tmp_path / "run" / "dask-report.html").stat().st_size > 1000


def test_ctrl_c_leaves_only_whole_tiles_and_resume_completes(tmp_path, random_model, monkeypatch):
    import importlib

    run = importlib.import_module("lensdask.search.run")
    rundir = importlib.import_module("lensdask.rundir")
    monkeypatch.setattr(run, "current_client", lambda: None)  # in this process, even beside the session cluster

    _survey(tmp_path / "s.zarr")
    clean = search(tmp_path / "s.zarr", random_model, tmp_path / "clean", threshold=0.0, progress=False, client=None)
    real = run.commit_tile
    calls = []

    def interrupted_commit(out, name, table, stats):
        calls.append(name)
        if len(calls) == 2:  # Ctrl-C while the second tile is being written
            tmp = rundir.tmp_name(out / f"{name}.parquet")
            tmp.write_bytes(b"PAR1 half a file")
            try:
                raise KeyboardInterrupt
            finally:
                tmp.unlink()  # what commit_tile's own cleanup does
        return real(out, name, table, stats)

    monkeypatch.setattr(run, "commit_tile", interrupted_commit)
    with pytest.raises(KeyboardInterrupt):
        search(tmp_path / "s.zarr", random_model, tmp_path / "run", threshold=0.0, progress=False, client=None)
    monkeypatch.setattr(run, "commit_tile", real)
    files = sorted(p.name for p in (tmp_path / "run" / "tiles").iterdir())
    assert files == [f"{TILES[0]}.json", f"{TILES[0]}.parquet"]  # one whole tile, nothing else
    again = search(
        tmp_path / "s.zarr", random_model, tmp_path / "run", threshold=0.0, resume=True, progress=False, client=None
    )
    assert again.summary["tiles_resumed"] == 1
    pd.testing.assert_frame_equal(again.candidates, clean.candidates)


def test_half_written_files_are_cleaned(tmp_path):
    from lensdask.rundir import clean_run_dir

    d = tmp_path / "tiles"
    d.mkdir()
    for n in ("A.json", "A.parquet", "B.parquet", ".C.parquet.1.2.tmp"):
        (d / n).write_text("x")
    assert sorted(clean_run_dir(tmp_path)) == [".C.parquet.1.2.tmp", "B.parquet"]
    assert sorted(p.name for p in d.iterdir()) == ["A.json", "A.parquet"]


def test_cli_exits_nonzero_naming_the_corrupt_tile(tmp_path, client, random_model, capsys):
    from lensdask.cli import main

    _survey(tmp_path / "s.zarr")
    (tmp_path / "s.zarr" / "images" / "c" / "1" / "0" / "0" / "0" / "0").write_bytes(b"garbage" * 40)
    code = main(
        [
            "search",
            "--zarr",
            str(tmp_path / "s.zarr"),
            "--model",
            str(random_model),
            "--out",
            str(tmp_path / "run"),
            "--cluster",
            client.scheduler.address,
            "--export",
            "csv",
            "--no-crossmatch",
        ]
    )
    out, err = capsys.readouterr()
    assert code == 1
    assert "1 tiles FAILED" in err and TILES[1] in err
    assert "searched 3 of 4 tiles" in out  # tile 1 failed (tile 2 is empty)
    assert (tmp_path / "run" / "candidates.csv").exists()


def test_outputs_carry_row_flags_and_tile_statistics(tmp_path, random_model):
    from lensdask.store import FLAG_EDGE, FLAG_MASKED

    s = _survey(tmp_path / "s.zarr", per_tile=(6, 0, 0, 0))
    t = s.read_tile(0)
    table = t.table[["object_id", "ra", "dec"]].copy()
    table["flags"] = [0, FLAG_EDGE, FLAG_MASKED, 0, FLAG_EDGE | FLAG_MASKED, 0]
    open_store(tmp_path / "s.zarr", mode="r+").write_tile(0, t.images, table)
    res = search(tmp_path / "s.zarr", random_model, tmp_path / "run", progress=False, client=None)
    sc = _sorted(res.scores())
    assert sc["flags"].tolist() == [0, 1, 2, 0, 3, 0]
    stats = json.loads((tmp_path / "run" / "tiles" / f"{TILES[0]}.json").read_text())
    assert stats["masked_rows"] == 2 and stats["edge_rows"] == 2
    assert stats["ra_min"] <= sc["ra"].min() and stats["dec_max"] >= sc["dec"].max()
    assert res.summary["rows_masked"] == 2


def test_gpu_benchmark_script_runs_on_cpu_with_a_tiny_model(tmp_path):
    from conftest import load_benchmark

    bench = load_benchmark("bench_search_gpu")
    res = bench.main(
        [
            "--arch",
            "test-vit",
            "--device",
            "cpu",
            "--tiles",
            "2",
            "--per-tile",
            "16",
            "--batch-size",
            "8",
            "--json",
            str(tmp_path / "r.json"),
        ]
    )
    assert res["cutouts"] == 32 and res["end_to_end_cutouts_per_s"] > 0 and res["des_320M_hours_per_gpu"] > 0
    assert json.loads((tmp_path / "r.json").read_text())["arch"] == "test-vit"


def test_search_applies_the_cards_resize(tmp_path):
    """A model made for another input size scores in search exactly as predict_proba scores it.

    On a float32 store: a quantised one's search inputs are normalised from the codes, with the sky
    statistics of the original pixels, not from the decoded pixels predict_proba is given.
    """
    import dask
    import torch

    from lensdask.model.architectures import arch_kwargs, build_vit
    from lensdask.model.checkpoint import load_checkpoint, save_checkpoint
    from lensdask.model.infer import predict_proba
    from lensdask.normalise import DEFAULT_NORMALISATION

    with dask.config.set({"lensdask.store.quantise.step": 0}):
        _survey(tmp_path / "s.zarr")
    torch.manual_seed(0)
    kwargs = arch_kwargs("test-vit", in_chans=4, img_size=36, num_classes=2)
    card = {
        "arch": "test-vit",
        "arch_kwargs": kwargs,
        "bands": list("griz"),
        "stamp": 45,
        "input_size": 36,
        "pixel_scale": 0.263,
        "normalisation": dict(DEFAULT_NORMALISATION),
        "classes": ["non-lens", "lens"],
        "lens_class": 1,
    }
    save_checkpoint(build_vit(kwargs), tmp_path / "m36", card)
    result = search(tmp_path / "s.zarr", tmp_path / "m36", tmp_path / "run", floor=0.0, progress=False)
    model, card = load_checkpoint(tmp_path / "m36")
    tile = open_store(tmp_path / "s.zarr").read_tile(0)
    expected = predict_proba(model, card, tile.images)[:, 1]
    got = result.scores().set_index("object_id").loc[tile.table["object_id"], "score"].to_numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_search_on_a_client_that_is_not_the_default(tmp_path, random_model, monkeypatch):
    """A notebook may hold several clients: the one passed is used, the report included."""
    import distributed.client
    from distributed import Client, LocalCluster

    _survey(tmp_path / "s.zarr")
    monkeypatch.setattr(distributed.client, "_get_global_client", lambda: None)  # no default client at all
    with (
        LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=":0") as cluster,
        Client(cluster, set_as_default=False) as client,
    ):
        result = search(
            tmp_path / "s.zarr",
            random_model,
            tmp_path / "run",
            client=client,
            progress=False,
            crossmatch=False,
            report=True,
        )
    assert result.summary["rows"] == 73 and result.summary["tiles_failed"] == []
    assert (tmp_path / "run" / "dask-report.html").stat().st_size > 0


def test_the_old_store_keyword_still_works_with_a_warning(tmp_path, random_model):
    _survey(tmp_path / "s.zarr", per_tile=(5, 0, 0, 0))
    with pytest.warns(DeprecationWarning, match="use store="):
        old = search(
            zarr=tmp_path / "s.zarr",
            model=random_model,
            out=tmp_path / "old",
            progress=False,
            client=None,
            crossmatch=False,
        )
    new = search(
        store=tmp_path / "s.zarr",
        model=random_model,
        out=tmp_path / "new",
        progress=False,
        client=None,
        crossmatch=False,
    )
    pd.testing.assert_frame_equal(old.scores(), new.scores())
    with pytest.raises(TypeError, match="'store' twice"):
        search(tmp_path / "s.zarr", zarr=tmp_path / "s.zarr", out=tmp_path / "both", progress=False)
