"""EMQ: weight bias correction, shared BN at untrained widths, coreset resume, bad input."""
from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from mbq.cli.app import app, main

runner = CliRunner()
SMALL = ["--no-health-check", "--arch", "cnn", "--train-subset", "512", "--val-size", "0", "--batch-size", "64",
         "--optimizer", "adam", "--lr", "0.003", "--device", "cpu", "--quiet"]


@pytest.fixture(scope="module")
def small_test_set():
    """The final test of a training run uses 500 test images (speed only)."""
    from mbq.core import engine

    orig = engine.load_data

    def load(cfg, device):
        train, val, test = orig(cfg, device)
        return train, val, test.subset(torch.arange(500))

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(engine, "load_data", load)
        yield


def _train(out, *args):
    res = runner.invoke(app, ["train", "--out", str(out), "--json", *SMALL, *args])
    assert res.exit_code == 0, f"{res.output}\n{res.exception!r}"
    return json.loads(res.stdout)


def _main(capsys, args):
    """Run the real entry point; (exit code, stdout, stderr)."""
    with pytest.raises(SystemExit) as e:
        main(args)
    cap = capsys.readouterr()
    return e.value.code, cap.out, cap.err


@pytest.fixture(scope="module")
def emq_ckpt(tmp_path_factory, small_test_set):
    out = tmp_path_factory.mktemp("emq") / "emq.safetensors"
    doc = _train(out, "--method", "emq", "--bits", "2,4", "--epochs", "2", "--coreset-fraction", "0.5",
                 "--eval-bits", "trained", "--seed", "3")
    return out, doc


def test_info_shows_the_coreset_settings(emq_ckpt, capsys):
    code, out, _ = _main(capsys, ["info", str(emq_ckpt[0])])
    assert code == 0
    line = next(ln for ln in out.splitlines() if ln.strip().startswith("coreset"))
    assert "fraction=0.5" in line and "warmup_data=subset" in line and "child_loss=sum" in line


# --- weight bias correction ----------------------------------------------------------------

def _channel_stats(w):
    w = w.detach().reshape(w.shape[0], -1)
    return w.mean(1), w.std(1, unbiased=False)


@pytest.mark.parametrize("per_channel", [True, False])
def test_wbc_matches_fp_path_statistics(per_channel):
    from mbq.core.config import TrainConfig
    from mbq.core.methods import create_method
    from mbq.core.quant import quantized_layers

    def build(wbc):
        cfg = TrainConfig(method="emq", bits=[2, 4, 8], model={"arch": "resnet20", "num_classes": 10,
                          "in_channels": 1, "image_size": 28, "kwargs": {"width": 0.25}},
                          options={"wbc": wbc, "wbc_per_channel": per_channel})
        torch.manual_seed(0)
        return create_method(cfg).build_model()

    model, plain = build(True), build(False)
    layers = quantized_layers(model, include_pinned=False)
    assert len(layers) >= 18
    for (name, m), (_, p) in zip(layers, quantized_layers(plain, include_pinned=False)):
        ref = m.reference_weight()
        for b in range(1, 9):
            wq = m.quantized_weight(b)
            if per_channel:
                (mq, sq), (mr, sr) = _channel_stats(wq), _channel_stats(ref)
                # a channel whose codes are all equal (tiny fan-in at 1 bit) has no spread
                # to rescale: WBC can only move its mean
                ok = _channel_stats(m.weight_quant(m.weight, b))[1] > 0
                sq, sr = sq[ok], sr[ok]
            else:
                mq, sq, mr, sr = wq.mean(), wq.std(unbiased=False), ref.mean(), ref.std(unbiased=False)
            assert torch.allclose(mq, mr, atol=1e-6), (name, b)
            assert torch.allclose(sq, sr, rtol=1e-4, atol=1e-7), (name, b)
        # without WBC the 1-bit child's spread is far from the FP path's (what WBC removes)
        ratio = _channel_stats(p.quantized_weight(1))[1] / _channel_stats(p.reference_weight())[1]
        assert ratio.mean() > 1.5, name


