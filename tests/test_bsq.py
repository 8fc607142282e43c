"""BSQ baseline: bit planes, re-binarisation and plane dropping, parameter count vs MSQ."""
import json

import pytest
import torch
from typer.testing import CliRunner

from mbq.cli.app import app
from mbq.core.checkpoint import load_checkpoint
from mbq.core.config import TrainConfig
from mbq.core.methods import create_method
from mbq.core.quant import QLinear, quantized_layers
from mbq.core.quant.bitplane import clamp_planes, group_lasso, plane_params, rebinarize, to_bit_planes


def _model(method, bits=8):
    cfg = TrainConfig.model_validate({"method": method, "options": {"init_bits": bits},
                                      "model": {"arch": "cnn", "num_classes": 10, "in_channels": 1,
                                                "image_size": 28}})
    torch.manual_seed(0)
    return create_method(cfg).build_model()


@pytest.mark.parametrize("bits", [8, 4])
def test_bsq_trains_n_times_msq_parameters(bits):
    msq, bsq = _model("msq", bits), _model("bsq", bits)
    msq_w = sum(m.weight.numel() for _, m in quantized_layers(msq))
    bsq_w = sum(p.numel() for _, m in quantized_layers(bsq) for p in plane_params(m)[:2])
    assert bsq_w == bits * msq_w
    rest = sum(p.numel() for p in msq.parameters()) - msq_w  # BN and biases are not split
    assert sum(p.numel() for p in bsq.parameters() if p.requires_grad) == bits * msq_w + rest


def _layer(weight):
    layer = QLinear(weight.shape[1], weight.shape[0], bias=False,
                    qkwargs=dict(weight_quant="roundclamp", w_bits=6, a_bits=32))
    with torch.no_grad():
        layer.weight.copy_(weight)
    return to_bit_planes(layer, 6)


def test_planes_reconstruct_grid_weights_exactly():
    step = 0.125
    q = torch.tensor([[31, -31, 5, 0], [-2, 7, 16, -9]], dtype=torch.float32)  # 5 magnitude planes
    layer = _layer(q * step)
    assert torch.allclose(layer.weight, q * step)
    planes, sign, bp = plane_params(layer)
    assert planes.shape == (5, 2, 4) and set(planes.unique().tolist()) <= {0.0, 1.0}
    assert bp.step.item() == pytest.approx(step)


def test_rebinarize_drops_zero_lsb_and_msb_planes():
    layer = _layer(torch.randn(2, 4))
    planes, sign, bp = plane_params(layer)
    q = torch.tensor([[4, 8, 28, 0], [4, 4, 8, 12]])  # the two LSBs are zero everywhere
    with torch.no_grad():
        for b in range(planes.shape[0]):
            planes[b] = ((q >> b) & 1).float()
    w0 = layer.weight.detach().clone()
    before, after = rebinarize(layer, min_bits=2)
    assert (before, after) == (6, 4) and layer.bits[0] == 4
    assert torch.allclose(layer.weight, w0)  # dropping zero planes changes no weight
    # every magnitude (now 1..7) below half the range of 3 planes? no: 7 needs them all
    assert rebinarize(layer) == (4, 4)
    with torch.no_grad():
        planes[bp._m - 1].zero_()  # magnitudes now fit in two planes: the MSB plane goes
    assert rebinarize(layer) == (4, 3)
    assert rebinarize(layer, min_bits=3) == (3, 3)  # never below min_bits


def test_group_lasso_pulls_planes_down():
    layer = _layer(torch.randn(3, 5))
    planes, _, _ = plane_params(layer)
    before = planes.detach().sum().item()
    opt = torch.optim.SGD([planes], lr=0.5)
    for _ in range(5):
        opt.zero_grad()
        group_lasso(layer).backward()
        opt.step()
        clamp_planes(layer)
    assert planes.sum().item() < before and planes.min().item() >= 0


def test_bsq_train_cli(tmp_path):
    out = tmp_path / "b.safetensors"
    res = CliRunner().invoke(app, ["train", "--method", "bsq", "--arch", "cnn", "--train-subset", "256",
                                   "--val-size", "100", "--epochs", "1", "--batch-size", "64",
                                   "--out", str(out), "--json", "--quiet", "--device", "cpu",
                                   "--group-lasso", "0.5"])
    assert res.exit_code == 0, res.output
    assert "mixed" in json.loads(res.stdout)["top1"]
    model, meta = load_checkpoint(out)
    assert all(m.bits[0] <= 8 for _, m in quantized_layers(model))
    line = json.loads(open(tmp_path / "b.metrics.jsonl").readline())
    assert "compression" in line and line["group_lasso"] > 0


def test_bsq_rejects_init(tmp_path, capsys):
    from mbq.cli.app import main

    with pytest.raises(SystemExit) as e:
        main(["train", "--method", "bsq", "--arch", "cnn", "--init", str(tmp_path / "x.pt"),
              "--out", str(tmp_path / "b.safetensors"), "--quiet"])
    assert e.value.code == 2 and "--init" in capsys.readouterr().err
