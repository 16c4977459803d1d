"""``lensdask fit RUN_DIR``: fit the best candidates of a search run, chunk by chunk on Dask, and rank them again.

Layout it adds to the run directory::

    RUN_DIR/fit/signature.json        the fit's settings (and their hash): a rerun with others is refused
                                      unless overwrite=True (which removes RUN_DIR/fit first)
    RUN_DIR/fit/<chunk>.parquet       one row per candidate of a finished chunk (``tile``, ``object_id``,
                                      the fit columns of :mod:`lensdask.fit.candidate`); written atomically
    RUN_DIR/fit/<chunk>.npz           the chunk's model images (lens, null, source; float32) and masks
    RUN_DIR/fits.parquet              every fitted candidate, ranked by the combined score
    RUN_DIR/fit_failures.parquet      chunks whose task raised, and candidates whose fit raised
    RUN_DIR/candidates.parquet        rewritten with the fit columns, ``combined_score`` and ``combined_rank``

A chunk is a list of candidates, named by a hash of their ids. Resume is by candidate: every chunk file
of the same signature is read first, and only candidates in none of them are fitted. Each candidate's
seed comes from (run seed, object id) (:func:`lensdask.fit.candidate.candidate_seed`), so the table is
the same whatever the chunking. A candidate's model images go with its row, for review.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import shutil
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, cast

import numpy as np
import pandas as pd

from .. import config
from ..errors import LensdaskError
from ..fanout import FAILURE_COLUMNS, run_tiles
from ..rundir import CANDIDATES, run_store, write_atomic
from .candidate import candidate_seed, combined_score, fit_columns, fit_row
from .lensmodel import FitSettings

if TYPE_CHECKING:
    from ..store import CutoutStore

FIT_DIR = "fit"
FITS = "fits.parquet"
FIT_FAILURES = "fit_failures.parquet"
SIGNATURE = "signature.json"


class FitError(LensdaskError):
    """A fit cannot start: no candidates, no PSF for a band, a run fitted before with other settings."""


@dataclass
class FitResult:
    """What :func:`fit` did: ``fits`` (every fitted candidate, ranked), ``failures`` (chunks or candidates
    that raised), ``fitted`` (candidates fitted by this call), ``resumed`` (found done), ``run_dir``."""

    fits: pd.DataFrame
    failures: pd.DataFrame
    fitted: int
    resumed: int
    run_dir: pathlib.Path


def settings_from_config() -> tuple[FitSettings, dict]:
    """The :class:`FitSettings` and the other per-candidate options (``fit.*`` in the configuration)."""
    s = FitSettings(
        supersampling=int(config.get("fit.supersampling")),
        core_supersampling=int(config.get("fit.core_supersampling")),
        exposure_time=float(config.get("fit.exposure_time") or 0.0),
        theta_E_grid=int(config.get("fit.theta_E_grid")),
        lens_starts=int(config.get("fit.lens_starts")),
        null_blobs=tuple(int(v) for v in config.get("fit.null_blobs")),
        lens_blobs=tuple(int(v) for v in config.get("fit.lens_blobs")),
        null_starts=int(config.get("fit.null_starts")),
        max_iterations=int(config.get("fit.max_iterations")),
        confirm=bool(config.get("fit.confirm")),
        confirm_rounds=int(config.get("fit.confirm_rounds")),
        restart_tolerance=float(config.get("fit.restart_tolerance")),
        theta_E_range=tuple(float(v) for v in config.get("fit.theta_E_range")),  # type: ignore[arg-type]
        source_r_max=float(config.get("fit.source_r_max")),
        shear_sigma=float(config.get("fit.priors.shear_sigma")),
        mass_light_sigma=float(config.get("fit.priors.mass_light_sigma")),
        light_profiles=int(config.get("fit.light_profiles")),
        ftol=float(config.get("fit.ftol")),
    )
    conf = {
        "fit_radius": float(config.get("fit.fit_radius")),
        "mask_radius": float(config.get("fit.mask_radius")),
        "mask_snr": float(config.get("fit.mask_snr")),
        "max_abs_dbic": float(config.get("fit.max_abs_dbic")),
        "max_chi2nu": float(config.get("fit.max_chi2nu")),
        "max_source_size": float(config.get("fit.max_source_size")),
        "restart_tolerance": float(config.get("fit.restart_tolerance")),
        "zero_points": dict(config.get("fit.zero_points") or {}),
    }
    return s, conf


def signature(settings: FitSettings, conf: dict, seed: int, psf: dict | None) -> dict:
    """The settings a fit's results depend on, and their hash (``id``)."""
    doc = {"settings": asdict(settings), "options": conf, "seed": int(seed), "psf": psf or {}}
    text = json.dumps(doc, sort_keys=True, default=float)
    return {**doc, "id": hashlib.sha256(text.encode()).hexdigest()[:16]}


