"""The simulator: priors, rendering, constraints, rows and the Dask-written store."""

from __future__ import annotations

import dask.config
import numpy as np
import pandas as pd
import pytest

from lensdask.errors import ConstraintError
from lensdask.simulate import PARAMS, Constraints, RejectionStats, param_names, priors, simulate, simulate_rows
from lensdask.simulate.render import bare_render, get_renderer
from lensdask.store import open_store


def _system(seed=1):
    r = get_renderer()
    rng = np.random.default_rng(seed)
    p = priors.draw_lens_galaxy(rng, r.bands)
    p.update(priors.draw_lensed_source(rng, r.bands, lens=p))
    return r, p


def test_priors_are_flat_floats_in_range():
    rng = np.random.default_rng(0)
    bands = ["g", "r", "i", "z"]
    for _ in range(50):
        lens = priors.draw_lens_galaxy(rng, bands)
        src = priors.draw_lensed_source(rng, bands, lens=lens, theta_E_range=(0.8, 3.0))
        assert set(lens) == set(priors.lens_galaxy_keys(bands))
        assert set(src) == set(priors.lensed_source_keys(bands))
        assert all(isinstance(v, float) for v in {**lens, **src}.values())
        assert 17.5 <= lens["mag_lens_i"] <= 20.5
        assert 1.2 <= lens["mag_lens_g"] - lens["mag_lens_r"] <= 1.6
        assert 0.8 <= src["theta_E"] <= 3.0
        assert np.hypot(src["gamma1"], src["gamma2"]) <= 0.1
        r = np.hypot(src["source_x"] - lens["lens_x"], src["source_y"] - lens["lens_y"])
        assert r <= src["theta_E"]


def test_params_list():
    assert PARAMS == param_names(["g", "r", "i", "z"])
    assert len(set(PARAMS)) == len(PARAMS)
    for name in ("theta_E", "magnification", "arc_snr_g", "seeing_z", "mag_lens_i", "mag_source_r"):
        assert name in PARAMS


def test_render_matches_lenstronomy():
    r, p = _system()
    out = r.render(p, np.random.default_rng(0))
    ref = bare_render(r, p, noise=False)
    model = out.lens_light + out.arc
    np.testing.assert_allclose(model, ref, rtol=1e-9, atol=1e-12 * ref.max())


def test_lens_adds_flux_to_the_same_galaxy():
    r, p = _system(2)
    lensed = r.render(p, np.random.default_rng(5), lensed=True)
    plain = r.render(p, np.random.default_rng(5), lensed=False)
    np.testing.assert_array_equal(lensed.lens_light, plain.lens_light)
    assert np.all(plain.arc == 0)
    assert np.all(lensed.arc.sum(axis=(1, 2)) > 0)
    # the noisy images differ by the arc (plus its Poisson noise), not by the galaxy
    diff = (lensed.image - plain.image).sum(axis=(1, 2))
    assert np.all(diff > 0.5 * lensed.arc.sum(axis=(1, 2)))
    assert lensed.derived["magnification"] > 1
    assert np.isnan(plain.derived["magnification"])


def test_rows_reproducible_and_partition_independent():
    a_img, a_tab = simulate_rows(range(6), 7, lens_fraction=0.5)
    b_img, b_tab = simulate_rows(range(6), 7, lens_fraction=0.5)
    c_img, c_tab = simulate_rows(range(3, 6), 7, lens_fraction=0.5)
    np.testing.assert_array_equal(a_img, b_img)
    pd.testing.assert_frame_equal(a_tab, b_tab)
    np.testing.assert_array_equal(a_img[3:], c_img)
    pd.testing.assert_frame_equal(a_tab.iloc[3:].reset_index(drop=True), c_tab)
    d_img, _ = simulate_rows(range(6), 8, lens_fraction=0.5)
    assert not np.array_equal(a_img, d_img)
    assert a_img.dtype == np.float32 and a_img.shape == (6, 4, 45, 45)
    assert list(a_tab["object_id"]) == list(range(6))


def test_rows_table_columns():
    _, tab = simulate_rows(range(8), 3, lens_fraction=0.5)
    assert list(tab.columns) == ["object_id", "ra", "dec", "label", *PARAMS]
    lens = tab["label"] == 1
    assert lens.any() and (~lens).any()
    assert tab.loc[lens, "theta_E"].notna().all()
    assert tab.loc[~lens, ["theta_E", "magnification", "arc_snr_g", "mag_source_i"]].isna().all().all()
    assert tab[["mag_lens_i", "seeing_g"]].notna().all().all()


