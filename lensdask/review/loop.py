"""One round of the interactive-learning loop, measured on a survey whose truth is known.

search → a reviewer labels the top N → labelled cutouts join the training set →
retrain (starting from the current model) → search again. On a mock survey the
"reviewer" reads the truth table, so the gain in purity among the top N can be
measured; on real data the same steps run with people's labels
(:func:`lensdask.review.labels.add_labels`, the label widget or ``lensdask label``).
"""

from __future__ import annotations

import os
import pathlib

import pandas as pd

from ..deprecation import renamed_keywords
from ..errors import LensdaskError
from .labels import add_labels
from .trainset import trainset_add


def labels_from_truth(candidates: pd.DataFrame, truth: pd.DataFrame, top: int, labeller: str = "truth") -> pd.DataFrame:
    """Label the best ``top`` candidates as a perfect reviewer would, from a mock survey's truth.

    Parameters
    ----------
    candidates : pandas.DataFrame
        ``tile, object_id, score`` (a search's candidates or scores).
    truth : pandas.DataFrame
        ``object_id`` and ``truth_class`` (or ``is_lens``) from :func:`lensdask.mock_survey`.
    top : int
        Number of candidates reviewed, best score first.
    """
    best = candidates.sort_values("score", ascending=False, kind="stable").head(int(top))
    cls = truth.set_index("object_id")
    if "truth_class" in cls.columns:
        classes = cls["truth_class"]
    else:
        classes = cls["is_lens"].map({True: "lens", False: "non-lens"})
    missing = set(best["object_id"]) - set(classes.index)
    if missing:
        raise LensdaskError(f"{len(missing)} candidates are not in the truth table")
    return pd.DataFrame(
        {
            "tile": best["tile"].to_numpy(),
            "object_id": best["object_id"].to_numpy(),
            "class": classes.loc[best["object_id"]].to_numpy(),
            "labeller": labeller,
        }
    )


def purity_at_top(scores: pd.DataFrame, truth: pd.DataFrame, top: int) -> float:
    """Fraction of true lenses among the ``top`` best-scoring objects."""
    best = scores.dropna(subset=["score"]).sort_values("score", ascending=False, kind="stable").head(int(top))
    is_lens = truth.set_index("object_id")["is_lens"]
    return float(is_lens.loc[best["object_id"]].to_numpy(bool).mean()) if len(best) else float("nan")


def _mean_score(scores: pd.DataFrame, object_ids: set) -> float:
    """Mean lens score of the given objects (NaN when there are none)."""
    sel = scores.loc[scores["object_id"].isin(object_ids), "score"]
    return float(sel.mean()) if len(sel) else float("nan")


@renamed_keywords(survey="store")
def review_round(
    store: str | os.PathLike,
    truth: pd.DataFrame | str | os.PathLike,
    train_store: str | os.PathLike,
    workdir: str | os.PathLike,
    *,
    model: str | os.PathLike | None = None,
    top: int = 50,
    epochs: int = 15,
    learning_rate: float = 5e-4,
    client=None,
    seed: int = 0,
    progress: bool = False,
    **train_kwargs,
) -> dict:
    """Run and measure one round of the loop.

    Parameters
    ----------
    store : str or path
        Survey store (a mock survey with look-alikes makes the loop measurable; ``survey=`` is its
        deprecated old name).
    truth : DataFrame or path
        Its truth table.
    train_store : str or path
        Training store to extend with the labelled cutouts (modified in place).
    workdir : str or path
        Where the runs, labels and the retrained model go.
    model : str or path, optional
        Model of the first search and starting weights of the retraining (default model if None).
    top : int
        Candidates reviewed, and the N of the purity measured.
    epochs : int
        Epochs of the retraining. The labelled cutouts are a few percent of the
        training set, so they need many passes; the retraining keeps its last
        epoch (no validation split: a handful of labelled objects makes a noisy one).
    learning_rate : float
        Peak learning rate of the retraining (lower than from scratch: the model
        starts from ``model``, whose head rows for classes it already knew are kept).
    client : distributed.Client, optional
    seed : int
        Training seed.
    **train_kwargs
        Passed to :func:`lensdask.model.train`.

    Returns
    -------
    dict
        ``purity_before``, ``purity_after`` (true lenses among the top ``top``),
        ``reviewed_fp_score_before`` / ``_after`` (mean lens score of the false positives the
        reviewer labelled: what the round should teach the model), the labels' class counts,
        the new model directory and both runs' directories.
    """
    from ..model import train
    from ..model.checkpoint import resolve_model_dir
    from ..search import search

    work = pathlib.Path(workdir)
    work.mkdir(parents=True, exist_ok=True)
    truth = truth if isinstance(truth, pd.DataFrame) else pd.read_parquet(truth)
    model_dir = resolve_model_dir(model)
    before = search(store, model_dir, work / "run-before", client=client, floor=0.0, progress=progress)
    scores_before = before.scores()
    labels = labels_from_truth(scores_before, truth, top)
    add_labels(work / "labels.csv", labels)
    added = trainset_add(work / "labels.csv", store, train_store)
    train_kwargs.setdefault("validation_fraction", 0.0)
    card = train(
        train_store,
        work / "model",
        pretrained=str(model_dir),
        epochs=epochs,
        seed=seed,
        learning_rate=learning_rate,
        progress=progress,
        **train_kwargs,
    )
    after = search(store, work / "model", work / "run-after", client=client, floor=0.0, progress=progress)
    scores_after = after.scores()
    reviewed_fp = set(labels.loc[labels["class"] != "lens", "object_id"])
    return {
        "top": int(top),
        "purity_before": purity_at_top(scores_before, truth, top),
        "purity_after": purity_at_top(scores_after, truth, top),
        "reviewed_fp_score_before": _mean_score(scores_before, reviewed_fp),
        "reviewed_fp_score_after": _mean_score(scores_after, reviewed_fp),
        "labelled": labels["class"].value_counts().to_dict(),
        "added": int(len(added)),
        "classes": card["classes"],
        "model": str(work / "model"),
        "run_before": str(before.run_dir),
        "run_after": str(after.run_dir),
    }
