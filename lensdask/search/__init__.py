"""Search: score survey tiles with a model, one Dask task per tile."""

from ..rundir import merge, read_scores
from .run import SearchResult, search, search_tile

__all__ = ["SearchResult", "merge", "read_scores", "search", "search_tile"]
