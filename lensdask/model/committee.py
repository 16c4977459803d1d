"""A committee: two or three trained networks combined by a learned meta-classifier, shipped as one model.

::

    committee/
      model_card.json        arch "committee"; the members, their fingerprints and the meta-classifier
      model.safetensors      the meta-classifier's weights and the members' SHA-256 digests
      members/m0/            a copy of the first member's checkpoint (its own card and weights)
      members/m1/            ...

The meta-classifier (:mod:`lensdask.model.metaclassifier`) takes the logits of the members' lens
probabilities. It is fitted on a labelled store whose rows trained none of the members (a store
that is, or was copied or converted from, a member's training store, or a simulation with its
seed, is refused), part of whose rows per class are held back to report its AUROC against the
members' plain mean. The directory is self-contained, so it can be moved; members are found under
names made here (``members/m<i>``), never from the card's text. Loaded with
:func:`~lensdask.model.checkpoint.load_checkpoint`, it is one model whose lens probability is the
meta-classifier's output, so ``search``, ``evaluate``, ``inject`` and the cascade take it as they
take any model; verifying it verifies every member's weights and the meta-classifier.
"""

from __future__ import annotations

import json
import math
import os
import pathlib
import shutil
from dataclasses import dataclass

import numpy as np
import torch

from .. import config
from ..errors import LensdaskError
from ..normalise import spec_key
from ..simulate.galaxies import SplitError
from ..store import CutoutStore, absolute_url, open_store
from ..store import provenance as make_provenance
from .checkpoint import (
    CARD,
    MEMBERS,
    WEIGHTS,
    card_survey,
    is_committee,
    read_card,
    refuse_model_as_store,
    resolve_model_dir,
    save_checkpoint,
)
from .metaclassifier import META_KINDS, digest_tensor, fit_meta, member_logits
from .metrics import auroc

_BARE_PROVENANCE = {"command", "lensdask_version", "created"}
"""Provenance keys every store has: two stores that record only these are not known to be one."""


