"""Hand candidates to citizen scientists: Zooniverse subject images and a Panoptes manifest.

The folder written by :func:`export_zooniverse` uploads with the Panoptes CLI::

    panoptes subject-set upload-subjects SUBJECT_SET_ID DIR/manifest.csv

Metadata columns starting with ``#`` are hidden from volunteers (Zooniverse's
convention), so scores and ids travel with the subjects without biasing anyone.
"""

from __future__ import annotations

import os
import pathlib

import pandas as pd

from ..deprecation import renamed_keywords
from ..errors import LensdaskError
from ..images import png_bytes, sky_noise, view_image
from ..names import child_path, csv_safe
from ..rundir import best_candidates


@renamed_keywords(zarr="store")
def export_zooniverse(
    run_dir: str | os.PathLike,
    out: str | os.PathLike,
    *,
    top: int = 100,
    store: str | os.PathLike | None = None,
    candidates: pd.DataFrame | None = None,
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

    Returns
    -------
    pandas.DataFrame
        The manifest as written.
    """
    out = pathlib.Path(out)
    if out.exists():
        raise LensdaskError(f"{out} exists; choose a new folder (an export never overwrites another)")
    cand, opened, stamps = best_candidates(run_dir, top, store=store, candidates=candidates)
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
        rows.append(
            {
                "image": name,
                "ra": round(float(row["ra"]), 6),
                "dec": round(float(row["dec"]), 6),
                "#tile": row["tile"],
                "#object_id": int(row["object_id"]),
                "#score": float(row["score"]),
                "#rank": int(row["rank"]) if "rank" in row.index else i + 1,
                "#model": row.get("model", ""),
            }
        )
    manifest = pd.DataFrame(rows, columns=["image", "ra", "dec", "#tile", "#object_id", "#score", "#rank", "#model"])
    csv_safe(manifest).to_csv(tmp / "manifest.csv", index=False)  # no cell opens as a spreadsheet formula
    os.replace(tmp, out)
    return manifest


def upload_subjects(
    manifest_dir: str | os.PathLike, project_id: int, subject_set_name: str, username: str, password: str
) -> int:  # pragma: no cover - needs Zooniverse credentials
    """Upload an export to a Zooniverse project with ``panoptes-client`` (``pip install panoptes-client``).

    Returns the id of the subject set created. Not exercised in tests: it needs
    credentials and the network.
    """
    try:
        from panoptes_client import Panoptes, Project, Subject, SubjectSet
    except ImportError as exc:
        raise LensdaskError("upload needs panoptes-client: pip install panoptes-client") from exc
    manifest_dir = pathlib.Path(manifest_dir)
    manifest = pd.read_csv(manifest_dir / "manifest.csv")
    Panoptes.connect(username=username, password=password)
    project = Project.find(project_id)
    subject_set = SubjectSet()
    subject_set.links.project = project
    subject_set.display_name = subject_set_name
    subject_set.save()
    subjects = []
    for row in manifest.to_dict("records"):
        subject = Subject()
        subject.links.project = project
        subject.add_location(str(manifest_dir / row.pop("image")))
        subject.metadata.update(row)
        subject.save()
        subjects.append(subject)
    subject_set.add(subjects)
    return int(subject_set.id)
