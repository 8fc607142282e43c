import pytest
import torch

from mbq.core.quant import functional as F

QBITS = [1, 2, 3, 4, 5, 6, 7, 8, 16]


@pytest.mark.parametrize("bits", QBITS)
def test_dorefa_weight_grid(bits):
    w = torch.randn(64, 3, 3, 3)
    q = F.dorefa_weight(w, bits, "tanh")
    e = w.abs().mean()
    if bits == 1:
        assert set(torch.unique(q / e).round().tolist()) <= {-1.0, 1.0}
        return
    n = 2 ** bits - 1
    levels = (q / e + 1) / 2 * n  # integer codes 0..n
    assert torch.allclose(levels, levels.round(), atol=1e-3 * max(1, n / 255))
    assert levels.min() >= -1e-3 and levels.max() <= n + 1e-3


@pytest.mark.parametrize("bits", QBITS)
def test_dorefa_ste_gradient_passes(bits):
    w = torch.randn(32, 8, requires_grad=True)
    F.dorefa_weight(w, bits, "tanh").sum().backward()
    assert w.grad is not None and torch.isfinite(w.grad).all() and w.grad.abs().sum() > 0


def test_dorefa_fp_paths():
    w = torch.randn(16, 4)
    assert torch.equal(F.dorefa_weight(w, 32, "identity"), w)
    t = torch.tanh(w)
    assert torch.allclose(F.dorefa_weight(w, 32, "tanh"), w.abs().mean() * t / t.abs().max())


def test_dorefa_normaliser_is_detached():
    w = torch.randn(64, 8, requires_grad=True)
    F.dorefa_weight(w, 8, "tanh").sum().backward()
    # d/dw of E*(2q-1) with STE is E*sech^2(w)/max|tanh w| elementwise: all positive
    assert (w.grad > 0).all()


@pytest.mark.parametrize("bits", QBITS)
def test_clamp_act_grid_and_gradient(bits):
    x = torch.linspace(-0.5, 1.5, 1001, requires_grad=True)
    y = F.clamp_act(x, bits)
    n = 2 ** bits - 1
    assert torch.allclose(y * n, (y * n).round(), atol=1e-2)
    assert y.min() == 0 and y.max() == 1
    y.sum().backward()
    inside = (x > 0.01) & (x < 0.99)
    assert torch.all(x.grad[inside] == 1)
    assert torch.all(x.grad[x < -0.1] == 0) and torch.all(x.grad[x > 1.1] == 0)


@pytest.mark.parametrize("bits", [1, 3, 8])
def test_clamp_act_without_grad_matches_the_training_path(bits):
    x = torch.linspace(-0.5, 1.5, 1001)
    trained = F.clamp_act(x.clone().requires_grad_(), bits).detach()
    with torch.no_grad():
        assert torch.equal(F.clamp_act(x.clone().requires_grad_(), bits), trained)
    assert torch.equal(F.clamp_act(x, bits), trained)


def test_clamp_act_fp_identity():
    x = torch.randn(10)
    assert F.clamp_act(x, 32) is x


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_pact_grid_and_alpha_gradient(bits):
    alpha = torch.tensor(2.0, requires_grad=True)
    x = torch.linspace(-1, 4, 501, requires_grad=True)
    y = F.pact_act(x, alpha, bits)
    n = 2 ** bits - 1
    codes = y / alpha * n
    assert torch.allclose(codes, codes.round(), atol=1e-4)
    assert y.max() <= alpha + 1e-6
    y.sum().backward()
    assert alpha.grad is not None and alpha.grad > 0  # clipped inputs pull alpha up
    assert torch.all(x.grad[(x > 0.05) & (x < 1.95)] == 1) and torch.all(x.grad[x > 2.1] == 0)


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_pact_matches_its_autograd_definition(bits):
    # reference: clip to [0, alpha] by relu/minimum, round with a straight-through estimator
    torch.manual_seed(bits)
    x = (torch.randn(4, 3, 5, 5) * 1.5).requires_grad_()
    alpha = torch.tensor(1.3, requires_grad=True)
    n = 2 ** bits - 1
    c = torch.minimum(torch.relu(x), alpha)
    u = c * n / alpha
    ref = (u + (u.round() - u).detach()) * alpha / n
    g = torch.randn_like(ref)
    gx_ref, ga_ref = torch.autograd.grad(ref, (x, alpha), g)
    y = F.pact_act(x, alpha, bits)
    gx, ga = torch.autograd.grad(y, (x, alpha), g)
    assert torch.allclose(y, ref, atol=1e-6)
    assert torch.allclose(gx, gx_ref, atol=1e-6)
    assert torch.allclose(ga, ga_ref, rtol=1e-4, atol=1e-5)


