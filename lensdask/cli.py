"""The ``lensdask`` command: one thin subcommand per public API function.

``main(argv) -> int`` parses, calls the function of the same name, prints a short
report and returns the exit status: 0 success, 1 some tiles failed, 2 bad input.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

from . import checks as _checks
from .errors import LensdaskError

if TYPE_CHECKING:
    from .simulate.constraints import RejectionStats
    from .store import CutoutStore


class _arg:
    """argparse types: a bad value is refused with one line (exit 2) before any work starts."""

    count = staticmethod(_checks.arg_type(_checks.count))
    non_negative_int = staticmethod(_checks.arg_type(_checks.non_negative_int))
    fraction = staticmethod(_checks.arg_type(_checks.fraction))
    positive = staticmethod(_checks.arg_type(_checks.positive))
    non_negative = staticmethod(_checks.arg_type(_checks.non_negative))
    finite = staticmethod(_checks.arg_type(_checks.finite))
    batch_size = staticmethod(_checks.arg_type(_checks.batch_size))
    orientations = staticmethod(_checks.arg_type(_checks.int_range(1, 8)))
    prefilter = staticmethod(_checks.arg_type(_checks.prefilter_spec))

    @staticmethod
    def cluster(text):
        from .cluster import parse_spec

        return _checks.arg_type(lambda t: (parse_spec(t), t)[1])(text)

    @staticmethod
    def cluster_or_none(text):
        return text if text == "none" else _arg.cluster(text)

    @staticmethod
    def quantise_step(text):
        from .store import MAX_STEP

        v = _checks.arg_type(_checks.non_negative)(text)
        if v > MAX_STEP:
            raise argparse.ArgumentTypeError(f"quantisation step {text!r} must be at most {MAX_STEP} sigma")
        return v

    @staticmethod
    def adapt(text):
        from .cluster import parse_adapt

        return _checks.arg_type(lambda t: (parse_adapt(t), t)[1])(text)


class _Parser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one line on stderr and exit status 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")


@dataclass(frozen=True)
class _ClusterChoice:
    """Where a fan-out command's tasks run: its --cluster SPEC, --jobs N and --adapt MIN:MAX, read together."""

    spec: str = "local"
    jobs: int | None = None
    adapt: str | None = None

    @classmethod
    def of(cls, a: argparse.Namespace) -> _ClusterChoice:
        return cls(str(a.cluster or "local"), getattr(a, "jobs", None), getattr(a, "adapt", None))


def _cluster_arg(p: argparse.ArgumentParser) -> None:
    """--cluster SPEC, --jobs N, --adapt MIN:MAX: the options of every command that fans out."""
    g = p.add_argument_group("where tasks run")
    g.add_argument(
        "--cluster",
        default="local",
        metavar="SPEC",
        type=_arg.cluster,
        help="'local' (a LocalCluster, default), a scheduler address tcp://HOST:PORT, or a batch system: "
        "'htcondor', 'htcondor-gpu', 'slurm', 'slurm-gpu' (profiles in lensdask/jobqueue.yaml), "
        "'htcondor:PROFILE' or 'slurm:PROFILE'",
    )
    g.add_argument(
        "--jobs",
        type=_arg.count,
        metavar="N",
        help="batch systems: keep N worker jobs running, replacing any that end (config cluster.jobs)",
    )
    g.add_argument(
        "--adapt",
        metavar="MIN:MAX",
        type=_arg.adapt,
        help="batch systems: scale between MIN and MAX worker jobs with the work (instead of --jobs)",
    )


SURVEY_NAMES = "des, legacy-dr10, hsc-pdr3, lsst, euclid-vis; config lensdask.surveys"


def _survey_arg(p: argparse.ArgumentParser, what: str, default: str | None = "des") -> None:
    """--survey NAME: the survey profile of a command (lensdask.survey.profiles); an unknown name exits 2."""
    p.add_argument(
        "--survey",
        metavar="NAME",
        default=default,
        help=f"survey profile ({SURVEY_NAMES}) {what} (default: {default or 'the survey the store records'})",
    )


def _adapt_survey_arg(p: argparse.ArgumentParser) -> None:
    """--adapt-survey: another survey's cutouts scored by an adapted model (pretrained.adapt_to_survey)."""
    p.add_argument(
        "--adapt-survey",
        action="store_true",
        help="score cutouts of another survey than the model's (model card and store 'survey'; refused otherwise): "
        "the model's bands are mapped to the store's by name, else nearest in wavelength, and the stamps "
        "resampled to the model's input side; not retrained, so check it (evaluate, inject) before trusting it",
    )


def _check_survey(store_path, survey: str | None) -> None:
    """--survey NAME of a command that reads a store: refused (exit 2) unless the store is of that survey."""
    if survey is None:
        return
    from .store import open_store
    from .survey.profiles import check_store_survey, get_profile

    get_profile(survey)  # an unknown name is refused, listing the known ones, even before the store is opened
    check_store_survey(open_store(store_path), survey)


def _with_client(a: argparse.Namespace):
    """A client for any fan-out command: its --cluster, --jobs and --adapt (:class:`_ClusterChoice`)."""
    from .cluster import cluster_client

    choice = _ClusterChoice.of(a)
    return cluster_client(choice.spec, jobs=choice.jobs, adapt=choice.adapt)


def _cmd_simulate(a) -> int:
    from .simulate import gallery_png, simulate
    from .simulate.constraints import load_constraints_file
    from .simulate.run import resolve_sim_kwargs

    constraints = load_constraints_file(a.constraints) if a.constraints else None
    _checks.constraint_pairs(constraints)  # min > max would burn every draw before failing
    inputs = dict(
        sources=a.sources,
        backgrounds=a.backgrounds,
        psf=a.psf,
        conditions=a.conditions,
        negatives=a.negatives,
        real_negative_fraction=a.real_negative_fraction,
        lookalike_fraction=a.lookalike_fraction,
        lookalikes=a.lookalikes.split(",") if a.lookalikes else None,
        background_fraction=a.background_fraction,
        galaxies=a.galaxies,
        survey=a.survey,
    )
    resolve_sim_kwargs(a.lens_fraction, constraints, None, **inputs)  # bad input fails before the cluster starts
    with _with_client(a) as client:
        # return_stats=True: simulate returns (store, stats)
        store, stats = cast(
            "tuple[CutoutStore, RejectionStats]",
            simulate(
                a.out,
                a.n,
                a.seed,
                lens_fraction=a.lens_fraction,
                partition_size=a.partition_size,
                client=client,
                overwrite=a.overwrite,
                constraints=constraints,
                return_stats=True,
                **inputs,
            ),
        )
    print(f"wrote {store}")
    print(f"lenses: {stats.accepted} accepted of {stats.draws} draws ({stats.acceptance_fraction:.1%})")
    for name, frac in stats.acceptance().items():
        print(f"  {name:24s} rejected {stats.rejected[name]:7d}  passed {frac:6.1%} of the draws reaching it")
    if a.gallery:
        tile = store.read_tile(0)
        gallery_png(
            tile.images,
            tile.table,
            a.gallery,
            bands=store.bands,
            n=a.gallery_n,
            classes=store.classes,
            title=f"{a.out} (seed {a.seed})",
        )
        print(f"gallery: {a.gallery}")
    return 0


def _cmd_mock_survey(a) -> int:
    from .survey import mock_survey
    from .survey.profiles import get_profile

    get_profile(a.survey)  # an unknown survey is refused before a cluster starts
    with _with_client(a) as client:
        store, truth = mock_survey(
            a.out,
            a.tiles,
            a.per_tile,
            a.lens_fraction,
            a.seed,
            truth=a.truth,
            client=client,
            overwrite=a.overwrite,
            lookalike_fraction=a.lookalike_fraction,
            lookalikes=a.lookalikes.split(",") if a.lookalikes else None,
            survey=a.survey,
        )
    print(f"wrote {store}\ntruth table (never read by search): {truth}")
    return 0


