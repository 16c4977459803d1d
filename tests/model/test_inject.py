"""Issue 12, real skies: galaxies split by galaxy (fingerprints, the fixed split, provenance, refusal)
and `lensdask inject` (arcs painted on real DES cutouts, scored with and without the arc)."""

from __future__ import annotations

import importlib
import json
import shutil

import numpy as np
import pytest

from lensdask.cli import main
from lensdask.errors import ModelMismatchError
from lensdask.model.checkpoint import untrained_checkpoint
from lensdask.model.inject import clopper_pearson, inject
from lensdask.simulate.galaxies import (
    SplitError,
    check_disjoint,
    dihedral,
    fingerprint,
    fingerprints,
    galaxy_split,
    select_rows,
)
from lensdask.simulate.inputs import load_backgrounds
from lensdask.simulate.paint import paint_arcs

PAINT = importlib.import_module("lensdask.simulate.paint")  # lensdask.simulate is the function

TRAIN = [1, 2, 3, 4, 5, 6, 7, 9, 11, 12, 13, 14, 15, 17, 20, 22, 23, 25, 26, 27]
HELDOUT = [0, 8, 10, 16, 18, 19, 21, 24, 28, 29]


@pytest.fixture(scope="module")
def gals(shared_data):
    return str(shared_data / "des_galaxies")


@pytest.fixture(scope="module")
def bg(gals):
    return load_backgrounds(gals, tuple("griz"), 0.263, 45)


def _model_with_galaxies(random_model, tmp_path, training_galaxies):
    """A copy of the random model whose card says it trained on these galaxies (the card is not hashed)."""
    path = tmp_path / "m"
    shutil.copytree(random_model, path)
    card = json.loads((path / "model_card.json").read_text())
    card["training_galaxies"] = training_galaxies
    (path / "model_card.json").write_text(json.dumps(card))
    return path


# -- fingerprints and the split ---------------------------------------------------------------
def test_fingerprint_is_invariant_under_rotations_and_flips_and_tells_galaxies_apart(bg):
    x = bg.images[3]
    fp = fingerprint(x)
    assert len(fp) == 32
    assert {fingerprint(dihedral(x, k)) for k in range(8)} == {fp}
    assert fingerprint(np.ascontiguousarray(x.transpose(0, 2, 1))) == fp  # a transpose is one of the 8
    assert fingerprint(x.astype(np.float64)) == fp  # hashed as float32
    assert len(set(fingerprints(bg.images))) == 30  # 30 distinct galaxies
    assert fingerprint(bg.images[4]) != fp
    y = x.copy()
    y[0, 10, 10] += 1e-3
    assert fingerprint(y) != fp  # exact: one pixel changes it
    assert fingerprint(x[:, 1:-1, 1:-1]) != fp  # so does another crop
    assert bg.fingerprints == fingerprints(bg.images)
    np.testing.assert_array_equal(bg.rows, np.arange(30))


def test_load_backgrounds_keeps_selected_rows_with_their_indices(gals, bg):
    sel = load_backgrounds(gals, tuple("griz"), 0.263, 45, (28, 0, 8))
    np.testing.assert_array_equal(sel.rows, [28, 0, 8])
    np.testing.assert_array_equal(sel.images, bg.images[[28, 0, 8]])
    np.testing.assert_array_equal(sel.sigma_v, bg.sigma_v[[28, 0, 8]])
    assert sel.fingerprints == [bg.fingerprints[i] for i in (28, 0, 8)]
    assert load_backgrounds(gals, tuple("griz"), 0.263, 45, (28, 0, 8)) is sel  # cached per selection


