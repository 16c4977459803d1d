"""Normalising a quantised store's rows straight from the codes, with the sky statistics stored at write time."""

import json
import shutil

import numpy as np
import pytest

from lensdask.normalise import nonfinite_rows, normalise
from lensdask.quantise import NAN_CODE, codes_normalisable, dequantise, normalise_codes, quantise_measured
from lensdask.store import SKY_ARRAYS, open_store

from conftest import EMPTY_STORE, make_tiny_store, sky_stamps, table_rows

SPECS = [None, {"softening": 1.0}, {"method": "none"}, {"border": 3}]
"""The default, another softening (both from the codes), and two that must decode first."""


def test_codes_give_the_normalisation_of_the_original_pixels():
    x = sky_stamps(64, seed=11)
    keys = np.arange(64)
    q, scale, zero, sky, noise = quantise_measured(x, keys, step=0.33, seed=1, border=4)
    assert codes_normalisable(scale, zero, sky, noise).all()
    for softening in (3.0, 1.0):
        y, nan_rows = normalise_codes(q, scale, zero, sky, noise, keys, seed=1, softening=softening)
        assert not nan_rows.any()
        truth = normalise(x, {"softening": softening})
        err = float(np.sqrt(np.mean((y - truth) ** 2)))
        # the quantisation error, 0.095 sigma rms at most, shrunk by the asinh slope 1/softening
        assert err <= 0.1 / softening
        assert err < 0.2 * float(np.sqrt(np.mean(truth**2)))
        # the same as today's decode-then-normalise, within the quantisation error
        old = normalise(dequantise(q, scale, zero, keys, seed=1), {"softening": softening})
        assert float(np.sqrt(np.mean((y - old) ** 2))) <= 0.1 / softening


def test_nan_codes_are_reported_not_normalised():
    x = sky_stamps(8, seed=2)
    x[5, 1, 20, 20] = np.nan
    keys = np.arange(8)
    q, scale, zero, sky, noise = quantise_measured(x, keys, step=0.33, seed=1, border=4)
    _, nan_rows = normalise_codes(q, scale, zero, sky, noise, keys, seed=1, softening=3.0)
    assert nan_rows.tolist() == [k == 5 for k in range(8)] and (q == NAN_CODE).any(axis=(1, 2, 3))[5]


def _awkward(n=40, seed=2):
    """Noisy stamps with a NaN pixel (row 3), a constant band (row 4: lossless), NaN in a border (row 5)."""
    x = sky_stamps(n, seed=seed)
    x[3, 1, 5, 5] = np.nan
    x[4, 2] = 1.0
    x[5, 0, 0, :] = np.nan
    return x


def _today(store, tile, specs):
    """The inputs as lensdask made them before the codes were normalised directly: decode, then normalise."""
    pixels = store.read_images(tile)
    bad = nonfinite_rows(pixels)
    return bad, [normalise(pixels[~bad], spec) for spec in specs]


def test_store_rows_the_codes_cannot_serve_read_exactly_as_before(tmp_path):
    s = make_tiny_store(tmp_path / "q.zarr", **EMPTY_STORE)
    assert s.sky_stats and all(name in s.group for name in SKY_ARRAYS)
    x = _awkward()
    s.write_tile(0, x, table_rows(40))
    inputs = s.read_normalised(0, specs=SPECS, raw=True)
    bad, today = _today(s, 0, SPECS)
    np.testing.assert_array_equal(inputs.bad, bad)
    assert np.flatnonzero(bad).tolist() == [3, 5]
    np.testing.assert_array_equal(inputs.raw, s.read_images(0))
    good = np.flatnonzero(~bad)
    lossless = np.searchsorted(good, 4)
    for spec, y, old in zip(SPECS, inputs.inputs, today):
        assert y.shape == old.shape
        np.testing.assert_array_equal(y[lossless], old[lossless])  # the lossless row: today's path, bit for bit
        direct = spec in (None, {"softening": 1.0})
        if direct:  # the other rows from the codes: close to today's, not equal
            assert not np.array_equal(y, old)
            truth = normalise(x[~bad], spec)
            assert float(np.sqrt(np.mean((y - truth) ** 2))) <= 0.1
        else:  # method none, another border: every row decoded first, as before
            np.testing.assert_array_equal(y, old)
    assert inputs.inputs[0] is not inputs.inputs[1]


def test_iterating_and_row_ranges_give_the_same_inputs(tmp_path):
    s = make_tiny_store(tmp_path / "q.zarr", **EMPTY_STORE)
    s.write_tile(0, _awkward(), table_rows(40))
    whole = s.read_normalised(0, specs=[None])
    parts = [inp for inp, _ in s.iter_normalised(16, [None, None], tiles=[0])]
    assert all(p.inputs[0] is p.inputs[1] for p in parts)  # equal normalisations share one array
    np.testing.assert_array_equal(np.concatenate([p.bad for p in parts]), whole.bad)
    np.testing.assert_array_equal(np.concatenate([p.inputs[0] for p in parts]), whole.inputs[0])
    middle = s.read_normalised(0, 10, 30)
    np.testing.assert_array_equal(middle.inputs[0], whole.inputs[0][8:28])  # rows 3 and 5 left out before 10


