"""``lensdask fit RUN_DIR``: fit the best candidates of a search run, chunk by chunk on Dask, and rank them again.

Layout it adds to the run directory::

    RUN_DIR/fit/signature.json        the fit's settings (and their hash): a rerun with others is refused
                                      unless overwrite=True (which removes RUN_DIR/fit first); with the
                                      zero points and exposure time used and where they came from
                                      (``photometry``, :func:`photometry`)
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
    that raised), ``fitted`` (candidates fitted by this call), ``resumed`` (found done), ``run_dir``, and
    ``photometry`` (the zero points and exposure time used: :func:`photometry`)."""

    fits: pd.DataFrame
    failures: pd.DataFrame
    fitted: int
    resumed: int
    run_dir: pathlib.Path
    photometry: dict | None = None


SIMULATED = "simulated"
"""Pixels in e-/s of a survey's simulated instrument (:func:`pixel_units`)."""

COADD = "coadd"
"""Pixels in a survey's coadd unit, of AB magnitude its profile's ``zeropoint`` (:func:`pixel_units`)."""


def _made_by(provenance: dict) -> dict:
    """The provenance of the command that made a store's pixels: a converted store's original's."""
    while isinstance(provenance.get("converted_from"), dict):
        provenance = dict(provenance["converted_from"].get("provenance") or {})
    return provenance


def pixel_units(store) -> str:
    """How a store's pixels are scaled: :data:`SIMULATED` (e-/s) or :data:`COADD` (the survey's coadd unit).

    Read from what the store records of how it was made: its provenance (a converted store's original's)
    names its ``inputs`` (ingest: :data:`COADD`), or its ``coadd_years`` (simulate, mock-survey:
    :data:`SIMULATED`, unless simulate painted the arcs on real cutouts, ``backgrounds``, which keep
    their own units: :data:`COADD`); else the PSF origin of its first written tile (``simulated``, or
    one an ingest found); else, for a store that says neither, :data:`SIMULATED`, as fits were before
    survey profiles.

    Parameters
    ----------
    store : lensdask.store.CutoutStore

    Returns
    -------
    str
        :data:`SIMULATED` or :data:`COADD`.
    """
    made = _made_by(dict(getattr(store, "provenance", {}) or {}))
    if "inputs" in made:
        return COADD
    if "coadd_years" in made or "truth" in made:  # simulate; mock-survey (its truth table)
        return COADD if made.get("backgrounds") else SIMULATED
    written = store.written_tiles() if getattr(store, "psf_known", False) else []
    origins = store.psf_origins(int(written[0])) if len(written) else []
    if any(o.startswith("simulated") for o in origins):
        return SIMULATED
    return COADD if any(origins) else SIMULATED


