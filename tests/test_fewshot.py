"""Few-shot: class splits, the episode sampler, ProtoNet/FOMAML pieces, the CI,
and tiny train/eval round trips (MNIST and an imagefolder laid out by class)."""
import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from mbq.cli.app import app
from mbq.core.errors import MbqError
from mbq.core.fewshot import maml
from mbq.core.fewshot.classes import parse_classes, split_classes
from mbq.core.fewshot.episodes import EpisodeData, EpisodeSampler, generator
from mbq.core.fewshot.evaluate import mean_ci95
from mbq.core.fewshot.protonet import proto_logits, prototypes

TINY = ["--no-health-check", "--arch", "cnn", "--train-subset", "600", "--val-size", "0", "--epochs", "1",
        "--episodes-per-epoch", "4", "--test-episodes", "3", "--device", "cpu", "--seed", "2",
        "--quiet", "--json"]


def run_main(args, capsys):
    from mbq.cli.app import main

    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        main([str(a) for a in args])
    return e.value.code, capsys.readouterr().err


# --- pieces -------------------------------------------------------------------------------------

def test_class_splits_are_disjoint_and_default_to_mnist_0_5_6_9():
    assert split_classes(10, None, None) == ([0, 1, 2, 3, 4, 5], [6, 7, 8, 9])
    assert split_classes(10, None, [8, 9]) == ([0, 1, 2, 3, 4, 5, 6, 7], [8, 9])
    assert parse_classes("0-2,7") == [0, 1, 2, 7]
    with pytest.raises(MbqError, match="disjoint"):
        split_classes(10, [0, 1, 2, 3, 4, 5], [5, 6])
    with pytest.raises(MbqError, match="does not exist"):
        split_classes(10, [0, 1], [10])
    with pytest.raises(ValueError):
        parse_classes("3-1")


def test_episode_sampler_shapes_labels_and_determinism():
    labels = torch.arange(10).repeat_interleave(20)
    s = EpisodeSampler(labels, [6, 7, 8, 9], ways=3, shots=2, queries=5)
    ep = s.sample(generator(0, "t"))
    assert ep.support.shape == (6,) and ep.query.shape == (15,)
    assert ep.support_y.tolist() == [0, 0, 1, 1, 2, 2] and ep.query_y.tolist() == [0] * 5 + [1] * 5 + [2] * 5
    assert not set(ep.support.tolist()) & set(ep.query.tolist())
    classes = labels[ep.support].view(3, 2)
    assert (classes[:, 0] == classes[:, 1]).all() and set(classes[:, 0].tolist()) <= {6, 7, 8, 9}
    assert len(set(classes[:, 0].tolist())) == 3
    assert torch.equal(labels[ep.query].view(3, 5)[:, 0], classes[:, 0])  # same class order
    again = s.sample(generator(0, "t"))
    assert all(torch.equal(a, b) for a, b in zip(ep, again))
    train = EpisodeSampler(labels, [0, 1, 2, 3, 4, 5], 3, 2, 5).sample(generator(0, "t"))
    assert set(labels[train.support].tolist()).isdisjoint({6, 7, 8, 9})
    with pytest.raises(MbqError, match="larger than the 4"):
        EpisodeSampler(labels, [6, 7, 8, 9], ways=5, shots=1, queries=1)
    with pytest.raises(MbqError, match="smallest"):
        EpisodeSampler(labels, [6, 7, 8, 9], ways=2, shots=10, queries=11)


def test_prototypes_and_distance_logits():
    emb = torch.tensor([[0.0, 0.0], [2.0, 0.0], [10.0, 10.0], [12.0, 10.0]])
    protos = prototypes(emb, torch.tensor([0, 0, 1, 1]), 2)
    torch.testing.assert_close(protos, torch.tensor([[1.0, 0.0], [11.0, 10.0]]))
    logits = proto_logits(torch.tensor([[1.0, 1.0], [11.0, 9.0]]), protos)
    assert logits.argmax(1).tolist() == [0, 1]
    torch.testing.assert_close(logits[0, 0], torch.tensor(-1.0))


def test_inner_loop_adapts_weights_but_not_bn_shift():
    torch.manual_seed(0)
    from mbq.core.models import create_model

    model = create_model("cnn", num_classes=3, in_channels=1, image_size=28)
    fast = maml.load_weights(create_model("cnn", num_classes=3, in_channels=1, image_size=28), model)
    ep = EpisodeData(torch.randn(6, 1, 28, 28), torch.tensor([0, 0, 1, 1, 2, 2]),
                     torch.randn(3, 1, 28, 28), torch.tensor([0, 1, 2]), 3)
    maml.adapt(fast, ep, steps=2, lr=0.5)
    assert torch.equal(fast.bn1.bias, model.bn1.bias)
    assert not torch.equal(fast.conv2.weight, model.conv2.weight)
    assert not torch.equal(fast.bn1.weight, model.bn1.weight)
    maml.load_weights(fast, model)
    assert torch.equal(fast.conv2.weight, model.conv2.weight)


