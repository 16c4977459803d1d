"""The paths that make the search fast must not change what it finds.

Chunk-aligned reads into one reused buffer, the CPU/GPU batch-size default, the
store compressor, glibc's allocator thresholds in workers, and the choice between
a reader thread and reading between forward passes.
"""

import dask
import numpy as np
import pandas as pd
import pytest
import torch

from lensdask.errors import LensdaskError, StoreWriteError
from lensdask.model.checkpoint import read_card
from lensdask.model.infer import BATCH_SIZES, resolve_batch_size
from lensdask.search import read_scores, search_tile
from lensdask.store import open_store

ROWS = (40, 23)
STORE = {"capacity": 48, "chunk_rows": 16, "seed": 3}
"""Stores of :func:`conftest.tiny_store`: chunks of 16 rows, tiles of 40 and 23 rows unless told."""


def test_reused_read_buffer_yields_the_same_pixels(tmp_path, tiny_store):
    s = tiny_store(tmp_path / "s.zarr", rows=ROWS, **STORE)
    plain = [(im.copy(), tab) for im, tab in s.iter_batches(16)]
    reused, bases = [], set()
    for im, tab in s.iter_batches(16, reuse=True):
        bases.add(id(im.base if im.base is not None else im))
        reused.append((im.copy(), tab))
    assert len(bases) == 1  # one buffer for every batch of every tile
    assert [len(t) for _, t in reused] == [16, 16, 8, 16, 7]
    for (a, ta), (b, tb) in zip(plain, reused):
        np.testing.assert_array_equal(a, b)
        pd.testing.assert_frame_equal(ta, tb)
    assert s.chunk_rows == 16


def test_scores_do_not_depend_on_the_batch_size(tmp_path, random_model, tiny_store):
    tiny_store(tmp_path / "s.zarr", rows=ROWS, **STORE)
    sha = read_card(random_model)["sha256"]
    runs = {}
    for bs in (5, 16, "auto"):
        out = tmp_path / f"run-{bs}"
        stats = [
            search_tile(str(tmp_path / "s.zarr"), t, str(random_model), sha, str(out), device="cpu", batch_size=bs)
            for t in (0, 1)
        ]
        assert [s["rows"] for s in stats] == [40, 23]
        assert stats[0]["batch_size"] == (BATCH_SIZES["cpu"] if bs == "auto" else bs)
        runs[bs] = read_scores(out).sort_values("object_id").reset_index(drop=True)
    for bs in (16, "auto"):
        assert runs[bs]["object_id"].tolist() == runs[5]["object_id"].tolist()
        np.testing.assert_allclose(runs[bs]["score"], runs[5]["score"], rtol=1e-5, atol=1e-6)


def test_batch_size_resolution():
    assert resolve_batch_size("auto", torch.device("cpu")) == BATCH_SIZES["cpu"]
    assert resolve_batch_size(None, torch.device("cuda")) == BATCH_SIZES["cuda"] > BATCH_SIZES["cpu"]
    assert resolve_batch_size("32", "cpu") == 32 and resolve_batch_size(7, "cpu") == 7
    for bad in (0, -3, "many", "1.5", 2.5):
        with pytest.raises(LensdaskError, match="batch size"):
            resolve_batch_size(bad, "cpu")


def test_cli_rejects_a_bad_batch_size(tmp_path, random_model, capsys, tiny_store):
    from lensdask.cli import main

    tiny_store(tmp_path / "s.zarr", rows=ROWS, **STORE)
    rc = main(
        [
            "search",
            "--zarr",
            str(tmp_path / "s.zarr"),
            "--model",
            str(random_model),
            "--out",
            str(tmp_path / "run"),
            "--batch-size",
            "lots",
            "--no-crossmatch",
            "--no-report",
            "--cluster",
            "local",
        ]
    )
    assert rc != 0 and "batch size" in capsys.readouterr().err


@pytest.mark.parametrize("compressor", ["lz4", "zstd"])
def test_store_compressor_is_configurable_and_read_alike(tmp_path, compressor, tiny_store):
    with dask.config.set({"lensdask.store.compressor": compressor}):
        s = tiny_store(
            tmp_path / "s.zarr", rows=(20,), **STORE, noise=0.05, flux=(0.5, 3), width=20.0, quantise_step=0
        )  # the compressor of float32 stores
    codecs = repr(s.group["images"].metadata.codecs)
    assert f"cname=<BloscCname.{compressor}" in codecs
    rng = np.random.default_rng(3)  # the same pixels tiny_store wrote (its seed, noise, flux, width)
    y, x = np.mgrid[:45, :45] - 22
    expected = rng.normal(0, 0.05, (20, 4, 45, 45)) + np.exp(-(x**2 + y**2) / 20.0) * rng.uniform(0.5, 3, (20, 4, 1, 1))
    np.testing.assert_array_equal(open_store(tmp_path / "s.zarr").read_images(0), expected.astype("float32"))


def test_unknown_compressor_is_refused(tmp_path, tiny_store):
    with dask.config.set({"lensdask.store.compressor": "gzip"}), pytest.raises(StoreWriteError, match="compressor"):
        tiny_store(tmp_path / "s.zarr", rows=ROWS, **STORE, quantise_step=0)


def test_default_store_compressor_is_lz4(tmp_path, tiny_store):
    store = tiny_store(tmp_path / "s.zarr", rows=(1,), **STORE, quantise_step=0)
    assert "BloscCname.lz4" in repr(store.group["images"].metadata.codecs)


def test_malloc_thresholds_are_set_once_per_process():
    import platform
    import sys

    from lensdask import workersetup

    ok = workersetup.tune_malloc()
    if sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc":
        assert ok is True
    assert workersetup.tune_malloc() is ok and workersetup.tune_malloc.cache_info().misses == 1


def test_reader_thread_only_when_a_core_is_free(monkeypatch):
    from lensdask.search import run

    monkeypatch.setattr(run.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 4)
    assert run._reader_has_a_core("cpu") is False  # torch's threads hold every core: read between passes
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    assert run._reader_has_a_core("cpu") is True  # a Dask worker's one torch thread leaves cores free
    assert run._reader_has_a_core(torch.device("cuda")) is True


def test_only_the_deep_profile_sizeof_warning_is_silenced(caplog, monkeypatch):
    from distributed.sizeof import safe_sizeof

    from lensdask.workersetup import quiet_deep_profile_sizeof

    deep = leaf = {}
    for _ in range(5000):  # like a worker's statistical profile of torch call stacks, only deeper
        leaf["children"] = {"f": {}}
        leaf = leaf["children"]["f"]

    class Unmeasurable:
        def __sizeof__(self):
            raise ValueError("no size")

    import logging

    from lensdask import workersetup

    logger = logging.getLogger("distributed.sizeof")
    monkeypatch.setattr(logger, "filters", [f for f in logger.filters if f is not workersetup._SIZEOF_FILTER])
    caplog.set_level("WARNING", logger="distributed.sizeof")
    safe_sizeof(deep, default_size=-1)
    assert "Sizeof calculation" in caplog.text  # what a search worker logged at every report
    caplog.clear()
    quiet_deep_profile_sizeof()
    quiet_deep_profile_sizeof()  # once is enough; twice adds nothing
    assert safe_sizeof(deep, default_size=-1) == -1 and caplog.text == ""
    safe_sizeof({"x": Unmeasurable()}, default_size=-1)
    assert "Sizeof calculation" in caplog.text  # other failures are still reported