def test_wbc_detach_treats_the_statistics_as_constants():
    from mbq.core.quant import functional as F

    torch.manual_seed(0)
    w = torch.randn(4, 9, requires_grad=True)
    probe = torch.randn(4, 9)
    grads = {}
    for detach in (False, True):
        w.grad = None
        q = F.weight_bias_correction(F.dorefa_weight(w, 2, "tanh"), F.dorefa_weight(w, 32, "tanh"),
                                     True, detach)
        (q * probe).sum().backward()
        grads[detach] = w.grad.clone()
    assert grads[False].abs().sum() > 0 and grads[True].abs().sum() > 0
    assert not torch.allclose(grads[False], grads[True])


def test_fp_path_activations_share_the_quantized_range_by_default():
    from mbq.core.config import TrainConfig
    from mbq.core.methods import create_method
    from mbq.core.quant import quantized_layers

    x = torch.linspace(-1, 3, 9)
    for fp_act, top in (("clamp", 1.0), ("identity", 3.0)):
        cfg = TrainConfig(method="emq", bits=[2, 4], model={"arch": "cnn", "num_classes": 10,
                          "in_channels": 1, "image_size": 28}, options={"fp_act": fp_act})
        _, layer = quantized_layers(create_method(cfg).build_model(), include_pinned=False)[0]
        assert layer.act_quant(x, 32).max().item() == top
        assert layer.act_quant(x, 32).min().item() == (0.0 if fp_act == "clamp" else -1.0)
        assert layer.act_quant(x, 2).max().item() == 1.0  # quantized widths clamp either way


def test_emq_with_pact_width_clips_fp_at_alpha_and_each_width_at_its_ratio():
    from mbq.cli.train import resolve_config
    from mbq.core.methods import create_method
    from mbq.core.quant import functional as F
    from mbq.core.quant import quantized_layers
    from mbq.core.quant.quantizers import PACTWidthActFP

    cfg = resolve_config(["--method", "emq", "--arch", "cnn", "--bits", "2,4,8", "--act-quantizer", "pact_width"])
    cfg.model.num_classes, cfg.model.in_channels, cfg.model.image_size = 10, 1, 28  # the dataset's
    _, layer = quantized_layers(create_method(cfg).build_model(), include_pinned=False)[0]
    aq = layer.act_quant
    assert isinstance(aq, PACTWidthActFP)
    x = torch.linspace(-1, 20, 50)
    with torch.no_grad():
        alpha = float(aq.alpha)
        assert aq(x, 32).max().item() == pytest.approx(alpha)
        for bits in (2, 3, 8):
            assert aq(x, bits).max().item() == pytest.approx(alpha * F.width_clip_ratio(bits), rel=1e-6)


# --- shared BN: every width without calibration --------------------------------------------

def test_emq_checkpoint_has_shared_bn_and_evaluates_every_width(emq_ckpt, capsys):
    from mbq.core.checkpoint import load_checkpoint
    from mbq.core.quant import SwitchableBatchNorm2d

    path, doc = emq_ckpt
    assert set(doc["top1"]) == {"2", "4"}
    model, meta = load_checkpoint(path)
    assert meta["mbq.bits"] == [2, 4] and meta["mbq.method"] == "emq"
    assert not any(isinstance(m, SwitchableBatchNorm2d) for m in model.modules())
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(bns) == 2  # one BN per BN site: one affine for every width
    # statistics per width (default): the trained ones from training, every other one measured
    # at the end of training
    assert all(m.tracked_widths == [1, 2, 3, 4, 5, 6, 7, 8, 16, 32] for m in bns)
    assert json.loads(meta["mbq.coreset"])["fraction"] == 0.5
    assert json.loads(meta["mbq.coreset"])["untrained_bn_images"] == 512

    code, out, err = _main(capsys, ["eval", str(path), "--bits", "all", "--limit", "500", "--json",
                                    "--device", "cpu"])
    assert code == 0, err
    rows = {r["label"]: r for r in json.loads(out)["results"]}
    assert list(rows) == ["1", "2", "3", "4", "5", "6", "7", "8", "fp"]
    assert "note" not in err  # no calibration, nothing to announce
    assert all(r["recalibrated_bn"] is None for r in rows.values())
    top = {k: r["top1"] for k, r in rows.items()}
    assert top["2"] > 40 and top["4"] > 40, top  # it learned (chance is ~10)
    for w in ("3", "5", "6", "7", "8", "fp"):  # untrained widths, straight from the checkpoint
        assert top[w] >= min(top["2"], top["4"]) - 5, top

    code, out, _ = _main(capsys, ["eval", str(path), "--bit", "3", "--limit", "500", "--json",
                                  "--device", "cpu"])
    assert code == 0 and json.loads(out)["top1"] == top["3"]


