"""Review: galleries, append-only labels, labelled cutouts back into training, Zooniverse, SWAP."""

import json

import numpy as np
import pandas as pd
import pytest

from lensdask.errors import LensdaskError
from lensdask.images import colour_composite
from lensdask.review.gallery import gallery_html
from lensdask.review.labels import add_labels, consensus, label_conflicts, read_labels
from lensdask.review.swap import read_classifications, swap
from lensdask.review.trainset import trainset_add
from lensdask.review.zooniverse import export_zooniverse
from lensdask.store import create_store, open_store

from conftest import GALAXY_TILES as TILES


@pytest.fixture(scope="module")
def run(galaxy_run):
    """A small survey store of noisy galaxies and a finished search run over it."""
    return galaxy_run("review", per_tile=20, seed=5, first_id=5000)


def test_colour_composite_is_rgb_and_unit_free():
    rng = np.random.default_rng(0)
    stamp = rng.normal(0, 1, (4, 45, 45))
    stamp[:, 20:25, 20:25] += 30
    a = colour_composite(stamp, "griz")
    b = colour_composite(stamp * 1e4, "griz")  # other flux units, same picture
    assert a.shape == (45, 45, 3) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)
    assert a[22, 22].sum() > a[2, 2].sum()


def test_gallery_pages_offline(run):
    g = gallery_html(run / "run", top=30, per_page=12)
    assert [p.name for p in g.pages] == ["index.html", "page-002.html", "page-003.html"]
    text = g.index.read_text()
    assert text.count('class="card"') == 12 and "data:image/png;base64," in text
    assert "http" not in text.replace("https://", "").split("<body>")[0]  # nothing fetched from the web
    assert str(g.candidates.iloc[0]["object_id"]) in text
    assert g.candidates["score"].is_monotonic_decreasing
    assert "<img" in g._repr_html_()


def test_labels_are_append_only_and_conflicts_kept(run, tmp_path):
    store = open_store(run / "des.zarr")
    path = tmp_path / "labels.csv"
    add_labels(
        path,
        [
            {"tile": TILES[0], "object_id": 5000, "class": "spiral"},
            {"tile": TILES[0], "object_id": 5001, "class": "lens"},
        ],
        labeller="ann",
        store=store,
    )
    add_labels(path, [{"tile": TILES[0], "object_id": 5000, "class": "ring"}], labeller="bob", store=store)
    labels = read_labels(path)
    assert len(labels) == 3 and labels["labeller"].tolist() == ["ann", "ann", "bob"]
    conflicts = label_conflicts(labels)
    assert conflicts["object_id"].tolist() == [5000] and conflicts["classes"][0] == ["ring", "spiral"]
    assert consensus(labels)["object_id"].tolist() == [5001]
    before = path.read_text()
    with pytest.raises(LensdaskError, match="unknown class 'donut'"):
        add_labels(path, [{"tile": TILES[0], "object_id": 5002, "class": "donut"}], store=store)
    with pytest.raises(LensdaskError, match="not in"):
        add_labels(path, [{"tile": TILES[0], "object_id": 999999, "class": "ring"}], store=store)
    assert path.read_text() == before  # refused labels write nothing