def _cmd_ingest(a) -> int:
    import os

    from .survey import ingest

    if sum(x is not None for x in (a.images, a.des_tiles, a.coadds, a.cubes, a.arrays)) != 1:
        raise LensdaskError("give one of --images, --des-tiles or --coadds (with --catalog), --cubes or --arrays")
    if a.des_tiles is not None and not os.path.isdir(a.des_tiles):
        raise LensdaskError(f"--des-tiles {a.des_tiles!r} is not a folder")
    if a.coadds is not None and not os.path.isdir(a.coadds):
        raise LensdaskError(f"--coadds {a.coadds!r} is not a folder")
    if a.survey is not None:
        from .survey.profiles import get_profile

        get_profile(a.survey)  # an unknown survey is refused before a cluster starts
    from .names import check_names
    from .survey.ingest import check_table_names

    # names are data: hostile tile names are refused before a cluster starts
    if a.tiles:
        check_names(a.tiles, source="--tiles", rows=range(1, len(a.tiles) + 1))
    for table in (a.table, a.catalog):
        if table is not None:
            check_table_names(table)
    with _with_client(a) as client:
        store, report = ingest(
            a.out,
            images=a.images,
            catalog=a.catalog,
            weights=a.weights,
            masks=a.masks,
            des_tiles=a.des_tiles,
            survey=a.survey,
            coadds=a.coadds,
            tiles=a.tiles,
            cubes=a.cubes,
            arrays=a.arrays,
            table=a.table,
            bands=a.bands.split(",") if a.bands else None,
            stamp=a.stamp,
            pixel_scale=a.pixel_scale,
            per_tile=a.per_tile,
            hdu=a.hdu,
            weights_hdu=a.weights_hdu,
            masks_hdu=a.masks_hdu,
            mask_bits=a.mask_bits,
            mask_fill=a.mask_fill,
            block_rows=a.block_rows,
            psf=a.psf,
            client=client,
            overwrite=a.overwrite,
            return_report=True,
        )
    flags = store.written_values("flags")
    written = len(store.written_tiles())
    print(
        f"wrote {store}: {written} of {store.n_tiles} tiles; {int(((flags & 1) != 0).sum())} rows edge-padded, "
        f"{int(((flags & 2) != 0).sum())} masked"
    )
    if report.outside:
        where = f" (most in tiles {', '.join(report.outside_tiles[:5])})" if report.outside_tiles else ""
        print(
            f"{report.outside} of {report.objects} catalogue objects lie in no tile ingested{where}: not in the store"
        )
    off = sum(t.get("off_image_rows", 0) for t in report.tiles)
    if off:
        print(f"{off} objects lie off the image of the tile their catalogue row names: kept, all NaN, flagged edge")
    if a.gallery and written:
        from .survey.gallery import ingest_gallery

        print(f"gallery: {ingest_gallery(store, a.gallery, n=a.gallery_n)}")
    if len(report.failures):
        from .survey.ingest import failures_path

        fp = failures_path(str(store.url))
        where = f" (table: {fp})" if fp is not None else ""
        print(f"{len(report.failures)} tiles FAILED, not written{where}:", file=sys.stderr)
        for row in report.failures.itertuples():
            print(f"  tile {row.tile}: {row.error}", file=sys.stderr)
        return 1
    return 0


def _cmd_train(a) -> int:
    from .model import describe_architectures, train

    if a.list_archs:
        print(describe_architectures().to_string(index=False))
        return 0
    if not a.data or not a.out:
        raise LensdaskError("train needs --data STORE and --out MODEL_DIR")
    _check_survey(a.data, a.survey)  # the model card records the store's survey
    card = train(
        a.data,
        a.out,
        arch=a.arch,
        epochs=a.epochs,
        batch_size=a.batch_size,
        learning_rate=a.lr,
        device=a.device,
        seed=a.seed,
        pretrained=a.pretrained,
        resize_to=a.resize,
        patch_size=a.patch_size,
        patience=a.patience,
        balance=a.balance,
        shift_px=a.shift,
        compile=a.compile or None,
        resume=a.resume,
        time_limit=a.time_limit,
        validation_fraction=a.validation_fraction,
        command="lensdask " + " ".join(a.argv),
    )
    m = card.get("metrics", {})
    t = card["training"]
    print(
        f"wrote {a.out} ({card['model_id']}); best epoch {t['best_epoch']} of {len(t['history'])}; "
        f"{t['cutouts_per_second']:.0f} cutouts/s on {t['device']}; validation AUROC "
        f"{m.get('auroc', float('nan')):.4f}, TPR at FPR 1e-3 {m.get('tpr_fpr_1e-3', float('nan')):.3f}"
        + (
            f"; stopped at the time limit after epoch {len(t['history'])} of {t['epochs']} (--resume goes on)"
            if t.get("stopped_at_time_limit")
            else ""
        )
    )
    return 0


def _cmd_evaluate(a) -> int:
    from .model import evaluate

    _check_survey(a.data, a.survey)
    m = evaluate(
        a.data,
        a.model,
        json_path=a.json,
        batch_size=a.batch_size,
        device=a.device,
        roc_path=a.roc,
        threshold=a.threshold,
        record=a.record,
        combine=a.combine,
        adapt_survey=a.adapt_survey,
    )
    for r in m.get("models", []):  # an ensemble: each model on its own, then the ensemble in full
        print(
            f"model {r['model_id']}: AUROC {r['auroc']:.4f}  TPR0 {r['tpr0']:.3f}  TPR10 {r['tpr10']:.3f}  "
            f"TPR at FPR 1e-3 {r['tpr_fpr_1e-3']:.3f}  completeness {r['completeness']:.3f}  "
            f"purity {r['purity']:.3f} at p >= {r['threshold']:g}"
        )
    if m.get("models"):
        print(f"ensemble ({m['combine']}):")
    print(
        f"model {m['model_id']} on {m['data']}: {m['n_pos']} lenses, {m['n_neg']} others, "
        f"{m['n_nan']} unscorable, {m['n_unlabelled']} unlabelled"
    )
    for key, name in (
        ("auroc", "AUROC"),
        ("tpr0", "TPR0"),
        ("tpr10", "TPR10"),
        ("tpr_fpr_1e-3", "TPR at FPR 1e-3"),
        ("tpr_fpr_1e-4", "TPR at FPR 1e-4"),
        ("completeness", f"completeness at p >= {m['threshold']:g}"),
        ("purity", f"purity at p >= {m['threshold']:g}"),
    ):
        print(f"  {name:<28} {m[key]:.4f}")
    c = m["confusion"]
    width = max(len(x) for x in c["truth"] + c["predicted"]) + 2
    print("confusion (rows: truth, columns: predicted)")
    print(" " * width + "".join(f"{x:>{width}}" for x in c["predicted"]))
    for name, row in zip(c["truth"], c["counts"]):
        print(f"{name:>{width}}" + "".join(f"{v:>{width}}" for v in row))
    fp = m.get("false_positives_by_class") or {}
    if fp:
        t = m["threshold_fpr_1e-3"]
        print(f"false positives by class (score >= {m['threshold']:g} / score > {t:.4g}, the FPR 1e-3 threshold)")
        cw = max(len(x) for x in fp) + 2
        for name, f in fp.items():
            print(
                f"  {name:<{cw}} n={f['n']:<7} above={f['above_threshold']:<6} FPR {f['fpr']:.4f} / "
                f"{f['fpr_at_fpr_1e-3_threshold']:.4f}  median score {f['median_score']:.4f}"
            )
    for param, bins in m["selection_function"].items():
        print(f"completeness vs {param} (at p >= {m['threshold']:g} / at FPR 1e-3)")
        for b in bins:
            print(
                f"  [{b['lo']:8.3g}, {b['hi']:8.3g}]  n={b['n']:<6} {b['completeness']:.3f} / "
                f"{b['completeness_fpr_1e-3']:.3f}"
            )
    if a.roc:
        print(f"ROC curve: {a.roc}")
    if a.json:
        print(f"all metrics: {a.json}")
    return 0


