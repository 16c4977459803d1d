"""Known-lens cross-match against lenscat's catalogue: a lens planted at a lenscat position is found."""

import json

import numpy as np
import pandas as pd

from lensdask.review import crossmatch, known_lens_report, known_lenses
from lensdask.search import search
from lensdask.store import create_store


def test_lenscat_catalogue_reads_without_importing_lenscat():
    cat = known_lenses()
    assert len(cat) > 30000 and {"name", "ra", "dec", "grading", "ref"} <= set(cat.columns)
    assert cat["ra"].between(0, 360).all() and cat["dec"].between(-90, 90).all()


def test_crossmatch_radius_and_columns():
    cat = known_lenses()
    lens = cat[cat["grading"] == "confident"].iloc[10]
    dec = lens["dec"]
    rows = pd.DataFrame(
        {
            "ra": [lens["ra"] + 2.0 / 3600 / np.cos(np.radians(dec)), lens["ra"], 10.0],
            "dec": [dec, dec + 9.0 / 3600, 89.0],
        }
    )
    out = crossmatch(rows, radius=5.0)
    assert out["known_name"].tolist() == [lens["name"], "", ""]
    np.testing.assert_allclose(out["known_sep_arcsec"].iloc[0], 2.0, rtol=1e-3)
    assert out["known_grading"].iloc[0] == "confident" and out["known_ref"].iloc[0] == lens["ref"]
    assert crossmatch(rows, radius=10.0)["known_name"].iloc[1] == lens["name"]


def test_known_lens_report_counts_footprint_and_threshold():
    cat = pd.DataFrame({"name": ["A", "B", "C"], "ra": [10.0, 10.01, 50.0], "dec": [-30.0, -30.0, 0.0]})
    scores = pd.DataFrame(
        {
            "tile": "T",
            "object_id": [1, 2],
            "ra": [10.0, 10.1],
            "dec": [-30.0, -30.0],
            "score": [0.9, 0.2],
            "nan_pixels": False,
        }
    )
    stats = [{"ra_min": 9.9, "ra_max": 10.2, "dec_min": -30.1, "dec_max": -29.9}]
    table, summary = known_lens_report(scores, stats, threshold=0.5, radius=3.0, catalog=cat)
    assert summary == {"radius_arcsec": 3.0, "in_footprint": 2, "matched": 1, "above_threshold": 1, "found": ["A"]}
    assert table.loc[table["name"] == "A", "object_id"].item() == 1


def test_search_finds_a_lens_planted_at_a_lenscat_position(tmp_path, random_model):
    cat = known_lenses()
    des = cat[(cat["dec"] < -20) & (cat["dec"] > -60)].iloc[:3]  # southern known lenses
    n = 12
    rng = np.random.default_rng(0)
    s = create_store(tmp_path / "s.zarr", tiles=["T0"], capacity=n, bands="griz", pixel_scale=0.263, stamp=45)
    ra = des["ra"].iloc[0] + rng.uniform(-0.02, 0.02, n)
    dec = des["dec"].iloc[0] + rng.uniform(-0.02, 0.02, n)
    ra[5], dec[5] = des["ra"].iloc[0] + 1e-4, des["dec"].iloc[0]  # planted at the known lens (< 1")
    s.write_tile(
        0,
        rng.normal(size=(n, 4, 45, 45)).astype("float32"),
        pd.DataFrame({"object_id": np.arange(n), "ra": ra, "dec": dec}),
    )
    res = search(
        tmp_path / "s.zarr",
        random_model,
        tmp_path / "run",
        threshold=0.0,
        radius=2.0,
        export=["fits", "csv"],
        progress=False,
        client=None,
    )
    hit = res.candidates[res.candidates["object_id"] == 5].iloc[0]
    assert hit["known_name"] == des["name"].iloc[0] and hit["known_sep_arcsec"] < 1.0
    assert hit["known_grading"] in ("confident", "probable") and hit["known_ref"]
    assert (res.candidates.loc[res.candidates["object_id"] != 5, "known_name"] == "").all()
    k = json.loads((tmp_path / "run" / "summary.json").read_text())["known_lenses"]
    assert k["in_footprint"] >= 1 and k["above_threshold"] >= 1 and des["name"].iloc[0] in k["found"]
    known = pd.read_parquet(tmp_path / "run" / "known_lenses.parquet")
    assert des["name"].iloc[0] in set(known["name"])
    # astropy exports hold the same rows
    from astropy.table import Table

    fits_t = Table.read(tmp_path / "run" / "candidates.fits")
    csv_t = pd.read_csv(tmp_path / "run" / "candidates.csv")
    assert len(fits_t) == len(csv_t) == len(res.candidates) == n
    assert list(fits_t["object_id"]) == res.candidates["object_id"].tolist()
    np.testing.assert_allclose(csv_t["score"], res.candidates["score"], rtol=1e-6)
