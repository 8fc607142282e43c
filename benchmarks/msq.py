"""MSQ against BSQ and float training on one model, one MNIST slice, one batch size.

Measures (issue 4):
  * trainable parameters, peak memory and training-step time of msq and bsq, both
    at 8 bits on resnet20 (targets: bsq/msq parameters >= 8x, step time >= 3x), and the
    float step (fp) on the same model and batch: bsq/fp is the ceiling of bsq/msq;
  * msq --target-compression 16: final compression and MNIST test top-1 against fp
    trained for the same epochs (target: within 1 point at C >= 16);
  * ablation: Hessian-guided k against uniform k = 1 (epochs to the target, top-1);
  * sensitivity time for 64 shared probes against a loop giving every layer its own
    probes (target: >= 5x faster, equal values in expectation).

    python benchmarks/msq.py --out benchmarks/results/msq.json   # full run (~20 min on 2 cores)
    python benchmarks/msq.py --quick    # ~2 min smoke version

Memory: each method's steps run in a fresh process; CPU reports the rise of the
peak RSS over the RSS before the first step (CUDA: max_memory_allocated). Step
time is the median of timed steps after warm-up steps (forward, regularizer,
backward, optimizer step), with msq's regularizer active at k = 1 on every layer.
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# resources and sensitivity at resnet20 width 1 (the paper's model); the three training
# runs at width 0.5 so that they fit the time budget on 2 shared CPU cores
FULL = {"arch": "resnet20", "width": 1.0, "batch": 128, "warmup": 3, "steps": 15, "repeats": 3,
        "train_width": 0.5, "train_subset": 12000, "epochs": 10, "val_size": 500, "probes": 64,
        "sens_batch": 32, "loop_probes": 2, "hessian_probes": 4, "threads": 2,
        "small_batch": 16}
QUICK = {"arch": "resnet20", "width": 0.25, "batch": 64, "warmup": 1, "steps": 3, "repeats": 1,
         "train_width": 0.25, "train_subset": 512, "epochs": 2, "val_size": 100, "probes": 16,
         "sens_batch": 16, "loop_probes": 2, "hessian_probes": 2, "threads": 1, "small_batch": 8}

def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _cfg(method: str, p: dict, out: Path, width: float | None = None, **options):
    """The TrainConfig ``mbq train`` builds from these arguments (its own resolution path)."""
    from mbq.cli._method_options import options_argv
    from mbq.cli.train import resolve_config

    argv = ["--method", method, "--epochs", str(p["epochs"]), "--out", str(out), "--device", "auto",
            "--seed", "0", "--model", p["arch"], "--width", f"{width or p['width']:g}",
            "--train-subset", str(p["train_subset"]), "--val-size", str(p["val_size"]),
            "--batch-size", str(p["batch"])]
    return resolve_config(argv + options_argv(options))


# --- 1. parameters, memory, step time (child process per method) -------------------------------

def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


def _child_resources(method: str, p: dict) -> dict:
    import resource

    import torch

    from mbq.core.engine import TrainContext, build_optimizer, build_scheduler, load_data, resolve_device
    from mbq.core.data import BatchLoader
    from mbq.core.methods import create_method
    from mbq.core.quant import quantized_layers

    torch.set_num_threads(p["threads"])
    opts = {} if method == "fp" else {"init_bits": 8}
    cfg = _cfg(method, p, Path(tempfile.gettempdir()) / "unused.safetensors", **opts)
    dev = resolve_device("auto")
    train, val, test = load_data(cfg, dev)
    m = create_method(cfg)
    torch.manual_seed(0)
    model = m.build_model().to(dev)
    opt = build_optimizer(m.param_groups(model), cfg.optim)
    loader = BatchLoader(train, p["batch"], shuffle=True, augment=True, device=dev, seed=0, drop_last=True)
    ctx = TrainContext(cfg, m, model, opt, build_scheduler(opt, cfg.optim, 1, len(loader)), dev,
                       train, val, test, loader)
    if method == "msq":  # the regularizer on at k = 1 everywhere, without setup's Hessian pass
        m._model, m._layers = model, m._prunable(model)
        m._n_total = sum(x.weight.numel() for _, x in m._layers)
        m.k = {n: 1 for n, _ in m._layers}
    else:
        m.setup(ctx)
    trainable = sum(x.numel() for x in model.parameters() if x.requires_grad)
    qlayers = quantized_layers(model)
    weight_params = sum(x.weight.numel() for _, x in qlayers)
    model.train()
    batches = iter(loader)
    times = []
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    base = _rss()
    for i in range(p["warmup"] + p["steps"]):
        batch = next(batches)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        m.train_step(ctx, batch)
        opt.step()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        if i >= p["warmup"]:
            times.append(time.perf_counter() - t0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    out = {"method": method, "trainable_params": trainable, "quantized_weights": weight_params,
           "step_s_median": statistics.median(times), "step_s_all": times, "device": str(dev),
           "peak_rss_mb": peak / 2**20, "peak_rise_mb": max(0, peak - base) / 2**20}
    if dev.type == "cuda":
        out["cuda_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def resources(p: dict) -> dict:
    """Alternating fresh processes (msq, bsq, fp, msq, ...); per method the run with the
    lowest median step time is kept (other load on a shared machine only adds time).

    The float step (fp: no quantizer, no regularizer) bounds what any quantizer can save:
    bsq/msq can never exceed bsq/fp."""
    rows: dict = {}
    for rep in range(p["repeats"]):
        for method in ("msq", "bsq", "fp"):
            _log(f"[1] {method} #{rep + 1}: {p['warmup']} + {p['steps']} steps in a fresh process")
            res = subprocess.run([sys.executable, __file__, "--child", method, "--params", json.dumps(p)],
                                 capture_output=True, text=True, check=False)
            if res.returncode != 0:
                raise SystemExit(f"child {method} failed:\n{res.stderr[-2000:]}")
            row = json.loads(res.stdout)
            row["step_s_medians"] = rows.get(method, {}).get("step_s_medians", []) + [row["step_s_median"]]
            if method not in rows or row["step_s_median"] < rows[method]["step_s_median"]:
                rows[method] = row
            rows[method]["step_s_medians"] = row["step_s_medians"]
    msq, bsq, fp = rows["msq"], rows["bsq"], rows["fp"]
    return {"msq": msq, "bsq": bsq, "fp": fp,
            "step_time_ratio_bound_bsq_over_fp": bsq["step_s_median"] / fp["step_s_median"],
            "param_ratio_total": bsq["trainable_params"] / msq["trainable_params"],
            "param_ratio_quantized_weights": (bsq["trainable_params"] - msq["trainable_params"]
                                              + msq["quantized_weights"]) / msq["quantized_weights"],
            "step_time_ratio": bsq["step_s_median"] / msq["step_s_median"],
            "peak_rise_ratio": bsq["peak_rise_mb"] / max(msq["peak_rise_mb"], 1e-9)}


# --- 2./3. accuracy at compression 16, and the k ablation --------------------------------------

def _train(method: str, p: dict, out: Path, **options) -> dict:
    from mbq.core.checkpoint import read_checkpoint
    from mbq.core.engine import train
    from mbq.core.methods import create_method

    cfg = _cfg(method, p, out, width=p["train_width"], **options)
    lines = []

    def rep(event, **d):
        if event == "log" and "round" in d["message"]:
            lines.append(d["message"])
        if event == "epoch":
            _log(f"    epoch {d['epoch']}: loss {d['train_loss']:.3f} val {d.get('val_top1')} "
                 f"C {d.get('compression', 32 / 32):.2f} {d['wall_s']:.0f}s")

    t0 = time.perf_counter()
    result = train(cfg, create_method(cfg), rep)
    _, meta = read_checkpoint(out)
    msq = json.loads(meta["mbq.msq"]) if "mbq.msq" in meta else {}
    top1 = next(iter(result["top1"].values()))
    return {"method": method, "options": options, "top1": top1, "seconds": time.perf_counter() - t0,
            "compression": msq.get("compression"), "reached_epoch": msq.get("reached_epoch"),
            "scheme": {n: wa["w"] for n, wa in meta["mbq.bit_scheme"].items()}, "rounds": lines}


def accuracy(p: dict, tmp: Path) -> dict:
    runs = {}
    for name, method, opts in (("fp", "fp", {}),
                               ("msq hessian k", "msq", {"target_compression": 16.0,
                                                         "hessian_probes": p["hessian_probes"]}),
                               ("msq uniform k=1", "msq", {"target_compression": 16.0, "hessian": False,
                                                           "hessian_probes": p["hessian_probes"]})):
        _log(f"[2] {name}: {p['epochs']} epochs on {p['train_subset']} images")
        runs[name] = _train(method, p, tmp / f"{method}_{len(runs)}.safetensors", **opts)
    runs["gap_to_fp"] = runs["fp"]["top1"] - runs["msq hessian k"]["top1"]
    return runs


# --- 4. sensitivity: shared probes vs a per-layer loop ------------------------------------------

def _loop_traces(model, x, y, layers, probes: int, seed: int) -> dict:
    """Each layer's trace from its own probes: one double backward per (layer, probe)."""
    import torch
    from torch.nn import functional as F

    params = [q for q in model.parameters() if q.requires_grad]
    index = {id(q): i for i, q in enumerate(params)}
    t0 = time.perf_counter()
    grads = torch.autograd.grad(F.cross_entropy(model(x), y), params, create_graph=True)
    out = {"_grad_s": time.perf_counter() - t0}  # paid once, whatever the probe count
    gen = torch.Generator(device=x.device).manual_seed(seed)
    for name, m in layers:
        g = grads[index[id(m.weight)]]
        vals = []
        for _ in range(probes):
            v = torch.randint_like(m.weight, high=2, generator=gen) * 2 - 1
            (hv,) = torch.autograd.grad(g, m.weight, grad_outputs=v, retain_graph=True)
            vals.append((hv * v).sum().item())
        t = torch.tensor(vals, dtype=torch.float64)
        out[name] = (t.mean().item(), (t.std().item() / math.sqrt(len(vals))) if len(vals) > 1 else None)
    return out


