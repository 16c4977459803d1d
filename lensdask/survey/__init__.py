"""Survey data: a mock DES survey with injected lenses (and, elsewhere, ingest of real tiles)."""

from .mock import mock_survey

__all__ = ["mock_survey"]
