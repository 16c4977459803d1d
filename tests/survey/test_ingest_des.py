"""Ingest of DES coadd tiles as DES ships them (one .fits.fz per band, HDUs SCI, MSK, WGT), read by strips.

One synthetic 2,000 x 2,000 px tile in the DES layout (lensdask.survey.synthetic_des) is written once
per session; other tiles of the tests link to its files.
"""

import filecmp
import os

import dask
import numpy as np
import pandas as pd
import pytest
from astropy.io import fits

from lensdask.cli import main
from lensdask.errors import LensdaskError
from lensdask.store import FLAG_EDGE, FLAG_MASKED, create_store, open_store
from lensdask.survey import ingest
from lensdask.survey.planes import wcs_of
from lensdask.survey.synthetic_des import write_catalog, write_des_tile
from lensdask.tilewriter import write_tile_streamed

TILE = "DES0001-0001"
BANDS = ["g", "r", "i", "z"]
H = 45 // 2


@pytest.fixture(scope="session")
def des_tile(tmp_path_factory):
    d = tmp_path_factory.mktemp("des")
    files, cat = write_des_tile(d / "tiles", TILE, size=2000, n_objects=600, seed=3)
    return d, files, cat


@pytest.fixture
def float32_store():
    with dask.config.set({"lensdask.store.quantise.step": 0}):  # pixels kept exactly, to compare
        yield


def _planes(path):
    with fits.open(path) as f:
        return f["SCI"].data.astype(np.float32), f["MSK"].data, f["WGT"].data, f["SCI"].header


def _expected(files, cat):
    """Stamps, masked and edge flags of every catalogue object, cut directly from the decompressed planes."""
    n = len(cat)
    stamps = np.full((n, len(BANDS), 45, 45), np.nan, np.float32)
    bad_st = np.zeros((n, len(BANDS), 45, 45), bool)
    masked = np.zeros(n, bool)
    edge = np.zeros(n, bool)
    for k, b in enumerate(BANDS):
        sci, msk, wgt, header = _planes(files[b])
        bad = ((msk & 1) != 0) | (wgt == 0)
        ny, nx = sci.shape
        x, y = wcs_of(header).all_world2pix(cat["RA"], cat["DEC"], 0)
        for i in range(n):
            cx, cy = int(np.floor(x[i] + 0.5)), int(np.floor(y[i] + 0.5))
            ys, xs = slice(max(cy - H, 0), min(cy + H + 1, ny)), slice(max(cx - H, 0), min(cx + H + 1, nx))
            oy, ox = ys.start - (cy - H), xs.start - (cx - H)
            stamps[i, k, oy : oy + ys.stop - ys.start, ox : ox + xs.stop - xs.start] = sci[ys, xs]
            bad_st[i, k, oy : oy + ys.stop - ys.start, ox : ox + xs.stop - xs.start] = bad[ys, xs]
            masked[i] |= bad[ys, xs].any()
            edge[i] |= cx - H < 0 or cy - H < 0 or cx + H >= nx or cy + H >= ny
    return stamps, bad_st, masked, edge


def _by_id(tile, ids):
    pos = pd.Series(np.arange(len(tile.table)), index=tile.table["object_id"].to_numpy())
    return pos.loc[ids].to_numpy()


