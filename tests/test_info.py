"""lensdask info and lensdask convert on the command line."""

import json

import numpy as np
import pandas as pd

from lensdask.cli import main
from lensdask.store import create_store, open_store

from conftest import SKY_SIGMA, corrupt_first_chunk, sky_stamps, table_rows, write_v1_store


def _labelled(path, **kw):
    s = create_store(
        path,
        tiles=["DES0001-0001", "DES0002-0002", "DES0003-0003"],
        capacity=40,
        bands="griz",
        pixel_scale=0.263,
        stamp=45,
        classes=["non-lens", "lens", "ring"],
        chunk_rows=20,
        provenance={"command": "made by test_info", "lensdask_version": "9.9", "created": "today", "seed": 5},
        **kw,
    )
    x = sky_stamps(30, seed=1)
    x[3, 2] = 1.0  # a constant band: kept losslessly, flagged
    table = pd.DataFrame(
        {
            "object_id": np.arange(30),
            "ra": 1.0,
            "dec": -2.0,
            "label": [1] * 3 + [2] * 7 + [0] * 15 + [-1] * 5,
            "flags": [1] + [0] * 29,
        }
    )
    s.write_tile(0, x[:20], table[:20])
    s.write_tile(2, x[20:], table[20:].reset_index(drop=True))
    return s


def test_info_text_and_json(tmp_path, capsys):
    _labelled(tmp_path / "s.zarr")
    assert main(["info", str(tmp_path / "s.zarr")]) == 0
    out = capsys.readouterr().out
    for expected in [
        "lensdask.cutouts/2 (version 2)",
        "g,r,i,z",
        "0.263 arcsec/px, stamp 45 px",
        "2 written of 3",
        "rows        30",
        "non-lens 15, lens 3, ring 7, unknown 5",
        "edge 1, masked 0, lossless 1",
        "quantised: step 0.33 x sky noise (rms error 0.095 sigma)",
        "lensdask.pcodec (level 8)",
        "KiB per cutout",
        "made by test_info",
        "lensdask 9.9",
        "seed 5",
    ]:
        assert expected in out, (expected, out)

    assert main(["info", str(tmp_path / "s.zarr"), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["schema"] == "lensdask.cutouts/2" and info["version"] == 2
    assert info["tiles_written"] == 2 and info["tiles"] == 3 and info["rows"] == 30
    assert info["classes"] == {"non-lens": 15, "lens": 3, "ring": 7, "unknown": 5}
    assert info["encoding"]["pixels"] == "quantised" and info["encoding"]["step"] == 0.33
    assert 1000 < info["bytes_per_cutout"] < 8 * 1024  # a constant band and small tiles cost a little
    assert info["image_bytes_per_cutout"] < info["bytes_per_cutout"]


def test_info_on_float_and_old_stores(tmp_path, capsys):
    _labelled(tmp_path / "f.zarr", quantise_step=0)
    assert main(["info", str(tmp_path / "f.zarr"), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["encoding"] == {"pixels": "float32", "dtype": "float32", "codec": "blosc-lz4"}
    assert info["bytes_per_cutout"] > 25 * 1024

    write_v1_store(tmp_path / "v1.zarr", sky_stamps(4))
    assert main(["info", str(tmp_path / "v1.zarr")]) == 0
    out = capsys.readouterr().out
    assert "lensdask.cutouts/1 (version 1)" in out and "lensdask convert" in out and "float32 exact" in out


def test_info_refuses_what_is_not_a_store(tmp_path, capsys):
    assert main(["info", str(tmp_path / "nothing.zarr")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "nothing.zarr" in err


def test_convert_command(tmp_path, capsys):
    write_v1_store(tmp_path / "v1.zarr", sky_stamps(12, seed=3))
    src = str(tmp_path / "v1.zarr")
    assert main(["convert", src, str(tmp_path / "q.zarr")]) == 0
    q = open_store(tmp_path / "q.zarr")
    assert q.quantised and q.n_rows == 12
    assert q.provenance["command"].startswith("lensdask convert")
    assert np.sqrt((((q.read_images(0) - sky_stamps(12, seed=3)) / SKY_SIGMA) ** 2).mean()) <= 0.1

    assert main(["convert", src, str(tmp_path / "q.zarr")]) == 2  # exists
    assert "overwrite" in capsys.readouterr().err
    for bad in ("-1", "nan", "3", "lots"):
        assert main(["convert", src, str(tmp_path / "x.zarr"), "--step", bad]) == 2
        assert "step" in capsys.readouterr().err
    assert not (tmp_path / "x.zarr").exists()
    assert main(["convert", src, str(tmp_path / "e.zarr"), "--step", "0"]) == 0
    assert not open_store(tmp_path / "e.zarr").quantised
    assert main(["convert", src, src]) == 2


def test_convert_names_a_corrupt_tile_and_finishes_the_rest(tmp_path, capsys, client):
    s = create_store(
        tmp_path / "s.zarr",
        tiles=["A", "B", "C"],
        capacity=20,
        bands="griz",
        pixel_scale=0.263,
        stamp=45,
        chunk_rows=20,
    )
    for t in range(3):
        s.write_tile(t, sky_stamps(20, seed=t), table_rows(20, start=20 * t))
    corrupt_first_chunk(tmp_path / "s.zarr", 1)
    assert main(["convert", str(tmp_path / "s.zarr"), str(tmp_path / "c.zarr")]) == 1
    err = capsys.readouterr().err
    assert "tile B failed" in err and "tile A" not in err and "tile C" not in err
    assert open_store(tmp_path / "c.zarr").counts.tolist() == [20, -1, 20]
    # the same, one task per tile on a cluster
    from lensdask.storeadmin import convert

    out, failures = convert(tmp_path / "s.zarr", tmp_path / "d.zarr", client=client)
    assert [f["tile"] for f in failures] == ["B"] and out.counts.tolist() == [20, -1, 20]
