"""Training data from a cutout store: split, streamed shuffled batches, augmentation, class weights.

The store is read in blocks of its own Zarr chunks (``store.chunk_rows`` rows
of one tile), so each read decompresses whole chunks and nothing else. An epoch
visits the blocks in a random order, fills a shuffle buffer of about
``buffer_rows`` rows from consecutive blocks, shuffles the rows inside it and
cuts batches; the next buffer is read in a background thread while the current
one trains. Memory is bounded by two buffers, whatever the store's size. When
the normalised store fits in ``cache_bytes`` it is kept in memory after the
first read instead; the batches are the same either way.

Every random choice comes from ``(seed, epoch)``, so an epoch's batches do not
depend on what ran before it: a resumed run continues exactly.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pandas as pd
import torch

SKIP, TRAIN, VAL = 0, 1, 2
SELECTION_PARAMS = ("theta_E",)
"""Per-row parameters kept for the selection function, besides every ``arc_snr_<band>``."""


def epoch_rng(seed: int, epoch: int) -> np.random.Generator:
    """The generator of one epoch's block and row order."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(epoch)]))


def epoch_torch_generator(seed: int, epoch: int) -> torch.Generator:
    """The generator of one epoch's augmentations."""
    state = np.random.SeedSequence([int(seed), int(epoch), 1]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(state) & ((1 << 63) - 1))


