"""Survey data: a mock DES survey with injected lenses, and ingest of real tiles and cutouts."""

from .ingest import cut_stamps, ingest
from .mock import mock_survey

__all__ = ["cut_stamps", "ingest", "mock_survey"]
