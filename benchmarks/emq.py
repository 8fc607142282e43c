"""EMQ vs Any-Precision on one model, one data slice, one number of epochs.

Measures (issue 3):
  * training wall-clock of anyprec divided by that of emq --coreset-fraction 0.2,
    for bits {2,4,8} and {1,2,4,8,32} (compute limit at f = 0.2: 5x; target >= 4x);
  * MNIST test top-1 of both at every width 1..8 and FP (EMQ: no calibration;
    anyprec: BN re-calibration for the widths it did not train, as mbq eval does);
  * ablations: EMQ without WBC, EMQ without coreset (fraction 1.0), EMQ with one set of
    BN running statistics for all widths (--bn-stats batch) instead of one per width.

Every row is an ``mbq train`` argument list resolved by ``mbq.cli.train.resolve_config``
(the command's own path), so each method trains with its own defaults exactly as a user
gets them (the batch-scaled LR, EMQ's fraction-scaled LR and warm-up); --optimizer and
--lr, when given, are passed as those flags to every row.

    python benchmarks/emq.py --threads 2   # the full run (~1 h on 2 cores)
    python benchmarks/emq.py --quick    # ~1-2 min smoke version: checks the pipeline,
                                        # its accuracies are near chance and mean nothing

Training time is the time from the engine's start event to the last epoch's end:
every training step, the warm-up, the per-bit scoring and the per-epoch checkpoint
writes; not data loading or the final tests. Both wall-clock and process CPU time are
recorded; the CPU-time ratio is the steadier one on a machine shared with other work.
The results file is rewritten after every row, so an interrupted run keeps the rows it
finished (and the ratios of the pairs among them); --only 1,2 runs a subset.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ALL_WIDTHS = [1, 2, 3, 4, 5, 6, 7, 8, 32]
# (row name, method, bits, method options)
RUNS = [
    ("anyprec {2,4,8}", "anyprec", [2, 4, 8], {}),
    ("emq f=0.2 {2,4,8}", "emq", [2, 4, 8], {"coreset_fraction": 0.2}),
    ("anyprec {1,2,4,8,32}", "anyprec", [1, 2, 4, 8, 32], {}),
    ("emq f=0.2 {1,2,4,8,32}", "emq", [1, 2, 4, 8, 32], {"coreset_fraction": 0.2}),
    ("emq f=0.2 no WBC {2,4,8}", "emq", [2, 4, 8], {"coreset_fraction": 0.2, "wbc": False}),
    ("emq f=1.0 {2,4,8}", "emq", [2, 4, 8], {"coreset_fraction": 1.0}),
    ("emq f=0.2 one BN estimate {2,4,8}", "emq", [2, 4, 8], {"coreset_fraction": 0.2, "bn_stats": "batch"}),
]
FULL = {"train_subset": 20000, "epochs": 10, "width": 0.5, "test_limit": 10000}
QUICK = {"train_subset": 500, "epochs": 2, "width": 0.25, "test_limit": 300}
CALIB_BATCHES = 10  # anyprec's BN re-calibration of an untrained width: 10 x 256 training images


def _label(b: int) -> str:
    return "fp" if b >= 32 else str(b)


class _Clock:
    """Reporter: remembers when training started and when each epoch ended."""

    def __init__(self, log):
        self.log, self.start, self.epochs = log, None, []
        self.cpu_start = self.cpu_end = None

    def __call__(self, event, **d):
        if event == "start":
            self.start, self.cpu_start = time.perf_counter(), time.process_time()
        elif event == "epoch":
            self.epochs.append(time.perf_counter())
            self.cpu_end = time.process_time()
            self.log(f"    epoch {d['epoch']}: loss {d['train_loss']:.3f}  "
                     f"{d.get('coreset_size', '')} imgs/width  {d['wall_s']:.1f}s")
        elif event == "trained":  # after the method's finishing pass (EMQ's untrained-width BN)
            self.epochs.append(time.perf_counter())
            self.cpu_end = time.process_time()

    @property
    def seconds(self) -> float:
        return self.epochs[-1] - self.start

    @property
    def cpu_seconds(self) -> float:
        return self.cpu_end - self.cpu_start


def train_argv(method, bits, opts, a, out: Path) -> list[str]:
    """The ``mbq train`` arguments of one row: the command's own defaults but for what
    the row varies (no optimizer flag unless --optimizer/--lr is given here)."""
    from mbq.cli._method_options import options_argv

    argv = ["--method", method, "--bits", ",".join(map(str, bits)), "--model", "resnet20",
            "--width", f"{a.width:g}", "--epochs", str(a.epochs), "--train-subset", str(a.train_subset),
            "--val-size", "0", "--batch-size", str(a.batch_size), "--seed", str(a.seed),
            "--device", a.device, "--out", str(out)]
    if a.optimizer:
        argv += ["--optimizer", a.optimizer]
    if a.lr:
        argv += ["--lr", str(a.lr)]
    options = dict(opts, eval_bits=[max(bits)], **({"calib_batches": CALIB_BATCHES} if method == "anyprec" else {}))
    return argv + options_argv(options)


def run_one(name, method, bits, opts, a, folder, log) -> dict:
    from mbq.cli.train import resolve_config
    from mbq.core.engine import train
    from mbq.core.evaluate_checkpoint import evaluate_checkpoint
    from mbq.core.methods import create_method

    out = folder / (name.replace(" ", "_").replace("{", "").replace("}", "").replace(",", "-")
                    .replace("=", "") + ".safetensors")
    argv = train_argv(method, bits, opts, a, out)
    cfg = resolve_config(argv)  # exactly what `mbq train` would run
    log(f"  {name}: training")
    clock = _Clock(log)
    train(cfg, create_method(cfg), clock)
    log(f"  {name}: {clock.seconds:.1f}s; evaluating at every width")
    t0 = time.perf_counter()
    ev = evaluate_checkpoint(out, pairs=[(b, None) for b in ALL_WIDTHS], limit=a.test_limit,
                             device=a.device, seed=a.seed)
    top1 = {_label(r["w"]): r["top1"] for r in ev["results"]}
    row = {"name": name, "method": method, "bits": bits, "options": opts, "argv": argv,
           "optim": {k: getattr(cfg.optim, k) for k in ("optimizer", "lr", "weight_decay", "warmup_epochs",
                                                         "warmup_fraction")},
           "train_s": clock.seconds,
           "train_cpu_s": clock.cpu_seconds,
           "eval_s": time.perf_counter() - t0, "top1": top1,
           "mean_top1": sum(top1.values()) / len(top1), "notes": ev["notes"]}
    if method == "emq":  # the paper's optional "BN adaptation": shared BN statistics re-estimated per width
        ev = evaluate_checkpoint(out, pairs=[(b, None) for b in ALL_WIDTHS], limit=a.test_limit,
                                 device=a.device, seed=a.seed, recalibrate_bn=CALIB_BATCHES)
        bn = {_label(r["w"]): r["top1"] for r in ev["results"]}
        row.update(top1_bn_adapted=bn, mean_top1_bn_adapted=sum(bn.values()) / len(bn))
    return row


def _untrained_gaps(row) -> dict:
    """Per untrained width: how far below its worse trained neighbour it lands (<= 1 is the target)."""
    trained = sorted(b for b in row["bits"] if b < 32)
    gaps = {}
    for w in range(1, 9):
        if w in trained:
            continue
        lo = [b for b in trained if b < w]
        hi = [b for b in trained if b > w]
        if not lo or not hi:
            continue
        near = min(row["top1"][_label(lo[-1])], row["top1"][_label(hi[0])])
        gaps[str(w)] = near - row["top1"][str(w)]
    return gaps


def _extrapolated_recalibrated(row) -> dict:
    """EMQ top-1 with BN re-estimated only where its statistics are extrapolated.

    Per-width statistics interpolate between trained widths with no data; a width
    below the lowest or above the highest trained one (1 and FP for {2,4,8}) has a
    neighbour on one side only. Those take the BN-adapted figure (10 batches, what
    anyprec spends on every width it did not train; mbq eval --bit 1 --recalibrate-bn 10),
    the rest stay calibration-free.
    """
    from mbq.core.evaluate_checkpoint import is_extrapolated

    return {k: (row["top1_bn_adapted"][k] if is_extrapolated(32 if k == "fp" else int(k), row["bits"]) else v)
            for k, v in row["top1"].items()}


def _mean(top1: dict, skip: str | None = None) -> float:
    vals = [v for k, v in top1.items() if k != skip]
    return sum(vals) / len(vals)


def summarise(rows: dict) -> dict:
    """Ratios and targets from whichever rows are present (a partial run summarises its pairs)."""
    s = {}
    tags = [t for t in ("{2,4,8}", "{1,2,4,8,32}") if f"anyprec {t}" in rows and f"emq f=0.2 {t}" in rows]
    for tag in tags:
        ap, em = rows[f"anyprec {tag}"], rows[f"emq f=0.2 {tag}"]
        s[tag] = {"time_ratio_anyprec_over_emq": ap["train_s"] / em["train_s"],
                  "cpu_time_ratio_anyprec_over_emq": ap["train_cpu_s"] / em["train_cpu_s"],
                  "mean_top1_2_to_fp_anyprec": _mean(ap["top1"], skip="1"),
                  "mean_top1_2_to_fp_emq": _mean(em["top1"], skip="1"),
                  "mean_top1_anyprec": ap["mean_top1"], "mean_top1_emq": em["mean_top1"],
                  "mean_top1_gap": ap["mean_top1"] - em["mean_top1"],
                  "mean_top1_emq_bn_adapted": em["mean_top1_bn_adapted"],
                  "mean_top1_gap_bn_adapted": ap["mean_top1"] - em["mean_top1_bn_adapted"]}
        ext = _extrapolated_recalibrated(em)
        s[tag].update(top1_emq_extrapolated_recalibrated=ext,
                      mean_top1_emq_extrapolated_recalibrated=_mean(ext),
                      mean_top1_gap_extrapolated_recalibrated=ap["mean_top1"] - _mean(ext))
    targets = {"time_ratio_ge_4x": {t: s[t]["time_ratio_anyprec_over_emq"] >= 4 for t in tags},
               "mean_within_0.5": {t: s[t]["mean_top1_gap"] <= 0.5 for t in tags},
               "mean_within_0.5_extrapolated_recalibrated": {
                   t: s[t]["mean_top1_gap_extrapolated_recalibrated"] <= 0.5 for t in tags}}
    if "emq f=0.2 {2,4,8}" in rows:
        gaps = _untrained_gaps(rows["emq f=0.2 {2,4,8}"])
        s["emq_untrained_gap_to_neighbours"] = gaps
        targets["untrained_within_1"] = all(g <= 1 for g in gaps.values())
    s["targets"] = targets
    return s


def render(doc: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    con = Console(width=max(Console().width, 150))
    cfg = doc["config"]
    t = Table(title=f"EMQ vs anyprec — resnet20 width {cfg['width']}, MNIST {cfg['train_subset']} train "
                    f"images, {cfg['epochs']} epochs, top-1 on {cfg['test_limit']} test images")
    t.add_column("run", no_wrap=True)
    t.add_column("train s", justify="right")
    t.add_column("cpu s", justify="right")
    for b in ALL_WIDTHS:
        t.add_column(_label(b), justify="right", no_wrap=True)
    t.add_column("mean", justify="right")
    for r in doc["runs"]:
        t.add_row(r["name"], f"{r['train_s']:.0f}", f"{r['train_cpu_s']:.0f}", *(f"{r['top1'][_label(b)]:.2f}" for b in ALL_WIDTHS),
                  f"{r['mean_top1']:.2f}")
        if "top1_bn_adapted" in r:
            bn = r["top1_bn_adapted"]
            t.add_row("  + BN adaptation", "", "", *(f"{bn[_label(b)]:.2f}" for b in ALL_WIDTHS),
                      f"{r['mean_top1_bn_adapted']:.2f}")
    con.print(t)
    s = doc["summary"]
    for tag in ("{2,4,8}", "{1,2,4,8,32}"):
        if tag not in s:
            continue
        x = s[tag]
        con.print(f"bits {tag}: anyprec/emq time {x['time_ratio_anyprec_over_emq']:.2f}x wall, "
                  f"{x['cpu_time_ratio_anyprec_over_emq']:.2f}x CPU (target >= 4x, "
                  f"limit 5x); mean top-1 anyprec {x['mean_top1_anyprec']:.2f} vs emq "
                  f"{x['mean_top1_emq']:.2f} (gap {x['mean_top1_gap']:+.2f}, target <= 0.5); emq with BN "
                  f"adaptation {x['mean_top1_emq_bn_adapted']:.2f} (gap {x['mean_top1_gap_bn_adapted']:+.2f}), "
                  f"with only its extrapolated widths adapted {x['mean_top1_emq_extrapolated_recalibrated']:.2f} "
                  f"(gap {x['mean_top1_gap_extrapolated_recalibrated']:+.2f}); "
                  f"mean over 2..8 and fp: anyprec {x['mean_top1_2_to_fp_anyprec']:.2f} vs emq "
                  f"{x['mean_top1_2_to_fp_emq']:.2f}")
    if "emq_untrained_gap_to_neighbours" not in s:
        return
    gaps = ", ".join(f"{w}: {g:+.2f}" for w, g in s["emq_untrained_gap_to_neighbours"].items())
    con.print(f"emq {{2,4,8}} untrained widths, points below the worse trained neighbour: {gaps} (target <= 1)")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="small smoke version (~1-2 min; figures not meaningful)")
    p.add_argument("--train-subset", type=int)
    p.add_argument("--epochs", type=int)
    p.add_argument("--width", type=float, help="resnet20 width multiplier")
    p.add_argument("--test-limit", type=int, help="first N MNIST test images")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--optimizer", help="one optimizer for every row (default: each method's own)")
    p.add_argument("--lr", type=float, help="one learning rate for every row (default: each method's own)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: steadier timings on a shared machine)")
    p.add_argument("--emq-option", action="append", default=[], metavar="KEY=VALUE",
                   help="extra option for every EMQ row, e.g. kd=fp (repeatable)")
    p.add_argument("--only", help="comma-separated row numbers to run (1-7), for debugging")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/emq.json"))
    a = p.parse_args(argv)
    for k, v in (QUICK if a.quick else FULL).items():
        if getattr(a, k) is None:
            setattr(a, k, v)

    import torch
    torch.set_num_threads(a.threads)

    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    runs = RUNS if not a.only else [RUNS[int(i) - 1] for i in a.only.split(",")]
    extra = dict(kv.split("=", 1) for kv in a.emq_option)
    runs = [(n, m, b, dict(o, **extra) if m == "emq" else o) for n, m, b, o in runs]
    rows = {}
    t0 = time.perf_counter()
    cfg = {k: getattr(a, k) for k in ("train_subset", "epochs", "width", "test_limit", "batch_size",
                                       "optimizer", "lr", "seed", "device", "threads", "quick", "emq_option")}
    from mbq.core._atomic import atomic_write_text

    def write() -> dict:  # after every row: an interrupted run keeps what it measured
        doc = {"config": dict(cfg, arch="resnet20", dataset="mnist", torch=torch.__version__),
               "runs": list(rows.values()), "complete": len(rows) == len(runs),
               "total_s": time.perf_counter() - t0, "summary": summarise(rows)}
        a.out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(a.out, json.dumps(doc, indent=2))
        return doc

    with tempfile.TemporaryDirectory(prefix="mbq-bench-emq-") as tmp:
        for name, method, bits, opts in runs:
            rows[name] = run_one(name, method, bits, opts, a, Path(tmp), log)
            doc = write()
    render(doc)
    log(f"wrote {a.out} ({doc['total_s']:.0f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
