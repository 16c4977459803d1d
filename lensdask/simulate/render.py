"""Render simulated DES stamps with lenstronomy. The only module that imports lenstronomy.

One :class:`Renderer` per configuration and process holds one lenstronomy
``SimAPI`` and one reused ``ImageModel`` per band (:func:`get_renderer` caches it,
so a Dask worker builds it once). Building these objects per system is what makes
other simulators slow.

Rendering exploits two facts of the model: the lens light and the source have the
same shape in every band (only their amplitudes differ), and the bands share one
pixel grid and differ only in their Gaussian PSF. So the (expensive) ray-shooting
and surface-brightness evaluation on the supersampled grid is done once per system
at unit amplitude, with lenstronomy's own ``ImageModel`` of the first band, and each
band is a scaling plus a PSF convolution with that band's own lenstronomy
convolution. With lenstronomy's default numerics (``supersampling_convolution``
False: sum the sub-pixels, then convolve on the pixel grid) this is the same
arithmetic as ``ImageModel.image`` band by band (``tests/test_simulate.py`` checks it).

Pixel values are in electrons per second (lenstronomy's ``data_count_unit='e-'``),
sky subtracted. Noise is Gaussian with variance
``background_rms**2 + max(model, 0) / exposure_time`` (sky + read noise, and the
Poisson noise of the sources), drawn from the caller's ``numpy.random.Generator``,
never from the global numpy state.
"""

from __future__ import annotations

import copy
import threading
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from .. import config

__all__ = ["Renderer", "Rendered", "get_renderer", "bare_render", "renderer_config"]

KWARGS_MODEL = {
    "lens_model_list": ["SIE", "SHEAR"],
    "source_light_model_list": ["SERSIC_ELLIPSE"],
    "lens_light_model_list": ["SERSIC_ELLIPSE"],
}


def _kwargs_lens(p: dict) -> list[dict]:
    return [
        {"theta_E": p["theta_E"], "e1": p["mass_e1"], "e2": p["mass_e2"],
         "center_x": p["lens_x"], "center_y": p["lens_y"]},
        {"gamma1": p["gamma1"], "gamma2": p["gamma2"], "ra_0": p["lens_x"], "dec_0": p["lens_y"]},
    ]


def _kwargs_source(p: dict, amp: float | None = 1.0) -> list[dict]:
    kw = {"R_sersic": p["source_R_sersic"], "n_sersic": p["source_n_sersic"],
          "e1": p["source_e1"], "e2": p["source_e2"],
          "center_x": p["source_x"], "center_y": p["source_y"]}
    if amp is not None:
        kw["amp"] = amp
    return [kw]


def _kwargs_lens_light(p: dict, amp: float | None = 1.0) -> list[dict]:
    kw = {"R_sersic": p["lens_R_sersic"], "n_sersic": p["lens_n_sersic"],
          "e1": p["lens_e1"], "e2": p["lens_e2"],
          "center_x": p["lens_x"], "center_y": p["lens_y"]}
    if amp is not None:
        kw["amp"] = amp
    return [kw]


@dataclass
class Rendered:
    """One rendered system.

    Attributes
    ----------
    image : numpy.ndarray
        (n_bands, stamp, stamp) float32, noisy, e-/s per pixel.
    lens_light : numpy.ndarray
        (n_bands, stamp, stamp) float64, noiseless PSF-convolved lens galaxy, e-/s.
    arc : numpy.ndarray
        (n_bands, stamp, stamp) float64, noiseless PSF-convolved lensed source, e-/s
        (zeros for a non-lens).
    derived : dict
        ``magnification`` (lensed source flux inside the stamp / intrinsic flux; NaN for a
        non-lens), ``arc_snr_<band>`` (optimal S/N of the arc; NaN for a non-lens),
        ``seeing_<band>`` (PSF FWHM, arcsec).
    """

    image: np.ndarray
    lens_light: np.ndarray
    arc: np.ndarray
    derived: dict = field(default_factory=dict)