def test_eval_recalibrates_only_the_extrapolated_widths_when_asked(emq_ckpt, capsys):
    path, _ = emq_ckpt  # trained at 2 and 4: 1, 5..8 and FP lie outside, 3 between
    base = ["eval", str(path), "--bits", "1,2,3,5,fp", "--limit", "300", "--json", "--device", "cpu"]
    code, out, err = _main(capsys, base + ["--recalibrate-bn", "2", "--recalibrate-widths", "extrapolated"])
    assert code == 0, err
    rows = {r["label"]: r for r in json.loads(out)["results"]}
    assert {k: r["recalibrated_bn"] for k, r in rows.items()} == {"1": 2, "2": None, "3": None, "5": 2, "fp": 2}
    code, out, _ = _main(capsys, base)
    plain = {r["label"]: r["top1"] for r in json.loads(out)["results"]}
    assert rows["2"]["top1"] == plain["2"] and rows["3"]["top1"] == plain["3"]  # untouched: the checkpoint's
    code, out, _ = _main(capsys, base + ["--recalibrate-bn", "2"])
    every = {r["label"]: r for r in json.loads(out)["results"]}
    assert all(r["recalibrated_bn"] == 2 for r in every.values())
    assert every["1"]["top1"] == rows["1"]["top1"]  # the same batches either way


def test_eval_recalibrates_every_untrained_width_when_asked(emq_ckpt, capsys):
    # interpolated widths' data-free statistics can fail (resnet20, 5 000 images, seed 1: 3 bits
    # 63.90, recalibrated 95.66); this re-estimates them and leaves the trained widths alone
    path, _ = emq_ckpt  # trained at 2 and 4
    base = ["eval", str(path), "--bits", "1,2,3,4,5,fp", "--limit", "300", "--json", "--device", "cpu"]
    code, out, err = _main(capsys, base + ["--recalibrate-bn", "2", "--recalibrate-widths", "untrained"])
    assert code == 0, err
    rows = {r["label"]: r for r in json.loads(out)["results"]}
    assert {k: r["recalibrated_bn"] for k, r in rows.items()} == {"1": 2, "2": None, "3": 2, "4": None,
                                                                  "5": 2, "fp": 2}
    code, out, _ = _main(capsys, base)
    plain = {r["label"]: r["top1"] for r in json.loads(out)["results"]}
    assert rows["2"]["top1"] == plain["2"] and rows["4"]["top1"] == plain["4"]