def test_clamp_act_gradient_mask():
    x = torch.tensor([-0.5, 0.0, 0.3, 1.0, 1.7], requires_grad=True)
    F.clamp_act(x, 4).sum().backward()
    assert x.grad.tolist() == [0.0, 1.0, 1.0, 1.0, 0.0]


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("signed", [True, False])
def test_lsq_grid_and_step_gradient(bits, signed):
    x = torch.randn(200) * 2
    step = torch.tensor(0.1, requires_grad=True)
    qmin, qmax = F.lsq_range(bits, signed)
    y = F.lsq_quantize(x, step, qmin, qmax)
    codes = y / 0.1
    assert torch.allclose(codes, codes.round(), atol=1e-4)
    assert codes.min() >= qmin - 1e-4 and codes.max() <= qmax + 1e-4
    y.sum().backward()
    assert step.grad is not None and torch.isfinite(step.grad)


@pytest.mark.parametrize("bits", [2, 3, 4, 5, 6, 7, 8])
def test_roundclamp_twos_complement_grid(bits):
    w = torch.randn(500)
    s = w.abs().max()
    z = F.roundclamp_codes(w, bits, s)
    assert z.min() >= -(2 ** (bits - 1)) and z.max() <= 2 ** (bits - 1) - 1
    step = s / 2 ** (bits - 1)
    assert torch.allclose(F.roundclamp_weight(w, bits), z * step)


@pytest.mark.parametrize("n", [3, 4, 6, 8])
@pytest.mark.parametrize("k", [1, 2])
def test_roundclamp_coarse_grid_is_fine_grid_with_zero_lsbs(n, k):
    # Every (n-k)-bit code, read on the n-bit grid, has k zero LSBs, and vice versa.
    s = torch.tensor(1.0)
    coarse_vals = torch.arange(-(2 ** (n - k - 1)), 2 ** (n - k - 1)) * (s / 2 ** (n - k - 1))
    fine = F.roundclamp_codes(coarse_vals, n, s)
    assert torch.all(fine.remainder(2 ** k) == 0)
    assert torch.all(F.lsb_residual(coarse_vals, n, k, s) == 0)
    fine_vals = torch.arange(-(2 ** (n - 1)), 2 ** (n - 1)) * (s / 2 ** (n - 1))
    zero_lsb = F.roundclamp_codes(fine_vals, n, s).remainder(2 ** k) == 0
    assert torch.equal(F.lsb_residual(fine_vals, n, k, s) == 0, zero_lsb)


def test_lsb_residual_range_and_penalty_gradient():
    torch.manual_seed(0)
    w = torch.randn(1000, requires_grad=True)
    s = w.detach().abs().max()
    for k in (1, 2):
        res = F.lsb_residual(w, 6, k, s)
        # |L_k| <= 2^(k-1), except at the clamped top code (2^(n-1)-1 has all LSBs set).
        top = F.roundclamp_codes(w, 6, s) == 2 ** 5 - 1
        assert res[~top].abs().max() <= 2 ** (k - 1)
        if top.any():
            assert res[top].abs().max() <= 2 ** k - 1
        w.grad = None
        F.lsb_penalty(w, 6, k, s).backward()
        assert torch.equal(w.grad, torch.sign(res))


def test_round_and_sign_ste():
    x = torch.tensor([-1.4, -0.2, 0.0, 0.6, 2.5], requires_grad=True)
    F.round_ste(x).sum().backward()
    assert torch.all(x.grad == 1)
    assert F.sign_ste(x).tolist() == [-1, -1, 1, 1, 1]