def _cmd_committee(a) -> int:
    from .model.committee import build_committee

    _check_survey(a.data, a.survey)
    card = build_committee(
        a.data,
        a.members,
        a.out,
        meta=a.meta,
        hidden=a.hidden,
        l2=a.l2,
        heldback=a.heldback,
        seed=a.seed,
        batch_size=a.batch_size,
        device=a.device,
        overwrite=a.overwrite,
        command="lensdask " + " ".join(a.argv),
    )
    c, h = card["committee"], card["metrics"]["heldback"]
    fitted = c["meta"]["fitted_on"]
    print(
        f"wrote {a.out} ({card['model_id']}): {c['meta']['kind']} meta-classifier over "
        f"{', '.join(m['model_id'] for m in c['members'])}, fitted on {fitted['rows']} rows of {fitted['data']}"
    )
    members = "  ".join(f"{i} {v:.4f}" for i, v in h["auroc_members"].items())
    print(
        f"held back {h['n']} rows ({h['n_lens']} lenses): AUROC committee {h['auroc']:.4f}, "
        f"members' mean {h['auroc_mean']:.4f}; members {members}"
    )
    return 0


def _cmd_inject(a) -> int:
    from .model import inject
    from .simulate.constraints import load_constraints_file

    constraints = load_constraints_file(a.constraints) if a.constraints else None
    _checks.constraint_pairs(constraints)
    m = inject(
        a.cutouts,
        a.model,
        galaxies=a.galaxies,
        orientations=a.orientations,
        seed=a.seed,
        threshold=a.threshold,
        constraints=constraints,
        max_draws=a.max_draws,
        zeropoint=a.zeropoint,
        aperture=a.aperture,
        n_bins=a.bins,
        top=a.top,
        out=a.out,
        png=a.png,
        json_path=a.json,
        record=a.record,
        batch_size=a.batch_size,
        device=a.device,
        survey=a.survey,
        adapt_survey=a.adapt_survey,
    )
    print(
        f"model {m['model_id']} on {m['n_cutouts']} real cutouts of {m['cutouts']} (rows {m['galaxies'] or 'all'}), "
        f"{m['orientations']} orientations each; {m['n_nonfinite']} skipped for non-finite pixels, "
        f"{m['n_no_noise']} for no measurable noise"
    )
    print(
        f"  painted {m['n_painted']} (no system passed the constraints on {m['n_paint_failed']}), "
        f"unpainted {m['n_unpainted']}"
    )
    print(f"  AUROC painted vs unpainted   {m['auroc']:.4f}   TPR0 {m['tpr0']:.3f}   TPR10 {m['tpr10']:.3f}")
    lo, hi = m["fpr_interval"]
    print(
        f"  unpainted at p >= {m['threshold']:g}: {m['false_positives']} of {m['n_unpainted']} = "
        f"{m['fpr']:.4f}  (95% Clopper-Pearson {lo:.4f} - {hi:.4f})"
    )
    lo, hi = m["completeness_interval"]
    print(f"  painted at p >= {m['threshold']:g}: completeness {m['completeness']:.4f}  (95% {lo:.4f} - {hi:.4f})")
    for param, bins in m["completeness_by"].items():
        print(f"completeness vs {param}")
        for b in bins:
            print(f"  [{b['lo']:8.3g}, {b['hi']:8.3g}]  n={b['n']:<5} {b['completeness']:.3f}")
    if m["top_unpainted"]:
        print(
            "highest-scoring unpainted: "
            + ", ".join(f"row {t['row']} o{t['orientation']} {t['score']:.3f}" for t in m["top_unpainted"][:5])
        )
    for key, name in (
        ("completeness_png", "completeness curves"),
        ("top_unpainted_png", "top unpainted"),
        ("json", "all results"),
    ):
        if m.get(key):
            print(f"{name}: {m[key]}")
    if a.record:
        print(f"recorded in {m['model']}/model_card.json (evaluations)")
    return 0


def _cmd_search(a) -> int:
    _check_survey(a.zarr, a.survey)
    if getattr(a, "emit_htcondor", None):
        if a.adapt_survey:
            raise LensdaskError(
                "--adapt-survey runs with a search, not with --emit-htcondor: adapt the model in a search, then "
                "submit with RUN_DIR/adapted/<model_id> as --model"
            )
        return _cmd_emit_htcondor(a)
    if a.fit_top is not None:
        raise LensdaskError("--fit-top sets the fit stage of --emit-htcondor; after a search, run lensdask fit --top N")
    from .model.ensemble import check_models
    from .search import search
    from .search.run import truth_lens_ids
    from .store import open_store

    # Bad input fails here, before any cluster is started: models that disagree with each other or the
    # store, a corrupt weights file (once, not in every tile), an unreadable truth table.
    check_models(open_store(a.zarr), a.model, a.prefilter, adapt_survey=a.adapt_survey)
    if a.truth is not None:
        if a.prefilter is None:
            raise LensdaskError("--truth audits a cascade: give it with --prefilter MODEL:FRACTION")
        truth_lens_ids(a.truth)
    with _with_client(a) as client:
        result = search(
            a.zarr,
            a.model,
            a.out,
            client=client,
            threshold=a.threshold,
            floor=a.floor,
            batch_size=a.batch_size,
            device=a.device,
            resume=a.resume,
            precision=a.precision,
            crossmatch=False if a.no_crossmatch else None,
            radius=a.radius,
            catalog=a.known_lenses,
            export=a.export,
            report=False if a.no_report else (True if a.report else None),
            combine=a.combine,
            prefilter=a.prefilter,
            prefilter_threshold=a.prefilter_threshold,
            truth=a.truth,
            adapt_survey=a.adapt_survey,
        )
    s = result.summary
    print(
        f"searched {s['tiles_searched']} of {s['tiles_total']} tiles ({s['rows']} cutouts, "
        f"{s['rows_nan']} flagged for non-finite pixels) with {s['model_id']} in {s['seconds']} s"
    )
    if s.get("combine"):
        print(
            f"ensemble of {len(s['models'])} models, score = {s['combine']}; per-model columns and n_agree "
            f"in the candidates"
        )
    if s.get("prefilter"):
        pf = s["prefilter"]
        print(
            f"cascade: the prefilter {pf['model_id']} scored {s['stages']['prefilter']} cutouts, the main "
            f"model(s) {s['stages']['main']} (top {pf['keep_fraction']:g} of each tile, plus "
            f"{pf['passed_by_threshold_only']} at prefilter p >= {pf['threshold']:g})"
        )
    au = s.get("audit")
    if au:
        print(
            f"audit against the truth: {au['lenses']} injected lenses, {au['dropped']} stopped by the prefilter, "
            f"{au['dropped_main_would_keep']} of which the main model(s) alone score >= {s['threshold']}"
        )
    print(f"{s['candidates']} candidates with score >= {s['threshold']}: {result.run_dir / 'candidates.parquet'}")
    k = s.get("known_lenses")
    if k:
        print(
            f'known lenses (lenscat, {k["radius_arcsec"]}" radius): '
            f"{k['in_footprint']} inside the searched footprint, "
            f"{k['matched']} matched to a cutout, {k['above_threshold']} scored >= {s['threshold']}"
        )
    if s.get("performance_report"):
        print(f"Dask performance report: {s['performance_report']}")
    if len(result.failures):
        print(f"{len(result.failures)} tiles FAILED (see {result.run_dir / 'failures.parquet'}):", file=sys.stderr)
        for row in result.failures.itertuples():
            print(f"  {row.tile}: {row.error}", file=sys.stderr)
        return 1
    return 0


