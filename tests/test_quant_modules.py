import pytest
import torch
from torch import nn

from mbq.core.checkpoint import read_checkpoint, save_checkpoint
from mbq.core.config import QuantConfig
from mbq.core.models import create_model
from mbq.core.quant import (QConv2d, QLinear, SwitchableBatchNorm2d, compression_ratio, get_bit_scheme,
                            quantize_model, quantized_layers, set_bit_scheme, set_bits)


def _pair(arch, **qkw):
    torch.manual_seed(0)
    f = create_model(arch, num_classes=10, in_channels=1, image_size=28).eval()
    q = create_model(arch, num_classes=10, in_channels=1, image_size=28)
    q.load_state_dict(f.state_dict())
    quantize_model(q, QuantConfig(**qkw))
    return f, q.eval()


@pytest.mark.parametrize("arch", ["cnn", "resnet20", "mobilenet_v2", "vit_tiny"])
@pytest.mark.parametrize("weight,act", [("dorefa", "clamp"), ("roundclamp", "clamp"), ("lsq", "lsq"),
                                        ("dorefa", "pact")])
def test_fp_reproduces_float_model_exactly(arch, weight, act):
    kw = {"depth": 1} if arch == "vit_tiny" else {}
    torch.manual_seed(0)
    f = create_model(arch, num_classes=10, in_channels=1, image_size=28, **kw).eval()
    q = create_model(arch, num_classes=10, in_channels=1, image_size=28, **kw)
    q.load_state_dict(f.state_dict())
    quantize_model(q, QuantConfig(weight=weight, act=act, w_bits=32, a_bits=32, first_last_bits=8))
    set_bits(q.eval(), 32, 32)
    for _, m in quantized_layers(q):
        m.set_precision(32, 32)
    x = torch.randn(3, 1, 28, 28)
    assert torch.equal(f(x), q(x))


def test_quantize_swaps_layers_and_pins_first_last():
    _, q = _pair("resnet20", w_bits=4, a_bits=4, first_last_bits=8)
    layers = dict(quantized_layers(q))
    names = list(layers)
    assert layers[names[0]].pinned and layers[names[-1]].pinned
    assert isinstance(layers[names[0]], QConv2d) and isinstance(layers[names[-1]], QLinear)
    assert layers[names[0]].bits == (8, 8)
    assert all(m.bits == (4, 4) for m in list(layers.values())[1:-1])
    set_bits(q, 2, 3)
    assert layers[names[0]].bits == (8, 8) and layers[names[1]].bits == (2, 3)


def test_first_last_fp_stay_float_layers():
    _, q = _pair("cnn", w_bits=4, a_bits=4, first_last_bits=32)
    assert type(q.get_submodule(next(n for n, m in q.named_modules() if isinstance(m, nn.Conv2d)))) is nn.Conv2d
    assert all(not m.pinned for _, m in quantized_layers(q))


def test_a_model_built_for_training_redraws_a_zero_weight_it_quantizes():
    # torchvision's ViT starts its head at zero: quantized as is, DoReFa's 0/0 gave NaN at step 0
    from mbq.cli.train import resolve_config
    from mbq.core.methods import create_method
    from mbq.core.quant import redraw_zero_weight

    cfg = resolve_config(["--method", "qat", "--arch", "vit_tiny", "--bits", "4", "--first-last-bits", "8"])
    cfg.model.in_channels, cfg.model.image_size, cfg.model.num_classes = 1, 28, 10
    cfg.model.kwargs["depth"] = 1
    model = create_method(cfg).build_model()
    assert isinstance(model.heads.head, QLinear) and model.heads.head.weight.abs().sum() > 0
    out = model(torch.randn(2, 1, 28, 28))
    assert torch.isfinite(out).all() and out.abs().sum() > 0
    layer = nn.Linear(8, 4)
    kept = layer.weight.detach().clone()
    assert redraw_zero_weight(layer) is False and torch.equal(layer.weight, kept)  # a drawn weight stays
    assert redraw_zero_weight(nn.ReLU()) is False
    nn.init.zeros_(layer.weight)
    assert redraw_zero_weight(layer) is True and layer.weight.abs().sum() > 0


