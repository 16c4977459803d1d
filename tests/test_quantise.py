"""Noise-bounded quantisation: error bounds, dithering, NaN and lossless rows, the Rice codec, old stores."""

import dask
import numpy as np
import pandas as pd
import pytest

from lensdask.errors import StoreWriteError
from lensdask.quantise import NAN_CODE, dequantise, quantise
from lensdask.store import FLAG_EDGE, FLAG_LOSSLESS, SCHEMA, open_store
from lensdask.storeadmin import convert, disk_bytes

from conftest import EMPTY_STORE, SKY_SIGMA, corrupt_first_chunk, sky_stamps, table_rows, write_v1_store


def test_error_is_a_tenth_of_the_noise_and_unbiased():
    x = sky_stamps(200)
    q, scale, zero = quantise(x, np.arange(200), step=0.33, seed=1, border=4)  # the default step
    assert q.dtype == np.int32 and (scale > 0).all()
    # the step follows each stamp's own noise (MAD: ~7% scatter)
    np.testing.assert_allclose(scale / 0.33, SKY_SIGMA, rtol=0.25)
    y = dequantise(q, scale, zero, np.arange(200), seed=1)
    err = (y - x) / SKY_SIGMA
    assert np.sqrt((err**2).mean()) <= 0.1
    assert abs(err.mean()) < 2e-3  # no bias
    assert (np.abs(y - x) <= scale[..., None, None] / 2 * (1 + 1e-5) + 1e-5).all()  # never more than half a step
    # uncorrelated with the signal: the galaxy's core has the same error as the sky
    core = err[..., 20:25, 20:25]
    assert np.sqrt((core**2).mean()) == pytest.approx(np.sqrt((err**2).mean()), rel=0.1)


def test_dithering_averages_out_over_stamps():
    # a constant signal halfway between two steps: plain rounding is off by half a step in every
    # stamp; with subtractive dithering the stamps' errors average to zero
    n = 400
    rng = np.random.default_rng(3)
    x = rng.normal(0, 1.0, (n, 4, 45, 45)).astype("float32")
    q, scale, zero = quantise(x, np.arange(n), step=0.34, seed=5, border=4)
    x[:, :, 20, 20] = zero[:, :, None][..., 0] + 0.5 * scale  # exactly on a half step of its stamp
    q, scale2, zero2 = quantise(x, np.arange(n), step=0.34, seed=5, border=4)
    y = dequantise(q, scale2, zero2, np.arange(n), seed=5)
    err = (y[:, :, 20, 20] - x[:, :, 20, 20]) / scale2
    assert abs(err.mean()) < 0.03  # plain rounding: 0.5
    assert err.std() > 0.2  # the pixel was dithered, not stored exactly


def test_nan_pixels_are_kept_and_unmeasurable_noise_is_stored_losslessly(tmp_path, tiny_store):
    x = sky_stamps(6)
    x[0, 1, :, :5] = np.nan  # an edge-padded band: noise measured on the finite border
    x[1, 2] = np.nan  # all NaN
    x[2, 0] = 3.25  # constant: no noise
    x[3, 3, 10, 10] = np.inf
    x[4, 1, 7, 7] = 1e12  # overflows the integer range
    q, scale, zero = quantise(x, np.arange(6), step=0.34, seed=1, border=4)
    assert (q[0, 1, :, :5] == NAN_CODE).all() and scale[0, 1] > 0
    assert scale[1, 2] == 0 and scale[2, 0] == 0 and scale[3, 3] == 0 and scale[4, 1] == 0
    assert (scale > 0).sum() == 24 - 4

    s = tiny_store(tmp_path / "s.zarr", **EMPTY_STORE)
    s.write_tile(0, x, table_rows(6))
    r = open_store(tmp_path / "s.zarr")
    y = r.read_images(0)
    assert np.isnan(y[0, 1, :, :5]).all() and np.isfinite(y[0, 1, :, 5:]).all()
    for i, b in [(1, 2), (2, 0), (3, 3), (4, 1)]:  # bit for bit
        np.testing.assert_array_equal(y[i, b].view(np.int32), x[i, b].view(np.int32))
    flags = r.read_table(0)["flags"].to_numpy()
    assert ((flags & FLAG_LOSSLESS) != 0).tolist() == [False, True, True, True, True, False]
    # other flags pass through; the lossless bit is the store's own
    t = table_rows(6)
    t["flags"] = [FLAG_EDGE | FLAG_LOSSLESS, 0, 0, 0, 0, FLAG_LOSSLESS]
    s.write_tile(1, x, t)
    flags = open_store(tmp_path / "s.zarr").read_table(1)["flags"].to_numpy()
    assert flags.tolist() == [FLAG_EDGE, 4, 4, 4, 4, 0]


