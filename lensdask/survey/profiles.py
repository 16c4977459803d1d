"""Survey profiles: each survey's bands, pixels, observing conditions, flux unit, depth, stamp and coadd layout.

The profiles are declared once, in the package configuration (``lensdask.surveys`` in
``lensdask/lensdask.yaml``, every number with its source), and read here into frozen
:class:`SurveyProfile` objects. ``des`` is what lensdask did before profiles: its entries point
at today's definitions (``survey.bands``, ``survey.pixel_scale``, ``survey.stamp``,
:data:`lensdask.simulate.conditions.DES_CONDITIONS`, ``ingest.des`` and
:mod:`lensdask.survey.des_tiles`) instead of copying their numbers, so it cannot drift from them.

Input is checked against a profile before any work (:func:`check_store_against_profile`): its bands
(the same, in the same order), its pixel scale (within 1 %), and the flux unit its FITS headers
declare (``BUNIT``, or a zero point: ``MAGZERO``, ``MAGZP``, ``ZPAB``, ``FLUXMAG0``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

from .. import config
from ..errors import LensdaskError

PIXEL_SCALE_TOLERANCE = 0.01
"""Largest relative difference between an input's pixel scale and its profile's."""

ZEROPOINT_TOLERANCE = 0.05
"""Largest difference (AB mag) between a zero point a header declares and its profile's."""

FLUX_UNIT_ZEROPOINTS = {
    "jy": 8.9,
    "mjy": 16.4,
    "ujy": 23.9,
    "µjy": 23.9,
    "microjy": 23.9,
    "microjansky": 23.9,
    "njy": 31.4,
    "nanojansky": 31.4,
    "nanomaggy": 22.5,
    "nanomaggies": 22.5,
    "nmgy": 22.5,
}
"""AB magnitude of one unit of the flux units a ``BUNIT`` keyword may name (lower case): m = zp - 2.5 log10(f)."""

ZEROPOINT_KEYWORDS = {"MAGZERO": "mag", "MAGZP": "mag", "ZPAB": "mag", "FLUXMAG0": "flux"}
"""Header keywords that declare the images' zero point: an AB magnitude, or the flux of magnitude 0."""

WEIGHT_KINDS = ("invvar", "variance", "rms")
"""What a coadd's weight plane holds: the inverse variance, the variance, or the noise rms (its square root)."""


class UnknownSurveyError(LensdaskError):
    """A survey name that no profile has (or one that is refused, with the reason)."""


class SurveyMismatchError(LensdaskError):
    """Input or a store whose bands, pixel scale or flux unit contradict its survey's profile; one line each."""


@dataclass(frozen=True)
class BandConditions:
    """Observing conditions of one band, as :mod:`lensdask.simulate.conditions` draws them.

    ln(seeing FWHM / arcsec) ~ Normal(``seeing_ln_mean``, ``seeing_ln_sd``) and sky brightness
    ~ Normal(``sky_mean``, ``sky_sd``) mag/arcsec^2, correlated by ``rho``.
    """

    seeing_ln_mean: float
    seeing_ln_sd: float
    sky_mean: float
    sky_sd: float
    rho: float

    @property
    def seeing_median(self) -> float:
        """Median seeing FWHM, arcsec."""
        return math.exp(self.seeing_ln_mean)

    def as_tuple(self) -> tuple[float, float, float, float, float]:
        """``(ln-seeing mean, ln-seeing sd, sky mean, sky sd, rho)``, the form of ``DES_CONDITIONS``."""
        return (self.seeing_ln_mean, self.seeing_ln_sd, self.sky_mean, self.sky_sd, self.rho)


@dataclass(frozen=True)
class Depth:
    """Limiting AB magnitude per band (None: not published), as ``definition`` states it."""

    definition: str
    mag: Mapping[str, float | None]


