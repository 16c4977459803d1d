"""Labels from reviewers: an append-only table of (tile, object_id, class, labeller, time, grade).

Nothing is ever overwritten: a relabelled object gets a second row, and
:func:`label_conflicts` shows objects whose labellers disagree. The file is a
CSV so that people can read it, diff it, and append to it from any tool.
Appends hold a file lock (``<labels>.lock``), so reviewers grading at the same
moment, from one review app or several, never lose or interleave a row.

``grade`` is the confidence lens hunters give (:data:`GRADES`: definite,
probable, possible lens, or not a lens); empty for a plain class label.
Tables written before grades existed (five columns) are read, and appended to
without grades.
"""

from __future__ import annotations

import datetime
import os
import pathlib
from collections.abc import Iterable, Sequence

import pandas as pd

from .. import config
from ..errors import LensdaskError
from ..names import check_names, csv_safe

COLUMNS = ["tile", "object_id", "class", "labeller", "time", "grade"]
GRADES = {"definite": 3, "probable": 2, "possible": 1, "no": 0}
"""Grades of the field and their scores: definite, probable, possible lens, not a lens."""
LENS_CLASS = "lens"


def review_classes(classes: Sequence[str] | None = None) -> list[str]:
    """The class names reviewers may use (config ``review.classes``)."""
    return list(config.get("review.classes", classes))


def read_labels(path: str | os.PathLike) -> pd.DataFrame:
    """Every label ever written to ``path`` (an empty table when the file does not exist)."""
    path = pathlib.Path(path)
    if not path.exists():
        return pd.DataFrame({c: pd.Series(dtype="int64" if c == "object_id" else "object") for c in COLUMNS})
    table = pd.read_csv(path, dtype={"tile": str, "class": str, "labeller": str, "time": str, "grade": str})
    if "grade" not in table.columns:  # a table from before grades
        table["grade"] = ""
    table["grade"] = table["grade"].fillna("")
    missing = [c for c in COLUMNS if c not in table.columns]
    if missing:
        raise LensdaskError(f"{path} is not a lensdask labels table: it lacks the columns {missing}")
    return table[COLUMNS]


