"""The checkpoint format: a directory with weights and a model card.

::

    model_dir/
      model.safetensors   the state dict (safetensors: no pickle, safe to load)
      model_card.json     everything needed to rebuild and apply the model

The card holds ``arch`` and ``arch_kwargs`` (the full keyword set of the timm model class,
whose ``family`` names the class, a ``VisionTransformer`` where absent; so the model rebuilds even
if :data:`ARCHITECTURES` changes, :func:`~lensdask.model.architectures.build_model`),
``bands`` (order matters), ``stamp`` (pixels), ``pixel_scale`` (arcsec/pixel),
``normalisation`` (see :mod:`lensdask.normalise`), ``classes``, ``survey`` (the survey
profile of the training store, :mod:`lensdask.survey.profiles`; cards without it are ``des``),
``lens_class`` (index into ``classes``), ``training`` (data, command, seed,
hyper-parameters, history), ``metrics`` (validation), ``lensdask_version``,
``created``, ``sha256`` of ``model.safetensors`` and
``model_id = f"{arch}-{sha256[:12]}"``.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import math
import os
import pathlib

import torch

from ..errors import CheckpointError, LensdaskError, ModelMismatchError, ModelSurveyError
from .architectures import build_model

WEIGHTS = "model.safetensors"
CARD = "model_card.json"
REQUIRED = ("arch", "arch_kwargs", "bands", "stamp", "pixel_scale", "normalisation", "classes", "lens_class")


def default_model_dir(survey: str | None = None) -> pathlib.Path:
    """The model shipped inside the package for a survey.

    Parameters
    ----------
    survey : str, optional
        A survey profile's name (the cutouts' survey). ``None`` or ``des``: ``lensdask/data/default_model``;
        another survey: ``lensdask/data/<survey>_model`` when the package ships one (``lsst``), else the DES
        model, which the survey check then refuses on that survey's cutouts with a message naming both.

    Returns
    -------
    pathlib.Path
    """
    data = pathlib.Path(__file__).resolve().parent.parent / "data"
    if survey is not None and str(survey) != "des":
        from ..survey.profiles import known_surveys

        # a survey name is data: only a known profile's name selects a folder, never a path
        if str(survey) in known_surveys() and (data / f"{survey}_model" / CARD).is_file():
            return data / f"{survey}_model"
    return data / "default_model"


def resolve_model_dir(model: str | os.PathLike | None, survey: str | None = None) -> pathlib.Path:
    """A model directory from a user argument.

    ``None`` or ``"default"`` gives the shipped model of ``survey`` (:func:`default_model_dir`); anything
    else is a path.
    """
    if model is None or (isinstance(model, str) and model == "default"):
        return default_model_dir(survey)
    return pathlib.Path(os.fspath(model)).expanduser()


def sha256_file(path: pathlib.Path) -> str:
    """SHA-256 hex digest of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def jsonable(obj):
    """Card values (and evaluation results) as strict JSON: NaN -> null, numpy scalars -> Python, tuples -> lists,
    keys -> str."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if hasattr(obj, "item") and not isinstance(obj, (str, bytes)):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    return obj


def save_checkpoint(model: torch.nn.Module, out_dir: str | os.PathLike, card: dict) -> dict:
    """Write a checkpoint directory.

    Files are written under temporary names and renamed into place, weights
    first and card last, so a directory with a card always has its weights.

    Parameters
    ----------
    model : torch.nn.Module
        The model; its state dict is saved from the CPU.
    out_dir : str or path
        Directory to create (or overwrite the two checkpoint files in).
    card : dict
        The model card; must hold at least ``arch``, ``arch_kwargs``, ``bands``,
        ``stamp``, ``pixel_scale``, ``normalisation``, ``classes`` and ``lens_class``.

    Returns
    -------
    dict
        The card as written, with ``sha256``, ``model_id`` (and ``created``,
        ``lensdask_version`` if absent) filled in.
    """
    from safetensors.torch import save_file

    from .._version import __version__

    missing = [k for k in REQUIRED if k not in card]
    if missing:
        raise CheckpointError(f"model card lacks the fields {missing}")
    out = pathlib.Path(os.fspath(out_dir))
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    tmp_w = out / (WEIGHTS + ".tmp")
    # one metadata key only: safetensors writes a multi-key metadata map in random (hash) order,
    # which would give identical weights different sha256 digests and model ids
    save_file(state, str(tmp_w), metadata={"format": "pt"})
    digest = sha256_file(tmp_w)
    card = dict(card)
    card.setdefault("lensdask_version", __version__)
    card.setdefault("created", datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))
    card["sha256"] = digest
    card["model_id"] = f"{card['arch']}-{digest[:12]}"
    card = jsonable(card)
    tmp_c = out / (CARD + ".tmp")
    tmp_c.write_text(json.dumps(card, indent=2, allow_nan=False) + "\n")
    os.replace(tmp_w, out / WEIGHTS)
    os.replace(tmp_c, out / CARD)
    return card


def _no_model_hint(path: pathlib.Path) -> str:
    if path.parent == default_model_dir().parent:
        return (
            " (no default model is shipped in this installation; "
            "train one with `lensdask train` and pass its directory)"
        )
    return ""


def read_card(model_dir: str | os.PathLike | None) -> dict:
    """The model card of a checkpoint directory (``None``: the default model).

    Raises
    ------
    CheckpointError
        The directory or its card is missing or not valid JSON, or lacks fields.
    """
    path = resolve_model_dir(model_dir)
    if not path.is_dir():
        raise CheckpointError(f"no model directory at {str(path)!r}{_no_model_hint(path)}")
    card_path = path / CARD
    if not card_path.is_file():
        raise CheckpointError(f"{str(path)!r} has no {CARD}; not a lensdask checkpoint{_no_model_hint(path)}")
    try:
        card = json.loads(card_path.read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"cannot read {str(card_path)!r}: {exc}") from exc
    missing = [k for k in REQUIRED if k not in card]
    if missing:
        raise CheckpointError(f"{str(card_path)!r} lacks the fields {missing}")
    return card


def verify_weights(model_dir: str | os.PathLike | None, card: dict | None = None) -> str:
    """Check once, before any work, that the weights file exists and matches the card's sha256.

    Parameters
    ----------
    model_dir : str, path or None
        Checkpoint directory; ``None`` is the default model.
    card : dict, optional
        Its model card (read when not given).

    Returns
    -------
    str
        The sha256 of ``model.safetensors``.

    Raises
    ------
    CheckpointError
        No weights file, or one whose hash differs from the card's (corrupt or replaced).
    """
    path = resolve_model_dir(model_dir)
    card = read_card(path) if card is None else card
    weights = path / WEIGHTS
    if not weights.is_file():
        raise CheckpointError(f"{str(path)!r} has a model card but no {WEIGHTS}")
    digest = sha256_file(weights)
    if card.get("sha256") and digest != card["sha256"]:
        raise CheckpointError(
            f"{str(weights)!r} is corrupt or was replaced: its sha256 is {digest[:12]}…, "
            f"the model card expects {card['sha256'][:12]}…"
        )
    if is_committee(card):
        _verify_members(path, card)
    return digest


MEMBERS = "members"
"""The folder of a committee's members, ``members/m0``, ``members/m1``, ... (:mod:`lensdask.model.committee`)."""