def sensitivity(p: dict) -> dict:
    """On resnet20 at ``width`` as msq builds it (8-bit RoundClamp), as at its first round."""
    import torch

    from mbq.core.data import create_dataset
    from mbq.core.methods import create_method
    from mbq.core.quant import quantized_layers
    from mbq.core.sensitivity import hessian_batch, layer_sensitivity

    cfg = _cfg("msq", p, Path(tempfile.gettempdir()) / "unused.safetensors")
    cfg.model.num_classes, cfg.model.in_channels, cfg.model.image_size = 10, 1, 28
    torch.manual_seed(0)
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = create_method(cfg).build_model().to(dev)
    train, _ = create_dataset("mnist")
    x, y = hessian_batch(train.to(dev), 1, p["sens_batch"], 0, dev)
    layers = quantized_layers(model)
    _log(f"[4] sensitivity: {p['probes']} shared probes, {len(layers)} layers, {len(y)} images")
    t0 = time.perf_counter()
    shared = layer_sensitivity(model, x, y, layers, probes=p["probes"], seed=0)
    t_shared = time.perf_counter() - t0
    _log(f"[4] per-layer loop: {p['loop_probes']} probes per layer")
    model.eval()
    t0 = time.perf_counter()
    loop = _loop_traces(model, x, y, layers, p["loop_probes"], seed=1)
    t_loop = time.perf_counter() - t0
    grad_s = loop.pop("_grad_s")  # the rest is L x probes double backwards, linear in probes
    t_loop_at = grad_s + (t_loop - grad_s) * p["probes"] / p["loop_probes"]
    z = []
    for r in shared["layers"]:
        m, se = loop[r["name"]]
        if r["trace_se"] and se:
            z.append((r["trace"] - m) / math.sqrt(r["trace_se"] ** 2 + se ** 2))
    return {"layers": len(layers), "probes": p["probes"], "images": len(y), "shared_s": t_shared,
            "loop_probes_measured": p["loop_probes"], "loop_s_measured": t_loop,
            "loop_s_at_same_probes": t_loop_at, "speedup": t_loop_at / t_shared,
            "max_abs_z": max(abs(v) for v in z), "mean_z": sum(z) / len(z),
            "within_2se": sum(abs(v) <= 2 for v in z) / len(z),
            "per_layer": [{"name": r["name"], "shared": r["trace"], "shared_se": r["trace_se"],
                           "loop": loop[r["name"]][0], "loop_se": loop[r["name"]][1]}
                          for r in shared["layers"]]}


