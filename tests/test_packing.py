"""Bit packing and integer codes: round trips at every width, the numpy reader, and each
quantizer family's codes reproducing its fake-quantized weight."""
import numpy as np
import pytest
import torch

from mbq.core.export.codes import act_codes, act_codes_params, weight_codes
from mbq.core.quant import QConv2d, QLinear
from mbq.core.quant.functional import lsq_range, pack_bits, unpack_bits

SIZES = [1, 3, 7, 13, 1001]


def numpy_unpack(buf: np.ndarray, bits: int, numel: int, signed: bool) -> np.ndarray:
    """The plain-numpy reader of docs/export.md (LSB-first bit stream, two's complement)."""
    stream = np.unpackbits(buf, bitorder="little")[: numel * bits].reshape(numel, bits)
    q = (stream.astype(np.int64) << np.arange(bits)).sum(1)
    return np.where(q >= 1 << (bits - 1), q - (1 << bits), q) if signed else q


def _codes(bits: int, n: int, signed: bool, gen: torch.Generator) -> torch.Tensor:
    lo, hi = lsq_range(bits, True) if signed else (0, (1 << bits) - 1)
    q = torch.randint(lo, hi + 1, (n,), generator=gen)
    q[0], q[-1] = lo, hi  # the extremes are where sign extension and masking go wrong
    return q


@pytest.mark.parametrize("bits", range(1, 9))
@pytest.mark.parametrize("signed", [False, True])
def test_pack_round_trip_every_width_odd_sizes(bits, signed):
    if signed and bits == 1:
        pytest.skip("a 1-bit two's-complement code is only the sign; mbq's 1-bit weights are unsigned")
    gen = torch.Generator().manual_seed(bits)
    for n in SIZES:
        q = _codes(bits, n, signed, gen)
        packed = pack_bits(q, bits)
        assert packed.dtype == torch.uint8 and packed.numel() == (n * bits + 7) // 8
        assert torch.equal(unpack_bits(packed, bits, n, signed=signed), q)
        assert np.array_equal(numpy_unpack(packed.numpy(), bits, n, signed), q.numpy())


def test_onnx_int4_layout_is_pack_bits_order():
    onnx = pytest.importorskip("onnx")
    from onnx import numpy_helper

    q = torch.tensor([[-8, 7, 0], [3, -1, 5], [1, 2, -3]])
    t = onnx.helper.make_tensor("q", onnx.TensorProto.INT4, [3, 3],
                                pack_bits(q.reshape(-1), 4).numpy().tobytes(), raw=True)
    assert np.array_equal(numpy_helper.to_array(t).astype(np.int64), q.numpy())


def _layer(kind: str, weight: str, w_bits: int, act: str = "clamp", **q):
    torch.manual_seed(w_bits)
    kw = dict(weight_quant=weight, act_quant=act, w_bits=w_bits, a_bits=w_bits, **q)
    m = QConv2d(6, 5, 3, qkwargs=kw) if kind == "conv" else QLinear(17, 9, qkwargs=kw)
    with torch.no_grad():
        m.weight.mul_(3).add_(0.05)  # off-centre, so WBC's offsets are not trivially zero
    return m.eval()


CASES = ([("dorefa", b, {}) for b in range(1, 9)]
         + [("roundclamp", b, {}) for b in range(2, 9)]
         + [("lsq", b, {}) for b in (2, 3, 4, 8)]
         + [("dorefa", b, {"wbc": True, "fp_path": "tanh"}) for b in (1, 2, 4, 8)]
         + [("dorefa", 3, {"wbc": True, "fp_path": "tanh", "wbc_per_channel": False}),
            ("roundclamp", 4, {"wbc": True})]
         + [("roundclamp", b, {"w_scale": "channel"}) for b in (2, 3, 4, 8)]
         + [("roundclamp", 4, {"w_scale": "channel", "wbc": True})])


@pytest.mark.parametrize("kind", ["conv", "linear"])
@pytest.mark.parametrize("weight,bits,extra", CASES)
def test_codes_reproduce_the_fake_quantized_weight(kind, weight, bits, extra):
    m = _layer(kind, weight, bits, **extra)
    with torch.no_grad():
        target = m.quantized_weight().double()
    wc = weight_codes("layer", m)
    assert wc.codes.dtype == torch.int64 and wc.bits == bits
    lo, hi = lsq_range(bits, True) if wc.signed else (0, (1 << bits) - 1)
    assert lo <= int(wc.codes.min()) and int(wc.codes.max()) <= hi
    assert len(torch.unique(wc.codes)) > 1
    assert torch.allclose(wc.dequantize(), target, rtol=0, atol=1e-6 * float(target.abs().max()))
    per_channel = (extra.get("wbc") and extra.get("wbc_per_channel", True)) or extra.get("w_scale") == "channel"
    assert (wc.scale.numel() > 1) == bool(per_channel)


def test_float_width_has_no_codes():
    assert weight_codes("layer", _layer("conv", "dorefa", 32)) is None


def test_activation_codes_match_the_fake_quant_activation():
    x = torch.randn(4, 6, 8, 8) * 0.7 + 0.4
    for act, bits in [("clamp", 2), ("clamp", 4), ("pact", 3), ("pact_width", 2), ("pact_width", 5), ("lsq", 4)]:
        m = _layer("conv", "dorefa", bits, act=act)
        fq = m.quantized_input(x)  # also initialises an LSQ step from data, as eval would
        a = act_codes_params("layer", m)
        q = act_codes(x, a.scale, a.lo, a.hi)
        assert q.min() >= a.lo and q.max() <= a.hi and len(torch.unique(q)) > 2
        assert torch.allclose(q * a.scale, fq, atol=1e-6)


def test_float_inputs_pass_or_are_clipped():
    assert act_codes_params("layer", _layer("conv", "dorefa", 32, act="clamp")) is None
    clip = act_codes_params("layer", _layer("conv", "dorefa", 32, act="clamp_fp"))
    assert clip.bits == 32 and (clip.lo * clip.scale, clip.hi * clip.scale) == (0.0, 1.0)


def test_uninitialised_lsq_activation_is_refused():
    from mbq.core.errors import MbqError

    with pytest.raises(MbqError, match="never initialised"):
        act_codes_params("conv9", _layer("conv", "lsq", 4, act="lsq"))

