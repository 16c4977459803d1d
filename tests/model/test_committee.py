"""Committees (issue 27): two tiny members (test-vit, test-resnet, one epoch each on one store), a
meta-classifier fitted on another store, and the committee used wherever a model is.

The committee's scores in search and evaluate must be its meta-classifier applied by hand to its
members' probabilities; a store that trained a member is refused; a tampered member is refused;
the directory still loads once moved away from the members it was built from.
"""

from __future__ import annotations

import json
import shutil
import types

import numpy as np
import pytest
import torch

from lensdask.cli import main
from lensdask.errors import CheckpointError
from lensdask.model import build_committee, evaluate, load_checkpoint, predict_proba, train
from lensdask.model.checkpoint import read_card, verify_weights
from lensdask.model.committee import trained_on
from lensdask.model.infer import forward_proba
from lensdask.model.metaclassifier import Committee, fit_meta
from lensdask.normalise import normalise
from lensdask.simulate.galaxies import SplitError

from test_model import make_store

KW = dict(batch_size=32, learning_rate=3e-3, device="cpu", progress=False, epochs=1, validation_fraction=0.25)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Stores (train: seed 0; fit: seed 1; test: seed 2), the two members, and a logistic committee."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # restored below: later modules keep both threads
    d = tmp_path_factory.mktemp("committee")
    stores = {
        name: make_store(d / f"{name}.zarr", per_tile=40, seed=k) for k, name in enumerate(("train", "fit", "test"))
    }
    vit = d / "vit"
    res = d / "resnet"
    train(stores["train"].url, vit, arch="test-vit", seed=0, **KW)
    train(stores["train"].url, res, arch="test-resnet", seed=1, **KW)
    card = build_committee(stores["fit"].url, [vit, res], d / "committee", progress=False, heldback=0.3)
    torch.set_num_threads(threads)
    return types.SimpleNamespace(dir=d, stores=stores, members=[vit, res], committee=d / "committee", card=card)


def by_hand(setup, x: np.ndarray) -> np.ndarray:
    """The committee's lens probability of normalised stamps ``x``, from its members' directories and its card."""
    lens = []
    for m in setup.members:
        net, card = load_checkpoint(m)
        lens.append(forward_proba(net, x, batch_size=64, device=torch.device("cpu"))[:, 1].astype(np.float64))
    p = np.clip(np.stack(lens, axis=1), 1e-6, 1 - 1e-6)
    z = np.log(p) - np.log1p(-p)
    meta = setup.card["committee"]["meta"]
    return 1.0 / (1.0 + np.exp(-(z @ np.asarray(meta["coefficients"]) + meta["intercept"])))


def searched_inputs(store, spec) -> np.ndarray:
    """Every row of ``store`` normalised as search and evaluate read it (a quantised store: from its codes)."""
    return np.concatenate([store.read_normalised(t, specs=[spec]).inputs[0] for t in store.written_tiles()])


def test_card_records_members_fingerprints_and_meta(setup):
    card = setup.card
    assert card["arch"] == "committee" and card["model_id"].startswith("committee-")
    assert card == read_card(setup.committee)
    members = card["committee"]["members"]
    for k, (rec, src) in enumerate(zip(members, setup.members)):
        mine = read_card(src)
        assert rec["name"] == f"m{k}" and rec["dir"] == f"members/m{k}"
        assert rec["model_id"] == mine["model_id"] and rec["sha256"] == mine["sha256"]
        assert read_card(setup.committee / "members" / f"m{k}")["sha256"] == mine["sha256"]
    meta = card["committee"]["meta"]
    assert meta["kind"] == "logistic" and len(meta["coefficients"]) == 2 and np.isfinite(meta["intercept"])
    fitted = meta["fitted_on"]
    assert fitted["data"] == str(setup.stores["fit"].url) and fitted["rows"] + fitted["heldback_rows"] == 80
    h = card["metrics"]["heldback"]
    assert h["n"] == fitted["heldback_rows"] and set(h["auroc_members"]) == {m["model_id"] for m in members}
    assert 0 <= h["auroc"] <= 1 and 0 <= h["auroc_mean"] <= 1
    assert card["bands"] == list("griz") and card["classes"] == ["non-lens", "lens"]
    net, _ = load_checkpoint(setup.committee)
    assert isinstance(net, Committee) and len(net.members) == 2
    assert verify_weights(setup.committee) == card["sha256"]


