"""Nothing half-written: a read-only or full disk stops with a clear error and leaves no tile marked done.

The tests run as root, where chmod 0o555 does not stop writes, so they use real file systems:
a tmpfs mounted read-only and a tmpfs of a few hundred KiB. Where mounting is not allowed
(not root, no CAP_SYS_ADMIN) they skip, saying so.
"""

import json
import os
import subprocess

import numpy as np
import pandas as pd
import pytest

from lensdask.cli import main
from lensdask.store import open_store


def _mount(path, *options):
    path.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", ",".join(options), "tmpfs", str(path)], capture_output=True, text=True
    )
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({r.stderr.strip() or 'mount failed'}); needs root with CAP_SYS_ADMIN")


@pytest.fixture
def mounts(tmp_path):
    done = []

    def mount(name, *options):
        path = tmp_path / name
        _mount(path, *options)
        done.append(path)
        return path

    yield mount
    for path in reversed(done):
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def test_search_into_a_read_only_disk_is_refused_with_one_line(mounts, tmp_path, random_model, capsys, tiny_store):
    tiny_store(tmp_path / "des.zarr", tiles=1, rows=4)
    ro = mounts("ro", "ro", "size=1m")
    code = main(
        ["search", "--zarr", str(tmp_path / "des.zarr"), "--model", str(random_model), "--out", str(ro / "run")]
    )
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    assert "cannot write" in err and "Read-only file system" in err
    assert os.listdir(ro) == []


def test_a_store_on_a_read_only_disk_is_refused_with_one_line(mounts, capsys):
    ro = mounts("ro", "ro", "size=1m")
    code = main(["mock-survey", "--out", str(ro / "des.zarr"), "--tiles", "1", "--per-tile", "5"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    assert "Read-only file system" in err
    assert os.listdir(ro) == []


def test_a_full_disk_leaves_only_whole_tiles_marked_done(mounts, tmp_path, random_model, tiny_store):
    from lensdask.errors import LensdaskError
    from lensdask.search import read_scores, search

    tiny_store(tmp_path / "des.zarr", tiles=6, rows=400)
    small = mounts("small", "size=160k")
    run = small / "run"
    try:
        result = search(
            tmp_path / "des.zarr", random_model, run, threshold=0.0, floor=0.0, progress=False, crossmatch=False
        )
    except (OSError, LensdaskError):
        result = None  # the disk filled before the merge: an error, never a half-written tile
    if result is not None:
        assert len(result.failures) > 0  # some tiles could not be written
    tiles = run / "tiles"
    markers = sorted(tiles.glob("*.json"))
    assert len(markers) < 6
    assert not list(tiles.glob(".*.tmp"))  # no temporary file left behind
    for m in markers:  # every tile marked done is whole and readable
        stats = json.loads(m.read_text())
        table = pd.read_parquet(m.with_suffix(".parquet"))
        assert len(table) == stats["rows"] == 400
    if markers:
        assert len(read_scores(run)) == 400 * len(markers)


def test_a_store_written_to_a_full_disk_commits_no_partial_tile(mounts, tiny_store):
    small = mounts("small", "size=400k")
    with pytest.raises(OSError):
        tiny_store(small / "des.zarr", tiles=4, rows=30)  # ~0.9 MiB of quantised pixels
    s = open_store(small / "des.zarr")
    for t in s.written_tiles():  # a tile counted as written reads back whole
        assert len(s.read_table(t)) == 30 and np.isfinite(s.read_images(t)).all()
    assert len(s.written_tiles()) < 4
