"""The CLI in-process: every command's help, the pipeline through main(), clear errors for bad input."""

import json

import pandas as pd
import pytest

from lensdask.cli import main

COMMANDS = [
    "simulate",
    "mock-survey",
    "ingest",
    "train",
    "evaluate",
    "search",
    "search-tile",
    "merge",
    "config",
    "demo",
    "review",
    "label",
    "trainset",
    "export-zooniverse",
    "swap",
]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([command, "--help"])
    assert exit_.value.code == 0
    assert "usage: lensdask " + command in capsys.readouterr().out


def test_config_show(capsys):
    assert main(["config", "show"]) == 0
    out = capsys.readouterr().out
    assert "lensdask:" in out and "batch_size" in out and "threshold" in out


def test_unknown_cluster_is_a_clear_error(tmp_path, capsys):
    code = main(
        ["mock-survey", "--out", str(tmp_path / "x.zarr"), "--tiles", "1", "--per-tile", "2", "--cluster", "moon"]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert "unknown cluster 'moon'" in err and "tcp://" in err


def test_missing_store_is_a_clear_error(tmp_path, capsys, random_model):
    code = main(
        ["search", "--zarr", str(tmp_path / "none.zarr"), "--model", str(random_model), "--out", str(tmp_path / "run")]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert "none.zarr" in err and "error" in err


@pytest.mark.slow
def test_pipeline_through_the_cli(tmp_path, client, random_model, capsys):
    addr = client.scheduler.address
    des = tmp_path / "des.zarr"
    assert (
        main(
            [
                "mock-survey",
                "--out",
                str(des),
                "--tiles",
                "2",
                "--per-tile",
                "40",
                "--lens-fraction",
                "0.1",
                "--seed",
                "3",
                "--cluster",
                addr,
            ]
        )
        == 0
    )
    truth = pd.read_parquet(tmp_path / "des.truth.parquet")
    assert len(truth) == 80
    assert (
        main(
            [
                "search",
                "--zarr",
                str(des),
                "--model",
                str(random_model),
                "--out",
                str(tmp_path / "run"),
                "--threshold",
                "0",
                "--cluster",
                addr,
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "Dask dashboard" in out and "searched 2 of 2 tiles" in out
    cand = pd.read_parquet(tmp_path / "run" / "candidates.parquet")
    assert sorted(cand["object_id"]) == sorted(truth["object_id"])

    train = tmp_path / "train.zarr"
    assert (
        main(["simulate", "--out", str(train), "--n", "24", "--seed", "1", "--partition-size", "8", "--cluster", addr])
        == 0
    )
    assert (
        main(["evaluate", "--model", str(random_model), "--data", str(train), "--json", str(tmp_path / "m.json")]) == 0
    )
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert 0.0 <= metrics["auroc"] <= 1.0 and metrics["n_pos"] + metrics["n_neg"] == 24
    # a second simulate to the same path refuses to overwrite
    assert main(["simulate", "--out", str(train), "--n", "8", "--cluster", addr]) == 2
    assert "exists" in capsys.readouterr().err