def test_mean_ci95():
    mean, ci = mean_ci95([50.0, 60.0, 70.0, 80.0])
    assert mean == 65.0 and ci == pytest.approx(1.96 * np.std([50, 60, 70, 80], ddof=1) / 2)


# --- round trips -------------------------------------------------------------------------------

def _train(tmp_path, method, *args):
    out = tmp_path / f"{method}.safetensors"
    res = CliRunner().invoke(app, ["train", "--method", method, *TINY, "--out", str(out), *args])
    assert res.exit_code == 0, res.output
    return out, json.loads(res.stdout)


def _eval(ckpt, *args):
    res = CliRunner().invoke(app, ["eval", str(ckpt), "--json", "--quiet", "--device", "cpu", *args])
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout)


def test_mebqat_pn_round_trip_with_ci_per_pair(tmp_path):
    ckpt, doc = _train(tmp_path, "mebqat-pn", "--bits", "2,4")
    assert set(doc["top1"]) == {"fp", "2", "4"}
    res = _eval(ckpt, "--episodes", "6", "--ways", "4", "--shots", "1", "--bits", "all")
    rows = res["results"]
    assert [r["label"] for r in rows] == ["2", "4", "fp"]  # 1, 3, 5.. were not trained: skipped
    for r in rows:
        assert r["episodes"] == 6 and r["ways"] == 4 and 0 <= r["top1"] <= 100 and r["ci95"] >= 0
    again = _eval(ckpt, "--episodes", "6", "--wbits", "2", "--abits", "4")
    assert again["episodes"] == 6 and (again["w"], again["a"]) == (2, 4)
    assert _eval(ckpt, "--episodes", "6", "--wbits", "2", "--abits", "4") == again  # same episodes


def test_mebqat_maml_and_protonet_baseline_round_trip(tmp_path):
    ckpt, doc = _train(tmp_path, "mebqat-maml", "--bits", "4", "--inner-steps", "1", "--meta-batch", "2")
    assert set(doc["top1"]) == {"fp", "4"}
    r = _eval(ckpt, "--episodes", "3", "--bit", "4")
    assert r["label"] == "4" and r["episodes"] == 3
    pn, doc = _train(tmp_path, "protonet", "--quantizer", "lsq")
    assert set(doc["top1"]) == {"fp"}
    rows = _eval(pn, "--episodes", "2", "--pairs", "all", "--queries", "3")["results"]
    assert len(rows) == 73 and all(r["queries"] == 3 for r in rows)  # LSQ: no 1-bit pairs


@pytest.mark.parametrize("method,args", [("fomaml", ("--inner-steps", "1", "--meta-batch", "2")),
                                         ("mebqat-pn", ("--bits", "2,4"))])
def test_fp_path_is_tanh_and_older_checkpoints_keep_the_raw_weight(tmp_path, method, args):
    from safetensors.torch import load_file, save_file

    from mbq.core.checkpoint import load_checkpoint, read_header
    from mbq.core.quant import quantized_layers

    def fp_paths(model):
        return {m.weight_quant.fp_path for _, m in quantized_layers(model)}

    ckpt, _ = _train(tmp_path, method, *args)
    model, meta = load_checkpoint(ckpt)
    assert fp_paths(model) == {"tanh"} and meta["mbq.config"]["quant"]["fp_path"] == "tanh"
    raw_run, _ = _train(tmp_path / "raw", method, *args, "--fp-path", "identity")
    assert fp_paths(load_checkpoint(raw_run)[0]) == {"identity"}
    # written before the option: the raw weight recorded in quant, nothing in options
    raw = read_header(ckpt)
    cfg = json.loads(raw["mbq.config"])
    cfg["quant"]["fp_path"] = "identity"
    cfg["options"].pop("fp_path", None)
    raw["mbq.config"] = json.dumps(cfg)
    old = tmp_path / "old.safetensors"
    save_file(load_file(str(ckpt)), str(old), metadata=raw)
    assert fp_paths(load_checkpoint(old)[0]) == {"identity"}
    assert _eval(old, "--episodes", "2", "--bit", "32")["episodes"] == 2


def test_protonet_is_the_plain_fp_baseline_on_the_raw_weight():
    from mbq.cli.train import resolve_config
    from mbq.core.methods import create_method

    for method, path in (("protonet", "identity"), ("qat-pn", "identity"), ("mebqat-pn", "tanh")):
        cfg = resolve_config(["--method", method, "--arch", "cnn"])
        assert create_method(cfg).opts.fp_path == path and cfg.quant.fp_path == path