def _cmd_fit(a) -> int:
    from .fit import fit
    from .fit.candidate import favours_lens
    from .fit.run import check

    # bad input (no store, no PSF for a band, other settings than the run's fit) fails before a cluster starts
    # (and a store of another survey than --survey)
    check(
        a.run_dir,
        top=a.top,
        min_score=a.min_score,
        store=a.zarr,
        psf=a.psf,
        seed=a.seed,
        overwrite=a.overwrite,
        survey=a.survey,
    )
    with _with_client(a) as client:
        result = fit(
            a.run_dir,
            top=a.top,
            min_score=a.min_score,
            store=a.zarr,
            psf=a.psf,
            seed=a.seed,
            chunk_size=a.chunk_size,
            client=client,
            overwrite=a.overwrite,
            survey=a.survey,
        )
    ph = result.photometry
    if ph:
        zps = ", ".join(f"{b} {v:g}" for b, v in ph["zero_points"].items()) or "none"
        src = {k: "config fit." + k if v == "config" else "survey profile" for k, v in ph["source"].items()}
        print(
            f"{ph['survey']} store, {ph['pixels']} pixels: zero points {zps} ({src['zero_points']}), "
            f"exposure time {ph['exposure_time']:g} s ({src['exposure_time']})"
        )
    f = result.fits
    ok = f["fit_status"] == "ok" if len(f) else f.get("fit_status", [])
    n_ok = int(ok.sum()) if len(f) else 0
    print(
        f"fitted {result.fitted} candidates ({result.resumed} found done) of {result.run_dir}: {n_ok} fitted, "
        f"{len(f) - n_ok} skipped or failed; {int(f['fit_converged'].sum()) if len(f) else 0} converged"
    )
    if n_ok:
        lens = int(favours_lens(f[ok]).sum())
        print(
            f"the evidence favours lensing for {lens} of {n_ok}; ranked by the combined score in "
            f"{result.run_dir / 'fits.parquet'}"
        )
    if len(result.failures):
        print(
            f"{len(result.failures)} chunks or candidates FAILED (see {result.run_dir / 'fit_failures.parquet'}):",
            file=sys.stderr,
        )
        for row in result.failures.itertuples():
            print(f"  {row.tile}: {row.error}", file=sys.stderr)
        return 1
    return 0


def _search_inputs(zarr, model, prefilter=None):
    """Absolute store path (URLs kept), model directories and cards, the prefilter, checked against each other.

    Returns ``store, zarr, [(model_dir, card), ...], (model_dir, card, fraction) or None`` (absolute dirs).
    """
    import os

    from .model.ensemble import check_models
    from .store import open_store

    store = open_store(zarr)
    main, pre = check_models(store, model, prefilter)
    main = [(os.path.abspath(str(d)), c) for d, c in main]
    if pre is not None:
        pre = (os.path.abspath(str(pre[0])), pre[1], pre[2])
    zarr = str(zarr) if "://" in str(zarr) else os.path.abspath(zarr)
    return store, zarr, main, pre


def _band_without_psf(store) -> str | None:
    """A band for which the store's first written tile records no PSF (in its first 256 rows), or None.

    The DAG of --emit-htcondor leaves its fit stage out then: ``lensdask fit`` would refuse such rows
    unless a person chooses a FWHM (``--psf``). One small read, however large the store.
    """
    import numpy as np

    if not store.psf_known:
        return store.bands[0]
    written = [t for t in store.written_tiles() if store.counts[t] > 0]
    if not written:
        return None
    fwhm = store.read_psf(written[0], 0, 256)
    missing = [b for k, b in enumerate(store.bands) if not np.isfinite(fwhm[:, k]).any()]
    return missing[0] if missing else None


def _cmd_emit_htcondor(a) -> int:
    import os

    from . import config
    from .cluster import emit_htcondor_search
    from .rundir import read_markers
    from .search.run import run_signature

    if a.truth is not None:
        raise LensdaskError("--truth (the cascade audit) runs with a search, not with --emit-htcondor")
    store, zarr, main, pre = _search_inputs(a.zarr, a.model, a.prefilter)
    floor = _checks.fraction(config.get("search.floor", a.floor), "search.floor")
    combine = str(config.get("search.ensemble.combine", a.combine))
    pthr = (
        _checks.fraction(config.get("search.prefilter.threshold", a.prefilter_threshold), "prefilter threshold")
        if pre is not None
        else None
    )
    sig = run_signature(
        [c["model_id"] for _, c in main], combine, None if pre is None else (pre[1]["model_id"], pre[2], pthr)
    )
    run_dir = os.path.abspath(a.out)
    names = store.tiles
    tiles = [(t, names[t]) for t in store.written_tiles()]
    if a.resume:
        markers = read_markers(run_dir)  # each finished tile's marker, read once
        tiles = [(t, n) for t, n in tiles if (markers.get(n) or {}).get("model_id") != sig]
    spec = str(a.cluster) if str(a.cluster).startswith("htcondor") else "htcondor"
    no_psf = _band_without_psf(store)
    files = emit_htcondor_search(
        a.emit_htcondor,
        store=zarr,
        model_dir=[d for d, _ in main],
        run_dir=run_dir,
        tiles=tiles,
        threshold=_checks.fraction(config.get("search.threshold", a.threshold), "search.threshold"),
        floor=floor,
        batch_size=config.get("search.batch_size", a.batch_size),
        device=str(config.get("search.device", a.device)),
        spec=spec,
        combine=combine,
        prefilter=None if pre is None else (pre[0], pre[2]),
        prefilter_threshold=pthr,
        fit=no_psf is None,  # lensdask fit refuses rows without PSF unless a person gives --psf
        fit_top=a.fit_top,
    )
    fit = f", {files['fit.sub']}" if "fit.sub" in files else ""
    print(f"wrote {files['search.sub']} ({len(tiles)} tile jobs), {files['merge.sub']}{fit} and {files['search.dag']}")
    if no_psf is not None:
        print(f"no fit stage: {zarr} records no PSF in band {no_psf}; after the DAG: lensdask fit {run_dir} --psf FWHM")
    print(f"submit: cd {a.emit_htcondor} && condor_submit_dag search.dag   (results: {run_dir}/candidates.parquet)")
    return 0


def _cmd_search_tile(a) -> int:
    from . import config
    from .errors import LensdaskError
    from .search.run import search_tile

    _check_survey(a.zarr, a.survey)
    store, zarr, main, pre = _search_inputs(a.zarr, a.model, a.prefilter)
    tile = int(a.tile) if a.tile.isdigit() else None
    if tile is None:
        if a.tile not in store.tiles:
            raise LensdaskError(f"--tile {a.tile!r}: no such tile in {zarr} (give an index or one of its tile names)")
        tile = list(store.tiles).index(a.tile)
    if not 0 <= tile < store.n_tiles:
        raise LensdaskError(f"--tile {tile}: the store has tiles 0..{store.n_tiles - 1}")
    dirs, shas = [d for d, _ in main], [c["sha256"] for _, c in main]
    stats = search_tile(
        zarr,
        tile,
        dirs[0] if len(dirs) == 1 else dirs,
        shas[0] if len(shas) == 1 else shas,
        a.out,
        device=str(config.get("search.device", a.device)),
        batch_size=config.get("search.batch_size", a.batch_size),
        floor=_checks.fraction(config.get("search.floor", a.floor), "search.floor"),
        combine=a.combine,
        prefilter=None if pre is None else (pre[0], pre[1]["sha256"], pre[2]),
        prefilter_threshold=a.prefilter_threshold,
    )
    print(json.dumps(stats))
    return 0


def _cmd_merge(a) -> int:
    import pathlib

    from .errors import LensdaskError
    from .rundir import TILES_DIR, merge

    tiles_dir = pathlib.Path(a.run_dir) / TILES_DIR
    if not any(tiles_dir.glob("*.json")):
        raise LensdaskError(f"no finished tiles in {tiles_dir} (run lensdask search-tile first)")
    cand = merge(a.run_dir, a.threshold)
    n = len(list(tiles_dir.glob("*.json")))
    print(f"merged {n} tiles: {len(cand)} candidates in {pathlib.Path(a.run_dir) / 'candidates.parquet'}")
    from .fit.run import keep_fits

    kept = keep_fits(a.run_dir, cand)
    if "fit_status" in kept.columns:
        n_fit = int(kept["fit_status"].notna().sum())
        print(f"kept the lens-model fits of {n_fit} candidates (fit columns and combined_rank)")
    return 0


def _cmd_review(a) -> int:
    if a.serve:
        from .review.app import serve

        server = serve(a.run_dir, labels=a.labels, top=a.top, port=a.port, labeller=a.labeller, store=a.zarr)
        print(
            f"reviewing {len(server.state.cand)} candidates at {server.url} (127.0.0.1 only); "
            f"grades go to {server.state.labels}; Ctrl-C stops",
            flush=True,
        )
        try:
            server.serve_forever()
        finally:
            server.stop()
        return 0
    from .review import gallery_html

    g = gallery_html(a.run_dir, top=a.top, per_page=a.per_page, out=a.out, store=a.zarr)
    print(f"gallery of {len(g.candidates)} candidates in {len(g.pages)} pages: {g.index}")
    return 0


