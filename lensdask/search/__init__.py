"""Search: score survey tiles with a model, one Dask task per tile."""

from .run import SearchResult, merge, read_scores, search, search_tile

__all__ = ["SearchResult", "merge", "read_scores", "search", "search_tile"]