def parse_psf(text: str | float | dict | None, bands) -> dict[str, float] | None:
    """``--psf``: one FWHM (arcsec) for every band (``1.1``), or per band (``g=1.2,r=1.0``); None stays None.

    Raises
    ------
    FitError
        A value that is not a positive number, or an unknown band.
    """
    if text is None or isinstance(text, dict):
        return text
    out: dict[str, float] = {}
    try:
        if isinstance(text, (int, float)) or "=" not in str(text):
            out = {b: float(text) for b in bands}
        else:
            for part in str(text).split(","):
                b, v = part.split("=", 1)
                if b.strip() not in bands:
                    raise FitError(f"--psf names the band {b.strip()!r}; the store's bands are {','.join(bands)}")
                out[b.strip()] = float(v)
    except ValueError:
        raise FitError(f"--psf {text!r}: give a FWHM in arcsec (1.1) or per band (g=1.2,r=1.0)") from None
    bad = [b for b, v in out.items() if not (np.isfinite(v) and v > 0)]
    if bad:
        raise FitError(f"--psf: the FWHM of {','.join(bad)} must be a positive number of arcsec")
    return out


def select(candidates: pd.DataFrame, top: int | None, min_score: float | None) -> pd.DataFrame:
    """The candidates to fit: the ``top`` best by score and/or those scoring at least ``min_score``."""
    cand = candidates.sort_values(["score", "tile", "object_id"], ascending=[False, True, True], kind="stable")
    if min_score is not None:
        cand = cand[cand["score"] >= float(min_score)]
    if top is not None:
        cand = cand.head(int(top))
    return cand.reset_index(drop=True)


def chunk_name(table: pd.DataFrame) -> str:
    """``chunk-<hash>`` of the (tile, object id) pairs of a chunk."""
    keys = ";".join(f"{t}/{o}" for t, o in zip(table["tile"], table["object_id"]))
    return "chunk-" + hashlib.sha256(keys.encode()).hexdigest()[:12]


def fit_chunk(
    store_url: str,
    out_dir: str,
    name: str,
    rows: pd.DataFrame,
    psf_fill: dict | None,
    seed: int,
    settings: FitSettings,
    conf: dict,
) -> dict:
    """Fit the candidates of one chunk and write ``<out_dir>/<name>.parquet`` (and ``.npz``); a task.

    ``rows`` holds ``tile``, ``object_id``, ``tile_index``, ``row``. Returns ``{"rows", "failures"}``, the
    latter ``[{"tile", "error", "traceback"}]`` of candidates whose fit raised (``tile`` names the candidate).
    """
    from ..store import open_store

    store = open_store(store_url)
    bands = store.bands
    out = []
    models: dict[str, np.ndarray] = {}
    failures = []
    for t, group in rows.groupby("tile_index", sort=False):
        lo, hi = int(group["row"].min()), int(group["row"].max()) + 1
        images = store.read_images(int(t), lo, hi)
        psf = store.read_psf(int(t), lo, hi)
        noise = store.read_noise(int(t), lo, hi)
        for i, r in zip(group.index, group["row"].to_numpy() - lo):
            fwhm = psf[r].astype(np.float64)
            if psf_fill:
                fwhm = np.array(
                    [fwhm[k] if np.isfinite(fwhm[k]) else psf_fill.get(b, np.nan) for k, b in enumerate(bands)]
                )
            oid = int(rows.at[i, "object_id"])
            row, model, tb = fit_row(
                images[r],
                fwhm,
                None if noise is None else noise[r],
                bands,
                store.pixel_scale,
                seed=candidate_seed(seed, oid),
                settings=settings,
                conf=conf,
            )
            out.append({"tile": rows.at[i, "tile"], "object_id": oid, **row})
            if tb is not None:
                failures.append({"tile": f"{rows.at[i, 'tile']}/{oid}", "error": row["fit_status"], "traceback": tb})
            if model is not None:
                for k, v in model.items():
                    models[f"{oid}_{k}"] = (
                        v.astype(np.float32) if v.dtype != np.int8 else v
                    )  # float16 overflows bright stamps
    table = pd.DataFrame(out, columns=["tile", "object_id", *fit_columns(bands)])
    folder = pathlib.Path(out_dir)

    def save_models(p: pathlib.Path) -> None:
        with open(p, "wb") as fh:
            np.savez_compressed(fh, **models)  # type: ignore[arg-type]

    write_atomic(folder / f"{name}.npz", save_models)
    # the Parquet last: its presence marks the chunk done
    write_atomic(folder / f"{name}.parquet", lambda p: table.to_parquet(p, index=False))
    return {"rows": len(table), "failures": failures}


