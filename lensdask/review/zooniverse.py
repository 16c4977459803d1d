"""Hand candidates to citizen scientists: Zooniverse subject images and a Panoptes manifest.

The folder written by :func:`export_zooniverse` uploads with the Panoptes CLI::

    panoptes subject-set upload-subjects SUBJECT_SET_ID DIR/manifest.csv

Metadata columns starting with ``#`` are hidden from volunteers (Zooniverse's
convention), so scores and ids travel with the subjects without biasing anyone.

With ``model_panel=True`` (CLI ``--model-panel``), every candidate fitted by ``lensdask fit``
(``fit_status == "ok"``, models present) gets a second subject image, its model panel (data, lens
model, residual, reconstructed source: :mod:`lensdask.fit.models`), in the manifest column
``model_image``; θ_E, its error and ΔBIC travel in hidden columns, and the panel shows no numbers.
Those subjects go to ``manifest.csv``; candidates without a fit keep one image and go to
``manifest-unfitted.csv``, because the Panoptes CLI takes a manifest's file columns from its first
row and refuses an empty cell. Upload both (into one subject set, or two)::

    panoptes subject-set upload-subjects SUBJECT_SET_ID DIR/manifest.csv
    panoptes subject-set upload-subjects SUBJECT_SET_ID DIR/manifest-unfitted.csv
"""

from __future__ import annotations

import os
import pathlib

import pandas as pd

from ..deprecation import renamed_keywords
from ..errors import LensdaskError
from ..fit.models import candidate_models, model_panel_png
from ..images import png_bytes, sky_noise, view_image
from ..names import child_path, csv_safe
from ..rundir import best_candidates

UNFITTED_MANIFEST = "manifest-unfitted.csv"
"""With ``model_panel``: the manifest of the candidates without a lens-model fit (one image each)."""

HIDDEN_FIT_COLUMNS = {"#theta_E": "fit_theta_E", "#theta_E_err": "fit_theta_E_err", "#dbic": "fit_dbic"}
"""With ``model_panel``: hidden manifest columns of fitted subjects and the fit columns they copy."""


