"""Simulated scenes against the real DES sky: neighbours, brightest neighbour, off-central pixels.

Usage::

    python benchmarks/bench_scenes.py [--n 300] [--seed 1] [--out benchmarks/scenes.png]
                                      [--scene both|config|off] [--data ../shared/data]

Real DES stamps are not isolated galaxies (most hold 1-3 neighbours, satellites or stars), and a
lens finder trained on isolated simulated galaxies learns "extra light = lens". This script measures,
from the pixels alone and with one detection for every set, how crowded simulated stamps are next to
real ones:

(a) the number of detected sources in a stamp other than the central one;
(b) the brightest such neighbour: its i-band magnitude relative to the central source
    (``delta_mag = -2.5 log10(F_neighbour / F_central)``, since the real cubes have relative flux
    units) and its distance from the stamp centre (arcsec);
(c) the distribution of the pixels outside the central galaxy, in units of the stamp's own sky
    noise (1.4826 * MAD of a 4-px border frame), the central galaxy masked as its detected segment
    dilated by a few pixels.

Sets compared:

- ``real galaxies``: the 30 DES cutouts of ``des_galaxies/{g,r,i,z}.fits``, central 45 x 45;
- ``real sky``: the four 45 x 45 corners of the Balrog coadd ``des_balrog/balrog_cutouts_00102.fits``
  (HDU ``COADD``, planes ``deg,g,r,i,z`` per its ``BANDS`` header), away from the injected galaxy
  in the middle: real sky with no chosen central galaxy, for (a) and (c) only;
- ``sim``: ``simulate_rows(range(n), seed)`` with the default configuration (modelled galaxies, e-/s);
- ``sim on real``: the same with ``backgrounds=des_galaxies`` (arcs and scenes on the real cutouts;
  its non-lens rows are those cutouts, plus a scene when ``simulate.scene.on_real``).

With ``--scene both`` (the default) each simulated set is also made with ``scene={"enabled": False}``
(isolated galaxies, the simulator before scenes) when :func:`simulate_rows` takes a ``scene``
argument. Simulated sets are also broken down by label (non-lens, lens, look-alike kinds), because
a lens's arc is light the detection may count as a neighbour.

Detection (numpy/scipy only): subtract the border-frame median (sky), smooth the detection band
(i by default) with a Gaussian of ``--smooth`` px sigma, threshold at ``--nsigma`` times the smoothed
image's own border noise, label 8-connected segments with ``scipy.ndimage.label``, keep those of at
least ``--min-area`` px. A source's flux is the sum of its unsmoothed pixels, its position the
flux-weighted centroid; the central source is the segment holding the stamp centre, else the
nearest segment within 3 px of it.

Writes a 2 x 2 PNG (``--out``) and prints, per set: the median and mean number of neighbours, the
fraction of stamps with at least one, the median brightest-neighbour delta mag and distance (over
stamps that have one), and the fraction of off-central pixels above 3 and 5 sigma (a pure Gaussian
gives 1.35e-3 and 2.9e-7). If the simulated table has ``scene_*`` columns their summary is printed too.
"""

from __future__ import annotations

import argparse
import inspect
import math
import os
import pathlib
import time
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

HERE = pathlib.Path(__file__).resolve().parent
DEFAULT_DATA = HERE.parent.parent / "shared" / "data"
PIXEL_SCALE = 0.263
"""arcsec per pixel, DES coadds and the simulator's default."""
STAMP = 45
"""Stamp side, px."""
BORDER = 4
"""Width of the border frame the sky level and noise are measured in, px."""


# -- detection ------------------------------------------------------------------------------------


def border_pixels(img: np.ndarray, width: int = BORDER) -> np.ndarray:
    """The pixels of the ``width``-px frame around a 2-d image, flattened (each pixel once)."""
    m = np.zeros(img.shape, bool)
    m[:width], m[-width:], m[:, :width], m[:, -width:] = True, True, True, True
    return img[m]


def sky_and_noise(img: np.ndarray, width: int = BORDER) -> tuple[float, float]:
    """Sky level (median) and noise (1.4826 * MAD) of the border frame, in the image's units."""
    b = border_pixels(img, width)
    b = b[np.isfinite(b)]
    med = float(np.median(b))
    return med, float(1.4826 * np.median(np.abs(b - med)))


