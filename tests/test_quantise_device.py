"""Feeding the model: inputs staged on the device ahead of the forward pass (pinned buffers, copy stream).

The CPU path runs everywhere; the CUDA path (pinned, reused host buffers, non-blocking copies on a
stream of their own) needs a GPU and is marked ``gpu``.
"""

import numpy as np
import pandas as pd
import pytest
import torch

from lensdask.model import load_checkpoint
from lensdask.model.infer import DeviceStager, Staged, forward_proba, stage_inputs
from lensdask.search.score import prepare_batch
from lensdask.store import create_store

from conftest import sky_stamps


@pytest.fixture(scope="module")
def model_card(random_model):
    model, card = load_checkpoint(random_model)[:2]
    return model.eval(), card


def _prepared(card, n=70, seed=0):
    x = sky_stamps(n, seed=seed)
    x[5, 1, 3, 3] = np.nan
    table = pd.DataFrame({"tile": "T", "object_id": np.arange(n), "ra": 0.0, "dec": 0.0})
    return prepare_batch(x, table, card)


def test_staged_inputs_score_like_arrays_on_cpu(model_card):
    model, card = model_card
    cpu = torch.device("cpu")
    batches = [_prepared(card, seed=s) for s in range(3)]
    staged = list(stage_inputs(iter(batches), cpu))
    for (x, bad, table), (sx, sbad, stable) in zip(batches, staged):
        assert isinstance(sx, Staged) and len(sx) == len(x) == int((~bad).sum()) and sx.shape == x.shape
        assert sbad is bad and stable is table
        np.testing.assert_array_equal(
            forward_proba(model, sx, batch_size=16, device=cpu), forward_proba(model, x, batch_size=16, device=cpu)
        )
    # prepare_inputs' list of arrays (one per normalisation) is staged element by element
    ((xs, *_),) = stage_inputs(iter([([batches[0][0], batches[1][0]], None)]), cpu)
    assert [len(s) for s in xs] == [len(batches[0][0]), len(batches[1][0])]


def test_cpu_stager_does_not_copy():
    x = np.ones((4, 4, 9, 9), np.float32)
    s = DeviceStager(torch.device("cpu"))(x)
    assert s.get().data_ptr() == x.__array_interface__["data"][0] and s.ready is None


def test_search_with_and_without_a_reader_thread_agree(tmp_path, random_model, monkeypatch):
    from lensdask.model.checkpoint import read_card
    from lensdask.search import run

    s = create_store(
        tmp_path / "s.zarr", tiles=["T0"], capacity=96, bands="griz", pixel_scale=0.263, stamp=45, chunk_rows=32
    )
    s.write_tile(0, sky_stamps(90, seed=4), pd.DataFrame({"object_id": np.arange(90), "ra": 0.0, "dec": 0.0}))
    sha = read_card(random_model)["sha256"]
    out = {}
    for threaded in (False, True):
        monkeypatch.setattr(run, "_reader_has_a_core", lambda dev, t=threaded: t)
        run.search_tile(
            str(tmp_path / "s.zarr"),
            0,
            str(random_model),
            sha,
            str(tmp_path / f"run{threaded}"),
            device="cpu",
            batch_size=32,
        )
        out[threaded] = pd.read_parquet(tmp_path / f"run{threaded}" / "tiles" / "T0.parquet")
    assert len(out[True]) == 90
    np.testing.assert_allclose(out[True]["score"], out[False]["score"], rtol=1e-5, atol=1e-6)


@pytest.mark.gpu
def test_cuda_staging_reuses_pinned_buffers_and_copies_on_its_own_stream(model_card):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")
    model, card = model_card
    dev = torch.device("cuda")
    st = DeviceStager(dev, buffers=2)
    batches = [_prepared(card, n=64, seed=s) for s in range(8)]
    staged = [st(x) for x, _, _ in batches]
    assert st.allocations <= 2  # pinned buffers are reused, not allocated per batch
    assert all(s.tensor.device.type == "cuda" and s.ready is not None for s in staged)
    assert st.stream != torch.cuda.current_stream(dev)
    gpu_model = model.to(dev)
    for (x, _, _), s in zip(batches, staged):
        got = forward_proba(gpu_model, s, batch_size=32, device=dev, precision="fp32")
        want = forward_proba(gpu_model, x, batch_size=32, device=dev, precision="fp32")
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(s.tensor.cpu().numpy(), x)  # the bytes arrived intact
    model.to("cpu")