def test_select_rows_specs_and_errors():
    split = galaxy_split()
    assert split == {"train": TRAIN, "heldout": HELDOUT}  # the documented, fixed split
    assert sorted(TRAIN + HELDOUT) == list(range(30))
    perm = np.random.default_rng(12).permutation(30)  # how it was chosen
    assert sorted(perm[:20]) == TRAIN and sorted(perm[20:]) == HELDOUT
    np.testing.assert_array_equal(select_rows(None, 5), np.arange(5))
    np.testing.assert_array_equal(select_rows("all", 5), np.arange(5))
    np.testing.assert_array_equal(select_rows("train", 30), TRAIN)
    np.testing.assert_array_equal(select_rows("HeldOut", 30), HELDOUT)
    np.testing.assert_array_equal(select_rows("0:20", 30), np.arange(20))
    np.testing.assert_array_equal(select_rows(":3", 30), [0, 1, 2])
    np.testing.assert_array_equal(select_rows("27:", 30), [27, 28, 29])
    np.testing.assert_array_equal(select_rows("0:9:4", 30), [0, 4, 8])
    np.testing.assert_array_equal(select_rows("1,4,7", 30), [1, 4, 7])
    np.testing.assert_array_equal(select_rows([7, 2], 30), [7, 2])
    np.testing.assert_array_equal(select_rows(3, 30), [3])
    for spec, words in [
        ("40", "out of range"),
        ("0:31", "out of range"),
        ("1,30", "[30]"),
        ("train", "out of range"),
        ("1,1", "more than once"),
        ("5:5", "no rows"),
        ("a,b", "comma-separated"),
        ("1:x", "slice"),
        ("-1:3", "non-negative"),
        ([-2], "out of range"),
        ("3:1", "no rows"),
    ]:
        with pytest.raises(SplitError, match=words.replace("[", r"\[").replace("]", r"\]")):
            select_rows(spec, 30 if spec != "train" else 10)


def test_a_galaxy_in_training_and_evaluation_is_refused(bg, random_model, tmp_path, gals, monkeypatch):
    train_fps = [bg.fingerprints[i] for i in TRAIN]
    card = {"model_id": "m-1", "training_galaxies": {"source": gals, "rows": TRAIN, "fingerprints": train_fps}}
    held_fps = [bg.fingerprints[i] for i in HELDOUT]
    check_disjoint(card, held_fps, HELDOUT)  # disjoint: fine
    check_disjoint({"training_galaxies": []}, held_fps)  # a model that saw no real galaxy
    # a rotated copy of a training galaxy is the same galaxy
    with pytest.raises(SplitError, match=r"rows 5\b"):
        check_disjoint(card, [held_fps[0], fingerprint(dihedral(bg.images[TRAIN[4]], 6))], [0, 5])
    # inject refuses a heldout galaxy that the card says was trained on, before painting anything
    leaky = _model_with_galaxies(
        random_model, tmp_path, [{"source": gals, "rows": [16], "fingerprints": [bg.fingerprints[16]]}]
    )
    monkeypatch.setattr(PAINT, "paint_arcs", _no_work)
    with pytest.raises(SplitError, match=r"rows 16\b.*refused"):
        inject(gals, leaky, galaxies="heldout", orientations=1, progress=False)
    assert main(["inject", "--model", str(leaky), "--cutouts", gals, "--galaxies", "heldout"]) == 2
    # a card older than training_galaxies: its store's backgrounds were used whole, and are read again
    old = tmp_path / "old"
    shutil.copytree(random_model, old)
    c = json.loads((old / "model_card.json").read_text())
    c.pop("training_galaxies", None)
    c["training"] = {**c.get("training", {}), "data_provenance": {"backgrounds": gals, "negatives": None}}
    (old / "model_card.json").write_text(json.dumps(c))
    with pytest.raises(SplitError, match=r"rows 0, 8, 10"):
        inject(gals, old, galaxies="heldout", orientations=1, progress=False)


def _no_work(*a, **k):
    raise AssertionError("painting started before the input was checked")


# -- painting and inject -----------------------------------------------------------------------
def test_paint_arcs_is_seeded_per_key_and_adds_only_an_arc(gals):
    sel = load_backgrounds(gals, tuple("griz"), 0.263, 45, tuple(HELDOUT[:2]))
    a, ta = paint_arcs(sel, [0, 1], seed=5, keys=[10, 11])
    b, tb = paint_arcs(sel, [1], seed=5, keys=[11])
    np.testing.assert_array_equal(a[1], b[0])  # a row's arc depends on (seed, key) only
    assert ta["theta_E"].iloc[1] == tb["theta_E"].iloc[0]
    c, _ = paint_arcs(sel, [1], seed=6, keys=[11])
    assert not np.array_equal(b, c)
    assert list(ta["row"]) == [0, 1] and (ta["arc_snr_g"] >= 20).all() and (ta["theta_E"] >= 0.8).all()
    diff = a[0] - sel.images[0]
    # the arc is added to the cutout; far from it (the corners) the cutout is untouched to float precision
    assert np.abs(diff[0]).max() > 2 * sel.noise[0, 0] and diff[0].sum() > 20 * sel.noise[0, 0]  # S/N >= 20 in g
    assert np.abs(diff[:, :3, :3]).max() < 1e-3 * np.abs(sel.images[0]).max()


