"""Survey scale: a search reads the store's per-tile arrays a fixed number of times, whatever its tile count.

At DES scale (10,000 tiles) one read of the ``count`` array costs one small file per tile, so a
read per tile makes a search cost the square of its tile count (issue 24). These tests count the
reads with a spy on zarr's one read path (``AsyncArray._get_selection``), which every selection of
every array goes through.
"""

from __future__ import annotations

import collections

import dask
import pytest
import zarr.core.array

from lensdask import rundir
from lensdask.errors import LensdaskError
from lensdask.fanout import run_tiles
from lensdask.search import run as search_run
from lensdask.store import open_store

PER_TILE_ARRAYS = ("count", "tile")
"""The store's arrays with one value per tile."""


@pytest.fixture
def array_reads(monkeypatch):
    """Counter of reads (selections) per array path while the test runs."""
    reads: collections.Counter = collections.Counter()
    original = zarr.core.array.AsyncArray._get_selection

    async def spy(self, *args, **kwargs):
        reads[self.path.strip("/")] += 1
        return await original(self, *args, **kwargs)

    monkeypatch.setattr(zarr.core.array.AsyncArray, "_get_selection", spy)
    return reads


def _reads_of_a_search(path, tiny_store, random_model, reads, monkeypatch, n_tiles: int) -> dict[str, int]:
    """Per-tile array reads of a search of ``n_tiles`` tiles, then of its resume, in this process."""
    tiny_store(path / f"survey-{n_tiles}.zarr", tiles=n_tiles, rows=2, seed=n_tiles)
    monkeypatch.setattr(search_run, "current_client", lambda: None)  # every tile task runs here, under the spy
    out = path / f"run-{n_tiles}"
    common = dict(progress=False, crossmatch=False, report=False, threshold=0.0)
    reads.clear()
    result = search_run.search(path / f"survey-{n_tiles}.zarr", random_model, out, **common)
    assert result.summary["tiles_searched"] == n_tiles and result.summary["rows"] == 2 * n_tiles
    fresh = {f"search {a}": reads[a] for a in PER_TILE_ARRAYS}
    reads.clear()
    resumed = search_run.search(path / f"survey-{n_tiles}.zarr", random_model, out, resume=True, **common)
    assert resumed.summary["tiles_resumed"] == n_tiles
    return fresh | {f"resume {a}": reads[a] for a in PER_TILE_ARRAYS}


def test_search_reads_per_tile_arrays_a_fixed_number_of_times(
    tmp_path, tiny_store, random_model, array_reads, monkeypatch
):
    few = _reads_of_a_search(tmp_path, tiny_store, random_model, array_reads, monkeypatch, 3)
    many = _reads_of_a_search(tmp_path, tiny_store, random_model, array_reads, monkeypatch, 12)
    assert many == few, f"reads of per-tile arrays grow with the tile count: 3 tiles {few}, 12 tiles {many}"
    assert all(n <= 2 for n in many.values()), many  # once for the run, at most once more to check the store


def test_tile_tasks_get_their_tile_in_their_arguments(tmp_path, tiny_store, random_model, array_reads):
    """A search's tile task reads neither ``count`` nor ``tile``: the client hands it its tile's name and rows."""
    path = tmp_path / "survey.zarr"
    tiny_store(path, tiles=["DES0001+0001", "DES0002+0002"], rows=[3, 5])
    s = search_run._resolve_settings(
        path,
        random_model,
        tmp_path / "run",
        threshold=0.0,
        floor=None,
        batch_size=None,
        device="cpu",
        precision=None,
        report=False,
        retries=None,
        combine=None,
        prefilter=None,
        prefilter_threshold=None,
        truth=None,
    )
    name, f, args, kwargs = s.tile_job(1, "DES0002+0002")
    assert (name, kwargs["name"], kwargs["rows"]) == ("DES0002+0002", "DES0002+0002", 5)
    array_reads.clear()
    stats = f(*args, **kwargs)
    assert stats["tile"] == "DES0002+0002" and stats["rows"] == 5
    assert not {a: array_reads[a] for a in PER_TILE_ARRAYS if array_reads[a]}