def read_fits(run_dir: str | os.PathLike) -> pd.DataFrame:
    """Every finished chunk's rows (``RUN_DIR/fit/*.parquet``), one table (empty if none)."""
    folder = pathlib.Path(run_dir) / FIT_DIR
    parts = [pd.read_parquet(p) for p in sorted(folder.glob("chunk-*.parquet"))] if folder.is_dir() else []
    if not parts:
        return pd.DataFrame(columns=["tile", "object_id"])
    return pd.concat(parts, ignore_index=True).drop_duplicates(["tile", "object_id"], keep="last")


def _check_signature(folder: pathlib.Path, sig: dict, overwrite: bool) -> None:
    """Refuse a run fitted before with other settings, unless ``overwrite``."""
    path = folder / SIGNATURE
    if not path.exists() or overwrite:
        return
    old = json.loads(path.read_text())
    if old.get("id") == sig["id"]:
        return
    changed = [
        k
        for k in ("settings", "options", "seed", "psf")
        if json.dumps(old.get(k), sort_keys=True, default=float) != json.dumps(sig[k], sort_keys=True, default=float)
    ]
    raise FitError(
        f"{folder.parent} was fitted with other settings ({', '.join(changed) or 'unknown'} differ); "
        "pass overwrite=True (CLI: --overwrite) to fit it again from scratch"
    )


@dataclass
class FitPlan:
    """What :func:`check` found: the run, its store, the candidates chosen (with ``tile_index`` and ``row``),
    every candidate, the PSF fill, seed, chunk size, settings and their signature."""

    run_dir: pathlib.Path
    store: CutoutStore
    chosen: pd.DataFrame
    candidates: pd.DataFrame
    psf: dict | None
    seed: int
    chunk_size: int
    settings: FitSettings
    conf: dict
    signature: dict


def check(
    run_dir: str | os.PathLike,
    *,
    top: int | None = None,
    min_score: float | None = None,
    store=None,
    psf: str | float | dict | None = None,
    seed: int | None = None,
    chunk_size: int | None = None,
    overwrite: bool = False,
) -> FitPlan:
    """Check a fit's input and plan it, writing nothing (the CLI calls it before starting a cluster).

    Raises
    ------
    FitError, LensdaskError
        As :func:`fit`.
    """
    from ..rundir import locate

    run_dir = pathlib.Path(run_dir)
    path = run_dir / CANDIDATES
    if not path.exists():
        raise FitError(f"{run_dir} has no {CANDIDATES}: run `lensdask search` first")
    opened = run_store(run_dir, store)  # one line if there is no store
    if top is None and min_score is None:
        top = int(config.get("fit.top"))
    seed = int(config.get("fit.seed", seed))
    chunk_size = max(1, int(config.get("fit.chunk_size", chunk_size)))
    settings, conf = settings_from_config()
    psf_fill = parse_psf(psf, opened.bands)
    candidates = pd.read_parquet(path)
    chosen = select(candidates, top, min_score)
    if not len(chosen):
        raise FitError(f"no candidates of {run_dir} to fit (top {top}, min score {min_score})")
    where = locate(opened, chosen)
    chosen = chosen.assign(tile_index=where["tile_index"].to_numpy(), row=where["row"].to_numpy())
    _check_psf(opened, chosen, psf_fill)
    sig = signature(settings, conf, seed, psf_fill)
    _check_signature(run_dir / FIT_DIR, sig, overwrite)
    return FitPlan(run_dir, opened, chosen, candidates, psf_fill, seed, chunk_size, settings, conf, sig)


