"""Pictures of cutouts for people: Lupton colour composites and single-band stamps as PNG bytes.

Pure compute: arrays in, PNG bytes out (matplotlib's Agg writer; no display needed).
"""

from __future__ import annotations

import io

import numpy as np

RGB_BANDS = ("i", "r", "g")
"""Bands mapped to red, green and blue, reddest first (DES convention for gri composites)."""


def _noise(x: np.ndarray, border: int = 4) -> float:
    edge = np.concatenate([x[:border].ravel(), x[-border:].ravel(), x[:, :border].ravel(), x[:, -border:].ravel()])
    edge = edge[np.isfinite(edge)]
    if edge.size == 0:
        return 1.0
    mad = 1.4826 * np.median(np.abs(edge - np.median(edge)))
    return float(mad) if mad > 0 else float(np.std(edge) or 1.0)


def colour_composite(stamp: np.ndarray, bands, *, Q: float = 8.0, stretch: float = 30.0) -> np.ndarray:
    """An RGB (stamp, stamp, 3) uint8 Lupton et al. (2004) composite of one cutout.

    Each band is divided by its own background noise first, so composites look
    alike whatever the flux units (simulated counts/s or survey nanomaggies);
    ``stretch`` is then in units of the noise.

    Parameters
    ----------
    stamp : numpy.ndarray
        (n_bands, s, s) pixels.
    bands : sequence of str
        Band names in ``stamp`` order. Red, green, blue are i, r, g when
        present, else the reddest three in the given order.
    Q, stretch : float
        Asinh softening and linear stretch (noise units) of
        :func:`astropy.visualization.make_lupton_rgb`.
    """
    from astropy.visualization import make_lupton_rgb

    bands = list(bands)
    if all(b in bands for b in RGB_BANDS):
        idx = [bands.index(b) for b in RGB_BANDS]
    else:
        idx = list(range(len(bands)))[::-1][:3]
        idx += [idx[-1]] * (3 - len(idx))
    planes = []
    for k in idx:
        x = np.nan_to_num(np.asarray(stamp[k], dtype=np.float64), nan=0.0)
        planes.append(x / _noise(x))
    return make_lupton_rgb(*planes, stretch=stretch, Q=Q)


def png_bytes(image: np.ndarray, *, scale: int = 3, cmap: str = "gray") -> bytes:
    """PNG of an RGB (s, s, 3) uint8 image or a single band (s, s), enlarged ``scale`` times."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib import pyplot as plt

    img = np.asarray(image)
    if img.ndim == 2:
        x = np.nan_to_num(img.astype(np.float64))
        lo, hi = np.percentile(x, [1, 99.5])
        img = np.clip((x - lo) / (hi - lo if hi > lo else 1.0), 0, 1)
        img = (plt.get_cmap(cmap)(img)[..., :3] * 255).astype(np.uint8)
    img = np.repeat(np.repeat(img, scale, axis=0), scale, axis=1)
    buf = io.BytesIO()
    plt.imsave(buf, img, format="png")
    return buf.getvalue()