@dataclass(frozen=True)
class CoaddLayout:
    """How a survey's coadd files are named and what their HDUs hold.

    Attributes
    ----------
    tile : str
        What one tile (one set of files) is, e.g. ``brick``.
    image, weight, mask : str or None
        File patterns relative to the coadd folder, with ``{tile}``, ``{band}`` (the band's name in
        the files, :attr:`file_bands`) and wildcards; the same file may hold several planes, and a
        mask pattern without ``{band}`` is one file for every band.
    image_hdu, weight_hdu, mask_hdu : int or str or None
        HDUs by number or EXTNAME.
    weight_kind : {"invvar", "variance", "rms"}
        What the weight plane holds; ingest weighs by the inverse variance.
    file_bands : mapping
        ``{band: name in the files}`` where they differ (HSC: ``g`` -> ``HSC-G``).
    mask_bits : mapping or None
        ``{band: bits that make a pixel bad}``; None: any non-zero value (or, with
        :attr:`mask_planes`, the bits the mask header names).
    mask_planes : tuple of str
        Mask plane names whose bits each mask HDU's ``MP_<NAME>`` keywords give (LSST and HSC pipelines).
    psf : str or None
        Pattern of PSFEx models beside the images.
    """

    tile: str
    image: str
    weight: str | None
    mask: str | None
    image_hdu: int | str | None
    weight_hdu: int | str | None
    mask_hdu: int | str | None
    weight_kind: str = "invvar"
    file_bands: Mapping[str, str] = field(default_factory=dict)
    mask_bits: Mapping[str, int] | None = None
    mask_planes: tuple[str, ...] = ()
    psf: str | None = None

    def file_band(self, band: str) -> str:
        """The name of ``band`` in file names."""
        return self.file_bands.get(band, band)


