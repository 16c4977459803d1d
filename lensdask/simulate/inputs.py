"""Real inputs of the simulator, read once per process: lens-galaxy backgrounds, COSMOS
sources, PSFEx PSFs, and the cosmology behind Einstein radii from velocity dispersions.

I/O and pure numpy only (no lenstronomy, no dask). Every loader is cached per process
(``functools.lru_cache``), so a Dask worker reads a file once, and names the file it could
not read in the error it raises.
"""

from __future__ import annotations

import functools
import glob
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import LensdaskError

C_KM_S = 299792.458


class InputError(LensdaskError):
    """A background, source or PSF input is missing or does not match the simulation."""


def border_sigma(img: np.ndarray, border: int = 6) -> float:
    """Robust noise sigma (1.4826 MAD) of a stamp's border frame."""
    m = np.ones(img.shape, bool)
    m[border:-border, border:-border] = False
    v = img[m]
    return float(1.4826 * np.median(np.abs(v - np.median(v))))


# -- lens-galaxy backgrounds (real cutouts) -------------------------------------------------


@dataclass(frozen=True)
class Backgrounds:
    """Real survey cutouts to paint arcs on (or to use as negatives).

    Attributes
    ----------
    images : numpy.ndarray
        (n, n_bands, stamp, stamp) float32, in the file's own flux units, cropped around the centre.
    noise : numpy.ndarray
        (n, n_bands) robust background sigma of every stamp and band, same units.
    sigma_v : numpy.ndarray
        (n,) velocity dispersion, km/s (NaN when unknown).
    source : str
        Where they were read from.
    rows : numpy.ndarray, optional
        (n,) int64 original row index of every cutout in ``source`` (a selection keeps its
        rows' indices); default ``0..n-1``.

    ``fingerprints`` (computed once) are the rotation- and flip-invariant hashes of the cropped
    cutouts (:func:`~lensdask.simulate.galaxies.fingerprint`), the galaxies' identities.
    """

    images: np.ndarray
    noise: np.ndarray
    sigma_v: np.ndarray
    source: str
    # None (default) means 0..n-1: __post_init__ always stores an array, so readers see np.ndarray
    rows: np.ndarray = None  # type: ignore[assignment]

    def __post_init__(self):
        rows = (
            np.arange(len(self.images), dtype=np.int64)
            if self.rows is None
            else np.asarray(self.rows, dtype=np.int64).ravel()
        )
        if rows.shape != (len(self.images),):
            raise InputError(f"{self.source}: {rows.size} row indices for {len(self.images)} cutouts")
        object.__setattr__(self, "rows", rows)

    def __len__(self) -> int:
        return len(self.images)

    @functools.cached_property
    def fingerprints(self) -> list[str]:
        """:func:`~lensdask.simulate.galaxies.fingerprint` of every cutout, in row order."""
        from .galaxies import fingerprints

        return fingerprints(self.images)

    def select(self, rows) -> Backgrounds:
        """The cutouts at positions ``rows`` (into this set), keeping their original row indices."""
        idx = np.asarray(rows, dtype=np.int64).ravel()
        return Backgrounds(
            np.ascontiguousarray(self.images[idx]), self.noise[idx], self.sigma_v[idx], self.source, self.rows[idx]
        )


def _crop(cube: np.ndarray, stamp: int, what: str) -> np.ndarray:
    h, w = cube.shape[-2:]
    if h < stamp or w < stamp:
        raise InputError(f"{what}: stamps of {h}x{w} px are smaller than the simulation stamp {stamp} px")
    y0, x0 = (h - stamp) // 2, (w - stamp) // 2
    return cube[..., y0 : y0 + stamp, x0 : x0 + stamp]


