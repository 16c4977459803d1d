"""Names are data, never paths: tile names checked where they enter, and encoded where they name files.

Tile names come from users' tables, stores and catalogues. :func:`check_name` is applied
where a name enters lensdask (ingest, store creation, ``trainset add``), and every file
named after a tile goes through :func:`child_path`, which encodes the name into one
file-name component and checks that the path stays inside its folder, so even a store
written before these checks cannot write outside a run directory.

Accepted names are what real surveys use: ``DES0213-3040``, ``DES0000+0209``,
``sim-000001``, ``1234``, ``COSMOS_1``, ``tile.5``.
"""

from __future__ import annotations

import hashlib
import os
import pathlib
import re
from collections.abc import Iterable

from .errors import LensdaskError

MAX_LENGTH = 128
"""Longest tile name accepted, in characters."""

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")
_SAFE_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._+-")
_MAX_COMPONENT = 160  # characters of an encoded component before it is shortened with a hash
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r", "\n")
RULE = (
    f"a tile name holds 1-{MAX_LENGTH} letters, digits and . _ + - and starts with a letter or digit "
    "(e.g. DES0213-3040)"
)


def _show(name) -> str:
    """A short, printable rendering of a (possibly hostile) name for an error message."""
    text = repr(name)
    return text if len(text) <= 60 else text[:57] + "...'" + f" ({len(str(name))} characters)"


def is_valid_name(name) -> bool:
    """Whether ``name`` is an acceptable tile name (see :data:`RULE`)."""
    return isinstance(name, str) and 0 < len(name) <= MAX_LENGTH and _NAME.fullmatch(name) is not None


def check_name(name, *, what: str = "tile name", where: str | None = None) -> str:
    """Return ``name`` if it is an acceptable tile name, else raise :class:`LensdaskError`.

    Parameters
    ----------
    name : str
        The name to check.
    what : str
        What the name is, for the message (e.g. ``"tile name"``).
    where : str, optional
        Where it came from, for the message (e.g. ``"row 3 of t.csv"``).

    Returns
    -------
    str
        ``name``, unchanged.
    """
    if not is_valid_name(name):
        at = f" in {where}" if where else ""
        raise LensdaskError(f"{what} {_show(name)}{at} is refused: {RULE}")
    return name


def check_names(
    names: Iterable, *, what: str = "tile name", source: str | None = None, rows: Iterable | None = None
) -> list[str]:
    """Check every name of ``names``; the error names the first offending row.

    Parameters
    ----------
    names : iterable of str
        Names in row order.
    what : str
        What the names are, for the message.
    source : str, optional
        The file or table they came from (e.g. ``"t.csv"``).
    rows : iterable, optional
        Row labels to report (e.g. ``range(1, n + 1)`` for data rows counted from 1);
        default the positions 0, 1, ...

    Returns
    -------
    list of str
        The names.
    """
    names = list(names)
    labels = list(rows) if rows is not None else range(len(names))
    for label, name in zip(labels, names):
        if not is_valid_name(name):
            where = f"row {label}" + (f" of {source}" if source else "")
            check_name(name, what=what, where=where)
    return names


def safe_component(name: str) -> str:
    """Encode ``name`` as one file-name component.

    Valid names (:func:`is_valid_name`) are returned unchanged, so run directories keep
    readable ``DES0213-3040.parquet`` files. Any other character is percent-encoded
    (``/`` becomes ``%2F``), a leading dot is encoded so no component is hidden or ``..``,
    and a component longer than 160 characters is cut and suffixed with a hash of the name.

    Parameters
    ----------
    name : str
        A tile name.

    Returns
    -------
    str
        A non-empty component without ``/``, NUL or a leading dot.
    """
    name = str(name)
    if is_valid_name(name):
        return name
    out = []
    for i, ch in enumerate(name):
        if ch in _SAFE_CHARS and not (i == 0 and ch == "."):
            out.append(ch)
        else:
            out.extend(f"%{b:02X}" for b in ch.encode("utf-8", "surrogatepass"))
    comp = "".join(out) or "%00empty"
    if len(comp) > _MAX_COMPONENT:
        digest = hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:16]
        comp = comp[: _MAX_COMPONENT - 17] + "~" + digest
    return comp


def child_path(folder: str | os.PathLike, name: str, suffix: str = "") -> pathlib.Path:
    """The path ``folder/<encoded name><suffix>``, checked to lie directly inside ``folder``.

    Parameters
    ----------
    folder : str or path
        The folder the file belongs in.
    name : str
        A tile name (any string; see :func:`safe_component`).
    suffix : str
        Appended to the encoded name, e.g. ``".parquet"``; must not hold a path separator.

    Returns
    -------
    pathlib.Path
        ``folder / (safe_component(name) + suffix)``.
    """
    if "/" in suffix or "\0" in suffix or os.sep in suffix:
        raise LensdaskError(f"file suffix {suffix!r} holds a path separator")
    folder = pathlib.Path(folder)
    path = folder / (safe_component(name) + suffix)
    if os.path.dirname(os.path.normpath(os.path.abspath(path))) != os.path.normpath(os.path.abspath(folder)):
        raise LensdaskError(f"a file named after {_show(name)} would leave {folder}")
    return path


def csv_safe(table):
    """A copy of ``table`` whose text cells cannot be read as spreadsheet formulas.

    Cells that start with ``= + - @``, a tab or a line break get a leading ``'`` (OWASP's
    advice against CSV injection); numbers are left alone.

    Parameters
    ----------
    table : pandas.DataFrame

    Returns
    -------
    pandas.DataFrame
    """
    import pandas as pd

    out = table.copy()
    for col in out.columns:
        if out[col].dtype == object or pd.api.types.is_string_dtype(out[col].dtype):
            out[col] = out[col].map(lambda v: "'" + v if isinstance(v, str) and v.startswith(_FORMULA_START) else v)
    return out
