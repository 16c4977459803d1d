"""The ``lensdask`` command: one thin subcommand per public API function.

``main(argv) -> int`` parses, calls the function of the same name, prints a short
report and returns the exit status: 0 success, 1 some tiles failed, 2 bad input.
"""

from __future__ import annotations

import argparse
import json
import sys

from .errors import LensdaskError


def _cluster_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--cluster", default="local", metavar="SPEC",
        help="where tasks run: 'local' (a LocalCluster, default) or a scheduler address tcp://HOST:PORT",
    )


def _with_client(spec: str):
    from .cluster import cluster_client

    return cluster_client(spec)


def _cmd_simulate(a) -> int:
    from .simulate import simulate

    with _with_client(a.cluster) as client:
        store = simulate(
            a.out, a.n, a.seed, lens_fraction=a.lens_fraction, partition_size=a.partition_size,
            client=client, overwrite=a.overwrite,
        )
    print(f"wrote {store}")
    return 0


def _cmd_mock_survey(a) -> int:
    from .survey import mock_survey

    with _with_client(a.cluster) as client:
        store, truth = mock_survey(
            a.out, a.tiles, a.per_tile, a.lens_fraction, a.seed, truth=a.truth, client=client,
            overwrite=a.overwrite,
        )
    print(f"wrote {store}\ntruth table (never read by search): {truth}")
    return 0


def _cmd_train(a) -> int:
    from .model import train

    card = train(
        a.data, a.out, arch=a.arch, epochs=a.epochs, batch_size=a.batch_size, learning_rate=a.lr,
        device=a.device, seed=a.seed, command="lensdask " + " ".join(a.argv),
    )
    m = card.get("metrics", {})
    print(f"wrote {a.out} ({card['model_id']}); validation AUROC {m.get('auroc', float('nan')):.4f}")
    return 0


def _cmd_evaluate(a) -> int:
    from .model import evaluate

    metrics = evaluate(a.model, a.data, json_path=a.json, batch_size=a.batch_size, device=a.device)
    print(json.dumps(metrics, indent=2))
    return 0


def _cmd_search(a) -> int:
    from .model.checkpoint import check_compatible, read_card, resolve_model_dir
    from .search import search
    from .store import open_store

    # Bad input fails here, before any cluster is started.
    check_compatible(read_card(resolve_model_dir(a.model)), open_store(a.zarr))
    with _with_client(a.cluster) as client:
        result = search(
            a.zarr, a.model, a.out, client=client, threshold=a.threshold, floor=a.floor,
            batch_size=a.batch_size, device=a.device, resume=a.resume,
        )
    s = result.summary
    print(
        f"searched {s['tiles_searched']} of {s['tiles_total']} tiles ({s['rows']} cutouts, "
        f"{s['rows_nan']} flagged for non-finite pixels) with {s['model_id']} in {s['seconds']} s"
    )
    print(f"{s['candidates']} candidates with score >= {s['threshold']}: {result.run_dir / 'candidates.parquet'}")
    if len(result.failures):
        print(f"{len(result.failures)} tiles FAILED (see {result.run_dir / 'failures.parquet'}):", file=sys.stderr)
        for row in result.failures.itertuples():
            print(f"  {row.tile}: {row.error}", file=sys.stderr)
        return 1
    return 0


def _cmd_config(a) -> int:
    from . import config

    print(config.show(), end="")
    return 0


def _cmd_demo(a) -> int:
    from .demo import demo, format_summary

    with _with_client(a.cluster) as client:
        summary = demo(
            a.out, tiles=a.tiles, per_tile=a.per_tile, lens_fraction=a.lens_fraction, seed=a.seed,
            client=client,
        )
    print(format_summary(summary))
    print(f"outputs in {a.out}/ (summary.json, run/candidates.parquet)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``lensdask`` command."""
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="lensdask", description="Find strong gravitational lenses in survey images with Dask."
    )
    parser.add_argument("--version", action="version", version=f"lensdask {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("simulate", help="simulate labelled lenses and non-lenses into a training store")
    p.add_argument("--out", required=True, help="output store (path or fsspec URL), e.g. train.zarr")
    p.add_argument("--n", type=int, required=True, help="number of cutouts")
    p.add_argument("--seed", type=int, default=0, help="run seed; row i depends only on (seed, i)")
    p.add_argument("--lens-fraction", type=float, help="fraction of lenses (config simulate.lens_fraction)")
    p.add_argument("--partition-size", type=int, help="rows per task and per tile (config simulate.partition_size)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing store")
    _cluster_arg(p)
    p.set_defaults(func=_cmd_simulate)

    p = sub.add_parser("mock-survey", help="make a DES-like survey store with injected lenses and a truth table")
    p.add_argument("--out", required=True, help="output store, e.g. des.zarr")
    p.add_argument("--tiles", type=int, help="number of tiles (config mock_survey.tiles)")
    p.add_argument("--per-tile", type=int, help="cutouts per tile (config mock_survey.per_tile)")
    p.add_argument("--lens-fraction", type=float, help="fraction of injected lenses (config mock_survey.lens_fraction)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--truth", help="truth table path (default: OUT with .truth.parquet)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing store")
    _cluster_arg(p)
    p.set_defaults(func=_cmd_mock_survey)

    p = sub.add_parser("train", help="train a Vision Transformer on a labelled store")
    p.add_argument("--data", required=True, help="labelled training store")
    p.add_argument("--out", required=True, help="checkpoint directory to write")
    p.add_argument("--arch", help="architecture name (config train.arch)")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float, help="peak learning rate")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"])
    p.add_argument("--seed", type=int)
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("evaluate", help="AUROC, TPR0, TPR10 and TPR at FPR 1e-3 of a model on a labelled store")
    p.add_argument("--model", help="checkpoint directory (default: the shipped model)")
    p.add_argument("--data", required=True, help="labelled store")
    p.add_argument("--json", help="also write the metrics to this JSON file")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--device", choices=["auto", "cpu", "cuda"])
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser("search", help="score every cutout of a survey store, one task per tile")
    p.add_argument("--zarr", required=True, help="survey store")
    p.add_argument("--model", help="checkpoint directory (default: the shipped model)")
    p.add_argument("--out", default="lensdask-run", help="run directory (default: lensdask-run)")
    p.add_argument("--threshold", type=float, help="lens probability for candidates (config search.threshold)")
    p.add_argument("--floor", type=float, help="lens probability kept in per-tile outputs (config search.floor)")
    p.add_argument("--batch-size", type=int, help="cutouts per forward pass (config search.batch_size)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], help="device on the workers")
    p.add_argument("--resume", action="store_true", help="skip tiles already finished in --out")
    _cluster_arg(p)
    p.set_defaults(func=_cmd_search)

    p = sub.add_parser("config", help="show the effective configuration")
    p.add_argument("action", choices=["show"])
    p.set_defaults(func=_cmd_config)

    p = sub.add_parser("demo", help="mock survey → search with the default model → scored against the truth")
    p.add_argument("--out", default="demo-output", help="output directory (default: demo-output)")
    p.add_argument("--tiles", type=int)
    p.add_argument("--per-tile", type=int)
    p.add_argument("--lens-fraction", type=float)
    p.add_argument("--seed", type=int)
    _cluster_arg(p)
    p.set_defaults(func=_cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the ``lensdask`` command line; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    try:
        return args.func(args)
    except (LensdaskError, FileExistsError) as exc:
        print(f"lensdask {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
