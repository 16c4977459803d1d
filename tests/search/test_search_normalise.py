"""The fast float32 normalisation gives what the plain float64 definition gives, to float32 precision."""

import warnings

import numpy as np
import pytest

from lensdask.normalise import MAD_TO_SIGMA, normalisation_spec, normalise


def reference(images, spec=None):
    """The straightforward definition (np.median on float64), as first written."""
    spec = normalisation_spec(spec)
    x = np.asarray(images).astype(np.float64)
    if spec["method"] == "none":
        return x.astype(np.float32)
    n, b, s, _ = x.shape
    w = spec["border"]
    if w <= 0 or 2 * w >= s:
        edge = x.reshape(n, b, s * s)
    else:
        m = np.ones((s, s), bool)
        m[w:-w, w:-w] = False
        edge = x[:, :, m]
    bg = np.median(edge, axis=-1)
    sig = MAD_TO_SIGMA * np.median(np.abs(edge - bg[..., None]), axis=-1)
    bad = ~(sig > 0)
    if bad.any():
        flat = x.reshape(n, b, s * s)
        med = np.median(flat, axis=-1)
        sig = np.where(bad, MAD_TO_SIGMA * np.median(np.abs(flat - med[..., None]), axis=-1), sig)
        bad = ~(sig > 0)
        sig = np.where(bad, flat.std(axis=-1), sig)
        sig = np.where(sig > 0, sig, 1.0)
    with np.errstate(over="ignore", invalid="ignore"):
        return np.arcsinh((x - bg[..., None, None]) / (sig[..., None, None] * spec["softening"])).astype(np.float32)


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
@pytest.mark.parametrize(
    "spec", [None, {"border": 0}, {"border": 2, "softening": 1.5}, {"border": 30}, {"method": "none"}]
)
def test_matches_plain_float64_definition(dtype, spec):
    rng = np.random.default_rng(1)
    x = rng.normal(0, 1, (70, 4, 27, 27)) * rng.uniform(0.01, 100, (70, 1, 1, 1)) + rng.normal(0, 5, (70, 1, 1, 1))
    x = x.astype(dtype)
    x[1] = 0
    x[2] = 7
    x[3, :, 2, 2] = 1e3
    x[4, 0, 3, 3] = np.nan
    x[5, 1, 0, 0] = np.inf
    with np.errstate(invalid="ignore"):
        expected = reference(x, spec)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # degenerate and non-finite stamps are handled quietly
        got = normalise(x, spec)
    assert got.dtype == np.float32 and got.shape == x.shape
    assert np.array_equal(np.isnan(got), np.isnan(expected)) and np.array_equal(np.isinf(got), np.isinf(expected))
    ok = np.isfinite(expected)
    # float32 arithmetic (float64 input is rounded to float32 first): a few float32 ulps of the output
    np.testing.assert_allclose(got[ok], expected[ok], rtol=1e-6, atol=2e-6)
