"""CUDA paths: tests marked ``gpu`` (skipped, saying why, where PyTorch sees no CUDA GPU; see conftest)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lensdask.model.checkpoint import load_checkpoint
from lensdask.model.infer import predict_proba, resolve_device


@pytest.mark.gpu
def test_auto_and_cuda_resolve_to_the_gpu():
    assert resolve_device("cuda").type == "cuda"
    assert resolve_device("auto").type == "cuda"


@pytest.mark.gpu
def test_predict_proba_on_cuda_matches_cpu(random_model):
    model, card = load_checkpoint(random_model)
    rng = np.random.default_rng(0)
    x = rng.normal(0, 1, (40, len(card["bands"]), card["stamp"], card["stamp"])).astype(np.float32)
    x[3, 0, 0, 0] = np.nan
    cpu = predict_proba(model, card, x, batch_size=16, device="cpu")
    gpu = predict_proba(model, card, x, batch_size=16, device="cuda")
    assert np.isnan(gpu[3]).all() and np.isfinite(np.delete(gpu, 3, axis=0)).all()
    np.testing.assert_allclose(np.delete(gpu, 3, axis=0), np.delete(cpu, 3, axis=0), atol=1e-4)


def test_gpu_marked_tests_skip_without_cuda(request):
    """Where there is no GPU, the conftest hook has marked this module's gpu tests skipped, with the reason."""
    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is present: the gpu tests run")
    items = [i for i in request.session.items if i.get_closest_marker("gpu") and i.module is request.module]
    assert items and all(any("CUDA GPU" in m.kwargs.get("reason", "") for m in i.iter_markers("skip")) for i in items)
