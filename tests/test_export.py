"""mbq export: packed files run by the integer runtime and ONNX run by onnxruntime agree
with the fake-quantized model; --bit all; sizes and hashes; bad input; numpy-only reading."""
import hashlib
import json
import subprocess
import sys

import pytest
import torch
from torch.nn import functional as F
from typer.testing import CliRunner

from mbq.cli.app import app
from mbq.core.checkpoint import load_checkpoint, save_checkpoint
from mbq.core.config import QuantConfig, TrainConfig
from mbq.core.data import BatchLoader, create_dataset
from mbq.core.evaluate import predict
from mbq.core.methods.base import Method, Setting
from mbq.core.models import create_model
from mbq.core.quant import quantize_model, set_bit_scheme, set_bits

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

N_TEST = 1000
MIXED = {"conv2": {"w": 3, "a": 4}, "fc1": {"w": 5, "a": 6}}


class _AllWidths(Method):
    """The Method API of a multi-bit checkpoint (EMQ-style: WBC, one shared BN, any width)."""

    name = "allwidths"

    def quant_config(self) -> QuantConfig:
        top = max(self.cfg.bits)
        return self.cfg.quant.model_copy(update={"w_bits": top, "a_bits": top})

    def supports_bits(self, w: int) -> bool:
        return 1 <= w <= 8 or w == 32

    def train_step(self, ctx, batch):
        for b in self.trained_bits():
            set_bits(ctx.model, b, b)
            loss, _ = self.ce_step(ctx, ctx.model, batch)
        return {"loss": loss.item(), "acc": 0.0, "n": len(batch.y)}


def _register(mp):
    import mbq.core.methods as reg
    from mbq.core.methods.options.base import FPOptions

    method_class, options_class = reg.method_class, reg.options_class
    mp.setattr(reg, "method_class", lambda n: _AllWidths if n == "allwidths" else method_class(n))
    mp.setattr(reg, "options_class", lambda n: FPOptions if n == "allwidths" else options_class(n))


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # the test machine's cores are shared: one thread per process wastes no time spinning
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def mnist():
    train, test = create_dataset("mnist")
    return train, test.subset(torch.arange(N_TEST))


def _train_and_save(path, mnist, method, quant: dict, bits, scheme=None, steps=25):
    """quantize_model + (set_bit_scheme) + a short real training run + save_checkpoint."""
    train, _ = mnist
    torch.manual_seed(0)
    cfg = TrainConfig.model_validate({
        "method": method, "bits": list(bits), "model": {"arch": "cnn", "num_classes": 10,
                                                       "in_channels": 1, "image_size": 28},
        "quant": quant, "options": {"scheme": scheme} if scheme else {}})
    top = max(bits)
    model = quantize_model(create_model("cnn", 10, 1, 28),
                           QuantConfig(**dict(quant, w_bits=top, a_bits=top)), (1, 28, 28))
    if scheme:
        set_bit_scheme(model, scheme)
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    loader = BatchLoader(train.subset(torch.arange(steps * 64)), 64, shuffle=True, augment=False, seed=0)
    for batch in loader:
        opt.zero_grad()
        for b in (bits if len(bits) > 1 else [None]):
            if b is not None:
                set_bits(model, b, b)
            F.cross_entropy(model(batch.x), batch.y).backward()
        opt.step()
    if len(bits) > 1:
        set_bits(model, top, top)
    meta = {"mbq.method": method, "mbq.arch": "cnn", "mbq.num_classes": "10", "mbq.in_channels": "1",
            "mbq.image_size": "28", "mbq.dataset": train.meta(), "mbq.bits": list(bits),
            "mbq.config": cfg.model_dump(mode="json")}
    save_checkpoint(model.eval(), path, meta)
    return path


