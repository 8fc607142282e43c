"""Bit-wise coreset sampling: scores, per-bit draws, the coreset file, select-coreset."""
from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from mbq.cli.app import main
from mbq.core.coreset.sampling import draw_subset, overlap, subset_size

SMALL = ["--no-health-check", "--arch", "cnn", "--train-subset", "512", "--val-size", "0", "--batch-size", "64",
         "--optimizer", "adam", "--lr", "0.003", "--device", "cpu", "--quiet"]


# --- draws ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("sampling", ["weighted", "stratified", "topk", "random"])
@pytest.mark.parametrize("n, f", [(1000, 0.2), (37, 0.5), (10, 0.01), (50, 1.0)])
def test_subset_sizes_are_fraction_of_n_without_duplicates(sampling, n, f):
    scores = torch.rand(n, generator=torch.Generator().manual_seed(n))
    idx = draw_subset(scores, f, sampling, seed=0, epoch=0, bit=4)
    assert idx.numel() == subset_size(n, f) == max(1, round(f * n))
    assert idx.unique().numel() == idx.numel() and idx.min() >= 0 and idx.max() < n
    assert torch.equal(idx, idx.sort().values)


def test_draws_are_deterministic_per_seed_epoch_and_bit():
    scores = torch.rand(2000, generator=torch.Generator().manual_seed(0))
    d = lambda **kw: draw_subset(scores, 0.2, "weighted", **{"seed": 1, "epoch": 3, "bit": 2, **kw})
    assert torch.equal(d(), d())
    for other in (d(seed=2), d(epoch=4), d(bit=4)):
        assert not torch.equal(d(), other)
        assert 0.1 < overlap(d(), other) < 0.9  # related through the scores, not copies


def test_bits_draw_independently_from_their_own_scores():
    n = 4000
    g = torch.Generator().manual_seed(1)
    s2, s8 = torch.rand(n, generator=g), torch.rand(n, generator=g)
    a = draw_subset(s2, 0.1, "weighted", seed=0, epoch=0, bit=2)
    b = draw_subset(s8, 0.1, "weighted", seed=0, epoch=0, bit=8)
    assert s2[a].mean() > s2.mean() + 0.05 and s8[b].mean() > s8.mean() + 0.05
    # drawn from different scores, the subsets overlap about as much as chance allows
    assert overlap(a, b) < 0.3


def test_weighted_follows_scores_topk_takes_the_top_random_ignores_them():
    n = 1000
    scores = torch.zeros(n)
    scores[:100] = 1.0  # 100 important samples, the rest scored 0
    w = draw_subset(scores, 0.1, "weighted", seed=0, epoch=0, bit=2)
    # score plus its mean: the important tenth gets about half the subset, not all of it
    assert 0.4 < (w < 100).float().mean() < 0.8
    p = draw_subset(scores, 0.1, "weighted", seed=0, epoch=0, bit=2, mix=0.0)  # proportional only
    assert (p < 100).float().mean() > 0.95
    u = draw_subset(scores, 0.1, "weighted", seed=0, epoch=0, bit=2, mix=1.0)  # uniform only
    assert (u < 100).float().mean() < 0.3
    t = draw_subset(torch.arange(n).float(), 0.1, "topk", seed=0, epoch=5, bit=2)
    assert torch.equal(t, torch.arange(900, 1000))
    r = draw_subset(scores, 0.1, "random", seed=0, epoch=0, bit=2)
    assert (r < 100).float().mean() < 0.3
    # weighted with a flat score is a uniform draw that changes every epoch
    e0 = draw_subset(torch.ones(n), 0.1, "weighted", seed=0, epoch=0, bit=2)
    e1 = draw_subset(torch.ones(n), 0.1, "weighted", seed=0, epoch=1, bit=2)
    assert overlap(e0, e1) < 0.3


def test_stratified_covers_every_score_range_and_redraws_each_epoch():
    n = 5000
    g = torch.Generator().manual_seed(3)
    scores = torch.rand(n, generator=g) ** 6  # most images easy (score near 0), a thin hard tail
    idx = draw_subset(scores, 0.2, "stratified", seed=0, epoch=0, bit=2)
    bins = ((scores - scores.min()) / (scores.max() - scores.min()) * 50).long().clamp(max=49)
    share = torch.bincount(bins[idx], minlength=50)
    have = torch.bincount(bins, minlength=50)
    # a stratum gives all its images when it has fewer than its share, else the same share as the rest
    assert ((share == have) | (share >= share.max() - 1)).all()
    assert (share > 0).all() and (share < have).any()
    assert scores[idx].mean() > scores.mean()  # the thin hard tail gets the same share as the bulk
    again = draw_subset(scores, 0.2, "stratified", seed=0, epoch=1, bit=2)
    assert overlap(idx, again) < 0.9
    assert torch.equal(idx, draw_subset(scores, 0.2, "stratified", seed=0, epoch=0, bit=2))
    flat = draw_subset(torch.zeros(n), 0.2, "stratified", seed=0, epoch=0, bit=2)
    assert flat.numel() == 1000 and flat.unique().numel() == 1000


