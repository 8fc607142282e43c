"""mbq export: size, export time, agreement and CPU latency of a 4-bit ResNet-20.

Measures (issue 6):
  * packed size / float size for the quantized layers (codes + per-channel scale and
    zero point, against float32 weights; target within 5% of 4/32), the whole file
    against the float checkpoint, and the bytes the bit scheme implies;
  * export time (packed and ONNX, checkpoint loading included);
  * prediction agreement of the integer reference runtime and of onnxruntime with the
    PyTorch fake-quant model on the MNIST test set (default: all 10k images);
  * CPU latency per image: onnxruntime vs PyTorch fake-quant eval (and the integer
    reference runtime) at batch sizes 1 and 64, same thread count for all.

    python benchmarks/export.py                       # trains the model first (mbq train)
    python benchmarks/export.py --checkpoint CKPT     # an existing checkpoint
    python benchmarks/export.py --quick               # small slice, fewer images
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _train(out: Path, args) -> None:
    cmd = ["mbq", "train", "--method", "qat", "--bits", str(args.bits), "--arch", args.arch,
           "--train-subset", str(args.train_subset), "--val-size", "500", "--epochs", str(args.epochs),
           "--out", str(out), "--quiet", "--json",
           "--device", "cpu", "--seed", "0"]
    _log("training: " + " ".join(cmd))
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)


def _time_export(ckpt: Path, fmt: str, out: Path, repeats: int):
    from mbq.core.export.export_checkpoint import export_checkpoint

    times, doc = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        doc = export_checkpoint(ckpt, fmt=fmt, out=out, force=True, device="cpu")
        times.append(time.perf_counter() - t0)
    return doc["files"][0], statistics.median(times)


def _latency(model, x, repeats: int) -> float:
    """Median seconds per image of ``model(x)`` (after one warm-up call)."""
    import torch

    with torch.no_grad():
        model(x)
        ts = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            model(x)
            ts.append(time.perf_counter() - t0)
    return statistics.median(ts) / len(x)


class _Float64:
    """The fake-quant model evaluated in float64 (a copy; same quantizers, same codes)."""

    def __init__(self, model):
        import copy

        self.model = copy.deepcopy(model).double()

    def eval(self):
        return self

    def __call__(self, x):
        return self.model(x.double())


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", type=Path, help="measure this checkpoint instead of training one")
    p.add_argument("--arch", default="resnet20")
    p.add_argument("--bits", type=int, default=4)
    p.add_argument("--train-subset", type=int, default=4000)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--agree-images", type=int, default=10000)
    p.add_argument("--batches", default="1,64", help="batch sizes for the latency figures")
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--float64-reference", action="store_true",
                   help="also run the fake-quant model in float64: how far float32 rounding alone "
                        "moves its predictions (the noise floor of the agreement figure)")
    p.add_argument("--quick", action="store_true", help="1000-image training slice, 1000 test images")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    if args.quick:
        args.train_subset, args.agree_images, args.repeats = 1000, 1000, 5

    import torch

    from mbq.core.checkpoint import load_checkpoint
    from mbq.core.config import TrainConfig
    from mbq.core.data import BatchLoader, create_dataset
    from mbq.core.evaluate import predict
    from mbq.core.export.evaluate import load_exported
    from mbq.core.export.onnx_session import OrtModel
    from mbq.core.methods import create_method

    torch.set_num_threads(args.threads)
    tmp = Path(tempfile.mkdtemp(prefix="mbq-export-bench-"))
    ckpt = args.checkpoint or tmp / f"{args.arch}-w{args.bits}.safetensors"
    if args.checkpoint is None:
        _train(ckpt, args)

    packed, t_packed = _time_export(ckpt, "packed", tmp / "m.packed.safetensors", 3)
    onnx_file, t_onnx = _time_export(ckpt, "onnx", tmp / "m.onnx", 3)
    q = packed["quantized_layers"]
    sizes = {
        "quantized_layers_ratio": (q["codes"] + q["scale_zero_point"]) / q["float32_weights"],
        "quantized_layers_ratio_with_bias": (q["codes"] + q["scale_zero_point"] + q["bias"]) / q["float32_weights"],
        "target_ratio": args.bits / 32,
        "packed_file_bytes": packed["size"], "onnx_file_bytes": onnx_file["size"],
        "checkpoint_bytes": packed["checkpoint_size"],
        "packed_over_checkpoint": packed["size"] / packed["checkpoint_size"],
        "packed_over_float_weights": packed["size"] / packed["float_weight_bytes"],
        "scheme_bytes": packed["theoretical_bytes"], "quantized_layers": q}
    sizes["excess_over_target"] = sizes["quantized_layers_ratio"] / sizes["target_ratio"] - 1
    _log(f"export: packed {t_packed:.2f}s, onnx {t_onnx:.2f}s; quantized layers at "
         f"{sizes['quantized_layers_ratio']:.4f} of float (target {sizes['target_ratio']:.4f})")

    model, meta = load_checkpoint(ckpt)
    method = create_method(TrainConfig.model_validate(meta["mbq.config"]))
    method.apply_setting(model, method.eval_settings()[0])
    runtime, _, _ = load_exported(packed["path"], "packed", "cpu")
    ort = OrtModel(onnx_file["path"], threads=args.threads)

    _, test = create_dataset("mnist")
    test = test.subset(torch.arange(min(args.agree_images, len(test))))
    loader = BatchLoader(test, 500, shuffle=False, augment=False)
    preds, runs = {}, [("fake_quant", model), ("packed", runtime), ("onnx", ort)]
    if args.float64_reference:
        runs.append(("fake_quant_float64", _Float64(model)))
    for name, m in runs:
        t0 = time.perf_counter()
        preds[name] = predict(m, loader)
        _log(f"predicted {len(test)} images with {name} in {time.perf_counter() - t0:.1f}s")
    ref = preds["fake_quant"]
    agreement = {"images": len(test),
                 "top1": {k: 100.0 * (v == test.labels).float().mean().item() for k, v in preds.items()},
                 "packed_agree": (preds["packed"] == ref).float().mean().item(),
                 "onnx_agree": (preds["onnx"] == ref).float().mean().item()}
    if args.float64_reference:
        f64 = preds["fake_quant_float64"]
        agreement.update({k: (preds[n] == f64).float().mean().item() for k, n in (
            ("fake_quant_vs_float64", "fake_quant"), ("packed_vs_float64", "packed"),
            ("onnx_vs_float64", "onnx"))})

    latency = {}
    for bs in (int(b) for b in args.batches.split(",")):
        x = next(iter(BatchLoader(test, bs, shuffle=False, augment=False))).x
        latency[bs] = {name: 1e3 * _latency(m, x, args.repeats)
                       for name, m in (("fake_quant_ms", model), ("onnx_ms", ort), ("packed_ms", runtime))}
        _log(f"batch {bs}: " + ", ".join(f"{k} {v:.3f}" for k, v in latency[bs].items()) + " per image")

    doc = {"checkpoint": str(ckpt), "arch": meta["mbq.arch"], "bits": args.bits, "threads": args.threads,
           "export_seconds": {"packed": t_packed, "onnx": t_onnx}, "sizes": sizes,
           "agreement": agreement, "latency_per_image": latency}
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        s = sizes
        print(f"{doc['arch']} {args.bits}-bit ({ckpt.name}), {args.threads} thread(s)")
        print(f"  quantized layers: {s['quantized_layers_ratio']:.4f} of float32 "
              f"(target {s['target_ratio']:.4f}, {s['excess_over_target']:+.1%}); "
              f"with folded-BN bias {s['quantized_layers_ratio_with_bias']:.4f}")
        print(f"  packed file {s['packed_file_bytes']:,} B = {s['packed_over_checkpoint']:.1%} of the "
              f"checkpoint ({s['checkpoint_bytes']:,} B); scheme implies {s['scheme_bytes']:,} B")
        print(f"  export: packed {t_packed:.2f}s, onnx {t_onnx:.2f}s")
        a = agreement
        print(f"  agreement on {a['images']} images: packed {a['packed_agree']:.4%}, "
              f"onnx {a['onnx_agree']:.4%}; top-1 {a['top1']}")
        if "fake_quant_vs_float64" in a:
            print(f"  against the float64 fake-quant model: fake-quant (float32) "
                  f"{a['fake_quant_vs_float64']:.4%}, packed {a['packed_vs_float64']:.4%}, "
                  f"onnx {a['onnx_vs_float64']:.4%}")
        for bs, r in latency.items():
            print(f"  latency/image at batch {bs}: " + ", ".join(f"{k} {v:.3f}" for k, v in r.items()))
    return doc


if __name__ == "__main__":
    main()