def test_noise_ignores_global_rng():
    np.random.seed(1)
    state = np.random.get_state()[1].copy()
    a, _ = simulate_rows(range(3), 0, lens_fraction=0.7)
    np.testing.assert_array_equal(np.random.get_state()[1], state)
    np.random.seed(2)
    b, _ = simulate_rows(range(3), 0, lens_fraction=0.7)
    np.testing.assert_array_equal(a, b)


def test_constraints_hold_for_accepted_lenses():
    over = {"magnification_min": 4.0, "arc_snr_min": 60.0, "theta_E_min": 1.0, "snr_band": "r"}
    stats = RejectionStats()
    _, tab = simulate_rows(range(10), 11, lens_fraction=1.0, constraints=over, stats=stats)
    c = Constraints.from_config(over)
    r = get_renderer()
    for row in tab.to_dict("records"):
        assert c.check(row, r.worst_seeing) is None
        assert row["theta_E"] / max(row[f"seeing_{b}"] for b in r.bands) >= c.theta_E_over_seeing_min
    assert stats.accepted == 10
    assert stats.draws == 10 + sum(stats.rejected.values())
    assert stats.rejected["magnification_min"] + stats.rejected["arc_snr_min"] > 0


def test_impossible_constraint_raises():
    with dask.config.set(
        {"lensdask.simulate.constraints.magnification_min": 1e6, "lensdask.simulate.max_draws_per_lens": 7}
    ):
        with pytest.raises(ConstraintError, match="magnification_min") as info:
            simulate_rows(range(2), 0, lens_fraction=1.0)
    assert "7 draws" in str(info.value)
    assert "0.0%" in str(info.value)


def test_simulate_on_client_writes_store(tmp_path, client):
    url = tmp_path / "train.zarr"
    store, stats = simulate(
        url, 7, seed=4, lens_fraction=0.5, partition_size=3, client=client, progress=False, return_stats=True
    )
    assert store.tiles == ["sim-000000", "sim-000001", "sim-000002"]
    assert list(store.counts) == [3, 3, 1]
    again = open_store(url)
    assert again.params == PARAMS
    # hard negatives by default: every look-alike kind is a class after non-lens and lens
    assert again.classes == ["non-lens", "lens", "ring", "spiral", "merger", "companion", "edge-on", "group"]
    assert again.provenance["seed"] == 4
    cat = again.read_catalog()
    assert list(cat["object_id"]) == list(range(7))
    _, rows = simulate_rows(range(7), 4, lens_fraction=0.5)
    np.testing.assert_array_equal(cat["label"].to_numpy(), rows["label"].to_numpy())
    assert stats.accepted == int((rows["label"] == 1).sum())
    np.testing.assert_allclose(cat["theta_E"], rows["theta_E"].astype("float32"))


def _record_call(x, log):
    with open(log, "a") as fh:
        fh.write(f"{x}\n")
    return x


@pytest.mark.parametrize("on_client", [False, True], ids=["in-process", "client"])
def test_compute_partitions_runs_each_partition_once_in_order(tmp_path, on_client, request):
    import dask.bag as db

    from lensdask.simulate.run import compute_partitions

    client = request.getfixturevalue("client") if on_client else None
    log = tmp_path / "calls.txt"
    bag = db.from_sequence(range(6), npartitions=3).map(_record_call, str(log))
    assert compute_partitions(bag, client, progress=False) == list(range(6))
    assert sorted(int(x) for x in log.read_text().split()) == list(range(6))  # once each: not again in-process


def test_simulate_independent_of_partition_size(tmp_path):
    a = simulate(tmp_path / "a.zarr", 6, seed=9, lens_fraction=0.5, partition_size=4, progress=False)
    b = simulate(tmp_path / "b.zarr", 6, seed=9, lens_fraction=0.5, partition_size=6, progress=False)
    img_a = np.concatenate([a.read_images(t) for t in range(a.n_tiles)])
    img_b = b.read_images(0)
    np.testing.assert_array_equal(img_a, img_b)
    cols = ["object_id", "label", *PARAMS]
    pd.testing.assert_frame_equal(a.read_catalog()[cols], b.read_catalog()[cols])