def fit(
    run_dir: str | os.PathLike,
    *,
    top: int | None = None,
    min_score: float | None = None,
    store=None,
    psf: str | float | dict | None = None,
    seed: int | None = None,
    chunk_size: int | None = None,
    client=None,
    overwrite: bool = False,
    progress: bool = True,
) -> FitResult:
    """Fit a lens model and a null model to the best candidates of a search run, and rank them again.

    Parameters
    ----------
    run_dir : str or path
        A finished search run (``candidates.parquet``, ``summary.json``).
    top : int, optional
        Fit the ``top`` best candidates by score (config ``fit.top`` when neither ``top`` nor ``min_score``).
    min_score : float, optional
        Fit the candidates scoring at least this.
    store : str or path, optional
        The survey store, when it moved since the search.
    psf : float, str or dict, optional
        FWHM (arcsec) for rows whose store records none: one for every band, ``"g=1.2,r=1.0"``, or a dict.
    seed : int, optional
        Run seed (config ``fit.seed``); each candidate's comes from it and its object id.
    chunk_size : int, optional
        Candidates per task (config ``fit.chunk_size``).
    client : distributed.Client, optional
        Where the chunks run (default the current client, else this process).
    overwrite : bool
        Fit again from scratch a run fitted before with other settings.
    progress : bool

    Returns
    -------
    FitResult

    Raises
    ------
    FitError
        No candidates, a band without PSF for some candidate (and no ``psf``), a run fitted before with
        other settings (without ``overwrite``).
    LensdaskError
        No store (a run without ``summary.json``, a store that moved).
    """
    from ..cluster import current_client

    plan = check(
        run_dir,
        top=top,
        min_score=min_score,
        store=store,
        psf=psf,
        seed=seed,
        chunk_size=chunk_size,
        overwrite=overwrite,
    )
    run_dir, opened, chosen, candidates = plan.run_dir, plan.store, plan.chosen, plan.candidates
    psf_fill, seed, chunk_size, settings, conf = plan.psf, plan.seed, plan.chunk_size, plan.settings, plan.conf
    folder = run_dir / FIT_DIR
    if (
        (folder / SIGNATURE).exists()
        and overwrite
        and json.loads((folder / SIGNATURE).read_text()).get("id") != plan.signature["id"]
    ):
        shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    sig = plan.signature
    write_atomic(folder / SIGNATURE, lambda p: p.write_text(json.dumps(sig, indent=1, default=float)))
    done = read_fits(run_dir)
    key = chosen["tile"].astype(str) + "/" + chosen["object_id"].astype(str)
    done_keys = set(done["tile"].astype(str) + "/" + done["object_id"].astype(str))
    todo = chosen[~key.isin(done_keys)].reset_index(drop=True)
    resumed = len(chosen) - len(todo)
    jobs: list[tuple] = []
    for a in range(0, len(todo), chunk_size):
        part = todo.iloc[a : a + chunk_size][["tile", "object_id", "tile_index", "row"]]
        name = chunk_name(part)
        jobs.append((name, fit_chunk, (str(opened.url), str(folder), name, part, psf_fill, seed, settings, conf), {}))
    client = client if client is not None else current_client()
    results, failed = run_tiles(jobs, client=client, progress=progress, desc="fit chunks", key_prefix="fit-chunk")
    failures = list(failed)
    for value in results.values():
        failures += cast(dict, value)["failures"]
    failures_table = pd.DataFrame(failures, columns=FAILURE_COLUMNS)
    fp = run_dir / FIT_FAILURES
    if len(failures_table):
        write_atomic(fp, lambda p: failures_table.to_parquet(p, index=False))
    else:
        fp.unlink(missing_ok=True)
    fits = rank(run_dir, candidates)
    fitted = sum(int(cast(dict, v)["rows"]) for v in results.values())
    return FitResult(fits, failures_table, fitted, resumed, run_dir)


