"""A cascade against its main model alone, end to end on one mock survey, in one run; optionally an ensemble.

Makes a mock DES survey (injected lenses and look-alikes, truth table kept apart), then times, in
this process and one after the other with every model already loaded:

  * ``search()`` with the main model alone (every cutout through the main model),
  * ``search()`` with ``--prefilter PREFILTER:KEEP`` in front of it (the cascade),

(``--repeat N``: N interleaved runs of each, the best time of each counting), and prints the cost
per cutout of each and their ratio (cascade / alone), and the completeness
of the cascade relative to the main model alone: of the injected lenses the main model alone
scores at or above the threshold, the share the cascade still scores there (and how many it
lost). With ``--audit`` a third, untimed cascade run gets the truth table and reports what its
own audit says it lost (it must agree). With ``--ensemble-with MODEL`` it also searches with
the main model and MODEL together (mean and rank average) and prints each model's AUROC on the
survey beside the ensemble's.

``--main`` is a model directory, or an architecture name (``vit-base``): then an untrained model
of that shape is made, which is valid for the cost but says nothing about completeness. Run::

    python benchmarks/bench_cascade.py --main vit-base --tiles 2 --per-tile 400          # cost
    python benchmarks/bench_cascade.py --main MODEL_DIR --tiles 12 --per-tile 1000 --audit \\
        --ensemble-with default                                                        # completeness
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time


def _model(spec: str, tmp: str) -> tuple[str | None, bool]:
    """A model directory for ``spec`` (a directory, ``default`` or an architecture) and whether it is untrained."""
    from lensdask.model.architectures import ARCHITECTURES
    from lensdask.model.checkpoint import untrained_checkpoint

    if spec == "default":
        return None, False
    if spec in ARCHITECTURES and not os.path.isdir(spec):
        path = os.path.join(tmp, f"untrained-{spec}")
        untrained_checkpoint(path, spec, seed=0)
        return path, True
    return spec, False


def _found(scores, truth, threshold: float) -> set:
    """Object ids of injected lenses scored at or above ``threshold``."""
    lens_ids = set(truth.loc[truth["is_lens"].astype(bool), "object_id"])
    hit = scores[(scores["score"] >= threshold) & scores["object_id"].isin(lens_ids)]
    return set(hit["object_id"])


def main(argv: list[str] | None = None) -> dict:
    import pandas as pd
    import torch

    from lensdask import mock_survey, search
    from lensdask.demo import score_against_truth
    from lensdask.model.checkpoint import read_card, resolve_model_dir
    from lensdask.search.worker import get_model

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--main", default="vit-base", help="main model: a directory, 'default' or an architecture")
    ap.add_argument("--prefilter", default="default", help="prefilter model: a directory or 'default'")
    ap.add_argument("--keep", type=float, default=0.1, help="share of each tile the prefilter passes on")
    ap.add_argument("--prefilter-threshold", type=float, default=None, help="config search.prefilter.threshold")
    ap.add_argument("--threshold", type=float, default=0.5, help="lens probability of a candidate")
    ap.add_argument("--tiles", type=int, default=2)
    ap.add_argument("--per-tile", type=int, default=400)
    ap.add_argument("--lens-fraction", type=float, default=0.01)
    ap.add_argument("--lookalike-fraction", type=float, default=0.05)
    ap.add_argument("--seed", type=int, default=15)
    ap.add_argument("--batch-size", default="auto")
    ap.add_argument("--repeat", type=int, default=1, help="interleaved runs of each; the best time of each counts")
    ap.add_argument("--audit", action="store_true", help="also run the cascade with the truth table (untimed)")
    ap.add_argument("--ensemble-with", metavar="MODEL", help="also search with the main model and MODEL together")
    ap.add_argument("--json", help="write the results here")
    a = ap.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        main_dir, untrained = _model(a.main, tmp)
        pre_dir, _ = _model(a.prefilter, tmp)
        zarr = os.path.join(tmp, "des.zarr")
        t0 = time.perf_counter()
        _, truth_path = mock_survey(
            zarr,
            a.tiles,
            a.per_tile,
            a.lens_fraction,
            a.seed,
            lookalike_fraction=a.lookalike_fraction,
            client=None,
            progress=False,
        )
        t_mock = time.perf_counter() - t0
        truth = pd.read_parquet(truth_path)
        for d in (main_dir, pre_dir):  # load once in this process, as a search worker would
            card = read_card(resolve_model_dir(d))
            get_model(str(resolve_model_dir(d)), card["sha256"], "cpu")
        common = dict(
            client=None,
            progress=False,
            crossmatch=False,
            report=False,
            threshold=a.threshold,
            floor=0.0,
            device="cpu",
            batch_size=a.batch_size,
        )
        prefilter = (pre_dir or "default", a.keep)

        t_alone = t_casc = float("inf")
        for r in range(a.repeat):  # interleaved, best of each: the machine is shared and noisy
            t0 = time.perf_counter()
            alone = search(zarr, main_dir, os.path.join(tmp, f"alone-{r}"), **common)
            t_alone = min(t_alone, time.perf_counter() - t0)
            t0 = time.perf_counter()
            casc = search(
                zarr,
                main_dir,
                os.path.join(tmp, f"cascade-{r}"),
                prefilter=prefilter,
                prefilter_threshold=a.prefilter_threshold,
                **common,
            )
            t_casc = min(t_casc, time.perf_counter() - t0)

        rows = alone.summary["rows"]
        kept_alone = _found(alone.scores(), truth, a.threshold)
        kept_casc = _found(casc.scores(), truth, a.threshold)
        lost = kept_alone - kept_casc
        injected = int(truth["is_lens"].sum())
        res = {
            "machine": f"{platform.node()} {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
            f"torch {torch.__version__} ({torch.get_num_threads()} threads), no GPU"
            if not torch.cuda.is_available()
            else "GPU present",
            "command": "python benchmarks/bench_cascade.py " + " ".join(sys.argv[1:] if argv is None else argv),
            "main": a.main,
            "main_model_id": alone.summary["models"][0],
            "main_untrained": untrained,
            "prefilter_model_id": casc.summary["prefilter"]["model_id"],
            "keep_fraction": a.keep,
            "prefilter_threshold": casc.summary["prefilter"]["threshold"],
            "threshold": a.threshold,
            "tiles": a.tiles,
            "cutouts": rows,
            "repeat": a.repeat,
            "injected_lenses": injected,
            "mock_survey_seconds": round(t_mock, 1),
            "alone_seconds": round(t_alone, 2),
            "cascade_seconds": round(t_casc, 2),
            "alone_ms_per_cutout": round(1e3 * t_alone / rows, 3),
            "cascade_ms_per_cutout": round(1e3 * t_casc / rows, 3),
            "cost_ratio": round(t_casc / t_alone, 4),
            "speedup": round(t_alone / t_casc, 2),
            "stages": casc.summary["stages"],
            "passed_by_threshold_only": casc.summary["prefilter"]["passed_by_threshold_only"],
            "lenses_kept_alone": len(kept_alone),
            "lenses_kept_cascade": len(kept_casc),
            "lenses_lost": len(lost),
            "lenses_gained": len(kept_casc - kept_alone),
            "completeness_alone": len(kept_alone) / injected if injected else None,
            "completeness_cascade": len(kept_casc) / injected if injected else None,
            "completeness_ratio": (len(kept_alone & kept_casc) / len(kept_alone)) if kept_alone else None,
        }
        if a.audit:
            audited = search(
                zarr,
                main_dir,
                os.path.join(tmp, "audit"),
                prefilter=prefilter,
                prefilter_threshold=a.prefilter_threshold,
                truth=truth_path,
                **common,
            )
            res["audit"] = audited.summary["audit"]
        if a.ensemble_with:
            other_dir, _ = _model(a.ensemble_with, tmp)
            ens = {}
            for combine in ("mean", "rank"):
                r = search(
                    zarr,
                    [main_dir, other_dir],
                    os.path.join(tmp, f"ens-{combine}"),
                    combine=combine,
                    **dict(common, threshold=0.5),
                )
                sc = r.scores()
                if combine == "mean":
                    for col in [c for c in sc.columns if c.startswith("score_")]:
                        one = sc[["object_id", col]].rename(columns={col: "score"})
                        ens[col[len("score_") :]] = score_against_truth(one, truth, 0.5)["auroc"]
                ens[f"ensemble_{combine}"] = score_against_truth(sc, truth, 0.5)["auroc"]
            singles = [v for k, v in ens.items() if not k.startswith("ensemble_")]
            res["auroc"] = ens
            res["ensemble_at_least_best_single"] = {
                k: bool(ens[k] >= max(singles)) for k in ("ensemble_mean", "ensemble_rank")
            }
    print(
        f"{res['cutouts']} cutouts in {a.tiles} tiles, {injected} injected lenses; main {res['main_model_id']}"
        f"{' (untrained: cost only)' if untrained else ''}, prefilter {res['prefilter_model_id']} keeping "
        f"{a.keep:g} (+ p >= {res['prefilter_threshold']:g})"
    )
    print(f"  main alone   {res['alone_seconds']:8.2f} s  {res['alone_ms_per_cutout']:8.3f} ms/cutout")
    print(
        f"  cascade      {res['cascade_seconds']:8.2f} s  {res['cascade_ms_per_cutout']:8.3f} ms/cutout  "
        f"(prefilter saw {res['stages']['prefilter']}, main {res['stages']['main']})"
    )
    print(f"  cost ratio cascade/alone {res['cost_ratio']:.4f}  (speed-up {res['speedup']:.2f}x)")
    print(
        f"  lenses at p >= {a.threshold:g}: alone {res['lenses_kept_alone']}, cascade {res['lenses_kept_cascade']}, "
        f"lost {res['lenses_lost']}; completeness ratio "
        f"{res['completeness_ratio'] if res['completeness_ratio'] is None else round(res['completeness_ratio'], 4)}"
    )
    if "audit" in res:
        print(f"  audit (cascade run with the truth table): {res['audit']}")
    if "auroc" in res:
        print("  AUROC on the survey: " + ", ".join(f"{k} {v:.4f}" for k, v in res["auroc"].items()))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=2, default=float)
    return res


if __name__ == "__main__":
    main()
