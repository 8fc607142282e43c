"""`mbq prune` and `mbq sensitivity` on checkpoints; the greedy rule; qat --init keeps the scheme."""
import json

import pytest
from typer.testing import CliRunner

from mbq.cli.app import app
from mbq.core.bitprune import LayerBits, compression, greedy_to_target
from mbq.core.checkpoint import load_checkpoint, read_checkpoint, save_checkpoint
from mbq.core.methods import build_model_from_meta
from mbq.core.quant import compression_ratio, get_bit_scheme


runner = CliRunner()
FAST = ["--probes", "3", "--batches", "1", "--batch-size", "32", "--device", "cpu"]


def run_main(args, capsys):
    """Through mbq.cli.app.main (MbqError -> one line, exit 2): (exit code, stderr)."""
    from mbq.cli.app import main

    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        main([str(a) for a in args])
    return e.value.code, capsys.readouterr().err


def _variant(src, dst, method=None, **quant):
    """A copy of ``src`` rebuilt under another method / quantizer (same tensors)."""
    model, meta = load_checkpoint(src)
    meta = {k: v for k, v in meta.items() if k not in ("mbq.format", "mbq.format_version")}
    cfg = meta["mbq.config"]
    cfg["quant"].update(quant)
    if method:
        cfg["method"] = meta["mbq.method"] = method
        cfg["options"] = {}  # the record holds every option of the old method
    new = build_model_from_meta(meta)
    new.load_state_dict(model.state_dict(), strict=False)
    save_checkpoint(new, dst, meta)
    return dst


def test_greedy_lowers_cheapest_layer_until_target():
    layers = [LayerBits("a", 100, 8), LayerBits("b", 100, 8), LayerBits("f", 10, 32, prunable=False)]
    # Ω(bits): a is cheap to lower, b is costly
    omega_at = {"a": {b: 0.1 * (8 - b) for b in range(2, 9)}, "b": {b: 10.0 * (8 - b) for b in range(2, 9)}}
    bits, steps = greedy_to_target(layers, omega_at, target=6.0, min_bits=2)
    assert [s["layer"] for s in steps[:6]] == ["a"] * 6  # a first, all the way to min_bits
    assert bits["a"] == 2 and compression(layers, bits) >= 6.0
    last = steps[-1]
    assert compression(layers, dict(bits, **{last["layer"]: last["before"]})) < 6.0


def test_prune_reaches_target_and_qat_init_keeps_scheme(tiny_qat_ckpt, tmp_path):
    out = tmp_path / "p.safetensors"
    res = runner.invoke(app, ["prune", str(tiny_qat_ckpt), "--target-compression", "10", "--out", str(out),
                              "--json", "--quiet"] + FAST)
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["compression_before"] < 10 <= doc["compression_after"]
    assert set(doc["bits_before"].values()) == {4} and min(doc["bits_after"].values()) < 4
    model, meta = load_checkpoint(out)
    assert compression_ratio(model) == pytest.approx(doc["compression_after"])
    assert {n: wa["w"] for n, wa in get_bit_scheme(model).items()} == doc["bits_after"]
    assert meta["mbq.config"]["options"]["scheme"] == meta["mbq.bit_scheme"]
    assert json.loads(meta["mbq.prune_history"])[0]["rule"] == "greedy"
    # fine-tuning with qat --init keeps the per-layer scheme
    ft = tmp_path / "ft.safetensors"
    res = runner.invoke(app, ["train", "--method", "qat", "--init", str(out), "--arch", "cnn",
                              "--train-subset", "128", "--val-size", "0", "--epochs", "1", "--out", str(ft),
                              "--json", "--quiet", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    assert list(json.loads(res.stdout)["top1"]) == ["mixed"]
    assert read_checkpoint(ft)[1]["mbq.bit_scheme"] == meta["mbq.bit_scheme"]


def test_prune_msq_rule_on_roundclamp(tiny_qat_ckpt, tmp_path, capsys):
    rc = _variant(tiny_qat_ckpt, tmp_path / "rc.safetensors", weight="roundclamp")
    out = tmp_path / "m.safetensors"
    res = runner.invoke(app, ["prune", str(rc), "--rule", "msq", "--prune-threshold", "1", "--out", str(out),
                              "--quiet"] + FAST)
    assert res.exit_code == 0, res.output
    assert "bits after" in res.stdout and "compression" in res.stdout
    model, meta = load_checkpoint(out)
    hist = json.loads(meta["mbq.prune_history"])
    # every LSB rate is < 1: each layer loses its Hessian k (1 or 2) once
    assert sorted(h["layer"] for h in hist) == sorted(get_bit_scheme(model))
    assert all(h["rule"] == "msq" and h["before"] == 4 and h["after"] in (2, 3) for h in hist)
    assert {n: wa["w"] for n, wa in get_bit_scheme(model).items()} == {h["layer"]: h["after"] for h in hist}
    code, err = run_main(["prune", tiny_qat_ckpt, "--rule", "msq", "--out", out] + FAST, capsys)
    assert code == 2 and "RoundClamp" in err  # the dorefa original has no LSBs to read


def test_sensitivity_cli(tiny_qat_ckpt, tmp_path):
    png = tmp_path / "s.png"
    res = runner.invoke(app, ["sensitivity", str(tiny_qat_ckpt), "--json", "--quiet", "--plot", str(png)] + FAST)
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["probes"] == 3 and doc["images"] == 32
    for r in doc["layers"]:
        assert {"name", "params", "bits", "trace", "avg_trace", "qerr", "omega", "k", "trace_se"} <= set(r)
        assert r["k"] in (0, 1, 2) and r["bits"] == 4
    total = sum(r["trace"] for r in doc["layers"]) + doc["other_trace"]
    assert total == pytest.approx(doc["total_trace"])
    assert png.stat().st_size > 1000
    # text output; a loose --tol stops at the second probe (PyHessian's rule)
    text = runner.invoke(app, ["sensitivity", str(tiny_qat_ckpt), "--quiet", "--tol", "10", "--probes", "5",
                               "--batches", "1", "--batch-size", "32", "--device", "cpu"])
    assert text.exit_code == 0 and "whole-model trace" in text.stdout and "(2 probes" in text.stdout


def test_bad_input(tiny_qat_ckpt, tmp_path, capsys):
    fp = _variant(tiny_qat_ckpt, tmp_path / "fp.safetensors", method="fp")
    out = tmp_path / "o.safetensors"
    cases = [
        (["prune", tiny_qat_ckpt, "--target-compression", "0.5", "--out", out], "at least 1"),
        (["prune", tiny_qat_ckpt, "--target-compression", "100", "--out", out], "at most"),
        (["prune", tiny_qat_ckpt, "--out", out], "--target-compression is required"),
        (["prune", tiny_qat_ckpt, "--rule", "msq", "--prune-threshold", "1.5", "--out", out], "[0, 1]"),
        (["prune", fp, "--target-compression", "4", "--out", out], "no quantized layers"),
        (["prune", tiny_qat_ckpt, "--target-compression", "4", "--out", out, "--probes", "0"], "--probes"),
        (["sensitivity", fp], "no quantized layers"),
        (["sensitivity", tiny_qat_ckpt, "--probes", "0"], "--probes"),
        (["sensitivity", tiny_qat_ckpt, "--tol", "0"], "--tol"),
    ]
    for args, msg in cases:
        code, err = run_main(args + ["--device", "cpu", "--quiet"], capsys)
        assert code == 2, (args, err)
        assert msg in err and len(err.strip().splitlines()) == 1, (args, err)
    assert not out.exists()