# --- scores -----------------------------------------------------------------------------------------

def test_score_formulas():
    from mbq.core.coreset.scores import el2n, entropy, grand

    torch.manual_seed(0)
    head = nn.Linear(6, 4)
    h = torch.randn(5, 6)
    y = torch.tensor([0, 1, 2, 3, 1])
    logits = head(h)
    p = logits.softmax(1)
    assert torch.allclose(el2n(logits, y), (p - torch.eye(4)[y]).norm(dim=1))
    assert torch.allclose(entropy(logits), -(p * p.log()).sum(1))
    # grand: the norm of each sample's own gradient of the last layer
    want = []
    for i in range(5):
        head.zero_grad()
        nn.functional.cross_entropy(head(h[i:i + 1]), y[i:i + 1]).backward()
        want.append(torch.cat([head.weight.grad.flatten(), head.bias.grad]).norm())
    assert torch.allclose(grand(logits, y, h, bias=True), torch.stack(want), rtol=1e-5)


def test_compute_scores_scatters_by_dataset_index():
    from mbq.core.coreset.scores import compute_scores, el2n
    from mbq.core.data import Batch

    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    x, y = torch.randn(10, 4), torch.randint(0, 3, (10,))
    order = torch.randperm(10)
    loader = [Batch(x[order[i:i + 4]], y[order[i:i + 4]], order[i:i + 4]) for i in range(0, 10, 4)]
    got = compute_scores(model, loader, "el2n", 10)
    assert torch.allclose(got, el2n(model(x), y).detach())
    r1, r2 = (compute_scores(model, loader, "random", 10, seed=1, bit=b) for b in (2, 4))
    assert not torch.equal(r1, r2)
    with pytest.raises(ValueError):
        compute_scores(model, loader[:1], "el2n", 10)


def test_forgetting_counts_events_and_ranks_unlearned_first():
    from mbq.core.coreset.forgetting import ForgettingTracker

    t = ForgettingTracker(4)
    idx = torch.arange(4)
    for correct in ([1, 1, 0, 1], [0, 1, 0, 1], [1, 1, 0, 0], [0, 1, 0, 1]):
        t.update(idx, torch.tensor(correct).bool())
    s = t.scores()
    assert s.tolist() == [2.0, 0.0, 3.0, 1.0]  # sample 2 never learned: above every count
    t2 = ForgettingTracker(4)
    t2.load_state_dict(t.state_dict())
    assert torch.equal(t2.scores(), s)


# --- the coreset file ---------------------------------------------------------------------------------

def _dataset(n=20, name="mnist", seed=0):
    from mbq.core.data import TensorImageDataset

    g = torch.Generator().manual_seed(seed)
    return TensorImageDataset(torch.zeros(n, 1, 4, 4, dtype=torch.uint8), torch.randint(0, 10, (n,), generator=g),
                              name=name, num_classes=10, mean=(0.5,), std=(0.5,))


def test_coreset_file_round_trip_and_mismatch_errors(tmp_path):
    from mbq.core.coreset.io import CoresetFile, check_matches, labels_fingerprint, read_coreset, write_coreset
    from mbq.core.errors import MbqError

    ds = _dataset()
    scores = {2: torch.rand(20), 8: torch.rand(20)}
    picks = {b: draw_subset(s, 0.25, "weighted", seed=0, epoch=0, bit=b) for b, s in scores.items()}
    path = write_coreset(tmp_path / "c.safetensors", CoresetFile(scores, picks, {
        "dataset": "mnist", "size": 20, "labels_fingerprint": labels_fingerprint(ds.labels),
        "score": "el2n", "fraction": 0.25}))
    cf = read_coreset(path)
    assert cf.bits == [2, 8] and cf.size == 20 and cf.meta["fraction"] == 0.25 and cf.meta["score"] == "el2n"
    assert all(torch.equal(cf.scores[b], scores[b]) and torch.equal(cf.indices[b], picks[b]) for b in (2, 8))
    check_matches(cf, ds)
    for other, word in ((_dataset(name="fashion-mnist"), "dataset"), (_dataset(n=21), "21"),
                        (_dataset(seed=1), "different split")):
        with pytest.raises(MbqError, match=word):
            check_matches(cf, other)
    plain = tmp_path / "plain.safetensors"
    from safetensors.torch import save_file
    save_file({"x": torch.zeros(1)}, str(plain))
    with pytest.raises(MbqError, match="not a coreset file"):
        read_coreset(plain)