def test_inject_heldout_galaxies(gals, random_model, tmp_path):
    r = inject(gals, random_model, galaxies="heldout", orientations=2, out=tmp_path / "inj", progress=False)
    assert r["rows"] == HELDOUT and r["n_cutouts"] == 10 and r["n_nonfinite"] == 0
    assert r["n_unpainted"] == 20 and r["n_painted"] == 20 and r["n_paint_failed"] == 0
    assert 0.0 <= r["fpr"] <= 1.0
    lo, hi = r["fpr_interval"]
    assert 0.0 <= lo <= r["fpr"] <= hi <= 1.0 and hi > lo
    assert r["false_positives"] == round(r["fpr"] * 20)
    assert 0.0 <= r["auroc"] <= 1.0 and 0.0 <= r["completeness"] <= 1.0
    assert r["model_id"].startswith("test-vit-")
    by = r["completeness_by"]
    assert set(by) == {"theta_E", "arc_snr_g", "lens_mag_i"}
    for bins in by.values():
        assert sum(b["n"] for b in bins) == 20
    assert by["theta_E"][0]["lo"] >= 0.8 and by["arc_snr_g"][0]["lo"] >= 20.0  # the training constraints
    assert 10 < by["lens_mag_i"][0]["lo"] < by["lens_mag_i"][-1]["hi"] < 30  # zeropoint 30, relative units
    assert len(r["top_unpainted"]) == 12
    scores = [t["score"] for t in r["top_unpainted"]]
    assert scores == sorted(scores, reverse=True) and {t["row"] for t in r["top_unpainted"]} <= set(HELDOUT)
    for key in ("completeness_png", "top_unpainted_png"):
        with open(r[key], "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    saved = json.loads((tmp_path / "inj" / "inject.json").read_text())
    assert saved["fpr"] == r["fpr"] and saved["rows"] == HELDOUT


def test_clopper_pearson():
    assert clopper_pearson(0, 10)[0] == 0.0 and clopper_pearson(10, 10)[1] == 1.0
    lo, hi = clopper_pearson(3, 20)
    assert lo == pytest.approx(0.03207, abs=1e-4) and hi == pytest.approx(0.37893, abs=1e-4)


def test_mismatched_cutouts_are_refused_before_any_work(gals, shared_data, tmp_path, monkeypatch, bg):
    monkeypatch.setattr(PAINT, "paint_arcs", _no_work)
    untrained_checkpoint(tmp_path / "u", "test-vit", bands=("g", "r", "i", "u"))
    with pytest.raises(ModelMismatchError, match=r"bands differ.*missing \['u'\]"):
        inject(gals, tmp_path / "u", progress=False)
    untrained_checkpoint(tmp_path / "m", "test-vit")
    full = np.stack(
        [
            np.asarray(__import__("astropy.io.fits").io.fits.getdata(shared_data / "des_galaxies" / f"{b}.fits"))[:3]
            for b in "griz"
        ],
        1,
    )
    np.savez(tmp_path / "rz.npz", images=full[:, [0, 1, 3, 2]], bands=np.array(list("grzi")))
    with pytest.raises(ModelMismatchError, match="bands differ"):
        inject(tmp_path / "rz.npz", tmp_path / "m", progress=False)
    np.savez(tmp_path / "three.npz", images=full[:, :3])
    with pytest.raises(ModelMismatchError, match="4, H, W"):
        inject(tmp_path / "three.npz", tmp_path / "m", progress=False)
    np.savez(tmp_path / "small.npz", images=full[:, :, 30:61, 30:61])
    with pytest.raises(ModelMismatchError, match="stamp sizes differ.*31 px"):
        inject(tmp_path / "small.npz", tmp_path / "m", progress=False)
    np.savez(tmp_path / "scale.npz", images=full, pixel_scale=0.2)
    with pytest.raises(ModelMismatchError, match="pixel scales differ"):
        inject(tmp_path / "scale.npz", tmp_path / "m", progress=False)


def test_nonfinite_cutouts_are_counted_and_skipped(bg, random_model, tmp_path):
    images = np.stack([np.pad(bg.images[i], ((0, 0), (3, 3), (3, 3)), mode="edge") for i in HELDOUT[:3]])
    images[1, 2, 40, 40] = np.nan
    np.savez(tmp_path / "nan.npz", images=images, bands=np.array(list("griz")), pixel_scale=0.263)
    r = inject(tmp_path / "nan.npz", random_model, orientations=1, progress=False, top=2)
    assert r["n_nonfinite"] == 1 and r["rows_nonfinite"] == [1]
    assert r["n_cutouts"] == 2 and r["rows"] == [0, 2]
    assert r["n_unpainted"] == 2 and r["n_painted"] == 2
    assert {t["row"] for t in r["top_unpainted"]} == {0, 2}


def test_cli_inject(gals, random_model, tmp_path, capsys):
    assert (
        main(
            [
                "inject",
                "--model",
                str(random_model),
                "--cutouts",
                gals,
                "--galaxies",
                "0,8",
                "--orientations",
                "1",
                "--png",
                str(tmp_path / "p"),
                "--json",
                str(tmp_path / "r.json"),
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "AUROC painted vs unpainted" in out and "Clopper-Pearson" in out
    assert (tmp_path / "p_completeness.png").exists() and (tmp_path / "p_top_unpainted.png").exists()
    assert json.loads((tmp_path / "r.json").read_text())["rows"] == [0, 8]
    for bad in (
        ["--cutouts", str(tmp_path / "nowhere")],
        ["--cutouts", gals, "--galaxies", "99"],
        ["--cutouts", gals, "--orientations", "9"],
        ["--cutouts", gals, "--galaxies", "heldout,x"],
    ):
        assert main(["inject", "--model", str(random_model), *bad]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("lensdask inject: error:")
    assert (
        main(["simulate", "--out", str(tmp_path / "x.zarr"), "--n", "4", "--backgrounds", gals, "--galaxies", "0:99"])
        == 2
    )
    assert "out of range" in capsys.readouterr().err


def test_record_appends_to_the_card(gals, random_model, tmp_path):
    path = _model_with_galaxies(random_model, tmp_path, [])
    inject(gals, path, galaxies="0", orientations=1, record=True, progress=False)
    card = json.loads((path / "model_card.json").read_text())
    assert card["evaluations"][-1]["kind"] == "inject" and card["evaluations"][-1]["rows"] == [0]


# -- provenance: stores name their galaxies, cards the galaxies they trained on --------------------
def test_simulated_store_and_model_card_name_their_galaxies(gals, bg, tmp_path):
    from lensdask.model import train
    from lensdask.simulate import simulate

    store = simulate(
        tmp_path / "s.zarr",
        24,
        seed=3,
        backgrounds=gals,
        galaxies="train",
        partition_size=24,
        lookalike_fraction=0.0,
        progress=False,
    )
    rg = store.provenance["real_galaxies"]
    assert rg["source"] == gals and rg["rows"] == TRAIN and len(rg["fingerprints"]) == 20
    assert rg["fingerprints"] == [bg.fingerprints[i] for i in TRAIN]
    assert store.provenance["galaxies"] == TRAIN
    table = store.read_table(0)
    real = np.isfinite(table["background_index"].to_numpy())
    assert real.any() and table["background_index"][real].max() < 20  # indices into the selection
    neg_sv = table["sigma_v"][real & (table["label"] == 0)].to_numpy()  # real negatives: train galaxies only
    assert neg_sv.size and np.isclose(neg_sv[:, None], bg.sigma_v[TRAIN][None], rtol=1e-6).any(axis=1).all()
    card = train(store.url, tmp_path / "m", arch="test-vit", epochs=1, batch_size=8, device="cpu", progress=False)
    assert card["training_galaxies"]["fingerprints"] == rg["fingerprints"]
    on_disk = json.loads((tmp_path / "m" / "model_card.json").read_text())
    assert on_disk["training_galaxies"]["rows"] == TRAIN
    check_disjoint(on_disk, [bg.fingerprints[i] for i in HELDOUT], HELDOUT)
    with pytest.raises(SplitError, match="rows 1, 2"):
        inject(gals, tmp_path / "m", galaxies="1,2", orientations=1, progress=False)
    # evaluate refuses a store made from the galaxies the model trained on, too
    from lensdask.model import evaluate

    with pytest.raises(SplitError, match=r"des_galaxies\[1\]"):
        evaluate(store.url, tmp_path / "m", progress=False)
    held = simulate(
        tmp_path / "h.zarr",
        12,
        seed=4,
        backgrounds=gals,
        galaxies="heldout",
        partition_size=12,
        lookalike_fraction=0.0,
        progress=False,
    )
    r = evaluate(held.url, tmp_path / "m", progress=False)
    assert r["n_pos"] + r["n_neg"] == 12