@renamed_keywords(zarr="store")
def export_zooniverse(
    run_dir: str | os.PathLike,
    out: str | os.PathLike,
    *,
    top: int = 100,
    store: str | os.PathLike | None = None,
    candidates: pd.DataFrame | None = None,
    model_panel: bool = False,
) -> pd.DataFrame:
    """Write subject images (true-colour PNGs with a scale bar) and ``manifest.csv`` for the best ``top`` candidates.

    Parameters
    ----------
    run_dir : str or path
        Search run directory.
    out : str or path
        New folder to create; an existing one is refused (nothing is overwritten).
    top : int
        Number of candidates, best first.
    store : str or path, optional
        The survey store, if it moved since the search (``zarr=`` is its deprecated old name).
    candidates : pandas.DataFrame, optional
        Rows to export instead of ``candidates.parquet``.
    model_panel : bool
        Add each fitted candidate's model panel as a second subject image (see the module): column
        ``model_image`` and hidden ``#theta_E``, ``#theta_E_err`` (arcsec) and ``#dbic``; candidates
        without a fit go to ``manifest-unfitted.csv``.

    Returns
    -------
    pandas.DataFrame
        The manifest as written (with ``model_panel``: ``manifest.csv``'s rows, then
        ``manifest-unfitted.csv``'s with an empty ``model_image``).

    Raises
    ------
    LensdaskError
        ``out`` exists; with ``model_panel``, none of the candidates has a lens-model fit.
    """
    out = pathlib.Path(out)
    if out.exists():
        raise LensdaskError(f"{out} exists; choose a new folder (an export never overwrites another)")
    cand, opened, stamps = best_candidates(run_dir, top, store=store, candidates=candidates)
    models = candidate_models(run_dir, cand, stamps.shape[1:]) if model_panel else [None] * len(cand)
    if model_panel and all(m is None for m in models):
        raise LensdaskError(
            f"--model-panel: none of the {len(cand)} best candidates of {run_dir} has a lens-model fit "
            "with its models (run `lensdask fit RUN_DIR` first)"
        )
    tmp = out.with_name(out.name + ".partial")
    tmp.mkdir(parents=True, exist_ok=False)
    rows = []
    noise = sky_noise(stamps, opened.bands) if len(stamps) else 1.0  # one brightness scale for the whole set
    for i, row in cand.iterrows():
        path = child_path(tmp, f"{row['tile']}_{int(row['object_id'])}", ".png")
        name = path.name
        path.write_bytes(
            png_bytes(
                view_image(stamps[i], opened.bands, "colour", pixel_scale=opened.pixel_scale, noise=noise), scale=6
            )
        )
        subject: dict[str, object] = {"image": name}
        fitted = models[int(i)]
        if model_panel:
            subject["model_image"] = ""
        if fitted is not None:
            panel = child_path(tmp, f"{row['tile']}_{int(row['object_id'])}_model", ".png")
            # no numbers on the picture: volunteers see no score (θ_E and ΔBIC are hidden columns)
            png = model_panel_png(
                stamps[i], fitted, opened.bands, opened.pixel_scale, row, noise=noise, numbers=False, dpi=150
            )
            panel.write_bytes(png)
            subject["model_image"] = panel.name
        subject |= {
            "ra": round(float(row["ra"]), 6),
            "dec": round(float(row["dec"]), 6),
            "#tile": row["tile"],
            "#object_id": int(row["object_id"]),
            "#score": float(row["score"]),
            "#rank": int(row["rank"]) if "rank" in row.index else i + 1,
            "#model": row.get("model", ""),
        }
        if model_panel:
            subject |= {k: float(row[c]) if fitted is not None else float("nan") for k, c in HIDDEN_FIT_COLUMNS.items()}
        rows.append(subject)
    columns = ["image", "ra", "dec", "#tile", "#object_id", "#score", "#rank", "#model"]
    if not model_panel:
        manifest = pd.DataFrame(rows, columns=columns)
        csv_safe(manifest).to_csv(tmp / "manifest.csv", index=False)  # no cell opens as a spreadsheet formula
        os.replace(tmp, out)
        return manifest
    manifest = pd.DataFrame(rows, columns=["image", "model_image", *columns[1:], *HIDDEN_FIT_COLUMNS])
    has_panel = manifest["model_image"] != ""
    csv_safe(manifest[has_panel]).to_csv(tmp / "manifest.csv", index=False)
    if not has_panel.all():
        csv_safe(manifest.loc[~has_panel, columns]).to_csv(tmp / UNFITTED_MANIFEST, index=False)
    os.replace(tmp, out)
    return pd.concat([manifest[has_panel], manifest[~has_panel]], ignore_index=True)


def upload_subjects(
    manifest_dir: str | os.PathLike, project_id: int, subject_set_name: str, username: str, password: str
) -> int:  # pragma: no cover - needs Zooniverse credentials
    """Upload an export to a Zooniverse project with ``panoptes-client`` (``pip install panoptes-client``).

    Every subject of ``manifest.csv`` (and of ``manifest-unfitted.csv`` when the export has one)
    goes into one new subject set, with its image and, when its row names one, its model panel
    (``model_image``) as a second image. Returns the id of the subject set created. Not exercised
    in tests: it needs credentials and the network.
    """
    try:
        from panoptes_client import Panoptes, Project, Subject, SubjectSet
    except ImportError as exc:
        raise LensdaskError("upload needs panoptes-client: pip install panoptes-client") from exc
    manifest_dir = pathlib.Path(manifest_dir)
    parts = [manifest_dir / "manifest.csv", manifest_dir / UNFITTED_MANIFEST]
    records = [r for p in parts if p.exists() for r in pd.read_csv(p).to_dict("records")]
    Panoptes.connect(username=username, password=password)
    project = Project.find(project_id)
    subject_set = SubjectSet()
    subject_set.links.project = project
    subject_set.display_name = subject_set_name
    subject_set.save()
    subjects = []
    for row in records:
        subject = Subject()
        subject.links.project = project
        subject.add_location(str(child_path(manifest_dir, str(row.pop("image")))))
        if "model_image" in row:  # the fitted subjects of an export with --model-panel
            subject.add_location(str(child_path(manifest_dir, str(row.pop("model_image")))))
        subject.metadata.update(row)
        subject.save()
        subjects.append(subject)
    subject_set.add(subjects)
    return int(subject_set.id)