def test_untrained_widths_statistics_are_measured_after_training_without_changing_the_model(tmp_path):
    from mbq.core.checkpoint import load_checkpoint
    from mbq.core.quant import WidthStatsBatchNorm2d

    from mbq.cli.train import resolve_config
    from mbq.core.engine import train
    from mbq.core.methods import create_method

    args = ["--method", "emq", "--bits", "2,4", "--epochs", "1", "--coreset-fraction", "0.5", "--seed", "5"]
    cfg = resolve_config(["--out", str(tmp_path / "m.safetensors"), *SMALL, *args])
    events = []
    train(cfg, create_method(cfg), lambda event, **d: events.append((event, d.get("message", ""))))
    names = [e for e, _ in events]
    measuring = next(i for i, (e, m) in enumerate(events) if "measuring BatchNorm statistics" in m)
    # measured after the last epoch, inside training's time (benchmarks stop their clocks at "trained")
    assert names.index("epoch") < measuring < names.index("trained") < names.index("done")
    assert "every width" in events[measuring][1]
    _train(tmp_path / "i.safetensors", *args, "--untrained-bn-images", "0")
    _train(tmp_path / "u.safetensors", *args, "--final-bn", "untrained")
    measured, meta = load_checkpoint(tmp_path / "m.safetensors")
    interp, meta0 = load_checkpoint(tmp_path / "i.safetensors")
    untrained, meta_u = load_checkpoint(tmp_path / "u.safetensors")
    assert json.loads(meta0["mbq.coreset"])["untrained_bn_images"] == 0
    assert json.loads(meta["mbq.coreset"])["final_bn"] == "all"
    assert json.loads(meta_u["mbq.coreset"])["final_bn"] == "untrained"
    pm, pi = dict(measured.named_parameters()), dict(interp.named_parameters())
    pu = dict(untrained.named_parameters())
    assert all(torch.equal(pm[k], pi[k]) and torch.equal(pm[k], pu[k]) for k in pm)  # forward passes only
    bm, bi, bu = ([m for m in net.modules() if isinstance(m, WidthStatsBatchNorm2d)]
                  for net in (measured, interp, untrained))
    assert bm and all(m.tracked_widths == [2, 4] for m in bi)  # 0: interpolated, as the paper
    assert all(m.tracked_widths == [1, 2, 3, 4, 5, 6, 7, 8, 16, 32] for m in bm + bu)
    for a, b, u in zip(bm, bi, bu):
        for w in (2, 4):
            # untrained: the trained widths keep training's running averages; all: re-measured
            assert all(torch.equal(x, y) for x, y in zip(u.width_statistics(w), b.width_statistics(w)))
            assert not torch.equal(a.width_statistics(w)[0], b.width_statistics(w)[0])
        m3, v3 = a.width_statistics(3)
        assert torch.equal(m3, u.width_statistics(3)[0])  # the same images either way
        assert not torch.equal(m3, b.width_statistics(3)[0]) and bool((v3 > 0).all())


def test_untrained_bn_images_bad_input(capsys):
    code, out, err = _main(capsys, ["train", "--method", "emq", "--untrained-bn-images", "-1", "--epochs", "1"])
    assert code == 2 and out == "" and "untrained" in err and len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize("args, msg", [(["--recalibrate-widths", "extrapolated"], "needs --recalibrate-bn"),
                                       (["--recalibrate-bn", "2", "--recalibrate-widths", "some"],
                                        "all, untrained or extrapolated")])
def test_eval_recalibrate_widths_bad_input(emq_ckpt, capsys, args, msg):
    code, out, err = _main(capsys, ["eval", str(emq_ckpt[0]), "--bit", "3", "--device", "cpu", *args])
    assert code == 2 and out == "" and msg in err and len(err.strip().splitlines()) == 1, err


# --- coreset state across --resume ------------------------------------------------------------

class _StopAfter:
    def __init__(self, epochs):
        self.left = epochs

    def __call__(self, event, **data):
        if event == "epoch":
            self.left -= 1
            if self.left == 0:
                raise KeyboardInterrupt


def _cfg(out, **kw):
    from mbq.core.config import TrainConfig

    return TrainConfig(method="emq", bits=[2, 4], epochs=3, out=out, device="cpu", seed=5,
                       data={"train_subset": 256, "val_size": 0, "batch_size": 64},
                       model={"arch": "cnn"}, optim={"optimizer": "adam", "lr": 0.003},
                       options={"coreset_fraction": 0.25, "eval_bits": "trained"}, **kw)