def photometry(store=None) -> dict:
    """The zero points and exposure time a fit of ``store`` uses, and where they come from.

    Config ``fit.zero_points`` and ``fit.exposure_time`` win when set. Left null they come from the
    store's survey profile (:mod:`lensdask.survey.profiles`) and :func:`pixel_units`:

    - simulated stores (e-/s): each band's e-/s zero point of the survey's simulated instrument, and the
      shortest of the bands' total exposures (``num_exposures x exposure_time``; the fit's Poisson term
      takes one value for every band, and the shortest understates no band's noise):
      :meth:`~lensdask.survey.profiles.SurveyProfile.simulated_photometry`, ``des`` at the store's
      ``coadd_years`` (g 26.58, r 26.78, i 26.75, z 26.48 and 1800 s for 6 years);
    - ingested coadds: the profile's ``zeropoint`` (the coadd unit's) in every band, and config
      ``fit.coadd_exposure_time``.

    Parameters
    ----------
    store : lensdask.store.CutoutStore, optional
        The store fitted; None: a simulated ``des`` store of config ``survey.bands``.

    Returns
    -------
    dict
        ``survey``, ``pixels`` (:data:`SIMULATED` or :data:`COADD`), ``zero_points`` (``{band: AB mag of one
        image unit}``), ``exposure_time`` (s, image units x it = counts; 0: no Poisson term),
        ``exposure_times`` (``{band: s}`` of a simulated store's bands, else None) and ``source``
        (``{"zero_points": "config" or "survey", "exposure_time": ...}``).

    Raises
    ------
    LensdaskError
        The store's survey has no profile, or no simulated instrument for a simulated store's band (set
        ``fit.zero_points`` and ``fit.exposure_time``).
    """
    from ..survey.profiles import get_profile

    survey = "des" if store is None else str(getattr(store, "survey", "des"))
    units = SIMULATED if store is None else pixel_units(store)
    zp_config, t_config = config.get("fit.zero_points"), config.get("fit.exposure_time")
    zero_points = None if zp_config is None else {str(b): float(v) for b, v in dict(zp_config).items()}
    exposure_time = None if t_config is None else float(t_config)
    exposure_times: dict[str, float] | None = None
    survey_zp: dict[str, float] = {}
    survey_t = 0.0
    if zero_points is None or exposure_time is None:
        profile = get_profile(survey)
        bands = list(profile.bands) if store is None else [str(b) for b in store.bands]
        if units == SIMULATED:
            years = _made_by(dict(store.provenance)).get("coadd_years") if store is not None else None
            try:
                per_band = {b: profile.simulated_photometry(b, years) for b in bands}
            except LensdaskError as exc:
                raise FitError(
                    f"{exc}: set the zero points and exposure time of the fit (config fit.zero_points, "
                    "fit.exposure_time)"
                ) from None
            survey_zp = {b: zp for b, (zp, _) in per_band.items()}
            exposure_times = {b: t for b, (_, t) in per_band.items()}
            survey_t = min(exposure_times.values())
        else:
            survey_zp = dict.fromkeys(bands, float(profile.zeropoint))
            survey_t = float(config.get("fit.coadd_exposure_time") or 0.0)
    return {
        "survey": survey,
        "pixels": units,
        "zero_points": zero_points if zero_points is not None else survey_zp,
        "exposure_time": exposure_time if exposure_time is not None else survey_t,
        "exposure_times": exposure_times if exposure_time is None else None,
        "source": {
            "zero_points": "survey" if zp_config is None else "config",
            "exposure_time": "survey" if t_config is None else "config",
        },
    }


def settings_from_config(store=None, *, phot: dict | None = None) -> tuple[FitSettings, dict]:
    """The :class:`FitSettings` and the other per-candidate options (``fit.*`` in the configuration).

    Parameters
    ----------
    store : lensdask.store.CutoutStore, optional
        The store fitted: the zero points and exposure time config leaves null come from its survey
        (:func:`photometry`; None: a simulated ``des`` store's).
    phot : dict, optional
        :func:`photometry` of ``store``, when the caller has it.

    Returns
    -------
    (FitSettings, dict)
        The settings (``exposure_time`` in s), and ``fit_radius``, ``mask_radius`` (arcsec), ``mask_snr``,
        ``max_abs_dbic``, ``max_chi2nu``, ``max_source_size``, ``restart_tolerance`` and ``zero_points``
        (``{band: AB mag of one image unit}``).
    """
    phot = photometry(store) if phot is None else phot
    noise = str(config.get("fit.evidence_noise"))
    if noise not in ("recorded", "fitted"):
        raise LensdaskError(f"fit.evidence_noise is {noise!r}: recorded or fitted")
    penalty = str(config.get("fit.evidence_penalty"))
    if penalty not in ("bic", "laplace"):
        raise LensdaskError(f"fit.evidence_penalty is {penalty!r}: bic or laplace")
    s = FitSettings(
        supersampling=int(config.get("fit.supersampling")),
        core_supersampling=int(config.get("fit.core_supersampling")),
        exposure_time=float(phot["exposure_time"]),
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
        core_point=bool(config.get("fit.core_point")),
        null_ring_blobs=tuple(int(v) for v in config.get("fit.null_ring_blobs")),
        evidence_noise=noise,
        evidence_penalty=penalty,
    )
    conf = {
        "fit_radius": float(config.get("fit.fit_radius")),
        "mask_radius": float(config.get("fit.mask_radius")),
        "mask_snr": float(config.get("fit.mask_snr")),
        "max_abs_dbic": float(config.get("fit.max_abs_dbic")),
        "max_chi2nu": float(config.get("fit.max_chi2nu")),
        "max_source_size": float(config.get("fit.max_source_size")),
        "restart_tolerance": float(config.get("fit.restart_tolerance")),
        "zero_points": dict(phot["zero_points"]),
    }
    return s, conf