@pytest.fixture(scope="module")
def qat_ckpt(tmp_path_factory):
    """4-bit DoReFa qat cnn from `mbq train` on an MNIST slice."""
    out = tmp_path_factory.mktemp("qat") / "qat.safetensors"
    res = CliRunner().invoke(app, ["train", "--method", "qat", "--bits", "4", "--arch", "cnn",
                                   "--train-subset", "2000", "--val-size", "200", "--epochs", "1",
                                   "--optimizer", "adam", "--lr", "0.003", "--out", str(out),
                                   "--quiet", "--json", "--seed", "0", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    return out


@pytest.fixture(scope="module")
def mixed_ckpt(tmp_path_factory, mnist):
    """RoundClamp weights (one range per output channel, msq's default) at a mixed scheme
    (MSQ / prune style), float first/last layers."""
    return _train_and_save(tmp_path_factory.mktemp("mixed") / "mixed.safetensors", mnist, "qat",
                           {"weight": "roundclamp", "w_scale": "channel", "act": "clamp"}, [4],
                           scheme=MIXED)


@pytest.fixture(scope="module")
def lsq_ckpt(tmp_path_factory, mnist):
    """LSQ weights and activations, first/last layers quantized at 8 bits."""
    return _train_and_save(tmp_path_factory.mktemp("lsq") / "lsq.safetensors", mnist, "qat",
                           {"weight": "lsq", "act": "lsq", "first_last_bits": 8}, [4])


@pytest.fixture(scope="module")
def signed_ckpt(tmp_path_factory, mnist):
    """PACT, first/last layers at 8 bits: the first conv reads the normalised image, which is
    negative on the background, so its input quantizer is signed."""
    return _train_and_save(tmp_path_factory.mktemp("signed") / "signed.safetensors", mnist, "qat",
                           {"weight": "dorefa", "act": "pact", "first_last_bits": 8}, [4])


@pytest.fixture(scope="module")
def multibit_ckpt(tmp_path_factory, mnist):
    """EMQ-style: DoReFa + WBC (tanh FP path), one shared BN affine with statistics per width,
    trained at 2, 4 and 8 bits."""
    with pytest.MonkeyPatch.context() as mp:
        _register(mp)
        yield _train_and_save(tmp_path_factory.mktemp("multi") / "multi.safetensors", mnist,
                              "allwidths", {"weight": "dorefa", "act": "clamp_fp", "wbc": True,
                                            "fp_path": "tanh", "width_stats_bn": True}, [2, 4, 8])


def _fake_quant_predictions(ckpt, mnist, setting=None):
    from mbq.core.methods import create_method

    model, meta = load_checkpoint(ckpt)
    method = create_method(TrainConfig.model_validate(meta["mbq.config"]))
    method.apply_setting(model, setting or method.eval_settings()[0])
    return predict(model, BatchLoader(mnist[1], 500, shuffle=False, augment=False))


def _exported_predictions(path, fmt, mnist):
    from mbq.core.export.evaluate import load_exported

    model, _, _ = load_exported(path, fmt, "cpu")
    return predict(model, BatchLoader(mnist[1], 500, shuffle=False, augment=False))


def _assert_agree(ref, got, labels):
    # a model that predicts one class would agree trivially: require a real classifier
    assert len(torch.unique(ref)) >= 6 and (ref == labels).float().mean() > 0.4
    agree = (ref == got).float().mean().item()
    assert agree >= 0.999, f"predictions agree on {agree:.2%} only"


def _export(ckpt, out, *args):
    res = CliRunner().invoke(app, ["export", str(ckpt), "--out", str(out), "--json", "--quiet",
                                   "--device", "cpu", *args])
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout)


@pytest.mark.parametrize("name", ["qat", "mixed", "lsq", "signed"])
def test_packed_runtime_agrees_with_fake_quant(name, request, mnist, tmp_path):
    ckpt = request.getfixturevalue(f"{name}_ckpt")
    out = tmp_path / "m.packed.safetensors"
    doc = _export(ckpt, out)
    assert [f["path"] for f in doc["files"]] == [str(out)]
    _assert_agree(_fake_quant_predictions(ckpt, mnist), _exported_predictions(out, "packed", mnist),
                  mnist[1].labels)


@pytest.mark.parametrize("fmt", ["packed", "onnx"])
def test_multibit_bit_all_one_file_per_width_each_agrees(fmt, multibit_ckpt, mnist, tmp_path):
    out = tmp_path / ("emq.onnx" if fmt == "onnx" else "emq.packed.safetensors")
    doc = _export(multibit_ckpt, out, "--format", fmt, "--bit", "all")
    assert [(f["w"], f["a"]) for f in doc["files"]] == [(2, 2), (4, 4), (8, 8)]
    for f in doc["files"]:
        assert f"{f['w']}bit" in f["path"]
        with open(f["path"], "rb") as fh:
            assert hashlib.sha256(fh.read()).hexdigest() == f["sha256"]
        ref = _fake_quant_predictions(multibit_ckpt, mnist, Setting(f["w"], f["a"]))
        _assert_agree(ref, _exported_predictions(f["path"], fmt, mnist), mnist[1].labels)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        out.name.replace(out.suffix, f".{b}bit{out.suffix}") for b in (2, 4, 8))