def test_trainset_add_extends_classes_once(run, tmp_path):
    train = create_store(
        tmp_path / "train.zarr",
        tiles=["sim-000000"],
        capacity=8,
        bands="griz",
        pixel_scale=0.263,
        stamp=45,
        params=["theta_E"],
    )
    train.write_tile(
        0,
        np.zeros((2, 4, 45, 45), "float32"),
        pd.DataFrame(
            {"object_id": [0, 1], "ra": [0.0, 0.0], "dec": [0.0, 0.0], "label": [0, 1], "theta_E": [np.nan, 1.2]}
        ),
    )
    labels = tmp_path / "labels.csv"
    picks = [(TILES[0], 5003, "spiral"), (TILES[1], 5105, "ring"), (TILES[1], 5106, "lens"), (TILES[0], 5004, "spiral")]
    add_labels(labels, [{"tile": t, "object_id": o, "class": c} for t, o, c in picks], labeller="ann")
    added = trainset_add(labels, run / "des.zarr", tmp_path / "train.zarr")
    assert len(added) == 4
    t = open_store(tmp_path / "train.zarr")
    assert t.classes == ["non-lens", "lens", "spiral", "ring"]
    cat = t.read_catalog()
    new = cat[cat["tile"].str.startswith("review-")].set_index("object_id")
    assert new.loc[5003, "label"] == 2 and new.loc[5105, "label"] == 3 and new.loc[5106, "label"] == 1
    # the pixels are the survey's own
    survey = open_store(run / "des.zarr")
    row = int(survey.read_table(1).set_index("object_id").loc[5105, "row"])
    got = t.read_images(new.loc[5105, "tile"])[list(new[new["tile"] == new.loc[5105, "tile"]].index).index(5105)]
    np.testing.assert_array_equal(got, survey.read_images(1, row, row + 1)[0])
    assert new.loc[5105, "ra"] == pytest.approx(float(survey.read_table(1).set_index("object_id").loc[5105, "ra"]))
    # a second run adds nothing (no duplicated data)
    assert len(trainset_add(labels, run / "des.zarr", tmp_path / "train.zarr")) == 0
    assert open_store(tmp_path / "train.zarr").n_rows == 6


def test_zooniverse_export(run, tmp_path):
    out = tmp_path / "zoo"
    manifest = export_zooniverse(run / "run", out, top=7)
    assert len(manifest) == 7 and (out / "manifest.csv").exists()
    disk = pd.read_csv(out / "manifest.csv")
    assert list(disk.columns[:3]) == ["image", "ra", "dec"]
    assert all(c.startswith("#") for c in disk.columns[3:])  # hidden from volunteers
    for name in disk["image"]:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(LensdaskError, match="exists"):
        export_zooniverse(run / "run", out, top=3)


def _export(path, truth, skill, n_users=12, votes_per_subject=8, seed=0):
    """A synthetic Zooniverse classification export: good volunteers and coin-flippers."""
    rng = np.random.default_rng(seed)
    rows, cid = [], 0
    for subject, is_lens in truth.items():
        for u in rng.choice(n_users, votes_per_subject, replace=False):
            good = skill[u]
            right = rng.random() < good
            says = is_lens if right else not is_lens
            cid += 1
            rows.append(
                {
                    "classification_id": cid,
                    "user_name": f"user{u}",
                    "workflow_id": 1,
                    "created_at": f"2026-11-29 10:{cid // 60:02d}:{cid % 60:02d} UTC",
                    "annotations": json.dumps([{"task": "T0", "value": "Yes" if says else "No"}]),
                    "subject_data": json.dumps(
                        {str(subject): {"retired": None, "#object_id": int(subject) + 7000, "#tile": "DES0330-3040"}}
                    ),
                    "subject_ids": str(subject),
                }
            )
    pd.DataFrame(rows).to_csv(path, index=False)


def test_swap_learns_volunteer_skill_and_separates_lenses(tmp_path):
    rng = np.random.default_rng(1)
    truth = {100 + i: bool(rng.random() < 0.3) for i in range(120)}
    skill = {u: (0.95 if u < 6 else 0.5) for u in range(12)}  # half the crowd guesses
    _export(tmp_path / "cls.csv", truth, skill)
    votes = read_classifications(tmp_path / "cls.csv")
    assert len(votes) == 120 * 8 and {"#object_id", "#tile"} <= set(votes.columns)
    gold_ids = list(truth)[:60]
    gold = pd.DataFrame({"object_id": [s + 7000 for s in gold_ids], "is_lens": [truth[s] for s in gold_ids]})
    result = swap(votes, gold, prior=0.3)
    test = result[result["gold"].isna()]
    is_lens = test["subject_id"].astype(int).map(truth)
    from lensdask.model.metrics import auroc

    assert auroc(is_lens.to_numpy(), test["posterior"].to_numpy()) > 0.95
    # coin-flippers carry no weight: their skills stay near 0.5
    from lensdask.review.swap import volunteer_skills

    skills = volunteer_skills(votes, result.set_index("subject_id")["gold"].dropna().astype(bool))
    assert skills.loc["user0", "P_L"] > 0.8 and abs(skills.loc["user11", "P_D"] - 0.5) < 0.2
    assert set(result["status"]) <= {"detected", "rejected", "undecided"}