def test_quantized_forward_differs_and_backprops():
    f, q = _pair("resnet20", w_bits=2, a_bits=2)
    x = torch.randn(4, 1, 28, 28)
    assert not torch.allclose(f(x), q(x))
    q.train()
    q(x).sum().backward()
    assert all(p.grad is not None for n, p in q.named_parameters() if "weight" in n and p.dim() > 1)


def test_bits_survive_state_dict_and_safetensors(tmp_path):
    _, q = _pair("resnet20", w_bits=4, a_bits=4)
    scheme = get_bit_scheme(q)
    first = next(iter(scheme))
    scheme[first] = {"w": 3, "a": 5}
    set_bit_scheme(q, scheme)
    _, q2 = _pair("resnet20", w_bits=8, a_bits=8)
    q2.load_state_dict(q.state_dict())
    assert get_bit_scheme(q2) == scheme
    assert q2.get_submodule(first).bits == (3, 5)  # the Python mirror refreshed on load
    path = tmp_path / "m.safetensors"
    save_checkpoint(q, path, {"mbq.method": "qat", "mbq.arch": "resnet20", "mbq.num_classes": "10",
                              "mbq.in_channels": "1", "mbq.image_size": "28"})
    tensors, meta = read_checkpoint(path)
    assert meta["mbq.bit_scheme"] == scheme
    _, q3 = _pair("resnet20", w_bits=8, a_bits=8)
    q3.load_state_dict(tensors)
    assert get_bit_scheme(q3) == scheme
    x = torch.randn(2, 1, 28, 28)
    assert torch.equal(q.eval()(x), q3.eval()(x))


def test_set_bit_scheme_unknown_layer():
    _, q = _pair("cnn", w_bits=4, a_bits=4)
    with pytest.raises(KeyError):
        set_bit_scheme(q, {"nope": {"w": 2, "a": 2}})


def test_switchable_bn():
    _, q = _pair("resnet20", w_bits=4, a_bits=4, switchable_bn=[2, 4, 8])
    sbns = [m for m in q.modules() if isinstance(m, SwitchableBatchNorm2d)]
    assert sbns and all(m.widths == [2, 4, 8] for m in sbns)
    set_bits(q, 2, 2)
    assert all(m._active == 2 for m in sbns)
    q.train()
    q(torch.randn(8, 1, 28, 28))
    assert not torch.equal(sbns[0].bns["2"].running_mean, sbns[0].bns["4"].running_mean)
    with pytest.raises(KeyError):
        set_bits(q, 3, 3)
    sbns[0].add_width(3)
    assert sbns[0].has_width(3)


def test_compression_ratio():
    _, q = _pair("resnet20", w_bits=4, a_bits=4, first_last_bits=32)
    c = compression_ratio(q)
    assert 4 < c < 8  # float stem/head pull it below 32/4
    set_bits(q, 32, 32)
    assert compression_ratio(q) == pytest.approx(1.0)
    _, q8 = _pair("resnet20", w_bits=4, a_bits=4, first_last_bits=4)
    assert compression_ratio(q8) == pytest.approx(8.0)


def _width_stats_bn_trained():
    """A WidthStatsBatchNorm2d that saw widths 2, 4 and 8, each with its own input statistics."""
    from mbq.core.quant import WidthStatsBatchNorm2d

    torch.manual_seed(0)
    bn = WidthStatsBatchNorm2d(3, momentum=None).train()
    for b, (shift, scale) in {2: (1.0, 0.5), 4: (2.0, 1.0), 8: (3.0, 1.5)}.items():
        bn.set_active(b)
        bn.reset_running_stats()  # momentum None: a plain average over this width's batches
        for _ in range(5):
            bn(torch.randn(64, 3, 4, 4) * scale + shift)
    return bn.eval()