def _check_psf(store, chosen: pd.DataFrame, psf_fill: dict | None) -> None:
    """Refuse, naming the band, candidates whose PSF the store does not know and ``psf`` does not give."""
    missing: dict[str, int] = {}
    for t, group in chosen.groupby("tile_index"):
        rows = group["row"].to_numpy()
        fwhm = store.read_psf(int(t), int(rows.min()), int(rows.max()) + 1)[rows - rows.min()]
        for k, b in enumerate(store.bands):
            if psf_fill and b in psf_fill:
                continue
            n = int((~np.isfinite(fwhm[:, k])).sum())
            if n:
                missing[b] = missing.get(b, 0) + n
    if missing:
        b = next(iter(missing))
        why = (
            "records no PSF" if not store.psf_known else f"has no PSF for {missing[b]} of the {len(chosen)} candidates"
        )
        raise FitError(
            f"band {b}: the store {store.url} {why} (bands without: {','.join(missing)}); "
            f"give --psf FWHM or --psf {b}=FWHM (arcsec)"
        )


def rank(run_dir: str | os.PathLike, candidates: pd.DataFrame | None = None) -> pd.DataFrame:
    """Merge the finished fits into ``candidates.parquet`` and write ``fits.parquet``, ranked by the combined score.

    ``combined_score`` (:func:`lensdask.fit.candidate.combined_score`, config ``fit.rank``) and
    ``combined_rank`` (1 = best) rank every candidate; unfitted ones by their network score alone.
    Returns the fitted candidates, best first.
    """
    run_dir = pathlib.Path(run_dir)
    if candidates is None:
        candidates = pd.read_parquet(run_dir / CANDIDATES)
    base = candidates.drop(columns=[c for c in candidates.columns if c.startswith("fit_") or c.startswith("combined_")])
    done = read_fits(run_dir)
    merged = base.merge(done, on=["tile", "object_id"], how="left") if len(done) else base.copy()
    weight = float(config.get("fit.rank.weight"))
    cap = float(config.get("fit.rank.cap"))
    if "fit_status" not in merged.columns:
        merged["fit_status"] = np.nan
        merged["fit_dbic"] = np.nan
        merged["fit_flags"] = ""
    merged["combined_score"] = combined_score(merged, weight=weight, cap=cap)
    order = np.lexsort(
        (merged["object_id"].to_numpy(), merged["tile"].astype(str).to_numpy(), -merged["combined_score"].to_numpy())
    )
    merged["combined_rank"] = 0
    merged.loc[merged.index[order], "combined_rank"] = np.arange(1, len(merged) + 1)
    write_atomic(run_dir / CANDIDATES, lambda p: merged.to_parquet(p, index=False))
    fits = merged[merged["fit_status"].notna()].sort_values("combined_rank").reset_index(drop=True)
    write_atomic(run_dir / FITS, lambda p: fits.to_parquet(p, index=False))
    return fits


def keep_fits(run_dir: str | os.PathLike, candidates: pd.DataFrame) -> pd.DataFrame:
    """The candidates of a run merged again, with the fits it already holds (``candidates`` unchanged if none).

    A merge (``lensdask merge``, or a search resumed) writes ``candidates.parquet`` afresh from the
    per-tile outputs; this puts back the fit columns and the combined rank of the candidates fitted
    before (:func:`rank`), so a merge never loses a fit.
    """
    run_dir = pathlib.Path(run_dir)
    if not any((run_dir / FIT_DIR).glob("chunk-*.parquet")):
        return candidates
    rank(run_dir, candidates)
    return pd.read_parquet(run_dir / CANDIDATES)