@pytest.mark.parametrize("fmt", ["packed", "onnx"])
@pytest.mark.parametrize("bit", ["fp", "3"])  # untrained widths: their own BN statistics, measured after training
def test_multibit_untrained_width_and_fp_path_with_clipped_float_inputs(fmt, bit, multibit_ckpt, mnist,
                                                                        tmp_path):
    out = tmp_path / ("m.onnx" if fmt == "onnx" else "m.packed.safetensors")
    f = _export(multibit_ckpt, out, "--format", fmt, "--bit", bit)["files"][0]
    assert f["label"] == bit
    w = 32 if bit == "fp" else int(bit)
    ref = _fake_quant_predictions(multibit_ckpt, mnist, Setting(w, w))
    _assert_agree(ref, _exported_predictions(out, fmt, mnist), mnist[1].labels)


def _initializer_types(path) -> dict[str, int]:
    return {t.name: t.data_type for t in onnx.load(str(path)).graph.initializer}


def test_onnx_types_int4_at_4_bits_int8_and_clip_elsewhere(multibit_ckpt, mixed_ckpt, tmp_path):
    T = onnx.TensorProto
    doc = _export(multibit_ckpt, tmp_path / "m.onnx", "--format", "onnx", "--bit", "4")
    types = _initializer_types(doc["files"][0]["path"])
    assert types["conv2.weight.codes"] == T.UINT4 and types["fc1.weight.codes"] == T.UINT4
    assert types["conv2.input.zero_point"] == T.UINT4
    ops = [n.op_type for n in onnx.load(doc["files"][0]["path"]).graph.node]
    assert ops.count("QuantizeLinear") == 2 and "Clip" not in ops

    doc = _export(mixed_ckpt, tmp_path / "mixed.onnx", "--format", "onnx")
    model = onnx.load(doc["files"][0]["path"])
    onnx.checker.check_model(model, full_check=True)
    types = {t.name: t.data_type for t in model.graph.initializer}
    assert types["conv2.weight.codes"] == T.INT8 and types["conv2.input.zero_point"] == T.UINT4
    assert types["fc1.weight.codes"] == T.INT8 and types["fc1.input.zero_point"] == T.UINT8
    clips = [n for n in model.graph.node if n.op_type == "Clip"]
    assert [c.name for c in clips] == ["fc1.input.clip"]  # 6-bit input in a uint8 container
    props = {p.key: p.value for p in model.metadata_props}
    assert props["mbq.format"] == "onnx" and json.loads(props["mbq.bit_scheme"])["conv2"] == {"w": 3, "a": 4}


def test_onnx_agrees_at_mixed_scheme(mixed_ckpt, mnist, tmp_path):
    doc = _export(mixed_ckpt, tmp_path / "mixed.onnx", "--format", "onnx")
    _assert_agree(_fake_quant_predictions(mixed_ckpt, mnist),
                  _exported_predictions(doc["files"][0]["path"], "onnx", mnist), mnist[1].labels)


def _eval_json(path, *args):
    res = CliRunner().invoke(app, ["eval", str(path), "--limit", str(N_TEST), "--json", "--quiet",
                                   "--device", "cpu", *args])
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout)