def test_des_tiles_stamps_equal_the_decompressed_sci_planes_and_flags_are_exact(
    des_tile, tmp_path, float32_store, monkeypatch
):
    d, files, cat = des_tile
    write_catalog(cat, tmp_path / "gold.fits")  # DES Gold as it comes: FITS, upper case, TILENAME as bytes
    from lensdask.survey import planes

    heights = []
    rows = planes._Plane.rows
    monkeypatch.setattr(planes._Plane, "rows", lambda self, y0, y1: (heights.append(y1 - y0), rows(self, y0, y1))[1])
    store, report = ingest(
        tmp_path / "s.zarr",
        des_tiles=d / "tiles",
        catalog=tmp_path / "gold.fits",
        block_rows=256,
        client=None,
        progress=False,
        return_report=True,
    )
    assert store.tiles == [TILE] and store.counts.tolist() == [600] and report.outside == 0
    assert max(heights) < 2000 / 2  # strips of rows, never a whole plane
    tile = store.read_tile(0)
    idx = _by_id(tile, cat["COADD_OBJECT_ID"].to_numpy())
    images, flags = tile.images[idx], tile.table["flags"].to_numpy()[idx]
    stamps, bad, masked, edge = _expected(files, cat)
    good = ~bad
    np.testing.assert_array_equal(images[good], stamps[good])  # every unmasked pixel, NaN padding included
    assert ((flags & FLAG_MASKED) != 0).tolist() == masked.tolist()  # exactly the objects on bad pixels
    assert ((flags & FLAG_EDGE) != 0).tolist() == edge.tolist()
    assert 0 < masked.sum() < len(cat) and edge.sum() > 0
    # masked pixels hold the median of the stamp's unmasked ones
    i, k = np.argwhere(bad.any(axis=(2, 3)))[0]
    fill = images[i, k][bad[i, k]]
    assert np.all(fill == np.median(stamps[i, k][good[i, k] & np.isfinite(stamps[i, k])]))
    # the MSK bit-2 region is not a bad pixel of a DES coadd; asking for bit 2 too flags more objects
    s2 = ingest(
        tmp_path / "s2.zarr",
        des_tiles=d / "tiles",
        catalog=tmp_path / "gold.fits",
        mask_bits=3,
        client=None,
        progress=False,
    )
    assert (s2.read_table(0)["flags"] & FLAG_MASKED != 0).sum() > masked.sum()


def test_separate_hdu_options_by_number_read_the_des_layout_alike(des_tile, tmp_path, client):
    d, files, cat = des_tile
    cat.to_parquet(tmp_path / "gold.parquet")
    pattern = str(d / "tiles" / "{tile}_*_{band}.fits.fz")
    code = main(
        [
            "ingest",
            "--out",
            str(tmp_path / "n.zarr"),
            "--images",
            pattern,
            "--weights",
            pattern,
            "--masks",
            pattern,
            "--hdu",
            "1",
            "--masks-hdu",
            "2",
            "--weights-hdu",
            "WGT",
            "--mask-bits",
            "1",
            "--catalog",
            str(tmp_path / "gold.parquet"),
            "--cluster",
            client.scheduler.address,
            "--gallery",
            str(tmp_path / "g.png"),
        ]
    )
    assert code == 0
    ref = ingest(
        tmp_path / "r.zarr", des_tiles=d / "tiles", catalog=tmp_path / "gold.parquet", client=None, progress=False
    )
    a, b = open_store(tmp_path / "n.zarr").read_tile(0), ref.read_tile(0)
    assert a.table.equals(b.table) and np.array_equal(a.images, b.images, equal_nan=True)
    assert (tmp_path / "g.png").stat().st_size > 10_000


def test_the_science_plane_given_as_weights_and_masks_is_refused_naming_file_and_hdu(des_tile, tmp_path, capsys):
    d, files, cat = des_tile
    cat.to_parquet(tmp_path / "gold.parquet")
    pattern = str(d / "tiles" / "{tile}_*_{band}.fits.fz")
    out = tmp_path / "x.zarr"
    base = [
        "ingest",
        "--out",
        str(out),
        "--images",
        pattern,
        "--catalog",
        str(tmp_path / "gold.parquet"),
        "--hdu",
        "SCI",
    ]
    assert main(base + ["--weights", pattern]) == 2
    err = capsys.readouterr().err
    assert "_g.fits.fz[SCI]" in err and "negative" in err and "Traceback" not in err and len(err.splitlines()) == 1
    assert main(base + ["--masks", pattern]) == 2
    err = capsys.readouterr().err
    assert "[SCI]" in err and "floating-point" in err
    assert not out.exists()  # nothing written


