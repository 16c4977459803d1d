"""Refuse before work: every bad argument is exit status 2, one line on stderr, no traceback, nothing written."""

import shutil

import numpy as np
import pandas as pd
import pytest

from lensdask.cli import main
from lensdask.errors import CheckpointError, ConstraintError, LensdaskError
from lensdask.store import create_store

# (command line with {out}, {zarr}, {model}, {run}, {yaml} placeholders, words the one error line must hold)
BAD = [
    ("search --zarr {zarr} --model {model} --out {out} --threshold 2", "--threshold"),
    ("search --zarr {zarr} --model {model} --out {out} --threshold nan", "finite"),
    ("search --zarr {zarr} --model {model} --out {out} --threshold -1", "between 0 and 1"),
    ("search --zarr {zarr} --model {model} --out {out} --threshold inf", "finite"),
    ("search --zarr {zarr} --model {model} --out {out} --floor 1.5", "--floor"),
    ("search --zarr {zarr} --model {model} --out {out} --batch-size 0", "--batch-size"),
    ("search --zarr {zarr} --model {model} --out {out} --batch-size many", "batch size 'many'"),
    ("search --zarr {zarr} --model {model} --out {out} --radius 0", "--radius"),
    ("search --zarr {zarr} --model {model} --out {out} --cluster moon", "unknown cluster"),
    ("search --zarr {zarr} --model {model} --out {out} --cluster slurm --jobs 0", "--jobs"),
    ("search --zarr {zarr} --model {model} --out {out} --cluster slurm --adapt 5:2", "--adapt"),
    ("search --zarr {zarr} --model {model} --out {out} --emit-htcondor {out} --threshold 7", "--threshold"),
    ("search --zarr {zarr} --model {model} --out {out} --emit-htcondor {out} --fit-top 0", "--fit-top"),
    ("search --zarr {zarr} --model {model} --out {out} --fit-top 5", "--emit-htcondor"),
    ("search-tile --zarr {zarr} --model {model} --out {out} --tile 0 --batch-size -3", "--batch-size"),
    ("simulate --out {out} --n 0", "--n"),
    ("simulate --out {out} --n -5", "--n"),
    ("simulate --out {out} --n 10 --lens-fraction 1.2", "--lens-fraction"),
    ("simulate --out {out} --n 10 --partition-size 0", "--partition-size"),
    ("simulate --out {out} --n 10 --lookalike-fraction -0.1", "--lookalike-fraction"),
    ("simulate --out {out} --n 10 --gallery-n 0", "--gallery-n"),
    ("simulate --out {out} --n 10 --constraints {yaml}", "theta_E_min"),
    ("mock-survey --out {out} --tiles 0", "--tiles"),
    ("mock-survey --out {out} --per-tile 0", "--per-tile"),
    ("mock-survey --out {out} --lens-fraction nan", "--lens-fraction"),
    ("ingest --out {out} --arrays {npz} --per-tile 0", "--per-tile"),
    ("ingest --out {out} --arrays {npz} --stamp 0", "--stamp"),
    ("ingest --out {out} --arrays {npz} --pixel-scale -0.263", "--pixel-scale"),
    ("train --data {zarr} --out {out} --epochs 0", "--epochs"),
    ("train --data {zarr} --out {out} --batch-size 0", "--batch-size"),
    ("train --data {zarr} --out {out} --lr 0", "--lr"),
    ("train --data {zarr} --out {out} --validation-fraction 2", "--validation-fraction"),
    ("train --data {zarr} --out {out} --patience -1", "--patience"),
    ("evaluate --model {model} --data {zarr} --threshold 3 --json {out}", "--threshold"),
    ("evaluate --model {model} --data {zarr} --batch-size 0 --json {out}", "--batch-size"),
    ("inject --model {model} --cutouts {zarr} --orientations 9 --out {out}", "--orientations"),
    ("inject --model {model} --cutouts {zarr} --top 0 --out {out}", "--top"),
    ("inject --model {model} --cutouts {zarr} --bins 0 --out {out}", "--bins"),
    ("inject --model {model} --cutouts {zarr} --threshold -0.5 --out {out}", "--threshold"),
    ("inject --model {model} --cutouts {zarr} --constraints {yaml} --out {out}", "theta_E_min"),
    ("merge {run} --threshold 1.01", "--threshold"),
    ("review {run} --top 0 --out {out}", "--top"),
    ("review {run} --per-page 0 --out {out}", "--per-page"),
    ("export-zooniverse {run} --top 0 --out {out}", "--top"),
    ("swap --classifications {zarr} --out {out} --prior 1.5", "--prior"),
    ("demo --out {out} --tiles 0", "--tiles"),
    ("demo --out {out} --per-tile 0", "--per-tile"),
    ("demo --out {out} --lens-fraction 2", "--lens-fraction"),
]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, random_model):
    d = tmp_path_factory.mktemp("refuse")
    s = create_store(d / "des.zarr", tiles=["DES0213-3040"], capacity=4, bands="griz", pixel_scale=0.263, stamp=45)
    s.write_tile(
        0,
        np.zeros((2, 4, 45, 45), "float32"),
        pd.DataFrame({"object_id": [1, 2], "ra": [1.0, 1.0], "dec": [-30.0, -30.0], "label": [-1, -1]}),
    )
    np.savez(d / "x.npz", images=np.zeros((2, 4, 45, 45), "float32"))
    (d / "bad.yaml").write_text("theta_E_min: 2.5\ntheta_E_max: 1.0\n")
    (d / "run").mkdir()
    return {"zarr": d / "des.zarr", "model": random_model, "run": d / "run", "npz": d / "x.npz", "yaml": d / "bad.yaml"}


