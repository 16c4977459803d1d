"""``lensdask fit RUN_DIR`` / ``lensdask.fit``: chunks through fanout.run_tiles, resume, signature, failures,
bad input, ranking. Tiny fitting settings: these tests check the wiring, not the science (test_fit_candidate)."""

from __future__ import annotations

import json
import shutil

import dask
import numpy as np
import pandas as pd
import pytest

import lensdask
from lensdask.cli import main
from lensdask.fit import candidate as cand
from lensdask.fit.run import FIT_DIR, FITS, FitError, fit

TINY = {
    "lensdask.fit.theta_E_grid": 4,
    "lensdask.fit.lens_starts": 1,
    "lensdask.fit.lens_blobs": [0],
    "lensdask.fit.null_blobs": [1],
    "lensdask.fit.null_starts": 1,
    "lensdask.fit.max_iterations": 8,
    "lensdask.fit.confirm": False,
}


@pytest.fixture(scope="module")
def run(galaxy_run):
    """A tiny search run (2 tiles x 3 galaxies, every row a candidate) whose store records no PSF."""
    return galaxy_run("fitrun", per_tile=3, seed=4, first_id=500)


@pytest.fixture(autouse=True)
def in_process(monkeypatch):
    """The CLI runs the chunks in this process (the cluster options have their own tests), even when an
    earlier test left a default Dask client: a monkeypatch here does not reach a worker."""
    import contextlib

    from lensdask import cli, cluster

    monkeypatch.setattr(cli, "_with_client", lambda a: contextlib.nullcontext(None))
    monkeypatch.setattr(cluster, "current_client", lambda: None)


@pytest.fixture
def tiny():
    with dask.config.set(TINY):
        yield


def _copy(run, tmp_path, name="run"):
    out = tmp_path / name
    shutil.copytree(run / "run", out)
    return out


def _fitted(table):
    return table.drop(columns=["fit_seconds"]).sort_values(["tile", "object_id"]).reset_index(drop=True)