def _run(cfg, report=None):
    from mbq.core.engine import train
    from mbq.core.methods import create_method

    method = create_method(cfg)
    train(cfg, method, report or (lambda *a, **k: None))
    return method


def test_resume_mid_run_reproduces_the_coreset_draws(tmp_path, small_test_set):
    from mbq.core.checkpoint import read_checkpoint

    full = _run(_cfg(tmp_path / "a.safetensors"))
    b_out = tmp_path / "b.safetensors"
    with pytest.raises(KeyboardInterrupt):
        _run(_cfg(b_out), _StopAfter(2))  # warm-up epoch + first coreset epoch, then "Ctrl-C"
    saved = torch.load(b_out.with_name("b.state.pt"), weights_only=True)["method"]["coreset"]
    assert saved["subset_epoch"] == 1 and set(saved["scores"]) == {"2", "4"}
    resumed = _run(_cfg(b_out, resume=True))

    a, b = full.coreset, resumed.coreset
    assert b.subset_epoch == a.subset_epoch == 2
    for bit in (2, 4):
        assert torch.equal(a.scores[bit], b.scores[bit])
        assert torch.equal(a.subsets[bit], b.subsets[bit])
        assert a.subsets[bit].numel() == 64
    assert not torch.equal(a.subsets[2], a.subsets[4])  # each width draws its own subset
    ta, _ = read_checkpoint(tmp_path / "a.safetensors")
    tb, _ = read_checkpoint(b_out)
    assert all(torch.equal(ta[k], tb[k]) for k in ta)  # the whole run is reproduced
    lines = [json.loads(s) for s in b_out.with_name("b.metrics.jsonl").read_text().splitlines()]
    assert [m["coreset_size"] for m in lines] == [64, 64, 64]  # warm-up on random subsets


def test_full_data_warmup_trains_on_everything_first(tmp_path, small_test_set):
    out = tmp_path / "f.safetensors"
    cfg = _cfg(out)
    cfg.options["coreset_warmup_data"] = "full"
    _run(cfg)
    lines = [json.loads(s) for s in out.with_name("f.metrics.jsonl").read_text().splitlines()]
    assert [m["coreset_size"] for m in lines] == [256, 64, 64]


def test_warmup_subsets_are_uniform_per_width_and_seeded():
    from mbq.core.coreset.bitwise import BitwiseCoreset

    def make():
        return BitwiseCoreset([2, 4], 1000, fraction=0.2, score="el2n", sampling="weighted", seed=3,
                              warmup=2, warmup_data="subset")

    a, b = make(), make()
    d0, d1 = a.draw(0), a.draw(1)
    assert all(d0[w].numel() == 200 and d0[w].unique().numel() == 200 for w in (2, 4))
    assert not torch.equal(d0[2], d0[4]) and not torch.equal(d0[2], d1[2])
    assert all(torch.equal(d0[w], b.draw(0)[w]) for w in (2, 4))
    assert not a.needs_scores(1) and a.needs_scores(2)  # scored once the warm-up ends


def test_random_sampling_skips_the_scoring_pass():
    from mbq.core.coreset.bitwise import BitwiseCoreset

    cs = BitwiseCoreset([2, 4], 1000, fraction=0.2, score="el2n", sampling="random", seed=3,
                        warmup=1, warmup_data="subset")
    assert not any(cs.needs_scores(e) for e in range(4))
    d1, d2 = cs.draw(1), cs.draw(2)
    assert all(d1[w].numel() == 200 for w in (2, 4)) and not torch.equal(d1[2], d2[2])
    assert not cs.scores