@pytest.mark.parametrize("line,words", BAD, ids=[b[0].split(" {")[0] + " " + b[0].split()[-1] for b in BAD])
def test_bad_values_are_refused_before_work(line, words, inputs, tmp_path, capsys):
    out = tmp_path / "out"
    argv = line.format(out=out, **inputs).split()
    code = main(argv)
    captured = capsys.readouterr()
    assert code == 2, captured
    assert captured.err.count("\n") == 1 and captured.err.endswith("\n"), captured.err
    assert "Traceback" not in captured.err and "error" in captured.err
    assert words in captured.err, captured.err
    assert not out.exists(), f"{out} was written"
    assert list(tmp_path.iterdir()) == []
    assert "Dask dashboard" not in captured.out  # no cluster was started


def test_a_corrupt_weights_file_is_found_once_before_any_tile(inputs, tmp_path, capsys):
    model = tmp_path / "model"
    shutil.copytree(inputs["model"], model)
    w = model / "model.safetensors"
    data = bytearray(w.read_bytes())
    data[len(data) // 2] ^= 0xFF
    w.write_bytes(bytes(data))
    out = tmp_path / "run"
    for extra in ([], ["--emit-htcondor", str(tmp_path / "condor")]):
        assert main(["search", "--zarr", str(inputs["zarr"]), "--model", str(model), "--out", str(out)] + extra) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "corrupt" in err and "sha256" in err and "Traceback" not in err
        assert not out.exists() and not (tmp_path / "condor").exists()
    from lensdask.search import search

    with pytest.raises(CheckpointError, match="corrupt"):
        search(inputs["zarr"], model, out, progress=False)
    assert not out.exists()  # the library checks it once too, before the run directory is made


def test_library_search_refuses_a_configured_threshold_out_of_range(inputs, tmp_path):
    import dask.config

    from lensdask.search import search

    for bad in (2, float("nan"), -1):
        with dask.config.set({"lensdask.search.threshold": bad}), pytest.raises(LensdaskError, match="threshold"):
            search(inputs["zarr"], inputs["model"], tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_constraint_pairs_are_checked_against_the_configuration():
    from lensdask.checks import constraint_pairs

    constraint_pairs({"theta_E_min": 1.0, "theta_E_max": 2.0})
    constraint_pairs(None)
    with pytest.raises(ConstraintError, match="theta_E_min = 3.5 is greater than theta_E_max"):
        constraint_pairs({"theta_E_min": 3.5})  # the configured theta_E_max is 3.0
    with pytest.raises(ConstraintError, match="not a finite number"):
        constraint_pairs({"arc_snr_min": "lots"})


def test_help_and_good_values_still_work(capsys):
    with pytest.raises(SystemExit) as e:
        main(["search", "--help"])
    assert e.value.code == 0
    from lensdask.checks import batch_size, count, fraction

    assert fraction("0") == 0.0 and fraction("1") == 1.0 and count("3") == 3
    assert batch_size("auto") == "auto" and batch_size("64") == 64