def test_width_stats_bn_keeps_statistics_per_trained_width():
    bn = _width_stats_bn_trained()
    assert bn.tracked_widths == [2, 4, 8]
    means = {b: bn.width_statistics(b)[0].mean().item() for b in (2, 4, 8)}
    assert means[2] == pytest.approx(1.0, abs=0.05) and means[8] == pytest.approx(3.0, abs=0.05)
    x = torch.randn(10, 3, 4, 4)
    for b in (2, 4, 8):  # eval normalises with that width's own statistics; running_* mirror them
        bn.set_active(b)
        m, v = bn.width_statistics(b)
        assert torch.equal(bn.running_mean, m) and torch.equal(bn.running_var, v)
        want = torch.nn.functional.batch_norm(x, m, v, bn.weight, bn.bias, False, 0.0, bn.eps)
        assert torch.allclose(bn(x), want)


def test_width_stats_bn_interpolates_untrained_widths_in_the_squared_step():
    bn = _width_stats_bn_trained()
    m2, m4, m8 = (bn.width_statistics(b)[0] for b in (2, 4, 8))
    step = lambda b: (2 ** b - 1) ** -2.0  # noqa: E731
    t3 = (step(2) - step(3)) / (step(2) - step(4))
    assert 0.5 < t3 < 1  # 3 bits sits nearer 4 bits than 2 in quantization noise
    assert torch.allclose(bn.width_statistics(3)[0], m2 + t3 * (m4 - m2), atol=1e-6)
    t6 = (step(4) - step(6)) / (step(4) - step(8))
    assert torch.allclose(bn.width_statistics(6)[0], m4 + t6 * (m8 - m4), atol=1e-6)
    assert torch.equal(bn.width_statistics(1)[0], m2)  # outside the trained range: nearest
    assert torch.equal(bn.width_statistics(32)[0], m8)


def test_width_stats_bn_recalibrates_one_width_and_round_trips(tmp_path):
    from safetensors.torch import load_file, save_file

    from mbq.core.evaluate import recalibrate_bn
    from mbq.core.quant import WidthStatsBatchNorm2d

    bn = _width_stats_bn_trained()
    before = {b: bn.width_statistics(b)[0].clone() for b in (2, 4, 8)}
    bn.set_active(3)
    model = nn.Sequential(bn)
    recalibrate_bn(model, [type("B", (), {"x": torch.randn(32, 3, 4, 4) + 7})() for _ in range(3)], 3)
    assert bn.tracked_widths == [2, 3, 4, 8]
    assert bn.width_statistics(3)[0].mean().item() == pytest.approx(7.0, abs=0.1)
    assert all(torch.equal(bn.width_statistics(b)[0], before[b]) for b in (2, 4, 8))
    save_file(bn.state_dict(), tmp_path / "bn.safetensors")  # no shared tensors
    back = WidthStatsBatchNorm2d(3)
    back.load_state_dict(load_file(tmp_path / "bn.safetensors"))
    assert back._active == 3 and back.tracked_widths == [2, 3, 4, 8]