@dataclass
class Detection:
    """The sources found on one stamp.

    Attributes
    ----------
    snr : numpy.ndarray
        The sky-subtracted detection image in units of its own border noise.
    segments : numpy.ndarray of int
        Segment map (0: background), segments below the minimum area removed.
    flux : numpy.ndarray
        Sum of the unsmoothed sky-subtracted pixels of each kept segment (image units).
    x, y : numpy.ndarray, px
        Flux-weighted centroids (column, row), 0-based.
    area : numpy.ndarray of int, px
    central : int
        Index into ``flux`` of the central source, or -1 when there is none.
    labels : numpy.ndarray of int
        The segment-map label of each source.
    noise : float
        Border noise of the unsmoothed image (image units).
    """

    snr: np.ndarray
    segments: np.ndarray
    flux: np.ndarray
    x: np.ndarray
    y: np.ndarray
    area: np.ndarray
    central: int
    labels: np.ndarray
    noise: float
    extra: dict = field(default_factory=dict)

    @property
    def neighbours(self) -> np.ndarray:
        """Indices of every source but the central one."""
        idx = np.arange(self.flux.size)
        return idx[idx != self.central]


def detect(
    img: np.ndarray, *, smooth: float = 1.0, nsigma: float = 3.0, min_area: int = 5, central_radius: float = 3.0
) -> Detection:
    """Detect sources on one 2-d stamp.

    Parameters
    ----------
    img : numpy.ndarray
        (ny, nx) image, any flux units; the sky is taken as the border-frame median.
    smooth : float, px
        Sigma of the Gaussian the image is smoothed with before thresholding.
    nsigma : float
        Threshold in units of the smoothed image's border noise (1.4826 * MAD).
    min_area : int, px
        Smallest segment kept.
    central_radius : float, px
        A segment is central when it holds the stamp centre, else when it is the nearest one
        with a pixel within this distance of it.

    Returns
    -------
    Detection
    """
    img = np.asarray(img, dtype=np.float64)
    img = np.where(np.isfinite(img), img, 0.0)
    sky, noise = sky_and_noise(img)
    sub = img - sky
    sm = ndimage.gaussian_filter(sub, smooth, mode="nearest") if smooth > 0 else sub
    sm_sky, sm_noise = sky_and_noise(sm)
    noise = noise if noise > 0 else 1.0
    sm_noise = sm_noise if sm_noise > 0 else noise
    seg, n = ndimage.label(sm - sm_sky > nsigma * sm_noise, structure=np.ones((3, 3), int))
    labels = np.arange(1, n + 1)
    area = np.asarray(ndimage.sum_labels(np.ones_like(sub), seg, labels), dtype=np.int64) if n else np.zeros(0, int)
    small = labels[area < min_area]
    if small.size:
        seg[np.isin(seg, small)] = 0
    labels, area = labels[area >= min_area], area[area >= min_area]
    flux = np.asarray(ndimage.sum_labels(sub, seg, labels), dtype=np.float64) if labels.size else np.zeros(0)
    w = np.clip(sub, 0.0, None)
    yy, xx = np.indices(sub.shape, dtype=np.float64)
    if labels.size:
        wsum = np.asarray(ndimage.sum_labels(w, seg, labels), dtype=np.float64)
        wsum = np.where(wsum > 0, wsum, np.nan)
        x = np.asarray(ndimage.sum_labels(w * xx, seg, labels)) / wsum
        y = np.asarray(ndimage.sum_labels(w * yy, seg, labels)) / wsum
    else:
        x = y = np.zeros(0)
    cy, cx = (sub.shape[0] - 1) / 2.0, (sub.shape[1] - 1) / 2.0
    central = -1
    at = seg[int(round(cy)), int(round(cx))]
    if at > 0:
        central = int(np.flatnonzero(labels == at)[0])
    elif labels.size:
        on = seg > 0
        d = np.hypot(yy[on] - cy, xx[on] - cx)
        k = int(np.argmin(d))
        if d[k] <= central_radius:
            central = int(np.flatnonzero(labels == seg[on][k])[0])
    return Detection(
        snr=sub / noise, segments=seg, flux=flux, x=x, y=y, area=area, central=central, labels=labels, noise=noise
    )


