"""MSQ: LSB residual, regularizer gradient, pruning rules, and `mbq train --method msq`."""
import json
import math

import pytest
import torch
from typer.testing import CliRunner

from mbq.cli.app import app
from mbq.core.bitprune import (LayerBits, Prune, compression, forced_round, k_rule, lsb_nonzero_rate,
                               max_compression, msq_round)
from mbq.core.checkpoint import load_checkpoint, read_checkpoint
from mbq.core.config import TrainConfig
from mbq.core.methods import create_method
from mbq.core.quant import compression_ratio, functional as QF, quantized_layers


runner = CliRunner()


# --- LSB residual and regularizer -----------------------------------------------------

def test_lsb_residual_values_and_zeros():
    s = torch.tensor(1.0)
    # 4-bit codes -8..7 (step 1/8): one weight at the centre of every code
    w = torch.arange(-8, 8, dtype=torch.float32) / 8
    for k in (1, 2, 3):
        res = QF.lsb_residual(w, 4, k, s)
        codes = torch.arange(-8, 8)
        assert torch.equal(res == 0, codes.remainder(2 ** k) == 0)  # zero exactly at coarse codes
        top = 8 - 2 ** k  # largest coarse code (scaled): above it the clamp leaves 1..2^k-1
        assert res[codes <= top].abs().max() <= 2 ** (k - 1)
        assert torch.equal(res[codes > top], (codes[codes > top] - top).float())
    # hand-computed: code 3 at k=1 sits between coarse codes 2 and 4; round-half-even picks 4
    assert QF.lsb_residual(torch.tensor([3 / 8, 5 / 8, -3 / 8]), 4, 1, s).tolist() == [-1.0, 1.0, 1.0]


def _msq(tmp_path, **opts):
    cfg = TrainConfig.model_validate({"method": "msq", "model": {"arch": "cnn", "num_classes": 10,
                                      "in_channels": 1, "image_size": 28},
                                      "out": str(tmp_path / "m.safetensors"), "options": opts})
    method = create_method(cfg)
    torch.manual_seed(0)
    model = method.build_model()
    method._model, method._layers = model, method._prunable(model)
    method._n_total = sum(m.weight.numel() for _, m in method._layers)
    return method, model


def test_roundclamp_channel_scale_keeps_the_lsb_property():
    # three output channels with ranges 1, 0.5 and 0.25: one grid per channel, the same codes
    s = torch.tensor([1.0, 0.5, 0.25]).reshape(3, 1)
    codes = torch.arange(-8, 8, dtype=torch.float32).repeat(3, 1)
    w = codes / 8 * s
    scale = QF.roundclamp_scale(w, per_channel=True)
    assert scale.shape == (3, 1) and torch.equal(scale, s)
    assert QF.roundclamp_scale(w).shape == () and QF.roundclamp_scale(w).item() == 1.0
    assert torch.equal(QF.roundclamp_codes(w, 4, scale), codes)
    for k in (1, 2, 3):
        assert torch.equal(QF.lsb_residual(w, 4, k, scale) == 0, codes.remainder(2 ** k) == 0)
    # the per-layer range puts the narrow channels on few codes: 2 bits keep 2 of 16 weights there
    assert (QF.roundclamp_weight(w, 2)[2] != 0).sum() < (QF.roundclamp_weight(w, 2, scale)[2] != 0).sum()


def test_channel_scale_is_roundclamp_only():
    from pydantic import ValidationError

    from mbq.core.config import QuantConfig

    with pytest.raises(ValidationError, match="RoundClamp"):
        QuantConfig(weight="dorefa", w_scale="channel")
    assert QuantConfig().w_scale == "tensor"  # what every checkpoint before the field used


@pytest.mark.parametrize("weight_scale", ["channel", "tensor"])
def test_regularizer_gradient_is_sign_over_n_total(tmp_path, weight_scale):
    method, model = _msq(tmp_path, weight_scale=weight_scale)
    assert all(m.weight_quant.per_channel == (weight_scale == "channel") for _, m in method._layers)
    method.k = {"conv1": 2, "conv2": 1, "fc1": 2, "fc2": 1}
    reg = method._lsb_reg()
    reg.backward()
    n_total = sum(m.weight.numel() for _, m in method._layers)
    assert n_total == method._n_total == 144 + 4608 + 200704 + 1280  # first/last are pruned too
    total = 0.0
    for name, m in method._layers:
        scale = QF.roundclamp_scale(m.weight, weight_scale == "channel")
        res = QF.lsb_residual(m.weight, m.bits[0], method.k[name], scale)
        assert torch.allclose(m.weight.grad, torch.sign(res) / n_total)
        total += res.abs().sum().item()
    assert reg.item() == pytest.approx(total / n_total)