def add_labels(
    path: str | os.PathLike,
    labels: pd.DataFrame | Iterable[dict],
    *,
    labeller: str | None = None,
    classes: Sequence[str] | None = None,
    store=None,
) -> pd.DataFrame:
    """Append labels to the table at ``path``.

    Parameters
    ----------
    path : str or path
        The labels CSV; created with a header if missing, appended to otherwise.
    labels : DataFrame or iterable of dict
        ``tile``, ``object_id``, ``class`` and optionally ``labeller``, ``time``
        and ``grade`` (:data:`GRADES`; definite, probable and possible go with
        the class ``lens``, ``no`` with any other class).
    labeller : str, optional
        Fills a missing ``labeller`` (default: the login name).
    classes : sequence of str, optional
        Allowed class names (config ``review.classes``).
    store : CutoutStore, optional
        When given, every labelled object must be in it.

    Returns
    -------
    pandas.DataFrame
        The rows appended.

    Raises
    ------
    LensdaskError
        An unknown class or grade, a grade that contradicts the class, a
        missing column, or an object not in ``store``; nothing is written then.
    """
    table = pd.DataFrame(list(labels) if not isinstance(labels, pd.DataFrame) else labels).copy()
    if table.empty:
        return table.reindex(columns=COLUMNS)
    missing = [c for c in ("tile", "object_id", "class") if c not in table.columns]
    if missing:
        raise LensdaskError(f"labels lack the columns {missing}")
    check_names(table["tile"].astype(str), source="the labels", rows=range(1, len(table) + 1))
    allowed = review_classes(classes)
    unknown = sorted(set(table["class"].astype(str)) - set(allowed))
    if unknown:
        raise LensdaskError(
            f"unknown class {unknown[0]!r}"
            + (f" (and {unknown[1:]})" if len(unknown) > 1 else "")
            + f"; known classes: {allowed} (config review.classes)"
        )
    if "grade" not in table.columns:
        table["grade"] = ""
    table["grade"] = table["grade"].fillna("").astype(str).str.strip().str.lower()
    bad = sorted(set(table["grade"]) - set(GRADES) - {""})
    if bad:
        raise LensdaskError(f"unknown grade {bad[0]!r}; grades: {list(GRADES)} (or empty)")
    lens = table["class"].astype(str) == LENS_CLASS
    graded = table["grade"] != ""
    wrong = table[graded & (lens == (table["grade"] == "no"))]
    if len(wrong):
        r = wrong.iloc[0]
        raise LensdaskError(
            f"grade {r['grade']!r} contradicts class {r['class']!r} (tile {r['tile']}, object "
            f"{r['object_id']}): definite/probable/possible go with {LENS_CLASS!r}, "
            "no with any other class"
        )
    if store is not None:
        from ..rundir import locate

        locate(store, table)  # raises naming the objects not in the store
    if "labeller" not in table.columns:
        table["labeller"] = labeller or os.environ.get("USER") or "unknown"
    table["labeller"] = table["labeller"].fillna(labeller or "unknown")
    if "time" not in table.columns:
        table["time"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    table = table[COLUMNS].astype(
        {"tile": str, "object_id": "int64", "class": str, "labeller": str, "time": str, "grade": str}
    )
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    from filelock import FileLock

    # The lock makes "is there a header yet?" and the append one step: two reviewers starting a
    # table at the same moment write one header, and their rows never interleave.
    with FileLock(str(path) + ".lock", timeout=30):
        new = not path.exists() or path.stat().st_size == 0
        columns = COLUMNS
        if not new:
            with open(path) as f:
                header = f.readline().strip().split(",")
            if "grade" not in header:  # a five-column table from before grades: keep its layout
                if (table["grade"] != "").any():
                    raise LensdaskError(
                        f"{path} was written before grades existed; give a new labels file for graded labels"
                    )
                columns = [c for c in COLUMNS if c != "grade"]
        text = csv_safe(table[columns]).to_csv(index=False, header=new, lineterminator="\n")  # no formula cells
        with open(path, "a") as f:  # one write of whole lines: readers never see half a label
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
    return table


def label_conflicts(labels: pd.DataFrame) -> pd.DataFrame:
    """Objects given more than one class, with every class and labeller seen."""
    if labels.empty:
        return pd.DataFrame(columns=["tile", "object_id", "classes", "labellers"])
    g = labels.groupby(["tile", "object_id"])
    out = g.agg(classes=("class", lambda s: sorted(set(s))), labellers=("labeller", lambda s: sorted(set(s))))
    return out[out["classes"].map(len) > 1].reset_index()


def consensus(labels: pd.DataFrame, *, drop_conflicts: bool = True) -> pd.DataFrame:
    """One class per object: the single class all its labels agree on.

    Conflicting objects are left out (``drop_conflicts``) or resolved by the
    most recent label.
    """
    if labels.empty:
        return labels.reindex(columns=["tile", "object_id", "class"])
    latest = labels.sort_values("time", kind="stable").groupby(["tile", "object_id"], as_index=False).last()
    if drop_conflicts:
        bad = label_conflicts(labels)
        if len(bad):
            key = set(zip(bad["tile"], bad["object_id"]))
            latest = latest[[k not in key for k in zip(latest["tile"], latest["object_id"])]]
    return latest[["tile", "object_id", "class"]].reset_index(drop=True)


def latest_grades(labels: pd.DataFrame, labeller: str | None = None) -> pd.DataFrame:
    """Each reviewer's last label of each object (``labeller`` only, when given)."""
    if labeller is not None:
        labels = labels[labels["labeller"] == labeller]
    if labels.empty:
        return labels.reindex(columns=COLUMNS)
    keys = ["tile", "object_id", "labeller"]
    return labels.sort_values("time", kind="stable").groupby(keys, as_index=False, sort=False).last()[COLUMNS]


def votes(labels: pd.DataFrame) -> pd.DataFrame:
    """Combine several reviewers' grades of each object by counting votes.

    Each reviewer counts once per object (their latest label). Returns one row per
    object: ``n_reviewers``, the count of each grade (``n_definite`` … ``n_no``),
    ``mean_grade`` (definite 3, probable 2, possible 1, not a lens 0; ungraded
    class labels count 3 for ``lens`` and 0 otherwise), the majority ``class``
    (a tie with ``lens`` goes to ``lens``) and every ``labellers``; best mean grade first.
    """
    cols = ["tile", "object_id", "n_reviewers", *(f"n_{g}" for g in GRADES), "mean_grade", "class", "labellers"]
    last = latest_grades(labels)
    if last.empty:
        return pd.DataFrame(columns=cols)
    grade = last["grade"].fillna("").astype(str)
    filled = grade.where(grade != "", last["class"].map(lambda c: "definite" if c == LENS_CLASS else "no"))
    last = last.assign(_g=filled, _score=filled.map(GRADES))
    rows = []
    for (tile, oid), g in last.groupby(["tile", "object_id"], sort=False):
        counts = g["class"].value_counts()
        top = counts[counts == counts.max()].index
        cls = LENS_CLASS if LENS_CLASS in top else sorted(top)[0]
        rows.append(
            {
                "tile": tile,
                "object_id": int(oid),
                "n_reviewers": len(g),
                **{f"n_{k}": int((g["_g"] == k).sum()) for k in GRADES},
                "mean_grade": round(float(g["_score"].mean()), 3),
                "class": cls,
                "labellers": " ".join(sorted(set(g["labeller"].astype(str)))),
            }
        )
    out = pd.DataFrame(rows, columns=cols)
    return out.sort_values(["mean_grade", "n_reviewers"], ascending=False, kind="stable").reset_index(drop=True)
