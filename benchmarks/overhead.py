"""Training-step time of 4-bit QAT (weights + activations) over float training.

Same model (resnet20), data (MNIST) and batch (128), each built as `mbq train` builds it
(`--method fp` and `--method qat --bits 4`, resolved by the command's own path), measured
interleaved in one process so machine noise hits both alike. Also times `mbq --help`.

    python benchmarks/overhead.py [--steps 30] [--arch resnet20] [--threads 2] [--json]
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

import torch
from torch.nn import functional as F

from mbq.cli.train import resolve_config
from mbq.core.data import BatchLoader, create_dataset
from mbq.core.methods import create_method


def _step_fn(model, opt):
    def step(batch):
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(batch.x), batch.y)
        loss.backward()
        opt.step()
    return step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--arch", default="resnet20")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    train, _ = create_dataset("mnist")
    loader = BatchLoader(train.to(dev), args.batch, shuffle=True, device=dev, seed=0, drop_last=True)
    batches = [b for _, b in zip(range(8), loader)]

    def build(q: bool):
        # the models `mbq train --method fp` / `--method qat --bits 4` build (qat: its default
        # quantizer), with the step's optimizer as that command resolves it
        cfg = resolve_config(["--method", "qat" if q else "fp", "--bits", "4" if q else "32",
                              "--model", args.arch, "--batch-size", str(args.batch)])
        cfg.model.num_classes, cfg.model.in_channels, cfg.model.image_size = 10, 1, 28  # MNIST (set at load)
        torch.manual_seed(0)
        m = create_method(cfg).build_model().to(dev).train()
        oc = cfg.optim
        return _step_fn(m, torch.optim.SGD(m.parameters(), lr=oc.lr, momentum=oc.momentum,
                                           weight_decay=oc.weight_decay))

    steps = {"fp": build(False), "qat_w4a4": build(True)}
    for s in steps.values():  # warm-up
        for b in batches[:3]:
            s(b)
    times = {k: [] for k in steps}
    for i in range(args.steps):  # interleave: fp, qat, fp, qat, ...
        for k, s in steps.items():
            if dev.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            s(batches[i % len(batches)])
            if dev.type == "cuda":
                torch.cuda.synchronize()
            times[k].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    help_t = []
    for _ in range(5):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "mbq", "--help"], capture_output=True, check=True)
        help_t.append(time.perf_counter() - t0)
    doc = {"arch": args.arch, "batch": args.batch, "device": str(dev), "threads": args.threads,
           "steps": args.steps, "fp_step_ms": med["fp"] * 1e3, "qat_step_ms": med["qat_w4a4"] * 1e3,
           "qat_over_fp": med["qat_w4a4"] / med["fp"], "help_s_median": statistics.median(help_t),
           "help_s_max": max(help_t)}
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        print(f"{args.arch} batch {args.batch} on {dev} ({args.threads} threads), median of {args.steps} steps")
        print(f"  fp        {doc['fp_step_ms']:8.1f} ms/step")
        print(f"  qat w4a4  {doc['qat_step_ms']:8.1f} ms/step")
        print(f"  ratio     {doc['qat_over_fp']:8.3f}x  (target <= 1.3x)")
        print(f"  mbq --help {doc['help_s_median']:.3f} s median, {doc['help_s_max']:.3f} s max (target < 0.5 s)")


if __name__ == "__main__":
    main()