def test_stores_without_sky_statistics_read_as_before(tmp_path):
    s = make_tiny_store(tmp_path / "q.zarr", **EMPTY_STORE)
    x = _awkward()
    s.write_tile(0, x, table_rows(40))
    for name in SKY_ARRAYS:  # the layout written before the sky statistics were stored
        shutil.rmtree(tmp_path / "q.zarr" / name)
    old = open_store(tmp_path / "q.zarr")
    assert old.quantised and not old.sky_stats
    assert json.loads((tmp_path / "q.zarr" / "zarr.json").read_text())["attributes"]["schema"] == "lensdask.cutouts/2"
    np.testing.assert_array_equal(old.read_images(0), s.read_images(0))
    inputs = old.read_normalised(0, specs=SPECS)
    bad, today = _today(old, 0, SPECS)
    np.testing.assert_array_equal(inputs.bad, bad)
    for y, want in zip(inputs.inputs, today):
        np.testing.assert_array_equal(y, want)
    # still writable: new tiles get no sky statistics either, and read alike
    rw = open_store(tmp_path / "q.zarr", mode="r+")
    rw.write_tile(1, x[:10], table_rows(10, start=100))
    again = rw.read_normalised(1)
    np.testing.assert_array_equal(again.inputs[0], normalise(rw.read_images(1)[~again.bad]))


def test_float32_stores_give_todays_inputs_bit_for_bit(tmp_path):
    s = make_tiny_store(tmp_path / "f.zarr", **EMPTY_STORE, quantise_step=0)
    x = _awkward()
    s.write_tile(0, x, table_rows(40))
    assert not s.sky_stats and "sky" not in s.group
    inputs = s.read_normalised(0, specs=SPECS, raw=True)
    bad = nonfinite_rows(x)
    np.testing.assert_array_equal(inputs.bad, bad)
    np.testing.assert_array_equal(inputs.raw, x)
    for spec, y in zip(SPECS, inputs.inputs):
        np.testing.assert_array_equal(y, normalise(x[~bad], spec))


@pytest.mark.parametrize("step", [0, None])
def test_search_on_a_store_scores_the_stores_inputs(tmp_path, random_model, step):
    """A float32 store's search scores are predict_proba's of its pixels, as before; a quantised store's are
    those of its inputs from the codes, and within the quantisation's reach of the float32 ones."""
    import dask

    from lensdask.model.checkpoint import load_checkpoint
    from lensdask.model.infer import forward_proba, input_size, predict_proba
    from lensdask.search import search

    x = _awkward(30, seed=4)
    with dask.config.set({"lensdask.store.quantise.step": step} if step is not None else {}):
        s = make_tiny_store(tmp_path / "s.zarr", **EMPTY_STORE)
    s.write_tile(0, x, table_rows(30))
    res = search(
        tmp_path / "s.zarr", random_model, tmp_path / "run", floor=0.0, progress=False, client=None, crossmatch=False
    )
    got = res.scores().set_index("object_id").loc[np.arange(30), "score"].to_numpy()
    model, card = load_checkpoint(random_model)
    if step == 0:
        np.testing.assert_allclose(got, predict_proba(model, card, x)[:, 1], rtol=1e-5, atol=1e-6, equal_nan=True)
    else:
        inputs = s.read_normalised(0, specs=[card["normalisation"]])
        want = np.full(30, np.nan, np.float32)
        want[~inputs.bad] = forward_proba(model, inputs.inputs[0], batch_size=64, device="cpu", size=input_size(card))[
            :, 1
        ]
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6, equal_nan=True)
        float_scores = predict_proba(model, card, x)[:, 1]
        assert np.nanmax(np.abs(got - float_scores)) < 0.05
    assert np.isnan(got[[3, 5]]).all() and np.isfinite(np.delete(got, [3, 5])).all()


def test_info_says_whether_the_sky_statistics_are_stored(tmp_path, capsys):
    from lensdask.cli import main

    s = make_tiny_store(tmp_path / "q.zarr", **EMPTY_STORE)
    s.write_tile(0, sky_stamps(4), table_rows(4))
    assert main(["info", str(tmp_path / "q.zarr"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["sky_statistics"] is True
    assert main(["info", str(tmp_path / "q.zarr")]) == 0
    assert "sky level and noise stored per row" in capsys.readouterr().out
    for name in SKY_ARRAYS:
        shutil.rmtree(tmp_path / "q.zarr" / name)
    assert main(["info", str(tmp_path / "q.zarr")]) == 0
    assert "no stored sky level and noise" in capsys.readouterr().out
    # convert writes them
    assert main(["convert", str(tmp_path / "q.zarr"), str(tmp_path / "c.zarr")]) == 0
    assert open_store(tmp_path / "c.zarr").sky_stats