@pytest.mark.parametrize("bits", [1, 2, 3, 4, 5, 6, 7, 8])
@pytest.mark.parametrize("numel", [1, 7, 13, 1001])
@pytest.mark.parametrize("signed", [False, True])
def test_pack_unpack_roundtrip(bits, numel, signed):
    g = torch.Generator().manual_seed(bits * numel)
    if signed:
        codes = torch.randint(-(2 ** (bits - 1)), 2 ** (bits - 1), (numel,), generator=g)
    else:
        codes = torch.randint(0, 2 ** bits, (numel,), generator=g)
    packed = F.pack_bits(codes, bits)
    assert packed.dtype == torch.uint8 and packed.numel() == (numel * bits + 7) // 8
    assert torch.equal(F.unpack_bits(packed, bits, numel, signed=signed), codes)


def test_wbc_matches_reference_stats():
    w = torch.randn(8, 4, 3, 3)
    ref = F.dorefa_weight(w, 32, "tanh")
    for bits in (1, 2, 4):
        q = F.weight_bias_correction(F.dorefa_weight(w, bits, "tanh"), ref)
        qf, rf = q.reshape(8, -1), ref.reshape(8, -1)
        assert torch.allclose(qf.mean(1), rf.mean(1), atol=1e-5)
        assert torch.allclose(qf.std(1, unbiased=False), rf.std(1, unbiased=False), atol=1e-4)
        gain, off = F.wbc_affine(F.dorefa_weight(w, bits, "tanh"), ref)
        direct = gain.view(-1, 1, 1, 1) * F.dorefa_weight(w, bits, "tanh") + off.view(-1, 1, 1, 1)
        assert torch.allclose(direct, q, atol=1e-5)


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_pact_without_grad_matches_the_training_path(bits):
    x = torch.linspace(-1, 4, 1001)
    alpha = torch.nn.Parameter(torch.tensor(2.3))
    trained = F.pact_act(x.clone().requires_grad_(), alpha, bits).detach()
    with torch.no_grad():
        assert torch.equal(F.pact_act(x, alpha, bits), trained)


@pytest.mark.parametrize("shape", [(16, 8, 3, 3), (10, 64)])
@pytest.mark.parametrize("bits", [1, 2, 3, 8])
@pytest.mark.parametrize("per_channel", [True, False])
def test_fused_dorefa_wbc_matches_the_composition(shape, bits, per_channel):
    # the fused pass EMQ trains with against WBC applied to DoReFa by autograd
    torch.manual_seed(bits)
    w = (torch.randn(shape) * 0.1).requires_grad_()
    g = torch.randn(shape)
    ref = F.weight_bias_correction(*F.dorefa_weight_and_reference(w, bits), per_channel)
    (g_ref,) = torch.autograd.grad(ref, w, g)
    out = F.dorefa_wbc_weight(w, bits, per_channel)
    (g_out,) = torch.autograd.grad(out, w, g)
    assert torch.allclose(out, ref, atol=1e-6)
    assert torch.allclose(g_out, g_ref, atol=1e-6 * float(g_ref.abs().max()))
    assert not torch.allclose(g_out, torch.zeros_like(g_out))


def _rectified_gaussian_mse(clip: float, levels: int, x, pdf) -> float:
    q = torch.minimum(x, torch.tensor(clip, dtype=x.dtype)).mul(levels / clip).round().mul(clip / levels)
    return float(torch.trapezoid((q - x) ** 2 * pdf, x))


@pytest.mark.parametrize("bits", [1, 2, 4, 8])
def test_width_clip_table_is_the_mse_optimal_clip(bits):
    """Re-derive a table entry: the clip minimising the quantization MSE of ReLU(N(0, 1))."""
    x = torch.linspace(0, 12, 240_001, dtype=torch.float64)
    pdf = torch.exp(-x * x / 2) / (2 * torch.pi) ** 0.5
    levels = (1 << bits) - 1
    grid = torch.arange(0.5, 6.0, 0.01).tolist()
    best = min(grid, key=lambda a: _rectified_gaussian_mse(a, levels, x, pdf))
    assert abs(best - F._RECTIFIED_GAUSSIAN_CLIP[bits]) <= 0.015
    table = _rectified_gaussian_mse(F._RECTIFIED_GAUSSIAN_CLIP[bits], levels, x, pdf)
    assert table <= _rectified_gaussian_mse(best, levels, x, pdf) * 1.001


