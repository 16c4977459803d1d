"""The cutout store: round trips, schema checks, tile isolation, fsspec URLs."""

import json

import numpy as np
import pandas as pd
import pytest
import zarr

from lensdask.errors import StoreNotFoundError, StoreSchemaError, StoreWriteError
from lensdask.store import SCHEMA, open_store


def _rows(n, start=0, label=None):
    return pd.DataFrame(
        {
            "object_id": np.arange(start, start + n),
            "ra": np.linspace(10, 11, n),
            "dec": np.linspace(-30, -29, n),
            "label": np.zeros(n, int) if label is None else label,
        }
    )


EMPTY = {
    "tiles": ["DES0000-0000", "DES0001-0000", "DES0002-0000"],
    "rows": 0,
    "capacity": 20,
    "stamp": 9,
    "params": ["theta_E"],
    "chunk_rows": 8,
    "quantise_step": 0,  # exact float32: these tests check values bit for bit (quantised: test_quantise.py)
}
"""An empty store of :func:`conftest.tiny_store`, for the tests to write their own pixels."""


def test_round_trip_tile_and_rows(tmp_path, tiny_store):
    s = tiny_store(tmp_path / "s.zarr", **EMPTY)
    assert s.capacity == 24  # rounded up to a multiple of chunk_rows
    rng = np.random.default_rng(1)
    img = rng.normal(size=(13, 4, 9, 9)).astype("float32")
    table = _rows(13, label=rng.integers(0, 2, 13))
    table["theta_E"] = np.where(table["label"] == 1, 1.5, np.nan)
    assert s.write_tile("DES0001-0000", img, table) == 13

    r = open_store(tmp_path / "s.zarr")
    assert r.bands == ["g", "r", "i", "z"] and r.stamp == 9 and r.pixel_scale == pytest.approx(0.263)
    assert r.classes == ["non-lens", "lens"] and r.params == ["theta_E"]
    assert r.counts.tolist() == [-1, 13, -1]
    assert r.written_tiles() == [1] and r.n_rows == 13
    tile = r.read_tile(1)
    np.testing.assert_array_equal(tile.images, img)
    np.testing.assert_array_equal(tile.table["object_id"], table["object_id"])
    np.testing.assert_array_equal(tile.table["label"], table["label"])
    np.testing.assert_array_equal(tile.table["theta_E"].to_numpy(), table["theta_E"].to_numpy("float32"))
    assert (tile.table["tile"] == "DES0001-0000").all()
    np.testing.assert_array_equal(r.read_images(1, 5, 9), img[5:9])
    assert r.read_table(1, 5, 9)["row"].tolist() == [5, 6, 7, 8]
    batches = list(r.iter_batches(5))
    assert [len(b[1]) for b in batches] == [5, 5, 3]
    assert r.provenance["lensdask_version"]


def test_tiles_are_separate_shards_and_rewrite_is_idempotent(tmp_path, tiny_store):
    s = tiny_store(tmp_path / "s.zarr", **EMPTY)
    a = np.ones((5, 4, 9, 9), "float32")
    b = 2 * np.ones((7, 4, 9, 9), "float32")
    s.write_tile(0, a, _rows(5))
    s.write_tile(2, b, _rows(7, start=100))
    s.write_tile(2, b, _rows(7, start=100))  # a retried task
    images = tmp_path / "s.zarr" / "images"
    shard_files = sorted(p.relative_to(images).parts[1] for p in (images / "c").rglob("*") if p.is_file())
    assert shard_files == ["0", "2"]  # one shard file per tile, nothing for the unwritten tile
    cat = open_store(tmp_path / "s.zarr").read_catalog()
    assert len(cat) == 12 and cat["object_id"].is_unique
    np.testing.assert_array_equal(open_store(tmp_path / "s.zarr").read_images(0), a)


def test_dask_view_has_one_chunk_per_tile(tmp_path, tiny_store):
    s = tiny_store(tmp_path / "s.zarr", **EMPTY)
    s.write_tile(0, np.ones((3, 4, 9, 9), "float32"), _rows(3))
    arr = s.to_dask()
    assert arr.numblocks[0] == 3 and arr.chunks[1] == (24,)
    assert float(arr[0, :3].sum().compute()) == 3 * 4 * 81


def test_missing_store_is_named(tmp_path):
    with pytest.raises(StoreNotFoundError, match="nope.zarr"):
        open_store(tmp_path / "nope.zarr")