def header_pixel_scale(header) -> float | None:
    """Pixel scale (arcsec/pixel) from a FITS header: ``PIXSCALE``/``PIXSCAL1``/``PIXSCL``, else the CD matrix,
    else ``CDELT1``; None when the header has none of them."""
    for key in ("PIXSCALE", "PIXSCAL1", "PIXSCL"):
        if key in header:
            return float(header[key])
    if "CD1_1" in header:
        return float(np.hypot(header["CD1_1"], header.get("CD2_1", 0.0)) * 3600)
    if "CDELT1" in header:
        return abs(float(header["CDELT1"])) * 3600
    return None


@functools.lru_cache(maxsize=8)
def load_backgrounds(
    source: str, bands: tuple, pixel_scale: float, stamp: int, rows: tuple | None = None
) -> Backgrounds:
    """Read real cutouts from per-band FITS cubes or from a cutout store.

    Parameters
    ----------
    source : str
        A folder holding ``<band>.fits`` cubes (n, h, w), same object order in every band,
        and optionally ``sigma_v.txt`` (km/s, one per object); or a ``lensdask.cutouts/1``
        store (rows with a lens label are skipped; ``params/sigma_v`` is used if present).
    bands : tuple of str
        Bands of the simulation, in order: every one must be present.
    pixel_scale : float, arcsec/px
        Must match the store's, or the FITS header's when it gives one (DES: 0.263).
    stamp : int, px
        Cutouts are cropped to this size around their centre.
    rows : tuple of int, optional
        Keep only these rows (original indices into ``source``, in this order; see
        :func:`~lensdask.simulate.galaxies.select_rows`); None keeps every row. A tuple, so
        that the result is cached per selection.
    """
    if rows is not None:
        full = load_backgrounds(source, bands, pixel_scale, stamp)
        idx = np.asarray(rows, dtype=np.int64).ravel()
        bad = idx[(idx < 0) | (idx >= len(full))]
        if bad.size:
            raise InputError(f"{source}: rows {sorted(set(bad.tolist()))} out of range for {len(full)} cutouts")
        return full.select(idx)
    if not os.path.exists(source):
        raise InputError(f"background cutouts {source!r} not found")
    if os.path.isdir(source) and not os.path.exists(os.path.join(source, "zarr.json")):
        return _backgrounds_from_fits(source, bands, pixel_scale, stamp)
    return _backgrounds_from_store(source, bands, pixel_scale, stamp)


def galaxy_rows(galaxies, source: str, bands: Sequence[str], pixel_scale: float, stamp: int) -> tuple | None:
    """The rows of ``source`` a galaxy selection keeps: a tuple for :func:`load_backgrounds`, or None for all.

    ``galaxies`` is a :func:`~lensdask.simulate.galaxies.select_rows` spec (None / ``"all"``,
    ``"train"``, ``"heldout"``, ``"0:20"``, ``"1,4,7"`` or a sequence of ints), resolved against
    the number of cutouts in ``source``.
    """
    from .galaxies import select_rows

    if galaxies is None or (isinstance(galaxies, str) and galaxies.strip().lower() == "all"):
        return None
    n = len(load_backgrounds(source, tuple(bands), pixel_scale, stamp))
    return tuple(int(i) for i in select_rows(galaxies, n))


def real_galaxies_record(backgrounds: Backgrounds | None, negatives: Backgrounds | None) -> dict | None:
    """The provenance ``real_galaxies`` of a simulation: which real cutouts it used.

    Returns
    -------
    dict or None
        ``source`` (the backgrounds' path, else the negatives'), ``rows`` (original row indices
        of the real cutouts used, sorted; the union of both sets when they come from one source),
        ``fingerprints`` (the union over both sets, one per distinct galaxy) and, when the
        negatives come from another source, ``negatives``: ``{"source", "rows"}``. None when the
        simulation used no real cutouts.
    """
    sets = [s for s in (backgrounds, negatives) if s is not None]
    if not sets:
        return None
    first = sets[0]
    fps = list(dict.fromkeys(f for s in sets for f in s.fingerprints))  # in order, each galaxy once
    same = [s for s in sets if s.source == first.source]
    out: dict[str, object] = {
        "source": first.source,
        "rows": sorted({int(r) for s in same for r in s.rows}),
        "fingerprints": fps,
    }
    other = [s for s in sets if s.source != first.source]
    if other:
        out["negatives"] = {"source": other[0].source, "rows": sorted(int(r) for r in other[0].rows)}
    return out


