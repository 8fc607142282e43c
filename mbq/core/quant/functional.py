"""Pure quantization math: tensors in, tensors out, no modules and no state.

Bit-width conventions used everywhere in mbq: 1..8 and 16 are quantized
widths, 32 (``FP_BITS``) is the full-precision path.
"""
from __future__ import annotations

import torch

FP_BITS = 32
VALID_BITS = (1, 2, 3, 4, 5, 6, 7, 8, 16, 32)


def is_fp(bits: int) -> bool:
    return bits >= FP_BITS


# --- straight-through helpers -------------------------------------------------

def round_ste(x: torch.Tensor) -> torch.Tensor:
    """round() in the forward pass, identity gradient."""
    return x + (torch.round(x) - x).detach()


def sign_ste(x: torch.Tensor) -> torch.Tensor:
    """sign() with sign(0) = +1 in the forward pass, identity gradient."""
    s = torch.where(x >= 0, torch.ones_like(x), -torch.ones_like(x))
    return x + (s - x).detach()


def _levels(bits: int) -> int:
    return (1 << bits) - 1


# --- DoReFa / Any-Precision ----------------------------------------------------

def dorefa_weight(w: torch.Tensor, bits: int, fp_path: str = "tanh") -> torch.Tensor:
    """Any-Precision DNN weights at ``bits``.

    E = mean|w| (detached) scales every width so all children share a range.
    max|tanh(w)| is detached too: otherwise the one largest weight receives
    the summed gradient of the whole layer and training stalls (measured:
    w8a32 cnn on MNIST 65% -> 94% after 2 short epochs).
    32 bits is the FP path: E*tanh(w)/max|tanh(w)| (``fp_path="tanh"``) or
    the raw weight (``fp_path="identity"``).
    """
    if is_fp(bits):
        if fp_path == "identity":
            return w
        e = w.abs().mean().detach()
        t = torch.tanh(w)
        return e * t / t.abs().max().detach()
    e = w.abs().mean().detach()
    if bits == 1:
        return e * sign_ste(w)
    t = torch.tanh(w)
    u = t / (2 * t.abs().max().detach()) + 0.5
    n = _levels(bits)
    q = round_ste(u * n) / n
    return e * (2 * q - 1)


