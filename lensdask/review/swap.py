"""Volunteer votes back in: Space Warps-style aggregation of a Zooniverse classification export.

Following the Space Warps Analysis Pipeline (SWAP; Marshall et al. 2016, MNRAS
455, 1171): each volunteer's skill is a pair of probabilities measured on
training ("gold") subjects whose truth is known,

* ``P_L`` = P(says "lens" | the subject is a lens),
* ``P_D`` = P(says "not" | the subject is not a lens),

estimated with a uniform Beta(1, 1) prior (an unseen volunteer has 0.5, 0.5).
Each subject's lens probability starts at ``prior`` and is updated by Bayes'
rule with every vote, in time order::

    "lens": p <- P_L p / (P_L p + (1 - P_D)(1 - p))
    "not":  p <- (1 - P_L) p / ((1 - P_L) p + P_D (1 - p))

A volunteer no better than a coin (P_L + P_D = 1) leaves p unchanged.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd

from .. import config
from ..errors import LensdaskError


def read_classifications(path: str | os.PathLike, *, task: str = "T0", yes: str = "Yes") -> pd.DataFrame:
    """One row per vote from a Zooniverse classification export CSV.

    Parameters
    ----------
    path : str or path
        The project's classification export.
    task : str
        The question task key in ``annotations``.
    yes : str
        The answer text (or index) meaning "this is a lens".

    Returns
    -------
    pandas.DataFrame
        ``classification_id, user, subject_id, created_at, says_lens`` and the
        subject metadata (``#tile``, ``#object_id``...) when the export has it.
    """
    raw = pd.read_csv(path)
    need = ["classification_id", "user_name", "annotations", "subject_ids", "created_at"]
    missing = [c for c in need if c not in raw.columns]
    if missing:
        raise LensdaskError(f"{path} is not a Zooniverse classification export: it lacks {missing}")
    rows = []
    for rec in raw.to_dict("records"):
        answer = None
        for ann in json.loads(rec["annotations"]):
            if ann.get("task") == task:
                answer = ann.get("value")
        if answer is None:
            continue
        subject = str(rec["subject_ids"]).split(";")[0]
        meta: dict = {}
        if isinstance(rec.get("subject_data"), str):
            meta = json.loads(rec["subject_data"]).get(subject, {}) or {}
        rows.append(
            {
                "classification_id": rec["classification_id"],
                "user": rec["user_name"],
                "subject_id": subject,
                "created_at": rec["created_at"],
                "says_lens": str(answer) == str(yes),
                **{k: v for k, v in meta.items() if k.startswith("#")},
            }
        )
    return pd.DataFrame(rows)


def volunteer_skills(votes: pd.DataFrame, gold: pd.Series) -> pd.DataFrame:
    """``P_L``, ``P_D`` and the numbers of gold lenses and non-lenses each volunteer saw.

    Parameters
    ----------
    votes : pandas.DataFrame
        ``user, subject_id, says_lens``.
    gold : pandas.Series
        Truth of training subjects, ``is_lens`` indexed by ``subject_id``.
    """
    g = votes[votes["subject_id"].isin(gold.index)].copy()
    g["is_lens"] = g["subject_id"].map(gold).astype(bool)
    users = pd.Index(votes["user"].unique(), name="user")
    n_l = g[g["is_lens"]].groupby("user").size().reindex(users, fill_value=0)
    n_ll = g[g["is_lens"] & g["says_lens"]].groupby("user").size().reindex(users, fill_value=0)
    n_d = g[~g["is_lens"]].groupby("user").size().reindex(users, fill_value=0)
    n_dd = g[~g["is_lens"] & ~g["says_lens"]].groupby("user").size().reindex(users, fill_value=0)
    return pd.DataFrame(
        {"P_L": (n_ll + 1) / (n_l + 2), "P_D": (n_dd + 1) / (n_d + 2), "n_gold_lens": n_l, "n_gold_dud": n_d}
    )


def swap(
    votes: pd.DataFrame,
    gold: pd.DataFrame | pd.Series | None = None,
    *,
    prior: float | None = None,
    detect: float = 0.95,
    reject: float = 1e-5,
) -> pd.DataFrame:
    """Lens probability of every subject from its votes and its voters' skills.

    Parameters
    ----------
    votes : pandas.DataFrame
        From :func:`read_classifications`.
    gold : DataFrame or Series, optional
        Truth of training subjects: a Series ``is_lens`` indexed by ``subject_id``,
        or a table with ``subject_id`` (or ``#object_id``/``object_id``) and ``is_lens``.
    prior : float, optional
        Lens probability of a subject before any vote (config ``review.swap_prior``).
    detect, reject : float
        Posterior thresholds for the ``status`` column.

    Returns
    -------
    pandas.DataFrame
        One row per subject: ``subject_id``, metadata, ``n_votes``, ``n_says_lens``,
        ``posterior``, ``status`` (``detected``, ``rejected`` or ``undecided``),
        ``gold`` (truth where known).
    """
    prior = float(config.get("review.swap_prior", prior))
    gold_s = _gold_series(votes, gold)
    skills = volunteer_skills(votes, gold_s)
    ordered = votes.sort_values(["created_at", "classification_id"], kind="stable")
    p_l = ordered["user"].map(skills["P_L"]).to_numpy(float)
    p_d = ordered["user"].map(skills["P_D"]).to_numpy(float)
    says = ordered["says_lens"].to_numpy(bool)
    post: dict[str, float] = {}
    for subject, pl, pd_, s in zip(ordered["subject_id"].to_numpy(), p_l, p_d, says):
        p = post.get(subject, prior)
        if s:
            p = pl * p / (pl * p + (1 - pd_) * (1 - p))
        else:
            p = (1 - pl) * p / ((1 - pl) * p + pd_ * (1 - p))
        post[subject] = p
    meta_cols = [c for c in votes.columns if c.startswith("#")]
    out = votes.groupby("subject_id").agg(
        n_votes=("says_lens", "size"), n_says_lens=("says_lens", "sum"), **{c: (c, "first") for c in meta_cols}
    )
    out["posterior"] = pd.Series(post)
    out["status"] = np.where(
        out["posterior"] >= detect, "detected", np.where(out["posterior"] <= reject, "rejected", "undecided")
    )
    out["gold"] = gold_s.reindex(out.index)
    out = out.reset_index().rename(columns={"#tile": "tile", "#object_id": "object_id"})
    return out.sort_values("posterior", ascending=False, kind="stable").reset_index(drop=True)


def _gold_series(votes: pd.DataFrame, gold) -> pd.Series:
    if gold is None:
        return pd.Series(dtype=bool)
    if isinstance(gold, pd.Series):
        return gold.astype(bool)
    gold = pd.DataFrame(gold)
    if "subject_id" in gold.columns:
        return gold.set_index(gold["subject_id"].astype(str))["is_lens"].astype(bool)
    key = "object_id" if "object_id" in gold.columns else "#object_id"
    if "#object_id" not in votes.columns:
        raise LensdaskError("gold is given by object_id but the export has no '#object_id' subject metadata")
    by_obj = gold.set_index(gold[key].astype(np.int64))["is_lens"].astype(bool)
    subj = votes.drop_duplicates("subject_id").set_index("subject_id")["#object_id"].astype(np.int64)
    known = subj[subj.isin(by_obj.index)]
    return pd.Series(by_obj.loc[known.to_numpy()].to_numpy(), index=known.index, dtype=bool)
