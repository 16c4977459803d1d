"""Simulated training sets: priors (pure), render (lenstronomy), constraints (pure), run (Dask)."""

from .constraints import Constraints, RejectionStats
from .run import PARAMS, param_names, simulate, simulate_rows

__all__ = ["simulate", "simulate_rows", "PARAMS", "param_names", "Constraints", "RejectionStats"]