def dorefa_weight_and_reference(w: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(``dorefa_weight(w, bits)``, ``dorefa_weight(w, 32, "tanh")``) sharing one tanh, max
    and mean: what WBC needs at every forward of a quantized width."""
    e = w.abs().mean().detach()
    t = torch.tanh(w)
    m = t.abs().max().detach()
    ref = t * (e / m)
    if bits == 1:
        return e * sign_ste(w), ref
    n = _levels(bits)
    q = round_ste((t / (2 * m) + 0.5) * n) / n
    return e * (2 * q - 1), ref


def _mask(compare, x: torch.Tensor, other) -> torch.Tensor:
    """``compare(x, other)`` as 0/1 in x's dtype. Masks here are floats, not bools: on CPU
    a compare written to a float tensor runs ~4x faster than one written to bool, and a
    multiply by a float mask ~10x faster than ``masked_fill`` with a bool one (torch 2.14,
    AVX-512; a 26 x 16 x 28 x 28 activation: 14 against 60 us, 21 against 249 us)."""
    return compare(x, other, out=torch.empty_like(x))


class _ClampQuant(torch.autograd.Function):
    """q_b(clamp(x, 0, 1)) with the clamp's gradient mask.

    Written as clamp + in-place mul/round/div: on CPU this is several times
    faster than torch's fused fake-quant kernel, whose mask also leaks half
    a step past [0, 1]. The mask is "clamp left x unchanged": one compare.
    """

    @staticmethod
    def forward(ctx, x, levels):
        c = x.clamp(0, 1)
        ctx.save_for_backward(_mask(torch.eq, c, x))
        return c.mul_(levels).round_().div_(levels)

    @staticmethod
    def backward(ctx, grad):
        (inside,) = ctx.saved_tensors
        return grad * inside, None


def clamp_act(x: torch.Tensor, bits: int) -> torch.Tensor:
    """q_b(clamp(x, 0, 1)) with a straight-through gradient inside [0, 1]."""
    if is_fp(bits):
        return x
    levels = _levels(bits)
    if not (x.requires_grad and torch.is_grad_enabled()):  # eval/scoring: no mask to keep
        return x.clamp(0, 1).mul_(levels).round_().div_(levels)
    return _ClampQuant.apply(x, levels)


class _LearnedClipQuant(torch.autograd.Function):
    """Backward of a fake-quant with a learned clip: x's gradient passes inside the clip,
    the clip's is grad . resid (forward saves the 0/1 inside mask and the residual)."""

    @staticmethod
    def _save(ctx, inside, resid, clip):
        ctx.save_for_backward(inside, resid)
        ctx.clip_shape, ctx.clip_dtype = clip.shape, clip.dtype

    @staticmethod
    def backward(ctx, grad):
        inside, resid = ctx.saved_tensors
        gc = grad.reshape(-1).dot(resid.reshape(-1).to(grad.dtype))
        return grad * inside.to(grad.dtype), gc.reshape(ctx.clip_shape).to(ctx.clip_dtype), None


class _PACTQuant(_LearnedClipQuant):
    """PACT/SAT fake-quant in one pass, its gradients from a saved mask and residual.

    Autograd through relu/minimum/round_ste keeps five activation-sized tensors
    and runs a dozen kernels; this keeps two and runs the same maths.
    """

    @staticmethod
    def forward(ctx, x, alpha, levels):
        a = alpha.to(x.dtype)
        u = x.clamp(min=0).clamp_max_(a).mul_(levels / a)  # in [0, levels]
        q = u.round()
        # d/d(alpha): the rounding residual (q - u) / levels inside (0, alpha), which is 0
        # below it, and 1 above the clip
        above = _mask(torch.ge, x, a)
        inside = _mask(torch.gt, x, 0).sub_(above)
        resid = torch.sub(q, u).div_(levels).mul_(inside).add_(above)
        _LearnedClipQuant._save(ctx, inside, resid, alpha)
        return q.mul_(a / levels)


def pact_act(x: torch.Tensor, alpha: torch.Tensor, bits: int) -> torch.Tensor:
    """PACT/SAT: clip to [0, alpha] with a learned alpha, then quantize.

    d/d(alpha) is 1 above the clip plus the rounding residual (as in SAT/LSQ).
    """
    if is_fp(bits):
        return x
    levels = _levels(bits)
    if not (torch.is_grad_enabled() and (x.requires_grad or alpha.requires_grad)):
        # eval/scoring: the same values without the masks and residual kept for backward
        a = alpha.to(x.dtype)
        return torch.minimum(x.clamp(min=0), a).mul_(levels / a).round_().mul_(a / levels)
    return _PACTQuant.apply(x, alpha, levels)



def signed_levels(bits: int) -> int:
    """Steps on each side of zero of a symmetric ``bits``-bit grid: 2^(b-1) - 1 (narrow
    range, so zero is a code); 1 bit is the sign grid {-clip, +clip}."""
    return max((1 << (bits - 1)) - 1, 1)


def signed_clip(x: torch.Tensor, clip: torch.Tensor | float) -> torch.Tensor:
    """x clipped to [-clip, clip] (a learned clip gets the clip's gradient)."""
    if not isinstance(clip, torch.Tensor):
        return x.clamp(-clip, clip)
    c = clip.to(x.dtype)
    return torch.maximum(torch.minimum(x, c), -c)


def _signed_codes(x: torch.Tensor, a: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(x clipped to [-a, a] in steps, in [-n, n]; its codes on the symmetric grid)."""
    t = signed_clip(x, a).mul_(signed_levels(bits) / a)
    return t, (torch.where(t >= 0, 1.0, -1.0).to(t.dtype) if bits == 1 else t.round())


class _SignedQuant(_LearnedClipQuant):
    """``signed_act`` in one pass, its gradients from two saved masks and a residual (as
    _PACTQuant: autograd through clamp / round_ste keeps several activation-sized tensors)."""

    @staticmethod
    def forward(ctx, x, clip, bits):
        a, n = clip.to(x.dtype), signed_levels(bits)
        t, q = _signed_codes(x, a, bits)
        above, below = _mask(torch.ge, x, a), _mask(torch.le, x, -a)
        inside = above.add(below).neg_().add_(1)
        # d/d(clip): +1 above, -1 below, the rounding residual (q - t) / n inside
        resid = q.sub(t).div_(n).mul_(inside).add_(above).sub_(below)
        _LearnedClipQuant._save(ctx, inside, resid, clip)
        return q.mul_(a / n)


def signed_act(x: torch.Tensor, clip: torch.Tensor | float, bits: int) -> torch.Tensor:
    """An input that can be negative (a linear bottleneck, a residual sum, LayerNorm):
    clip to [-clip, clip] and round to the symmetric grid. The unsigned quantizers clip
    it at 0 instead, which drops half of it. d/d(clip) is +-1 outside the clip plus the
    rounding residual (as ``pact_act``); d/dx is 1 inside."""
    if is_fp(bits):
        return x
    if not isinstance(clip, torch.Tensor):
        clip = torch.tensor(float(clip), device=x.device)
    if torch.is_grad_enabled() and (x.requires_grad or clip.requires_grad):
        return _SignedQuant.apply(x, clip, bits)
    a = clip.to(x.dtype)
    return _signed_codes(x, a, bits)[1].mul_(a / signed_levels(bits))

# Clip of the MSE-optimal uniform quantizer of a rectified unit Gaussian with 2^b - 1 steps
# on [0, clip] (golden-section search on the exact integral; tests re-derive it). Coarse widths
# want a much tighter clip: 1.95 at 2 bits against 4.21 at 8.
_RECTIFIED_GAUSSIAN_CLIP = {1: 1.2240, 2: 1.9523, 3: 2.4739, 4: 2.8987,
                            5: 3.2701, 6: 3.6075, 7: 3.9205, 8: 4.2147}


def width_clip_ratio(bits: int) -> float:
    """The clip at ``bits`` relative to the clip at 8 bits, for one learned clip shared by
    every width: 0.46 at 2 bits, 1 at 8 bits, above 8 bits and at FP.

    1 bit keeps the full clip: its one level is a firing threshold at clip / 2, not a grid
    whose error MSE measures, and the MSE clip (0.29) cost it 5 points against the shared
    clip (resnet20, {1, FP}, 2 epochs on 10k MNIST: 81.70 against 86.66; docs/benchmarks.md).
    """
    if bits < 1:
        raise ValueError(f"bits must be >= 1 (got {bits})")
    if is_fp(bits) or bits >= 8 or bits == 1:
        return 1.0
    return _RECTIFIED_GAUSSIAN_CLIP[bits] / _RECTIFIED_GAUSSIAN_CLIP[8]


# --- LSQ ---------------------------------------------------------------------

def _grad_scale(x: torch.Tensor, scale: float) -> torch.Tensor:
    return (x - x * scale).detach() + x * scale


def lsq_quantize(x: torch.Tensor, step: torch.Tensor, qmin: int, qmax: int,
                 grad_scale: float = 1.0) -> torch.Tensor:
    """LSQ (Esser et al.): x_q = round(clamp(x/s, qmin, qmax)) * s, learned s."""
    s = _grad_scale(step, grad_scale)
    return round_ste(torch.clamp(x / s, qmin, qmax)) * s


def lsq_range(bits: int, signed: bool) -> tuple[int, int]:
    if signed:
        return -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    return 0, _levels(bits)


def lsq_init_step(x: torch.Tensor, bits: int, signed: bool) -> torch.Tensor:
    _, qmax = lsq_range(bits, signed)
    return 2 * x.detach().abs().mean() / max(qmax, 1) ** 0.5


# --- RoundClamp (MSQ) ----------------------------------------------------------

def roundclamp_scale(w: torch.Tensor, per_channel: bool = False) -> torch.Tensor:
    """The grid's range s (detached): max|w| over the layer, or over each output channel
    (shape [C, 1, ...], broadcasting against ``w``). It does not depend on the width, so the
    (n-k)-bit grid stays the n-bit codes with k zero LSBs either way."""
    a = w.detach().abs()
    if not per_channel or a.dim() < 2:
        return a.max()
    return a.amax(dim=tuple(range(1, a.dim())), keepdim=True)


def roundclamp_step(scale: torch.Tensor, bits: int) -> torch.Tensor:
    """Step of the n-bit two's-complement grid: s / 2^(n-1)."""
    return scale / (1 << (bits - 1))


def roundclamp_codes(w: torch.Tensor, bits: int, scale: torch.Tensor) -> torch.Tensor:
    """Integer codes z_n in [-2^(n-1), 2^(n-1)-1] (float dtype, no gradient)."""
    step = roundclamp_step(scale, bits)
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    return torch.clamp(torch.round(w.detach() / step), lo, hi)


def roundclamp_weight(w: torch.Tensor, bits: int, scale: torch.Tensor | None = None) -> torch.Tensor:
    """w_n = Δ_n · clamp(round(w/Δ_n)) with STE; 32 bits returns w."""
    if is_fp(bits):
        return w
    if scale is None:
        scale = roundclamp_scale(w)
    step = roundclamp_step(scale, bits)
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    return torch.clamp(round_ste(w / step), lo, hi) * step


def lsb_residual(w: torch.Tensor, bits: int, k: int, scale: torch.Tensor) -> torch.Tensor:
    """L_k = z_n - 2^k z_(n-k): zero exactly where the n-bit code is an (n-k)-bit code."""
    if not 0 < k < bits:
        raise ValueError(f"k must be in 1..{bits - 1}, got {k}")
    return roundclamp_codes(w, bits, scale) - (1 << k) * roundclamp_codes(w, bits - k, scale)


class _LSBAbsSum(torch.autograd.Function):
    """Σ|L_k| with gradient sign(L_k) (the coarse term carries none)."""

    @staticmethod
    def forward(ctx, w, bits, k, scale):
        res = lsb_residual(w, bits, k, scale)
        ctx.save_for_backward(torch.sign(res))
        return res.abs().sum()

    @staticmethod
    def backward(ctx, grad):
        (sign,) = ctx.saved_tensors
        return grad * sign, None, None, None


def lsb_penalty(w: torch.Tensor, bits: int, k: int, scale: torch.Tensor | None = None) -> torch.Tensor:
    """Σ_i |L_k,i| for one layer; divide the sum over layers by N_total for R."""
    if scale is None:
        scale = roundclamp_scale(w)
    return _LSBAbsSum.apply(w, bits, k, scale)


# --- weight bias correction (EMQ) ---------------------------------------------

def weight_bias_correction(w_q: torch.Tensor, w_ref: torch.Tensor, per_channel: bool = True,
                           detach: bool = False, eps: float = 1e-8) -> torch.Tensor:
    """Match the mean/std of ``w_q`` to those of ``w_ref`` (per output channel)."""
    shape = w_q.shape
    q = w_q.reshape(shape[0], -1) if per_channel else w_q.reshape(1, -1)
    r = w_ref.reshape(shape[0], -1) if per_channel else w_ref.reshape(1, -1)
    sd_r, mu_r = torch.std_mean(r, 1, correction=0, keepdim=True)
    if not detach:
        # (q - mean) / std per row is layer_norm without affine: one fused kernel forward and
        # backward (eps enters under the square root, so eps**2 there matches std + eps)
        return (torch.nn.functional.layer_norm(q, q.shape[1:], eps=eps * eps) * sd_r + mu_r).reshape(shape)
    sd_q, mu_q = torch.std_mean(q.detach(), 1, correction=0, keepdim=True)
    return ((sd_r.detach() / (sd_q + eps)) * (q - mu_q) + mu_r.detach()).reshape(shape)


def wbc_affine(w_q: torch.Tensor, w_ref: torch.Tensor, per_channel: bool = True,
               eps: float = 1e-8) -> tuple[torch.Tensor, torch.Tensor]:
    """(gain, offset) per output channel such that WBC(w_q) = gain * w_q + offset."""
    shape = w_q.shape
    q = w_q.reshape(shape[0], -1) if per_channel else w_q.reshape(1, -1)
    r = w_ref.reshape(shape[0], -1) if per_channel else w_ref.reshape(1, -1)
    gain = r.std(1, unbiased=False) / (q.std(1, unbiased=False) + eps)
    offset = r.mean(1) - gain * q.mean(1)
    if not per_channel:
        gain, offset = gain.expand(shape[0]), offset.expand(shape[0])
    return gain, offset


class _DoReFaWBC(torch.autograd.Function):
    """``weight_bias_correction(*dorefa_weight_and_reference(w, bits))`` in one pass.

    EMQ runs this for every layer at every width of every step, and autograd through the
    composition (tanh, rounding, layer_norm, std_mean) runs about twice as many kernels
    as the closed form below; on small batches kernel count is what a step costs. Same
    maths: straight-through rounding (and sign at 1 bit), ``e = mean|w|`` and
    ``m = max|tanh w|`` constants, the reference's mean/std carrying gradient
    (``wbc_detach`` uses the composition). Normalising the integer codes k is
    normalising q = e(2k/n - 1): the affine map cancels.
    """

    @staticmethod
    def forward(ctx, w, bits, per_channel, eps):
        rows = w.shape[0] if per_channel else 1
        a = w.abs()
        e = a.mean()
        m = a.max().tanh()  # max|tanh w| = tanh max|w|
        t = torch.tanh(w)
        if bits == 1:
            k, dk = (w >= 0).to(w.dtype), 0.5  # q = e(2k - 1)
        else:
            n = _levels(bits)
            k, dk = t.mul(n / (2 * m)).add_(n / 2).round_(), n / (2 * m)
        t2 = t.reshape(rows, -1)
        sd_t, mu_t = torch.std_mean(t2, 1, correction=0, keepdim=True)
        sd_r, mu_r = sd_t * (e / m), mu_t * (e / m)  # the reference is t * e / m
        khat, _, rstd = torch.native_layer_norm(k.reshape(rows, -1), t2.shape[1:], None, None, eps * eps)
        ctx.save_for_backward(t2, khat, sd_t, mu_t, sd_r * rstd.reshape(rows, 1) * dk, e / m)
        ctx.shape, ctx.needs_tanh = w.shape, bits != 1
        return torch.addcmul(mu_r, khat, sd_r).reshape(w.shape)

    @staticmethod
    def backward(ctx, grad):
        t, khat, sd_t, mu_t, gain, em = ctx.saved_tensors
        g = grad.reshape(khat.shape)
        k = khat.shape[1]
        g_mu = g.sum(1, keepdim=True).div_(k)           # dL/d(mean of the reference) / K
        g_sd = (g * khat).sum(1, keepdim=True).div_(k)  # dL/d(std of the reference) / K
        dtanh = torch.mul(t, t).neg_().add_(1)
        # through the normalised codes (layer_norm's backward) ...
        g_w = (g - g_mu).sub_(khat * g_sd).mul_(gain)
        # ... which reach w through tanh except at 1 bit (sign: straight through)
        if ctx.needs_tanh:
            g_w.mul_(dtanh)
        # through the reference's mean and std: d(ref)/dw = (e / m)(1 - tanh^2)
        rhat = (t - mu_t).div_(sd_t.clamp_min(torch.finfo(t.dtype).tiny))
        g_w.add_(rhat.mul_(g_sd).add_(g_mu).mul_(dtanh).mul_(em))
        return g_w.reshape(ctx.shape), None, None, None


def dorefa_wbc_weight(w: torch.Tensor, bits: int, per_channel: bool = True, eps: float = 1e-8) -> torch.Tensor:
    """DoReFa weights at ``bits`` (tanh FP path), bias-corrected to that path (EMQ)."""
    return _DoReFaWBC.apply(w, bits, per_channel, eps)


# --- bit packing ------------------------------------------------------------------

def pack_bits(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack integer codes (two's complement if negative) into a flat uint8 tensor.

    Codes are stored LSB-first as one continuous bit stream; the logical
    shape must be recorded by the caller.
    """
    if not 1 <= bits <= 8:
        raise ValueError(f"pack_bits supports 1..8 bits, got {bits}")
    flat = codes.reshape(-1).to(torch.int64) & _levels(bits)
    shifts = torch.arange(bits, dtype=torch.int64, device=flat.device)
    stream = ((flat[:, None] >> shifts) & 1).reshape(-1)
    pad = (-stream.numel()) % 8
    if pad:
        stream = torch.cat([stream, stream.new_zeros(pad)])
    weights = 1 << torch.arange(8, dtype=torch.int64, device=flat.device)
    return (stream.reshape(-1, 8) * weights).sum(1).to(torch.uint8)


def unpack_bits(packed: torch.Tensor, bits: int, numel: int, signed: bool = False) -> torch.Tensor:
    """Inverse of :func:`pack_bits`; returns int64 codes (sign-extended if ``signed``)."""
    if not 1 <= bits <= 8:
        raise ValueError(f"unpack_bits supports 1..8 bits, got {bits}")
    shifts = torch.arange(8, dtype=torch.int64, device=packed.device)
    stream = ((packed.to(torch.int64)[:, None] >> shifts) & 1).reshape(-1)[: numel * bits]
    weights = 1 << torch.arange(bits, dtype=torch.int64, device=packed.device)
    codes = (stream.reshape(numel, bits) * weights).sum(1)
    if signed:
        codes = torch.where(codes >= (1 << (bits - 1)), codes - (1 << bits), codes)
    return codes
