"""True colour from fluxes: a red elliptical renders red > green > blue, a blue arc bluer than its lens."""

import numpy as np
import pandas as pd
import pytest

from lensdask.images import (
    band_image,
    band_scales,
    colour_composite,
    difference_image,
    png_bytes,
    scale_bar,
    sky_noise,
    view_image,
)
from lensdask.review.labels import GRADES, add_labels, read_labels, votes
from lensdask.review.page import grade_keys, score_text

N = 45
Y, X = np.mgrid[:N, :N] - N // 2
R = np.hypot(X, Y)


def _lens_and_arc(seed=0, noise=0.3):
    """A red elliptical (g < r < i < z flux) with a blue arc (g > r > i) at 8 px, in griz."""
    rng = np.random.default_rng(seed)
    lens = np.exp(-R / 2.5)
    arc = np.exp(-((R - 8.0) ** 2) / 2.0) * (np.abs(np.arctan2(Y, X) - 0.5) < 1.2)
    stamp = np.stack([fl * lens + fa * arc for fl, fa in zip([20, 45, 65, 75], [6, 4.5, 3.5, 3])])
    return stamp + rng.normal(0, noise, stamp.shape), arc > 0.5


def test_red_elliptical_is_red_and_blue_arc_is_bluer():
    stamp, on_arc = _lens_and_arc()
    rgb = colour_composite(stamp, "griz").astype(float)
    r, g, b = rgb[N // 2, N // 2]
    assert r > g > b  # orange-red centre, as in DES colour images
    blueness = lambda px: px[..., 2] / np.maximum(px.sum(axis=-1), 1)  # noqa: E731
    assert blueness(rgb[on_arc]).mean() > blueness(rgb[N // 2, N // 2]) + 0.05


def test_colour_follows_flux_not_signal_to_noise():
    # The old composite divided each band by its own noise: a deep g band made a red galaxy green.
    stamp, _ = _lens_and_arc(noise=0.0)
    rng = np.random.default_rng(1)
    noisy = stamp + rng.normal(0, 1, stamp.shape) * np.array([0.05, 0.3, 0.3, 0.3])[:, None, None]
    a = colour_composite(noisy, "griz", noise=0.3)
    r, g, b = a[N // 2, N // 2].astype(float)
    assert r > g > b
    # the same scales for every stamp: a stamp twice as bright has the same colour at the same page noise
    dim = colour_composite(stamp * 0.5, "griz", noise=5.0).astype(float)[N // 2, N // 2]
    bright = colour_composite(stamp, "griz", noise=5.0).astype(float)[N // 2, N // 2]
    assert bright.sum() > dim.sum()
    np.testing.assert_allclose(dim / dim.sum(), bright / bright.sum(), atol=0.02)


def test_scales_come_from_the_config():
    import dask

    assert band_scales("griz").tolist() == pytest.approx([1.169, 0.973, 1.0, 1.282])
    stamp, _ = _lens_and_arc()
    with dask.config.set({"lensdask.review.colour.scales": {"g": 10.0, "r": 1.0, "i": 1.0, "z": 1.0}}):
        r, g, b = colour_composite(stamp, "griz").astype(float)[N // 2, N // 2]
    assert b > r  # a g band boosted tenfold turns the same galaxy blue


def test_difference_view_removes_the_lens_and_keeps_the_arc():
    stamp, on_arc = _lens_and_arc()
    diff, alpha = difference_image(stamp, "griz")
    assert alpha == pytest.approx(20 * 1.169 / 65, rel=0.1)  # the lens's g/i flux ratio
    centre = R < 3
    noise = sky_noise(stamp, "griz")
    assert abs(diff[centre].mean()) < 2 * noise
    assert diff[on_arc].mean() > 5 * abs(diff[centre].mean())
    img = view_image(stamp, "griz", "difference", pixel_scale=0.263)
    assert img.shape == (N, N, 3) and img[on_arc][:, 2].mean() > img[centre][:, 2].mean()


def test_views_bands_and_scale_bar():
    stamp, _ = _lens_and_arc()
    faint = view_image(stamp, "griz", "faint").astype(float)
    colour = view_image(stamp, "griz", "colour").astype(float)
    assert faint[R > 12].mean() > colour[R > 12].mean()  # the faint-feature stretch lifts the outskirts
    bar = scale_bar(np.zeros((N, N, 3), np.uint8), 0.263, 2.0)
    assert (bar[2, :, 0] == 255).sum() == round(2.0 / 0.263)
    single = band_image(stamp[0])
    assert single[N // 2, N // 2] > 150 and single[R > 15].mean() < 60  # galaxy and sky both visible
    assert png_bytes(colour.astype(np.uint8))[:4] == b"\x89PNG"


def test_scores_do_not_tie_and_keys_cover_grades_and_classes():
    assert score_text(0.99991) != score_text(0.99994)
    assert "1−p = 9.00e-05" in score_text(0.99991)
    keys = grade_keys(["lens", "non-lens", "ring", "spiral", "merger", "artefact", "companion", "spike"])
    by = {k["key"]: (k["class"], k["grade"]) for k in keys}
    assert by["3"] == ("lens", "definite") and by["0"] == ("non-lens", "no")
    assert by["r"] == ("ring", "no") and by["s"] == ("spiral", "no") and by["p"] == ("spike", "no")
    assert len(set(by)) == len(keys) == 10


def test_grades_in_the_labels_table_and_votes(tmp_path):
    path = tmp_path / "labels.csv"
    add_labels(path, [{"tile": "T1", "object_id": 1, "class": "lens", "grade": "definite"}], labeller="ann")
    add_labels(path, [{"tile": "T1", "object_id": 1, "class": "lens", "grade": "probable"}], labeller="bob")
    add_labels(path, [{"tile": "T1", "object_id": 2, "class": "ring", "grade": "no"}], labeller="ann")
    add_labels(path, [{"tile": "T1", "object_id": 2, "class": "lens", "grade": "possible"}], labeller="bob")
    table = read_labels(path)
    assert table["grade"].tolist() == ["definite", "probable", "no", "possible"]
    v = votes(table).set_index("object_id")
    assert v.loc[1, "n_reviewers"] == 2 and v.loc[1, "mean_grade"] == 2.5 and v.loc[1, "class"] == "lens"
    assert v.loc[2, "n_possible"] == 1 and v.loc[2, "n_no"] == 1
    with pytest.raises(Exception, match="contradicts"):
        add_labels(path, [{"tile": "T1", "object_id": 3, "class": "ring", "grade": "definite"}])
    with pytest.raises(Exception, match="unknown grade"):
        add_labels(path, [{"tile": "T1", "object_id": 3, "class": "lens", "grade": "sure"}])
    assert set(GRADES) == {"definite", "probable", "possible", "no"}


def test_old_five_column_tables_are_still_read_and_appended(tmp_path):
    path = tmp_path / "old.csv"
    path.write_text("tile,object_id,class,labeller,time\nT1,1,ring,ann,2026-01-01T00:00:00+00:00\n")
    add_labels(path, [{"tile": "T1", "object_id": 2, "class": "spiral"}], labeller="bob")
    table = read_labels(path)
    assert table["class"].tolist() == ["ring", "spiral"] and (table["grade"] == "").all()
    with pytest.raises(Exception, match="before grades"):
        add_labels(path, [{"tile": "T1", "object_id": 3, "class": "lens", "grade": "definite"}])


def test_simultaneous_appends_keep_every_row(tmp_path):
    from concurrent.futures import ProcessPoolExecutor

    path = tmp_path / "labels.csv"
    with ProcessPoolExecutor(2) as pool:
        list(pool.map(_append_many, [(str(path), "ann"), (str(path), "bob")]))
    table = read_labels(path)
    assert len(table) == 2 * 40 and table.groupby("labeller").size().tolist() == [40, 40]
    assert pd.read_csv(path).columns.tolist()[:3] == ["tile", "object_id", "class"]  # one header


def _append_many(args):
    path, who = args
    for _ in range(40):
        add_labels(path, [{"tile": "T1", "object_id": 7, "class": "lens", "grade": "probable"}], labeller=who)


def test_residual_view_takes_the_lens_light_away_and_keeps_the_arc():
    from lensdask.images import lens_model

    stamp, on_arc = _lens_and_arc()
    model = lens_model(stamp)
    resid = stamp - model
    centre = R < 3
    assert np.abs(resid[:, centre].mean(axis=1)).max() < 0.05 * stamp[:, centre].mean(axis=1).max()
    assert (resid[:, on_arc].mean(axis=1) > 0.5 * np.array([6, 4.5, 3.5, 3]) * 0.6).all()
    img = view_image(stamp, "griz", "residual", pixel_scale=0.263).astype(float)
    assert img[on_arc].sum(axis=-1).mean() > 3 * img[centre].sum(axis=-1).mean()
    blueness = img[on_arc][:, 2] / np.maximum(img[on_arc].sum(axis=-1), 1)
    assert blueness.mean() > 0.36  # the arc is blue on its own, without the lens's orange
