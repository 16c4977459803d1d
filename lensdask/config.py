"""lensdask configuration, kept in ``dask.config`` under the key ``lensdask``.

The commented defaults ship as ``lensdask/lensdask.yaml``. They are merged into
``dask.config`` at import time (``update_defaults``) so that user files,
environment variables (``DASK_LENSDASK__SEARCH__BATCH_SIZE=512``) and
``dask.config.set`` override them. Values are read when a function is called,
never at import, so a notebook can change them between calls.
"""

from __future__ import annotations

import os

import dask.config
import yaml

DEFAULTS_PATH = os.path.join(os.path.dirname(__file__), "lensdask.yaml")

with open(DEFAULTS_PATH) as _f:
    _DEFAULTS = yaml.safe_load(_f)

dask.config.update_defaults(_DEFAULTS)


def get(key: str, value=None):
    """Return ``value`` if it is not None, else the configured ``lensdask.<key>``.

    Parameters
    ----------
    key : str
        Dotted key below ``lensdask``, e.g. ``"search.batch_size"``.
    value : object, optional
        An explicit value from the caller, which wins over the configuration.
    """
    if value is not None:
        return value
    return dask.config.get(f"lensdask.{key}")


def effective() -> dict:
    """The effective ``lensdask`` configuration as a plain dict."""
    return dask.config.get("lensdask")


def show() -> str:
    """The effective configuration as YAML text (what ``lensdask config show`` prints)."""
    return yaml.safe_dump({"lensdask": effective()}, sort_keys=False)
