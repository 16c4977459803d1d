"""lensdask: find strong gravitational lenses in wide-field survey images with Dask."""

__version__ = "0.1.0"

from . import config  # noqa: E402,F401  (loads the defaults into dask.config)
from .store import CutoutStore, create_store, open_store  # noqa: E402

__all__ = ["CutoutStore", "create_store", "open_store", "__version__"]
