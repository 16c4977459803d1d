"""Colour composites of simulated rows with their parameters, to judge realism at a glance."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import pandas as pd

from ..deprecation import renamed_function

__all__ = ["gallery_png", "colour_composite"]


def colour_composite(image: np.ndarray, bands: Sequence[str], noise: float | None = None) -> np.ndarray:
    """An RGB (h, w, 3) float image in [0, 1]: the review's true colour
    (:func:`lensdask.images.colour_composite`).

    Fluxes times fixed per-band scales (config ``review.colour.scales``), so colour follows flux
    ratios; ``noise`` (flux units) sets the brightness (default: this stamp's sky noise).
    """
    from ..images import colour_composite as true_colour

    return true_colour(image, bands, noise=noise).astype(float) / 255.0


def gallery_png(
    images: np.ndarray,
    table: pd.DataFrame,
    path: str | os.PathLike,
    bands: Sequence[str] = ("g", "r", "i", "z"),
    n: int = 24,
    columns: int = 6,
    title: str | None = None,
    classes: Sequence[str] | None = None,
) -> str:
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
    from ..images import sky_noise

    # Captions are up to three lines above each stamp: leave them room so no title overlaps the row above.
    fig, axes = plt.subplots(rows, columns, figsize=(2.2 * columns, 2.9 * rows + (0.4 if title else 0)), squeeze=False)
    noise = sky_noise(np.asarray(images[:n]), bands) if n else 1.0  # one brightness scale for the whole grid
    snr_band = "g" if "g" in bands else bands[0]
    for ax in axes.ravel():
        ax.axis("off")
    for k in range(n):
        ax = axes.ravel()[k]
        ax.imshow(colour_composite(images[k], bands, noise=noise), origin="lower")
        r = table.iloc[k]
        if r.get("label", 0) == 1:
            text = (
                f'LENS θE={r["theta_E"]:.2f}" μ={r["magnification"]:.1f}\n'
                f"S/N{snr_band}={r[f'arc_snr_{snr_band}']:.0f} c={r.get(f'contrast_{snr_band}', np.nan):.2f} "
                f"src {snr_band}={r[f'mag_source_{snr_band}']:.1f}"
            )
        else:
            label = int(r.get("label", 0))
            name = classes[label] if label < len(classes) else f"class {label}"
            real = np.isfinite(r.get("background_index", np.nan))
            text = f"{name} (real cutout)" if real else f"{name} mi={r.get('mag_lens_i', np.nan):.1f}"
        seeing = r.get(f"seeing_{snr_band}", np.nan)
        if np.isfinite(seeing):
            text += f'\nseeing {snr_band} {seeing:.2f}"'
        if np.isfinite(r.get("scene_n_galaxies", np.nan)):
            text += f" nbr {r['scene_n_galaxies']:.0f} star {r['scene_n_stars']:.0f}"
        ax.set_title(text, fontsize=6.5)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout(h_pad=1.0)
    path = os.fspath(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


gallery = renamed_function(gallery_png, "lensdask.simulate.gallery")
"""Deprecated name of :func:`gallery_png`."""
