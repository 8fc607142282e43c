"""Evaluation pass time with each layer's rounded weight reused over the pass
(``frozen_weights``, what ``mbq.core.evaluate`` does) against rounding it again for every batch.

The model is the one `mbq train --method M --bits B --model A` builds (resolved by the
command's own path); both passes run on the same test images, interleaved in one process so
machine noise hits both alike, and must agree on every prediction.

    python benchmarks/eval_cost.py [--arch cnn] [--method emq] [--bits 2,4,8] [--images 2560]
                                   [--rounds 5] [--threads 2] [--json]
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from mbq.cli.train import resolve_config
from mbq.core._layout import inference_layout
from mbq.core.data import BatchLoader, create_dataset
from mbq.core.defaults import EVAL_BATCH
from mbq.core.evaluate import predict
from mbq.core.methods import create_method
from mbq.core.quant import set_bits


@torch.no_grad()
def _predict_rounding_every_batch(model, loader) -> torch.Tensor:
    """``predict`` as it was: the same layout, the weight rounded again for every batch."""
    model.eval()
    with inference_layout(model) as layout:
        return torch.cat([model(layout(b.x)).argmax(1).cpu() for b in loader])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="cnn")
    ap.add_argument("--method", default="emq")
    ap.add_argument("--bits", default="2,4,8")
    ap.add_argument("--images", type=int, default=2560)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cfg = resolve_config(["--method", args.method, "--bits", args.bits, "--model", args.arch])
    cfg.model.num_classes, cfg.model.in_channels, cfg.model.image_size = 10, 1, 28  # MNIST (set at load)
    torch.manual_seed(0)
    model = create_method(cfg).build_model().eval()
    _, test = create_dataset("mnist")
    test = test.subset(range(min(args.images, len(test))))
    loader = BatchLoader(test, EVAL_BATCH, shuffle=False, augment=False)
    widths = [int(b) for b in args.bits.split(",")]
    times = {"frozen": [], "every_batch": []}
    for r in range(args.rounds + 1):  # round 0 warms up
        for w in widths:
            set_bits(model, w, w)
            for name, fn in (("frozen", predict), ("every_batch", _predict_rounding_every_batch)):
                t0 = time.perf_counter()
                out = fn(model, loader)
                if r:
                    times[name].append(time.perf_counter() - t0)
                if name == "frozen":
                    ref = out
                elif not torch.equal(out, ref):
                    raise SystemExit(f"width {w}: the two passes disagree")
    med = {k: statistics.median(v) for k, v in times.items()}
    doc = {"arch": args.arch, "method": args.method, "bits": widths, "images": len(ref),
           "threads": args.threads, "rounds": args.rounds, "frozen_s": med["frozen"],
           "every_batch_s": med["every_batch"], "speedup": med["every_batch"] / med["frozen"]}
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        print(f"{args.method} {args.arch}, {len(ref)} test images per pass, median over "
              f"{args.rounds} rounds x {len(widths)} widths ({args.threads} threads)")
        print(f"  weight rounded once per pass   {doc['frozen_s'] * 1e3:8.1f} ms")
        print(f"  weight rounded every batch     {doc['every_batch_s'] * 1e3:8.1f} ms")
        print(f"  speed-up                       {doc['speedup']:8.3f}x (same predictions)")


if __name__ == "__main__":
    main()
