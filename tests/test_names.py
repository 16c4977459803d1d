"""Names are data, never paths: hostile tile names are refused where they enter and never leave a folder."""

import os
import pathlib

import numpy as np
import pandas as pd
import pytest

from lensdask.cli import main
from lensdask.errors import LensdaskError
from lensdask.names import check_name, child_path, csv_safe, safe_component
from lensdask.store import create_store, open_store

GOOD = ["DES0213-3040", "DES0000+0209", "sim-000001", "1234", "COSMOS_1", "tile.5", "review-20261201T0000-000"]
HOSTILE = [
    "../../EVIL",
    "../EVIL",
    "..",
    ".",
    "/tmp/lensdask-absolute-EVIL",
    "a\0b",
    "new\nline",
    "L" * 300,
    "<script>alert(1)</script>",
    "=cmd|' /C calc'!A0",
    "",
    "a/b",
    "-rf",
]


def _tree(root: pathlib.Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


@pytest.mark.parametrize("name", GOOD)
def test_real_survey_names_pass_and_name_their_files_unchanged(name, tmp_path):
    assert check_name(name) == name
    assert child_path(tmp_path, name, ".json") == tmp_path / f"{name}.json"


@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_names_are_refused_and_encode_inside_the_folder(name, tmp_path):
    with pytest.raises(LensdaskError, match="tile name .* is refused"):
        check_name(name, where="row 3 of t.csv")
    comp = safe_component(name)
    assert comp and "/" not in comp and "\0" not in comp and "\n" not in comp and not comp.startswith(".")
    assert len(comp) <= 160
    p = child_path(tmp_path, name, ".parquet")
    assert p.parent == tmp_path
    p.write_text("x")  # the file system accepts it, inside the folder
    assert _tree(tmp_path) == {p.name}


def test_encoding_is_one_to_one_on_hostile_names():
    comps = [safe_component(n) for n in HOSTILE]
    assert len(set(comps)) == len(comps)
    assert safe_component("a/b") != safe_component("a%2Fb")  # a name that looks encoded is encoded again


def test_the_error_message_is_short_and_printable():
    with pytest.raises(LensdaskError) as e:
        check_name("L" * 300 + "\n", where="row 7 of t.csv")
    msg = str(e.value)
    assert "\n" not in msg and len(msg) < 300 and "row 7 of t.csv" in msg and "301 characters" in msg


def test_csv_safe_neutralises_formula_cells_only():
    t = pd.DataFrame({"tile": ["=cmd|' /C calc'!A0", "DES0213-3040", "@SUM(A1)", "+1", "-2"], "dec": [-30.0] * 5})
    got = csv_safe(t)
    assert got["tile"].tolist() == ["'=cmd|' /C calc'!A0", "DES0213-3040", "'@SUM(A1)", "'+1", "'-2"]
    assert got["dec"].tolist() == [-30.0] * 5  # numbers untouched
    assert t["tile"][0].startswith("=")  # the input is not modified


# -- where names enter ------------------------------------------------------------------------------

def _arrays(tmp_path, n=3, stamp=45):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "x.npz", images=rng.normal(size=(n, 4, stamp, stamp)).astype("float32"))
    return tmp_path / "x.npz"