def _cmd_label(a) -> int:
    import pandas as pd

    from .review import add_labels, label_conflicts, read_labels
    from .store import open_store

    if a.votes and not (a.from_csv or a.tile or a.object_id is not None or a.cls):
        return _label_votes(a)
    if a.from_csv:
        rows = pd.read_csv(a.from_csv)
    elif a.object_id is not None and a.tile and a.cls:
        rows = pd.DataFrame([{"tile": a.tile, "object_id": a.object_id, "class": a.cls, "grade": a.grade or ""}])
    else:
        raise LensdaskError("give --from-csv FILE, or --tile, --object-id and --class")
    store = open_store(a.zarr) if a.zarr else None
    added = add_labels(a.labels, rows, labeller=a.labeller, store=store)
    conflicts = label_conflicts(read_labels(a.labels))
    print(f"appended {len(added)} labels to {a.labels}")
    if len(conflicts):
        print(f"{len(conflicts)} objects have conflicting labels:")
        print(conflicts.to_string(index=False))
    return _label_votes(a) if a.votes else 0


def _label_votes(a) -> int:
    from .names import csv_safe
    from .review.labels import read_labels, votes

    table = votes(read_labels(a.labels))
    csv_safe(table).to_csv(a.votes, index=False)  # no cell opens as a spreadsheet formula
    several = int((table["n_reviewers"] > 1).sum()) if len(table) else 0
    print(f"{len(table)} objects graded ({several} by several reviewers): votes in {a.votes}")
    return 0


def _cmd_trainset(a) -> int:
    from .review import trainset_add

    added = trainset_add(a.labels, a.zarr, a.to)
    counts = added["class"].value_counts().to_dict() if len(added) else {}
    print(f"added {len(added)} labelled cutouts to {a.to}: {counts}")
    return 0


def _cmd_export_zooniverse(a) -> int:
    from .review import export_zooniverse

    manifest = export_zooniverse(a.run_dir, a.out, top=a.top, store=a.zarr, model_panel=a.model_panel)
    print(
        f"wrote {len(manifest)} subjects and {a.out}/manifest.csv; upload with:\n"
        f"  panoptes subject-set upload-subjects SUBJECT_SET_ID {a.out}/manifest.csv"
    )
    if a.model_panel:
        from .review.zooniverse import UNFITTED_MANIFEST

        n_panel = int((manifest["model_image"] != "").sum())
        print(f"{n_panel} subjects have their lens-model panel as a second image")
        if n_panel < len(manifest):
            print(
                f"the {len(manifest) - n_panel} without a fit are in {a.out}/{UNFITTED_MANIFEST}:\n"
                f"  panoptes subject-set upload-subjects SUBJECT_SET_ID {a.out}/{UNFITTED_MANIFEST}"
            )
    return 0


def _cmd_swap(a) -> int:
    import pandas as pd

    from .review import read_classifications, swap

    votes = read_classifications(a.classifications, task=a.task, yes=a.yes)
    gold = pd.read_csv(a.gold) if a.gold else None
    result = swap(votes, gold, prior=a.prior)  # prior None: config review.swap_prior
    if a.run_dir:
        cand = pd.read_parquet(f"{a.run_dir}/candidates.parquet")
        result = cand.merge(result.drop(columns=[c for c in ("tile",) if c in result]), on="object_id", how="left")
    from .names import csv_safe

    csv_safe(result).to_csv(a.out, index=False)  # no cell opens as a spreadsheet formula
    print(f"{len(votes)} votes on {votes['subject_id'].nunique()} subjects -> {a.out}")
    return 0


def _cmd_info(a) -> int:
    from .storeadmin import format_info, store_info

    info = store_info(a.store)
    if a.json:
        print(json.dumps(info, indent=2, default=str))
    else:
        print(format_info(info), end="")
    return 0


def _cmd_convert(a) -> int:
    from .storeadmin import convert

    with _with_client(a) if a.cluster != "none" else _no_client() as client:
        store, failures = convert(
            a.src,
            a.dst,
            quantise_step=a.step,
            overwrite=a.overwrite,
            client=client,
            command=" ".join(["lensdask", *a.argv]),
        )
    print(f"wrote {store} ({store.encoding['pixels']})")
    for f in failures:
        print(f"tile {f['tile']} failed: {f['error']}", file=sys.stderr)
    return 1 if failures else 0


class _no_client:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def _cmd_config(a) -> int:
    from . import config

    print(config.show(), end="")
    return 0


def _cmd_demo(a) -> int:
    from .demo import demo, format_summary

    with _with_client(a) as client:
        summary = demo(
            a.out,
            tiles=a.tiles,
            per_tile=a.per_tile,
            lens_fraction=a.lens_fraction,
            seed=a.seed,
            real_galaxies=a.real_galaxies,
            fit_top=a.fit_top,
            client=client,
        )
    print(format_summary(summary))
    print(f"outputs in {a.out}/ (summary.json, run/candidates.parquet)")
    return 0