@dataclass
class StampMeasures:
    """The benchmark's figures for a set of stamps (one entry per stamp, pixels pooled)."""

    n_neighbours: np.ndarray
    has_central: np.ndarray
    brightest_dmag: np.ndarray
    brightest_dist: np.ndarray
    off_pixels: np.ndarray

    def subset(self, keep: np.ndarray, pixel_owner: np.ndarray | None = None) -> StampMeasures:
        keep = np.asarray(keep, bool)
        pix = self.off_pixels if pixel_owner is None else self.off_pixels[keep[pixel_owner]]
        return StampMeasures(
            self.n_neighbours[keep], self.has_central[keep], self.brightest_dmag[keep], self.brightest_dist[keep], pix
        )


def measure(
    stamps: np.ndarray, *, dilate: int = 3, pixel_scale: float = PIXEL_SCALE, **detect_kw
) -> tuple[StampMeasures, np.ndarray]:
    """Detect on every stamp and collect neighbours and off-central pixels.

    Parameters
    ----------
    stamps : numpy.ndarray
        (n, ny, nx) detection-band images.
    dilate : int, px
        Iterations (3x3) by which the central segment is grown before its pixels are masked.
    pixel_scale : float, arcsec/px
    **detect_kw
        Passed to :func:`detect`.

    Returns
    -------
    measures : StampMeasures
        ``brightest_dmag`` (mag, relative to the central source; NaN without a neighbour, a
        central source or positive fluxes) and ``brightest_dist`` (arcsec from the stamp centre;
        NaN without a neighbour); ``off_pixels`` are the unmasked pixels in units of each
        stamp's border noise, pooled.
    owner : numpy.ndarray of int
        The stamp each of ``off_pixels`` came from.
    """
    n = len(stamps)
    nn = np.zeros(n, np.int64)
    has_c = np.zeros(n, bool)
    dmag = np.full(n, np.nan)
    dist = np.full(n, np.nan)
    pix, owner = [], []
    for k, img in enumerate(stamps):
        det = detect(img, **detect_kw)
        nb = det.neighbours
        nn[k] = nb.size
        has_c[k] = det.central >= 0
        cy, cx = (img.shape[0] - 1) / 2.0, (img.shape[1] - 1) / 2.0
        if nb.size:
            b = nb[np.argmax(det.flux[nb])]
            dist[k] = math.hypot(det.x[b] - cx, det.y[b] - cy) * pixel_scale
            if det.central >= 0 and det.flux[b] > 0 and det.flux[det.central] > 0:
                dmag[k] = -2.5 * math.log10(det.flux[b] / det.flux[det.central])
        mask = np.zeros(img.shape, bool)
        if det.central >= 0:
            mask = det.segments == det.labels[det.central]
            if dilate > 0:
                mask = ndimage.binary_dilation(mask, np.ones((3, 3), bool), iterations=dilate)
        p = det.snr[~mask]
        pix.append(p)
        owner.append(np.full(p.size, k, np.int64))
    pix = np.concatenate(pix) if pix else np.zeros(0)
    owner = np.concatenate(owner) if owner else np.zeros(0, np.int64)
    return StampMeasures(nn, has_c, dmag, dist, pix), owner


def _check_detection(**detect_kw) -> float:
    """Refuse to report figures if the detection misses two sources planted on white noise.

    Returns
    -------
    float
        Spurious sources per stamp of pure white noise (the floor of the neighbour counts).
    """
    rng = np.random.default_rng(0)
    yy, xx = np.indices((STAMP, STAMP), dtype=np.float64)
    c = (STAMP - 1) / 2.0
    img = rng.normal(0.0, 1.0, (STAMP, STAMP))
    img += 400 * np.exp(-((xx - c) ** 2 + (yy - c) ** 2) / (2 * 2.0**2)) / (2 * np.pi * 2.0**2)
    img += 100 * np.exp(-((xx - c - 12) ** 2 + (yy - c + 9) ** 2) / (2 * 1.5**2)) / (2 * np.pi * 1.5**2)
    det = detect(img, **detect_kw)
    nb = det.neighbours
    ok = (
        det.central >= 0
        and nb.size == 1
        and abs(det.x[nb[0]] - c - 12) < 0.5
        and abs(det.y[nb[0]] - c + 9) < 0.5
        and abs(-2.5 * math.log10(det.flux[nb[0]] / det.flux[det.central]) - 2.5 * math.log10(4)) < 0.3
    )
    if not ok:
        raise AssertionError(
            f"detection self-check failed: central {det.central}, sources at "
            f"{list(zip(det.x.round(1), det.y.round(1)))}, fluxes {det.flux.round(1)}"
        )
    return float(np.mean([detect(s, **detect_kw).flux.size for s in rng.normal(0.0, 1.0, (300, STAMP, STAMP))]))