def signature(settings: FitSettings, conf: dict, seed: int, psf: dict | None, phot: dict | None = None) -> dict:
    """The settings a fit's results depend on, and their hash (``id``).

    The zero points (``options``) and exposure time (``settings``) are the values used; ``phot``
    (:func:`photometry`: the survey, its pixel units, where the values came from) is recorded beside
    them as ``photometry``, outside the hash: the same values give the same fit whatever their source.
    """
    doc = {"settings": asdict(settings), "options": conf, "seed": int(seed), "psf": psf or {}}
    text = json.dumps(doc, sort_keys=True, default=float)
    out = {**doc, "id": hashlib.sha256(text.encode()).hexdigest()[:16]}
    if phot is not None:
        out["photometry"] = phot
    return out


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
    every candidate, the PSF fill, seed, chunk size, settings, their signature and the photometry
    (:func:`photometry`)."""

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
    photometry: dict


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
    survey: str | None = None,
) -> FitPlan:
    """Check a fit's input and plan it, writing nothing (the CLI calls it before starting a cluster).

    Raises
    ------
    FitError, LensdaskError
        As :func:`fit`.
    """
    from ..rundir import locate
    from ..survey.profiles import check_store_survey, get_profile

    if survey is not None:
        get_profile(survey)  # an unknown name is refused before anything is read
    run_dir = pathlib.Path(run_dir)
    path = run_dir / CANDIDATES
    if not path.exists():
        raise FitError(f"{run_dir} has no {CANDIDATES}: run `lensdask search` first")
    opened = run_store(run_dir, store)  # one line if there is no store
    check_store_survey(opened, survey)
    if top is None and min_score is None:
        top = int(config.get("fit.top"))
    seed = int(config.get("fit.seed", seed))
    chunk_size = max(1, int(config.get("fit.chunk_size", chunk_size)))
    phot = photometry(opened)
    settings, conf = settings_from_config(opened, phot=phot)
    psf_fill = parse_psf(psf, opened.bands)
    candidates = pd.read_parquet(path)
    chosen = select(candidates, top, min_score)
    if not len(chosen):
        raise FitError(f"no candidates of {run_dir} to fit (top {top}, min score {min_score})")
    where = locate(opened, chosen)
    chosen = chosen.assign(tile_index=where["tile_index"].to_numpy(), row=where["row"].to_numpy())
    _check_psf(opened, chosen, psf_fill)
    sig = signature(settings, conf, seed, psf_fill, phot)
    _check_signature(run_dir / FIT_DIR, sig, overwrite)
    return FitPlan(run_dir, opened, chosen, candidates, psf_fill, seed, chunk_size, settings, conf, sig, phot)


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
    survey: str | None = None,
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
    survey : str, optional
        The survey the store must record (CLI ``--survey``); None: whatever it records.

    Returns
    -------
    FitResult

    Notes
    -----
    Magnitudes and the Poisson noise of the light take the zero points and exposure time of the store's
    survey unless config ``fit.zero_points`` and ``fit.exposure_time`` set them (:func:`photometry`);
    ``RUN_DIR/fit/signature.json`` records the values used and where they came from.

    Raises
    ------
    FitError
        No candidates, a band without PSF for some candidate (and no ``psf``), a run fitted before with
        other settings (without ``overwrite``), no zero points for a simulated store's survey.
    LensdaskError
        No store (a run without ``summary.json``, a store that moved); a store of another survey than
        ``survey`` (:class:`~lensdask.survey.profiles.SurveyMismatchError`), an unknown ``survey`` or store
        survey (:class:`~lensdask.survey.profiles.UnknownSurveyError`).
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
        survey=survey,
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
    results, failed = run_tiles(
        jobs, client=client, progress=progress, desc="fit chunks", unit="chunk", key_prefix="fit-chunk"
    )
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
    return FitResult(fits, failures_table, fitted, resumed, run_dir, plan.photometry)


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
