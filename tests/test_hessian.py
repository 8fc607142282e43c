"""Hutchinson per-layer Hessian traces: analytic quadratics, PyHessian's whole-model
estimate, and the per-layer / whole-model decomposition."""
import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from mbq.core.config import QuantConfig
from mbq.core.hessian import hutchinson
from mbq.core.models import create_model
from mbq.core.quant import quantize_model, quantized_layers
from mbq.core.sensitivity import layer_sensitivity


class _Quadratic(nn.Module):
    """loss = ½ θᵀAθ over θ = [a; b]: the Hessian is A."""

    def __init__(self, A):
        super().__init__()
        self.A = A
        self.a = nn.Parameter(torch.randn(4, dtype=torch.float64))
        self.b = nn.Parameter(torch.randn(3, dtype=torch.float64))

    def loss(self):
        t = torch.cat([self.a, self.b])
        return 0.5 * t @ self.A @ t


def _sym(n, seed):
    g = torch.Generator().manual_seed(seed)
    m = torch.randn(n, n, generator=g, dtype=torch.float64)
    return m + m.T


def test_quadratic_trace_matches_analytic():
    A = _sym(7, 0)
    model = _Quadratic(A)
    est = hutchinson(model, model.loss, probes=3000, seed=1)
    for names, block in ((["a"], A[:4, :4]), (["b"], A[4:, 4:]), (["a", "b"], A)):
        mean, se = est.group(names)
        assert abs(mean - block.trace().item()) < 4 * se + 1e-9
    # diagonal Hessian: every Rademacher probe gives the exact trace
    D = torch.diag(torch.arange(1.0, 8.0, dtype=torch.float64))
    m = _Quadratic(D)
    exact = hutchinson(m, m.loss, probes=2, seed=0)
    assert exact.total()[0] == pytest.approx(28.0)
    assert exact.group(["b"])[0] == pytest.approx(5 + 6 + 7)


def _pyhessian_style_trace(model, x, y, max_iter, tol, seed):
    """The whole-model Hutchinson estimate as PyHessian computes it (independent code)."""
    params = [p for p in model.parameters() if p.requires_grad]
    loss = F.cross_entropy(model(x), y)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    torch.manual_seed(seed)
    trace_vhv, trace = [], 0.0
    for _ in range(max_iter):
        v = [torch.randint_like(p, high=2) for p in params]
        for vi in v:
            vi[vi == 0] = -1
        hv = torch.autograd.grad(grads, params, grad_outputs=v, retain_graph=True)
        trace_vhv.append(sum((h * vi).sum() for h, vi in zip(hv, v)).item())
        if abs(np.mean(trace_vhv) - trace) / (abs(trace) + 1e-6) < tol:
            return trace_vhv
        trace = np.mean(trace_vhv)
    return trace_vhv


def _small_quantized(seed=0, bias_free=False):
    torch.manual_seed(seed)
    model = create_model("cnn", num_classes=10, in_channels=1, image_size=8)
    if bias_free:  # every parameter is a quantized layer's weight
        for name in ("bn1", "bn2"):
            setattr(model, name, nn.Identity())
        model.fc1 = nn.Linear(model.fc1.in_features, model.fc1.out_features, bias=False)
        model.fc2 = nn.Linear(model.fc2.in_features, model.fc2.out_features, bias=False)
    quantize_model(model, QuantConfig(weight="roundclamp", w_bits=4, a_bits=32, first_last_bits=8))
    x = torch.randn(16, 1, 8, 8)
    y = torch.randint(0, 10, (16,))
    return model.eval(), x, y


@pytest.mark.parametrize("tol", [0.0, 0.05])
def test_whole_model_estimate_equals_pyhessian(tol):
    model, x, y = _small_quantized()
    ref = _pyhessian_style_trace(model, x, y, max_iter=12, tol=tol, seed=3)
    est = hutchinson(model, lambda: F.cross_entropy(model(x), y), probes=12,
                     tol=tol or None, seed=3)
    assert est.probes == len(ref)
    assert torch.allclose(est.samples.sum(1), torch.tensor(ref, dtype=torch.float64), rtol=1e-4, atol=1e-6)
    assert est.total()[0] == pytest.approx(float(np.mean(ref)), rel=1e-4)


def test_per_layer_traces_sum_to_whole_model():
    model, x, y = _small_quantized(1, bias_free=True)
    layers = quantized_layers(model)
    res = layer_sensitivity(model, x, y, layers, probes=6, seed=5)
    ref = np.mean(_pyhessian_style_trace(model, x, y, max_iter=6, tol=0.0, seed=5))
    assert sum(r["trace"] for r in res["layers"]) == pytest.approx(ref, rel=1e-4)
    assert res["other_trace"] == pytest.approx(0.0, abs=1e-6 * abs(ref))
    # with BN and biases: the per-layer traces plus the rest make up the whole-model figure
    model, x, y = _small_quantized(2)
    res = layer_sensitivity(model, x, y, quantized_layers(model), probes=4, seed=0)
    ref = np.mean(_pyhessian_style_trace(model, x, y, max_iter=4, tol=0.0, seed=0))
    assert res["total_trace"] == pytest.approx(ref, rel=1e-4)
    assert sum(r["trace"] for r in res["layers"]) + res["other_trace"] == pytest.approx(ref, rel=1e-4)
    for r in res["layers"]:
        assert r["omega"] == pytest.approx(r["trace"] / r["params"] * r["qerr"])
        assert r["trace_se"] is not None and r["trace_se"] >= 0
    assert model.training is False  # mode restored


def test_probes_must_be_positive():
    model, x, y = _small_quantized()
    with pytest.raises(ValueError):
        hutchinson(model, lambda: F.cross_entropy(model(x), y), probes=0)
