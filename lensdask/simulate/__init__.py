"""Simulated training sets: priors (pure), render (lenstronomy), constraints (pure), run (Dask)."""

from .constraints import CONSTRAINT_NAMES, Constraints, RejectionStats
from .gallery import gallery as gallery  # the deprecated name of gallery_png
from .gallery import gallery_png
from .run import PARAMS, param_names, simulate, simulate_rows

__all__ = [
    "simulate",
    "simulate_rows",
    "PARAMS",
    "param_names",
    "Constraints",
    "RejectionStats",
    "CONSTRAINT_NAMES",
    "gallery_png",
]
