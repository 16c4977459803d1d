"""Colour composites of simulated rows with their parameters, to judge realism at a glance."""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np
import pandas as pd

__all__ = ["gallery", "colour_composite"]


def colour_composite(image: np.ndarray, bands: Sequence[str], stretch: float = 4.0, q: float = 8.0) -> np.ndarray:
    """An RGB (h, w, 3) float image in [0, 1] from (i, r, g) of one (n_bands, h, w) stamp.

    Each band is divided by its robust sky noise (border MAD), so stamps in any flux unit look
    alike, then combined with Lupton et al.'s asinh stretch (``astropy.visualization.make_lupton_rgb``).
    """
    from astropy.visualization import make_lupton_rgb

    bands = list(bands)
    pick = [b for b in ("i", "r", "g") if b in bands]
    if len(pick) < 3:
        pick = (bands * 3)[-3:][::-1]
    planes = []
    for b in pick:
        x = np.asarray(image[bands.index(b)], dtype=float)
        frame = np.concatenate([x[:4].ravel(), x[-4:].ravel(), x[:, :4].ravel(), x[:, -4:].ravel()])
        sig = 1.4826 * np.median(np.abs(frame - np.median(frame))) or 1.0
        planes.append((x - np.median(frame)) / sig)
    rgb = make_lupton_rgb(*planes, stretch=stretch * 5, Q=q, minimum=-1.0)
    return rgb.astype(float) / 255.0


def gallery(images: np.ndarray, table: pd.DataFrame, path: str | os.PathLike, bands: Sequence[str] = ("g", "r", "i", "z"),
            n: int = 24, columns: int = 6, title: str | None = None, classes: Sequence[str] | None = None) -> str:
    """Write a PNG grid of colour composites, each captioned with its parameters.

    Parameters
    ----------
    images : numpy.ndarray
        (rows, n_bands, stamp, stamp), as :func:`~lensdask.simulate.simulate_rows` returns.
    table : pandas.DataFrame
        Its table (``label``, ``theta_E`` arcsec, ``magnification``, ``arc_snr_<band>``, ...).
    path : str or path
        PNG to write.
    bands : sequence of str
        Band order of ``images``.
    n : int
        Stamps shown (the first ``n``).
    columns : int
        Stamps per row of the grid.
    title : str, optional
    classes : sequence of str, optional
        The store's class names (``label`` indexes them); default ``["non-lens", "lens"]``.

    Captions name the class, and the neighbours and stars of the stamp's scene when recorded.

    Returns
    -------
    str
        The path written.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    classes = list(classes) if classes is not None else ["non-lens", "lens"]
    n = min(n, len(images))
    rows = max(1, -(-n // columns))
    fig, axes = plt.subplots(rows, columns, figsize=(2.2 * columns, 2.55 * rows), squeeze=False)
    snr_band = "g" if "g" in bands else bands[0]
    for ax in axes.ravel():
        ax.axis("off")
    for k in range(n):
        ax = axes.ravel()[k]
        ax.imshow(colour_composite(images[k], bands), origin="lower")
        r = table.iloc[k]
        if r.get("label", 0) == 1:
            text = (f"LENS θE={r['theta_E']:.2f}\" μ={r['magnification']:.1f}\n"
                    f"S/N{snr_band}={r[f'arc_snr_{snr_band}']:.0f} c={r.get(f'contrast_{snr_band}', np.nan):.2f} "
                    f"src {snr_band}={r[f'mag_source_{snr_band}']:.1f}")
        else:
            label = int(r.get("label", 0))
            name = classes[label] if label < len(classes) else f"class {label}"
            real = np.isfinite(r.get("background_index", np.nan))
            text = f"{name} (real cutout)" if real else f"{name} mi={r.get('mag_lens_i', np.nan):.1f}"
        seeing = r.get(f"seeing_{snr_band}", np.nan)
        if np.isfinite(seeing):
            text += f"\nseeing {snr_band} {seeing:.2f}\""
        if np.isfinite(r.get("scene_n_galaxies", np.nan)):
            text += f" nbr {r['scene_n_galaxies']:.0f} star {r['scene_n_stars']:.0f}"
        ax.set_title(text, fontsize=6.5)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path = os.fspath(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