def test_a_store_without_psf_is_refused_naming_the_band(run, tmp_path, capsys, tiny):
    rd = _copy(run, tmp_path)
    with pytest.raises(FitError, match="band g: .* --psf"):
        fit(rd, top=2, progress=False)
    assert main(["fit", str(rd), "--top", "2"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "band g" in err
    assert not (rd / FIT_DIR).exists()  # nothing written
    with pytest.raises(FitError, match="band 'q'"):
        fit(rd, top=2, psf="g=1.0,q=1.0", progress=False)


def test_a_run_without_a_store_is_one_line_exit_2(run, tmp_path, capsys):
    rd = _copy(run, tmp_path)
    summary = json.loads((rd / "summary.json").read_text())
    summary["store"] = str(tmp_path / "gone.zarr")
    (rd / "summary.json").write_text(json.dumps(summary))
    assert main(["fit", str(rd), "--psf", "1.0"]) == 2
    assert "gone.zarr" in capsys.readouterr().err


def test_fit_writes_ranks_resumes_and_does_not_depend_on_chunking(run, tmp_path, tiny):
    rd = _copy(run, tmp_path)
    first = fit(rd, top=3, psf=1.0, chunk_size=2, progress=False)
    assert first.fitted == 3 and first.resumed == 0 and not len(first.failures)
    assert len(list((rd / FIT_DIR).glob("chunk-*.parquet"))) == 2
    fits = pd.read_parquet(rd / FITS)
    assert len(fits) == 3 and (fits["fit_status"] == "ok").all()
    assert set(cand.fit_columns(["g", "r", "i", "z"])) <= set(fits.columns)
    assert np.isfinite(fits["fit_theta_E"]).all() and np.isfinite(fits["fit_dbic"]).all()
    models = np.load(next((rd / FIT_DIR).glob("chunk-*.npz")))
    assert any(k.endswith("_lens") for k in models.files) and models[models.files[0]].shape[-1] == 45
    candidates = pd.read_parquet(rd / "candidates.parquet")
    assert len(candidates) == 6 and sorted(candidates["combined_rank"]) == list(range(1, 7))
    assert candidates["fit_status"].notna().sum() == 3
    # resume: nothing refitted; asking for more fits only the new ones
    again = fit(rd, top=3, psf=1.0, progress=False)
    assert again.fitted == 0 and again.resumed == 3
    more = fit(rd, top=5, psf=1.0, chunk_size=3, progress=False)
    assert more.fitted == 2 and more.resumed == 3
    # a merge again (another threshold) keeps what was fitted in candidates.parquet
    assert main(["merge", str(rd), "--threshold", "0.0"]) == 0
    remerged = pd.read_parquet(rd / "candidates.parquet")
    assert remerged["fit_status"].notna().sum() == 5 and sorted(remerged["combined_rank"]) == list(range(1, 7))
    # and so does a search resumed over the finished run
    summary = json.loads((rd / "summary.json").read_text())
    resumed = lensdask.search(summary["store"], summary["model"], rd, resume=True, client=None, progress=False)
    assert resumed.candidates["fit_status"].notna().sum() == 5
    assert pd.read_parquet(rd / "candidates.parquet")["fit_status"].notna().sum() == 5
    # the same seed in one chunk gives the same table
    one = _copy(run, tmp_path, "one")
    fit(one, top=5, psf=1.0, chunk_size=5, progress=False)
    pd.testing.assert_frame_equal(_fitted(pd.read_parquet(rd / FITS)), _fitted(pd.read_parquet(one / FITS)))


def test_other_settings_are_refused_unless_overwrite(run, tmp_path, capsys, tiny):
    rd = _copy(run, tmp_path)
    fit(rd, top=1, psf=1.0, progress=False)
    with pytest.raises(FitError, match="other settings .*seed"):
        fit(rd, top=1, psf=1.0, seed=9, progress=False)
    assert main(["fit", str(rd), "--top", "1", "--psf", "1.0", "--seed", "9"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    redone = fit(rd, top=1, psf=1.0, seed=9, overwrite=True, progress=False)
    assert redone.fitted == 1 and redone.resumed == 0


def test_a_fit_that_raises_is_a_failure_row_and_the_run_goes_on(run, tmp_path, monkeypatch, capsys, tiny):
    rd = _copy(run, tmp_path)
    real = cand.fit_candidate
    victim = int(pd.read_parquet(rd / "candidates.parquet").sort_values("score").iloc[-1]["object_id"])

    def flaky(images, *args, seed, **kwargs):
        if seed == cand.candidate_seed(0, victim):
            raise RuntimeError("singular matrix")
        return real(images, *args, seed=seed, **kwargs)

    monkeypatch.setattr(cand, "fit_candidate", flaky)
    assert main(["fit", str(rd), "--top", "2", "--psf", "1.0"]) == 1
    captured = capsys.readouterr()
    assert "singular matrix" in captured.err
    failures = pd.read_parquet(rd / "fit_failures.parquet")
    assert len(failures) == 1 and failures["tile"].iloc[0].endswith(f"/{victim}")
    fits = pd.read_parquet(rd / FITS).set_index("object_id")
    assert fits.loc[victim, "fit_status"].startswith("error: RuntimeError") and len(fits) == 2


def test_fit_on_the_local_cluster_matches_in_process(run, tmp_path, client, tiny):
    a = _copy(run, tmp_path, "a")
    b = _copy(run, tmp_path, "b")
    fit(a, min_score=0.0, top=2, psf="g=1.1,r=1.0,i=0.9,z=0.9", chunk_size=1, client=client, progress=False)
    lensdask.fit(b, top=2, psf={"g": 1.1, "r": 1.0, "i": 0.9, "z": 0.9}, chunk_size=2, progress=False)
    pd.testing.assert_frame_equal(_fitted(pd.read_parquet(a / FITS)), _fitted(pd.read_parquet(b / FITS)))
