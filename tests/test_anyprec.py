"""Any-Precision baseline: switchable BN per trained width, untrained widths after BN
re-calibration, and evaluation that never changes the model it evaluates."""
from __future__ import annotations

import hashlib
import json

import pytest
import torch

from mbq.cli.app import main

SMALL = ["--no-health-check", "--arch", "cnn", "--train-subset", "512", "--val-size", "0", "--batch-size", "64",
         "--optimizer", "adam", "--lr", "0.003", "--device", "cpu", "--quiet"]


def _main(capsys, args):
    with pytest.raises(SystemExit) as e:
        main(args)
    cap = capsys.readouterr()
    return e.value.code, cap.out, cap.err


@pytest.fixture(scope="module")
def anyprec_ckpt(tmp_path_factory):
    from mbq.core import engine

    orig = engine.load_data

    def load(cfg, device):  # a 300-image final test: speed only
        train, val, test = orig(cfg, device)
        return train, val, test.subset(torch.arange(300))

    out = tmp_path_factory.mktemp("anyprec") / "ap.safetensors"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(engine, "load_data", load)
        with pytest.raises(SystemExit) as e:
            main(["train", "--method", "anyprec", "--bits", "2,4", "--epochs", "2", "--out", str(out),
                  "--json", "--seed", "2", "--calib-batches", "4", *SMALL])
    assert e.value.code == 0
    return out


def _bn_buffers(model):
    return {k: v.clone() for k, v in model.state_dict().items() if "running" in k or "num_batches" in k}


def test_one_batchnorm_per_trained_width(anyprec_ckpt):
    from mbq.core.checkpoint import load_checkpoint
    from mbq.core.quant import SwitchableBatchNorm2d

    model, meta = load_checkpoint(anyprec_ckpt)
    sbns = [m for m in model.modules() if isinstance(m, SwitchableBatchNorm2d)]
    assert len(sbns) == 2 and all(m.widths == [2, 4] for m in sbns)
    assert not any(type(m) is torch.nn.BatchNorm2d for m in model.modules()
                   if not any(m is bn for s in sbns for bn in s.bns.values()))
    # each width kept its own statistics
    assert not torch.allclose(sbns[1].bns["2"].running_var, sbns[1].bns["4"].running_var)
    assert meta["mbq.bits"] == [2, 4]


def test_untrained_width_is_recalibrated_and_says_so(anyprec_ckpt, capsys):
    digest = hashlib.sha256(anyprec_ckpt.read_bytes()).hexdigest()
    args = ["eval", str(anyprec_ckpt), "--limit", "300", "--json", "--device", "cpu"]
    code, out, err = _main(capsys, args + ["--bit", "3"])
    assert code == 0, err
    assert "not trained" in err and "re-calibrated on 4 training batches" in err
    assert json.loads(out)["label"] == "3" and json.loads(out)["top1"] > 30

    code, out, err = _main(capsys, args + ["--bits", "all"])
    first = {r["label"]: r["top1"] for r in json.loads(out)["results"]}
    assert code == 0 and list(first) == ["1", "2", "3", "4", "5", "6", "7", "8", "fp"]
    assert err.count("not trained") == 7  # every width but 2 and 4
    code, out, _ = _main(capsys, args + ["--bits", "3,4,fp"])
    again = {r["label"]: r["top1"] for r in json.loads(out)["results"]}
    assert again == {k: first[k] for k in ("3", "4", "fp")}  # evaluating leaves nothing behind
    # with --recalibrate-bn the checkpoint is reloaded between widths: still fine
    code, out, err = _main(capsys, args + ["--bits", "2,3,4", "--recalibrate-bn", "3"])
    assert code == 0, err
    assert hashlib.sha256(anyprec_ckpt.read_bytes()).hexdigest() == digest


def test_evaluating_an_untrained_width_restores_the_trained_statistics(anyprec_ckpt):
    from mbq.core.checkpoint import load_checkpoint
    from mbq.core.config import TrainConfig
    from mbq.core.data import BatchLoader, create_dataset
    from mbq.core.methods import create_method
    from mbq.core.methods.base import Setting

    model, meta = load_checkpoint(anyprec_ckpt)
    method = create_method(TrainConfig.model_validate(meta["mbq.config"]))
    keys, before = set(model.state_dict()), _bn_buffers(model)
    train, _ = create_dataset("mnist")
    calib = BatchLoader(train.subset(torch.arange(512)), 64, shuffle=True, seed=0)
    for w in (3, 8, 1):
        method.apply_setting(model, Setting(w, w))
        assert "re-calibrated" in method.prepare_eval(model, Setting(w, w), calib)
    changed = _bn_buffers(model)
    assert any(not torch.equal(changed[k], before[k]) for k in before)
    method.apply_setting(model, Setting(4, 4))
    assert set(model.state_dict()) == keys
    after = _bn_buffers(model)
    assert all(torch.equal(after[k], before[k]) for k in before)