class Candidate:
    """A proposed lens system whose measurements are computed lazily, cheapest first.

    Used by the rejection sampler: ``magnification()`` costs one ray-shooting on the
    supersampled grid; ``arc_snr(band)`` adds the lens light and two convolutions in
    that band; :meth:`finish` renders the remaining bands and draws the noise.
    """

    def __init__(self, renderer: "Renderer", params: dict):
        self.r = renderer
        self.params = params
        self._mu = None
        self._arc1 = None  # unconvolved lensed source at unit amplitude
        self._ll1 = None  # unconvolved lens light at unit amplitude
        self._arc = {}
        self._ll = {}

    # unit-amplitude, unconvolved images (pixel grid, flux per pixel)
    def _arc_unit(self):
        if self._arc1 is None:
            r, p = self.r, self.params
            self._arc1 = r._ref.source_surface_brightness(
                _kwargs_source(p), _kwargs_lens(p), unconvolved=True)
            self._src_norm = r._ref.SourceModel.total_flux(_kwargs_source(p, None), norm=True)[0]
        return self._arc1

    def _ll_unit(self):
        if self._ll1 is None:
            r, p = self.r, self.params
            self._ll1 = r._ref.lens_surface_brightness(_kwargs_lens_light(p), unconvolved=True)
            self._ll_norm = r._ref.LensLightModel.total_flux(_kwargs_lens_light(p, None), norm=True)[0]
        return self._ll1

    def magnification(self) -> float:
        """Lensed source flux inside the stamp over the intrinsic source flux."""
        if self._mu is None:
            self._mu = float(self._arc_unit().sum() / self._src_norm)
        return self._mu

    def arc(self, band: str) -> np.ndarray:
        """Noiseless PSF-convolved arc in ``band`` (e-/s per pixel)."""
        if band not in self._arc:
            a = self._arc_unit()
            amp = self.r._sims[band].magnitude2cps(self.params[f"mag_source_{band}"]) / self._src_norm
            self._arc[band] = self.r._conv[band].convolution2d(a * amp)
        return self._arc[band]

    def lens_light(self, band: str) -> np.ndarray:
        """Noiseless PSF-convolved lens galaxy in ``band`` (e-/s per pixel)."""
        if band not in self._ll:
            a = self._ll_unit()
            amp = self.r._sims[band].magnitude2cps(self.params[f"mag_lens_{band}"]) / self._ll_norm
            self._ll[band] = self.r._conv[band].convolution2d(a * amp)
        return self._ll[band]

    def arc_snr(self, band: str) -> float:
        """Optimal S/N of the arc in ``band``: sqrt(sum(arc**2 / variance))."""
        arc = self.arc(band)
        var = self.r.variance(band, self.lens_light(band) + arc)
        return float(np.sqrt(np.sum(arc * arc / var)))

    def finish(self, rng: np.random.Generator) -> Rendered:
        """Render every band, draw the noise with ``rng``, and measure."""
        return self.r._assemble(self, rng, lensed=True)


class Renderer:
    """Per-band lenstronomy objects of one DES-like configuration, built once.

    Parameters
    ----------
    bands : sequence of str
        DES bands (of ``g, r, i, z``), in stored order.
    pixel_scale : float
        Arcsec per pixel.
    stamp : int
        Stamp side, pixels.
    coadd_years : int
        DES depth, 1-6 years of coadds (sets the number of exposures).
    supersampling : int
        Sub-pixel sampling factor of the surface brightness.
    """

    def __init__(self, bands: Sequence[str], pixel_scale: float, stamp: int, coadd_years: int,
                 supersampling: int):
        from lenstronomy.SimulationAPI.ObservationConfig.DES import DES
        from lenstronomy.SimulationAPI.sim_api import SimAPI

        self.bands = list(bands)
        self.pixel_scale = float(pixel_scale)
        self.stamp = int(stamp)
        self.coadd_years = int(coadd_years)
        self.supersampling = int(supersampling)
        self.kwargs_numerics = {"supersampling_factor": self.supersampling,
                                "supersampling_convolution": False}
        self._sims, self._models, self._conv = {}, {}, {}
        self.seeing, self.background_rms, self.exposure_time = {}, {}, {}
        for b in self.bands:
            # DES() mutates a module-level dict, and leaves num_exposures alone for
            # coadd_years=3: copy its output and set the exposures ourselves.
            kw = copy.deepcopy(DES(band=b, coadd_years=self.coadd_years).kwargs_single_band())
            kw["num_exposures"] = (self.coadd_years * 10) // 3
            kw["pixel_scale"] = self.pixel_scale
            sim = SimAPI(num_pix=self.stamp, kwargs_single_band=kw, kwargs_model=KWARGS_MODEL)
            model = sim.image_model_class(self.kwargs_numerics)
            self._sims[b] = sim
            self._models[b] = model
            self._conv[b] = model.ImageNumerics.convolution_class
            self.seeing[b] = float(kw["seeing"])
            self.background_rms[b] = float(sim.background_noise)
            self.exposure_time[b] = float(sim.flux_iid(1.0))
        self._ref = self._models[self.bands[0]]
        self.worst_seeing = max(self.seeing.values())

    def __repr__(self) -> str:
        return (f"Renderer(bands={self.bands}, pixel_scale={self.pixel_scale}, stamp={self.stamp}, "
                f"coadd_years={self.coadd_years}, supersampling={self.supersampling})")

    def variance(self, band: str, model: np.ndarray) -> np.ndarray:
        """Per-pixel noise variance, (e-/s)**2, of a noiseless ``model`` (e-/s) in ``band``."""
        return self.background_rms[band] ** 2 + np.maximum(model, 0.0) / self.exposure_time[band]

    def candidate(self, params: dict) -> Candidate:
        """A lazily measured lens system (see :class:`Candidate`)."""
        return Candidate(self, params)

    def render(self, params: dict, rng: np.random.Generator, lensed: bool = True) -> Rendered:
        """Render one system.

        Parameters
        ----------
        params : dict
            Lens galaxy parameters (:func:`~lensdask.simulate.priors.draw_lens_galaxy`)
            and, if ``lensed``, the lensed source ones
            (:func:`~lensdask.simulate.priors.draw_lensed_source`).
        rng : numpy.random.Generator
            Draws the noise.
        lensed : bool
            False renders the galaxy alone (a non-lens).
        """
        return self._assemble(Candidate(self, params), rng, lensed=lensed)

    def _assemble(self, cand: Candidate, rng: np.random.Generator, lensed: bool) -> Rendered:
        nb, s = len(self.bands), self.stamp
        ll = np.empty((nb, s, s))
        arc = np.zeros((nb, s, s))
        for k, b in enumerate(self.bands):
            ll[k] = cand.lens_light(b)
            if lensed:
                arc[k] = cand.arc(b)
        model = ll + arc
        sigma = np.empty_like(model)
        for k, b in enumerate(self.bands):
            sigma[k] = np.sqrt(self.variance(b, model[k]))
        image = (model + sigma * rng.standard_normal(model.shape)).astype(np.float32)
        derived = {"magnification": cand.magnification() if lensed else np.nan}
        for k, b in enumerate(self.bands):
            derived[f"arc_snr_{b}"] = (float(np.sqrt(np.sum((arc[k] / sigma[k]) ** 2)))
                                       if lensed else np.nan)
        for b in self.bands:
            derived[f"seeing_{b}"] = self.seeing[b]
        return Rendered(image, ll, arc, derived)


