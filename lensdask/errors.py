"""Exceptions that lensdask raises for bad input.

Every error a user can cause derives from :class:`LensdaskError`; the CLI prints
its message (no traceback) and exits with status 2.
"""


class LensdaskError(Exception):
    """Base class for errors caused by input or configuration, not by a bug."""


class StoreNotFoundError(LensdaskError, FileNotFoundError):
    """The cutout store does not exist at the given path or URL."""


class StoreSchemaError(LensdaskError):
    """The store exists but is not of the schema and version this lensdask reads."""


class StoreWriteError(LensdaskError):
    """Data handed to the store does not fit its schema (shape, columns, capacity)."""


class ModelMismatchError(LensdaskError):
    """A model and a store disagree (bands, stamp size, pixel scale)."""


class ModelSurveyError(ModelMismatchError):
    """A model trained on one survey's cutouts given another survey's, without adapting it explicitly."""


class CheckpointError(LensdaskError):
    """A model directory is missing, incomplete or corrupt."""


class ConstraintError(LensdaskError):
    """A simulation constraint rejects (nearly) every draw."""


class ClusterError(LensdaskError):
    """A cluster specification cannot be turned into a Dask client."""


class TileError(LensdaskError):
    """One tile's input cannot be used (a band file missing, planes that disagree, a bad weight map).

    Inside a fan-out the tile fails with this message and every other tile goes on.
    """


class PlaneError(TileError):
    """A weight map or mask whose values cannot be what it is said to be: negative or NaN weights
    (e.g. the science plane given as weights), a floating-point mask."""