@dataclass(frozen=True)
class SurveyProfile:
    """One survey, as its entry under ``lensdask.surveys`` declares it.

    Attributes
    ----------
    name, title : str
    bands : tuple of str
        In store order.
    pixel_scale : float
        Arcsec per pixel of the coadds.
    stamp_arcsec : float
        Side of a stamp, arcsec; :attr:`stamp` is the nearest odd number of pixels.
    lenstronomy : str or None
        The ``lenstronomy.SimulationAPI.ObservationConfig`` preset checked against (``DES``, ``LSST``,
        ``Euclid``), from which simulations take exposures, read noise and e-/s zero points.
    flux_unit : str
        Unit of the coadd images.
    zeropoint : float
        AB magnitude of one unit of the coadd images.
    unit_names : tuple of str
        Spellings of the flux unit a ``BUNIT`` keyword may use.
    depth : Depth
    layout : CoaddLayout
    """

    name: str
    title: str
    bands: tuple[str, ...]
    pixel_scale: float
    stamp_arcsec: float
    lenstronomy: str | None
    flux_unit: str
    zeropoint: float
    unit_names: tuple[str, ...]
    depth: Depth
    layout: CoaddLayout
    conditions_spec: object = None
    """The ``conditions`` entry as configured; :meth:`conditions` reads it."""
    simulation_spec: Mapping | None = None
    """The ``simulation`` entry as configured (exposures of a survey without a lenstronomy preset);
    :meth:`single_band` reads it."""

    @property
    def stamp(self) -> int:
        """Stamp side, pixels: the odd number nearest to ``stamp_arcsec / pixel_scale``."""
        return _nearest_odd(self.stamp_arcsec / self.pixel_scale)

    def conditions(self) -> dict[str, BandConditions]:
        """Seeing and sky-brightness distributions per band.

        ``des``: :data:`lensdask.simulate.conditions.DES_CONDITIONS` itself. Otherwise medians from
        the lenstronomy preset or the profile, scattered as a DES band's fit (or not at all).

        Raises
        ------
        LensdaskError
            A band without conditions, or an unknown scatter or preset.
        """
        from ..simulate.conditions import DES_CONDITIONS

        spec = self.conditions_spec
        if spec == "des":
            missing = [b for b in self.bands if b not in DES_CONDITIONS]
            if missing:
                raise LensdaskError(f"survey {self.name}: DES conditions have no band {missing}")
            return {b: BandConditions(*DES_CONDITIONS[b]) for b in self.bands}
        if not isinstance(spec, Mapping):
            raise LensdaskError(f"survey {self.name}: conditions {spec!r} must be 'des' or {{median, scatter}}")
        medians = self._condition_medians(spec.get("median"))
        out = {}
        for b in self.bands:
            scatter = spec.get("scatter")
            scatter = scatter.get(b) if isinstance(scatter, Mapping) else scatter
            seeing, sky = medians[b]
            if scatter in (None, "none"):
                ln_sd, sky_sd, rho = 0.0, 0.0, 0.0
            elif isinstance(scatter, str) and scatter.startswith("des-") and scatter[4:] in DES_CONDITIONS:
                _, ln_sd, _, sky_sd, rho = DES_CONDITIONS[scatter[4:]]
            else:
                raise LensdaskError(f"survey {self.name}, band {b}: unknown scatter {scatter!r} (des-<band> or none)")
            out[b] = BandConditions(math.log(seeing), ln_sd, float(sky), sky_sd, rho)
        return out

    def seeing_clip(self, band: str) -> tuple[float, float]:
        """Range (arcsec) a drawn seeing of ``band`` is clipped to: DES's 0.6-2.5" for ``des``, else that range
        times the band's median seeing (DES medians are ~1")."""
        from ..simulate.conditions import SEEING_CLIP

        if self.conditions_spec == "des":
            return SEEING_CLIP
        median = self.conditions()[band].seeing_median
        return (SEEING_CLIP[0] * median, SEEING_CLIP[1] * median)

    def single_band(self, band: str) -> dict:
        """lenstronomy's ``kwargs_single_band`` of ``band`` for simulations of this survey (a new dict).

        The lenstronomy preset's read noise, gain, exposures and e-/s zero point (``simulation.preset``,
        else :attr:`lenstronomy`), with ``simulation.num_exposures`` and ``simulation.exposure_time``
        (per band) over them, at the profile's pixel scale, and its median seeing (arcsec) and sky
        (mag/arcsec^2) as the fixed conditions. (The ``des`` profile is simulated as
        :class:`lensdask.simulate.render.Renderer` always did, from ``simulate.coadd_years``.)

        Raises
        ------
        LensdaskError
            No preset to take the instrument from, or no such band in it.
        """
        import copy
        import importlib

        spec = dict(self.simulation_spec or {})
        preset = spec.get("preset", self.lenstronomy)
        if preset not in ("DES", "LSST", "Euclid"):
            raise LensdaskError(
                f"survey {self.name}: simulations need a lenstronomy preset (lenstronomy or simulation.preset: "
                f"DES, LSST or Euclid), got {preset!r}"
            )
        module = importlib.import_module(f"lenstronomy.SimulationAPI.ObservationConfig.{preset}")
        try:
            # presets mutate module-level dicts: always a deep copy
            kw = copy.deepcopy(getattr(module, preset)(band=band).kwargs_single_band())
        except ValueError as exc:
            raise LensdaskError(
                f"survey {self.name}: lenstronomy's {preset} preset has no band {band!r} ({exc})"
            ) from None
        for key in ("num_exposures", "exposure_time"):
            per_band = spec.get(key)
            if isinstance(per_band, Mapping) and band in per_band:
                kw[key] = type(kw[key])(per_band[band])
        cond = self.conditions()[band]
        kw.update(pixel_scale=self.pixel_scale, seeing=cond.seeing_median, sky_brightness=cond.sky_mean)
        return kw

    def simulated_photometry(self, band: str, coadd_years: int | None = None) -> tuple[float, float]:
        """The zero point and total exposure of ``band`` in this survey's simulations (simulate, mock-survey).

        Their pixels are e-/s of the simulated instrument: ``des`` that of :func:`des_single_band`
        (``coadd_years`` of DES coadds), any other survey that of :meth:`single_band`.

        Parameters
        ----------
        band : str
        coadd_years : int, optional
            ``des`` only: the years of coadds simulated (config ``simulate.coadd_years`` when None).

        Returns
        -------
        (float, float)
            The AB magnitude of 1 e-/s (``magnitude_zero_point``), and the coadd's total exposure
            ``num_exposures x exposure_time``, s (``des``, 6 years: 20 x 90 s = 1800 s in every band).

        Raises
        ------
        LensdaskError
            No preset to take the instrument from, or no such band in it.
        """
        if self.name == "des":
            years = int(config.get("simulate.coadd_years", coadd_years))
            try:
                kw = des_single_band(band, years)
            except ValueError as exc:
                raise LensdaskError(f"survey des: lenstronomy's DES preset: {exc}") from None
        else:
            kw = self.single_band(band)
        return float(kw["magnitude_zero_point"]), float(kw["num_exposures"] * kw["exposure_time"])

    def _condition_medians(self, median) -> dict[str, tuple[float, float]]:
        """``{band: (seeing FWHM arcsec, sky mag/arcsec^2)}`` from the lenstronomy preset or the profile."""
        if median == "lenstronomy":
            return {b: lenstronomy_conditions(self.lenstronomy, b) for b in self.bands}
        if not isinstance(median, Mapping) or any(b not in median for b in self.bands):
            raise LensdaskError(f"survey {self.name}: conditions.median must give [seeing, sky] for {list(self.bands)}")
        return {b: (float(median[b][0]), float(median[b][1])) for b in self.bands}


