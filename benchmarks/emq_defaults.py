"""How EMQ's optimizer and sampling defaults were chosen: a sweep at five widths.

Each variant trains EMQ at bits {1,2,4,8,32}, f = 0.2, on the benchmarks/emq.py
setting (resnet20 width 0.5, 20 000 MNIST training images, 10 epochs, batch 64,
seed 0) and reports top-1 at 1..8 and FP on the full MNIST test set, no calibration.
What varies: how the children's losses combine, SGD learning rate, weight decay,
warm-up, and how each child's subset is drawn. Every variant is an ``mbq train``
argument list resolved by the command's own path (``mbq.cli.train.resolve_config``);
"default" gives no flag at all, the others pin the earlier full-batch children.

    python benchmarks/emq_defaults.py --threads 2              # every variant (~7 min each on 2 cores)
    python benchmarks/emq_defaults.py --only uniform-mean-1.0  # one of them

Results go to benchmarks/results/emq_defaults.json (rewritten after every variant).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

WIDTHS = [1, 2, 3, 4, 5, 6, 7, 8, 32]
BITS = [1, 2, 4, 8, 32]
# The sweep the earlier defaults came from was run with every child on the full batch and
# scored on the whole training set; these two flags reproduce that setting.
_EARLIER = ["--coreset-batch", "64", "--coreset-score-pool", "5"]
# name -> mbq train flags; mix 0 is the draw proportional to EL2N
VARIANTS = {
    "prop-mean-0.1": [*_EARLIER, "--lr", "0.1", "--child-loss", "mean", "--coreset-uniform-mix", "0"],
    "prop-mean-0.5": [*_EARLIER, "--lr", "0.5", "--child-loss", "mean", "--coreset-uniform-mix", "0"],
    "prop-mean-1.0": [*_EARLIER, "--lr", "1.0", "--warmup", "1", "--child-loss", "mean", "--coreset-uniform-mix", "0"],
    "prop-mean-2.0": [*_EARLIER, "--lr", "2.0", "--warmup", "1", "--child-loss", "mean", "--coreset-uniform-mix", "0"],
    "uniform-mean-0.5": [*_EARLIER, "--lr", "0.5", "--child-loss", "mean", "--coreset-sampling", "random"],
    "uniform-mean-1.0": [*_EARLIER, "--lr", "1.0", "--warmup", "1", "--child-loss", "mean", "--coreset-sampling", "random"],
    "stratified-mean-1.0": [*_EARLIER, "--lr", "1.0", "--warmup", "1", "--child-loss", "mean",
                            "--coreset-sampling", "stratified"],
    "uniform-sum-0.2": [*_EARLIER, "--lr", "0.2", "--warmup", "1", "--child-loss", "sum", "--coreset-sampling", "random"],
    "mix-sum-0.2": [*_EARLIER, "--lr", "0.2", "--warmup", "1", "--child-loss", "sum"],
    "earlier-default": [*_EARLIER, "--lr", "0.2", "--weight-decay", "2.5e-3", "--warmup", "1"],
    "default": [],  # today's defaults: no flag at all
}
for _flags in VARIANTS.values():  # the earlier sweep set these explicitly (not EMQ's defaults of today)
    if _flags and "--warmup" not in _flags:
        _flags += ["--warmup", "0"]
    if _flags and "--weight-decay" not in _flags:
        _flags += ["--weight-decay", "5e-4"]


def run_variant(name: str, a, folder: Path) -> dict:
    from mbq.cli.train import resolve_config
    from mbq.core.engine import train
    from mbq.core.evaluate_checkpoint import evaluate_checkpoint
    from mbq.core.methods import create_method

    out = folder / f"{name}.safetensors"
    argv = ["--method", "emq", "--bits", ",".join(map(str, BITS)), "--coreset-fraction", "0.2",
            "--eval-bits", "32", "--model", "resnet20", "--width", f"{a.width:g}", "--epochs", str(a.epochs),
            "--train-subset", str(a.train_subset), "--val-size", "0", "--batch-size", "64",
            "--seed", str(a.seed), "--device", a.device, "--out", str(out), *VARIANTS[name]]
    cfg = resolve_config(argv)  # exactly what `mbq train` would run
    t0 = time.perf_counter()
    train(cfg, create_method(cfg), lambda *_, **__: None)
    seconds = time.perf_counter() - t0
    ev = evaluate_checkpoint(out, pairs=[(b, None) for b in WIDTHS], limit=a.test_limit,
                             device=a.device, seed=a.seed)
    top1 = {("fp" if r["w"] >= 32 else str(r["w"])): r["top1"] for r in ev["results"]}
    return {"name": name, "argv": argv,
            "optim": cfg.optim.model_dump(include={"lr", "weight_decay", "warmup_epochs", "warmup_fraction"}),
            "options": cfg.options, "train_s": seconds, "top1": top1,
            "mean_top1": sum(top1.values()) / len(top1)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--only", help="comma-separated variant names: " + ", ".join(VARIANTS))
    p.add_argument("--train-subset", type=int, default=20000)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--width", type=float, default=0.5)
    p.add_argument("--test-limit", type=int, default=10000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/emq_defaults.json"))
    a = p.parse_args(argv)
    names = a.only.split(",") if a.only else list(VARIANTS)
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        p.error(f"unknown variant {', '.join(unknown)} (choose from {', '.join(VARIANTS)})")

    import torch
    torch.set_num_threads(a.threads)
    from mbq.core._atomic import atomic_write_text

    rows = []
    with tempfile.TemporaryDirectory(prefix="mbq-bench-emq-defaults-") as tmp:
        for name in names:
            row = run_variant(name, a, Path(tmp))
            rows.append(row)
            print(f"{name:22s} mean {row['mean_top1']:.2f}  " +
                  "  ".join(f"{k}:{v:.2f}" for k, v in row["top1"].items()), flush=True)
            cfg = {k: getattr(a, k) for k in ("train_subset", "epochs", "width", "test_limit", "seed", "threads")}
            a.out.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(a.out, json.dumps({"config": dict(cfg, bits=BITS, fraction=0.2), "runs": rows},
                                                indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