def test_cli_eval_of_exports_matches_checkpoint(qat_ckpt, tmp_path):
    ref = _eval_json(qat_ckpt)
    for fmt, name in (("packed", "q.packed.safetensors"), ("onnx", "q.onnx")):
        doc = _export(qat_ckpt, tmp_path / name, "--format", fmt)
        f = doc["files"][0]
        assert f["size"] < f["checkpoint_size"] / 5 and f["theoretical_bytes"] < f["float_weight_bytes"] / 4
        got = _eval_json(f["path"])
        assert got["label"] == "4" and got["n"] == ref["n"]
        assert abs(got["top1"] - ref["top1"]) <= 0.1 and abs(got["compression"] - ref["compression"]) < 1e-9
    assert _run_main(["eval", tmp_path / "q.onnx", "--bit", "2"]) == 2


def test_packed_file_reads_with_numpy_and_safetensors_alone(lsq_ckpt, tmp_path):
    from mbq.core.export.packed import read_packed

    out = tmp_path / "lsq.packed.safetensors"
    _export(lsq_ckpt, out)
    res = subprocess.run([sys.executable, "-c", NUMPY_READER, str(out)], capture_output=True,
                         text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    got = json.loads(res.stdout)
    plan, _ = read_packed(out)
    assert set(got) == set(plan.layers) == {"conv1", "conv2", "fc1", "fc2"}
    for name, p in plan.layers.items():
        w = p.codes.dequantize() if p.codes is not None else p.weight
        assert got[name]["shape"] == list(w.shape)
        assert got[name]["sum"] == pytest.approx(float(w.sum()), rel=1e-5, abs=1e-5)
        assert got[name]["abs"] == pytest.approx(float(w.abs().sum()), rel=1e-5)


# the reader docs/export.md shows; torch and mbq are blocked to prove they are not needed
NUMPY_READER = r"""
import json, sys
sys.modules["torch"] = None
sys.modules["mbq"] = None
import numpy as np
from safetensors import safe_open
from safetensors.numpy import load_file

def unpack(buf, bits, numel, signed):
    stream = np.unpackbits(buf, bitorder="little")[: numel * bits].reshape(numel, bits)
    q = (stream.astype(np.int64) << np.arange(bits)).sum(1)
    return np.where(q >= 1 << (bits - 1), q - (1 << bits), q) if signed else q

path = sys.argv[1]
with safe_open(path, framework="numpy") as f:
    meta = f.metadata()
t = load_file(path)
out = {}
for name, L in json.loads(meta["mbq.packed"])["layers"].items():
    shape = L["shape"]
    if L["w_bits"] <= 8:
        q = unpack(t[name + ".weight.codes"], L["w_bits"], L["numel"], L["signed"]).reshape(shape)
        c = (-1,) + (1,) * (len(shape) - 1)
        w = t[name + ".weight.scale"].reshape(c) * (q - t[name + ".weight.zero_point"].reshape(c))
    else:
        w = t[name + ".weight"]
    out[name] = {"shape": list(w.shape), "sum": float(w.sum()), "abs": float(np.abs(w).sum())}
print(json.dumps(out))
"""


# --- bad input ------------------------------------------------------------------------------

def _run_main(args):
    """Through mbq.cli.app.main, which maps MbqError to one line and exit 2."""
    from mbq.cli.app import main

    with pytest.raises(SystemExit) as e:
        main(list(map(str, args)))
    return e.value.code


def test_bad_input_exit_2_nothing_written(qat_ckpt, multibit_ckpt, tmp_path, capsys, monkeypatch):
    out = tmp_path / "x.packed.safetensors"
    cases = [
        ([qat_ckpt, "--format", "tflite", "--out", out], "unknown --format tflite"),
        ([multibit_ckpt, "--bit", "16", "--out", out], "--bit 16 is not available"),
        ([multibit_ckpt, "--out", out], "choose one with --bit N"),
        ([qat_ckpt, "--bit", "9", "--out", out], "--bit must be a bit-width"),
        ([qat_ckpt, "--out", tmp_path / "missing" / "x.safetensors"], "does not exist"),
        ([qat_ckpt, "--format", "onnx", "--out", tmp_path / "x.safetensors"], "must end in .onnx"),
        ([qat_ckpt, "--out", qat_ckpt, "--force"], "would overwrite the checkpoint"),
    ]
    for args, match in cases:
        assert _run_main(["export", *args]) == 2
        err = capsys.readouterr().err
        assert match in err and err.count("\n") == 1, err
    assert list(tmp_path.iterdir()) == []

    out.write_bytes(b"keep")  # an existing output survives without --force
    assert _run_main(["export", qat_ckpt, "--out", out]) == 2
    assert "--force" in capsys.readouterr().err and out.read_bytes() == b"keep"
    assert _run_main(["export", qat_ckpt, "--out", out, "--force", "--quiet"]) == 0
    assert out.read_bytes() != b"keep"


def test_missing_export_extra_names_the_package(qat_ckpt, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx", None)
    assert _run_main(["export", qat_ckpt, "--format", "onnx", "--out", tmp_path / "m.onnx"]) == 2
    assert "'onnx' package" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    (tmp_path / "m.onnx").write_bytes(b"")
    assert _run_main(["eval", tmp_path / "m.onnx"]) == 2
    assert "'onnxruntime' package" in capsys.readouterr().err


def test_failure_mid_bit_all_leaves_no_file(multibit_ckpt, tmp_path, monkeypatch):
    import mbq.core.export.packed as packed

    real, calls = packed.write_packed, []

    def flaky(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise OSError("disk full")
        return real(*a, **k)

    monkeypatch.setattr(packed, "write_packed", flaky)
    res = CliRunner().invoke(app, ["export", str(multibit_ckpt), "--bit", "all", "--quiet",
                                   "--out", str(tmp_path / "m.packed.safetensors")])
    assert res.exit_code != 0 and len(calls) == 2
    assert list(tmp_path.iterdir()) == []


def test_export_help_does_not_import_torch():
    code = ("import sys; from typer.testing import CliRunner; from mbq.cli.app import app; "
            "r = CliRunner().invoke(app, ['export', '--help']); assert r.exit_code == 0, r.output; "
            "assert '--format' in r.output; assert 'torch' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_pact_fp_float_input_is_a_clip_to_alpha():
    """EMQ's FP path under PACT clips to [0, alpha]; export must read it as such a clip."""
    import torch

    from mbq.core.export.codes import _float_input
    from mbq.core.quant.quantizers import PACTAct, PACTActFP

    aq = PACTActFP(init_alpha=1.5)
    codes = _float_input("layer", aq, 32)
    assert codes is not None and codes.lo * codes.scale == 0.0 and codes.hi * codes.scale == 1.5
    assert _float_input("layer", PACTAct(), 32) is None  # plain PACT passes float inputs unchanged
    x = torch.tensor([-1.0, 0.5, 2.0])
    assert torch.equal(aq(x, 32), torch.tensor([0.0, 0.5, 1.5]))


def test_width_scaled_pact_exports_each_widths_own_clip():
    """pact_width clips a b-bit width at alpha * r(b); the codes' scale must follow it."""
    from mbq.core.export.codes import _float_input
    from mbq.core.quant import functional as F
    from mbq.core.quant.quantizers import PACTWidthActFP

    aq = PACTWidthActFP(init_alpha=4.0)
    assert float(aq.clip(2).detach()) == pytest.approx(4.0 * F.width_clip_ratio(2))
    codes = _float_input("layer", aq, 32)  # FP path: clipped at alpha itself
    assert codes is not None and codes.hi * codes.scale == 4.0


@pytest.mark.parametrize("fmt", ["packed", "onnx"])
def test_signed_inputs_export_as_symmetric_codes(fmt, signed_ckpt, mnist, tmp_path):
    from mbq.core.export.codes import act_codes_params

    model, _ = load_checkpoint(signed_ckpt)
    assert [n for n, m in model.named_modules() if getattr(m, "signed", False)] == ["conv1.act_quant"]
    a1, a2 = act_codes_params("conv1", model.conv1), act_codes_params("conv2", model.conv2)
    assert (a1.lo, a1.hi, a2.lo, a2.hi) == (-127, 127, 0, 15)
    out = tmp_path / ("s.onnx" if fmt == "onnx" else "s.packed.safetensors")
    _export(signed_ckpt, out, "--format", fmt)
    _assert_agree(_fake_quant_predictions(signed_ckpt, mnist), _exported_predictions(out, fmt, mnist),
                  mnist[1].labels)