def test_bad_tiles_fail_alone_and_objects_outside_every_tile_are_counted(des_tile, tmp_path, capsys, client):
    d, files, cat = des_tile
    tiles = tmp_path / "tiles"
    tiles.mkdir()
    for b, f in files.items():
        os.symlink(f, tiles / f.name)
        if b != "z":  # DES0002-0001 lacks its z band
            os.symlink(f, tiles / f.name.replace(TILE, "DES0002-0001"))
        os.symlink(f, tiles / f.name.replace(TILE, "DES0004-0001"))  # two processing tags: which one?
        os.symlink(f, tiles / f.name.replace(TILE, "DES0004-0001").replace("r4575p01", "r9999p02"))
    # DES0003-0001: a weight plane of another shape than its science image
    small, _ = write_des_tile(tmp_path / "small", "DES0003-0001", size=300, n_objects=5, seed=9)
    for f in small.values():
        with fits.open(f) as hl:
            hdus = [
                hl[0].copy(),
                hl["SCI"].copy(),
                hl["MSK"].copy(),
                fits.CompImageHDU(np.ones((200, 300), np.float32), hl["WGT"].header, name="WGT"),
            ]
            fits.HDUList(hdus).writeto(tiles / f.name)
    # DES0005-0001: a mask whose WCS puts the same sky elsewhere
    shifted, _ = write_des_tile(tmp_path / "shifted", "DES0005-0001", size=300, n_objects=5, seed=10)
    for f in shifted.values():
        with fits.open(f) as hl:
            msk = hl["MSK"].copy()
            msk.header["CRPIX1"] += 3.0
            fits.HDUList([hl[0].copy(), hl["SCI"].copy(), msk, hl["WGT"].copy()]).writeto(tiles / f.name)
    other = pd.DataFrame(
        {"COADD_OBJECT_ID": [1, 2, 3], "RA": [40.0, 40.1, 40.2], "DEC": -30.0, "TILENAME": "DES9999-9999"}
    )
    small_cat = cat.iloc[:4].assign(TILENAME="DES0003-0001")
    pd.concat([cat, other, small_cat]).to_parquet(tmp_path / "gold.parquet")
    code = main(
        [
            "ingest",
            "--out",
            str(tmp_path / "m.zarr"),
            "--des-tiles",
            str(tiles),
            "--catalog",
            str(tmp_path / "gold.parquet"),
            "--cluster",
            client.scheduler.address,
        ]
    )
    out, err = capsys.readouterr()
    assert code == 1
    store = open_store(tmp_path / "m.zarr")
    assert store.tiles == ["DES0001-0001", "DES0002-0001", "DES0003-0001", "DES0004-0001", "DES0005-0001"]
    assert store.counts.tolist() == [600, -1, -1, -1, -1]
    assert "3 of 607 catalogue objects lie in no tile ingested (most in tiles DES9999-9999)" in out
    lines = [ln for ln in err.splitlines() if ln.startswith("  tile ")]
    assert len(lines) == 4 and "Traceback" not in err
    assert "DES0002-0001: band z: no file matches" in lines[0]
    assert "DES0003-0001" in lines[1] and "weight map" in lines[1] and "300x200 px" in lines[1]
    assert "DES0004-0001: band g: 2 files match" in lines[2]
    assert "DES0005-0001" in lines[3] and "mask" in lines[3] and "another WCS" in lines[3] and "3 px apart" in lines[3]
    failures = pd.read_parquet(tmp_path / "m.zarr.failures.parquet")
    assert failures["tile"].tolist() == ["DES0002-0001", "DES0003-0001", "DES0004-0001", "DES0005-0001"]