def des_single_band(band: str, coadd_years: int) -> dict:
    """lenstronomy's ``kwargs_single_band`` of DES ``band`` as DES simulations use it (a new dict).

    lenstronomy's DES preset (read noise, gain, 90 s exposures, e-/s zero point, seeing and sky) with
    ``10 * coadd_years // 3`` exposures (:class:`lensdask.simulate.render.Renderer` of ``des``).

    Parameters
    ----------
    band : str
        ``g``, ``r``, ``i``, ``z`` or ``Y``.
    coadd_years : int
        Years of DES coadds, 1-6 (10 exposures per 3 years).

    Raises
    ------
    ValueError
        A band or number of years the preset does not have.
    """
    import copy
    import importlib

    # the preset by name, as single_band and lenstronomy_conditions read theirs (the simulation's renderer and
    # the fit's engine are the modules that use lenstronomy's physics)
    des = importlib.import_module("lenstronomy.SimulationAPI.ObservationConfig.DES").DES
    # DES() mutates a module-level dict, and leaves num_exposures alone for coadd_years=3: copy its
    # output and set the exposures ourselves.
    kw = copy.deepcopy(des(band=band, coadd_years=int(coadd_years)).kwargs_single_band())
    kw["num_exposures"] = (int(coadd_years) * 10) // 3
    return kw


def lenstronomy_conditions(preset: str | None, band: str) -> tuple[float, float]:
    """(seeing FWHM arcsec, sky brightness mag/arcsec^2) of ``band`` in a lenstronomy ObservationConfig preset.

    Raises
    ------
    LensdaskError
        No such preset, or no such band in it.
    """
    import importlib

    if preset not in ("DES", "LSST", "Euclid", "HST", "JWST", "Roman", "ZTF"):
        raise LensdaskError(f"no lenstronomy ObservationConfig preset {preset!r}")
    module = importlib.import_module(f"lenstronomy.SimulationAPI.ObservationConfig.{preset}")
    try:
        obs = getattr(module, preset)(band=band).obs
    except ValueError as exc:
        raise LensdaskError(f"lenstronomy's {preset} preset has no band {band!r} ({exc})") from None
    return float(obs["seeing"]), float(obs["sky_brightness"])


def _nearest_odd(x: float) -> int:
    """The odd integer nearest to ``x`` (a stamp has a centre pixel)."""
    below = 2 * math.floor((x - 1) / 2) + 1
    return below if x - below <= below + 2 - x else below + 2


def _entries() -> dict:
    return dict(config.get("surveys") or {})


def known_surveys() -> list[str]:
    """The names of the surveys with a profile, in configuration order (refused entries left out)."""
    return [name for name, entry in _entries().items() if not (isinstance(entry, Mapping) and "refused" in entry)]


