"""Quality constraints on simulated lenses, and the rejection sampler that enforces them.

Pure: no lenstronomy, no dask. The sampler is handed a ``propose(rng) -> params``
function and a ``measure(params) -> candidate`` function; a candidate measures
itself lazily (``candidate.magnification()``, ``candidate.arc_snr(band)``), so the
constraints that need no rendering are checked first and a rejected draw costs as
little as possible.

Configuration (``lensdask.simulate.constraints``)::

    theta_E_min, theta_E_max   arcsec   Einstein radius range
    theta_E_over_seeing_min             theta_E / worst seeing FWHM among the bands (the system's own)
    magnification_min                   total magnification of the source
    arc_snr_min                         optimal S/N of the arc in snr_band
    snr_band                            band of the S/N, image and contrast constraints
    n_images_min                        images_or_arc: at least this many separate arc pieces ...
    arc_extent_min             deg      ... or an arc spanning at least this angle around the lens
    contrast_min                        arc flux / lens-galaxy flux in the arc's pixels (snr_band)

The arc's pixels are those whose noiseless arc has per-pixel S/N above 1 in ``snr_band``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from .. import config
from ..errors import ConstraintError

CONSTRAINT_NAMES = (
    "theta_E_min",
    "theta_E_max",
    "theta_E_over_seeing_min",
    "magnification_min",
    "arc_snr_min",
    "images_or_arc",
    "contrast_min",
)
"""Constraint names, cheapest to check first; rejection counts are kept under these names."""


@dataclass(frozen=True)
class Constraints:
    """The quality cuts a simulated lens must pass.

    Attributes
    ----------
    theta_E_min, theta_E_max : float, arcsec
        Einstein radius range.
    theta_E_over_seeing_min : float
        Minimum Einstein radius over the worst seeing FWHM of the bands.
    magnification_min : float
        Minimum total magnification of the source (flux in the stamp / intrinsic flux).
    arc_snr_min : float
        Minimum optimal S/N of the lensed source in ``snr_band``.
    snr_band : str
        Band of the S/N, images-or-arc and contrast cuts.
    n_images_min : int
        ``images_or_arc`` passes with at least this many separate arc pieces ...
    arc_extent_min : float, deg
        ... or with an arc spanning at least this azimuthal angle around the lens centre.
    contrast_min : float
        Minimum arc flux over lens-galaxy flux in the arc's pixels, in ``snr_band``.
    """

    theta_E_min: float
    theta_E_max: float
    theta_E_over_seeing_min: float
    magnification_min: float
    arc_snr_min: float
    snr_band: str
    n_images_min: int = 0
    arc_extent_min: float = 0.0
    contrast_min: float = 0.0

    @classmethod
    def from_config(cls, overrides: Mapping[str, Any] | None = None) -> Constraints:
        """Read ``lensdask.simulate.constraints`` now, with ``overrides`` winning."""
        conf = dict(config.get("simulate.constraints"))
        conf.update({k: v for k, v in (overrides or {}).items() if v is not None})
        return cls(
            theta_E_min=float(conf["theta_E_min"]),
            theta_E_max=float(conf["theta_E_max"]),
            theta_E_over_seeing_min=float(conf["theta_E_over_seeing_min"]),
            magnification_min=float(conf["magnification_min"]),
            arc_snr_min=float(conf["arc_snr_min"]),
            snr_band=str(conf["snr_band"]),
            n_images_min=int(conf.get("n_images_min", 0)),
            arc_extent_min=float(conf.get("arc_extent_min", 0.0)),
            contrast_min=float(conf.get("contrast_min", 0.0)),
        )

    def describe(self, name: str) -> str:
        """The setting of constraint ``name``, as text."""
        if name == "images_or_arc":
            return f"n_images_min={self.n_images_min} or arc_extent_min={self.arc_extent_min}"
        return f"{name}={getattr(self, name)!r}"

    def check_shape(self, n_images: float, arc_extent: float) -> bool:
        """True when the arc has ``n_images_min`` pieces or spans ``arc_extent_min`` degrees."""
        if self.n_images_min <= 0 and self.arc_extent_min <= 0:
            return True
        return n_images >= max(self.n_images_min, 1) or arc_extent >= self.arc_extent_min > 0

    def as_dict(self) -> dict:
        return asdict(self)

    def check_params(self, params: Mapping[str, float], worst_seeing: float | None = None) -> str | None:
        """The first cheap (no rendering) constraint that ``params`` fail, or None.

        Parameters
        ----------
        params : mapping
            Must hold ``theta_E`` (arcsec); the system's ``seeing_<band>`` (arcsec) when present.
        worst_seeing : float, arcsec, optional
            Largest PSF FWHM among the bands, when ``params`` has no ``seeing_<band>``.
        """
        seeing = [v for k, v in params.items() if k.startswith("seeing_") and np.isfinite(v)]
        if seeing:
            worst_seeing = max(seeing)
        te = params["theta_E"]
        if te < self.theta_E_min:
            return "theta_E_min"
        if te > self.theta_E_max:
            return "theta_E_max"
        if worst_seeing is None:
            raise ValueError("check_params needs the system's seeing_<band> in params, or worst_seeing")
        if te / worst_seeing < self.theta_E_over_seeing_min:
            return "theta_E_over_seeing_min"
        return None

    def check(self, params: Mapping[str, float], worst_seeing: float | None = None) -> str | None:
        """The first constraint that a finished system fails, or None.

        ``params`` must hold ``theta_E``, ``magnification``, ``arc_snr_<snr_band>``,
        ``n_images``, ``arc_extent`` and ``contrast_<snr_band>``.
        """
        failed = self.check_params(params, worst_seeing)
        if failed:
            return failed
        if not params["magnification"] >= self.magnification_min:
            return "magnification_min"
        if not params[f"arc_snr_{self.snr_band}"] >= self.arc_snr_min:
            return "arc_snr_min"
        if not self.check_shape(params.get("n_images", 0), params.get("arc_extent", 0)):
            return "images_or_arc"
        if not params.get(f"contrast_{self.snr_band}", 0) >= self.contrast_min:
            return "contrast_min"
        return None


@dataclass
class RejectionStats:
    """Draws and rejections per constraint, summed over systems (add them with ``+``)."""

    accepted: int = 0
    draws: int = 0
    rejected: dict = field(default_factory=lambda: {n: 0 for n in CONSTRAINT_NAMES})

    def __add__(self, other: RejectionStats) -> RejectionStats:
        rej = {n: self.rejected.get(n, 0) + other.rejected.get(n, 0) for n in CONSTRAINT_NAMES}
        return RejectionStats(self.accepted + other.accepted, self.draws + other.draws, rej)

    def acceptance(self) -> dict:
        """Per constraint: the fraction of the draws that reached it and passed it."""
        out = {}
        reached = self.draws
        for n in CONSTRAINT_NAMES:
            r = self.rejected.get(n, 0)
            out[n] = (reached - r) / reached if reached else float("nan")
            reached -= r
        return out

    @property
    def acceptance_fraction(self) -> float:
        """Accepted systems over draws."""
        return self.accepted / self.draws if self.draws else float("nan")


def sample_lens(
    rng: np.random.Generator,
    propose: Callable[[np.random.Generator], dict],
    measure: Callable[[dict], Any],
    constraints: Constraints,
    worst_seeing: float,
    max_draws: int,
    stats: RejectionStats | None = None,
):
    """Draw lens systems from ``rng`` until one passes every constraint.

    Parameters
    ----------
    rng : numpy.random.Generator
        The system's own generator (seeded from (run seed, index)); every redraw uses it,
        so the result depends on nothing else.
    propose : callable
        ``propose(rng) -> params`` (a flat dict holding ``theta_E``, arcsec).
    measure : callable
        ``measure(params) -> candidate`` with lazy ``candidate.magnification()`` and
        ``candidate.arc_snr(band)``.
    constraints : Constraints
    worst_seeing : float, arcsec
        Largest PSF FWHM among the bands.
    max_draws : int
        Budget of draws for this system.
    stats : RejectionStats, optional
        Updated in place.

    Returns
    -------
    (dict, candidate)
        The accepted parameters and their candidate (render it with ``candidate.finish(rng)``).

    Raises
    ------
    ConstraintError
        No draw passed within ``max_draws``; names the constraint that rejected most draws.
    """
    own = RejectionStats()
    for _ in range(int(max_draws)):
        own.draws += 1
        params = propose(rng)
        failed = constraints.check_params(params, worst_seeing)
        cand = None
        if failed is None:
            cand = measure(params)
            if not cand.magnification() >= constraints.magnification_min:
                failed = "magnification_min"
            elif not cand.arc_snr(constraints.snr_band) >= constraints.arc_snr_min:
                failed = "arc_snr_min"
            else:
                m = cand.morphology(constraints.snr_band)
                if not constraints.check_shape(m["n_images"], m["arc_extent"]):
                    failed = "images_or_arc"
                elif not m[f"contrast_{constraints.snr_band}"] >= constraints.contrast_min:
                    failed = "contrast_min"
        if failed is None:
            own.accepted += 1
            if stats is not None:
                _merge_into(stats, own)
            return params, cand
        own.rejected[failed] += 1
    if stats is not None:
        _merge_into(stats, own)
    worst = max(CONSTRAINT_NAMES, key=lambda n: own.rejected[n])
    rate = own.acceptance()[worst]
    raise ConstraintError(
        f"no simulated lens passed the constraints in {own.draws} draws "
        f"(simulate.max_draws_per_lens): '{worst}' ({constraints.describe(worst)}) rejected "
        f"{own.rejected[worst]} of them (acceptance rate {rate:.1%} among draws reaching it). "
        f"Relax lensdask.simulate.constraints ({worst}) or raise max_draws_per_lens."
    )


def _merge_into(stats: RejectionStats, other: RejectionStats) -> None:
    stats.accepted += other.accepted
    stats.draws += other.draws
    for n in CONSTRAINT_NAMES:
        stats.rejected[n] = stats.rejected.get(n, 0) + other.rejected.get(n, 0)


def load_constraints_file(path: str) -> dict:
    """Constraint overrides from a YAML file: a mapping of ``simulate.constraints`` keys,
    optionally under a top-level ``constraints:`` key. Unknown keys are refused."""
    import os

    import yaml

    if not os.path.exists(path):
        raise ConstraintError(f"constraints file {path!r} not found")
    with open(path) as f:
        data = yaml.safe_load(f) or {}
    if isinstance(data, dict) and isinstance(data.get("constraints"), dict):
        data = data["constraints"]
    if not isinstance(data, dict):
        raise ConstraintError(f"{path}: expected a mapping of constraint names to values")
    known = set(Constraints.__dataclass_fields__)
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConstraintError(f"{path}: unknown constraints {unknown}; known: {sorted(known)}")
    return data