@pytest.mark.parametrize("bad", HOSTILE)
def test_ingest_refuses_a_hostile_tile_name_naming_the_row(bad, tmp_path, capsys):
    arrays = _arrays(tmp_path)
    pd.DataFrame({"object_id": [1, 2, 3], "tile": ["DES0213-3040", "DES0213-3040", bad]}).to_csv(
        tmp_path / "t.csv", index=False)
    before = _tree(tmp_path.parent)
    out = tmp_path / "s.zarr"
    assert main(["ingest", "--arrays", str(arrays), "--table", str(tmp_path / "t.csv"), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert "row 3 of" in err and "t.csv" in err
    assert not out.exists()
    assert _tree(tmp_path.parent) == before  # nothing written anywhere


def test_store_creation_and_trainset_labels_refuse_hostile_names(tmp_path):
    with pytest.raises(LensdaskError, match=r"row 2 of the new store's tile list"):
        create_store(tmp_path / "s.zarr", tiles=["DES0213-3040", "../../EVIL"], capacity=4, bands="griz",
                     pixel_scale=0.263, stamp=45)
    assert not (tmp_path / "s.zarr").exists()
    s = create_store(tmp_path / "s.zarr", tiles=GOOD, capacity=4, bands="griz", pixel_scale=0.263, stamp=45)
    with pytest.raises(LensdaskError, match="the tiles to add"):
        s_rw = open_store(tmp_path / "s.zarr", mode="r+")
        s_rw.add_tiles(["ok-1", "<script>"])
    assert open_store(tmp_path / "s.zarr").tiles == GOOD == s.tiles

    from lensdask.review.labels import add_labels
    from lensdask.review.trainset import trainset_add

    with pytest.raises(LensdaskError, match="row 1 of the labels"):
        add_labels(tmp_path / "labels.csv", [{"tile": "../x", "object_id": 1, "class": "lens"}])
    assert not (tmp_path / "labels.csv").exists()
    hostile = pd.DataFrame({"tile": ["DES0213-3040", "=cmd|' /C calc'!A0"], "object_id": [1, 2],
                            "class": ["lens", "lens"], "labeller": ["a", "b"], "time": ["t", "t"]})
    with pytest.raises(LensdaskError, match="row 2 of the labels"):
        trainset_add(hostile, tmp_path / "s.zarr", tmp_path / "s.zarr")


# -- every path built from a name ---------------------------------------------------------------------

@pytest.fixture
def hostile_store(tmp_path):
    """A store whose tile names were forced past the checks (as an old or hand-made store could be)."""
    names = ["DES0213-3040", "../../EVIL", "/tmp/lensdask-absolute-EVIL", "a\0b", "new\nline", "L" * 300,
             "<script>alert(1)</script>", "=cmd|' /C calc'!A0"]
    root = tmp_path / "a" / "b"
    root.mkdir(parents=True)
    s = create_store(root / "des.zarr", tiles=[f"t{i}" for i in range(len(names))], capacity=8, bands="griz",
                     pixel_scale=0.263, stamp=45)
    s.group["tile"][:] = np.asarray(names, dtype=object)
    rng = np.random.default_rng(1)
    for t in range(len(names)):
        s.write_tile(t, rng.normal(size=(3, 4, 45, 45)).astype("float32"), pd.DataFrame(
            {"object_id": 100 * t + np.arange(3), "ra": 10 + rng.uniform(0, .1, 3), "dec": -30 + rng.uniform(0, .1, 3),
             "label": -np.ones(3, int)}))
    assert open_store(root / "des.zarr").tiles == names
    return root, names


def test_search_review_and_exports_stay_inside_their_folders(hostile_store, random_model, tmp_path, capsys):
    from lensdask.review.gallery import gallery
    from lensdask.search import search

    root, names = hostile_store
    assert not pathlib.Path("/tmp/lensdask-absolute-EVIL.json").exists()
    before = _tree(tmp_path)
    run = root / "run"
    result = search(root / "des.zarr", random_model, run, threshold=0.0, floor=0.0, progress=False, export="csv",
                    crossmatch=False, report=False)
    assert not result.failures.shape[0]
    new = _tree(tmp_path) - before
    assert new and all(p.startswith(os.path.join("a", "b", "run")) for p in new), sorted(new)
    assert len(list((run / "tiles").glob("*.json"))) == len(names)
    assert not pathlib.Path("/tmp/lensdask-absolute-EVIL.json").exists()
    # the names survive as data
    assert set(result.candidates["tile"]) == set(names)
    csv = (run / "candidates.csv").read_text()
    assert "\n=cmd" not in csv and ",=cmd" not in csv and "'=cmd" in csv

    # resume finds every tile done under its encoded name
    again = search(root / "des.zarr", random_model, run, threshold=0.0, resume=True, progress=False,
                   crossmatch=False, report=False)
    assert again.summary["tiles_resumed"] == len(names)

    g = gallery(run, top=24)
    html = "".join(p.read_text() for p in [g.index, *g.pages])
    assert "<script>alert(1)</script>" not in html and "&lt;script&gt;" in html

    before = _tree(tmp_path)
    zoo = root / "zoo"
    assert main(["export-zooniverse", str(run), "--top", "24", "--out", str(zoo)]) == 0
    new = _tree(tmp_path) - before
    assert all(p.startswith(os.path.join("a", "b", "zoo")) for p in new), sorted(new)
    assert len(list(zoo.glob("*.png"))) == 24
    manifest = pd.read_csv(zoo / "manifest.csv")
    assert all((zoo / i).is_file() for i in manifest["image"])
    text = manifest[["image", "#tile", "#model"]].astype(str).to_numpy().ravel()
    assert not any(c.startswith(("=", "+", "-", "@")) for c in text)
    assert "'=cmd|' /C calc'!A0" in set(manifest["#tile"])  # neutralised, still readable


def test_emit_htcondor_encodes_names_for_tiles_txt_and_logs(hostile_store, random_model, tmp_path, capsys):
    import re

    root, names = hostile_store
    emit = root / "condor"
    assert main(["search", "--zarr", str(root / "des.zarr"), "--model", str(random_model), "--out",
                 str(root / "run"), "--emit-htcondor", str(emit)]) == 0
    lines = (emit / "tiles.txt").read_text().splitlines()
    assert len(lines) == len(names)  # one line per tile: no name breaks a line
    for i, line in enumerate(lines):
        index, name = line.split(", ")
        assert int(index) == i and re.fullmatch(r"[A-Za-z0-9%._+~-]+", name) and not name.startswith(".")
        assert (emit / "logs" / f"tile-{name}.out").parent == emit / "logs"


def test_child_path_refuses_a_suffix_that_would_leave_the_folder(tmp_path):
    with pytest.raises(LensdaskError, match="path separator"):
        child_path(tmp_path, "DES0213-3040", "/../../x.json")


def test_ingest_of_tile_images_refuses_hostile_tile_names(tmp_path, capsys):
    pd.DataFrame({"id": [1], "ra": [1.0], "dec": [-30.0], "tile": ["<script>"]}).to_csv(tmp_path / "c.csv", index=False)
    base = ["ingest", "--images", str(tmp_path / "{tile}_{band}.fits"), "--out", str(tmp_path / "s.zarr")]
    assert main(base + ["--catalog", str(tmp_path / "c.csv"), "--tiles", "DES0213-3040", "../../EVIL"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'../../EVIL' in row 2 of --tiles" in err
    assert main(base + ["--catalog", str(tmp_path / "c.csv")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'<script>' in row 1 of" in err and "c.csv" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.csv"]