def test_wrong_schema_says_found_and_expected(tmp_path, tiny_store):
    tiny_store(tmp_path / "s.zarr", **EMPTY)
    meta = tmp_path / "s.zarr" / "zarr.json"
    doc = json.loads(meta.read_text())
    doc["attributes"]["schema"] = "lensdask.cutouts/0"
    meta.write_text(json.dumps(doc))
    with pytest.raises(StoreSchemaError) as err:
        open_store(tmp_path / "s.zarr")
    assert "lensdask.cutouts/0" in str(err.value) and SCHEMA in str(err.value)

    zarr.open_group(tmp_path / "plain.zarr", mode="w")
    with pytest.raises(StoreSchemaError, match="no 'schema' attribute"):
        open_store(tmp_path / "plain.zarr")

    (tmp_path / "notzarr").mkdir()
    with pytest.raises((StoreSchemaError, StoreNotFoundError)):
        open_store(tmp_path / "notzarr")


def test_unreadable_zarr_metadata_is_a_schema_error(tmp_path, tiny_store):
    """An array where the group should be, or metadata that is not JSON: StoreSchemaError, not a zarr traceback."""
    zarr.create_array(tmp_path / "array.zarr", shape=(2,), dtype="int8")
    (tmp_path / "garbled.zarr").mkdir()
    (tmp_path / "garbled.zarr" / "zarr.json").write_text("not json")
    for name in ("array.zarr", "garbled.zarr"):
        with pytest.raises(StoreSchemaError, match="is not a Zarr v3 group"):
            open_store(tmp_path / name)

    tiny_store(tmp_path / "s.zarr", **EMPTY)
    meta = tmp_path / "s.zarr" / "zarr.json"
    doc = json.loads(meta.read_text())
    doc["attributes"]["encoding"] = "quantised"
    meta.write_text(json.dumps(doc))
    with pytest.raises(StoreSchemaError, match="unknown pixel encoding"):
        open_store(tmp_path / "s.zarr")


def test_bad_writes_are_refused(tmp_path, tiny_store):
    s = tiny_store(tmp_path / "s.zarr", **EMPTY)
    with pytest.raises(StoreWriteError, match="shape"):
        s.write_tile(0, np.ones((3, 3, 9, 9), "float32"), _rows(3))
    with pytest.raises(StoreWriteError, match="capacity"):
        s.write_tile(0, np.ones((30, 4, 9, 9), "float32"), _rows(30))
    bad = _rows(3)
    bad["magnitude"] = 1.0
    with pytest.raises(StoreWriteError, match="magnitude"):
        s.write_tile(0, np.ones((3, 4, 9, 9), "float32"), bad)
    with pytest.raises(StoreWriteError, match="labels"):
        s.write_tile(0, np.ones((3, 4, 9, 9), "float32"), _rows(3, label=[0, 1, 5]))
    with pytest.raises(FileExistsError):
        tiny_store(tmp_path / "s.zarr", **EMPTY)


def test_fsspec_urls(tmp_path, tiny_store):
    s = tiny_store("memory://lensdask-test/s.zarr", **EMPTY)
    s.write_tile(1, np.full((2, 4, 9, 9), 3.0, "float32"), _rows(2))
    r = open_store("memory://lensdask-test/s.zarr")
    assert r.counts.tolist() == [-1, 2, -1] and float(r.read_images(1).mean()) == 3.0

    url = f"file://{tmp_path}/f.zarr"
    tiny_store(url, **EMPTY).write_tile(0, np.zeros((1, 4, 9, 9), "float32"), _rows(1))
    assert open_store(url).n_rows == 1
    assert open_store(tmp_path / "f.zarr").n_rows == 1


def test_add_tiles_and_classes(tmp_path, tiny_store):
    s = tiny_store(tmp_path / "s.zarr", **EMPTY)
    s.write_tile(0, np.ones((3, 4, 9, 9), "float32"), _rows(3))
    new = s.add_tiles(["review-1", "review-2"])
    assert new == [3, 4]
    s.add_classes(["ring", "lens", "spiral"])
    s.write_tile("review-2", 5 * np.ones((2, 4, 9, 9), "float32"), _rows(2, start=50, label=[2, 3]))
    r = open_store(tmp_path / "s.zarr")
    assert r.n_tiles == 5 and r.tiles[3:] == ["review-1", "review-2"]
    assert r.classes == ["non-lens", "lens", "ring", "spiral"]
    assert r.counts.tolist() == [3, -1, -1, -1, 2]
    np.testing.assert_array_equal(r.read_images(0), np.ones((3, 4, 9, 9)))
    assert r.read_table("review-2")["label"].tolist() == [2, 3]
    with pytest.raises(StoreWriteError, match="already exist"):
        s.add_tiles(["review-1"])