@pytest.mark.parametrize("weight_scale", ["channel", "tensor"])
def test_pruning_zero_lsb_layer_keeps_dequantized_weights(tmp_path, weight_scale):
    method, model = _msq(tmp_path, init_bits=6, weight_scale=weight_scale)
    layer = dict(method._layers)["conv2"]
    g = torch.Generator().manual_seed(0)
    step6 = 1 / 32  # max|w| = 1 -> 6-bit step 1/2^5
    codes = torch.randint(-7, 8, layer.weight.shape, generator=g) * 4  # two zero LSBs, inside ±1
    with torch.no_grad():
        layer.weight.copy_(codes * step6 + (torch.rand(layer.weight.shape, generator=g) - 0.5) * step6 * 0.9)
        layer.weight[:, 0, 0, 0] = -1.0  # max|w| = 1 in every channel (code -32)
    assert lsb_nonzero_rate(layer.weight, 6, 2, layer.weight_quant.scale(layer.weight)) == 0.0
    before = layer.quantized_weight().detach().clone()
    layers = [LayerBits(n, m.weight.numel(), m.bits[0]) for n, m in method._layers]
    bits, events = msq_round(layers, {"conv2": 2}, {"conv2": 0.0}, 0.3, target=None)
    assert events == [Prune("conv2", 6, 4)]
    layer.set_precision(bits["conv2"])
    assert torch.equal(layer.quantized_weight(), before)


def test_k_rule():
    omegas = {"a": 3.0, "b": 1.0, "c": 2.0, "d": 2.0}  # mean 2
    bits = {"a": 8, "b": 8, "c": 8, "d": 3}
    assert k_rule(omegas, bits, 2) == {"a": 1, "b": 2, "c": 2, "d": 1}  # at the mean -> 2; floor clips
    assert k_rule(omegas, dict(bits, b=2), 2)["b"] == 0
    assert k_rule(omegas, bits, 2, guided=False, uniform_k=1) == {"a": 1, "b": 1, "c": 1, "d": 1}


def _layers():
    return [LayerBits("big", 1000, 8), LayerBits("mid", 500, 8), LayerBits("small", 100, 8),
            LayerBits("float", 50, 32, prunable=False)]


def test_msq_round_threshold_and_sorted_final_round():
    layers = _layers()
    ks = {"big": 2, "mid": 2, "small": 2}
    rates = {"big": 0.05, "mid": 0.2, "small": 0.01}
    # only layers under alpha are pruned; without a target all of them
    bits, ev = msq_round(layers, ks, rates, alpha=0.1, target=None)
    assert {e.layer for e in ev} == {"big", "small"} and bits["mid"] == 8
    # pruning all candidates would pass the target: lowest rate first, stop once it is met
    target = 4.3
    all_bits = {n: 6 for n in ks}
    assert compression(layers, all_bits) > target
    bits, ev = msq_round(layers, ks, rates, alpha=0.5, target=target)
    assert [e.layer for e in ev] == ["small", "big"]
    assert compression(layers, bits) >= target
    undo = dict(bits, **{ev[-1].layer: ev[-1].before})
    assert compression(layers, undo) < target


def test_forced_round_meets_target_exactly():
    layers = _layers()
    ks = {"big": 1, "mid": 2, "small": 1}
    rates = {"big": 0.4, "mid": 0.3, "small": 0.9}
    target = 10.0
    bits, ev = forced_round(layers, ks, rates, target, min_bits=2)
    assert compression(layers, bits) >= target
    assert compression(layers, dict(bits, **{ev[-1].layer: ev[-1].before})) < target
    assert ev[0].layer == "mid" and all(b >= 2 for b in bits.values())
    assert max_compression(layers, 2) == pytest.approx(32 * 1650 / (1600 * 2 + 50 * 32))


# --- end to end ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def msq_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("msq") / "m.safetensors"
    res = runner.invoke(app, ["train", "--method", "msq", "--arch", "cnn", "--train-subset", "256",
                              "--val-size", "100", "--epochs", "2", "--batch-size", "64",
                              "--target-compression", "8", "--hessian-probes", "2", "--out", str(out),
                              "--json", "--seed", "0", "--device", "cpu"])
    return res, out