def build_committee(
    store: str | os.PathLike,
    members,
    out: str | os.PathLike,
    *,
    meta: str | None = None,
    hidden: int | None = None,
    l2: float | None = None,
    heldback: float | None = None,
    seed: int | None = None,
    batch_size: int | str | None = None,
    device: str | None = None,
    overwrite: bool = False,
    progress: bool = True,
    command: str | None = None,
) -> dict:
    """Combine trained models by a meta-classifier fitted on ``store``, and write the committee to ``out``.

    Parameters
    ----------
    store : str or path
        Labelled store (its classes include ``lens``) whose rows trained none of the members.
    members : sequence of str or path
        Two or more model directories (not committees) sharing bands, band order, stamp (px), pixel
        scale (arcsec/px), classes, survey and normalisation.
    out : str or path
        The committee's directory.
    meta : {"logistic", "mlp"}, optional
        The meta-classifier (config ``committee.meta``).
    hidden : int, optional
        Hidden units of ``mlp`` (config ``committee.hidden``).
    l2 : float, optional
        L2 penalty on the meta's weights (config ``committee.l2``; see
        :func:`~lensdask.model.metaclassifier.fit_meta`).
    heldback : float, optional
        Fraction of the store's scored rows, per class, kept out of the fit to report AUROCs (config
        ``committee.heldback``; at least two rows of each class must remain on each side).
    seed : int, optional
        Seeds the held-back split and the ``mlp``'s starting weights (config ``committee.seed``).
    batch_size : int or "auto", optional
        Cutouts per forward pass (config ``search.batch_size``).
    device : str, optional
        Where the members score the store (config ``search.device``).
    overwrite : bool
        Replace an existing ``out``.
    progress : bool
        Show a progress bar over the store's tiles.
    command : str, optional
        Recorded in the card (default ``sys.argv``).

    Returns
    -------
    dict
        The committee's card as written: ``model_id`` ``committee-<sha256[:12]>``; ``committee`` holds
        ``members`` (``name``, ``dir``, ``model_id``, ``sha256``, ``arch``, ``source``, ``training_data``)
        and ``meta`` (:meth:`~lensdask.model.metaclassifier.MetaClassifier.describe`, plus ``fitted_on``:
        the store's ``data`` and ``data_provenance``, ``rows``, ``heldback_rows``, ``heldback``, ``seed``,
        ``l2``); ``metrics.heldback`` the held-back rows' AUROC of the committee, of the members' mean
        and of each member.

    Raises
    ------
    SplitError
        ``store`` trained a member (one line naming both), or holds real galaxies a member trained on.
    CheckpointError, ModelMismatchError, ModelSurveyError
        A member missing, corrupt, a committee itself, or not fitting the others or the store.
    LensdaskError
        Fewer than two members, an unknown ``meta``, too few labelled rows of a class, or ``out`` exists
        without ``overwrite``.
    TypeError
        A model where the store belongs.
    """
    from .evaluate import _load_models, _score_store
    from .infer import resolve_batch_size, resolve_device

    refuse_model_as_store(store, "build_committee(store, members, out)")
    s = _settings(meta, hidden, l2, heldback, seed)
    dirs = [resolve_model_dir(m) for m in ([members] if isinstance(members, (str, os.PathLike)) else list(members))]
    if len(dirs) < 2:
        raise LensdaskError(f"a committee needs at least two members, got {len(dirs)}")
    out = pathlib.Path(os.fspath(out)).expanduser()
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise LensdaskError(f"{str(out)!r} exists; choose another --out or pass --overwrite")
    cs = open_store(store)
    if "lens" not in cs.classes:
        raise LensdaskError(f"store {cs.url!r} has no class 'lens' (classes {cs.classes}): nothing to fit on")
    cards = [read_card(d) for d in dirs]
    check_members(dirs, cards)
    for d, card in zip(dirs, cards):
        check_unseen(card, cs, str(d))
    dev = resolve_device(device)
    batch_size = resolve_batch_size(config.get("search.batch_size", batch_size), dev)
    loaded = _load_models(cs, dirs, "mean", dev)  # bands, stamp, scale, survey, weights, real galaxies
    scores = _score_store(cs, loaded, batch_size, dev, progress)
    lens = np.stack([p[:, int(c["lens_class"])] for p, c in zip(scores.probs, cards)], axis=1)
    ok = np.isfinite(lens).all(axis=1)
    y = (scores.labels == cs.lens_class)[ok]
    lens = lens[ok]
    held = _heldback_rows(y, s.heldback, s.seed, str(cs.url))
    z = member_logits(torch.from_numpy(lens.astype(np.float64)))
    net = fit_meta(
        z[~held], torch.from_numpy(y[~held].astype(np.float64)), s.meta, hidden=s.hidden, l2=s.l2,
        seed=s.seed,
    )  # fmt: skip
    with torch.no_grad():
        p_held = net(z[held].float()).double().numpy()
    ids = [c["model_id"] for c in cards]
    metrics = {
        "heldback": {
            "n": int(held.sum()),
            "n_lens": int(y[held].sum()),
            "auroc": auroc(y[held], p_held),
            "auroc_mean": auroc(y[held], lens[held].mean(axis=1)),
            "auroc_members": {i: auroc(y[held], lens[held, k]) for k, i in enumerate(ids)},
        }
    }
    record = net.describe()
    record["fitted_on"] = {
        "data": str(cs.url),
        "data_provenance": cs.provenance,
        "rows": int((~held).sum()),
        "heldback_rows": int(held.sum()),
        "heldback": s.heldback,
        "seed": s.seed,
        "l2": s.l2,
        "n_nonfinite": int((~ok).sum()),
    }
    net.member_sha256.copy_(digest_tensor([c["sha256"] for c in cards]))
    return _write(out, net, dirs, cards, record, metrics, cs, s, command, overwrite)


@dataclass(frozen=True)
class _Settings:
    """A committee's settings (see :func:`build_committee`)."""

    meta: str
    hidden: int
    l2: float
    heldback: float
    seed: int