# --- main -----------------------------------------------------------------------------------------

def _summary(doc: dict) -> str:
    r, a, s = doc["resources"], doc["accuracy"], doc["sensitivity"]
    hk, uk = a["msq hessian k"], a["msq uniform k=1"]
    return "\n".join([
        f"{doc['params']['arch']}, MNIST, batch {doc['params']['batch']}; resources and sensitivity at width "
        f"{doc['params']['width']}, training runs at width {doc['params']['train_width']}",
        f"trainable params   msq {r['msq']['trainable_params']:,}  bsq {r['bsq']['trainable_params']:,}  "
        f"ratio {r['param_ratio_total']:.2f}x (quantized weights {r['param_ratio_quantized_weights']:.2f}x)",
        f"peak RSS rise      msq {r['msq']['peak_rise_mb']:.0f} MB  bsq {r['bsq']['peak_rise_mb']:.0f} MB  "
        f"ratio {r['peak_rise_ratio']:.2f}x",
        f"step time          msq {r['msq']['step_s_median'] * 1e3:.0f} ms  bsq {r['bsq']['step_s_median'] * 1e3:.0f} ms  "
        f"fp {r['fp']['step_s_median'] * 1e3:.0f} ms  ratio {r['step_time_ratio']:.2f}x (ceiling bsq/fp "
        f"{r['step_time_ratio_bound_bsq_over_fp']:.2f}x); at batch {doc['resources_small_batch']['batch']}: "
        f"{doc['resources_small_batch']['step_time_ratio']:.2f}x (ceiling "
        f"{doc['resources_small_batch']['bound_bsq_over_fp']:.2f}x)",
        f"C=16 ({doc['params']['epochs']} epochs, {doc['params']['train_subset']} images): fp {a['fp']['top1']:.2f}%  "
        f"msq {hk['top1']:.2f}% at {hk['compression']:.2f}x (gap {a['gap_to_fp']:.2f})",
        f"ablation           hessian k: target at epoch {hk['reached_epoch']}, {hk['top1']:.2f}%;  "
        f"uniform k=1: target at epoch {uk['reached_epoch']}, {uk['top1']:.2f}%",
        f"sensitivity        {s['probes']} shared probes {s['shared_s']:.1f}s; per-layer loop "
        f"{s['loop_s_at_same_probes']:.1f}s (from {s['loop_probes_measured']}/layer); speedup {s['speedup']:.1f}x; "
        f"shared vs loop per layer: {100 * s['within_2se']:.0f}% within 2 SE, mean z {s['mean_z']:+.2f}"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="~2 min smoke version")
    ap.add_argument("--out", type=Path, help="write the JSON results here")
    ap.add_argument("--only", help="comma-separated parts to (re)run: resources, accuracy, sensitivity; "
                                   "the others are kept from --out")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--params", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(_child_resources(args.child, json.loads(args.params))))
        return
    p = dict(QUICK if args.quick else FULL)
    import torch
    torch.set_num_threads(p["threads"])
    t0 = time.perf_counter()
    parts = set(args.only.split(",")) if args.only else {"resources", "accuracy", "sensitivity"}
    doc = {}
    if args.only:
        if not (args.out and args.out.exists()):
            raise SystemExit("--only needs --out FILE with the results of a full run to update")
        doc = json.loads(args.out.read_text())
    doc["params"] = p
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        if "resources" in parts:
            doc["resources"] = resources(p)
            # where parameter-side work weighs more than activations (small batch, as on a large
            # model per device), the bit-plane overhead shows; reported beside the batch above
            small = resources(dict(p, batch=p["small_batch"]))
            doc["resources_small_batch"] = {"batch": p["small_batch"],
                                            "step_time_ratio": small["step_time_ratio"],
                                            "bound_bsq_over_fp": small["step_time_ratio_bound_bsq_over_fp"],
                                            "msq_step_s": small["msq"]["step_s_median"],
                                            "bsq_step_s": small["bsq"]["step_s_median"]}
        if "accuracy" in parts:
            doc["accuracy"] = accuracy(p, tmp)
        if "sensitivity" in parts:
            doc["sensitivity"] = sensitivity(p)
    doc["wall_s" if not args.only else f"wall_s_{args.only}"] = time.perf_counter() - t0
    if args.out:
        args.out.write_text(json.dumps(doc, indent=2))
    print(json.dumps(doc, indent=2))
    _log(_summary(doc))


if __name__ == "__main__":
    main()
