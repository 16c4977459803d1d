"""Review of search results: known-lens cross-match (galleries, labels and Zooniverse export to come)."""

from .crossmatch import crossmatch, known_lens_report, known_lenses

__all__ = ["crossmatch", "known_lens_report", "known_lenses"]
