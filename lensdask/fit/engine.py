"""The models a candidate's stamps are compared with, and the bounded least-squares fit of one of them.

A model is a list of light components (the lens light, a lensed source, unlensed blobs), each a shape
with nonlinear parameters; the amplitudes are linear, solved per band for every trial shape
(non-negative least squares: shapes shared by the bands, colours free). The chi-square is minimised
over the nonlinear parameters with scipy's bounded trust-region least squares
(:func:`scipy.optimize.least_squares`, ``trf``), whose Jacobian at the minimum gives the parameters'
covariance (Gauss-Newton: ``(J^T J)^-1``, positive semi-definite by construction).

lenstronomy supplies the physics: the elliptical Sersic surface brightness
(``LightModel("SERSIC_ELLIPSE")``), the SIE + external shear ray shooting (``LensModel``), and the pixel
grid and its coordinates (``data_configure_simple``, the convention of the simulation's ``SimAPI``). The
PSF is a Gaussian of each band's FWHM (``scipy.ndimage.gaussian_filter``, truncated at 4 sigma as
lenstronomy's ``GAUSSIAN`` PSF). Surface brightness is averaged over ``supersampling`` x
``supersampling`` sub-pixels, and over ``core_supersampling`` sub-pixels in the few pixels about the
lens light's centre, where a steep Sersic profile changes fastest.

Pure: arrays in, arrays out; no Dask, no files.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

SOURCE_N = 1.0
"""Sersic index of the lensed source and of the null model's blobs (fixed: exponential discs)."""

CORE_HALF_WIDTH = 3
"""Pixels about the lens light's centre (each side) sampled at ``core_supersampling``."""

TEMPLATE_CACHE_PER_COMPONENT = 3
"""Blurred component images a :class:`Model` remembers, per component (:meth:`Model._blurred`): the
current point's, and a Jacobian column's moved one."""


def _key(params: dict) -> tuple:
    """A component's parameter values as a hashable key (names sorted)."""
    return tuple(sorted(params.items()))


@dataclass(frozen=True)
class Parameter:
    """One nonlinear parameter: its component and key (lenstronomy's name), start, bounds and typical scale.

    ``lower_is_limit``: False where the likelihood is flat towards the lower bound (a source's size far
    below the PSF), so that a fit resting there is not at a limit of the model (:meth:`Optimum.at_bound`).
    """

    component: int
    key: str
    start: float
    lower: float
    upper: float
    scale: float
    lower_is_limit: bool = True