def test_mebqat_pn_draws_its_pairs_at_random_or_with_fp_guaranteed():
    from mbq.cli.train import resolve_config
    from mbq.core.methods import create_method

    argv = ["--method", "mebqat-pn", "--arch", "cnn", "--bits", "2,4,8"]
    paper = create_method(resolve_config(argv))  # the default: all four at random
    assert sum((32, 32) in paper.sample_pairs(4) for _ in range(60)) < 60
    assert len({paper.sample_pairs(1)[0] for _ in range(60)}) > 1
    m = create_method(resolve_config(argv + ["--guarantee-fp"]))
    draws = [m.sample_pairs(4) for _ in range(60)]
    assert all(d[0] == (32, 32) and len(set(d)) == 4 for d in draws)
    assert {p for d in draws for p in d[1:]} == set(m.train_pairs) - {(32, 32)}  # the rest: every pair


def test_imagefolder_laid_out_by_class(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", 6), ("val", 4)):
        for c in range(6):
            d = tmp_path / "data" / split / f"class{c}"
            d.mkdir(parents=True)
            for i in range(n):
                img = (rng.random((16, 16, 3)) * 60 + c * 30).astype(np.uint8)
                Image.fromarray(img).save(d / f"{i}.png")
    ckpt, _ = _train(tmp_path, "qat-pn", "--data", "imagefolder", "--data-dir", str(tmp_path / "data"),
                     "--image-size", "16", "--train-subset", "36", "--ways", "3", "--shots", "1",
                     "--queries", "2", "--meta-train-classes", "0-2", "--meta-test-classes", "3-5")
    r = _eval(ckpt, "--episodes", "4")
    assert r["ways"] == 3 and r["label"] == "4" and 0 <= r["top1"] <= 100


@pytest.mark.parametrize("args,msg", [
    (["--ways", "7"], "larger than the 6 meta-train classes"),
    (["--shots", "40", "--queries", "40"], "smallest meta-train class"),
    (["--meta-train-classes", "0-5", "--meta-test-classes", "5-9"], "disjoint"),
    (["--meta-test-classes", "6-12"], "does not exist"),
    (["--guarantee-fp", "--meta-batch", "1"], "--no-guarantee-fp"),  # (FP, FP) alone: no quantized pair trains
])
def test_bad_episode_shapes_exit_2(tmp_path, capsys, args, msg):
    code, err = run_main(["train", "--method", "mebqat-pn", *TINY, "--out", tmp_path / "x.safetensors",
                          *args], capsys)
    assert code == 2 and msg in err and err.strip().count("\n") == 0, err


def test_eval_ways_beyond_meta_test_classes_exit_2(tmp_path, capsys):
    ckpt, _ = _train(tmp_path, "protonet")
    code, err = run_main(["eval", ckpt, "--ways", "5", "--episodes", "2", "--device", "cpu"], capsys)
    assert code == 2 and "larger than the 4 meta-test classes" in err, err
    code, err = run_main(["eval", ckpt, "--shots", "2000", "--episodes", "2", "--device", "cpu"], capsys)
    assert code == 2 and "smallest meta-test class" in err, err


def test_a_maml_run_that_diverges_is_told_to_lower_the_inner_step(tmp_path, capsys):
    out = tmp_path / "m.safetensors"
    code, err = run_main(["train", "--method", "fomaml", *TINY, "--inner-lr", "1e30", "--out", out], capsys)
    assert code == 1
    assert "loss became" in err and "Lower --inner-lr (now 1e+30: 5 plain SGD steps" in err
    assert len(err.strip().splitlines()) == 1


def test_protonet_embedding_does_not_start_at_the_zero_fixed_point():
    # torchvision's ViT starts its head at zero: as an embedding every image maps to 0, every
    # distance ties and the gradient is zero (vit_tiny protonet sat at 25.00% for 200 episodes)
    import torch

    from mbq.cli.train import resolve_config
    from mbq.core.methods import create_method
    from mbq.core.methods._fewshot import FewShotMethod

    def built(arch):  # what the engine fills in from the dataset (MNIST)
        cfg = resolve_config(["--method", "protonet", "--arch", arch])
        cfg.model.in_channels, cfg.model.image_size, cfg.model.num_classes = 1, 28, 10
        return cfg

    cfg = built("vit_tiny")
    cfg.model.kwargs["depth"] = 1
    method = create_method(cfg)
    model = method.build_model().eval()
    assert model.heads.head.weight.abs().sum() > 0
    emb = model(torch.randn(2, 1, 28, 28))
    assert emb.shape == (2, method.out_features()) and not torch.allclose(emb[0], emb[1])
    # a model whose head is drawn non-zero is built exactly as before (same draws, same weights)
    cnn = create_method(built("cnn"))
    torch.manual_seed(0)
    ours = cnn.build_model().state_dict()
    torch.manual_seed(0)
    plain = FewShotMethod.build_model(cnn).state_dict()
    assert ours.keys() == plain.keys() and all(torch.equal(ours[k], plain[k]) for k in ours)