def _settings(meta, hidden, l2, heldback, seed) -> _Settings:
    """The committee's settings, from the arguments or config ``committee.*``, checked."""
    s = _Settings(
        meta=str(config.get("committee.meta", meta)),
        hidden=int(config.get("committee.hidden", hidden)),
        l2=float(config.get("committee.l2", l2)),
        heldback=float(config.get("committee.heldback", heldback)),
        seed=int(config.get("committee.seed", seed)),
    )
    if s.meta not in META_KINDS:
        raise LensdaskError(f"unknown meta-classifier {s.meta!r}; use one of {', '.join(META_KINDS)}")
    if s.hidden < 1:
        raise LensdaskError(f"the mlp needs at least one hidden unit, got {s.hidden}")
    if not (math.isfinite(s.l2) and s.l2 >= 0):
        raise LensdaskError(f"the L2 penalty must be >= 0, got {s.l2}")
    if not 0 < s.heldback < 1:
        raise LensdaskError(f"the held-back fraction must be in (0, 1), got {s.heldback}")
    return s


def check_members(dirs, cards) -> None:
    """Members of one committee: not committees, the same classes, lens class, normalisation and survey.

    (Bands, band order, stamp and pixel scale are compared by
    :func:`~lensdask.model.ensemble.check_models`, with the store.)

    Raises
    ------
    CheckpointError
        A member is a committee.
    ModelMismatchError
        Members differ in one of those; the message names both.
    """
    from ..errors import CheckpointError, ModelMismatchError

    for d, card in zip(dirs, cards):
        if is_committee(card):
            raise CheckpointError(f"{str(d)!r} is a committee: its members can be members, committees cannot")
    ref_dir, ref = dirs[0], cards[0]
    for d, card in zip(dirs[1:], cards[1:]):
        for what, a, b in (
            ("classes", list(ref["classes"]), list(card["classes"])),
            ("lens_class", int(ref["lens_class"]), int(card["lens_class"])),
            ("survey", card_survey(ref), card_survey(card)),
            ("normalisation", spec_key(ref.get("normalisation")), spec_key(card.get("normalisation"))),
        ):
            if a != b:
                raise ModelMismatchError(
                    f"members of one committee must share {what}: {ref.get('model_id')} ({ref_dir}) has {a}, "
                    f"{card.get('model_id')} ({d}) has {b}"
                )


def _store_identities(cs: CutoutStore) -> list[tuple[str | None, dict]]:
    """``(location, provenance)`` of a store and of every store it was converted from."""
    out: list[tuple[str | None, dict]] = [(absolute_url(cs.url), dict(cs.provenance or {}))]
    prov = cs.provenance or {}
    for _ in range(32):  # a chain of conversions; bounded, whatever a store's attributes claim
        src = prov.get("converted_from")
        if not isinstance(src, dict):
            break
        prov = src.get("provenance") or {}
        out.append((absolute_url(src["url"]) if src.get("url") else None, dict(prov)))
    return out


def _same_place(a: str, b: str) -> bool:
    if absolute_url(a) == absolute_url(b):
        return True
    try:
        return "://" not in a and "://" not in b and os.path.samefile(a, b)
    except OSError:
        return False


def _simulation_seed(prov: dict) -> int | None:
    """The seed of a store written by ``lensdask simulate`` (whose rows follow from (seed, row)), else None."""
    if {"seed", "supersampling", "lens_fraction"} <= set(prov):
        try:
            return int(prov["seed"])
        except (TypeError, ValueError):
            return None
    return None


def trained_on(card: dict, cs: CutoutStore) -> str | None:
    """Why the rows of ``cs`` trained the model of ``card`` (its ``training.data`` and ``data_provenance``), or None.

    The store is the training store, or a copy or conversion of it (the same provenance, beyond the
    keys every store has), or a simulation with the same seed (whose rows repeat the training rows).
    """
    tr = card.get("training") or {}
    url, prov = tr.get("data"), tr.get("data_provenance") or {}
    canon = json.dumps(prov, sort_keys=True, default=str)
    for where, p in _store_identities(cs):
        if url and where and _same_place(where, str(url)):
            return f"it is that model's training store {url}"
        if set(p) - _BARE_PROVENANCE and json.dumps(p, sort_keys=True, default=str) == canon:
            return f"it has the provenance of that model's training store {url} (a copy or conversion of it)"
        seed = _simulation_seed(p)
        if seed is not None and seed == _simulation_seed(prov):
            return f"it was simulated with seed {seed}, as that model's training store {url} was, so its rows repeat"
    return None


