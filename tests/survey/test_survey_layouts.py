"""Ingest of each survey's coadd layout (issue 28): synthetic files written in that survey's exact layout.

For every profile a 300 x 300 px patch of sky with a few Gaussian galaxies is written as the survey
ships its coadds (file names and folders, HDU names, units keywords, weight or variance planes, mask
planes with bad and harmless bits set), ingested with ``ingest(survey=..., coadds=...)``, and every
stamp is compared with the planes it was cut from: pixel values, bad pixels filled with the stamp's
median and flagged, harmless mask bits left alone.
"""

from __future__ import annotations

import os
import pathlib

import dask
import numpy as np
import pandas as pd
import pytest
from astropy.io import fits

from lensdask.store import FLAG_MASKED
from lensdask.storeadmin import store_info
from lensdask.survey import ingest
from lensdask.survey.profiles import get_profile
from lensdask.survey.synthetic_des import tile_wcs_header, write_des_tile

SIZE = 300
"""Image side, pixels."""

N_GALAXIES = 6


def sky_header(pixel_scale: float, ra0: float = 10.0, dec0: float = -5.0) -> fits.Header:
    """A TAN WCS for a ``SIZE`` x ``SIZE`` image at ``pixel_scale`` arcsec/px about (ra0, dec0) degrees."""
    header = tile_wcs_header("sky", SIZE, ra0, dec0, pixel_scale)
    del header["TILENAME"]
    return header


def galaxy_pixels(stamp: int, seed: int = 0) -> np.ndarray:
    """(N_GALAXIES, 2) integer pixel centres (x, y), far enough from the edges for a whole stamp."""
    rng = np.random.default_rng(seed)
    margin = stamp // 2 + 2
    return rng.integers(margin, SIZE - margin, size=(N_GALAXIES, 2))


def sky_image(centres: np.ndarray, band_index: int, noise: float, seed: int) -> np.ndarray:
    """Gaussian galaxies at ``centres`` on Gaussian noise of rms ``noise``, float32."""
    rng = np.random.default_rng(seed + 100 * band_index)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    image = rng.normal(0.0, noise, (SIZE, SIZE))
    for k, (x, y) in enumerate(centres):
        sigma = 2.0 + k % 3
        image += 40 * noise * (1 + band_index) * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * sigma**2))
    return image.astype(np.float32)


def catalogue(centres: np.ndarray, header: fits.Header) -> pd.DataFrame:
    """Objects at the galaxies' pixel centres: ``object_id``, ``ra``, ``dec`` (degrees)."""
    from lensdask.survey.planes import wcs_of

    ra, dec = wcs_of(header).all_pix2world(centres[:, 0].astype(float), centres[:, 1].astype(float), 0)
    return pd.DataFrame({"object_id": np.arange(1, len(centres) + 1, dtype=np.int64), "ra": ra, "dec": dec})


def mark_regions(plane: np.ndarray, centres: np.ndarray, value: int, offset: int, side: int = 3) -> None:
    """OR ``value`` into a ``side`` x ``side`` box ``offset`` px right of each galaxy centre (inside its stamp)."""
    for x, y in centres:
        plane[y - 1 : y - 1 + side, x + offset : x + offset + side] |= value


# -- the survey layouts, as each survey ships its coadds ----------------------------------------
LEGACY_BITS = {"NPRIMARY": 0, "BRIGHT": 1, "SATUR_G": 2, "SATUR_R": 3, "SATUR_Z": 4, "ALLMASK_G": 5}
LEGACY_BITS |= {"ALLMASK_R": 6, "ALLMASK_Z": 7, "SATUR_I": 14, "ALLMASK_I": 15}


