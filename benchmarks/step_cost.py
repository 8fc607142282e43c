"""Cost of one optimizer step of the multi-bit methods, side by side in one process.

What bounds EMQ's training-time cut against Any-Precision: EMQ steps every width on
a child batch of f x 128 images (26 at f = 0.2) where anyprec steps every width on 128,
for the same number of steps, so the ratio of their step times is the ceiling of the
wall-time ratio (scoring and warm-up come on top). Each model, optimizer and step is what
`mbq train` builds (configs resolved by `resolve_config`, the methods' own `train_step`,
the engine's optimizer and gradient cap), on MNIST batches. Steps are interleaved so
machine noise hits every row alike. Also timed: EMQ's step with weight bias correction
composed by autograd instead of the fused pass (`--no-fused` rows), and one no-grad
forward at the eval batch (what coreset scoring and evaluation run).

    python benchmarks/step_cost.py [--arch resnet20] [--rounds 8] [--steps 4] [--threads 2] [--json]
"""
from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import time
from types import SimpleNamespace

import torch

from mbq.cli.train import resolve_config
from mbq.core._layout import inference_layout
from mbq.core.data import BatchLoader, create_dataset
from mbq.core.defaults import EVAL_BATCH
from mbq.core.engine import build_optimizer, clip_gradients
from mbq.core.methods import create_method
from mbq.core.quant import functional as QF
from mbq.core.quant import set_bits
from mbq.core.quant.quantizers import DoReFaWeight


class _NoCoreset:
    def observe(self, *_):  # per-sample bookkeeping of forgetting scores only
        pass


def _build(argv: list[str], train, dev):
    cfg = resolve_config(argv + ["--device", str(dev)])
    cfg.model.num_classes, cfg.model.in_channels, cfg.model.image_size = 10, 1, 28  # MNIST (set at load)
    torch.manual_seed(0)
    method = create_method(cfg)
    model = method.build_model().to(dev).train()
    opt = build_optimizer(model.parameters(), cfg.optim)
    ctx = SimpleNamespace(model=model, autocast=contextlib.nullcontext, backward=lambda loss: loss.backward())
    batch = getattr(method.opts, "step_batch")(cfg.data.batch_size)
    loader = BatchLoader(train, batch, shuffle=True, device=dev, seed=0, drop_last=True)
    batches = [b for _, b in zip(range(4), loader)]
    if cfg.method == "emq":
        method.coreset = _NoCoreset()
        items = [{b: x for b in method.bits_desc} for x in batches]
    else:
        items = batches

    def step(i: int) -> None:
        opt.zero_grad(set_to_none=True)
        method.train_step(ctx, items[i % len(items)])
        clip_gradients(model.parameters(), cfg.optim.grad_clip)
        opt.step()
    return step, model, batch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--steps", type=int, default=4, help="steps per row per round")
    ap.add_argument("--arch", default="resnet20")
    ap.add_argument("--bits", default="2,4,8")
    ap.add_argument("--fraction", type=float, default=0.2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    train, _ = create_dataset("mnist")
    train = train.to(dev)
    common = ["--arch", args.arch, "--bits", args.bits, "--epochs", "10", "--val-size", "0"]
    anyprec, _, b_any = _build(["--method", "anyprec"] + common, train, dev)
    emq, emq_model, b_emq = _build(["--method", "emq", "--coreset-fraction", str(args.fraction)] + common,
                                   train, dev)
    fused = DoReFaWeight.corrected

    def composed(i: int) -> None:
        DoReFaWeight.corrected = lambda self, w, bits, per_channel: None
        try:
            emq(i)
        finally:
            DoReFaWeight.corrected = fused

    x_eval = next(iter(BatchLoader(train, EVAL_BATCH, shuffle=False, device=dev)))[0]
    top = max(int(b) for b in args.bits.split(","))

    def forward(i: int) -> None:  # as coreset scoring and evaluation run it
        set_bits(emq_model, 2, 2)
        with torch.no_grad(), inference_layout(emq_model) as layout:
            emq_model(layout(x_eval))

    pact = QF.pact_act

    def forward_autograd_pact(i: int) -> None:
        QF.pact_act = lambda x, alpha, bits: x if QF.is_fp(bits) else QF._PACTQuant.apply(x, alpha, QF._levels(bits))
        try:
            forward(i)
        finally:
            QF.pact_act = pact

    rows = {f"anyprec step (batch {b_any})": anyprec, f"emq step (child batch {b_emq})": emq,
            f"emq step, --no-fused WBC (child batch {b_emq})": composed,
            f"no-grad forward at 2 bits (batch {EVAL_BATCH})": forward,
            f"no-grad forward, PACT through autograd (batch {EVAL_BATCH})": forward_autograd_pact}
    for f in rows.values():  # warm-up
        for i in range(2):
            f(i)
    times = {k: [] for k in rows}
    for r in range(args.rounds):
        for k, f in rows.items():
            if dev.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            for i in range(args.steps):
                f(r * args.steps + i)
            if dev.type == "cuda":
                torch.cuda.synchronize()
            times[k].append((time.perf_counter() - t0) / args.steps * 1e3)
    med = {k: statistics.median(v) for k, v in times.items()}
    keys = list(rows)
    doc = {"arch": args.arch, "device": str(dev), "threads": args.threads, "bits": args.bits, "fraction": args.fraction,
           "top_bits": top, "ms": med,
           "anyprec_over_emq": med[keys[0]] / med[keys[1]],
           "anyprec_over_emq_composed": med[keys[0]] / med[keys[2]],
           "fused_speedup": med[keys[2]] / med[keys[1]],
           "pact_no_grad_speedup": med[keys[4]] / med[keys[3]]}
    if args.json:
        print(json.dumps(doc, indent=2))
        return
    print(f"{args.arch}, bits {args.bits}, f = {args.fraction}, {dev} ({args.threads} threads), "
          f"median of {args.rounds} rounds x {args.steps}")
    for k, v in med.items():
        print(f"  {k:<58} {v:8.1f} ms")
    print(f"  anyprec / emq step                  {doc['anyprec_over_emq']:.2f}x "
          f"(composed WBC: {doc['anyprec_over_emq_composed']:.2f}x)")
    print(f"  fused WBC, emq step                 {doc['fused_speedup']:.2f}x faster")
    print(f"  PACT no-grad path, forward          {doc['pact_no_grad_speedup']:.2f}x faster")


if __name__ == "__main__":
    main()