def test_label_widget_buttons_and_keys(run, tmp_path):
    pytest.importorskip("ipywidgets")
    from lensdask.review.widget import LabelWidget

    widget = LabelWidget(run / "run", tmp_path / "labels.csv", top=5, labeller="carol")
    first = widget.candidates.iloc[0]
    widget.buttons[widget.classes.index("spiral")].click()
    widget.keys.value = "s"  # skip the second
    widget.keys.value = str(widget.classes.index("lens") + 1)  # third: lens, by key
    labels = read_labels(tmp_path / "labels.csv")
    assert labels["class"].tolist() == ["spiral", "lens"]
    assert labels["object_id"].tolist() == [int(first["object_id"]), int(widget.candidates.iloc[2]["object_id"])]
    assert (labels["labeller"] == "carol").all() and widget.position == 3
    assert widget.image.value[:4] == b"\x89PNG"


def test_review_commands_through_the_cli(run, tmp_path, capsys):
    from lensdask.cli import main

    assert main(["review", str(run / "run"), "--top", "5", "--out", str(tmp_path / "g")]) == 0
    assert (tmp_path / "g" / "index.html").exists()
    labels = tmp_path / "labels.csv"
    assert (
        main(
            [
                "label",
                "--labels",
                str(labels),
                "--tile",
                TILES[0],
                "--object-id",
                "5002",
                "--class",
                "ring",
                "--labeller",
                "dan",
                "--zarr",
                str(run / "des.zarr"),
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "label",
                "--labels",
                str(labels),
                "--tile",
                TILES[0],
                "--object-id",
                "5002",
                "--class",
                "lens",
                "--labeller",
                "eve",
            ]
        )
        == 0
    )
    assert "conflicting" in capsys.readouterr().out
    assert main(["label", "--labels", str(labels), "--tile", TILES[0], "--object-id", "5002", "--class", "blob"]) == 2
    assert "unknown class 'blob'" in capsys.readouterr().err
    assert len(read_labels(labels)) == 2
    assert main(["export-zooniverse", str(run / "run"), "--top", "3", "--out", str(tmp_path / "z")]) == 0
    assert main(["export-zooniverse", str(run / "run"), "--top", "3", "--out", str(tmp_path / "z")]) == 2
    # trainset add: the conflicting object is left out, so nothing is added
    create_store(tmp_path / "t.zarr", tiles=["sim-0"], capacity=4, bands="griz", pixel_scale=0.263, stamp=45)
    assert (
        main(
            [
                "trainset",
                "add",
                "--labels",
                str(labels),
                "--zarr",
                str(run / "des.zarr"),
                "--to",
                str(tmp_path / "t.zarr"),
            ]
        )
        == 0
    )
    assert "added 0" in capsys.readouterr().out
    truth = {100 + i: i % 3 == 0 for i in range(30)}
    _export(tmp_path / "cls.csv", truth, {u: 0.9 for u in range(12)})
    gold = pd.DataFrame({"subject_id": [str(k) for k in list(truth)[:10]], "is_lens": list(truth.values())[:10]})
    gold.to_csv(tmp_path / "gold.csv", index=False)
    assert (
        main(
            [
                "swap",
                "--classifications",
                str(tmp_path / "cls.csv"),
                "--gold",
                str(tmp_path / "gold.csv"),
                "--out",
                str(tmp_path / "swap.csv"),
            ]
        )
        == 0
    )
    out = pd.read_csv(tmp_path / "swap.csv")
    assert len(out) == 30 and out["posterior"].between(0, 1).all()
