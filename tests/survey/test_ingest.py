"""Ingest: real DECam CCD images with WCS + a catalogue, and the real DES cutout cubes / arrays."""

import dask
import numpy as np
import pandas as pd
import pytest

from lensdask.cli import main
from lensdask.errors import LensdaskError
from lensdask.store import FLAG_EDGE, FLAG_MASKED, TileData, open_store
from lensdask.survey import cut_stamps, ingest
from lensdask.survey.ingest import read_fits_image
from lensdask.survey.planes import wcs_of

# one exposure per band of the same patch of sky (legacypipe testcase3), each with its own WCS
DECAM = {
    "g": "c4d_150329_083505_{kind}_g_ls9.N11.fits",
    "r": "c4d_150329_083320_{kind}_r_ls9.N11.fits",
    "z": "c4d_150412_073257_{kind}_z_ls9.N11.fits",
}
STAMP = 15


@pytest.fixture(autouse=True)
def float32_store():
    """These tests check where stamps are cut, so the store keeps pixels exactly (no quantisation)."""
    with dask.config.set({"lensdask.store.quantise.step": 0}):
        yield


def _decam(shared_data, kind="ooi"):
    d = shared_data / "decam_ccd" / "images"
    return {"DECAM-N11": {b: str(d / f.format(kind=kind)) for b, f in DECAM.items()}}


def _catalog(files):
    """Objects at chosen pixels of the g image (converted to the sky with its WCS), one near the edge."""
    data, header = read_fits_image(files["DECAM-N11"]["g"])
    px = np.array([[20.0, 25.0], [12.3, 30.6], [27.7, 19.2], [20.0, 40.4], [2.0, 3.0]])
    ra, dec = wcs_of(header).all_pix2world(px[:, 0], px[:, 1], 0)
    return pd.DataFrame({"COADD_OBJECT_ID": np.arange(100, 105), "RA": ra, "DEC": dec})


def test_decam_objects_land_on_the_right_pixel_in_every_band(tmp_path, shared_data):
    files = _decam(shared_data)
    cat = _catalog(files)
    store = ingest(
        tmp_path / "d.zarr",
        images=files,
        catalog=cat,
        bands=["g", "r", "z"],
        stamp=STAMP,
        pixel_scale=0.262,
        masks=_decam(shared_data, "ood"),
        weights=_decam(shared_data, "oow"),
        client=None,
        progress=False,
    )
    tile = store.read_tile(0)
    # rows come ordered by their pixel row in the first band (a tile is read strip by strip)
    assert np.all(np.diff(_y_pixel(files["DECAM-N11"]["g"], tile.table)) >= 0)
    order = np.argsort(tile.table["object_id"].to_numpy())
    tile = TileData(tile.name, tile.index, tile.images[order], tile.table.iloc[order].reset_index(drop=True))
    assert tile.table["object_id"].tolist() == list(range(100, 105))
    np.testing.assert_allclose(tile.table["ra"], cat["RA"])
    h = STAMP // 2
    for k, band in enumerate(["g", "r", "z"]):
        data, header = read_fits_image(files["DECAM-N11"][band])
        x, y = wcs_of(header).all_world2pix(cat["RA"], cat["DEC"], 0)
        for i in range(4):  # interior objects: the stamp is the image around the WCS pixel
            cx, cy = int(np.floor(x[i] + 0.5)), int(np.floor(y[i] + 0.5))
            np.testing.assert_array_equal(tile.images[i, k], data[cy - h : cy + h + 1, cx - h : cx + h + 1])
    flags = tile.table["flags"].to_numpy()
    assert (flags[:3] == 0).all()
    assert flags[4] & FLAG_EDGE and np.isnan(tile.images[4]).any() and np.isfinite(tile.images[4, :, h:, h:]).all()


def _y_pixel(path, table):
    _, header = read_fits_image(path)
    return wcs_of(header).all_world2pix(table["ra"], table["dec"], 0)[1]


def test_decam_pixel_scale_mismatch_is_refused(tmp_path, shared_data):
    files = _decam(shared_data)
    with pytest.raises(LensdaskError, match="arcsec/px"):
        ingest(
            tmp_path / "d.zarr",
            images=files,
            catalog=_catalog(files),
            bands=["g", "r", "z"],
            stamp=STAMP,
            pixel_scale=0.5,
            client=None,
            progress=False,
        )


