"""Labels from reviewers: an append-only table of (tile, object_id, class, labeller, time).

Nothing is ever overwritten: a relabelled object gets a second row, and
:func:`label_conflicts` shows objects whose labellers disagree. The file is a
CSV so that people can read it, diff it, and append to it from any tool.
"""

from __future__ import annotations

import datetime
import os
import pathlib
from typing import Iterable, Sequence

import pandas as pd

from .. import config
from ..errors import LensdaskError
from ..names import check_names, csv_safe

COLUMNS = ["tile", "object_id", "class", "labeller", "time"]


def review_classes(classes: Sequence[str] | None = None) -> list[str]:
    """The class names reviewers may use (config ``review.classes``)."""
    return list(config.get("review.classes", classes))


def read_labels(path: str | os.PathLike) -> pd.DataFrame:
    """Every label ever written to ``path`` (an empty table when the file does not exist)."""
    path = pathlib.Path(path)
    if not path.exists():
        return pd.DataFrame({c: pd.Series(dtype="int64" if c == "object_id" else "object") for c in COLUMNS})
    table = pd.read_csv(path, dtype={"tile": str, "class": str, "labeller": str, "time": str})
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
        ``tile``, ``object_id``, ``class`` and optionally ``labeller``, ``time``.
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
        An unknown class, a missing column, or an object not in ``store``;
        nothing is written then.
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
        raise LensdaskError(f"unknown class {unknown[0]!r}" + (f" (and {unknown[1:]})" if len(unknown) > 1 else "")
                            + f"; known classes: {allowed} (config review.classes)")
    if store is not None:
        from .cutouts import locate

        locate(store, table)  # raises naming the objects not in the store
    if "labeller" not in table.columns:
        table["labeller"] = labeller or os.environ.get("USER") or "unknown"
    table["labeller"] = table["labeller"].fillna(labeller or "unknown")
    if "time" not in table.columns:
        table["time"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    table = table[COLUMNS].astype({"tile": str, "object_id": "int64", "class": str, "labeller": str, "time": str})
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    new = not path.exists() or path.stat().st_size == 0
    text = csv_safe(table).to_csv(index=False, header=new, lineterminator="\n")  # no formula cells
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