def test_width_clip_ratio_is_monotone_from_two_bits_and_one_at_one_and_eight_bits():
    assert F.width_clip_ratio(1) == 1.0  # a threshold, not a grid
    ratios = [F.width_clip_ratio(b) for b in range(2, 9)]
    assert all(a < b for a, b in zip(ratios, ratios[1:]))
    assert ratios[-1] == 1.0 and F.width_clip_ratio(16) == 1.0 and F.width_clip_ratio(32) == 1.0
    assert 0.46 < F.width_clip_ratio(2) < 0.47
    with pytest.raises(ValueError):
        F.width_clip_ratio(0)


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_signed_act_is_a_symmetric_grid_with_zero(bits):
    x = torch.linspace(-3, 3, 2001)
    clip = torch.tensor(1.5)
    q = F.signed_act(x, clip, bits)
    n = 2 ** (bits - 1) - 1
    codes = q / clip * n
    assert torch.allclose(codes, codes.round(), atol=1e-4)
    assert set(codes.round().unique().tolist()) == set(range(-n, n + 1))  # zero is a code
    assert q.min() == -clip and q.max() == clip  # negatives kept, not clipped at 0
    assert torch.equal(F.signed_act(x, clip, 32), x)


def test_signed_act_gradients():
    x = torch.tensor([-2.0, -0.4, 0.3, 2.0], requires_grad=True)
    clip = torch.tensor(1.0, requires_grad=True)
    F.signed_act(x, clip, 4).sum().backward()
    assert x.grad.tolist() == [0.0, 1.0, 1.0, 0.0]  # straight through inside the clip
    # +-1 outside (they cancel here) plus the rounding residuals of -0.4 and 0.3 (7 steps a side)
    resid = (round(-0.4 * 7) / 7 + 0.4) + (round(0.3 * 7) / 7 - 0.3)
    assert clip.grad.item() == pytest.approx(resid, abs=1e-6)


def test_learned_clip_masks_at_the_boundaries():
    # an input exactly at 0 or at the clip is outside: no d/dx; at or above the clip d/d(alpha) is 1
    x = torch.tensor([-1.0, 0.0, 0.5, 2.0, 3.0], requires_grad=True)
    alpha = torch.tensor(2.0, requires_grad=True)
    F.pact_act(x, alpha, 2).sum().backward()
    assert x.grad.tolist() == [0.0, 0.0, 1.0, 0.0, 0.0]
    assert alpha.grad.item() == pytest.approx(2 + (1 - 0.75) / 3)  # 0.5 -> u = 0.75 of 3 steps
    x = torch.tensor([-1.0, -0.5, 1.0], requires_grad=True)
    clip = torch.tensor(1.0, requires_grad=True)
    F.signed_act(x, clip, 2).sum().backward()  # 1 step a side: -0.5 rounds to 0 (ties to even)
    assert x.grad.tolist() == [0.0, 1.0, 0.0]
    assert clip.grad.item() == pytest.approx(-1 + (round(-0.5) + 0.5) + 1)
    xb = torch.linspace(-1, 3, 40, dtype=torch.bfloat16, requires_grad=True)  # masks follow x's dtype
    F.pact_act(xb, alpha, 4).sum().backward()
    assert xb.grad.dtype == torch.bfloat16 and set(xb.grad.float().tolist()) == {0.0, 1.0}


def test_signed_act_one_bit_is_the_sign_grid():
    x = torch.tensor([-2.0, -0.1, 0.1, 3.0])
    assert F.signed_act(x, torch.tensor(0.5), 1).tolist() == [-0.5, -0.5, 0.5, 0.5]