def test_quantised_store_is_small_and_reads_alike_every_way(tmp_path, tiny_store):
    s = tiny_store(tmp_path / "q.zarr", **EMPTY_STORE)
    assert s.quantised and s.schema == SCHEMA and s.encoding["step"] == 0.33
    x = sky_stamps(60, seed=2)
    s.write_tile(1, x, table_rows(60, start=1000))
    r = open_store(tmp_path / "q.zarr")
    y = r.read_images(1)
    assert np.sqrt((((y - x) / SKY_SIGMA) ** 2).mean()) <= 0.1
    np.testing.assert_array_equal(r.read_images(1, 17, 45), y[17:45])
    reused = np.concatenate([im.copy() for im, _ in r.iter_batches(32, reuse=True)])
    np.testing.assert_array_equal(reused, y)
    np.testing.assert_array_equal(np.concatenate([im for im, _ in r.iter_batches(25)]), y)
    d = r.to_dask()
    np.testing.assert_array_equal(d[1, :60].compute(), y)
    assert np.isnan(d[0].compute()).all()  # the unwritten tile
    per_cutout = disk_bytes(str(tmp_path / "q.zarr" / "images")) / 60
    assert per_cutout <= 5 * 1024

    # float32 is one config value away, and exact
    with dask.config.set({"lensdask.store.quantise.step": None}):
        f = tiny_store(tmp_path / "f.zarr", **EMPTY_STORE)
    assert not f.quantised and f.encoding["pixels"] == "float32"
    f.write_tile(1, x, table_rows(60, start=1000))
    np.testing.assert_array_equal(open_store(tmp_path / "f.zarr").read_images(1), x)
    assert disk_bytes(str(tmp_path / "f.zarr" / "images")) / 60 > 4 * per_cutout


def test_a_row_encodes_alike_wherever_it_is_written(tmp_path, tiny_store):
    # the dither follows the object id, not the tile or row: re-partitioned stores hold the same values
    x = sky_stamps(10, seed=4)
    a, b = tiny_store(tmp_path / "a.zarr", **EMPTY_STORE), tiny_store(tmp_path / "b.zarr", **EMPTY_STORE)
    a.write_tile(0, x, table_rows(10, start=500))
    b.write_tile(1, np.concatenate([x[5:], x[:5]]), pd.concat([table_rows(5, 505), table_rows(5, 500)]))
    ya, yb = a.read_images(0), b.read_images(1)
    np.testing.assert_array_equal(np.concatenate([ya[5:], ya[:5]]), yb)


def test_bad_steps_are_refused(tmp_path, tiny_store):
    for step in (-0.1, 3.0, float("nan"), "x"):
        with pytest.raises(StoreWriteError, match="step"):
            tiny_store(tmp_path / "s.zarr", **EMPTY_STORE, quantise_step=step, overwrite=True)


def test_old_stores_open_and_convert(tmp_path):
    x = sky_stamps(20, seed=6)
    write_v1_store(tmp_path / "v1.zarr", x)
    old = open_store(tmp_path / "v1.zarr")
    assert old.schema == "lensdask.cutouts/1" and not old.quantised
    np.testing.assert_array_equal(old.read_images(0), x)

    new, failures = convert(tmp_path / "v1.zarr", tmp_path / "v2.zarr")
    assert failures == [] and new.schema == SCHEMA and new.quantised
    assert new.counts.tolist() == [20, -1] and new.tiles == old.tiles
    pd.testing.assert_frame_equal(new.read_table(0).drop(columns="flags"), old.read_table(0).drop(columns="flags"))
    assert np.sqrt((((new.read_images(0) - x) / SKY_SIGMA) ** 2).mean()) <= 0.1
    assert new.provenance["converted_from"]["schema"] == "lensdask.cutouts/1"

    back, _ = convert(tmp_path / "v2.zarr", tmp_path / "back.zarr", quantise_step=0)
    assert not back.quantised
    np.testing.assert_array_equal(back.read_images(0), new.read_images(0))  # the decoded values, exactly