def get_profile(name: str) -> SurveyProfile:
    """The profile of survey ``name``.

    Raises
    ------
    UnknownSurveyError
        No profile of that name (the message lists the known ones), or a survey that is refused (with why).
    LensdaskError
        A profile entry that lacks a field or holds a wrong value.
    """
    entries = _entries()
    entry = entries.get(str(name))
    if not isinstance(entry, Mapping):
        raise UnknownSurveyError(f"unknown survey {name!r}; known surveys: {', '.join(known_surveys())}")
    if "refused" in entry:
        raise UnknownSurveyError(f"survey {name!r} is refused: {entry['refused']}")
    try:
        return _profile(str(name), entry)
    except (KeyError, TypeError, ValueError) as exc:
        raise LensdaskError(f"survey profile {name!r} (config lensdask.surveys.{name}) is malformed: {exc!r}") from None


def _configured(value):
    """A profile value, or the configuration value a ``survey.*`` pointer names (the DES profile's)."""
    return config.get(value) if isinstance(value, str) and value.startswith("survey.") else value


def _profile(name: str, entry: Mapping) -> SurveyProfile:
    bands = tuple(str(b) for b in _configured(entry["bands"]))
    pixel_scale = float(_configured(entry["pixel_scale"]))
    if "stamp_px" in entry:
        stamp_arcsec = int(_configured(entry["stamp_px"])) * pixel_scale
    else:
        stamp_arcsec = float(entry["stamp_arcsec"])
    depth = entry.get("depth") or {}
    return SurveyProfile(
        name=name,
        title=str(entry.get("title", name)),
        bands=bands,
        pixel_scale=pixel_scale,
        stamp_arcsec=stamp_arcsec,
        lenstronomy=entry.get("lenstronomy"),
        flux_unit=str(entry["flux_unit"]),
        zeropoint=float(entry["zeropoint"]),
        unit_names=tuple(str(u) for u in entry.get("unit_names") or ()),
        depth=Depth(
            str(depth.get("definition", "")),
            MappingProxyType({b: (None if v is None else float(v)) for b, v in (depth.get("mag") or {}).items()}),
        ),
        layout=_layout(name, entry["layout"], bands),
        conditions_spec=entry.get("conditions"),
        simulation_spec=MappingProxyType(dict(entry.get("simulation") or {})),
    )


def _layout(name: str, entry, bands: Sequence[str]) -> CoaddLayout:
    """The coadd layout of a profile: ``des`` (today's DES tile layout) or an explicit entry."""
    if entry == "des":
        from .des_tiles import des_layout

        des = des_layout("")  # the patterns relative to the tile folder, the HDUs and bits of --des-tiles
        return CoaddLayout(
            "DES coadd tile (e.g. DES0001-0001)",
            des["images"],
            des["weights"],
            des["masks"],
            des["hdu"],
            des["weights_hdu"],
            des["masks_hdu"],
            mask_bits=MappingProxyType(dict.fromkeys(bands, des["mask_bits"])),
            psf=des["psf"],
        )
    kind = str(entry.get("weight_kind", "invvar"))
    if kind not in WEIGHT_KINDS:
        raise ValueError(f"weight_kind {kind!r} is not one of {WEIGHT_KINDS}")
    bad, bits = entry.get("bad", "any"), entry.get("bits")
    mask_bits: Mapping[str, int] | None = None
    planes: tuple[str, ...] = ()
    if bad == "any":
        pass
    elif bits == "header":
        planes = tuple(str(p) for p in bad)
    elif isinstance(bits, Mapping):
        per_band = {}
        for b in bands:
            names = [str(p).replace("{band}", b.upper()) for p in bad]
            per_band[b] = sum(1 << int(bits[n]) for n in names if n in bits)
        mask_bits = MappingProxyType(per_band)
    else:
        raise ValueError(f"layout bits {bits!r}: give a mapping name -> bit, or 'header' (MP_<NAME> keywords)")
    return CoaddLayout(
        tile=str(entry.get("tile", "tile")),
        image=str(entry["image"]),
        weight=entry.get("weight"),
        mask=entry.get("mask"),
        image_hdu=entry.get("image_hdu"),
        weight_hdu=entry.get("weight_hdu"),
        mask_hdu=entry.get("mask_hdu"),
        weight_kind=kind,
        file_bands=MappingProxyType(dict(entry.get("file_bands") or {})),
        mask_bits=mask_bits,
        mask_planes=planes,
        psf=entry.get("psf"),
    )