def test_a_worker_below_the_tiles_memory_is_a_failed_tile_not_a_traceback(des_tile, tmp_path, capsys):
    from distributed import LocalCluster

    d, files, cat = des_tile
    cat.to_parquet(tmp_path / "gold.parquet")
    with (
        dask.config.set({"distributed.scheduler.allowed-failures": 0}),
        LocalCluster(
            n_workers=1, threads_per_worker=1, memory_limit="400MB", dashboard_address="127.0.0.1:0", silence_logs=50
        ) as cluster,
    ):
        code = main(
            [
                "ingest",
                "--out",
                str(tmp_path / "k.zarr"),
                "--des-tiles",
                str(d / "tiles"),
                "--catalog",
                str(tmp_path / "gold.parquet"),
                "--cluster",
                cluster.scheduler_address,
            ]
        )
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err
    (line,) = [ln for ln in err.splitlines() if ln.startswith("  tile ")]
    assert line.startswith(f"  tile {TILE}: worker lost") and "memory limit 381.47 MiB" in line
    assert open_store(tmp_path / "k.zarr").counts.tolist() == [-1]


@pytest.mark.parametrize("step", [None, 0])
def test_streamed_tile_is_the_shard_write_tile_writes(tmp_path, step):
    rng = np.random.default_rng(0)
    n = 700
    imgs = rng.normal(size=(n, 4, 45, 45)).astype(np.float32)
    imgs[3] = np.nan
    table = pd.DataFrame({"object_id": np.arange(n) + 5, "ra": 1.0, "dec": 2.0, "flags": 0})
    conf = {} if step is None else {"lensdask.store.quantise.step": step}
    with dask.config.set(conf):
        for name in ("a", "b"):
            s = create_store(
                tmp_path / f"{name}.zarr", tiles=["x", "y"], capacity=n, bands=BANDS, pixel_scale=0.263, stamp=45
            )
            if name == "a":
                s.write_tile(1, imgs, table)
            else:
                write_tile_streamed(s, 1, table, (imgs[i : i + 97] for i in range(0, n, 97)))
    assert filecmp.cmp(tmp_path / "a.zarr/images/c/1/0/0/0/0", tmp_path / "b.zarr/images/c/1/0/0/0/0", shallow=False)
    a, b = open_store(tmp_path / "a.zarr").read_tile(1), open_store(tmp_path / "b.zarr").read_tile(1)
    assert a.table.equals(b.table) and np.array_equal(a.images, b.images, equal_nan=True)


def test_mask_bits_and_des_tiles_are_checked_before_anything_starts(tmp_path, capsys):
    assert (
        main(
            ["ingest", "--out", str(tmp_path / "a.zarr"), "--des-tiles", str(tmp_path / "nope"), "--catalog", "x.fits"]
        )
        == 2
    )
    assert "is not a folder" in capsys.readouterr().err
    assert (
        main(
            [
                "ingest",
                "--out",
                str(tmp_path / "a.zarr"),
                "--images",
                "x_{band}.fits",
                "--catalog",
                "x.fits",
                "--mask-bits",
                "0",
            ]
        )
        == 2
    )
    with pytest.raises(LensdaskError, match="des_tiles or images"):
        ingest(tmp_path / "b.zarr", images="a_{band}.fits", des_tiles=tmp_path, catalog=pd.DataFrame())


def test_tiles_waiting_on_a_cluster_without_workers_fail_instead_of_hanging(monkeypatch):
    import threading
    import time

    from distributed import Client, LocalCluster

    from lensdask import fanout

    monkeypatch.setattr(fanout, "_no_worker_grace", lambda client: 1.0)
    with (
        LocalCluster(
            n_workers=1, threads_per_worker=1, memory_limit="2GiB", dashboard_address="127.0.0.1:0", silence_logs=50
        ) as cluster,
        Client(cluster) as client,
    ):
        client.wait_for_workers(1)
        threading.Timer(1.0, lambda: cluster.scale(0)).start()  # the worker goes, as one killed at start does
        t0 = time.monotonic()
        results, failures = fanout.run_tiles([("T1", time.sleep, (60,), {})], client=client, progress=False)
    assert time.monotonic() - t0 < 30 and not results
    assert failures[0]["tile"] == "T1" and failures[0]["error"].startswith("worker lost: no worker alive for 1 s")
    assert "memory limit 2.00 GiB" in failures[0]["error"]