def test_quantize_model_width_stats_bn_follows_set_bits():
    from mbq.core.quant import WidthStatsBatchNorm2d

    _, q = _pair("resnet20", w_bits=8, a_bits=8, wbc=True, width_stats_bn=True)
    bns = [m for m in q.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns and all(isinstance(m, WidthStatsBatchNorm2d) for m in bns)
    q.train()
    for b in (8, 2):
        set_bits(q, b, b)
        q(torch.rand(16, 1, 28, 28))
    assert all(m.tracked_widths == [2, 8] and m._active == 2 for m in bns)
    assert not torch.equal(bns[-1].width_statistics(2)[0], bns[-1].width_statistics(8)[0])


def test_width_stats_bn_loads_a_plain_shared_bn_state_and_uses_its_estimate():
    """EMQ checkpoints written before per-width statistics (one shared estimate) still load."""
    from mbq.core.quant import WidthStatsBatchNorm2d

    plain = nn.BatchNorm2d(3).train()
    plain(torch.randn(32, 3, 4, 4) * 2 + 1)
    bn = WidthStatsBatchNorm2d(3)
    bn.load_state_dict(plain.state_dict())  # strict: the missing rows are not an error
    bn.eval().set_active(2)
    assert bn.tracked_widths == []
    x = torch.randn(5, 3, 4, 4)
    assert torch.allclose(bn(x), plain.eval()(x))


def test_inference_layout_is_channels_last_inside_and_restores_the_model():
    from mbq.core._layout import inference_layout
    from mbq.core.evaluate import evaluate
    from mbq.core.data.loader import Batch
    torch.manual_seed(0)
    model = quantize_model(create_model("resnet20", width=0.25), QuantConfig(weight="dorefa", act="clamp")).eval()
    set_bits(model, 3, 3)
    x = torch.randn(8, 1, 28, 28)
    with torch.no_grad():
        ref = model(x)
        with inference_layout(model) as layout:
            conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
            assert conv.weight.is_contiguous(memory_format=torch.channels_last)
            assert layout(x).is_contiguous(memory_format=torch.channels_last)
            assert torch.allclose(model(layout(x)), ref, atol=1e-5)
    assert all(p.is_contiguous() for p in model.parameters())
    res = evaluate(model, [Batch(x, ref.argmax(1), torch.arange(8))])
    assert res["top1"] == 100.0


def test_recalibrate_bn_runs_channels_last_and_matches_plain_forwards():
    import copy

    from mbq.core.data.loader import Batch
    from mbq.core.evaluate import recalibrate_bn
    from mbq.core.quant import WidthStatsBatchNorm2d

    torch.manual_seed(0)
    model = quantize_model(create_model("resnet20", width=0.25),
                           QuantConfig(weight="dorefa", act="clamp", wbc=True, width_stats_bn=True)).eval()
    set_bits(model, 32, 32)  # FP: no rounding step for summation order to flip
    xs = [torch.rand(16, 1, 28, 28) for _ in range(3)]
    plain = copy.deepcopy(model).train()  # the reference: cumulative averages of plain forwards
    for m in plain.modules():
        if isinstance(m, WidthStatsBatchNorm2d):
            m.reset_running_stats()
            m.momentum = None
    with torch.no_grad():
        for x in xs[:2]:
            plain(x)
    params = {k: v.clone() for k, v in model.state_dict().items() if v.dim() == 4}
    batches = [Batch(x, torch.zeros(16, dtype=torch.long), torch.arange(16)) for x in xs]
    conv = [m for m in model.modules() if isinstance(m, QConv2d)][2]
    seen = []
    conv.register_forward_hook(lambda mod, args, out: seen.append(
        out.is_contiguous(memory_format=torch.channels_last) and not out.is_contiguous()))
    assert recalibrate_bn(model, batches, 2, kinds=WidthStatsBatchNorm2d) == 2
    assert seen == [True, True]
    assert not model.training
    pairs = [(m, r) for m, r in zip(model.modules(), plain.modules()) if isinstance(m, WidthStatsBatchNorm2d)]
    assert pairs
    for m, r in pairs:
        assert m.momentum == pytest.approx(0.1)
        for got, want in zip(m.width_statistics(32), r.width_statistics(32)):
            assert torch.allclose(got, want, rtol=1e-4, atol=1e-5)
    sd = model.state_dict()  # weights unchanged and back in their own layout
    assert all(torch.equal(sd[k], v) and sd[k].is_contiguous() for k, v in params.items())


def test_frozen_weights_round_once_per_pass_and_never_serve_a_stale_weight():
    from mbq.core.quant import frozen_weights

    torch.manual_seed(0)
    model = quantize_model(create_model("cnn"), QuantConfig(weight="dorefa", act="pact", wbc=True)).eval()
    set_bits(model, 3, 3)
    conv = next(m for m in model.modules() if isinstance(m, QConv2d))
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        ref = model(x)
        calls = []
        conv.weight_quant.register_forward_hook(lambda *a: calls.append(1))
        model(x)
        assert calls  # the hook sees every rounding
        with frozen_weights(model):
            n_entry = len(calls)
            assert torch.equal(model(x), ref) and torch.equal(model(x), ref)
            assert len(calls) == n_entry  # no rounding after entry
            set_bits(model, 5, 5)  # a width changed inside the block is rounded afresh
            assert torch.equal(model(x), _fresh(model, x)) and len(calls) > n_entry
            with torch.enable_grad():  # a pass that trains never reuses a detached weight
                assert conv.quantized_weight().requires_grad
        assert conv._frozen_weight is None  # released on exit
        set_bits(model, 3, 3)
        assert torch.equal(model(x), ref)


def _fresh(model, x):
    from mbq.core.quant import QUANT_LAYERS

    saved = [(m, m._frozen_weight) for m in model.modules() if isinstance(m, QUANT_LAYERS)]
    for m, _ in saved:
        m._frozen_weight = None
    out = model(x)
    for m, f in saved:
        m._frozen_weight = f
    return out


def test_emq_layer_trains_through_the_fused_wbc_pass():
    # a WBC layer on the tanh FP path takes the fused pass; its output and weight gradient
    # are those of the composed definition (the wbc_detach path)
    from mbq.core.quant import QConv2d
    from mbq.core.quant import functional as F

    torch.manual_seed(0)
    conv = QConv2d(4, 6, 3, padding=1, qkwargs=dict(weight_quant="dorefa", act_quant="pact", w_bits=3,
                                                    a_bits=3, fp_path="tanh", wbc=True))
    x = torch.randn(2, 4, 5, 5).abs()
    conv(x).square().sum().backward()
    fused = conv.weight.grad.clone()
    conv.weight.grad = None
    composed = F.weight_bias_correction(*F.dorefa_weight_and_reference(conv.weight, 3))
    assert torch.allclose(conv.quantized_weight(), composed, atol=1e-6)
    y = conv._conv_forward(conv.quantized_input(x), composed, conv.bias)
    y.square().sum().backward()
    assert torch.allclose(fused, conv.weight.grad, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("bits", [1, 2, 3, 5, 8, 16])
def test_width_scaled_pact_is_pact_at_a_scaled_clip(bits):
    from mbq.core.quant import functional as F
    from mbq.core.quant.quantizers import PACTAct, PACTWidthAct

    torch.manual_seed(0)
    x = torch.randn(64, 8) * 2
    plain, scaled = PACTAct(init_alpha=5.0), PACTWidthAct(init_alpha=5.0)
    r = F.width_clip_ratio(bits)
    ref = F.pact_act(x, torch.tensor(5.0 * r), bits)
    y = scaled(x.clone().requires_grad_(), bits)
    assert torch.allclose(y, ref, atol=1e-6)
    assert float(y.detach().max()) <= 5.0 * r + 1e-6
    # the shared alpha's gradient is the clip's gradient times the width's ratio
    y.sum().backward()
    plain_clip = PACTAct(init_alpha=5.0 * r)
    plain_clip(x.clone().requires_grad_(), bits).sum().backward()
    assert torch.allclose(scaled.alpha.grad, plain_clip.alpha.grad * r, rtol=1e-5)
    if bits >= 8:
        assert torch.equal(scaled(x, bits), plain(x, bits))


def _signed(model) -> list[str]:
    return [n for n, m in quantized_layers(model) if m.act_quant.signed]


def test_signed_inputs_found_where_a_layer_reads_negative_values():
    torch.manual_seed(0)
    m = create_model("mobilenet_v2", num_classes=10, in_channels=1, image_size=28, width_mult=0.25)
    state = {k: v.clone() for k, v in m.state_dict().items()}
    quantize_model(m, QuantConfig(act="pact", w_bits=4, a_bits=4), (1, 28, 28))
    signed = _signed(m)
    # every inverted residual that expands reads the previous block's linear bottleneck, and
    # the last 1x1 conv the last block's; depthwise and projection convs read a ReLU6
    assert signed == [f"features.{i}.conv.0.0" for i in range(2, 18)] + ["features.18.0"]
    assert all(torch.equal(v, m.state_dict()[k]) for k, v in state.items())  # the probe changed nothing
    for arch in ("cnn", "resnet20"):  # every quantized layer reads a ReLU
        r = quantize_model(create_model(arch, num_classes=10, in_channels=1, image_size=28),
                           QuantConfig(act="pact", w_bits=4, a_bits=4), (1, 28, 28))
        assert _signed(r) == []
    off = quantize_model(create_model("mobilenet_v2", num_classes=10, in_channels=1, image_size=28,
                                      width_mult=0.25), QuantConfig(act="pact", signed_inputs=False), (1, 28, 28))
    assert _signed(off) == []


@pytest.mark.parametrize("act", ["clamp", "clamp_fp", "pact", "pact_fp", "pact_width", "lsq"])
def test_a_signed_input_keeps_its_negative_half(act):
    torch.manual_seed(0)
    # the first and last layers stay float: the middle one reads the first's signed output
    layer = quantize_model(nn.Sequential(nn.Linear(8, 4), nn.Linear(4, 4), nn.Linear(4, 2)),
                           QuantConfig(act=act, w_bits=4, a_bits=4), (8,))[1]
    assert layer.act_quant.signed and "signed=True" in repr(layer)
    x = torch.randn(64, 4) * 2
    for bits in (4, 32):
        y = layer.quantized_input(x) if bits == 4 else layer.act_quant(x, 32)
        assert (y < 0).float().mean() > 0.3, (act, bits)
        inside = x.abs() < 1  # every clip here is >= 1: the FP path clips but does not round
        assert bits == 4 or torch.equal(y[inside], x[inside])


def test_checkpoint_from_before_signed_inputs_rebuilds_unsigned(tmp_path):
    import json

    from safetensors import safe_open
    from safetensors.torch import save_file

    from mbq.core.checkpoint import load_checkpoint
    from mbq.core.config import TrainConfig

    cfg = TrainConfig.model_validate({"method": "qat", "bits": [4],
                                      "model": {"arch": "mobilenet_v2", "num_classes": 10, "in_channels": 1,
                                                "image_size": 28, "kwargs": {"width_mult": 0.25}},
                                      "quant": {"act": "pact", "w_bits": 4, "a_bits": 4}})
    model = quantize_model(create_model("mobilenet_v2", num_classes=10, in_channels=1, image_size=28,
                                        width_mult=0.25), cfg.quant, (1, 28, 28))
    meta = {"mbq.method": "qat", "mbq.arch": "mobilenet_v2", "mbq.num_classes": "10", "mbq.in_channels": "1",
            "mbq.image_size": "28", "mbq.bits": [4], "mbq.config": cfg.model_dump(mode="json")}
    new = save_checkpoint(model, tmp_path / "new.safetensors", meta)
    assert len(_signed(load_checkpoint(new)[0])) == 17
    with safe_open(str(new), "pt") as f:
        raw, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    old_cfg = json.loads(raw["mbq.config"])
    del old_cfg["quant"]["signed_inputs"]
    save_file(tensors, str(tmp_path / "old.safetensors"), dict(raw, **{"mbq.config": json.dumps(old_cfg)}))
    assert _signed(load_checkpoint(tmp_path / "old.safetensors")[0]) == []
