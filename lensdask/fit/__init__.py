"""Characterise candidates with lens models: a lens model against a null model per candidate, on Dask.

:func:`fit` (``lensdask fit RUN_DIR``) fits the best candidates of a search run (:mod:`lensdask.fit.run`);
one candidate is :func:`lensdask.fit.candidate.fit_row`; lenstronomy is wrapped in :mod:`lensdask.fit.lensmodel`.
"""

from .run import FitResult, fit, rank

__all__ = ["FitResult", "fit", "rank"]