def write_legacy_brick(root: pathlib.Path, brick: str = "1126p222", *, pixel_scale: float = 0.262, unit="nanomaggy"):
    """A Legacy Surveys DR10 brick: coadd/<aaa>/<brick>/legacysurvey-<brick>-{image,invvar}-<b>.fits.fz and
    -maskbits.fits.fz (tile-compressed, data in HDU 1). Returns (catalogue, expected bad pixels per band)."""
    folder = root / brick[:3] / brick
    folder.mkdir(parents=True, exist_ok=True)
    profile = get_profile("legacy-dr10")
    header = sky_header(pixel_scale)
    centres = galaxy_pixels(profile.stamp)
    maskbits = np.zeros((SIZE, SIZE), np.int32)
    mark_regions(maskbits, centres[:2], 1 << LEGACY_BITS["SATUR_G"], 3)  # bad in g only
    mark_regions(maskbits, centres[2:4], 1 << LEGACY_BITS["ALLMASK_R"], -6)  # bad in r only
    mark_regions(maskbits, centres[1:3], 1 << LEGACY_BITS["ALLMASK_I"], 8)  # bad in i only
    mark_regions(maskbits, centres, 1 << LEGACY_BITS["BRIGHT"], -2, side=5)  # harmless
    maskbits[:, :20] |= 1 << LEGACY_BITS["NPRIMARY"]  # harmless
    bad = {}
    for k, b in enumerate(profile.bands):
        image = sky_image(centres, k, 0.02, seed=1)
        invvar = np.full((SIZE, SIZE), 1 / 0.02**2, np.float32)
        invvar[centres[-1][1] + 4, centres[-1][0] - 3 : centres[-1][0] + 3] = 0  # a bad row in every band
        h = header.copy()
        h["BUNIT"], h["BAND"] = unit, b
        fits.HDUList([fits.PrimaryHDU(), fits.CompImageHDU(image, h, compression_type="RICE_1")]).writeto(
            folder / f"legacysurvey-{brick}-image-{b}.fits.fz"
        )
        fits.HDUList(
            [fits.PrimaryHDU(), fits.CompImageHDU(invvar, header.copy(), compression_type="GZIP_2", quantize_level=0)]
        ).writeto(folder / f"legacysurvey-{brick}-invvar-{b}.fits.fz")
        bits = (1 << LEGACY_BITS[f"SATUR_{b.upper()}"]) | (1 << LEGACY_BITS[f"ALLMASK_{b.upper()}"])
        bad[b] = ((maskbits.astype(np.int64) & bits) != 0) | (invvar == 0)
    fits.HDUList([fits.PrimaryHDU(), fits.CompImageHDU(maskbits, header.copy(), name="MASKBITS")]).writeto(
        folder / f"legacysurvey-{brick}-maskbits.fits.fz"
    )
    return catalogue(centres, header), bad


# the LSST/HSC pipelines number mask planes per file, in MP_<NAME> keywords of the MASK HDU
HSC_PLANES = {"BAD": 0, "SAT": 1, "INTRP": 2, "CR": 3, "EDGE": 4, "DETECTED": 5, "DETECTED_NEGATIVE": 6}
HSC_PLANES |= {"SUSPECT": 7, "NO_DATA": 8, "BRIGHT_OBJECT": 9, "CLIPPED": 10}
LSST_PLANES = {"BAD": 0, "SAT": 1, "INTRP": 2, "CR": 3, "EDGE": 4, "DETECTED": 5, "DETECTED_NEGATIVE": 6}
LSST_PLANES |= {"SUSPECT": 7, "NO_DATA": 8, "SENSOR_EDGE": 9, "INEXACT_PSF": 10, "STREAK": 11}