def is_committee(card: dict) -> bool:
    """Whether a card is a committee's: members and a meta-classifier (its ``committee`` record)."""
    return isinstance(card.get("committee"), dict)


def committee_members(model_dir: str | os.PathLike, card: dict) -> list[tuple[pathlib.Path, dict]]:
    """A committee's member directories and their card records, in order.

    The directories are named here (``MEMBERS/m<i>``), never taken from the card: a card's text is
    data, not a path. A record whose ``name`` is not the one expected is refused.

    Raises
    ------
    CheckpointError
        No members, or records out of order or more or fewer than ``arch_kwargs.n_members``.
    """
    path = resolve_model_dir(model_dir)
    records = card["committee"].get("members")
    n = int((card.get("arch_kwargs") or {}).get("n_members", -1))
    if not isinstance(records, list) or len(records) < 2 or len(records) != n:
        raise CheckpointError(f"committee {card.get('model_id', path)}: its card lists no valid members")
    out = []
    for i, rec in enumerate(records):
        name = f"m{i}"
        if not isinstance(rec, dict) or rec.get("name") != name:
            raise CheckpointError(f"committee {card.get('model_id', path)}: member {i} is not recorded as {name!r}")
        out.append((path / MEMBERS / name, rec))
    return out


def _verify_members(path: pathlib.Path, card: dict) -> None:
    """Every member's weights against its own card, that card against the committee's record of it, and the
    digests stored with the meta-classifier's weights against both."""
    from safetensors import safe_open

    members = committee_members(path, card)
    try:
        with safe_open(str(path / WEIGHTS), framework="pt") as f:
            stored = [bytes(row.tolist()).hex() for row in f.get_tensor("member_sha256")]
    except Exception as exc:  # safetensors and key errors have no common base
        raise CheckpointError(f"cannot read the member digests of {str(path / WEIGHTS)!r}: {exc}") from exc
    if len(stored) != len(members):
        raise CheckpointError(
            f"{str(path)!r}: the meta-classifier holds {len(stored)} member digests, the card {len(members)} members"
        )
    for (d, rec), digest in zip(members, stored):
        mcard = read_card(d)
        if is_committee(mcard):
            raise CheckpointError(f"{str(d)!r} is a committee: committees of committees are not supported")
        if not (mcard.get("sha256") == rec.get("sha256") == digest):
            raise CheckpointError(
                f"member {rec.get('name')} of committee {card.get('model_id', path)} was replaced: its card says "
                f"{str(mcard.get('sha256'))[:12]}…, the committee was built with {digest[:12]}…"
            )
        verify_weights(d, mcard)


