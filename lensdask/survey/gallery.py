"""A PNG of a few stamps an ingest cut, so a user sees what went into the store."""

from __future__ import annotations

import os

import numpy as np

from ..store import FLAG_EDGE, FLAG_MASKED


def pick_rows(flags: np.ndarray, n: int) -> np.ndarray:
    """Up to ``n`` row indices: clean rows first, then some masked and some edge-padded ones, when there are."""
    flags = np.asarray(flags)
    clean = np.flatnonzero(flags & (FLAG_EDGE | FLAG_MASKED) == 0)
    masked = np.flatnonzero(flags & FLAG_MASKED)
    edge = np.flatnonzero((flags & FLAG_EDGE) & ~(flags & FLAG_MASKED))
    extra = [masked[: max(1, n // 4)], edge[: max(1, n // 6)]]
    n_clean = max(0, n - sum(len(e) for e in extra))
    rows = np.concatenate([clean[:n_clean], *extra])[:n]
    return np.sort(rows)


def ingest_gallery(store, path: str | os.PathLike, *, n: int = 12, columns: int = 6, tile: int | None = None) -> str:
    """Write a PNG grid of true-colour stamps of one written tile, captioned with id and flags.

    Parameters
    ----------
    store : CutoutStore
    path : str or path
        PNG to write.
    n : int
        Stamps shown: mostly clean ones, and some masked and edge-padded ones when the tile has them.
    columns : int
        Stamps per row of the grid.
    tile : int, optional
        Tile index; default the first written tile.

    Returns
    -------
    str
        The path written.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    from ..images import colour_composite

    written = store.written_tiles()
    if not written:
        raise ValueError(f"{store.url} has no written tile to show")
    t = written[0] if tile is None else store.tile_index(tile)
    table = store.read_table(t)
    rows = pick_rows(table["flags"].to_numpy(), n)
    cols = max(1, min(columns, len(rows)))
    nrow = max(1, -(-len(rows) // cols))
    fig, axes = plt.subplots(nrow, cols, figsize=(2.1 * cols, 2.6 * nrow), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, r in zip(axes.ravel(), rows):
        img = store.read_images(t, int(r), int(r) + 1)[0]
        with np.errstate(invalid="ignore", divide="ignore"):  # all-NaN or flat bands of edge stamps
            ax.imshow(colour_composite(img, store.bands), origin="lower")
        f = int(table["flags"].iloc[r])
        what = ", ".join(w for bit, w in ((FLAG_EDGE, "edge"), (FLAG_MASKED, "masked")) if f & bit) or "clean"
        ax.set_title(f"{table['object_id'].iloc[r]}\n{what}", fontsize=7)
    fig.suptitle(
        f"{store.tiles[t]}: {len(rows)} of {len(table)} stamps ({''.join(store.bands)}, "
        f'{store.stamp} px at {store.pixel_scale}"/px)',
        fontsize=8,
    )
    fig.tight_layout()
    path = os.fspath(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