def _emq_step_setup(**options):
    """An EMQ method at bits {2,4} on a fresh cnn, and the slice of the engine context train_step uses."""
    import contextlib

    from mbq.core.config import TrainConfig
    from mbq.core.methods import create_method
    from mbq.core.models import create_model
    from mbq.core.quant import quantize_model

    cfg = TrainConfig(method="emq", bits=[2, 4], model={"arch": "cnn"},
                      options=dict(options, coreset_fraction=1.0))
    method = create_method(cfg)
    torch.manual_seed(0)
    model = quantize_model(create_model("cnn"), method.quant_config())
    method.coreset = type("C", (), {"observe": lambda *a: None})()

    class Ctx:
        def autocast(self):
            return contextlib.nullcontext()

        def backward(self, loss):
            loss.backward()

    ctx = Ctx()
    ctx.model = model
    return method, model, ctx


@pytest.mark.parametrize("mode, factor", [("mean", 0.5), ("sum", 1.0)])
def test_child_loss_mean_divides_the_summed_gradient(mode, factor):
    from mbq.core.data import Batch

    method, model, ctx = _emq_step_setup(child_loss=mode)
    x, y = torch.rand(8, 1, 28, 28), torch.randint(0, 10, (8,))
    batch = Batch(x, y, torch.arange(8))
    method.train_step(ctx, {2: batch, 4: batch})
    got = [p.grad.clone() for p in model.parameters() if p.grad is not None]
    model.zero_grad()
    for b in (4, 2):  # the plain sum of both widths' cross-entropies
        from mbq.core.quant import set_bits
        set_bits(model, b, b)
        torch.nn.functional.cross_entropy(model(x), y).backward()
    want = [p.grad for p in model.parameters() if p.grad is not None]
    assert all(torch.allclose(g, factor * w, atol=1e-6) for g, w in zip(got, want))


@pytest.mark.parametrize("mode", ["batch", "top"])
def test_bn_stats_top_lets_only_the_highest_width_move_the_running_statistics(mode):
    from mbq.core.data import Batch

    method, model, ctx = _emq_step_setup(bn_stats=mode)
    model.train()
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    hi, lo = (Batch(torch.rand(8, 1, 28, 28), torch.randint(0, 10, (8,)), torch.arange(8)) for _ in range(2))
    seen = []
    hook = bns[0].register_forward_pre_hook(lambda m, a: seen.append((m.training, m.running_mean.clone())))
    method.train_step(ctx, {4: hi, 2: lo})
    hook.remove()
    after = bns[0].running_mean.clone()
    assert seen[0][0] and all(m.training for m in bns)  # width 4 (the top) in batch mode; mode restored
    if mode == "top":  # width 2 normalised with, and left alone, the statistics width 4 set
        assert not seen[1][0] and torch.equal(after, seen[1][1])
    else:
        assert seen[1][0] and not torch.equal(after, seen[1][1])



def test_bn_stats_per_width_tracks_each_width_under_one_affine():
    from mbq.core.data import Batch
    from mbq.core.quant import WidthStatsBatchNorm2d

    method, model, ctx = _emq_step_setup(bn_stats="per-width")
    model.train()
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and all(isinstance(m, WidthStatsBatchNorm2d) for m in bns)
    hi = Batch(torch.rand(8, 1, 28, 28), torch.randint(0, 10, (8,)), torch.arange(8))
    lo = Batch(torch.rand(8, 1, 28, 28) * 3, torch.randint(0, 10, (8,)), torch.arange(8))
    method.train_step(ctx, {4: hi, 2: lo})
    assert all(m.tracked_widths == [2, 4] for m in bns)
    first = bns[0]
    assert not torch.allclose(first.width_statistics(2)[0], first.width_statistics(4)[0])
    assert first.weight.grad is not None  # the one affine learns from both widths


# --- bad input ----------------------------------------------------------------------------------