# -- inputs ---------------------------------------------------------------------------------------


def crop(cube: np.ndarray, stamp: int = STAMP) -> np.ndarray:
    """The central ``stamp`` x ``stamp`` pixels of (..., ny, nx)."""
    ny, nx = cube.shape[-2:]
    y0, x0 = (ny - stamp) // 2, (nx - stamp) // 2
    return cube[..., y0 : y0 + stamp, x0 : x0 + stamp]


def real_galaxies(data: pathlib.Path, band: str) -> np.ndarray:
    """(30, 45, 45) central crops of the real DES galaxy cutouts in ``band`` (relative flux units)."""
    from astropy.io import fits

    return crop(np.asarray(fits.getdata(data / "des_galaxies" / f"{band}.fits"), dtype=np.float64))


def real_sky(data: pathlib.Path, band: str) -> np.ndarray:
    """(4, 45, 45) corners of the Balrog coadd in ``band``, away from the injected central galaxy."""
    from astropy.io import fits

    with fits.open(data / "des_balrog" / "balrog_cutouts_00102.fits") as h:
        names = [b.strip() for b in h["COADD"].header["BANDS"].split(",")]
        plane = np.asarray(h["COADD"].data[names.index(band)], dtype=np.float64)
    s = STAMP
    return np.stack([plane[:s, :s], plane[:s, -s:], plane[-s:, :s], plane[-s:, -s:]])


def simulated(n: int, seed: int, *, backgrounds: str | None, scene_off: bool):
    """``simulate_rows(range(n), seed)``: images (n, bands, 45, 45), table and band names."""
    from lensdask import config
    from lensdask.simulate.run import simulate_rows

    kw = {}
    if backgrounds is not None:
        kw["backgrounds"] = backgrounds
    if scene_off:
        kw["scene"] = {"enabled": False}
    images, table = simulate_rows(range(n), seed=seed, **kw)
    return images, table, list(config.get("survey.bands"))


def scene_supported() -> bool:
    from lensdask.simulate.run import simulate_rows

    return "scene" in inspect.signature(simulate_rows).parameters


def class_names(table) -> list[str]:
    try:
        from lensdask import config
        from lensdask.simulate.run import store_classes

        return list(
            store_classes(float(config.get("simulate.lookalike_fraction")), list(config.get("simulate.lookalikes")))
        )
    except Exception:  # an older simulator: two classes
        return ["non-lens", "lens"]


# -- report ---------------------------------------------------------------------------------------


def figures(m: StampMeasures) -> dict:
    """The printed summary of one set."""
    p = m.off_pixels
    fin = np.isfinite(m.brightest_dmag)
    fdist = np.isfinite(m.brightest_dist)
    return {
        "n": int(m.n_neighbours.size),
        "central": float(m.has_central.mean()) if m.n_neighbours.size else math.nan,
        "median_nb": float(np.median(m.n_neighbours)) if m.n_neighbours.size else math.nan,
        "mean_nb": float(np.mean(m.n_neighbours)) if m.n_neighbours.size else math.nan,
        "frac_ge1": float((m.n_neighbours >= 1).mean()) if m.n_neighbours.size else math.nan,
        "dmag": float(np.median(m.brightest_dmag[fin])) if fin.any() else math.nan,
        "dist": float(np.median(m.brightest_dist[fdist])) if fdist.any() else math.nan,
        "gt3": float((p > 3).mean()) if p.size else math.nan,
        "gt5": float((p > 5).mean()) if p.size else math.nan,
    }


