"""Search: one task per tile, flagged NaN rows, resumable, failures reported, band checks."""

import json
import pathlib

import numpy as np
import pandas as pd
import pytest

from lensdask.errors import ModelMismatchError, StoreNotFoundError
from lensdask.search import read_scores, search, search_tile
from lensdask.search.worker import loaded_models
from lensdask.store import create_store, open_store

from lensdask.model.checkpoint import untrained_checkpoint

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
        table = pd.DataFrame({"object_id": np.arange(oid, oid + n), "ra": 15.3 + rng.uniform(0, 0.7, n),
                              "dec": -30.0 + rng.uniform(0, 0.7, n), "label": -np.ones(n, int)})
        oid += n
        s.write_tile(t, img.astype("float32"), table)
    return s


def test_in_process_and_on_cluster_agree(tmp_path, client, random_model):
    _survey(tmp_path / "s.zarr", nan_row=3)
    local = search(tmp_path / "s.zarr", random_model, tmp_path / "run1", threshold=0.3, floor=0.0, progress=False, client=None)
    dist = search(tmp_path / "s.zarr", random_model, tmp_path / "run2", threshold=0.3, floor=0.0, progress=False, client=client)
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
    # each worker loaded the model at most once, and only by hash (never shipped in the graph)
    held = client.run(loaded_models)
    assert all(len(v) <= 1 for v in held.values())


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
    from lensdask.model.checkpoint import read_card

    _survey(tmp_path / "s.zarr")
    card = read_card(random_model)
    stats = search_tile(str(tmp_path / "s.zarr"), 0, str(random_model), card["sha256"], str(tmp_path / "run"), device="cpu")
    assert stats["rows"] == 30 and stats["tile"] == TILES[0]
    out = pd.read_parquet(tmp_path / "run" / "tiles" / f"{TILES[0]}.parquet")
    assert len(out) == 30 and (out["model"] == card["model_id"]).all()
    assert not list((tmp_path / "run" / "tiles").glob(".*tmp"))  # no temporary files left