def _backgrounds_from_fits(folder, bands, pixel_scale, stamp):
    from astropy.io import fits

    have = sorted(os.path.splitext(os.path.basename(p))[0] for p in glob.glob(os.path.join(folder, "*.fits")))
    missing = [b for b in bands if b not in have]
    if missing:
        raise InputError(
            f"background cubes in {folder!r} have bands {have}; the simulation needs {list(bands)} (missing {missing})"
        )
    cubes = []
    for b in bands:
        path = os.path.join(folder, f"{b}.fits")
        with fits.open(path) as hdul:
            data, header = np.asarray(hdul[0].data, dtype=np.float32), hdul[0].header
        ps = header_pixel_scale(header)
        if ps is not None and abs(ps - pixel_scale) > 1e-3 * pixel_scale:
            raise InputError(f'{path}: pixel scale {ps:.4f}"/px does not match the simulation\'s {pixel_scale:.4f}"/px')
        if data.ndim == 2:
            data = data[None]
        if data.ndim != 3:
            raise InputError(f"{path}: expected a cube (n, h, w), got shape {data.shape}")
        if cubes and data.shape != cubes[0].shape:
            raise InputError(f"{path}: shape {data.shape} differs from {bands[0]}.fits {cubes[0].shape}")
        cubes.append(data)
    full = np.stack(cubes, axis=1)  # (n, bands, h, w)
    sig_path = os.path.join(folder, "sigma_v.txt")
    sigma_v = np.full(len(full), np.nan)
    if os.path.exists(sig_path):
        v = np.loadtxt(sig_path, comments="#", ndmin=1).astype(float).ravel()
        if len(v) != len(full):
            raise InputError(f"{sig_path}: {len(v)} velocity dispersions for {len(full)} cutouts")
        sigma_v = v
    return _finish_backgrounds(full, stamp, sigma_v, folder)


def _backgrounds_from_store(url, bands, pixel_scale, stamp):
    from ..store import open_store

    s = open_store(url)
    if list(s.bands) != list(bands):
        raise InputError(f"background store {url!r} has bands {s.bands}; the simulation needs {list(bands)}")
    if abs(s.pixel_scale - pixel_scale) > 1e-3 * pixel_scale:
        raise InputError(
            f'background store {url!r} has pixel scale {s.pixel_scale}"/px; the simulation needs {pixel_scale}"/px'
        )
    imgs, sig = [], []
    lens = s.classes.index("lens") if "lens" in s.classes else None
    for t in s.written_tiles():
        tile = s.read_tile(t)
        keep = np.ones(len(tile.table), bool) if lens is None else tile.table["label"].to_numpy() != lens
        imgs.append(tile.images[keep])
        sig.append(tile.table["sigma_v"].to_numpy()[keep] if "sigma_v" in tile.table else np.full(keep.sum(), np.nan))
    if not imgs or sum(len(i) for i in imgs) == 0:
        raise InputError(f"background store {url!r} holds no non-lens rows")
    return _finish_backgrounds(np.concatenate(imgs), stamp, np.concatenate(sig).astype(float), url)


def _finish_backgrounds(full, stamp, sigma_v, source):
    images = np.ascontiguousarray(_crop(full, stamp, source), dtype=np.float32)
    noise = np.array([[border_sigma(full[k, j]) for j in range(full.shape[1])] for k in range(len(full))])
    if not np.all(noise > 0) or not np.all(np.isfinite(images)):
        bad = int(np.flatnonzero(~(noise > 0).all(axis=1) | ~np.isfinite(images).all(axis=(1, 2, 3)))[0])
        raise InputError(f"{source}: cutout {bad} has no measurable background noise or non-finite pixels")
    return Backgrounds(images, noise, np.asarray(sigma_v, float), source)