def print_table(rows: list[tuple[str, dict]]) -> None:
    w = max(len(name) for name, _ in rows) + 2
    print(
        f"{'set':<{w}}{'stamps':>7}{'central':>8}{'med nb':>8}{'mean nb':>8}{'>=1 nb':>8}"
        f"{'med dmag':>9}{'med dist':>9}{'pix>3s':>9}{'pix>5s':>9}"
    )
    for name, f in rows:
        print(
            f"{name:<{w}}{f['n']:>7}{f['central']:>8.2f}{f['median_nb']:>8.1f}{f['mean_nb']:>8.2f}"
            f'{f["frac_ge1"]:>8.2f}{f["dmag"]:>9.2f}{f["dist"]:>8.1f}"{f["gt3"]:>9.2e}{f["gt5"]:>9.2e}'
        )
    print(
        "central: fraction of stamps with a central source; nb: detected neighbours per stamp; dmag: "
        "brightest neighbour's i mag minus the central's; dist: its distance from the centre; pix>Ns: "
        "fraction of pixels off the (dilated) central segment above N sigma (Gaussian: 1.35e-03, 2.87e-07)"
    )


def print_scene_columns(name: str, table) -> None:
    cols = [c for c in table.columns if str(c).startswith("scene_")]
    if not cols:
        print(f"{name}: the table has no scene_* columns")
        return
    sub = table[cols].astype(float)
    if not np.isfinite(sub.to_numpy()).any():
        print(f"{name}: scene_* columns present, all NaN (no scenes drawn)")
        return
    print(f"{name}: scene_* columns (over rows where finite)")
    for c in cols:
        v = sub[c].to_numpy()
        v = v[np.isfinite(v)]
        if v.size:
            print(
                f"  {c:<24} n={v.size:<5} mean {v.mean():8.3f}  median {np.median(v):8.3f}  "
                f"min {v.min():8.3f}  max {v.max():8.3f}  >0 {np.mean(v > 0):.2f}"
            )