# --- select-coreset -> train --coreset -------------------------------------------------------------

@pytest.fixture(scope="module")
def small_test_set():
    from mbq.core import engine

    orig = engine.load_data

    def load(cfg, device):
        train, val, test = orig(cfg, device)
        return train, val, test.subset(torch.arange(300))

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(engine, "load_data", load)
        yield


def _main(capsys, args):
    with pytest.raises(SystemExit) as e:
        main(args)
    cap = capsys.readouterr()
    return e.value.code, cap.out, cap.err


def test_select_coreset_then_train_with_it(tmp_path, capsys, small_test_set):
    warm = tmp_path / "warm.safetensors"
    code, _, err = _main(capsys, ["train", "--method", "emq", "--bits", "2,4", "--epochs", "1",
                                  "--coreset-fraction", "1", "--eval-bits", "trained", "--out", str(warm),
                                  *SMALL])
    assert code == 0, err
    cs = tmp_path / "c.safetensors"
    code, out, err = _main(capsys, ["select-coreset", str(warm), "--bits", "2,4", "--fraction", "0.25",
                                    "--out", str(cs), "--json", "--quiet", "--device", "cpu", "--seed", "7"])
    assert code == 0, err
    doc = json.loads(out)
    assert doc["size"] == 512 and doc["subset_size"] == 128 and doc["bits"] == [2, 4]
    assert set(doc["overlap"]) == {"2-4"} and 0 <= doc["overlap"]["2-4"] < 1
    assert all(doc["stats"][b]["max"] >= doc["stats"][b]["mean"] >= doc["stats"][b]["min"] >= 0 for b in ("2", "4"))

    from mbq.core.coreset.io import read_coreset
    cf = read_coreset(cs)
    assert cf.meta["dataset"] == "mnist" and cf.size == 512 and cf.meta["score"] == "el2n"

    # the same selection again under the same --seed
    cs2 = tmp_path / "c2.safetensors"
    assert _main(capsys, ["select-coreset", str(warm), "--fraction", "0.25", "--out", str(cs2), "--quiet",
                          "--json", "--device", "cpu", "--seed", "7"])[0] == 0
    assert all(torch.equal(read_coreset(cs2).indices[b], cf.indices[b]) for b in (2, 4))

    run = tmp_path / "run.safetensors"
    code, _, err = _main(capsys, ["train", "--method", "emq", "--bits", "2,4", "--epochs", "1",
                                  "--coreset", str(cs), "--coreset-fraction", "0.25", "--eval-bits", "trained",
                                  "--init", str(warm), "--out", str(run), *SMALL])
    assert code == 0, err
    state = torch.load(run.with_name("run.state.pt"), weights_only=True)["method"]["coreset"]
    assert state["subset_epoch"] == 0
    for b in (2, 4):  # the first epoch trained on exactly the file's selection, with its scores
        assert torch.equal(state["subsets"][str(b)], cf.indices[b])
        assert torch.equal(state["scores"][str(b)], cf.scores[b])

    # a coreset file for another split, or another fraction, is refused
    for extra, word in ((["--train-subset", "256"], "512"), (["--coreset-fraction", "0.5"], "--coreset-fraction 0.25"),
                        (["--bits", "2,8"], "select-coreset with --bits")):
        args = ["train", "--method", "emq", "--bits", "2,4", "--epochs", "1", "--coreset", str(cs),
                "--coreset-fraction", "0.25", "--out", str(tmp_path / "bad.safetensors"), *SMALL, *extra]
        code, out, err = _main(capsys, args)
        assert code == 2 and word in err and len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize("args, msg", [
    (["--fraction", "0"], "(0, 1]"),
    (["--fraction", "1.2"], "(0, 1]"),
    (["--uniform-mix", "1.5"], "[0, 1]"),
    (["--score", "forgetting"], "forgetting"),
    (["--score", "loss"], "--score"),
    (["--bits", "2,2"], "twice"),
    (["--bits", ""], "comma-separated"),
])
def test_select_coreset_bad_input(tmp_path, capsys, args, msg):
    ckpt = tmp_path / "none.safetensors"
    if msg in ("(0, 1]", "[0, 1]", "forgetting"):  # these are checked after the checkpoint is found
        from safetensors.torch import save_file
        save_file({"x": torch.zeros(1)}, str(ckpt))
    code, out, err = _main(capsys, ["select-coreset", str(ckpt), "--out", str(tmp_path / "c.safetensors"),
                                    *args])
    assert code == 2 and out == "" and msg in err and len(err.strip().splitlines()) == 1, err