# -- COSMOS real-galaxy sources ---------------------------------------------------------------


@dataclass(frozen=True)
class CosmosSources:
    """Real HST/COSMOS galaxy stamps prepared for lenstronomy's ``INTERPOL`` profile.

    ``images[k]`` is sky subtracted, noise below 1 sigma zeroed, normalised to unit sum;
    ``pixel_scale[k]`` in arcsec/px; ``mag[k]`` the catalogue F814W magnitude.
    """

    images: tuple
    pixel_scale: np.ndarray
    mag: np.ndarray
    ident: np.ndarray
    source: str

    def __len__(self) -> int:
        return len(self.images)


@functools.lru_cache(maxsize=4)
def load_cosmos(source: str) -> CosmosSources:
    """Read a GalSim-format COSMOS catalogue (``real_galaxy_catalog_*.fits`` and its image files).

    Parameters
    ----------
    source : str
        The catalogue FITS file, or the folder holding exactly one ``real_galaxy_catalog_*.fits``
        (the ``*_fits.fits`` fit table is ignored).
    """
    from astropy.io import fits

    if os.path.isdir(source):
        cats = [
            p for p in glob.glob(os.path.join(source, "real_galaxy_catalog_*.fits")) if not p.endswith("_fits.fits")
        ]
        if len(cats) != 1:
            raise InputError(f"expected one real_galaxy_catalog_*.fits in {source!r}, found {len(cats)}")
        cat_path = cats[0]
    else:
        cat_path = source
    if not os.path.exists(cat_path):
        raise InputError(f"COSMOS catalogue {cat_path!r} not found")
    folder = os.path.dirname(os.path.abspath(cat_path))
    with fits.open(cat_path) as h:
        cat = h[1].data
        names = {n.upper() for n in cat.columns.names}
        for col in ("GAL_FILENAME", "GAL_HDU", "PIXEL_SCALE"):
            if col not in names:
                raise InputError(f"{cat_path}: no column {col}; not a GalSim real-galaxy catalogue")
        files = [str(f).strip() for f in cat["GAL_FILENAME"]]
        hdus = np.asarray(cat["GAL_HDU"], int)
        scales = np.asarray(cat["PIXEL_SCALE"], float)
        mags = np.asarray(cat["MAG"], float) if "MAG" in names else np.full(len(files), np.nan)
        ident = np.asarray(cat["IDENT"], np.int64) if "IDENT" in names else np.arange(len(files))
    images = []
    opened = {}
    try:
        for f, hdu in zip(files, hdus):
            path = os.path.join(folder, f)
            if path not in opened:
                if not os.path.exists(path):
                    raise InputError(f"COSMOS image file {path!r} (named in {cat_path}) not found")
                opened[path] = fits.open(path)
            img = np.asarray(opened[path][hdu].data, dtype=float)
            images.append(_prepare_source(img))
    finally:
        for h in opened.values():
            h.close()
    return CosmosSources(tuple(images), scales, mags, ident, cat_path)