def _search_model_args(p: argparse.ArgumentParser) -> None:
    """--model (repeatable: an ensemble), --combine, --prefilter, --prefilter-threshold of search and search-tile."""
    p.add_argument(
        "--model",
        action="append",
        help="checkpoint directory (default: the shipped model); repeat for an ensemble, every model "
        "scoring every tile (read once); the models must share bands, stamp and pixel scale",
    )
    p.add_argument(
        "--combine",
        choices=["mean", "rank"],
        help="an ensemble's score: mean probability or rank average (config search.ensemble.combine)",
    )
    p.add_argument(
        "--prefilter",
        type=_arg.prefilter,
        metavar="MODEL:FRACTION",
        help="two-stage cascade: MODEL (a directory, or 'default') scores every cutout, and only the top "
        "FRACTION of each tile, plus every cutout at or above --prefilter-threshold, reaches --model",
    )
    p.add_argument(
        "--prefilter-threshold",
        type=_arg.fraction,
        help="prefilter lens probability that always passes (config search.prefilter.threshold)",
    )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``lensdask`` command."""
    from ._version import __version__

    parser = _Parser(prog="lensdask", description="Find strong gravitational lenses in survey images with Dask.")
    parser.add_argument("--version", action="version", version=f"lensdask {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("simulate", help="simulate labelled lenses and non-lenses into a training store")
    p.add_argument("--out", required=True, help="output store (path or fsspec URL), e.g. train.zarr")
    p.add_argument("--n", type=_arg.count, required=True, help="number of cutouts")
    p.add_argument("--seed", type=int, default=0, help="run seed; row i depends only on (seed, i)")
    p.add_argument("--lens-fraction", type=_arg.fraction, help="fraction of lenses (config simulate.lens_fraction)")
    p.add_argument(
        "--partition-size", type=_arg.count, help="rows per task and per tile (config simulate.partition_size)"
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing store")
    p.add_argument("--constraints", metavar="YAML", help="constraint overrides (keys of simulate.constraints)")
    p.add_argument(
        "--sources", metavar="COSMOS", help="'sersic' or a GalSim COSMOS catalogue (config simulate.sources)"
    )
    p.add_argument(
        "--backgrounds",
        metavar="PATH",
        help="real lens galaxies: folder of <band>.fits cubes (+ sigma_v.txt) or a store",
    )
    p.add_argument("--negatives", metavar="PATH", help="real non-lens cutouts (default: the backgrounds)")
    p.add_argument(
        "--real-negative-fraction", type=_arg.fraction, help="fraction of non-lenses taken from real cutouts"
    )
    p.add_argument(
        "--background-fraction",
        type=_arg.fraction,
        help="fraction of lenses painted on the real backgrounds, the rest on modelled galaxies "
        "(config simulate.background_fraction)",
    )
    p.add_argument(
        "--galaxies",
        metavar="SPEC",
        help="rows of the real backgrounds and negatives to use: all, train, heldout (config "
        "simulate.galaxy_split), a slice 0:20 or a list 1,4,7 (config simulate.galaxies)",
    )
    p.add_argument(
        "--lookalike-fraction",
        type=_arg.fraction,
        help="fraction of rows that are false-positive look-alikes, each its own class "
        "(config simulate.lookalike_fraction)",
    )
    p.add_argument(
        "--lookalikes",
        help="comma-separated kinds: ring,spiral,merger,companion,edge-on,group (config simulate.lookalikes)",
    )
    p.add_argument("--conditions", metavar="DES|DIR", help="'des', 'fixed' or a folder of 2d<band>_DES.txt samples")
    p.add_argument("--psf", metavar="PSFEX", help="'gaussian' or a PSFEx .psf file")
    p.add_argument("--gallery", metavar="PNG", help="also write colour composites of the first rows, with parameters")
    p.add_argument("--gallery-n", type=_arg.count, default=24, help="stamps in the gallery (default 24)")
    _survey_arg(p, "simulated: its bands, pixel scale, stamp, instrument and conditions; recorded in the store")
    _cluster_arg(p)
    p.set_defaults(func=_cmd_simulate)

    p = sub.add_parser("mock-survey", help="make a DES-like survey store with injected lenses and a truth table")
    p.add_argument("--out", required=True, help="output store, e.g. des.zarr")
    p.add_argument("--tiles", type=_arg.count, help="number of tiles (config mock_survey.tiles)")
    p.add_argument("--per-tile", type=_arg.count, help="cutouts per tile (config mock_survey.per_tile)")
    p.add_argument(
        "--lens-fraction", type=_arg.fraction, help="fraction of injected lenses (config mock_survey.lens_fraction)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--truth", help="truth table path (default: OUT with .truth.parquet)")
    p.add_argument(
        "--lookalike-fraction",
        type=_arg.fraction,
        help="fraction of false-positive look-alikes (config mock_survey.lookalike_fraction)",
    )
    p.add_argument(
        "--lookalikes",
        help="comma-separated kinds: ring,spiral,merger,companion,edge-on,group (config mock_survey.lookalikes)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing store")
    _survey_arg(p, "simulated: its bands, pixel scale, stamp, instrument and conditions; recorded in the store")
    _cluster_arg(p)
    p.set_defaults(func=_cmd_mock_survey)

    p = sub.add_parser(
        "ingest", help="real data to a cutout store: coadd tile images + catalogue, or cutout cubes/arrays"
    )
    p.add_argument("--out", required=True, help="output store, e.g. des.zarr")
    p.add_argument(
        "--images",
        metavar="PATTERN",
        help="per-band images with WCS, e.g. 'tiles/{tile}_{band}.fits'; * and ? match one file each",
    )
    p.add_argument(
        "--des-tiles",
        metavar="DIR",
        help="DES coadd tiles as released: DIR/{tile}_{tag}_{band}.fits.fz with HDUs SCI, MSK, WGT",
    )
    p.add_argument(
        "--survey",
        metavar="NAME",
        help="survey profile (des, legacy-dr10, hsc-pdr3, lsst, euclid-vis; config lensdask.surveys): the store's "
        "bands, pixel scale and stamp, checked against the input before any work, and the layout of --coadds; "
        "recorded in the store (default des, unchecked)",
    )
    p.add_argument(
        "--coadds",
        metavar="DIR",
        help="the survey's coadd files in its layout (--survey; e.g. a Legacy Surveys coadd/ folder of bricks)",
    )
    p.add_argument(
        "--catalog",
        help="objects for --images/--des-tiles/--coadds: FITS/CSV/Parquet with id, ra, dec [deg] "
        "(tile, label optional; DES Gold COADD_OBJECT_ID, RA, DEC, TILENAME as they come)",
    )
    p.add_argument("--weights", metavar="PATTERN", help="inverse-variance maps like --images (0 = masked)")
    p.add_argument("--masks", metavar="PATTERN", help="integer masks like --images (see --mask-bits)")
    p.add_argument("--tiles", nargs="+", metavar="TILE", help="tile names (default: every tile matching --images)")
    p.add_argument("--cubes", metavar="PATTERN", help="per-band FITS cutout cubes (n, H, W), e.g. 'gal/{band}.fits'")
    p.add_argument("--arrays", metavar="FILE", help=".npy (n, bands, H, W) or .npz cutouts")
    p.add_argument("--table", help="rows of --cubes/--arrays: object_id, ra, dec, label, tile")
    p.add_argument("--bands", help="comma-separated bands in store order (config survey.bands)")
    p.add_argument("--stamp", type=_arg.count, help="stamp side in pixels (config survey.stamp)")
    p.add_argument("--pixel-scale", type=_arg.positive, help="arcsec/pixel (config survey.pixel_scale)")
    p.add_argument("--per-tile", type=_arg.count, help="rows per tile for cubes/arrays (config ingest.per_tile)")
    p.add_argument("--hdu", help="HDU of the images, number or name (config ingest.hdu)")
    p.add_argument(
        "--weights-hdu", metavar="HDU", help="HDU of the weight maps (config ingest.weights_hdu; default --hdu)"
    )
    p.add_argument("--masks-hdu", metavar="HDU", help="HDU of the masks (config ingest.masks_hdu; default --hdu)")
    p.add_argument(
        "--mask-bits",
        type=_arg.count,
        metavar="BITS",
        help="mask bits that make a pixel bad, e.g. 5 for bits 1 and 4 (config ingest.mask_bits: any "
        "non-zero; --des-tiles: ingest.des.mask_bits, 1)",
    )
    p.add_argument("--mask-fill", choices=["median", "nan"], help="masked pixels become (config ingest.mask_fill)")
    p.add_argument(
        "--block-rows",
        type=_arg.count,
        metavar="N",
        help="stamps cut and written together: a worker's memory (config ingest.block_rows)",
    )
    p.add_argument(
        "--psf",
        metavar="PATTERN",
        help="PSFEx models like --images, e.g. 'psf/{tile}_{band}_psfcat.psf' (--des-tiles: "
        "{tile}_*_{band}_psfcat.psf there); without one a tile's PSF FWHM comes from its header, else its stars",
    )
    p.add_argument("--gallery", metavar="PNG", help="also draw a few stamps of the first tile into this PNG")
    p.add_argument("--gallery-n", type=_arg.count, default=12, metavar="N", help="stamps in the gallery (default 12)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing store")
    _cluster_arg(p)
    p.set_defaults(func=_cmd_ingest)

    p = sub.add_parser("train", help="train a Vision Transformer on a labelled store")
    p.add_argument("--data", help="labelled training store (required)")
    p.add_argument("--out", help="checkpoint directory to write (required)")
    p.add_argument("--arch", help="architecture name (config train.arch); --list-archs shows them")
    p.add_argument(
        "--list-archs", action="store_true", help="print the architectures (parameters, tokens, GFLOPs) and exit"
    )
    p.add_argument("--epochs", type=_arg.count)
    p.add_argument("--batch-size", type=_arg.count)
    p.add_argument("--lr", type=_arg.positive, help="peak learning rate")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], help="auto: CUDA (bf16 autocast) when present")
    p.add_argument("--seed", type=int)
    p.add_argument(
        "--validation-fraction",
        type=_arg.fraction,
        help="held-out fraction per class (config train.validation_fraction)",
    )
    p.add_argument(
        "--pretrained", metavar="FILE", help="start from local weights (.safetensors/.pth or a lensdask model dir)"
    )
    p.add_argument(
        "--resize",
        type=_arg.count,
        metavar="PX",
        help="model input side if not the stamp, e.g. 224 (config train.resize)",
    )
    p.add_argument("--patch-size", type=_arg.count, metavar="PX", help="override the architecture's patch side")
    p.add_argument(
        "--patience", type=_arg.non_negative_int, help="early stopping: epochs without a better validation AUROC; 0 off"
    )
    p.add_argument(
        "--balance",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="weight the loss by inverse class frequency (config train.balance)",
    )
    p.add_argument(
        "--shift",
        type=_arg.non_negative,
        metavar="PX",
        help="largest sub-pixel shift augmentation (config train.augment.shift_px)",
    )
    p.add_argument("--compile", action="store_true", help="torch.compile the model (GPU)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/train_state.pt (saved every epoch)")
    p.add_argument(
        "--time-limit",
        type=_arg.non_negative,
        metavar="SECONDS",
        help="wall seconds for this call: no epoch is started that would end past it; the best epoch so far is "
        "saved and the training state kept for --resume",
    )
    _survey_arg(p, "of --data, which must record it; the model card records the store's survey", default=None)
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("evaluate", help="AUROC, TPR0, TPR10, TPR at FPR 1e-3/1e-4, ROC, confusion, selection function")
    p.add_argument(
        "--model",
        action="append",
        help="checkpoint directory (default: the shipped model); repeat to report each model and their ensemble",
    )
    p.add_argument(
        "--combine",
        choices=["mean", "rank"],
        help="the ensemble's score: mean probability or rank average (config search.ensemble.combine)",
    )
    p.add_argument("--data", required=True, help="labelled store")
    p.add_argument("--json", help="also write the metrics to this JSON file")
    p.add_argument("--roc", metavar="PNG", help="write the ROC curve to this PNG")
    p.add_argument("--threshold", type=_arg.fraction, help="operating lens probability (config search.threshold)")
    p.add_argument("--record", action="store_true", help="append the metrics to the model card's evaluations")
    p.add_argument(
        "--batch-size", type=_arg.batch_size, help="cutouts per forward pass, or auto (config search.batch_size)"
    )
    p.add_argument("--device", choices=["auto", "cpu", "cuda"])
    _survey_arg(p, "of --data, which must record it", default=None)
    _adapt_survey_arg(p)
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser(
        "committee",
        help="two or three models combined by a learned meta-classifier, fitted on rows none of them trained on, "
        "written as one model directory",
    )
    p.add_argument("--members", nargs="+", required=True, metavar="DIR", help="the members' model directories")
    p.add_argument(
        "--data", required=True, help="labelled store to fit the meta-classifier on; it must have trained no member"
    )
    p.add_argument("--out", required=True, help="the committee's model directory to write")
    p.add_argument("--meta", choices=["logistic", "mlp"], help="the meta-classifier (config committee.meta)")
    p.add_argument("--hidden", type=_arg.count, metavar="N", help="hidden units of the mlp (config committee.hidden)")
    p.add_argument("--l2", type=_arg.non_negative, help="L2 penalty on the meta's weights (config committee.l2)")
    p.add_argument(
        "--heldback",
        type=_arg.fraction,
        metavar="FRACTION",
        help="rows per class kept out of the fit to report AUROCs (config committee.heldback)",
    )
    p.add_argument("--seed", type=int, help="the held-back split and the mlp's start (config committee.seed)")
    p.add_argument(
        "--batch-size", type=_arg.batch_size, help="cutouts per forward pass, or auto (config search.batch_size)"
    )
    p.add_argument("--device", choices=["auto", "cpu", "cuda"])
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    _survey_arg(p, "of --data, which must record it", default=None)
    p.set_defaults(func=_cmd_committee)

    p = sub.add_parser(
        "inject",
        help="injection-recovery on real cutouts: arcs painted on real galaxies, "
        "scored with and without the arc (completeness, false-positive rate)",
    )
    p.add_argument("--model", help="checkpoint directory (default: the shipped model)")
    p.add_argument(
        "--cutouts",
        required=True,
        help="real cutouts: a store, a folder of <band>.fits cubes (+ sigma_v.txt), or .npy/.npz",
    )
    p.add_argument(
        "--galaxies",
        metavar="SPEC",
        help="rows to use: all, train, heldout (config simulate.galaxy_split), 0:20 or 1,4,7",
    )
    p.add_argument(
        "--orientations",
        type=_arg.orientations,
        help="rotations/flips of each cutout, 1-8 (config inject.orientations)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the painted arcs")
    p.add_argument("--threshold", type=_arg.fraction, help="operating lens probability (config search.threshold)")
    p.add_argument("--constraints", metavar="YAML", help="constraint overrides for the painted arcs")
    p.add_argument("--max-draws", type=_arg.count, help="draws per painted system (config simulate.max_draws_per_lens)")
    p.add_argument(
        "--zeropoint", type=_arg.finite, help="mag of unit flux for lens magnitudes (config inject.zeropoint)"
    )
    p.add_argument("--aperture", type=_arg.positive, help="lens-flux aperture radius, arcsec (config inject.aperture)")
    p.add_argument("--bins", type=_arg.count, help="bins per completeness curve (config inject.bins)")
    p.add_argument(
        "--top", type=_arg.count, help="highest-scoring unpainted cutouts listed and drawn (config inject.top)"
    )
    p.add_argument("--out", metavar="DIR", help="write DIR/inject.json, DIR/completeness.png, DIR/top_unpainted.png")
    p.add_argument("--png", metavar="PREFIX", help="write PREFIX_completeness.png and PREFIX_top_unpainted.png")
    p.add_argument("--json", help="also write the results to this JSON file")
    p.add_argument("--record", action="store_true", help="append the results to the model card's evaluations")
    p.add_argument(
        "--batch-size", type=_arg.batch_size, help="cutouts per forward pass, or auto (config search.batch_size)"
    )
    p.add_argument("--device", choices=["auto", "cpu", "cuda"])
    _survey_arg(p, "of --cutouts: a store must record it; folders and arrays are taken as it (des)", default=None)
    _adapt_survey_arg(p)
    p.set_defaults(func=_cmd_inject)

    p = sub.add_parser("search", help="score every cutout of a survey store, one task per tile")
    p.add_argument("--zarr", required=True, help="survey store")
    _search_model_args(p)
    p.add_argument("--out", default="lensdask-run", help="run directory (default: lensdask-run)")
    p.add_argument("--threshold", type=_arg.fraction, help="lens probability for candidates (config search.threshold)")
    p.add_argument(
        "--floor", type=_arg.fraction, help="lens probability kept in per-tile outputs (config search.floor)"
    )
    p.add_argument(
        "--batch-size", type=_arg.batch_size, help="cutouts per forward pass, or auto (config search.batch_size)"
    )
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], help="device on the workers")
    p.add_argument("--resume", action="store_true", help="skip tiles already finished in --out")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16"], help="auto: bf16 on CUDA (config search.precision)")
    p.add_argument("--export", help="also write candidates as fits,csv (config search.export)")
    p.add_argument(
        "--radius", type=_arg.positive, help="known-lens cross-match radius, arcsec (config crossmatch.radius)"
    )
    p.add_argument("--known-lenses", metavar="FILE", help="known-lens catalogue (default: lenscat's)")
    p.add_argument("--no-crossmatch", action="store_true", help="skip the known-lens cross-match")
    reports = p.add_mutually_exclusive_group()
    reports.add_argument(
        "--report",
        action="store_true",
        help="save the Dask performance report whatever the number of tiles (config "
        "search.performance_report: true, false, or auto for up to search.performance_report_max_tiles)",
    )
    reports.add_argument("--no-report", action="store_true", help="do not save the Dask performance report")
    p.add_argument(
        "--truth",
        metavar="PARQUET",
        help="with --prefilter on a mock survey: its truth table; the main model(s) also score the "
        "injected lenses the prefilter stopped, and the summary says how many they would have kept",
    )
    p.add_argument(
        "--emit-htcondor",
        metavar="DIR",
        help="do not search: write an HTCondor submission (one search-tile job per tile, then merge, then fit) "
        "into DIR",
    )
    p.add_argument(
        "--fit-top",
        type=_arg.count,
        metavar="N",
        help="with --emit-htcondor: the DAG's fit stage fits the N best candidates (config fit.top)",
    )
    _survey_arg(p, "of --zarr, which must record it", default=None)
    _adapt_survey_arg(p)
    _cluster_arg(p)
    p.set_defaults(func=_cmd_search)

    p = sub.add_parser("fit", help="lens model vs null model for the best candidates of a run, one task per chunk")
    p.add_argument("run_dir", metavar="RUN_DIR", help="a finished search run")
    p.add_argument("--top", type=_arg.count, metavar="N", help="fit the N best candidates (config fit.top)")
    p.add_argument("--min-score", type=_arg.fraction, metavar="S", help="fit the candidates scoring at least S")
    p.add_argument("--zarr", metavar="STORE", help="the survey store, when it moved since the search")
    p.add_argument(
        "--psf",
        metavar="FWHM",
        help="PSF FWHM (arcsec) for rows whose store records none: one value, or per band 'g=1.2,r=1.0'",
    )
    p.add_argument("--seed", type=int, help="run seed (config fit.seed)")
    p.add_argument("--chunk-size", type=_arg.count, metavar="N", help="candidates per task (config fit.chunk_size)")
    p.add_argument("--overwrite", action="store_true", help="fit again from scratch a run fitted with other settings")
    _survey_arg(p, "of the run's store, which must record it", default=None)
    _cluster_arg(p)
    p.set_defaults(func=_cmd_fit)

    p = sub.add_parser("search-tile", help="score one tile of a store and write its per-tile outputs (a batch job)")
    p.add_argument("--zarr", required=True, help="survey store")
    p.add_argument("--tile", required=True, help="tile index or tile name")
    _search_model_args(p)
    p.add_argument("--out", required=True, help="run directory; writes OUT/tiles/<tile>.parquet and .json")
    p.add_argument("--floor", type=_arg.fraction, help="lens probability kept (config search.floor)")
    p.add_argument(
        "--batch-size", type=_arg.batch_size, help="cutouts per forward pass, or auto (config search.batch_size)"
    )
    p.add_argument("--device", choices=["auto", "cpu", "cuda"])
    _survey_arg(p, "of --zarr, which must record it", default=None)
    p.set_defaults(func=_cmd_search_tile)

    p = sub.add_parser("merge", help="build RUN_DIR/candidates.parquet from finished per-tile outputs")
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--threshold", type=_arg.fraction, help="lens probability for candidates (config search.threshold)")
    p.set_defaults(func=_cmd_merge)

    p = sub.add_parser(
        "review",
        help="write an offline HTML gallery of a search run's best candidates, "
        "or --serve a review app graded from the keyboard",
    )
    p.add_argument("run_dir", help="search run directory")
    p.add_argument("--top", type=_arg.count, default=100, help="number of candidates (default 100)")
    p.add_argument("--per-page", type=_arg.count, help="candidates per gallery page (config review.gallery_per_page)")
    p.add_argument("--out", help="gallery folder (default RUN_DIR/gallery)")
    p.add_argument("--zarr", help="the survey store, if it moved since the search")
    p.add_argument("--serve", action="store_true", help="serve the review app on 127.0.0.1 (grades go to --labels)")
    p.add_argument(
        "--port",
        type=_checks.arg_type(_checks.int_range(0, 65535)),
        help="port of --serve (config review.port; 0: any free port)",
    )
    p.add_argument("--labels", help="labels CSV of --serve (default RUN_DIR/labels.csv; appended to)")
    p.add_argument("--labeller", help="reviewer name the app starts with (default: $USER)")
    p.set_defaults(func=_cmd_review)

    p = sub.add_parser("label", help="append reviewer labels (class per object) to a labels table")
    p.add_argument("--labels", required=True, help="labels CSV (append-only)")
    p.add_argument(
        "--from-csv",
        help="CSV with tile, object_id, class columns (and optionally labeller, time, grade: "
        "the review page's CSV export)",
    )
    p.add_argument("--tile")
    p.add_argument("--object-id", type=int)
    p.add_argument("--class", dest="cls", help="class name (config review.classes)")
    p.add_argument(
        "--grade",
        choices=["definite", "probable", "possible", "no"],
        help="confidence: definite, probable, possible (class lens) or no (not a lens)",
    )
    p.add_argument("--labeller", help="who labels (default: $USER)")
    p.add_argument("--zarr", help="check that every object is in this store")
    p.add_argument(
        "--votes",
        metavar="OUT_CSV",
        help="write every object's combined grades (one vote per reviewer: counts, mean grade, class)",
    )
    p.set_defaults(func=_cmd_label)

    p = sub.add_parser("trainset", help="add labelled survey cutouts to a training store")
    p.add_argument("action", choices=["add"])
    p.add_argument("--labels", required=True, help="labels CSV")
    p.add_argument("--zarr", required=True, help="survey store the labelled objects come from")
    p.add_argument("--to", required=True, help="training store to extend")
    p.set_defaults(func=_cmd_trainset)

    p = sub.add_parser("export-zooniverse", help="subject images + Panoptes manifest of the best candidates")
    p.add_argument("run_dir", help="search run directory")
    p.add_argument("--top", type=_arg.count, default=100)
    p.add_argument("--out", required=True, help="new folder to write (never overwritten)")
    p.add_argument("--zarr", help="the survey store, if it moved since the search")
    p.add_argument(
        "--model-panel",
        action="store_true",
        help="add each fitted candidate's lens-model panel (lensdask fit) as a second subject image",
    )
    p.set_defaults(func=_cmd_export_zooniverse)

    p = sub.add_parser("swap", help="aggregate a Zooniverse classification export, Space Warps style")
    p.add_argument("--classifications", required=True, help="Zooniverse classification export CSV")
    p.add_argument("--gold", help="CSV of known subjects: object_id (or subject_id), is_lens")
    p.add_argument("--run-dir", help="join the result with this run's candidates")
    p.add_argument("--out", required=True, help="output CSV")
    p.add_argument("--task", default="T0", help="question task key (default T0)")
    p.add_argument("--yes", default="Yes", help="answer meaning 'lens' (default Yes)")
    p.add_argument("--prior", type=_arg.fraction, help="lens probability before any vote (config review.swap_prior)")
    p.set_defaults(func=_cmd_swap)

    p = sub.add_parser("info", help="describe a cutout store: schema, bands, tiles, rows, classes, encoding, size")
    p.add_argument("store", help="store path or URL")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(func=_cmd_info)

    p = sub.add_parser("convert", help="rewrite a store (any readable schema) as the current one, pixels re-encoded")
    p.add_argument("src", help="the store to read")
    p.add_argument("dst", help="the store to write")
    p.add_argument(
        "--step",
        type=_arg.quantise_step,
        metavar="SIGMA",
        help="quantisation step in units of each stamp's sky noise; 0 keeps float32 values "
        "exactly (config store.quantise.step: 0.33, rms error 0.095 sigma)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace DST if it exists")
    g = p.add_argument_group("where tasks run")
    g.add_argument(
        "--cluster",
        default="none",
        metavar="SPEC",
        type=_arg.cluster_or_none,
        help="'none' (default: tile by tile in this process), or any --cluster of search",
    )
    p.set_defaults(func=_cmd_convert)

    p = sub.add_parser("config", help="show the effective configuration")
    p.add_argument("action", choices=["show"])
    p.set_defaults(func=_cmd_config)

    p = sub.add_parser("demo", help="mock survey → search with the default model → scored against the truth")
    p.add_argument("--out", default="demo-output", help="output directory (default: demo-output)")
    p.add_argument("--tiles", type=_arg.count)
    p.add_argument("--per-tile", type=_arg.count)
    p.add_argument("--lens-fraction", type=_arg.fraction)
    p.add_argument("--seed", type=int)
    p.add_argument(
        "--real-galaxies",
        metavar="DIR",
        help="real DES galaxy cubes for the real false-positive rate, held-out rows only "
        "(config demo.real_galaxies: ../shared/data/des_galaxies)",
    )
    p.add_argument(
        "--fit-top",
        type=_arg.non_negative_int,
        metavar="N",
        help="fit lens models to the best N candidates and report the purity before and after "
        "(config demo.fit_top: 20; 0: no fit)",
    )
    _cluster_arg(p)
    p.set_defaults(func=_cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the ``lensdask`` command line; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # a usage error: its one line is printed; --help and --version still exit
        if exc.code in (0, None):
            raise
        return int(exc.code) if isinstance(exc.code, int) else 2
    args.argv = argv
    try:
        return args.func(args)
    except (LensdaskError, FileExistsError) as exc:
        message = " ".join(str(exc).splitlines())  # one line, whatever the message holds
        print(f"lensdask {args.command}: error: {message}", file=sys.stderr)
        return 2
    except OSError as exc:
        import errno

        # an output that cannot be written (read-only, no permission, disk full): one line, no traceback
        if exc.errno not in (errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOSPC, errno.EDQUOT):
            raise
        where = f" {exc.filename}" if exc.filename else ""
        print(f"lensdask {args.command}: error: cannot write{where}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