def test_a_corrupt_chunk_fails_only_its_own_tile(tmp_path, tiny_store):
    s = tiny_store(tmp_path / "s.zarr", **EMPTY_STORE)
    s.write_tile(0, sky_stamps(40, seed=7), table_rows(40))
    s.write_tile(1, sky_stamps(40, seed=8), table_rows(40, start=40))
    corrupt_first_chunk(tmp_path / "s.zarr", 0)
    r = open_store(tmp_path / "s.zarr")
    with pytest.raises(ValueError, match="checksum"):  # the CRC32C of the chunk
        r.read_images(0)
    assert np.isfinite(r.read_images(1)).all()
    out, failures = convert(tmp_path / "s.zarr", tmp_path / "c.zarr")
    assert [f["tile"] for f in failures] == [s.tiles[0]]
    assert out.counts.tolist() == [-1, 40]


def test_search_on_a_quantised_store_fails_only_the_corrupt_tile(tmp_path, client, random_model, tiny_store):
    from lensdask.search import search

    s = tiny_store(tmp_path / "s.zarr", tiles=3, rows=0, capacity=32, chunk_rows=32)
    for t in range(3):
        s.write_tile(t, sky_stamps(30, seed=t), table_rows(30, start=100 * t))
    corrupt_first_chunk(tmp_path / "s.zarr", 1)  # bytes flipped inside a Rice stream: the chunk checksum catches it
    result = search(tmp_path / "s.zarr", random_model, tmp_path / "run", floor=0.0, progress=False, client=client)
    assert result.failures["tile"].tolist() == [s.tiles[1]]
    assert (tmp_path / "run" / "failures.parquet").exists()
    scores = result.scores()
    assert len(scores) == 60 and scores["score"].between(0, 1).all()


@pytest.mark.parametrize("codec", ["pcodec", "rice"])
def test_both_integer_codecs_store_the_same_integers(tmp_path, codec, tiny_store):
    x = sky_stamps(40, seed=9)
    x[2, 1, :, :4] = np.nan
    x[3, 0] = 2.0
    with dask.config.set({"lensdask.store.quantise.codec": codec}):
        s = tiny_store(tmp_path / "s.zarr", **EMPTY_STORE)
    assert s.encoding["codec"] == f"lensdask.{codec}"
    assert f"'name': 'lensdask.{codec}'" in str(s.group["images"].metadata.to_dict())
    s.write_tile(0, x, table_rows(40))
    q, scale, zero = quantise(x, np.arange(40), step=0.33, seed=1, border=4)
    np.testing.assert_array_equal(open_store(tmp_path / "s.zarr").group["images"][0, :40], q)
    assert disk_bytes(str(tmp_path / "s.zarr" / "images")) / 40 <= 5 * 1024
    with dask.config.set({"lensdask.store.quantise.codec": "gzip"}), pytest.raises(StoreWriteError, match="codec"):
        tiny_store(tmp_path / "t.zarr", **EMPTY_STORE)


def test_decoded_rows_written_again_keep_their_values_bit_for_bit(tmp_path, tiny_store):
    # copying rows between quantised stores (trainset add, convert) must not quantise them twice
    x = sky_stamps(30, seed=12)
    x[:10] += 5000.0  # and on a sky that is not subtracted: the offset is a multiple of 1024 steps
    a, b = tiny_store(tmp_path / "a.zarr", **EMPTY_STORE), tiny_store(tmp_path / "b.zarr", tiles=3, **EMPTY_STORE)
    a.write_tile(0, x, table_rows(30, start=70))
    y = open_store(tmp_path / "a.zarr").read_images(0)
    b.write_tile(2, y[::-1], table_rows(30, start=70)[::-1].reset_index(drop=True))  # other tile, other order
    y2 = open_store(tmp_path / "b.zarr").read_images(2)[::-1]
    np.testing.assert_array_equal(y2.view(np.int32), y.view(np.int32))
    np.testing.assert_array_equal(b.group["scale"][2, :30][::-1], a.group["scale"][0, :30])
    c, _ = convert(tmp_path / "a.zarr", tmp_path / "c.zarr")
    np.testing.assert_array_equal(c.read_images(0).view(np.int32), y.view(np.int32))
