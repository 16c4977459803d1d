"""Checks of user-given values, so bad input is refused before any work starts.

Each check returns the value, converted, or raises :class:`lensdask.errors.LensdaskError`
with a one-line message naming the value. The CLI uses them as argparse types
(:func:`arg_type`); library functions call them on values taken from the configuration.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Mapping

from .errors import ConstraintError, LensdaskError


def _number(text, kind, name: str):
    try:
        value = kind(text)
    except (TypeError, ValueError):
        raise LensdaskError(f"{name} {text!r} is not {'an integer' if kind is int else 'a number'}") from None
    if kind is float and not math.isfinite(value):
        raise LensdaskError(f"{name} {text!r} is not a finite number")
    return value


def count(value, name: str = "value") -> int:
    """An integer >= 1 (numbers of rows, tiles, jobs, stamps ...)."""
    v = _number(value, int, name)
    if v < 1:
        raise LensdaskError(f"{name} {value!r} must be at least 1")
    return v


def non_negative_int(value, name: str = "value") -> int:
    """An integer >= 0 (e.g. patience, where 0 means off)."""
    v = _number(value, int, name)
    if v < 0:
        raise LensdaskError(f"{name} {value!r} must be 0 or more")
    return v


def fraction(value, name: str = "value") -> float:
    """A finite number in [0, 1] (fractions and probabilities: thresholds, floors, priors)."""
    v = _number(value, float, name)
    if not 0.0 <= v <= 1.0:
        raise LensdaskError(f"{name} {value!r} must be between 0 and 1")
    return v


def positive(value, name: str = "value") -> float:
    """A finite number > 0 (pixel scales, radii, learning rates)."""
    v = _number(value, float, name)
    if v <= 0:
        raise LensdaskError(f"{name} {value!r} must be greater than 0")
    return v


def non_negative(value, name: str = "value") -> float:
    """A finite number >= 0 (e.g. a shift in pixels)."""
    v = _number(value, float, name)
    if v < 0:
        raise LensdaskError(f"{name} {value!r} must be 0 or more")
    return v


def finite(value, name: str = "value") -> float:
    """Any finite number (e.g. a zero point, mag)."""
    return _number(value, float, name)


def batch_size(value, name: str = "batch size") -> int | str:
    """``"auto"`` or an integer >= 1."""
    if isinstance(value, str) and value.strip().lower() == "auto":
        return "auto"
    try:
        return count(value, name)
    except LensdaskError:
        raise LensdaskError(f"{name} {value!r} must be 'auto' or an integer of at least 1") from None


def prefilter_spec(value, name: str = "--prefilter") -> tuple[str, float]:
    """``MODEL:FRACTION`` as ``(model, fraction)``: a checkpoint directory (or ``default``) and a share in [0, 1].

    The last ``:`` splits, so a model path may hold colons.
    """
    text = str(value)
    model, sep, frac = text.rpartition(":")
    if not sep or not model.strip():
        raise LensdaskError(f"{name} {value!r} must be MODEL:FRACTION, e.g. default:0.1")
    return model, fraction(frac, f"{name} fraction")


def int_range(lo: int, hi: int) -> Callable:
    """A check for an integer in [lo, hi]."""

    def check(value, name: str = "value") -> int:
        v = _number(value, int, name)
        if not lo <= v <= hi:
            raise LensdaskError(f"{name} {value!r} must be between {lo} and {hi}")
        return v

    check.__name__ = f"int_{lo}_{hi}"
    return check


def constraint_pairs(overrides: Mapping | None) -> None:
    """Refuse constraints whose ``<x>_min`` exceeds ``<x>_max`` or that are not finite numbers.

    ``overrides`` are merged over ``lensdask.simulate.constraints`` first, so a file that only
    lowers ``theta_E_max`` below the configured ``theta_E_min`` is refused too, before any draw.
    """
    from . import config

    merged = dict(config.get("simulate.constraints") or {})
    merged.update(overrides or {})
    for key, value in merged.items():
        if key.endswith(("_min", "_max")) and not isinstance(value, bool):
            try:
                if not math.isfinite(float(value)):
                    raise ValueError
            except (TypeError, ValueError):
                raise ConstraintError(f"constraint {key} = {value!r} is not a finite number") from None
    for key in merged:
        if key.endswith("_min"):
            hi = key[:-4] + "_max"
            if hi in merged and float(merged[key]) > float(merged[hi]):
                raise ConstraintError(
                    f"constraint {key} = {merged[key]} is greater than {hi} = {merged[hi]}: no system could pass"
                )


def arg_type(check: Callable) -> Callable:
    """``check`` as an argparse ``type=``: its message becomes argparse's one-line error."""

    def convert(text):
        try:
            return check(text)
        except LensdaskError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    convert.__name__ = check.__name__
    return convert