class Stamp:
    """One candidate's pixels: data, noise, PSF, the fitted region and the coordinate grid.

    Parameters
    ----------
    images : numpy.ndarray
        (n_bands, n, n) sky-subtracted pixels, image units.
    noise : numpy.ndarray
        (n_bands,) sky noise sigma, image units.
    psf_fwhm : numpy.ndarray
        (n_bands,) Gaussian PSF FWHM, arcsec.
    pixel_scale : float, arcsec/px
    mask : numpy.ndarray
        (n, n) 1 on the fitted pixels.
    exposure_time : float, s
        Image units x exposure time = counts: the Poisson variance of the light (0: sky noise only); one
        value for every band.
    supersampling, core_supersampling : int
        Sub-pixels per side everywhere, and about the lens light's centre.
    """

    def __init__(
        self,
        images,
        noise,
        psf_fwhm,
        pixel_scale: float,
        mask,
        *,
        exposure_time: float = 0.0,
        supersampling: int = 1,
        core_supersampling: int = 5,
    ):
        from lenstronomy.Util.simulation_util import data_configure_simple

        self.images = np.asarray(images, dtype=np.float64)
        self.nb, self.n, _ = self.images.shape
        self.noise = np.asarray(noise, dtype=np.float64)
        self.pixel_scale = float(pixel_scale)
        self.psf_sigma_px = np.asarray(psf_fwhm, dtype=np.float64) / (2 * np.sqrt(2 * np.log(2))) / self.pixel_scale
        self.psf_kernels = [_gaussian_kernel(s) for s in self.psf_sigma_px]
        self.mask = np.asarray(mask) > 0
        self.n_pix = int(self.mask.sum()) * self.nb
        kw = data_configure_simple(self.n, self.pixel_scale)
        self.transform = np.asarray(kw["transform_pix2angle"], dtype=np.float64)
        self._inverse_transform = np.linalg.inv(self.transform)
        self._core_grids: dict[tuple[int, int], tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = {}
        self.ra0, self.dec0 = float(kw["ra_at_xy_0"]), float(kw["dec_at_xy_0"])
        self.x, self.y = self.coordinates(np.arange(self.n), np.arange(self.n))
        self.ss = int(supersampling)
        self.core_ss = int(core_supersampling)
        self.sub_x, self.sub_y = self._subgrid(np.arange(self.n), np.arange(self.n), self.ss)
        self.area = abs(float(np.linalg.det(self.transform)))
        smooth = np.stack([_blur(b, 1.0) for b in self.images])
        poisson = np.clip(smooth, 0, None) / exposure_time if exposure_time > 0 else 0.0
        self.sigma = np.sqrt(self.noise[:, None, None] ** 2 + poisson)
        self.weight = np.where(self.mask[None], 1.0 / self.sigma, 0.0)
        self.weight_fitted = self.weight[:, self.mask]  # (nb, m)
        self.data_w = (self.images * self.weight)[:, self.mask]  # (nb, m)

    def coordinates(self, cols, rows):
        """(ra, dec) arcsec of pixel centres on the grid ``rows`` x ``cols`` (each (len(rows), len(cols)))."""
        xx, yy = np.meshgrid(np.asarray(cols, float), np.asarray(rows, float))
        return (
            self.ra0 + self.transform[0, 0] * xx + self.transform[0, 1] * yy,
            self.dec0 + self.transform[1, 0] * xx + self.transform[1, 1] * yy,
        )

    def _subgrid(self, cols, rows, ss: int):
        """Sub-pixel (ra, dec), shape (len(rows), len(cols), ss * ss), flattened to 1-d."""
        off = (np.arange(ss) + 0.5) / ss - 0.5
        du, dv = np.meshgrid(off, off)
        xx, yy = np.meshgrid(np.asarray(cols, float), np.asarray(rows, float))
        px = xx[..., None] + du.ravel()
        py = yy[..., None] + dv.ravel()
        ra = self.ra0 + self.transform[0, 0] * px + self.transform[0, 1] * py
        dec = self.dec0 + self.transform[1, 0] * px + self.transform[1, 1] * py
        return ra.ravel(), dec.ravel()

    def pixel_of(self, ra: float, dec: float) -> tuple[float, float]:
        """(col, row) of a position, arcsec."""
        col, row = self._inverse_transform @ np.array([ra - self.ra0, dec - self.dec0])
        return float(col), float(row)

    def core_grid(self, c0: int, r0: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(cols, rows, ra, dec) of the pixels within ``CORE_HALF_WIDTH`` of pixel (``c0``, ``r0``) and their
        ``core_supersampling`` sub-pixels (:meth:`_subgrid`), remembered by centre pixel."""
        if (c0, r0) not in self._core_grids:
            cols = np.arange(max(c0 - CORE_HALF_WIDTH, 0), min(c0 + CORE_HALF_WIDTH + 1, self.n))
            rows = np.arange(max(r0 - CORE_HALF_WIDTH, 0), min(r0 + CORE_HALF_WIDTH + 1, self.n))
            self._core_grids[(c0, r0)] = (cols, rows, *self._subgrid(cols, rows, self.core_ss))
        return self._core_grids[(c0, r0)]

    def average(self, values: np.ndarray, ss: int, shape) -> np.ndarray:
        """Mean over sub-pixels of values on a :meth:`_subgrid`, times the pixel area: flux per pixel."""
        return values.reshape(*shape, ss * ss).mean(axis=-1) * self.area

    def blur(self, image: np.ndarray) -> np.ndarray:
        """(n_bands, n, n): ``image`` (n, n) through each band's PSF."""
        from scipy import ndimage

        out = np.empty((self.nb, self.n, self.n))
        for b, kernel in enumerate(self.psf_kernels):
            ndimage.correlate1d(image, kernel, axis=0, output=out[b], mode="constant")
            ndimage.correlate1d(out[b], kernel, axis=1, output=out[b], mode="constant")
        return out

    def columns(self, blurred: np.ndarray) -> np.ndarray:
        """(n_bands, m): a component's blurred image (n_bands, n, n) on the fitted pixels, over their sigma."""
        return blurred[:, self.mask] * self.weight_fitted

    def solve(self, design: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per-band non-negative amplitudes of PSF-convolved components and the weighted residuals on the
        fitted pixels: (amplitudes (n_bands, n_comp), residuals (n_bands * m,)). ``design`` (n_bands, n_comp,
        m): each component's :meth:`columns`, stacked per band (``Model.design``)."""
        from scipy.optimize import nnls

        nc = design.shape[1]
        amps = np.zeros((self.nb, nc))
        res = np.empty_like(self.data_w)
        for b in range(self.nb):
            a_mat = design[b].T
            try:
                amps[b], _ = nnls(a_mat, self.data_w[b], maxiter=50 * nc)
            except RuntimeError:  # nnls gave up: the unconstrained solution, clipped
                amps[b] = np.clip(np.linalg.lstsq(a_mat, self.data_w[b], rcond=None)[0], 0, None)
            res[b] = self.data_w[b] - a_mat @ amps[b]
        return amps, res.ravel()


def _gaussian_kernel(sigma_px: float, truncate: float = 4.0) -> np.ndarray:
    """A normalised 1-d Gaussian of ``sigma_px`` pixels, truncated at ``truncate`` sigma."""
    half = max(int(truncate * sigma_px + 0.5), 1)
    x = np.arange(-half, half + 1, dtype=np.float64)
    k = np.exp(-0.5 * (x / sigma_px) ** 2)
    return k / k.sum()


def _blur(image: np.ndarray, sigma_px: float) -> np.ndarray:
    from scipy import ndimage

    return ndimage.gaussian_filter(image, sigma_px, mode="constant", truncate=4.0)


class Model:
    """A sum of light components fitted to a :class:`Stamp`: the lens light (one or two concentric elliptical
    Sersics), optionally a source lensed by SIE + external shear (the SIE centred on the lens light), and any
    number of unlensed blobs (elliptical exponentials).

    Parameters
    ----------
    stamp : Stamp
    lensed : bool
        Include the SIE + shear and the lensed source.
    blobs : int
        Unlensed blobs.
    shear_sigma : float
        Gaussian prior (sigma, per component) of the external shear about zero; 0: none.
    mass_light_sigma : float
        Gaussian prior (sigma, per component) of the SIE's ellipticity about the lens light's; 0: none.
    light_profiles : int
        Sersic profiles of the lens light: 1, or 2 (a second, the *envelope*, concentric with the first, with
        its own size, index and ellipticity: real galaxies are rarely one Sersic, and light a single profile
        leaves behind would otherwise be explained by the source or the blobs).
    core_point : bool
        Add a point source at the lens light's centre (its amplitude linear, no parameter of its own): a
        nucleus, and the core that a Gaussian PSF of the recorded FWHM misses on real images, which a
        lensed source would otherwise fill with an Einstein ring.
    ring : bool
        Add an unlensed elliptical ring concentric with the lens light (not with ``lensed``): a Gaussian in
        elliptical radius, ``exp(-(r - R)^2 / (2 w^2))``, its own radius ``R``, width ``w`` and
        ellipticity: the null model's answer to ring galaxies and to ring-like structure of a galaxy's own
        light, which a lensed source centred behind the lens would otherwise claim (YattaLens' ring model,
        Sonnenfeld et al. 2018).
    """

    def __init__(
        self,
        stamp: Stamp,
        *,
        lensed: bool,
        blobs: int = 0,
        shear_sigma: float = 0.0,
        mass_light_sigma: float = 0.0,
        light_profiles: int = 1,
        core_point: bool = False,
        ring: bool = False,
    ):
        from lenstronomy.LightModel.light_model import LightModel

        self.stamp = stamp
        self.shear_sigma = float(shear_sigma)
        self.mass_light_sigma = float(mass_light_sigma)
        self.lensed = bool(lensed)
        self.blobs = int(blobs)
        if light_profiles not in (1, 2):
            raise ValueError(f"light_profiles must be 1 or 2, not {light_profiles!r}")
        self.light_profiles = int(light_profiles)
        self.sersic = LightModel(["SERSIC_ELLIPSE"])
        if self.lensed:
            from lenstronomy.LensModel.lens_model import LensModel

            self.lens = LensModel(["SIE", "SHEAR"])
        self.core_point = bool(core_point)
        if ring and self.lensed:
            raise ValueError("a ring is a null-model component: not with lensed=True")
        self.ring = bool(ring)
        self.n_components = (
            1 + int(self.lensed) + self.blobs + int(self.ring) + int(self.core_point) + self.light_profiles - 1
        )
        self._template_cache: OrderedDict[tuple, tuple[np.ndarray, np.ndarray]] = OrderedDict()

    @property
    def envelope_component(self) -> int | None:
        """Index of the lens light's second profile among :meth:`components` (the last one), or None."""
        return self.component_count() - 1 if self.light_profiles == 2 else None

    @property
    def envelope_amplitude(self) -> int | None:
        """Column of the envelope's amplitude in an :class:`Optimum`'s ``amps`` (the last one), or None."""
        return self.n_components - 1 if self.light_profiles == 2 else None

    def light(self, p: dict) -> np.ndarray:
        """The lens light's (n, n) flux per pixel (unit amplitude), core sampled more finely."""
        s = self.stamp
        kw = [{"amp": 1.0, **p}]
        img = s.average(self.sersic.surface_brightness(s.sub_x, s.sub_y, kw), s.ss, (s.n, s.n))
        col, row = s.pixel_of(p["center_x"], p["center_y"])
        cols, rows, x, y = s.core_grid(int(round(col)), int(round(row)))
        if len(cols) and len(rows) and s.core_ss > s.ss:
            core = s.average(self.sersic.surface_brightness(x, y, kw), s.core_ss, (len(rows), len(cols)))
            img[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1] = core
        return img

    def lensed_source(self, kwargs_lens: list, p: dict) -> np.ndarray:
        """The source's (n, n) flux per pixel (unit amplitude) through the lens, no PSF."""
        s = self.stamp
        bx, by = self.lens.ray_shooting(s.sub_x, s.sub_y, kwargs_lens)
        sb = self.sersic.surface_brightness(bx, by, [{"amp": 1.0, "n_sersic": SOURCE_N, **p}])
        return s.average(sb, s.ss, (s.n, s.n))

    def blob(self, p: dict) -> np.ndarray:
        s = self.stamp
        sb = self.sersic.surface_brightness(s.sub_x, s.sub_y, [{"amp": 1.0, "n_sersic": SOURCE_N, **p}])
        return s.average(sb, s.ss, (s.n, s.n))

    @property
    def core_point_amplitude(self) -> int | None:
        """Column of the core point's amplitude in an :class:`Optimum`'s ``amps`` (before the envelope's), or
        None."""
        if not self.core_point:
            return None
        return self.n_components - 1 - (self.light_profiles == 2)

    @property
    def ring_component(self) -> int | None:
        """Index of the ring among :meth:`components` (after the blobs, before the envelope), or None."""
        return 1 + self.blobs if self.ring else None

    def ring_light(self, p: dict, centre: dict) -> np.ndarray:
        """The ring's (n, n) flux per pixel (unit peak surface brightness) about ``centre`` (the lens light)."""
        from lenstronomy.Util.param_util import ellipticity2phi_q

        s = self.stamp
        phi, q = ellipticity2phi_q(p["e1"], p["e2"])
        dx, dy = s.sub_x - centre["center_x"], s.sub_y - centre["center_y"]
        c, sn = np.cos(phi), np.sin(phi)
        xr, yr = c * dx + sn * dy, -sn * dx + c * dy
        r = np.sqrt(q * xr**2 + yr**2 / q)
        return s.average(np.exp(-0.5 * ((r - p["R_ring"]) / p["w_ring"]) ** 2), s.ss, (s.n, s.n))

    def point(self, x: float, y: float) -> np.ndarray:
        """(n, n) unit flux at (``x``, ``y``) arcsec, shared bilinearly by the four nearest pixels (no PSF)."""
        s = self.stamp
        col, row = s.pixel_of(x, y)
        c0, r0 = int(np.floor(col)), int(np.floor(row))
        fc, fr = col - c0, row - r0
        img = np.zeros((s.n, s.n))
        for dr, wr in ((0, 1 - fr), (1, fr)):
            for dc, wc in ((0, 1 - fc), (1, fc)):
                if 0 <= r0 + dr < s.n and 0 <= c0 + dc < s.n:
                    img[r0 + dr, c0 + dc] += wr * wc
        return img

    def templates(self, comps: list[dict]) -> np.ndarray:
        """(n_comp, n_bands, n, n) unit-amplitude components through each band's PSF; ``comps`` as
        :meth:`components`. Amplitude columns: light, [source], blobs, [core point], [envelope]."""
        return np.stack([blurred for blurred, _ in self._components(comps)])

    def design(self, comps: list[dict]) -> np.ndarray:
        """(n_bands, n_comp, m): :meth:`templates` on the fitted pixels over their sigma (``Stamp.columns``),
        what :meth:`Stamp.solve` solves."""
        return np.stack([cols for _, cols in self._components(comps)], axis=1)

    def _components(self, comps: list[dict]) -> list[tuple[np.ndarray, np.ndarray]]:
        """(blurred image, columns) of each component, in :meth:`templates`' order.

        Each is remembered with the parameter values it depends on (:meth:`_blurred`): a finite-difference
        Jacobian moves one parameter at a time, so only the components that parameter enters are computed
        again (the same arrays either way)."""
        light = comps[0]
        centre = (light["center_x"], light["center_y"])
        out = [self._blurred(("light", _key(light)), lambda: self.light(light))]
        k = 1
        if self.lensed:
            kwargs_lens, source = self.kwargs_lens(comps), comps[3]
            key = ("source", centre, _key(comps[1]), _key(comps[2]), _key(source))
            out.append(self._blurred(key, lambda: self.lensed_source(kwargs_lens, source)))
            k = 4
        for j, c in enumerate(comps[k : k + self.blobs]):
            out.append(self._blurred(("blob", j, _key(c)), lambda c=c: self.blob(c)))
        if self.ring:
            ring = comps[k + self.blobs]
            out.append(self._blurred(("ring", centre, _key(ring)), lambda: self.ring_light(ring, light)))
        if self.core_point:
            out.append(self._blurred(("point", centre), lambda: self.point(*centre)))
        if self.light_profiles == 2:
            envelope = self.envelope(comps)
            out.append(self._blurred(("envelope", _key(envelope)), lambda: self.light(envelope)))
        return out

    def _blurred(self, key: tuple, image) -> tuple[np.ndarray, np.ndarray]:
        """The component ``image()`` (n, n) through each band's PSF (n_bands, n, n) and its
        :meth:`Stamp.columns`, remembered by ``key`` (its kind and the parameter values it depends on) for
        the last few evaluations: an optimiser's Jacobian column changes one component, and a scan in
        theta_E changes none but the source."""
        cache = self._template_cache
        if key in cache:
            cache.move_to_end(key)
            return cache[key]
        blurred = self.stamp.blur(image())
        cols = self.stamp.columns(blurred)
        for a in (blurred, cols):
            a.flags.writeable = False  # shared between evaluations
        cache[key] = (blurred, cols)
        while len(cache) > TEMPLATE_CACHE_PER_COMPONENT * self.n_components:
            cache.popitem(last=False)
        return blurred, cols

    def envelope(self, comps: list[dict]) -> dict:
        """The envelope's Sersic kwargs (no amplitude), centred on the lens light."""
        c0 = comps[0]
        return {**comps[-1], "center_x": c0["center_x"], "center_y": c0["center_y"]}

    @staticmethod
    def kwargs_lens(comps: list[dict]) -> list[dict]:
        """lenstronomy's SIE + SHEAR kwargs, the SIE centred on the lens light."""
        light, sie, shear = comps[0], comps[1], comps[2]
        return [
            {**sie, "center_x": light["center_x"], "center_y": light["center_y"]},
            {**shear, "ra_0": 0.0, "dec_0": 0.0},
        ]

    def prior_residuals(self, comps: list[dict]) -> np.ndarray:
        """Residuals of the priors (each a Gaussian's (value - mean) / sigma): they add to the chi-square the
        optimiser minimises, not to the one the evidence compares."""
        out = []
        if self.lensed and self.shear_sigma > 0:
            out += [comps[2]["gamma1"] / self.shear_sigma, comps[2]["gamma2"] / self.shear_sigma]
        if self.lensed and self.mass_light_sigma > 0:
            out += [(comps[1][k] - comps[0][k]) / self.mass_light_sigma for k in ("e1", "e2")]
        return np.asarray(out, dtype=np.float64)

    def component_count(self) -> int:
        """Components holding parameters: light, [SIE, shear, source], blobs, [ring], [envelope]."""
        return 1 + (3 if self.lensed else 0) + self.blobs + int(self.ring) + self.light_profiles - 1

    def components(self, params: list[Parameter], x: np.ndarray) -> list[dict]:
        comps: list[dict] = [{} for _ in range(self.component_count())]
        for prm, v in zip(params, x):
            comps[prm.component][prm.key] = float(v)
        return comps


@dataclass
class Optimum:
    """The result of one least-squares run: parameters, chi-square, amplitudes, the Jacobian's covariance
    and how the optimiser stopped."""

    params: list[Parameter]
    x: np.ndarray
    chi2: float
    amps: np.ndarray
    cov: np.ndarray | None
    status: int
    evaluations: int

    def value(self, key: str, component: int) -> float:
        for p, v in zip(self.params, self.x):
            if p.key == key and p.component == component:
                return float(v)
        raise KeyError((key, component))

    def error(self, key: str, component: int) -> float:
        if self.cov is None:
            return float("nan")
        for i, p in enumerate(self.params):
            if p.key == key and p.component == component:
                v = self.cov[i, i]
                return float(np.sqrt(max(v, 0.0))) if np.isfinite(v) else float("nan")
        raise KeyError((key, component))

    def at_bound(self, tol: float = 0.02) -> list[tuple[int, str]]:
        """(component, key) of parameters within ``tol`` of their range from a bound (the lower one only where
        it is a limit of the model)."""
        out = []
        for p, v in zip(self.params, self.x):
            span = p.upper - p.lower
            if p.upper - v <= tol * span or (p.lower_is_limit and v - p.lower <= tol * span):
                out.append((p.component, p.key))
        return out


def optimise(
    model: Model, params: list[Parameter], *, max_iterations: int, loss: str = "linear", ftol: float = 1e-7
) -> Optimum:
    """Minimise the chi-square of ``model`` over ``params`` from their starts (bounded trust-region
    least squares, finite-difference Jacobian); amplitudes solved per band at every step. It stops when a
    step changes the chi-square by less than ``ftol`` of itself (or moves the parameters by less than
    1e-6 of their values), else after ``max_iterations`` (``Optimum.status`` 0)."""
    from scipy.optimize import least_squares

    lower = np.array([p.lower for p in params])
    upper = np.array([p.upper for p in params])
    x0 = np.clip(np.array([p.start for p in params]), lower + 1e-9 * (upper - lower), upper - 1e-9 * (upper - lower))
    scale = np.array([p.scale for p in params])

    def residuals(x):
        comps = model.components(params, x)
        return np.concatenate([model.stamp.solve(model.design(comps))[1], model.prior_residuals(comps)])

    res = least_squares(
        residuals,
        x0,
        bounds=(lower, upper),
        method="trf",
        x_scale=scale,
        diff_step=1e-4,
        loss=loss,
        f_scale=3.0,
        max_nfev=int(max_iterations),  # trf counts no Jacobian evaluations: iterations
        xtol=1e-6,
        ftol=ftol,
    )
    comps = model.components(params, res.x)
    amps, r = model.stamp.solve(model.design(comps))
    cov = None if res.jac is None else covariance(np.asarray(res.jac))
    return Optimum(params, res.x.copy(), float(r @ r), amps, cov, int(res.status), int(res.nfev))


def covariance(jac: np.ndarray) -> np.ndarray | None:
    """Gauss-Newton covariance ``(J^T J)^-1`` of the parameters the residuals depend on; those they do not
    (a component whose amplitude solved to zero) get NaN rows and columns. None when the rest is singular."""
    norms = np.linalg.norm(jac, axis=0)
    live = norms > 1e-10 * max(float(norms.max()), 1e-300)
    out = np.full((jac.shape[1], jac.shape[1]), np.nan)
    sub = jac[:, live]
    jtj = sub.T @ sub
    try:
        np.linalg.cholesky(jtj)
        out[np.ix_(live, live)] = np.linalg.inv(jtj)
    except np.linalg.LinAlgError:
        return None
    return out


def chi2_at(model: Model, params: list[Parameter], x) -> float:
    """Chi-square of ``model`` at parameter values ``x`` (amplitudes solved)."""
    comps = model.components(params, np.asarray(x, float))
    r = model.stamp.solve(model.design(comps))[1]
    return float(r @ r)