# -- checks before any work ---------------------------------------------------------------
def _flux_mismatches(profile: SurveyProfile, where: str, header: Mapping) -> list[str]:
    """What a header's flux-unit and zero-point keywords contradict in ``profile``, one line each."""
    out = []
    unit = header.get("BUNIT")
    if unit is not None and str(unit).strip():
        text = str(unit).strip()
        zp = FLUX_UNIT_ZEROPOINTS.get(text.lower())
        named = text.lower() in {u.lower() for u in profile.unit_names}
        if (zp is not None and abs(zp - profile.zeropoint) > ZEROPOINT_TOLERANCE) or (
            zp is None and profile.unit_names and not named
        ):
            out.append(
                f"{where}: BUNIT {text!r} contradicts the {profile.name} profile's flux unit {profile.flux_unit}"
            )
    for key, kind in ZEROPOINT_KEYWORDS.items():
        value = header.get(key)
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            continue
        if kind == "flux" and value <= 0:
            out.append(f"{where}: {key} = {value!r} is no flux of magnitude 0")
            continue
        zp = 2.5 * math.log10(value) if kind == "flux" else float(value)
        if abs(zp - profile.zeropoint) > ZEROPOINT_TOLERANCE:
            out.append(
                f"{where}: {key} = {value!r} (zero point {zp:.2f} AB mag) contradicts the {profile.name} profile's "
                f"flux unit {profile.flux_unit} (zero point {profile.zeropoint:g})"
            )
    return out


def check_store_against_profile(store, profile: SurveyProfile, *, headers: Mapping[str, Mapping] | None = None) -> None:
    """Refuse a store, or input about to become one, that contradicts its survey's profile.

    Parameters
    ----------
    store : object
        Anything with ``bands`` (in order) and ``pixel_scale`` (arcsec/px; None: not known): a
        :class:`~lensdask.store.CutoutStore`, or ingest's description of its input images.
    profile : SurveyProfile
    headers : mapping, optional
        ``{where: FITS header}`` of the input files: their ``BUNIT`` and zero-point keywords are
        checked against the profile's flux unit.

    Raises
    ------
    SurveyMismatchError
        One line for each of: bands that are not the profile's (the same bands in the same order),
        a pixel scale more than 1 % off the profile's, a header keyword contradicting its flux unit.
    """
    problems = []
    bands = [str(b) for b in store.bands]
    if bands != list(profile.bands):
        problems.append(
            f"bands {','.join(bands)} do not match the {profile.name} profile's {','.join(profile.bands)} "
            "(the same bands in the same order)"
        )
    scale = getattr(store, "pixel_scale", None)
    if scale is not None and abs(float(scale) / profile.pixel_scale - 1) > PIXEL_SCALE_TOLERANCE:
        problems.append(
            f"pixel scale {float(scale):.4f} arcsec/px is {abs(float(scale) / profile.pixel_scale - 1):.1%} off the "
            f"{profile.name} profile's {profile.pixel_scale:g} arcsec/px (at most {PIXEL_SCALE_TOLERANCE:.0%})"
        )
    for where, header in (headers or {}).items():
        problems.extend(_flux_mismatches(profile, where, header))
    if problems:
        raise SurveyMismatchError("\n".join(problems))


def check_store_survey(store, survey: str | None) -> None:
    """The ``--survey NAME`` of a command that reads a store: the store must be of that survey, and fit its profile.

    Parameters
    ----------
    store : lensdask.store.CutoutStore
    survey : str or None
        None: whatever survey the store records (nothing is checked).

    Raises
    ------
    UnknownSurveyError
        No profile of that name (the message lists the known ones).
    SurveyMismatchError
        The store records another survey, or its bands or pixel scale contradict the profile
        (:func:`check_store_against_profile`); one line each.
    """
    if survey is None:
        return
    profile = get_profile(survey)
    recorded = str(getattr(store, "survey", "des"))
    if recorded != profile.name:
        raise SurveyMismatchError(f"store {store.url!r} holds {recorded} cutouts, not {profile.name} (--survey)")
    check_store_against_profile(store, profile)