def _exposure_file(path, image, mask, variance, header, planes, *, primary=None, image_keys=None) -> None:
    """An LSST/HSC pipelines Exposure as FITS: empty primary HDU, then IMAGE, MASK (MP_* keywords), VARIANCE."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image_header = header.copy()
    image_header.update(image_keys or {})
    mask_header = header.copy()
    for name, bit in planes.items():
        mask_header[f"HIERARCH MP_{name}"] = bit
    fits.HDUList(
        [
            fits.PrimaryHDU(header=primary),
            fits.ImageHDU(image, image_header, name="IMAGE"),
            fits.ImageHDU(mask, mask_header, name="MASK"),
            fits.ImageHDU(variance, header.copy(), name="VARIANCE"),
        ]
    ).writeto(path)


def _variance_planes(centres, planes, k, noise):
    """Image, mask and variance of one band: SAT and NO_DATA (variance NaN) bad, DETECTED and INTRP harmless."""
    image = sky_image(centres, k, noise, seed=2)
    mask = np.zeros((SIZE, SIZE), np.int32)
    mark_regions(mask, centres[k % 2 : k % 2 + 2], 1 << planes["SAT"], 2)
    mark_regions(mask, centres, 1 << planes["DETECTED"], -3, side=6)
    mark_regions(mask, centres[:3], 1 << planes["INTRP"], -8)
    variance = np.full((SIZE, SIZE), noise**2, np.float32)
    x, y = centres[-1]
    variance[y + 5 : y + 8, x - 4 : x + 4] = np.nan  # no data: NO_DATA set, image NaN
    mask[y + 5 : y + 8, x - 4 : x + 4] |= 1 << planes["NO_DATA"]
    image[y + 5 : y + 8, x - 4 : x + 4] = np.nan
    bits = sum(1 << planes[p] for p in ("NO_DATA", "BAD", "SAT"))
    bad = ((mask & bits) != 0) | ~(variance > 0)
    return image, mask, variance, bad


def write_hsc_patch(root: pathlib.Path, tract: int = 9813, patch: str = "4,4", *, fluxmag0=10 ** (0.4 * 27)):
    """An HSC-SSP PDR3 coadd patch: <filter>/<tract>/<patch>/calexp-<filter>-<tract>-<patch>.fits, HDUs IMAGE,
    MASK, VARIANCE; FLUXMAG0 in the primary header. Returns (catalogue, expected bad pixels per band)."""
    profile = get_profile("hsc-pdr3")
    header = sky_header(0.168)
    centres = galaxy_pixels(profile.stamp)
    bad = {}
    for k, b in enumerate(profile.bands):
        image, mask, variance, bad[b] = _variance_planes(centres, HSC_PLANES, k, 0.05)
        filt = f"HSC-{b.upper()}"
        primary = fits.Header({"FLUXMAG0": fluxmag0, "FILTER": filt})
        path = root / filt / str(tract) / patch / f"calexp-{filt}-{tract}-{patch}.fits"
        _exposure_file(path, image, mask, variance, header, HSC_PLANES, primary=primary)
    return catalogue(centres, header), bad


def write_lsst_patch(root: pathlib.Path, tract=5063, patch=14, *, pixel_scale=0.2, unit="nJy", bands=None):
    """An LSST deep_coadd patch as the Butler writes it: <tract>/<patch>/<band>/deep_coadd_<tract>_<patch>_<band>_
    <skymap>_<run>.fits, HDUs IMAGE (BUNIT nJy), MASK, VARIANCE. Returns (catalogue, expected bad pixels per band)."""
    profile = get_profile("lsst")
    header = sky_header(pixel_scale)
    centres = galaxy_pixels(profile.stamp)
    bad = {}
    for k, b in enumerate(bands or profile.bands):
        image, mask, variance, bad[b] = _variance_planes(centres, LSST_PLANES, k, 3.0)
        path = root / str(tract) / str(patch) / b / f"deep_coadd_{tract}_{patch}_{b}_lsst_cells_v1_DP1_v29.fits"
        _exposure_file(path, image, mask, variance, header, LSST_PLANES, image_keys={"BUNIT": unit})
    return catalogue(centres, header), bad


def write_euclid_tile(root: pathlib.Path, tile: str = "102018211"):
    """A Euclid MER VIS tile: EUC_MER_BGSUB-MOSAIC-VIS_TILE<id>-..., EUC_MER_MOSAIC-VIS-RMS_TILE<id>-... and
    EUC_MER_MOSAIC-VIS-FLAG_TILE<id>-... with their data in HDU 0. Returns (catalogue, expected bad pixels)."""
    profile = get_profile("euclid-vis")
    header = sky_header(0.1)
    centres = galaxy_pixels(profile.stamp)
    root.mkdir(parents=True, exist_ok=True)
    image = sky_image(centres, 0, 0.01, seed=3)
    rms = np.full((SIZE, SIZE), 0.01, np.float32)
    x, y = centres[0]
    rms[y - 10 : y - 7, x : x + 5] = 0  # no data
    flag = np.zeros((SIZE, SIZE), np.int32)
    mark_regions(flag, centres[1:], 4, 5)
    stamp_suffix = "-D8BCA5_20241017T132637.066543Z_00.00.fits"
    h = header.copy()
    h["BUNIT"], h["FILTER"] = "uJy", "VIS"
    fits.PrimaryHDU(image, h).writeto(root / f"EUC_MER_BGSUB-MOSAIC-VIS_TILE{tile}{stamp_suffix}")
    fits.PrimaryHDU(rms, header.copy()).writeto(root / f"EUC_MER_MOSAIC-VIS-RMS_TILE{tile}{stamp_suffix}")
    fits.PrimaryHDU(flag, header.copy()).writeto(root / f"EUC_MER_MOSAIC-VIS-FLAG_TILE{tile}{stamp_suffix}")
    return catalogue(centres, header), {"VIS": (flag != 0) | ~(rms > 0)}


def write_des(root: pathlib.Path):
    """A DES coadd tile (lensdask.survey.synthetic_des) of 300 x 300 px, its objects whose stamps lie inside it;
    expected bad pixels: MSK bit 1 or WGT 0."""
    from lensdask.survey.planes import wcs_of

    files, cat = write_des_tile(root, "DES0001-0001", size=SIZE, n_objects=40, seed=5)
    bad = {}
    for b, path in files.items():
        with fits.open(path) as f:
            bad[b] = ((f["MSK"].data & 1) != 0) | (f["WGT"].data == 0)
            header = f["SCI"].header
    cat = cat.rename(columns=str.lower).rename(columns={"coadd_object_id": "object_id"})[["object_id", "ra", "dec"]]
    x, y = wcs_of(header).all_world2pix(cat["ra"], cat["dec"], 0)
    inside = np.minimum(np.minimum(x, y), np.minimum(SIZE - 1 - x, SIZE - 1 - y)) > 23
    return cat[inside].reset_index(drop=True), bad


WRITERS = {
    "des": write_des,
    "legacy-dr10": write_legacy_brick,
    "hsc-pdr3": write_hsc_patch,
    "lsst": write_lsst_patch,
    "euclid-vis": write_euclid_tile,
}


# -- what the stamps must be ---------------------------------------------------------------------
def image_planes(name: str, store_tile: str, root: pathlib.Path) -> dict[str, tuple[np.ndarray, fits.Header]]:
    """Each band's image plane and header, read straight from the file ``name``'s layout puts it in."""
    profile = get_profile(name)
    out = {}
    for b in profile.bands:
        if name == "des":
            (path,) = root.glob(f"{store_tile}_*_{b}.fits.fz")
            hdu = "SCI"
        elif name == "legacy-dr10":
            path = root / store_tile[:3] / store_tile / f"legacysurvey-{store_tile}-image-{b}.fits.fz"
            hdu = 1
        elif name == "hsc-pdr3":
            tract, patch = store_tile.split("-")
            filt, patch = f"HSC-{b.upper()}", patch.replace(".", ",")
            path = root / filt / tract / patch / f"calexp-{filt}-{tract}-{patch}.fits"
            hdu = "IMAGE"
        elif name == "lsst":
            tract, patch = store_tile.split("_")
            (path,) = (root / tract / patch / b).glob(f"deep_coadd_{store_tile}_{b}_*.fits")
            hdu = "IMAGE"
        else:
            (path,) = root.glob(f"EUC_MER_BGSUB-MOSAIC-{b}_TILE{store_tile}-*.fits")
            hdu = 0
        with fits.open(path) as f:
            out[b] = (np.asarray(f[hdu].data, np.float32), f[hdu].header.copy())
    return out


def expected_stamp(image: np.ndarray, bad: np.ndarray, x: float, y: float, stamp: int) -> tuple[np.ndarray, bool]:
    """The stamp about pixel (x, y), its bad pixels set to the median of the others; and whether it had any."""
    cx, cy, h = int(np.floor(x + 0.5)), int(np.floor(y + 0.5)), stamp // 2
    pixels = image[cy - h : cy + h + 1, cx - h : cx + h + 1].copy()
    masked = bad[cy - h : cy + h + 1, cx - h : cx + h + 1]
    if masked.any():
        good = pixels[~masked & np.isfinite(pixels)]
        pixels[masked] = np.median(good)
    return pixels, bool(masked.any())


@pytest.fixture
def float32_store():
    with dask.config.set({"lensdask.store.quantise.step": 0}):  # pixels kept exactly, to compare
        yield


@pytest.mark.parametrize("name", list(WRITERS))
def test_ingest_cuts_each_survey_layout_from_its_planes(name, tmp_path, float32_store):
    from lensdask.survey.planes import wcs_of

    root = tmp_path / "coadds"
    cat, bad = WRITERS[name](root)
    profile = get_profile(name)
    store, report = ingest(
        tmp_path / "s.zarr", survey=name, coadds=root, catalog=cat, client=None, progress=False, return_report=True
    )
    assert report.failures.empty, report.failures
    assert store.survey == name and store_info(store.url)["survey"] == name
    assert store.bands == list(profile.bands)
    assert store.pixel_scale == pytest.approx(profile.pixel_scale)
    assert store.stamp == profile.stamp
    assert len(store.written_tiles()) == 1
    tile = store.read_tile(0)
    planes = image_planes(name, store.tiles[0], root)
    ids = tile.table["object_id"].to_numpy()
    assert sorted(ids) == sorted(cat["object_id"])
    n_masked = 0
    for row, object_id in enumerate(ids):
        obj = cat[cat["object_id"] == object_id].iloc[0]
        any_bad = False
        for k, b in enumerate(profile.bands):
            image, header = planes[b]
            x, y = wcs_of(header).all_world2pix(obj["ra"], obj["dec"], 0)
            want, had_bad = expected_stamp(image, bad[b], float(x), float(y), profile.stamp)
            np.testing.assert_array_equal(tile.images[row, k], want, err_msg=f"{name} object {object_id} band {b}")
            any_bad |= had_bad
        assert bool(tile.table["flags"].iloc[row] & FLAG_MASKED) == any_bad
        n_masked += any_bad
    # harmless mask bits sit on every galaxy: had ingest taken them as bad, the pixels would differ
    assert 0 < n_masked, "the synthetic layout must put bad pixels in some stamps"


def test_hsc_patch_comma_becomes_a_tile_name(tmp_path, float32_store):
    cat, _ = write_hsc_patch(tmp_path / "coadds")
    store = ingest(tmp_path / "s.zarr", survey="hsc-pdr3", coadds=tmp_path / "coadds", catalog=cat, progress=False)
    assert store.tiles == ["9813-4.4"]


def test_variance_plane_becomes_inverse_variance_weights(tmp_path):
    from lensdask.survey.layouts import PlaneRules, open_band_planes

    write_lsst_patch(tmp_path, bands=["g"])
    (path,) = tmp_path.glob("*/*/g/*.fits")
    files = {"g": os.fspath(path)}
    rules = PlaneRules("variance", None, ("NO_DATA", "BAD", "SAT"))
    with open_band_planes(
        files, files, files, "g", hdu="IMAGE", weights_hdu="VARIANCE", masks_hdu="MASK", mask_bits=None, rules=rules
    ) as planes:
        assert planes.mask_bits == (1 << 8) | (1 << 0) | (1 << 1)
        weights = planes.weight.rows(0, SIZE)
    with fits.open(path) as f:
        variance = f["VARIANCE"].data
    finite = np.isfinite(variance)
    np.testing.assert_allclose(weights[finite], 1 / variance[finite].astype(np.float64), rtol=1e-12)
    assert (weights[~finite] == 0).all() and (~finite).any()