def _prepare_source(img: np.ndarray) -> np.ndarray:
    border = max(2, min(img.shape) // 10)
    m = np.ones(img.shape, bool)
    m[border:-border, border:-border] = False
    sky = np.median(img[m])
    sigma = 1.4826 * np.median(np.abs(img[m] - sky))
    out = img - sky
    out[out < sigma] = 0.0  # keep the galaxy, drop the HST noise (it would be lensed too)
    total = out.sum()
    if total <= 0:
        raise InputError("a COSMOS stamp has no flux above its noise")
    return out / total


# -- PSFEx ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PSFExModel:
    """A PSFEx model: ``basis`` (n_terms, h, w), polynomial context, sampling (image px per PSF px)."""

    basis: np.ndarray
    polzero: tuple
    polscal: tuple
    degree: int
    sampling: float
    path: str

    def kernel(self, x: float, y: float, image_pixel_scale: float, pixel_scale: float) -> np.ndarray:
        """The PSF at CCD position (x, y) (px), resampled to ``pixel_scale`` (arcsec/px), unit sum, odd size."""
        from scipy import ndimage

        u = (x - self.polzero[0]) / self.polscal[0]
        v = (y - self.polzero[1]) / self.polscal[1]
        terms = [u**i * v**j for j in range(self.degree + 1) for i in range(self.degree + 1 - j)]
        psf = np.tensordot(np.asarray(terms[: len(self.basis)]), self.basis, axes=1)
        zoom = self.sampling * image_pixel_scale / pixel_scale
        if abs(zoom - 1) > 1e-3:
            psf = ndimage.zoom(psf, zoom, order=3)
        n = psf.shape[0] - (1 - psf.shape[0] % 2)
        psf = psf[:n, :n]
        psf = np.clip(psf, 0, None)
        return psf / psf.sum()


@functools.lru_cache(maxsize=4)
def load_psfex(path: str) -> PSFExModel:
    """Read a PSFEx ``.psf`` file (2-D context, one polynomial group)."""
    from astropy.io import fits

    if not os.path.exists(path):
        raise InputError(f"PSFEx file {path!r} not found")
    try:
        with fits.open(path) as h:
            hdr = h[1].header
            basis = np.asarray(h[1].data["PSF_MASK"][0], dtype=float)
    except (OSError, KeyError, IndexError) as exc:
        raise InputError(f"{path}: not a PSFEx model ({exc})") from None
    if basis.ndim == 2:
        basis = basis[None]
    return PSFExModel(
        basis=basis,
        polzero=(float(hdr.get("POLZERO1", 0.0)), float(hdr.get("POLZERO2", 0.0))),
        polscal=(float(hdr.get("POLSCAL1", 1.0)), float(hdr.get("POLSCAL2", 1.0))),
        degree=int(hdr.get("POLDEG1", 0)),
        sampling=float(hdr.get("PSF_SAMP", 1.0)),
        path=path,
    )


def kernel_fwhm(kernel: np.ndarray, pixel_scale: float) -> float:
    """FWHM (arcsec) of a kernel from its peak-normalised area above half maximum."""
    k = kernel / kernel.max()
    area = float((k >= 0.5).sum()) * pixel_scale**2
    return float(2 * np.sqrt(area / np.pi))


# -- cosmology: Einstein radius of a singular isothermal sphere --------------------------------


@functools.lru_cache(maxsize=2)
def _comoving_table(H0: float = 70.0, Om0: float = 0.3):
    # Built once per process: astropy 8 takes ~24 ms to construct a cosmology.
    from astropy.cosmology import FlatLambdaCDM

    cosmo = FlatLambdaCDM(H0=H0, Om0=Om0)
    z = np.linspace(0.0, 6.0, 1201)
    return z, cosmo.comoving_distance(z).value


def theta_E_sis(sigma_v, z_lens, z_source, H0: float = 70.0, Om0: float = 0.3):
    """Einstein radius (arcsec) of a singular isothermal sphere.

    ``theta_E = 4 pi (sigma_v / c)**2 D_ls / D_s`` with a flat LambdaCDM cosmology
    (H0 km/s/Mpc, Om0); sigma_v in km/s; redshifts below 6.
    """
    z, dc = _comoving_table(H0, Om0)
    c1, c2 = np.interp(z_lens, z, dc), np.interp(z_source, z, dc)
    ratio = np.clip((c2 - c1) / c2, 0.0, None)  # D_ls / D_s in a flat universe
    return 4 * np.pi * (np.asarray(sigma_v) / C_KM_S) ** 2 * ratio * 206264.80624709636