def test_a_store_that_trained_a_member_is_refused(setup, capsys):
    with pytest.raises(SplitError, match="trained member .* it is that model's training store"):
        build_committee(setup.stores["train"].url, setup.members, setup.dir / "no", progress=False)
    argv = ["committee", "--members", *map(str, setup.members), "--data", str(setup.stores["train"].url)]
    assert main([*argv, "--out", str(setup.dir / "no")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "trained member" in err
    assert not (setup.dir / "no").exists()
    # a copy (the same provenance) and a simulation with the training store's seed are refused too
    sim = {"seed": 4, "supersampling": 3, "lens_fraction": 0.5, "command": "x", "created": "t", "lensdask_version": "v"}
    card = {"training": {"data": "/elsewhere/train.zarr", "data_provenance": sim}}
    other = types.SimpleNamespace(url="/new/copy.zarr", provenance=dict(sim))
    assert "provenance" in trained_on(card, other)
    assert "seed 4" in trained_on(card, types.SimpleNamespace(url="/x.zarr", provenance={**sim, "created": "u"}))
    assert trained_on(card, types.SimpleNamespace(url="/x.zarr", provenance={**sim, "seed": 5})) is None
    converted = {"command": "convert", "converted_from": {"url": "/elsewhere/train.zarr", "provenance": {}}}
    assert "training store" in trained_on(card, types.SimpleNamespace(url="/y.zarr", provenance=converted))


def test_search_evaluate_and_cascade_score_the_meta_of_the_members(setup, monkeypatch):
    from lensdask.search import run, search

    monkeypatch.setattr(run, "current_client", lambda: None)  # tiles in this process
    test = setup.stores["test"]
    net, card = load_checkpoint(setup.committee)
    images = np.concatenate([test.read_images(t) for t in test.written_tiles()])
    probs = predict_proba(net, card, images)
    np.testing.assert_allclose(
        probs[:, 1], by_hand(setup, normalise(images, card["normalisation"])), rtol=1e-4, atol=1e-6
    )
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    expect = by_hand(setup, searched_inputs(test, card["normalisation"]))

    res = search(test.url, setup.committee, setup.dir / "run", floor=0.0, progress=False, client=None, crossmatch=False)
    sc = res.scores().set_index("object_id").sort_index()
    ids = np.concatenate([test.read_table(t)["object_id"].to_numpy() for t in test.written_tiles()])
    np.testing.assert_allclose(sc.loc[ids, "score"].to_numpy(), expect, rtol=1e-4, atol=1e-6)

    from lensdask.model.metrics import auroc

    labels = np.concatenate([test.read_table(t)["label"].to_numpy() for t in test.written_tiles()])
    r = evaluate(test.url, setup.committee, progress=False)
    assert r["model_id"] == setup.card["model_id"] and r["auroc"] == pytest.approx(auroc(labels == 1, expect), abs=1e-9)

    both = evaluate(test.url, [setup.committee, setup.members[0]], progress=False)  # beside another model
    assert both["model_ids"][0] == setup.card["model_id"]
    cascade = search(
        test.url, setup.members[1], setup.dir / "cascade", prefilter=(setup.committee, 0.5), floor=0.0,
        progress=False, client=None, crossmatch=False,
    )  # fmt: skip
    assert cascade.summary["stages"]["prefilter"] == len(ids)


def test_tampered_member_or_meta_is_refused(setup, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(setup.committee, bad)
    w = bad / "members" / "m1" / "model.safetensors"
    raw = bytearray(w.read_bytes())
    raw[-1] ^= 0xFF
    w.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="corrupt or was replaced"):
        load_checkpoint(bad)
    with pytest.raises(CheckpointError, match="corrupt or was replaced"):
        evaluate(setup.stores["test"].url, bad, progress=False)
    # the member's card rewritten to match: the committee's own record of it still differs
    mcard = json.loads((bad / "members" / "m1" / "model_card.json").read_text())
    from lensdask.model.checkpoint import sha256_file

    mcard["sha256"] = sha256_file(w)
    (bad / "members" / "m1" / "model_card.json").write_text(json.dumps(mcard))
    with pytest.raises(CheckpointError, match="member m1 of committee .* was replaced"):
        verify_weights(bad)
    # a member named as a path in the card is never followed
    shutil.rmtree(bad)
    shutil.copytree(setup.committee, bad)
    card = json.loads((bad / "model_card.json").read_text())
    card["committee"]["members"][0]["name"] = "../../elsewhere"
    (bad / "model_card.json").write_text(json.dumps(card))
    with pytest.raises(CheckpointError, match="member 0 is not recorded as 'm0'"):
        load_checkpoint(bad)


def test_moved_committee_loads_without_its_sources(setup, tmp_path):
    moved = tmp_path / "elsewhere" / "c"
    shutil.copytree(setup.committee, moved)
    gone = tmp_path / "gone"
    for m in setup.members:  # the members' own directories are not needed
        shutil.copytree(m, gone / m.name)
        shutil.rmtree(m)
    try:
        net, card = load_checkpoint(moved)
        test = setup.stores["test"]
        images = test.read_images(0)
        ref, _ = load_checkpoint(setup.committee)
        np.testing.assert_array_equal(predict_proba(net, card, images), predict_proba(ref, card, images))
    finally:
        for m in setup.members:
            shutil.copytree(gone / m.name, m)


def test_mlp_committee_by_cli_is_deterministic(setup, capsys):
    argv = ["committee", "--members", *map(str, setup.members), "--data", str(setup.stores["fit"].url)]
    argv += ["--meta", "mlp", "--hidden", "4", "--seed", "3"]
    assert main([*argv, "--out", str(setup.dir / "mlp1")]) == 0
    out = capsys.readouterr().out
    assert "mlp meta-classifier" in out and "AUROC committee" in out
    assert main([*argv, "--out", str(setup.dir / "mlp2")]) == 0
    a, b = read_card(setup.dir / "mlp1"), read_card(setup.dir / "mlp2")
    assert a["model_id"] == b["model_id"] and a["committee"]["meta"]["hidden"] == 4
    assert len(a["committee"]["meta"]["layers"]) == 2
    assert main([*argv, "--out", str(setup.dir / "mlp1")]) == 2  # exists; --overwrite replaces it
    assert "--overwrite" in capsys.readouterr().err
    with pytest.raises(CheckpointError, match="is a committee"):
        build_committee(setup.stores["fit"].url, [setup.committee, setup.members[0]], setup.dir / "x", progress=False)


def test_logistic_meta_is_scikit_learns():
    linear_model = pytest.importorskip("sklearn.linear_model")
    rng = np.random.default_rng(0)
    z = rng.normal(0, 2, (300, 3))
    y = (z @ [1.0, -0.5, 0.3] + rng.normal(0, 1, 300) > 0).astype(float)
    meta = fit_meta(torch.from_numpy(z), torch.from_numpy(y), "logistic", l2=1e-2)
    ref = linear_model.LogisticRegression(C=1 / (1e-2 * 300), tol=1e-10, max_iter=10_000).fit(z, y)
    d = meta.describe()
    np.testing.assert_allclose(d["coefficients"], ref.coef_[0], rtol=1e-4, atol=1e-5)
    assert d["intercept"] == pytest.approx(ref.intercept_[0], abs=1e-5)


def test_inject_takes_a_committee_and_its_members_training_galaxies(shared_data, random_model, tmp_path):
    from lensdask.model import inject
    from lensdask.model.checkpoint import untrained_checkpoint
    from lensdask.simulate.inputs import load_backgrounds

    from conftest import make_tiny_store

    gals = str(shared_data / "des_galaxies")
    fps = load_backgrounds(gals, tuple("griz"), 0.263, 45).fingerprints
    leaky = tmp_path / "leaky"  # 45 px members: the random test-vit, its card saying it trained on galaxy 16
    shutil.copytree(random_model, leaky)
    card = json.loads((leaky / "model_card.json").read_text())
    card["training_galaxies"] = [{"source": gals, "rows": [16], "fingerprints": [fps[16]]}]
    (leaky / "model_card.json").write_text(json.dumps(card))  # the card is not hashed
    untrained_checkpoint(tmp_path / "res", "test-resnet", seed=2)
    fit = make_tiny_store(tmp_path / "fit.zarr", rows=40, labels=np.arange(40) % 2, seed=3)
    c = build_committee(fit.url, [leaky, tmp_path / "res"], tmp_path / "c", progress=False)
    assert c["training_galaxies"] == card["training_galaxies"]
    with pytest.raises(SplitError, match=r"rows 16\b"):
        inject(gals, tmp_path / "c", galaxies="heldout", orientations=1, progress=False)
    r = inject(gals, tmp_path / "c", galaxies="0,8", orientations=1, progress=False, top=2)
    assert r["model_id"] == c["model_id"] and r["n_painted"] == 2 and 0 <= r["fpr"] <= 1
