"""What quantisation does to the scores, beside what other small changes of the pixels do.

For a mock survey (float32 store, then converted to the quantised default) and for the 240 real
DES galaxy cutouts of ``../shared/data/des_galaxies`` (30 galaxies x 8 orientations), scores the
cutouts with the default model as stored in float32 and after
  * quantisation (the store's default step, 0.095 sigma rms): decoded pixels, and the model inputs
    search reads (normalised straight from the codes with the sky statistics stored at write time),
  * the same rms of extra Gaussian noise (independent draw),
  * 0.01 sigma of extra Gaussian noise,
  * a float16 round trip (``store.dtype: float16``, ~5e-4 relative),
and prints the distribution of |score change|, the share of rows within 1e-3, and (mock survey)
AUROC against the truth. Run:

    python benchmarks/bench_store_science.py                       # 4 tiles x 500 cutouts, 2% lenses
    python benchmarks/bench_store_science.py --tiles 2 --per-tile 250
"""

from __future__ import annotations

import argparse
import os
import pathlib
import tempfile

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiles", type=int, default=4)
    ap.add_argument("--per-tile", type=int, default=500)
    ap.add_argument("--lens-fraction", type=float, default=0.02)
    ap.add_argument("--galaxies", default=str(pathlib.Path(__file__).resolve().parents[2] / "shared/data/des_galaxies"))
    a = ap.parse_args()

    import dask
    import pandas as pd

    from lensdask.model import load_checkpoint
    from lensdask.model.infer import forward_proba, predict_proba
    from lensdask.model.metrics import auroc
    from lensdask.quantise import measure_noise
    from lensdask.store import create_store, open_store
    from lensdask.storeadmin import convert
    from lensdask.survey import mock_survey

    model, card = load_checkpoint(None)[:2]
    lens = card["lens_class"]

    def scores(x):
        return predict_proba(model, card, x, batch_size=64)[:, lens].astype(np.float64)

    def read_as_search_does(store):
        """Lens scores of a store's rows from its own model inputs (quantised: normalised from the codes)."""
        out = []
        size = int(card.get("input_size") or card["stamp"])
        for t in store.written_tiles():
            inp = store.read_normalised(t, specs=[card.get("normalisation")])
            assert not inp.bad.any()
            p = forward_proba(
                model, inp.inputs[0], batch_size=64, device="cpu", size=None if size == int(card["stamp"]) else size
            )
            out.append(p[:, lens].astype(np.float64))
        return np.concatenate(out)

    def variants(x, y, keys):
        _, sigma = measure_noise(x, 4)
        rng = np.random.default_rng(1)

        def noise(rms):
            return x + (rng.normal(0, 1, x.shape) * rms * sigma[..., None, None]).astype(np.float32)

        rms = float(np.sqrt(np.mean(((y - x) / sigma[..., None, None]) ** 2)))
        return rms, {
            "quantised, decoded pixels": y,
            f"Gaussian noise, {rms:.3f} sigma rms": noise(rms),
            "Gaussian noise, 0.01 sigma rms": noise(0.01),
            "float16 round trip": x.astype(np.float16).astype(np.float32),
        }

    def report(name, x, y, truth=None, from_codes=None):
        a0 = scores(x)
        rms, vs = variants(x, y, None)
        if from_codes is not None:  # scores, not pixels: the quantised store as search reads it
            vs = {"quantised, normalised from the codes": from_codes, **vs}
        print(f"\n{name}: {len(x)} cutouts; quantisation error {rms:.4f} sigma rms")
        print(
            f"  {'change of the pixels':38s} {'median':>9s} {'p90':>9s} {'p99':>9s} {'p99.9':>9s} {'max':>9s} "
            f"{'<=1e-3':>7s}" + (f" {'AUROC':>7s}" if truth is not None else "")
        )
        if truth is not None:
            print(
                f"  {'none (float32 store)':38s} {'':>9s} {'':>9s} {'':>9s} {'':>9s} {'':>9s} {'':>7s} "
                f"{auroc(truth, a0):7.4f}"
            )
        for label, v in vs.items():
            s = v if label.endswith("from the codes") else scores(v)
            d = np.abs(s - a0)
            q = np.quantile(d, [0.5, 0.9, 0.99, 0.999])
            line = (
                f"  {label:38s} {q[0]:9.2e} {q[1]:9.2e} {q[2]:9.2e} {q[3]:9.2e} {d.max():9.2e} "
                f"{(d <= 1e-3).mean():7.1%}"
            )
            if truth is not None:
                line += f" {auroc(truth, s):7.4f}"
            print(line)

    work = tempfile.mkdtemp(prefix="bench_store_science-")
    with dask.config.set({"lensdask.store.quantise.step": 0}):
        f, truth_path = mock_survey(
            os.path.join(work, "f32.zarr"), a.tiles, a.per_tile, a.lens_fraction, seed=5, progress=False
        )
    q, _ = convert(os.path.join(work, "f32.zarr"), os.path.join(work, "q.zarr"))
    cat = f.read_catalog().merge(
        pd.read_parquet(truth_path)[["tile", "object_id", "is_lens"]], on=["tile", "object_id"]
    )
    x = np.concatenate([f.read_images(t) for t in f.written_tiles()])
    y = np.concatenate([q.read_images(t) for t in q.written_tiles()])
    report(
        f"mock survey ({a.tiles} tiles x {a.per_tile}, {int(cat['is_lens'].sum())} lenses)",
        x,
        y,
        cat["is_lens"].to_numpy().astype(int),
        from_codes=read_as_search_does(q),
    )

    if os.path.isdir(a.galaxies):
        from lensdask.simulate.galaxies import dihedral
        from lensdask.simulate.inputs import load_backgrounds

        bg = load_backgrounds(a.galaxies, tuple(card["bands"]), 0.263, int(card["stamp"]))
        x = np.concatenate([dihedral(bg.images, k) for k in range(8)]).astype(np.float32)
        s = create_store(
            os.path.join(work, "real.zarr"),
            tiles=["real"],
            capacity=len(x),
            bands=card["bands"],
            pixel_scale=0.263,
            stamp=int(card["stamp"]),
        )
        s.write_tile(0, x, pd.DataFrame({"object_id": np.arange(len(x)), "ra": 0.0, "dec": 0.0}))
        r = open_store(s.url)
        report("real DES galaxies (30 x 8 orientations)", x, r.read_images(0), from_codes=read_as_search_does(r))


if __name__ == "__main__":
    main()