def test_msq_train_reaches_target_and_records_history(msq_run):
    res, out = msq_run
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert "mixed" in doc["top1"]
    model, meta = load_checkpoint(out)
    assert compression_ratio(model) >= 8
    hist = json.loads(meta["mbq.prune_history"])
    assert hist and {"epoch", "layer", "before", "after", "omega", "rate", "round"} <= set(hist[0])
    scheme = meta["mbq.bit_scheme"]
    for name, wa in scheme.items():  # the history ends at the recorded scheme
        last = [h for h in hist if h["layer"] == name]
        assert wa["w"] == (last[-1]["after"] if last else 8)
        assert wa["a"] == 32
    assert meta["mbq.config"]["quant"]["w_scale"] == "channel"  # the default, rebuilt as such
    assert all(m.weight_quant.per_channel for _, m in quantized_layers(model))
    lines = [json.loads(line) for line in open(str(out).replace(".safetensors", ".metrics.jsonl"))]
    assert lines[-1]["compression"] == pytest.approx(compression_ratio(model))
    assert "avg_bits" in lines[-1] and "lsb_reg" in lines[0]


def test_checkpoint_from_before_w_scale_rebuilds_per_layer(msq_run, tmp_path):
    # a checkpoint written before the range per channel records neither w_scale nor
    # weight_scale; it was trained per layer and must rebuild per layer
    from safetensors.torch import load_file, save_file

    from mbq.core.checkpoint import read_header
    _, out = msq_run
    raw = read_header(out)
    cfg = json.loads(raw["mbq.config"])
    del cfg["quant"]["w_scale"]
    cfg["options"].pop("weight_scale", None)  # a record of every option came later still
    raw["mbq.config"] = json.dumps(cfg)
    old = tmp_path / "old.safetensors"
    save_file(load_file(str(out)), str(old), metadata=raw)
    model, meta = load_checkpoint(old)
    assert not any(m.weight_quant.per_channel for _, m in quantized_layers(model))
    assert meta["mbq.config"]["quant"]["w_scale"] == "tensor"
    assert create_method(TrainConfig.model_validate(meta["mbq.config"])).opts.weight_scale == "tensor"


def test_msq_info_and_eval_show_scheme(msq_run):
    _, out = msq_run
    info = runner.invoke(app, ["info", str(out), "--json"])
    assert info.exit_code == 0, info.output
    doc = json.loads(info.stdout)
    assert doc["compression"] >= 8 and len({layer["w"] for layer in doc["layers"]}) >= 1
    assert isinstance(doc["extra"]["prune_history"], list)
    ev = runner.invoke(app, ["eval", str(out), "--limit", "200", "--json", "--device", "cpu"])
    assert ev.exit_code == 0, ev.output
    row = json.loads(ev.stdout)
    assert row["compression"] >= 8 and set(row["layer_bits"]) == set(json.loads(
        json.dumps(read_checkpoint(out)[1]["mbq.bit_scheme"])))


def run_main(args, capsys):
    """Through mbq.cli.app.main (MbqError -> one line, exit 2): (exit code, stderr)."""
    from mbq.cli.app import main

    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        main([str(a) for a in args])
    return e.value.code, capsys.readouterr().err


@pytest.mark.parametrize("args,msg", [
    (["--target-compression", "0.5"], "--target-compression"),
    (["--target-compression", "20"], "at most 16.00x"),
    (["--prune-threshold", "1.5"], "--prune-threshold"),
    (["--min-bits", "4", "--init-bits", "3"], "above --init-bits"),
])
def test_msq_bad_input(tmp_path, capsys, args, msg):
    code, err = run_main(["train", "--method", "msq", "--arch", "cnn", "--train-subset", "128",
                          "--val-size", "0", "--epochs", "1", "--out", tmp_path / "x.safetensors",
                          "--device", "cpu", "--quiet"] + args, capsys)
    assert code == 2, err
    assert msg in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("epochs", range(2, 11))
def test_msq_deadline_leaves_training_after_it(epochs):
    cfg = TrainConfig(method="msq", epochs=epochs)
    d = create_method(cfg).deadline_epoch(epochs)
    assert 1 <= d < epochs  # the frozen scheme trains for at least one epoch
    assert d == min(math.ceil(0.6 * epochs), epochs - 1)


def test_msq_one_epoch_is_refused(tmp_path, capsys):
    code, err = run_main(["train", "--method", "msq", "--arch", "cnn", "--train-subset", "128",
                          "--val-size", "0", "--epochs", "1", "--out", tmp_path / "x.safetensors",
                          "--device", "cpu", "--quiet"], capsys)
    assert code == 2 and "--epochs 2 or more" in err and len(err.strip().splitlines()) == 1


def test_qat_fine_tune_keeps_the_msq_range(msq_run):
    _, out = msq_run
    cfg = TrainConfig.model_validate({"method": "qat", "bits": [4], "model": {
        "arch": "cnn", "num_classes": 10, "in_channels": 1, "image_size": 28, "init": str(out)}})
    method = create_method(cfg)
    method.adopt_init(read_checkpoint(out)[1])
    assert method.cfg.quant.weight == "roundclamp" and method.cfg.quant.w_scale == "channel"
    assert all(m.weight_quant.per_channel for _, m in quantized_layers(method.build_model()))