def plot(sets: list[tuple[str, StampMeasures, dict]], path: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(2, 2, figsize=(12, 9), dpi=100)
    a, bd, bm, c = ax[0, 0], ax[0, 1], ax[1, 0], ax[1, 1]
    top = max(int(m.n_neighbours.max()) if m.n_neighbours.size else 0 for _, m, _ in sets)
    edges = np.arange(-0.5, top + 1.5)
    for name, m, style in sets:
        if m.n_neighbours.size:
            a.hist(
                m.n_neighbours,
                bins=edges,
                density=True,
                histtype="step",
                lw=1.6,
                label=f"{name} (n={m.n_neighbours.size})",
                **style,
            )
        for axis, v in ((bd, m.brightest_dist), (bm, m.brightest_dmag)):
            v = np.sort(v[np.isfinite(v)])
            if v.size:
                axis.step(
                    np.r_[v[0], v],
                    np.r_[0, np.arange(1, v.size + 1) / v.size],
                    where="post",
                    lw=1.6,
                    label=f"{name} ({v.size} stamps)",
                    **style,
                )
        p = np.sort(m.off_pixels)
        if p.size:
            xs = np.linspace(-5, 40, 451)
            surv = 1.0 - np.searchsorted(p, xs, side="right") / p.size
            c.step(xs, np.where(surv > 0, surv, np.nan), where="post", lw=1.6, label=name, **style)
    from scipy.stats import norm

    xs = np.linspace(-5, 40, 451)
    c.plot(xs, norm.sf(xs), color="0.6", lw=1, ls=":", label="Gaussian")
    a.set(
        xlabel="detected neighbours per stamp (central source excluded)",
        ylabel="fraction of stamps",
        title="(a) neighbours",
    )
    bd.set(
        xlabel="brightest neighbour's distance from the centre (arcsec)",
        ylabel="CDF (stamps with one)",
        title="(b) brightest neighbour: distance",
    )
    bm.set(
        xlabel="brightest neighbour's i mag minus the central's",
        ylabel="CDF (stamps with one)",
        title="(b) brightest neighbour: delta mag",
    )
    c.set(
        xlabel="pixel / stamp sky noise (1.4826 MAD of the 4-px border)",
        ylabel="fraction of pixels above",
        yscale="log",
        ylim=(1e-6, 1.1),
        title="(c) pixels off the dilated central segment",
    )
    for axis in (a, bd, bm, c):
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(os.fspath(path))
    plt.close(fig)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=300, help="simulated stamps per set (default 300)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", default=str(HERE / "scenes.png"), help="PNG to write (default benchmarks/scenes.png)")
    ap.add_argument(
        "--data",
        default=os.environ.get("LENSDASK_SHARED_DATA", str(DEFAULT_DATA)),
        help="the shared real data folder (default ../shared/data)",
    )
    ap.add_argument(
        "--scene",
        choices=["both", "config", "off"],
        default="both",
        help="simulate with the configured scenes, without them (isolated galaxies), or both",
    )
    ap.add_argument("--band", default="i", help="detection band (default i)")
    ap.add_argument("--smooth", type=float, default=1.0, help="detection smoothing sigma, px (default 1)")
    ap.add_argument("--nsigma", type=float, default=3.0, help="detection threshold, smoothed sigma (default 3)")
    ap.add_argument("--min-area", type=int, default=5, help="smallest segment, px (default 5)")
    ap.add_argument("--dilate", type=int, default=3, help="central-mask dilation, px (default 3)")
    ap.add_argument("--no-real-backgrounds", action="store_true", help="skip the sets on real backgrounds")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    data = pathlib.Path(args.data)
    dkw = dict(smooth=args.smooth, nsigma=args.nsigma, min_area=args.min_area, dilate=args.dilate)
    floor = _check_detection(smooth=args.smooth, nsigma=args.nsigma, min_area=args.min_area)

    real_style = {"color": "k"}
    sets: list[tuple[str, StampMeasures, dict]] = []
    rows: list[tuple[str, dict]] = []
    for name, stamps, style in (
        ("real galaxies", real_galaxies(data, args.band), real_style),
        ("real sky (Balrog corners)", real_sky(data, args.band), {"color": "0.55"}),
    ):
        m, _ = measure(stamps, **dkw)
        if name.startswith("real sky"):
            # no galaxy was chosen to sit at the centre of a sky corner: (b) is undefined there
            m.brightest_dmag[:] = np.nan
            m.brightest_dist[:] = np.nan
        sets.append((name, m, style))
        rows.append((name, figures(m)))

    modes = {"both": [False, True], "config": [False], "off": [True]}[args.scene]
    if True in modes and not scene_supported():
        print("simulate_rows takes no scene argument: simulating as configured only")
        modes = [False]
    bgs = [(None, "sim")] + ([] if args.no_real_backgrounds else [(os.fspath(data / "des_galaxies"), "sim on real")])
    colours = {
        ("sim", False): "tab:blue",
        ("sim", True): "tab:cyan",
        ("sim on real", False): "tab:red",
        ("sim on real", True): "tab:orange",
    }
    scene_tables = []
    for bg, base in bgs:
        for off in modes:
            name = base + (", scenes off" if off else ("" if modes == [False] else ", scenes as configured"))
            ts = time.perf_counter()
            images, table, bands = simulated(args.n, args.seed, backgrounds=bg, scene_off=off)
            secs = time.perf_counter() - ts
            m, owner = measure(images[:, bands.index(args.band)], **dkw)
            style = {"color": colours[(base, off)], "ls": "--" if off else "-"}
            sets.append((name, m, style))
            rows.append((f"{name} [{secs:.0f} s]", figures(m)))
            labels = table["label"].to_numpy()
            classes = class_names(table)
            for lab in np.unique(labels):
                cname = classes[lab] if 0 <= lab < len(classes) else str(lab)
                rows.append((f"  {cname}", figures(m.subset(labels == lab, owner))))
            scene_tables.append((name, table))

    print(
        f"bench_scenes: detection on {args.band} (smooth {args.smooth} px, {args.nsigma} sigma, "
        f">= {args.min_area} px, central mask dilated {args.dilate} px); {args.n} simulated stamps per set, "
        f"seed {args.seed}; {floor:.3f} spurious sources per white-noise stamp"
    )
    print_table(rows)
    for name, table in scene_tables:
        print_scene_columns(name, table)
    out = pathlib.Path(args.out)
    plot(sets, out)
    print(f"figure: {out}  ({time.perf_counter() - t0:.0f} s in all)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