@pytest.mark.parametrize("args, msg", [
    (["--method", "emq", "--bits", "2,2"], "twice"),
    (["--method", "emq", "--bits", ""], "comma-separated"),
    (["--method", "emq", "--bits", "1,2", "--quantizer", "roundclamp"], "no 1-bit form"),
    (["--method", "anyprec", "--bits", "1,4", "--quantizer", "lsq"], "no 1-bit form"),
    (["--method", "emq", "--bits", "2,4", "--coreset-fraction", "0"], "(0, 1]"),
    (["--method", "emq", "--bits", "2,4", "--coreset-fraction", "1.5"], "(0, 1]"),
    (["--method", "emq", "--bits", "2,4", "--kd", "teacher"], "kd"),
    (["--method", "emq", "--bits", "2,4", "--coreset-uniform-mix", "-0.1"], "uniform-mix"),
    (["--method", "emq", "--bits", "2,4", "--coreset-sampling", "stratify"], "sampling"),
    (["--method", "emq", "--bits", "2,4", "--eval-bits", "3,3"], "twice"),
])
def test_train_bad_input_is_one_line_exit_2(tmp_path, capsys, args, msg):
    code, out, err = _main(capsys, ["train", "--out", str(tmp_path / "x.safetensors"), *SMALL, *args])
    assert code == 2 and out == ""
    assert msg in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize("bit", ["0", "9", "12", "64"])
def test_eval_bit_outside_valid_widths_is_exit_2(emq_ckpt, capsys, bit):
    code, out, err = _main(capsys, ["eval", str(emq_ckpt[0]), "--bit", bit, "--device", "cpu"])
    assert code == 2 and out == "" and "not supported" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("args, lr, wd", [([], 0.4472 * 26 / 128, 2.5e-3), (["--lr", "0.05"], 0.05, 2.5e-3),
                                          (["--optimizer", "adamw"], 1e-3 * (26 / 128) ** 0.5, None),
                                          (["--weight-decay", "1e-4"], 0.4472 * 26 / 128, 1e-4)])
def test_emq_optimizer_defaults_go_with_sgd(args, lr, wd):
    """At 10 epochs the default fraction is 0.2: SGD at 0.2 / sqrt(0.2) per 128 images, scaled to
    the 26-image child batch, decay 5e-4 / 0.2; an Adam run gets Adam's own 1e-3."""
    from mbq.cli.train import build_config
    from mbq.core.config import OptimConfig

    values = {"method": "emq", "bits": "2,4,8",
              **{a.lstrip("-").replace("-", "_"): v for a, v in zip(args[::2], args[1::2])}}
    explicit = {a.lstrip("-").replace("-", "_") for a in args[::2]} | {"method", "bits"}
    cfg = build_config(values, explicit, {}, [])
    assert cfg.optim.lr == pytest.approx(lr, rel=1e-3)
    assert cfg.optim.weight_decay == pytest.approx(wd if wd is not None else OptimConfig().weight_decay)
    assert cfg.optim.warmup_fraction == 0.05


def test_each_epoch_validates_the_trained_widths_unless_eval_bits_names_others(tmp_path):
    # the untrained widths have no statistics of their own until training's end
    from mbq.cli.train import resolve_config
    from mbq.core.engine import train
    from mbq.core.methods import create_method

    small = [a for a in SMALL]
    small[small.index("--val-size") + 1] = "128"
    seen = {}
    for name, extra in (("all", []), ("2,3,4", ["--eval-bits", "2,3,4"]),
                        ("interpolated", ["--untrained-bn-images", "0"])):
        cfg = resolve_config(["--out", str(tmp_path / f"{name}.safetensors"), *small, "--method", "emq",
                              "--bits", "2,4", "--epochs", "1", "--coreset-fraction", "0.5", *extra])
        events = []
        result = train(cfg, create_method(cfg), lambda event, **d: events.append((event, d)))
        seen[name] = next(d for e, d in events if e == "epoch")["val_top1"]
        if name == "all":
            assert len(result["top1"]) == 9  # the final test still covers every width
    assert list(seen["all"]) == ["4", "2"]
    assert list(seen["2,3,4"]) == ["4", "2", "3"]
    # no measurement at the end: the interpolated statistics are the ones served, so validate them
    assert len(seen["interpolated"]) == 9