def split_rows(labels: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Role per row (SKIP for label -1, else TRAIN or VAL), stratified by class.

    Each class with at least two rows gives at least one to validation when
    ``fraction`` > 0.
    """
    role = np.full(labels.shape, SKIP, dtype=np.int8)
    for c in np.unique(labels[labels >= 0]):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_val = int(round(fraction * idx.size))
        if fraction > 0 and idx.size >= 2:
            n_val = min(max(n_val, 1), idx.size - 1)
        role[idx[:n_val]] = VAL
        role[idx[n_val:]] = TRAIN
    return role


class StoreBatches:
    """Labelled rows of a store, split into training and validation, read in blocks.

    Parameters
    ----------
    store : CutoutStore
        A labelled store.
    spec : dict
        Normalisation specification, applied when a block is read
        (:meth:`lensdask.store.CutoutStore.read_normalised`, as evaluation and search apply it).
    validation_fraction : float
        Fraction of each class held out.
    seed : int
        Seeds the split.
    buffer_rows : int
        Rows per shuffle buffer.
    cache_bytes : float
        Keep the normalised blocks in memory when they fit in this many bytes.
    """

    def __init__(
        self,
        store,
        spec: dict,
        validation_fraction: float,
        seed: int,
        buffer_rows: int = 8192,
        cache_bytes: float = 4e9,
    ):
        self.store = store
        self.spec = spec
        self.buffer_rows = max(1, int(buffer_rows))
        chunk = int(store.group["images"].chunks[1])
        keep = [p for p in store.params if p in SELECTION_PARAMS or p.startswith("arc_snr_")]
        blocks, labels, params = [], [], []
        offset = 0
        for t in store.written_tiles():
            table = store.read_table(t)
            n = len(table)
            for start in range(0, n, chunk):
                stop = min(start + chunk, n)
                blocks.append((t, start, stop, offset + start))
            labels.append(table["label"].to_numpy().astype(np.int64))
            params.append(table[keep])
            offset += n
        self.blocks = blocks
        self.labels = np.concatenate(labels) if labels else np.zeros(0, np.int64)
        self.params = pd.concat(params, ignore_index=True) if params else pd.DataFrame(columns=keep)
        self.role = split_rows(self.labels, validation_fraction, np.random.default_rng(seed))
        self.finite = np.ones(self.labels.size, dtype=bool)  # learned as blocks are read
        self._seen = np.zeros(len(blocks), dtype=bool)
        row_bytes = 4 * len(store.bands) * store.stamp**2
        self.cached = self.labels.size * row_bytes <= cache_bytes
        self._cache: dict[int, np.ndarray] = {}
        self.max_rows_held = 0

    # -- counts --------------------------------------------------------------------------
    @property
    def n_train(self) -> int:
        return int((self.role == TRAIN).sum())

    @property
    def n_val(self) -> int:
        return int((self.role == VAL).sum())

    @property
    def n_unlabelled(self) -> int:
        return int((self.labels < 0).sum())

    @property
    def n_nonfinite(self) -> int:
        """Labelled rows skipped for non-finite pixels, among the blocks read so far."""
        return int((~self.finite & (self.role != SKIP)).sum())

    def class_counts(self, role: int = TRAIN) -> np.ndarray:
        n_classes = len(self.store.classes)
        return np.bincount(self.labels[self.role == role], minlength=n_classes)[:n_classes]

    # -- reading -------------------------------------------------------------------------
    def _read(self, k: int) -> np.ndarray:
        if k in self._cache:
            return self._cache[k]
        t, start, stop, a = self.blocks[k]
        # the store's read path for models: what evaluation and search normalise, the same way
        inputs = self.store.read_normalised(t, start, stop, specs=[self.spec])
        if not self._seen[k]:
            self.finite[a : a + stop - start] = ~inputs.bad
            self._seen[k] = True
        x = inputs.inputs[0]  # the finite rows only
        if self.cached:
            self._cache[k] = x
        return x

    def _rows(self, k: int, role: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Normalised images, labels and global row ids of the finite rows of ``role`` in block k."""
        x = self._read(k)  # the block's finite rows, learned by this read
        t, start, stop, a = self.blocks[k]
        ids = np.arange(a, a + stop - start)
        finite = self.finite[ids]
        sel = (self.role[ids] == role) & finite
        return x[sel[finite]], self.labels[ids[sel]], ids[sel]

    def _blocks_with(self, role: int) -> np.ndarray:
        return np.array(
            [k for k, (t, s, e, a) in enumerate(self.blocks) if (self.role[a : a + e - s] == role).any()],
            dtype=np.int64,
        )

    def train_batches(self, epoch: int, seed: int, batch_size: int):
        """Yield ``(images, labels)`` numpy batches of one epoch, shuffled by ``(seed, epoch)``."""
        rng = epoch_rng(seed, epoch)
        order = rng.permutation(self._blocks_with(TRAIN))
        groups, cur, rows = [], [], 0
        for k in order:
            t, s, e, a = self.blocks[k]
            cur.append(int(k))
            rows += e - s
            if rows >= self.buffer_rows:
                groups.append(cur)
                cur, rows = [], 0
        if cur:
            groups.append(cur)

        def load(group):
            parts = [self._rows(k, TRAIN) for k in group]
            return [p[0] for p in parts], [p[1] for p in parts]

        carry_x = np.zeros((0, len(self.store.bands), self.store.stamp, self.store.stamp), np.float32)
        carry_y = np.zeros(0, np.int64)
        with ThreadPoolExecutor(1) as pool:
            nxt = pool.submit(load, groups[0]) if groups else None
            g = 0  # the group loading in nxt
            while nxt is not None:
                xs, ys = nxt.result()
                g += 1
                nxt = pool.submit(load, groups[g]) if g < len(groups) else None
                x = np.concatenate([carry_x, *xs])
                y = np.concatenate([carry_y, *ys])
                self.max_rows_held = max(self.max_rows_held, x.shape[0])
                perm = rng.permutation(x.shape[0])
                x, y = x[perm], y[perm]
                full = (x.shape[0] // batch_size) * batch_size
                for i in range(0, full, batch_size):
                    yield x[i : i + batch_size], y[i : i + batch_size]
                carry_x, carry_y = x[full:], y[full:]
        if carry_y.size:
            yield carry_x, carry_y

    def validation(self):
        """Yield ``(images, labels, row ids)`` of the validation rows, block by block, in store order."""
        for k in self._blocks_with(VAL):
            x, y, ids = self._rows(int(k), VAL)
            if y.size:
                yield x, y, ids


def class_weights(counts: np.ndarray) -> np.ndarray:
    """Inverse-frequency weights ``n / (K n_c)`` of the K classes present (1 for absent ones)."""
    counts = np.asarray(counts, dtype=np.float64)
    present = counts > 0
    w = np.ones_like(counts)
    w[present] = counts[present].sum() / (present.sum() * counts[present])
    return w


def fourier_shift(x: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor) -> torch.Tensor:
    """Shift each stamp by (dy, dx) pixels (any real value) with a Fourier phase ramp.

    Unlike bilinear interpolation, a phase shift keeps the noise power spectrum
    (white sky noise stays white, with the same variance), so shifted training
    stamps look like real ones. The stamp wraps around at its edges (sky there).
    """
    s_y, s_x = x.shape[-2:]
    fy = torch.fft.fftfreq(s_y, device=x.device, dtype=torch.float32)
    fx = torch.fft.rfftfreq(s_x, device=x.device, dtype=torch.float32)
    ramp = (
        dy.float()[:, None, None, None] * fy[None, None, :, None]
        + dx.float()[:, None, None, None] * fx[None, None, None, :]
    )
    phase = torch.polar(torch.ones_like(ramp), -2.0 * math.pi * ramp)
    return torch.fft.irfft2(torch.fft.rfft2(x.float()) * phase, s=(s_y, s_x))


def augment(x: torch.Tensor, g: torch.Generator, shift_px: float = 0.0, dihedral: bool = True) -> torch.Tensor:
    """Sky-respecting augmentation of a batch, on whatever device ``x`` lives.

    One of the 8 symmetries of the pixel grid (flips, 90 degree rotations) per
    stamp (if ``dihedral``), then, if ``shift_px`` > 0, a sub-pixel shift drawn uniformly in
    [-shift_px, shift_px] pixels along each axis (:func:`fourier_shift`). The
    random numbers come from the CPU generator ``g``, so results do not depend
    on the device's RNG.
    """
    n = x.shape[0]
    k = torch.randint(0, 4, (n,), generator=g)
    flip = torch.randint(0, 2, (n,), generator=g).bool()
    shifts = (torch.rand(2, n, generator=g) * 2 - 1) * shift_px
    out = x
    if dihedral:
        x = torch.where(flip.to(x.device)[:, None, None, None], x.flip(-1), x)
        out = x.clone()
        for r in (1, 2, 3):
            sel = (k == r).to(x.device)
            if sel.any():
                out[sel] = torch.rot90(x[sel], r, dims=(-2, -1))
    if shift_px > 0:
        out = fourier_shift(out, shifts[0].to(x.device), shifts[1].to(x.device))
    return out
