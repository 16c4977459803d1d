"""Render simulated DES stamps with lenstronomy. The only module that imports lenstronomy.

One :class:`Renderer` per configuration and process holds one lenstronomy ``ImageModel``
(built through ``SimAPI``) that does the ray shooting and surface-brightness evaluation
on the supersampled grid; :func:`get_renderer` caches it, so a Dask worker builds it once.
Building these objects per system is what makes other simulators slow.

Every system has its own observing conditions per band (seeing, sky; see
:mod:`~lensdask.simulate.conditions`). The lens light and the source have the same shape
in every band and the bands share one pixel grid, so the lensed source and the lens light
are evaluated once per system at unit amplitude, and each band is a scaling plus a PSF
convolution with that band's own PSF: lenstronomy's ``MultiGaussianConvolution`` (what
``ImageModel`` uses for a ``GAUSSIAN`` PSF) or ``PixelKernelConvolution`` (a ``PIXEL`` PSF,
from a PSFEx model). With lenstronomy's default numerics (``supersampling_convolution``
False) this is the same arithmetic as a fresh ``SimAPI(...).image_model_class().image``
made with that system's conditions (:func:`reference_render`; ``tests/simulate/test_simulate*.py``
check it).

Pixel values are in electrons per second (``data_count_unit='e-'``), sky subtracted.
Noise is Gaussian with variance ``background_rms**2 + max(model, 0) / exposure_time``
(sky + read noise of the coadd, and the Poisson noise of the sources), drawn from the
caller's ``numpy.random.Generator``, never from the global numpy state.

Arcs painted on real cutouts (``backgrounds``) are rendered in e-/s under the sampled
conditions, given their own Poisson noise, and converted to the cutout's own units with
``scale = cutout noise sigma / simulated background_rms`` per band: the arc has the S/N it
would have at DES depth, and the cutout's pixels are left as they are where there is no arc.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from .. import config
from . import inputs as _inputs
from . import scene as _scene
from .conditions import draw_conditions

__all__ = ["Renderer", "Rendered", "get_renderer", "bare_render", "reference_render", "renderer_config"]

ARC_PIXEL_SNR = 1.0
"""Per-pixel S/N above which a pixel belongs to the arc (for ``n_images``, ``arc_extent``, ``contrast``)."""

GAUSSIAN_TRUNCATION = 5
"""Gaussian PSF truncation in sigma (lenstronomy's SimAPI default)."""


def kwargs_model(source_kind: str) -> dict:
    return {
        "lens_model_list": ["SIE", "SHEAR"],
        "source_light_model_list": ["INTERPOL" if source_kind == "cosmos" else "SERSIC_ELLIPSE"],
        "lens_light_model_list": ["SERSIC_ELLIPSE"],
    }


KWARGS_MODEL = kwargs_model("sersic")


def _kwargs_lens(p: dict) -> list[dict]:
    return [
        {
            "theta_E": p["theta_E"],
            "e1": p["mass_e1"],
            "e2": p["mass_e2"],
            "center_x": p["lens_x"],
            "center_y": p["lens_y"],
        },
        {"gamma1": p["gamma1"], "gamma2": p["gamma2"], "ra_0": p["lens_x"], "dec_0": p["lens_y"]},
    ]


def _kwargs_source(p: dict, amp: float | None = 1.0, cosmos=None) -> list[dict]:
    if cosmos is not None and np.isfinite(p.get("source_index", np.nan)):
        k = int(p["source_index"])
        kw = {
            "image": cosmos.images[k],
            "scale": p["source_pixel_scale"],
            "phi_G": p["source_angle"],
            "center_x": p["source_x"],
            "center_y": p["source_y"],
        }
    else:
        kw = {
            "R_sersic": p["source_R_sersic"],
            "n_sersic": p["source_n_sersic"],
            "e1": p["source_e1"],
            "e2": p["source_e2"],
            "center_x": p["source_x"],
            "center_y": p["source_y"],
        }
    if amp is not None:
        kw["amp"] = amp
    return [kw]


def _kwargs_lens_light(p: dict, amp: float | None = 1.0) -> list[dict]:
    kw = {
        "R_sersic": p["lens_R_sersic"],
        "n_sersic": p["lens_n_sersic"],
        "e1": p["lens_e1"],
        "e2": p["lens_e2"],
        "center_x": p["lens_x"],
        "center_y": p["lens_y"],
    }
    if amp is not None:
        kw["amp"] = amp
    return [kw]


def _has_background(p: dict) -> bool:
    return np.isfinite(p.get("background_index", np.nan))


@dataclass
class Rendered:
    """One rendered system.

    Attributes
    ----------
    image : numpy.ndarray
        (n_bands, stamp, stamp) float32, noisy; e-/s per pixel, or the real cutout's units
        for a system painted on a real background.
    lens_light : numpy.ndarray
        (n_bands, stamp, stamp) float64, the lens galaxy in e-/s: noiseless PSF-convolved model,
        or the real cutout divided by its scale.
    arc : numpy.ndarray
        (n_bands, stamp, stamp) float64, noiseless PSF-convolved lensed source, e-/s (zeros for a non-lens).
    derived : dict
        ``magnification``, ``arc_snr_<band>``, ``contrast_<band>``, ``n_images``, ``arc_extent``
        (NaN for a non-lens); see :class:`Candidate`.
    scale : numpy.ndarray
        (n_bands,) factor from e-/s to the image's units (1 for modelled lens galaxies).
    """

    image: np.ndarray
    lens_light: np.ndarray
    arc: np.ndarray
    derived: dict = field(default_factory=dict)
    scale: np.ndarray | None = None


class Candidate:
    """A proposed system whose measurements are computed lazily, cheapest first.

    ``magnification()`` costs one ray shooting on the supersampled grid; ``arc_snr(band)``
    adds the lens light and two convolutions in that band; ``morphology(band)`` labels the
    arc pixels; :meth:`finish` renders the remaining bands and draws the noise.
    """

    def __init__(self, renderer: Renderer, params: dict, backgrounds=None, scene=None):
        self.r = renderer
        self.params = params
        # real cutouts this system is painted on: the renderer's own set unless another is given
        self.backgrounds = renderer.backgrounds if backgrounds is None else backgrounds
        self.bg = _has_background(params)
        if self.bg and self.backgrounds is None:
            raise ValueError("a system with background_index needs real backgrounds (none were given)")
        self.scene = scene
        self._mu: float | None = None
        self._arc1 = None  # unconvolved lensed source at unit amplitude (flux per pixel)
        self._ll1 = None
        self._arc: dict = {}
        self._ll: dict = {}
        self._conv: dict = {}
        self._morph: dict = {}
        self._scene: dict = {}
        self._scene_unit: np.ndarray | None = None
        self.background_rms, self.exposure_time, self.scale = {}, {}, {}
        # systems drawn without conditions get the fixed lenstronomy DES ones
        self.seeing = {b: float(params.get(f"seeing_{b}", renderer.seeing[b])) for b in renderer.bands}
        self.sky = {b: float(params.get(f"sky_{b}", renderer.sky[b])) for b in renderer.bands}
        for b in renderer.bands:
            self.background_rms[b], self.exposure_time[b] = renderer.noise_of(b, self.sky[b])
            if self.bg:
                k = int(params["background_index"])
                self.scale[b] = float(
                    self.real_backgrounds().noise[k, renderer.bands.index(b)] / self.background_rms[b]
                )
            else:
                self.scale[b] = 1.0

    def real_backgrounds(self) -> _inputs.Backgrounds:
        """The real cutouts this system is painted on (it has ``background_index``)."""
        if self.backgrounds is None:
            raise ValueError("a system with background_index needs real backgrounds (none were given)")
        return self.backgrounds

    def conv(self, band):
        if band not in self._conv:
            self._conv[band] = self.r.convolution(band, self.params, self.seeing[band])
        return self._conv[band]

    def _arc_unit(self):
        if self._arc1 is None:
            r, p = self.r, self.params
            ref = r.source_model_for(p)
            self._arc1 = ref.source_surface_brightness(
                _kwargs_source(p, cosmos=r.cosmos), _kwargs_lens(p), unconvolved=True
            )
            self._src_norm = ref.SourceModel.total_flux(_kwargs_source(p, None, cosmos=r.cosmos), norm=True)[0]
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
            unit = self._arc_unit()
            amp = self.r.magnitude2cps(band, self.params[f"mag_source_{band}"]) / self._src_norm
            self._arc[band] = self.conv(band).convolution2d(unit * amp)
        return self._arc[band]

    def lens_light(self, band: str) -> np.ndarray:
        """The lens galaxy in ``band`` (e-/s per pixel): model, or the real cutout / scale."""
        if band not in self._ll:
            if self.bg:
                k, j = int(self.params["background_index"]), self.r.bands.index(band)
                self._ll[band] = self.real_backgrounds().images[k, j].astype(float) / self.scale[band]
            else:
                unit = self._ll_unit()
                amp = self.r.magnitude2cps(band, self.params[f"mag_lens_{band}"]) / self._ll_norm
                self._ll[band] = self.conv(band).convolution2d(unit * amp)
        return self._ll[band]

    def scene_light(self, band: str) -> np.ndarray | float:
        """Noiseless light of the scene's neighbours and stars in ``band`` (e-/s per pixel), or 0.

        Objects on the stamp go through the system's own PSF convolution; stars off the stamp and
        the halos of bright stars are added after it; pixels past the saturation level bleed.
        """
        if self.scene is None or len(self.scene) == 0:
            return 0.0
        if band not in self._scene:
            r = self.r
            if self._scene_unit is None:
                self._scene_unit = self.scene.profiles(r.stamp, r.pixel_scale)
            j = r.bands.index(band)
            counts = 10.0 ** (-0.4 * (self.scene.mag[:, j] - r._zp[band]))
            light = self.conv(band).convolution2d(np.tensordot(counts, self._scene_unit, axes=1))
            light = light + self.scene.outside_light(j, counts, r.stamp, r.pixel_scale, self.seeing[band])
            self._scene[band] = _scene.saturate(light, self.scene.saturation)
        return self._scene[band]

    def variance(self, band: str) -> np.ndarray:
        """Per-pixel variance (e-/s)**2 of the lensed system in ``band``."""
        model = self.lens_light(band) + self.arc(band)
        return self.background_rms[band] ** 2 + np.maximum(model, 0.0) / self.exposure_time[band]

    def arc_snr(self, band: str) -> float:
        """Optimal S/N of the arc in ``band``: sqrt(sum(arc**2 / variance))."""
        arc = self.arc(band)
        return float(np.sqrt(np.sum(arc * arc / self.variance(band))))

    def morphology(self, band: str) -> dict:
        """``n_images``, ``arc_extent`` (deg) and ``contrast_<band>`` of the arc in ``band``.

        The arc's pixels are those with per-pixel S/N above :data:`ARC_PIXEL_SNR`;
        ``n_images`` counts their 8-connected groups of at least 2 pixels; ``arc_extent`` is the
        azimuthal span (deg) they cover around the lens centre (360 minus the largest empty
        sector); ``contrast`` is the arc flux over the lens-galaxy flux in those pixels.
        """
        if band not in self._morph:
            from scipy import ndimage

            arc = self.arc(band)
            mask = arc / np.sqrt(self.variance(band)) > ARC_PIXEL_SNR
            lab, n = ndimage.label(mask, structure=np.ones((3, 3)))
            if n:
                sizes = np.bincount(lab.ravel())[1:]
                n_img = int((sizes >= 2).sum())
                ys, xs = np.nonzero(mask)
                x = (xs - (self.r.stamp - 1) / 2) * self.r.pixel_scale - self.params["lens_x"]
                y = (ys - (self.r.stamp - 1) / 2) * self.r.pixel_scale - self.params["lens_y"]
                ang = np.sort(np.degrees(np.arctan2(y, x)))
                gaps = np.diff(np.concatenate([ang, [ang[0] + 360.0]]))
                extent = float(360.0 - gaps.max())
                ll = float(np.maximum(self.lens_light(band)[mask], 0).sum())
                contrast = float(arc[mask].sum() / ll) if ll > 0 else float("inf")
            else:
                n_img, extent, contrast = 0, 0.0, 0.0
            self._morph[band] = {"n_images": n_img, "arc_extent": extent, f"contrast_{band}": contrast}
        return self._morph[band]

    def finish(self, rng: np.random.Generator) -> Rendered:
        """Render every band, draw the noise with ``rng``, and measure."""
        return self.r._assemble(self, rng, lensed=True)


class Renderer:
    """The lenstronomy objects of one DES-like configuration, built once per process.

    Parameters
    ----------
    bands : sequence of str
        DES bands (of ``g, r, i, z``), in stored order.
    pixel_scale : float
        Arcsec per pixel.
    stamp : int
        Stamp side, pixels.
    coadd_years : int
        DES depth, 1-6 years of coadds (sets the number of 90 s exposures: 10 per 3 years).
    supersampling : int
        Sub-pixel sampling factor of the surface brightness.
    sources : str
        ``"sersic"`` or a GalSim-format COSMOS catalogue (file or folder).
    backgrounds : str, optional
        Real cutouts to paint arcs on (FITS cube folder or store), see
        :func:`~lensdask.simulate.inputs.load_backgrounds`.
    psf : str
        ``"gaussian"`` (FWHM = sampled seeing) or a PSFEx ``.psf`` file (pixelised PSF at a
        random CCD position, the same model in every band).
    conditions : str
        ``"des"``, ``"fixed"`` (lenstronomy's DES values) or a folder of sample files.
    survey : str
        The survey profile (:mod:`lensdask.survey.profiles`) whose instrument and conditions are simulated:
        ``des`` as lensdask always did (lenstronomy's DES preset, ``coadd_years``); another profile takes
        read noise, exposures and e-/s zero points from :meth:`~lensdask.survey.profiles.SurveyProfile.single_band`,
        its parametric conditions for ``conditions="des"`` (seeing clipped to
        :meth:`~lensdask.survey.profiles.SurveyProfile.seeing_clip`) and its medians for ``"fixed"``.
    """

    def __init__(
        self,
        bands: Sequence[str],
        pixel_scale: float,
        stamp: int,
        coadd_years: int,
        supersampling: int,
        sources: str = "sersic",
        backgrounds: str | None = None,
        psf: str = "gaussian",
        conditions: str = "des",
        survey: str = "des",
    ):
        from lenstronomy.SimulationAPI.sim_api import SimAPI

        from ..survey.profiles import des_single_band, get_profile

        self.survey = str(survey)
        profile = None if self.survey == "des" else get_profile(self.survey)
        # the parametric conditions and seeing clip of draw_conditions: None (DES's) for des
        self.condition_model = None if profile is None else {b: c.as_tuple() for b, c in profile.conditions().items()}
        self.seeing_clip = None if profile is None else {b: profile.seeing_clip(b) for b in bands}

        self.bands = list(bands)
        self.pixel_scale = float(pixel_scale)
        self.stamp = int(stamp)
        self.coadd_years = int(coadd_years)
        self.supersampling = int(supersampling)
        self.sources, self.backgrounds_path, self.psf_path = sources, backgrounds, psf
        self.conditions = conditions
        self.kwargs_numerics = {"supersampling_factor": self.supersampling, "supersampling_convolution": False}
        self.cosmos = None if sources == "sersic" else _inputs.load_cosmos(sources)
        self.backgrounds = (
            None
            if backgrounds is None
            else _inputs.load_backgrounds(backgrounds, tuple(self.bands), self.pixel_scale, self.stamp)
        )
        self.psfex = None if psf == "gaussian" else _inputs.load_psfex(psf)
        self.kwargs_band, self._sims, self._models, self._zp = {}, {}, {}, {}
        self.seeing, self.sky = {}, {}
        for b in self.bands:
            if profile is None:
                kw = des_single_band(b, self.coadd_years)
            else:
                kw = profile.single_band(b)
            kw["pixel_scale"] = self.pixel_scale
            self.kwargs_band[b] = kw
            self._zp[b] = float(kw["magnitude_zero_point"])
            self.seeing[b], self.sky[b] = float(kw["seeing"]), float(kw["sky_brightness"])
            sim = SimAPI(num_pix=self.stamp, kwargs_single_band=kw, kwargs_model=KWARGS_MODEL)
            self._sims[b] = sim
            self._models[b] = sim.image_model_class(self.kwargs_numerics)
        self._ref = self._models[self.bands[0]]
        self._ref_cosmos = None
        if self.cosmos is not None:
            sim = SimAPI(
                num_pix=self.stamp,
                kwargs_single_band=self.kwargs_band[self.bands[0]],
                kwargs_model=kwargs_model("cosmos"),
            )
            self._ref_cosmos = sim.image_model_class(self.kwargs_numerics)
            self._interp_key: int | None = None
        self.fixed_conditions = {b: (self.seeing[b], self.sky[b]) for b in self.bands}
        # The fixed (lenstronomy DES) values: used by constraints that need a seeing before drawing.
        self.worst_seeing = max(self.seeing.values())

    def __repr__(self) -> str:
        return (
            f"Renderer(bands={self.bands}, pixel_scale={self.pixel_scale}, stamp={self.stamp}, "
            f"coadd_years={self.coadd_years}, supersampling={self.supersampling}, sources={self.sources!r}, "
            f"backgrounds={self.backgrounds_path!r}, psf={self.psf_path!r}, conditions={self.conditions!r}, "
            f"survey={self.survey!r})"
        )

    # -- per-system pieces ------------------------------------------------------------------
    def draw_conditions(self, rng: np.random.Generator) -> dict:
        """``seeing_<band>``, ``sky_<band>`` (and PSF position) of one system."""
        out = draw_conditions(
            rng, self.bands, self.conditions, self.fixed_conditions, self.condition_model, self.seeing_clip
        )
        if self.psfex is not None:
            # A random CCD position (2048 x 4096 px DECam CCD); the seeing is the kernel's FWHM.
            out["psf_x"] = float(rng.uniform(0, 2048))
            out["psf_y"] = float(rng.uniform(0, 4096))
            fwhm = _inputs.kernel_fwhm(self._psfex_kernel(out["psf_x"], out["psf_y"]), self.pixel_scale)
            for b in self.bands:
                out[f"seeing_{b}"] = fwhm
        return out

    def _psfex_kernel(self, x, y):
        return self.psfex.kernel(x, y, 0.263, self.pixel_scale)

    def magnitude2cps(self, band: str, mag: float) -> float:
        """Counts (e-/s) of a source of AB magnitude ``mag`` in ``band``."""
        return 10.0 ** (-0.4 * (mag - self._zp[band]))

    def noise_of(self, band: str, sky: float) -> tuple[float, float]:
        """(background_rms e-/s, total exposure time s) of the coadd under sky brightness ``sky`` (mag/arcsec^2).

        lenstronomy's ``data_util.bkg_noise``: sqrt(N read**2 + t_tot sky_cps pix**2) / t_tot.
        """
        kw = self.kwargs_band[band]
        n, t = kw["num_exposures"], kw["exposure_time"]
        t_tot = n * t
        sky_cps = self.magnitude2cps(band, sky)
        return float(np.sqrt(n * kw["read_noise"] ** 2 + t_tot * sky_cps * self.pixel_scale**2) / t_tot), t_tot

    def convolution(self, band: str, params: dict, seeing: float | None = None):
        """lenstronomy's convolution for this system's PSF in ``band`` (Gaussian of FWHM ``seeing``, arcsec)."""
        from lenstronomy.ImSim.Numerics.convolution import MultiGaussianConvolution, PixelKernelConvolution

        if self.psfex is not None:
            return PixelKernelConvolution(
                self._psfex_kernel(params["psf_x"], params["psf_y"]), convolution_type="fft_static"
            )
        seeing = params[f"seeing_{band}"] if seeing is None else seeing
        sigma = seeing / (2 * np.sqrt(2 * np.log(2)))
        return MultiGaussianConvolution(
            [sigma], [1.0], self.pixel_scale, self.supersampling, False, truncation=GAUSSIAN_TRUNCATION
        )

    def source_model_for(self, params: dict):
        ref = self._ref_cosmos  # set when there are COSMOS sources (self.cosmos)
        if ref is not None and np.isfinite(params.get("source_index", np.nan)):
            k = int(params["source_index"])
            if self._interp_key != k:  # lenstronomy caches the interpolator of the first image it saw
                ref.SourceModel.delete_interpol_caches()
                self._interp_key = k
            return ref
        return self._ref

    def candidate(self, params: dict, backgrounds=None, scene=None) -> Candidate:
        """A lazily measured lens system (see :class:`Candidate`).

        ``backgrounds`` (:class:`~lensdask.simulate.inputs.Backgrounds`) replaces the renderer's
        own real cutouts for a system with ``background_index``; ``scene``
        (:class:`~lensdask.simulate.scene.Scene`) adds neighbours and stars.
        """
        return Candidate(self, params, backgrounds, scene)

    def render(
        self, params: dict, rng: np.random.Generator, lensed: bool = True, backgrounds=None, scene=None
    ) -> Rendered:
        """Render one system.

        Parameters
        ----------
        params : dict
            Lens galaxy (or ``background_index``), conditions and, if ``lensed``, lensed-source parameters.
        rng : numpy.random.Generator
            Draws the noise.
        lensed : bool
            False renders the galaxy alone (a non-lens).
        """
        return self._assemble(Candidate(self, params, backgrounds, scene), rng, lensed=lensed)

    def _assemble(self, cand: Candidate, rng: np.random.Generator, lensed: bool) -> Rendered:
        nb, s = len(self.bands), self.stamp
        ll = np.empty((nb, s, s))
        arc = np.zeros((nb, s, s))
        scene = np.zeros((nb, s, s))
        scale = np.array([cand.scale[b] for b in self.bands])
        for k, b in enumerate(self.bands):
            ll[k] = cand.lens_light(b)
            scene[k] = cand.scene_light(b)
            if lensed:
                arc[k] = cand.arc(b)
        noise = rng.standard_normal(ll.shape)
        image = np.empty((nb, s, s))
        derived = {}
        for k, b in enumerate(self.bands):
            derived[f"seeing_{b}"], derived[f"sky_{b}"] = cand.seeing[b], cand.sky[b]
            t = cand.exposure_time[b]
            added = arc[k] + scene[k]
            if cand.bg:
                # the cutout already holds its own sky and galaxy noise: add the arc, the scene and their Poisson noise
                image[k] = cand.real_backgrounds().images[int(cand.params["background_index"]), k] + scale[k] * (
                    added + np.sqrt(np.maximum(added, 0.0) / t) * noise[k]
                )
            else:
                var = cand.background_rms[b] ** 2 + np.maximum(ll[k] + added, 0.0) / t
                image[k] = ll[k] + added + np.sqrt(var) * noise[k]
            if lensed:
                var = cand.background_rms[b] ** 2 + np.maximum(ll[k] + added, 0.0) / t
                derived[f"arc_snr_{b}"] = float(np.sqrt(np.sum(arc[k] ** 2 / var)))
                derived[f"contrast_{b}"] = cand.morphology(b)[f"contrast_{b}"]
        if not lensed:
            derived["magnification"] = np.nan
            for b in self.bands:
                derived[f"arc_snr_{b}"] = np.nan
        if lensed:
            derived["magnification"] = cand.magnification()
            # shapes are measured in the S/N band of the constraints (set by the sampler)
            m = cand.morphology(getattr(cand, "shape_band", self.bands[0]))
            derived["n_images"], derived["arc_extent"] = float(m["n_images"]), m["arc_extent"]
        if cand.scene is not None:
            derived.update(cand.scene.summary(self._zp))
        return Rendered(image.astype(np.float32), ll, arc, derived, scale)


def renderer_config(
    bands=None,
    pixel_scale=None,
    stamp=None,
    coadd_years=None,
    supersampling=None,
    sources=None,
    backgrounds=None,
    psf=None,
    conditions=None,
    survey=None,
) -> tuple:
    """The renderer configuration, explicit values over ``lensdask.survey`` / ``lensdask.simulate``.

    ``survey`` (None: ``des``) names a survey profile: for any other than ``des``, bands, pixel scale and
    stamp default to the profile's instead of ``lensdask.survey.*``.
    """
    import os

    def _path(v):
        return v if v is None or "://" in str(v) else os.path.abspath(os.fspath(v))

    sources = config.get("simulate.sources", sources) or "sersic"
    psf = config.get("simulate.psf", psf) or "gaussian"
    conditions = config.get("simulate.conditions", conditions) or "des"
    backgrounds = config.get("simulate.backgrounds", backgrounds) or None
    survey = "des" if survey is None else str(survey)
    if survey != "des":
        from ..survey.profiles import get_profile

        profile = get_profile(survey)
        bands = profile.bands if bands is None else bands
        pixel_scale = profile.pixel_scale if pixel_scale is None else pixel_scale
        stamp = profile.stamp if stamp is None else stamp
    return (
        tuple(config.get("survey.bands", bands)),
        float(config.get("survey.pixel_scale", pixel_scale)),
        int(config.get("survey.stamp", stamp)),
        int(config.get("simulate.coadd_years", coadd_years)),
        int(config.get("simulate.supersampling", supersampling)),
        sources if sources == "sersic" else _path(sources),
        _path(backgrounds),
        psf if psf == "gaussian" else _path(psf),
        conditions if conditions in ("des", "fixed") else _path(conditions),
        survey,
    )


_CACHE: dict[tuple, Renderer] = {}
_LOCK = threading.Lock()


def get_renderer(
    bands=None,
    pixel_scale=None,
    stamp=None,
    coadd_years=None,
    supersampling=None,
    sources=None,
    backgrounds=None,
    psf=None,
    conditions=None,
    survey=None,
) -> Renderer:
    """The process-wide :class:`Renderer` of a configuration, built on first use.

    Unset arguments come from the configuration (``survey.bands``, ``survey.pixel_scale``
    (arcsec/px), ``survey.stamp`` (px), ``simulate.coadd_years``, ``simulate.supersampling``,
    ``simulate.sources``, ``simulate.backgrounds``, ``simulate.psf``, ``simulate.conditions``), or from the
    profile of ``survey`` (:func:`renderer_config`).
    """
    key = renderer_config(
        bands, pixel_scale, stamp, coadd_years, supersampling, sources, backgrounds, psf, conditions, survey
    )
    r = _CACHE.get(key)
    if r is None:
        with _LOCK:
            r = _CACHE.get(key)
            if r is None:
                r = _CACHE[key] = Renderer(*key)
    return r


def bare_render(renderer: Renderer, params: dict, seed: int = 0, noise: bool = True) -> np.ndarray:
    """Render a system the plain lenstronomy way, for benchmarks: the fastest lenstronomy path.

    Per band: ``SimAPI.magnitude2amplitude``, ``ImageModel.image`` of reused objects built for
    the fixed DES conditions (the system's sampled conditions are ignored: honouring them in plain
    lenstronomy means a new ``SimAPI`` per system and band, much slower) and
    ``SimAPI.noise_for_model(seed=seed + band index)`` unless ``noise`` is False. Sersic sources only.

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


def reference_render(renderer: Renderer, params: dict, lensed: bool = True) -> np.ndarray:
    """lenstronomy's own noiseless image of a modelled system under its sampled conditions.

    Builds a fresh ``SimAPI`` per band with the system's seeing, sky and PSF (slow; for
    cross-checks) and returns ``ImageModel.image`` with amplitudes from
    ``SimAPI.magnitude2amplitude``: (n_bands, stamp, stamp) float64, e-/s.
    """
    from lenstronomy.SimulationAPI.sim_api import SimAPI

    p = params
    cosmos = renderer.cosmos if np.isfinite(p.get("source_index", np.nan)) else None
    out = np.empty((len(renderer.bands), renderer.stamp, renderer.stamp))
    for k, b in enumerate(renderer.bands):
        kw = dict(
            renderer.kwargs_band[b],
            seeing=p[f"seeing_{b}"],
            sky_brightness=p[f"sky_{b}"],
            truncation=GAUSSIAN_TRUNCATION,
        )
        if renderer.psfex is not None:
            kw.update(psf_type="PIXEL", kernel_point_source=renderer._psfex_kernel(p["psf_x"], p["psf_y"]))
        sim = SimAPI(
            num_pix=renderer.stamp,
            kwargs_single_band=kw,
            kwargs_model=kwargs_model("cosmos" if cosmos is not None else "sersic"),
        )
        model = sim.image_model_class(renderer.kwargs_numerics)
        ll_mag = _kwargs_lens_light(p, None)
        ll_mag[0]["magnitude"] = p[f"mag_lens_{b}"]
        src_mag = _kwargs_source(p, None, cosmos=cosmos)
        src_mag[0]["magnitude"] = p[f"mag_source_{b}"]
        kw_ll, kw_src, _ = sim.magnitude2amplitude(ll_mag, src_mag, None)
        if not lensed:
            kw_src[0]["amp"] = 0.0
        out[k] = model.image(_kwargs_lens(p), kw_src, kw_ll)
    return out