def check_unseen(card: dict, cs: CutoutStore, where: str = "") -> None:
    """Refuse to fit a committee on a store whose rows trained one of its members (:func:`trained_on`).

    Raises
    ------
    SplitError
        One line naming the store, the member and why.
    """
    why = trained_on(card, cs)
    if why:
        raise SplitError(
            f"store {cs.url!r} trained member {card.get('model_id')} ({where}): {why}; fit the committee on "
            "rows none of its members trained on (e.g. a simulation with another seed)"
        )


def _heldback_rows(y: np.ndarray, fraction: float, seed: int, where: str) -> np.ndarray:
    """A (n,) mask of the held-back rows: ``fraction`` of each class (lens, other), drawn with ``seed``."""
    rng = np.random.default_rng(seed)
    held = np.zeros(y.size, dtype=bool)
    for cls, name in ((True, "lenses"), (False, "other rows")):
        idx = np.flatnonzero(y == cls)
        k = int(round(fraction * idx.size))
        if k < 2 or idx.size - k < 2:
            raise LensdaskError(
                f"store {where!r} has {idx.size} scored labelled {name}: too few to fit a committee and hold "
                f"{fraction:g} of them back (at least two on each side)"
            )
        held[rng.permutation(idx)[:k]] = True
    return held


def _write(out: pathlib.Path, net, dirs, cards, record, metrics, cs, s, command, overwrite) -> dict:
    """Write the committee beside ``out`` and move it into place (a directory with a card is complete)."""
    tmp = out.with_name(out.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    entries = []
    for k, (d, card) in enumerate(zip(dirs, cards)):
        name = f"m{k}"
        dst = tmp / MEMBERS / name
        dst.mkdir(parents=True)
        for f in (WEIGHTS, CARD):
            shutil.copyfile(d / f, dst / f)
        entries.append(
            {
                "name": name,
                "dir": f"{MEMBERS}/{name}",
                "model_id": card["model_id"],
                "sha256": card["sha256"],
                "arch": card["arch"],
                "source": str(d.resolve()),
                "training_data": (card.get("training") or {}).get("data"),
            }
        )
    ref = cards[0]
    prov = make_provenance(command)
    committee_card = {
        "arch": "committee",
        "arch_kwargs": net.arch_kwargs,
        "bands": list(ref["bands"]),
        "stamp": int(ref["stamp"]),
        "pixel_scale": float(ref["pixel_scale"]),
        "normalisation": ref.get("normalisation"),
        "classes": list(ref["classes"]),
        "lens_class": int(ref["lens_class"]),
        "survey": card_survey(ref),
        # the committee has seen what its members trained on, and the meta the fitting store's galaxies
        "training_galaxies": _union_galaxies([c.get("training_galaxies") for c in cards], cs),
        "committee": {"members": entries, "meta": record},
        "training": {
            "kind": "committee",
            "data": str(cs.url),
            "data_provenance": cs.provenance,
            "command": prov["command"],
            "seed": s.seed,
            "members_training_data": [e["training_data"] for e in entries],
        },
        "metrics": metrics,
    }
    card = save_checkpoint(net, tmp, committee_card)
    if out.exists():
        if not overwrite and any(out.iterdir()):
            raise LensdaskError(f"{str(out)!r} exists; choose another --out or pass --overwrite")
        shutil.rmtree(out)
    os.replace(tmp, out)
    return card


def _union_galaxies(records, cs: CutoutStore) -> list:
    """The members' ``training_galaxies`` and the fitting store's ``real_galaxies``, as one list of records."""
    out: list = []
    for r in [*records, (cs.provenance or {}).get("real_galaxies")]:
        if isinstance(r, dict):
            out.append(r)
        elif isinstance(r, list):
            out.extend(r)
    return out
