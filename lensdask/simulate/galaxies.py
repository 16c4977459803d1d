"""Real galaxies as identities: fingerprints of cutouts, the fixed train / held-out split, and
the check that a model is never evaluated on a galaxy it was trained on.

A model trained with arcs painted on real DES galaxies (``simulate.backgrounds``) and real
negatives has seen those galaxies, in every rotation and flip (the dihedral augmentation).
Scoring the same galaxies again measures memory, not skill. So galaxies are split by galaxy,
not by cutout: the 30 shared ``des_galaxies`` are divided once into 20 training rows and 10
held-out rows (config ``simulate.galaxy_split``), every simulated store records which real
galaxies it used (provenance ``real_galaxies``), every model card the galaxies it trained on
(``training_galaxies``), and :func:`check_disjoint` refuses an evaluation that would reuse one.

Pure numpy and hashlib; the split is read from ``dask.config`` when called.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence

import numpy as np

from .. import config
from ..errors import LensdaskError

__all__ = [
    "SplitError",
    "fingerprint",
    "fingerprints",
    "dihedral",
    "select_rows",
    "galaxy_split",
    "training_fingerprints",
    "check_disjoint",
    "N_DIHEDRAL",
]

N_DIHEDRAL = 8
"""Rotations by 0, 90, 180, 270 degrees, each with and without a flip."""


class SplitError(LensdaskError):
    """A galaxy selection is invalid, or would put one galaxy in both training and evaluation."""


def dihedral(cutout: np.ndarray, k: int) -> np.ndarray:
    """The ``k``-th of the 8 rotations/flips of a (..., s, s) cutout.

    ``k`` 0-3 rotate by ``90 k`` degrees (``numpy.rot90`` over the last two axes); 4-7 flip
    left-right first and then rotate by ``90 (k - 4)`` degrees. ``k = 0`` is the cutout itself.
    """
    k = int(k)
    if not 0 <= k < N_DIHEDRAL:
        raise ValueError(f"dihedral index must be in 0..7, got {k}")
    x = np.asarray(cutout)
    if k >= 4:
        x = x[..., ::-1]
    return np.rot90(x, k % 4, axes=(-2, -1))


def fingerprint(cutout: np.ndarray) -> str:
    """A hash of one cutout that is the same for all 8 of its rotations and flips.

    The smallest blake2b digest (16 bytes, hex) of the C-contiguous float32 bytes of the 8
    dihedral transforms (:func:`dihedral`), shape included. Exact: two cutouts share a
    fingerprint only if one is a rotation/flip of the other pixel for pixel, so a cutout must
    be hashed as the model sees it (cropped to the model's stamp, float32). Re-encoding (a
    float16 store, another crop) gives a different fingerprint.

    Parameters
    ----------
    cutout : numpy.ndarray
        (n_bands, stamp, stamp) pixels, any flux units (cast to float32).

    Returns
    -------
    str
        32 hexadecimal characters.
    """
    x = np.asarray(cutout, dtype=np.float32)
    if x.ndim != 3 or x.shape[1] != x.shape[2]:
        raise ValueError(f"a cutout is (n_bands, stamp, stamp), got shape {x.shape}")
    digests = []
    for k in range(N_DIHEDRAL):
        t = np.ascontiguousarray(dihedral(x, k))
        h = hashlib.blake2b(digest_size=16)
        h.update(repr(t.shape).encode())
        h.update(t.tobytes())
        digests.append(h.hexdigest())
    return min(digests)


def fingerprints(images: np.ndarray) -> list[str]:
    """:func:`fingerprint` of every cutout of a (n, n_bands, stamp, stamp) array."""
    images = np.asarray(images)
    if images.ndim != 4:
        raise ValueError(f"images are (n, n_bands, stamp, stamp), got shape {images.shape}")
    return [fingerprint(images[i]) for i in range(len(images))]


def galaxy_split() -> dict:
    """The configured split of the shared ``des_galaxies`` (config ``simulate.galaxy_split``).

    Returns
    -------
    dict
        ``train`` and ``heldout``: sorted lists of row indices (cube index 0..29), disjoint.

    Raises
    ------
    SplitError
        A row is in both lists, or a list is missing.
    """
    cfg = config.get("simulate.galaxy_split") or {}
    try:
        split = {name: sorted(int(i) for i in cfg[name]) for name in ("train", "heldout")}
    except (KeyError, TypeError, ValueError) as exc:
        raise SplitError(
            f"config simulate.galaxy_split needs lists 'train' and 'heldout' of row indices ({exc})"
        ) from None
    both = sorted(set(split["train"]) & set(split["heldout"]))
    if both:
        raise SplitError(f"config simulate.galaxy_split puts rows {both} in both 'train' and 'heldout'")
    return split


def select_rows(spec, n: int) -> np.ndarray:
    """Resolve a galaxy selection to row indices of a set of ``n`` cutouts.

    Parameters
    ----------
    spec : None, str, int or sequence of int
        ``None`` or ``"all"``: every row; ``"train"`` / ``"heldout"``: the configured split
        (:func:`galaxy_split`, rows of the shared ``des_galaxies``); ``"a:b"`` or ``"a:b:step"``:
        a slice (``":10"``, ``"20:"`` too); ``"1,4,7"``, an int or a sequence of ints: those rows.
    n : int
        Number of cutouts in the set.

    Returns
    -------
    numpy.ndarray
        (k,) int64 row indices, in the order given (a slice or split in increasing order).

    Raises
    ------
    SplitError
        An unknown name, a malformed list or slice, a row outside ``0..n-1``, a repeated row, or
        an empty selection.
    """
    n = int(n)
    if spec is None or (isinstance(spec, str) and spec.strip().lower() == "all"):
        return np.arange(n, dtype=np.int64)
    what = repr(spec)
    if isinstance(spec, str):
        s = spec.strip().lower()
        if s in ("train", "heldout"):
            rows = galaxy_split()[s]
            what = f"{s!r} (config simulate.galaxy_split)"
        elif ":" in s:
            try:
                parts = [int(p) if p.strip() else None for p in s.split(":")]
            except ValueError:
                raise SplitError(
                    f"galaxies {spec!r}: a slice is 'start:stop' or 'start:stop:step' of integers"
                ) from None
            if len(parts) > 3 or any(p is not None and p < 0 for p in parts):
                raise SplitError(
                    f"galaxies {spec!r}: a slice is 'start:stop' or 'start:stop:step' of non-negative integers"
                )
            start, stop = parts[0] or 0, parts[1] if parts[1] is not None else n
            step = parts[2] if len(parts) == 3 and parts[2] is not None else 1
            if step < 1:
                raise SplitError(f"galaxies {spec!r}: the step must be positive")
            if stop > n or start >= n:
                raise SplitError(f"galaxies {spec!r}: out of range for {n} cutouts (rows 0..{n - 1})")
            rows = list(range(start, stop, step))
        else:
            try:
                rows = [int(p) for p in s.split(",") if p.strip()]
            except ValueError:
                raise SplitError(
                    f"galaxies {spec!r}: use 'all', 'train', 'heldout', a slice 'a:b' or comma-separated row indices"
                ) from None
    elif isinstance(spec, (int, np.integer)):
        rows = [int(spec)]
    else:
        try:
            rows = [int(v) for v in spec]
        except (TypeError, ValueError):
            raise SplitError(f"galaxies {spec!r}: not a selection of rows") from None
    rows = np.asarray(rows, dtype=np.int64)
    if rows.size == 0:
        raise SplitError(f"galaxies {what} selects no rows")
    bad = rows[(rows < 0) | (rows >= n)]
    if bad.size:
        raise SplitError(
            f"galaxies {what}: rows {sorted(set(bad.tolist()))} are out of range for {n} cutouts (rows 0..{n - 1})"
        )
    if np.unique(rows).size != rows.size:
        dup = sorted({int(r) for r in rows if (rows == r).sum() > 1})
        raise SplitError(f"galaxies {what}: rows {dup} are given more than once")
    return rows


def _records(tg) -> list:
    if not tg:
        return []
    return [tg] if isinstance(tg, dict) else list(tg)


def training_galaxies(real_galaxies: dict | None, parent_card: dict | None = None):
    """A model card's ``training_galaxies``: the training store's provenance ``real_galaxies``.

    A model fine-tuned from a lensdask checkpoint (``parent_card``) has also seen the galaxies
    its parent trained on, so those are added.

    Returns
    -------
    dict or list
        The one record (``source``, ``rows``, ``fingerprints``) when there is one, a list of
        them when there are several, ``[]`` when the model saw no real galaxy.
    """
    records = _records(real_galaxies) + _records((parent_card or {}).get("training_galaxies"))
    return records[0] if len(records) == 1 else records


def training_fingerprints(card: dict) -> set[str]:
    """The fingerprints of the real galaxies a model trained on (card ``training_galaxies``).

    ``training_galaxies`` is the training store's provenance ``real_galaxies``: a dict with
    ``fingerprints`` (or a list of such dicts, or of fingerprints); absent or empty gives none.
    """
    tg = card.get("training_galaxies") or []
    if isinstance(tg, dict):
        tg = [tg]
    out: set[str] = set()
    for item in tg:
        if isinstance(item, str):
            out.add(item)
        elif isinstance(item, dict):
            out.update(str(f) for f in item.get("fingerprints") or [])
    return out


def check_disjoint(card: dict, fps: Sequence[str], names: Iterable | None = None) -> None:
    """Refuse to evaluate a model on real galaxies it was trained on.

    Parameters
    ----------
    card : dict
        A model card; its ``training_galaxies`` (see :func:`training_fingerprints`).
    fps : sequence of str
        :func:`fingerprint` of every cutout to be evaluated.
    names : iterable, optional
        What to call each cutout in the error (e.g. its row index); default its position.

    Raises
    ------
    SplitError
        Some cutouts are among the training galaxies (in any rotation or flip); the message
        names them and the model.
    """
    trained = training_fingerprints(card)
    if not trained:
        return
    names = list(range(len(fps))) if names is None else list(names)
    hit = [name for name, fp in zip(names, fps) if fp in trained]
    if hit:
        shown = ", ".join(str(h) for h in hit[:20]) + (f", ... ({len(hit)} in all)" if len(hit) > 20 else "")
        raise SplitError(
            f"model {card.get('model_id', card.get('arch', '?'))} was trained on real galaxies that are also "
            f"being evaluated: rows {shown}. A split that puts a galaxy in both training and evaluation is "
            "refused; evaluate on galaxies the model never saw (e.g. --galaxies heldout)"
        )