def renderer_config(bands=None, pixel_scale=None, stamp=None, coadd_years=None, supersampling=None) -> tuple:
    """The renderer configuration, explicit values over ``lensdask.survey`` / ``lensdask.simulate``."""
    return (
        tuple(config.get("survey.bands", bands)),
        float(config.get("survey.pixel_scale", pixel_scale)),
        int(config.get("survey.stamp", stamp)),
        int(config.get("simulate.coadd_years", coadd_years)),
        int(config.get("simulate.supersampling", supersampling)),
    )


_CACHE: dict[tuple, Renderer] = {}
_LOCK = threading.Lock()


def get_renderer(bands=None, pixel_scale=None, stamp=None, coadd_years=None, supersampling=None) -> Renderer:
    """The process-wide :class:`Renderer` of a configuration, built on first use.

    Unset arguments come from the configuration (``survey.bands``, ``survey.pixel_scale``
    (arcsec/px), ``survey.stamp`` (px), ``simulate.coadd_years``, ``simulate.supersampling``).
    """
    key = renderer_config(bands, pixel_scale, stamp, coadd_years, supersampling)
    r = _CACHE.get(key)
    if r is None:
        with _LOCK:
            r = _CACHE.get(key)
            if r is None:
                r = _CACHE[key] = Renderer(*key)
    return r


def bare_render(renderer: Renderer, params: dict, seed: int | None = 0, noise: bool = True) -> np.ndarray:
    """Render a system the plain lenstronomy way, for benchmarks and cross-checks.

    Per band: ``SimAPI.magnitude2amplitude``, ``ImageModel.image`` (reused objects)
    and ``SimAPI.noise_for_model(seed=seed + band index)`` unless ``noise`` is False.

    Returns
    -------
    numpy.ndarray
        (n_bands, stamp, stamp) float64, e-/s per pixel.
    """
    p = params
    out = np.empty((len(renderer.bands), renderer.stamp, renderer.stamp))
    for k, b in enumerate(renderer.bands):
        sim, model = renderer._sims[b], renderer._models[b]
        ll_mag = _kwargs_lens_light(p, None)
        ll_mag[0]["magnitude"] = p[f"mag_lens_{b}"]
        src_mag = _kwargs_source(p, None)
        src_mag[0]["magnitude"] = p[f"mag_source_{b}"]
        kw_ll, kw_src, _ = sim.magnitude2amplitude(ll_mag, src_mag, None)
        img = model.image(_kwargs_lens(p), kw_src, kw_ll)
        out[k] = img + sim.noise_for_model(img, seed=seed + k) if noise else img
    return out