def test_store_snapshot_follows_its_own_writes_and_refresh(tmp_path, tiny_store):
    """The kept counts follow writes through the same object; another writer's need :meth:`refresh`."""
    path = tmp_path / "s.zarr"
    tiny_store(path, tiles=["A1", "B2"], rows=[2, 3])
    reader = open_store(path)
    assert reader.counts.tolist() == [2, 3] and reader.tiles == ["A1", "B2"]
    with pytest.raises(ValueError):
        reader.counts[0] = 7  # a snapshot, not a way to write
    writer = open_store(path, mode="r+")
    data = writer.read_tile(0)
    writer.write_tile(0, data.images[:1], data.table.iloc[:1])
    assert writer.counts.tolist() == [1, 3]  # its own write
    assert reader.counts.tolist() == [2, 3]  # another object's snapshot until refreshed
    assert reader.refresh().counts.tolist() == [1, 3]
    assert reader.written_values("object_id").tolist() == writer.written_values("object_id").tolist()
    assert len(reader.written_values("flags")) == 4


def test_fanout_of_many_tiles_keeps_every_result_once(client):
    """Hundreds of tiles through the client in one submission: every result once, failures in job order."""

    def job(i):
        if i % 97 == 5:
            raise RuntimeError(f"bad tile {i}")
        return i * i

    jobs = [(f"T{i:04d}", job, (i,), {}) for i in range(400)]
    results, failures = run_tiles(jobs, client=client, progress=False, register_setup=False)
    bad = [i for i in range(400) if i % 97 == 5]
    assert results == {f"T{i:04d}": i * i for i in range(400) if i not in bad}
    assert [f["tile"] for f in failures] == [f"T{i:04d}" for i in bad]
    assert all("bad tile" in f["error"] for f in failures)


def test_read_markers_reads_each_finished_tile_once(tmp_path):
    """Markers and scores come from one listing of ``tiles/``; unfinished tiles are left out."""
    import pandas as pd

    out = tmp_path / "run" / rundir.TILES_DIR
    out.mkdir(parents=True)
    for i, name in enumerate(["A1", "B2", "C3"]):
        table = pd.DataFrame({"tile": [name] * i, "object_id": list(range(i)), "score": [0.5] * i})
        rundir.commit_tile(out, name, table, {"tile": name, "rows": i})
    (out / "C3.json").unlink()  # C3 not finished
    markers = rundir.read_markers(tmp_path / "run")
    assert list(markers) == ["A1", "B2"] and markers["B2"]["rows"] == 1
    assert list(rundir.read_markers(tmp_path / "run", ["B2", "C3", "Z9"])) == ["B2"]
    scores = rundir.read_scores(tmp_path / "run")
    assert scores["tile"].tolist() == ["B2"] and scores["object_id"].tolist() == [0]


def test_performance_report_auto_up_to_max_tiles(tmp_path, tiny_store, random_model, client):
    """``auto`` writes the report up to ``search.performance_report_max_tiles`` tiles; ``True`` always."""
    path = tmp_path / "survey.zarr"
    tiny_store(path, tiles=3, rows=2)
    common = dict(client=client, progress=False, crossmatch=False)
    with dask.config.set({"lensdask.search.performance_report_max_tiles": 2}):
        skipped = search_run.search(path, random_model, tmp_path / "auto", report="auto", **common)
        forced = search_run.search(path, random_model, tmp_path / "forced", report=True, **common)
    assert forced.summary["performance_report"] == str(tmp_path / "forced" / rundir.REPORT)
    with dask.config.set(
        {"lensdask.search.performance_report_max_tiles": 3, "lensdask.search.performance_report": "auto"}
    ):
        written = search_run.search(path, random_model, tmp_path / "written", **common)
    assert skipped.summary["performance_report"] is None and not (tmp_path / "auto" / rundir.REPORT).exists()
    assert (tmp_path / "forced" / rundir.REPORT).exists() and (tmp_path / "written" / rundir.REPORT).exists()
    assert set(written.summary["timings"]) == {"settings", "plan", "tiles", "report", "merge"}
    with pytest.raises(LensdaskError, match="performance_report"):
        search_run.search(path, random_model, tmp_path / "bad", report="sometimes", **common)