def test_cut_stamps_pads_edges_and_fills_masks():
    img = np.arange(100, dtype=np.float32).reshape(10, 10)
    bad = np.zeros((10, 10), bool)
    bad[5, 5] = True
    st, fl = cut_stamps(img, np.array([5.0, 0.4, 50.0]), np.array([5.2, 0.0, 5.0]), 5, bad=bad)
    assert fl[0] == FLAG_MASKED and st[0, 2, 2] == np.median(np.delete(img[3:8, 3:8].ravel(), 12))
    assert fl[1] == FLAG_EDGE and np.isnan(st[1, :2, :2]).all() and st[1, 2, 2] == img[0, 0]
    assert fl[2] == FLAG_EDGE and np.isnan(st[2]).all()
    st, fl = cut_stamps(img, np.array([5.0]), np.array([5.0]), 5, bad=bad, mask_fill="nan")
    assert np.isnan(st[0, 2, 2]) and np.isfinite(st[0]).sum() == 24


def test_des_cubes_are_cropped_around_the_centre_and_split_into_tiles(tmp_path, shared_data):
    from astropy.io import fits

    d = shared_data / "des_galaxies"
    store = ingest(tmp_path / "g.zarr", cubes=str(d / "{band}.fits"), per_tile=12, client=None, progress=False)
    assert store.tiles == ["cutouts-0000", "cutouts-0001", "cutouts-0002"]
    assert store.counts.tolist() == [12, 12, 6] and store.bands == ["g", "r", "i", "z"] and store.stamp == 45
    cube = fits.getdata(d / "i.fits")
    t = store.read_tile(2)
    np.testing.assert_array_equal(t.images[:, 2], cube[24:30, 23:68, 23:68])
    assert t.table["object_id"].tolist() == list(range(24, 30))


def test_npz_arrays_with_a_table_and_tile_column(tmp_path):
    rng = np.random.default_rng(0)
    imgs = rng.normal(size=(7, 4, 51, 51)).astype(np.float32)
    np.savez(
        tmp_path / "c.npz",
        images=imgs,
        object_id=np.arange(7) + 50,
        ra=np.linspace(10, 11, 7),
        dec=np.full(7, -30.0),
        label=np.array([0, 1, 0, 0, 1, 0, 0]),
    )
    store = ingest(tmp_path / "a.zarr", arrays=tmp_path / "c.npz", per_tile=4, client=None, progress=False)
    assert store.counts.tolist() == [4, 3]
    t = store.read_tile(1)
    np.testing.assert_array_equal(t.images, imgs[4:, :, 3:48, 3:48])
    assert t.table["label"].tolist() == [1, 0, 0] and t.table["object_id"].tolist() == [54, 55, 56]
    np.save(tmp_path / "c.npy", imgs)
    table = pd.DataFrame({"id": np.arange(7), "ra": 0.0, "dec": 0.0, "tile": list("AABBBCC")})
    table.to_csv(tmp_path / "t.csv", index=False)
    s2 = ingest(tmp_path / "b.zarr", arrays=tmp_path / "c.npy", table=tmp_path / "t.csv", client=None, progress=False)
    assert s2.tiles == ["A", "B", "C"] and s2.counts.tolist() == [2, 3, 2]


def test_cli_ingest_on_a_cluster(tmp_path, shared_data, client, capsys):
    files = _decam(shared_data)["DECAM-N11"]
    cat = _catalog({"DECAM-N11": files})
    cat.to_csv(tmp_path / "cat.csv", index=False)
    # a pattern needs files named by band: link them
    for b, f in files.items():
        (tmp_path / f"N11_{b}.fits").symlink_to(f)
    code = main(
        [
            "ingest",
            "--out",
            str(tmp_path / "c.zarr"),
            "--images",
            str(tmp_path / "N11_{band}.fits"),
            "--catalog",
            str(tmp_path / "cat.csv"),
            "--bands",
            "g,r,z",
            "--stamp",
            str(STAMP),
            "--pixel-scale",
            "0.262",
            "--cluster",
            client.scheduler.address,
        ]
    )
    assert code == 0, capsys.readouterr().err
    assert "1 rows edge-padded" in capsys.readouterr().out
    assert open_store(tmp_path / "c.zarr").counts.tolist() == [5]
    assert main(["ingest", "--out", str(tmp_path / "x.zarr")]) == 2