def load_checkpoint(model_dir: str | os.PathLike | None = None, device: str | torch.device = "cpu"):
    """Load a checkpoint.

    Parameters
    ----------
    model_dir : str, path or None
        Checkpoint directory; ``None`` loads the default model.
    device : str or torch.device
        Where to put the model.

    Returns
    -------
    tuple of (torch.nn.Module, dict)
        The model in eval mode on ``device``, and its card.

    Raises
    ------
    CheckpointError
        Missing directory or files, a weights file whose sha256 differs from the
        card's, or weights that cannot be read or do not fit the architecture.
    """
    path = resolve_model_dir(model_dir)
    card = read_card(path)
    verify_weights(path, card)  # a committee's: every member's too
    model = _build(path, card)
    model.to(device)
    model.eval()
    return model, card


def _build(path: pathlib.Path, card: dict) -> torch.nn.Module:
    """The network of a verified checkpoint, on the CPU; a committee's with its members
    (:class:`~lensdask.model.metaclassifier.Committee`)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from .infer import input_size
    from .metaclassifier import Committee, MetaClassifier

    weights = path / WEIGHTS
    try:
        state = load_file(str(weights), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"cannot read the weights {str(weights)!r}: {exc}") from exc
    kwargs = dict(card["arch_kwargs"])
    try:
        model = MetaClassifier.from_kwargs(kwargs) if is_committee(card) else build_model(kwargs)
        model.load_state_dict(state, strict=True)
    except (RuntimeError, TypeError, ValueError, LensdaskError) as exc:
        raise CheckpointError(f"weights in {str(path)!r} do not fit architecture {card['arch']!r}: {exc}") from exc
    if not isinstance(model, MetaClassifier):
        return model
    cards = [read_card(d) for d, _ in committee_members(path, card)]
    nets = [_build(d, c) for (d, _), c in zip(committee_members(path, card), cards)]
    return Committee(nets, [input_size(c) for c in cards], model, int(card["lens_class"]), len(card["classes"]))


def refuse_model_as_store(store, call: str) -> None:
    """Refuse a model where a store belongs: the store comes first, then the model.

    ``evaluate`` and ``inject`` once took the model first; a positional call in that order would
    pass a model as the store. Raised for ``None``, ``"default"``, a list or tuple (an ensemble)
    and a directory holding ``model_card.json``.

    Raises
    ------
    TypeError
        Naming the current order, ``call`` (e.g. ``"evaluate(store, model)"``).
    """
    model_like = store is None or isinstance(store, (list, tuple)) or (isinstance(store, str) and store == "default")
    if not model_like and isinstance(store, (str, os.PathLike)):
        try:
            model_like = (pathlib.Path(os.fspath(store)).expanduser() / CARD).is_file()
        except (OSError, ValueError):
            model_like = False
    if model_like:
        raise TypeError(
            f"got a model ({store!r}) where the store goes: the order is {call}, the store first, then the model"
        )


DEFAULT_SURVEY = "des"
"""The survey of a model card that records none (cards written before cards recorded their survey)."""


def card_survey(card: dict) -> str:
    """The survey profile a model was trained on (card ``survey``; ``des`` for cards without one)."""
    return str(card.get("survey") or DEFAULT_SURVEY)


def check_survey(card: dict, survey: str, where: str, *, adapt_survey: bool = False) -> bool:
    """Refuse a model on cutouts of another survey than its own, unless it is adapted explicitly.

    Parameters
    ----------
    card : dict
        A model card.
    survey : str
        The survey of the cutouts (a store's ``survey``).
    where : str
        The cutouts, as the message names them.
    adapt_survey : bool
        The user asked to adapt the model's bands and scale (:func:`lensdask.model.pretrained.adapt_to_survey`).

    Returns
    -------
    bool
        True when the model must be adapted (another survey, ``adapt_survey``), False when it is the same survey.

    Raises
    ------
    ModelSurveyError
        Another survey without ``adapt_survey``; one line naming both surveys.
    """
    own = card_survey(card)
    if own == str(survey):
        return False
    if adapt_survey:
        return True
    model = card.get("model_id", card.get("arch", "model"))
    raise ModelSurveyError(
        f"model {model} was trained on {own} cutouts, {where} holds {survey} cutouts: use a model trained on "
        f"{survey}, or adapt its bands and pixel scale explicitly (--adapt-survey; API adapt_survey=True)"
    )


def check_compatible(card: dict, store, *, adapt_survey: bool = False) -> None:
    """Check that a model can score a cutout store.

    Parameters
    ----------
    card : dict
        A model card.
    store : lensdask.store.CutoutStore
        The store to be scored.
    adapt_survey : bool
        A model of another survey is to be adapted to the store (:func:`lensdask.model.pretrained.adapt_to_survey`):
        its bands, stamp and pixel scale are not checked here.

    Raises
    ------
    ModelSurveyError
        The model was trained on another survey's cutouts than the store holds (card ``survey``, store
        ``survey``; both ``des`` when not recorded), and ``adapt_survey`` is False.
    ModelMismatchError
        Bands (names or order), stamp size (pixels) or pixel scale (arcsec/pixel,
        relative tolerance 1e-4) differ; the message names both values.
    """
    where = card.get("model_id", card.get("arch", "model"))
    if check_survey(card, getattr(store, "survey", DEFAULT_SURVEY), f"store {store.url!r}", adapt_survey=adapt_survey):
        return
    if list(card["bands"]) != list(store.bands):
        raise ModelMismatchError(
            f"bands differ: model {where} was trained on {list(card['bands'])}, "
            f"store {store.url!r} holds {list(store.bands)} (order matters)"
        )
    if int(card["stamp"]) != int(store.stamp):
        raise ModelMismatchError(
            f"stamp sizes differ: model {where} takes {int(card['stamp'])} px stamps, "
            f"store {store.url!r} holds {int(store.stamp)} px"
        )
    if not math.isclose(float(card["pixel_scale"]), float(store.pixel_scale), rel_tol=1e-4):
        raise ModelMismatchError(
            f"pixel scales differ: model {where} was trained at {float(card['pixel_scale'])} arcsec/px, "
            f"store {store.url!r} is at {float(store.pixel_scale)} arcsec/px"
        )


def untrained_checkpoint(
    out_dir: str | os.PathLike,
    arch: str = "vit-lens-tiny",
    *,
    bands=("g", "r", "i", "z"),
    stamp: int = 45,
    pixel_scale: float = 0.263,
    classes=("non-lens", "lens"),
    seed: int = 0,
    survey: str = DEFAULT_SURVEY,
) -> dict:
    """Save a randomly initialised model of ``arch`` with a complete card.

    For throughput benchmarks and tests, where the weights do not matter but the
    checkpoint must load and run exactly like a trained one.

    Parameters
    ----------
    out_dir : str or path
        Checkpoint directory to write.
    arch : str
        A name of :data:`lensdask.model.ARCHITECTURES`.
    bands : sequence of str
        Filters, in input-channel order.
    stamp : int
        Stamp side, pixels.
    pixel_scale : float
        Arcsec per pixel.
    classes : sequence of str
        Class names; must include ``"lens"``.
    seed : int
        Seed of the random initialisation.
    survey : str
        The survey profile the card records.

    Returns
    -------
    dict
        The card as written.
    """
    from ..normalise import DEFAULT_NORMALISATION
    from .architectures import arch_kwargs

    torch.manual_seed(seed)
    kwargs = arch_kwargs(arch, in_chans=len(bands), img_size=stamp, num_classes=len(classes))
    card = {
        "arch": arch,
        "arch_kwargs": kwargs,
        "bands": list(bands),
        "stamp": int(stamp),
        "pixel_scale": float(pixel_scale),
        "normalisation": dict(DEFAULT_NORMALISATION),
        "classes": list(classes),
        "lens_class": list(classes).index("lens"),
        "survey": str(survey),
        "training": {"note": f"untrained: random initialisation with seed {seed}"},
    }
    return save_checkpoint(build_model(kwargs), out_dir, card)
