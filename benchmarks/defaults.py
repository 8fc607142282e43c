"""Every method at its own defaults over the range users run (issue 14).

Each run is built by ``mbq.cli.train.resolve_config`` from an ``mbq train`` argument
list, so it gets exactly what the command gets: the flag defaults, the method's
defaults and the batch-scaled learning rate. Nothing here sets an optimizer flag.
The figures are the end-of-training test top-1 (full 10 000-image MNIST test set)
that ``mbq train`` prints, at the widths each method evaluates by default (EMQ:
1..8 and FP without calibration; anyprec: its trained widths; mebqat: FP and W=A).

    python benchmarks/defaults.py --quick        # a few cells, ~25 min on 2 cores
    python benchmarks/defaults.py --plan ratio   # EMQ's cost ratio at f=0.2, 4 and 10 epochs (~40 min)
    python benchmarks/defaults.py --plan fewshot # the episodic methods on the fs- cells (~30 min)
    python benchmarks/defaults.py --plan fewshot --seeds 0,1,2   # ... judged on a 3-seed mean
    python benchmarks/defaults.py                # the grid (hours on 2 cores)
    python benchmarks/defaults.py --cells c2e-r20 --methods emq,anyprec

Results go to benchmarks/results/defaults.json (rewritten after every run, so an
interrupted sweep keeps what it measured) and, with --table, to the table in
docs/benchmarks.md. Each row records the code that measured it (the git tree of mbq/, the
commit, torch's version); the table's last column shows it. Training time runs from the engine's start event to the end of the
last epoch (steps, warm-up, coreset scoring, checkpoint writes; not the final test).
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "defaults.json"
DOC = HERE.parent / "docs" / "benchmarks.md"

# cell name -> mbq train flags shared by every method of the cell (bits: the multi-bit list)
CELLS: dict[str, dict] = {
    # the centre: full-width resnet20, 10k images, the default batch
    "c2e-r20": {"arch": "resnet20", "width": 1, "subset": 10000, "epochs": 2, "batch": 128, "bits": "2,4,8"},
    "c4e-r20": {"arch": "resnet20", "width": 1, "subset": 10000, "epochs": 4, "batch": 128, "bits": "2,4,8"},
    "c10e-r20": {"arch": "resnet20", "width": 1, "subset": 10000, "epochs": 10, "batch": 128, "bits": "2,4,8"},
    # one axis at a time around it
    "c2e-r20h": {"arch": "resnet20", "width": 0.5, "subset": 10000, "epochs": 2, "batch": 128, "bits": "2,4,8"},
    "c2e-cnn": {"arch": "cnn", "width": None, "subset": 10000, "epochs": 2, "batch": 128, "bits": "2,4,8"},
    "c2e-b64": {"arch": "resnet20", "width": 1, "subset": 10000, "epochs": 2, "batch": 64, "bits": "2,4,8"},
    "c2e-b256": {"arch": "resnet20", "width": 1, "subset": 10000, "epochs": 2, "batch": 256, "bits": "2,4,8"},
    "c2e-5k": {"arch": "resnet20", "width": 1, "subset": 5000, "epochs": 2, "batch": 128, "bits": "2,4,8"},
    "c2e-full": {"arch": "resnet20", "width": 1, "subset": None, "epochs": 2, "batch": 128, "bits": "2,4,8"},
    "c2e-5w": {"arch": "resnet20", "width": 1, "subset": 10000, "epochs": 2, "batch": 128, "bits": "1,2,4,8,32"},
    "c2e-2w": {"arch": "resnet20", "width": 1, "subset": 10000, "epochs": 2, "batch": 128, "bits": "1,32"},
    # episodic methods at their own episode settings (4-way 1-shot, 100 episodes per epoch,
    # meta-train digits 0-5, meta-test 6-9): no batch or subset, only model, schedule and bits
    "fs-cnn": {"arch": "cnn", "width": None, "subset": None, "epochs": 2, "batch": None, "bits": "2,4,8",
               "episodic": True},
    "fs-cnn10e": {"arch": "cnn", "width": None, "subset": None, "epochs": 10, "batch": None, "bits": "2,4,8",
                  "episodic": True},
    "fs-r20h": {"arch": "resnet20", "width": 0.5, "subset": None, "epochs": 2, "batch": None, "bits": "2,4,8",
                "episodic": True},
    "fs-r20": {"arch": "resnet20", "width": 1, "subset": None, "epochs": 2, "batch": None, "bits": "2,4,8",
               "episodic": True},
    "fs-5w": {"arch": "cnn", "width": None, "subset": None, "epochs": 2, "batch": None, "bits": "1,2,4,8,32",
              "episodic": True},
}
# method -> flags of its own (beyond the cell's); "bits" marks the methods that take the cell's list
METHODS: dict[str, dict] = {
    "fp": {"flags": []},
    "qat": {"flags": ["--bits", "4"]},
    # a reference, not a target: what a dedicated 2-bit model reaches at the cell's budget
    "qat2": {"method": "qat", "flags": ["--bits", "2"], "reference": True},
    "anyprec": {"flags": [], "bits": True},
    "emq": {"flags": [], "bits": True},
    # item 3's cost ratio is stated at f = 0.2; at 2..4 epochs the default fraction is larger
    "emq-f0.2": {"method": "emq", "flags": ["--coreset-fraction", "0.2"], "bits": True},
    # a cheaper scoring pass (one coreset size per width instead of two): a candidate default
    "emq-f0.2-pool1": {"method": "emq", "flags": ["--coreset-fraction", "0.2", "--coreset-score-pool", "1"],
                       "bits": True},
    "mebqat": {"flags": [], "bits": True},
    "msq": {"flags": ["--target-compression", "16"]},
    "bsq": {"flags": []},
    # episodic: the dedicated baselines (FP and W4A4) and the MEBQAT few-shot variants
    "protonet": {"flags": [], "episodic": True},
    "fomaml": {"flags": [], "episodic": True},
    "qat-pn": {"flags": ["--bits", "4"], "episodic": True},
    "qat-fomaml": {"flags": ["--bits", "4"], "episodic": True},
    "mebqat-pn": {"flags": [], "bits": True, "episodic": True},
    "mebqat-maml": {"flags": [], "bits": True, "episodic": True},
}
# each MEBQAT few-shot variant against the dedicated models of its episodic algorithm
FEWSHOT_REFS = {"mebqat-pn": {"fp": "protonet", "4": "qat-pn"},
                "mebqat-maml": {"fp": "fomaml", "4": "qat-fomaml"}}
PLANS = {  # named subsets of the grid; --quick is "quick"
    "quick": {"c2e-r20": ["fp", "qat", "anyprec", "emq", "mebqat"], "c4e-r20": ["anyprec", "emq", "emq-f0.2"]},
    "ratio": {"c4e-r20": ["anyprec", "emq-f0.2"], "c10e-r20": ["anyprec", "emq-f0.2"]},
    "fewshot": {"fs-cnn": ["protonet", "fomaml", "qat-pn", "qat-fomaml", "mebqat-pn", "mebqat-maml"],
                "fs-5w": ["protonet", "fomaml", "qat-pn", "qat-fomaml", "mebqat-pn", "mebqat-maml"],
                "fs-cnn10e": ["protonet", "fomaml", "qat-pn", "qat-fomaml", "mebqat-pn", "mebqat-maml"],
                "fs-r20h": ["protonet", "fomaml", "qat-pn", "qat-fomaml", "mebqat-pn", "mebqat-maml"],
                "fs-r20": ["protonet", "fomaml", "qat-pn", "qat-fomaml", "mebqat-pn", "mebqat-maml"]},
}


def fits(cell: str, method: str) -> bool:
    """Episodic methods run on the episodic cells only, and the others on the rest."""
    return bool(CELLS[cell].get("episodic")) == bool(METHODS[method].get("episodic"))


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def argv_for(cell: dict, method: str, out: Path, seed: int = 0) -> list[str]:
    """The ``mbq train`` arguments of one run (no optimizer flag: the defaults are the product)."""
    spec = METHODS[method]
    argv = ["--method", spec.get("method", method), "--arch", cell["arch"], "--epochs", str(cell["epochs"])]
    if cell.get("batch"):
        argv += ["--batch-size", str(cell["batch"])]
    argv += ["--val-size", "0", "--seed", str(seed), "--device", "cpu", "--out", str(out)]
    if cell.get("width") is not None:
        argv += ["--width", str(cell["width"])]
    if cell.get("subset"):
        argv += ["--train-subset", str(cell["subset"])]
    if spec.get("bits"):
        argv += ["--bits", cell["bits"]]
    return argv + spec["flags"]


class _Clock:
    def __init__(self):
        self.start = self.end = None
        self.losses: list[float] = []
        self.clipped: list[float] = []  # per epoch, where a cap is set: steps the cap shrank

    def __call__(self, event, **d):
        if event == "start":
            self.start = time.perf_counter()
        elif event == "epoch":
            self.end = time.perf_counter()
            self.losses.append(d["train_loss"])
            if "clipped" in d:
                self.clipped.append(round(d["clipped"], 4))
            _log(f"    epoch {d['epoch']}: loss {d['train_loss']:.3f}  {d['wall_s']:.1f}s")
        elif event == "trained":  # after the method's finishing pass (EMQ's untrained-width BN)
            self.end = time.perf_counter()


def code_stamp(root: Path = HERE.parent) -> dict:
    """Which code measured a row: the git tree of mbq/ (unchanged by docs or benchmark
    commits), the commit, whether mbq/ had uncommitted changes, torch's version and the CPU
    kernel set torch dispatched to (float reductions, and so a run's trajectory, differ between
    torch builds and between AVX2 and AVX-512 kernels). Empty outside git."""
    import torch

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=True).stdout.strip()
    try:
        return {"tree": git("rev-parse", "--short=10", "HEAD:mbq"), "commit": git("rev-parse", "--short=10", "HEAD"),
                "dirty": bool(git("status", "--porcelain", "--", "mbq")), "date": time.strftime("%Y-%m-%d"),
                "torch": torch.__version__, "cpu": torch.backends.cpu.get_cpu_capability()}
    except (OSError, subprocess.CalledProcessError):
        return {}


def _code_text(row: dict) -> str:
    code = row.get("code") or {}
    if not code.get("tree"):
        return "—"
    return ("/".join(t[:7] for t in code["tree"].split("/")) + ("+" if code.get("dirty") else "") + (f", torch {code['torch']}" if code.get("torch") else "")
            + (f", {code['cpu']}" if code.get("cpu") else ""))


def run_one(cell_name: str, method: str, folder: Path, seed: int) -> dict:
    from mbq.cli.train import resolve_config
    from mbq.core.engine import train
    from mbq.core.methods import create_method

    argv = argv_for(CELLS[cell_name], method, folder / f"{cell_name}-{method}.safetensors", seed)
    cfg = resolve_config(argv)
    clock = _Clock()
    t0 = time.perf_counter()
    result = train(cfg, create_method(cfg), clock)
    top1 = result["top1"]
    health = result.get("health", {})
    return {"cell": cell_name, "name": method, "method": METHODS[method].get("method", method), "seed": seed,
            "argv": argv, "config": CELLS[cell_name],
            "optim": cfg.optim.model_dump(include={"optimizer", "lr", "weight_decay", "warmup_epochs",
                                                   "warmup_fraction", "grad_clip"}),
            "train_s": clock.end - clock.start, "total_s": time.perf_counter() - t0,
            "train_loss": clock.losses, "top1": top1, "problems": health.get("problems", []),
            **({"clipped": clock.clipped} if clock.clipped else {})}


# --- targets ------------------------------------------------------------------------------

def _name(row: dict) -> str:
    """The row's METHODS name (rows from before variants were named carry only the method)."""
    return row.get("name", row["method"])


def _spec(row: dict) -> dict:
    """The row's METHODS entry; a variant no longer defined (an old trial) reads as its method."""
    return METHODS.get(_name(row)) or METHODS[row["method"]]


def _trained_labels(row: dict) -> list[str]:
    if _spec(row).get("bits"):
        return ["fp" if b == "32" else b for b in row["config"]["bits"].split(",")]
    return list(row["top1"])


def _kernels(a: dict, b: dict) -> str:
    """A note when two compared rows ran on different CPU kernel sets: not side by side.

    The 2-epoch runs amplify the rounding differences between kernel sets by up to a point or
    two, so a gap between such rows is partly the machine's.
    """
    ka, kb = (r.get("code", {}).get("cpu") for r in (a, b))
    return f" [{ka} / {kb} kernels: not side by side]" if ka and kb and ka != kb else ""


def seed_of(row: dict) -> int:
    """The row's seed (rows before the field was recorded carry it in their argv)."""
    if "seed" in row:
        return int(row["seed"])
    argv = row.get("argv", [])
    return int(argv[argv.index("--seed") + 1]) if "--seed" in argv else 0


def _pooled(rows: list[dict]) -> dict[str, dict]:
    """One row per method of a cell: the mean over the seeds every method of the cell ran.

    A cell measured at seed 0 only is judged on seed 0, as before. Where every method also ran
    seeds 1 and 2, a target is judged on the mean (the few-shot cells' 600 test episodes and
    200 training episodes swing by points between seeds), and ``top1_seeds`` keeps each seed's
    figure so the verdict can show the spread.
    """
    names = list(dict.fromkeys(_name(r) for r in rows))
    seeds_of = {n: {seed_of(r) for r in rows if _name(r) == n} for n in names}
    common = sorted(set.intersection(*seeds_of.values())) if names else []
    out = {}
    for n in names:
        mine = {seed_of(r): r for r in rows if _name(r) == n}
        use = [mine[s] for s in common] or [mine[min(mine)]]
        base = dict(use[0])
        if len(use) > 1:
            labels = [k for k in base["top1"] if all(k in r["top1"] for r in use)]
            base["top1_seeds"] = {k: [r["top1"][k] for r in use] for k in labels}
            base["top1"] = {k: sum(v) / len(v) for k, v in base["top1_seeds"].items()}
            base["seeds"] = common
            if "train_s" in base:
                base["train_s"] = sum(r["train_s"] for r in use) / len(use)
            cpus = {r.get("code", {}).get("cpu") for r in use}
            trees = dict.fromkeys(r.get("code", {}).get("tree") for r in use)  # in seed order
            base["code"] = dict(base.get("code", {}), cpu="/".join(sorted(c for c in cpus if c)) or None,
                                tree="/".join(t for t in trees if t) or None)
        out[n] = base
    return out


def _gap(ref: dict, ref_lab: str, row: dict, lab: str) -> tuple[float, str]:
    """ref's top-1 at ref_lab minus row's at lab, and where both are seed means, each seed's gap."""
    gap = ref["top1"][ref_lab] - row["top1"][lab]
    a, b = ref.get("top1_seeds", {}).get(ref_lab), row.get("top1_seeds", {}).get(lab)
    if not (a and b):
        return gap, ""
    gaps = [x - y for x, y in zip(a, b)]
    # the standard error of the mean gap: how far a 1-point rule can be resolved by these seeds
    se = statistics.stdev(gaps) / len(gaps) ** 0.5
    per = " / ".join(f"{g:+.2f}" for g in gaps)
    return gap, f" [mean of seeds {','.join(map(str, row['seeds']))}; per seed {per}; s.e. {se:.2f}]"


def check_cell(rows: list[dict]) -> list[str]:
    """The issue's targets for one cell's rows; one line per target, 'ok' or 'MISS'."""
    by = _pooled(rows)
    out = []
    if "qat" in by and "fp" in by:
        gap, seeds = _gap(by["fp"], "fp", by["qat"], "4")
        out.append(f"{'ok  ' if gap <= 1.0 else 'MISS'} qat W4A4 {gap:+.2f} below fp (<= 1.0)"
                   + seeds + _kernels(by["qat"], by["fp"]))
    if "anyprec" in by:
        ref = by["anyprec"]["top1"]
        for m in [n for n in by if by[n]["method"] in ("emq", "mebqat")]:
            for lab in _trained_labels(by[m]):
                if lab in ref and lab in by[m]["top1"]:
                    gap, seeds = _gap(by["anyprec"], lab, by[m], lab)
                    out.append(f"{'ok  ' if gap <= 1.0 else 'MISS'} {m} width {lab}: {gap:+.2f} below anyprec (<= 1.0)"
                               + seeds + _kernels(by[m], by["anyprec"]))
        for name in [n for n in by if by[n]["method"] == "emq"]:
            e = by[name]["top1"]
            trained = sorted(int(b) for b in by[name]["config"]["bits"].split(",") if int(b) < 32)
            for w in (3, 5, 6, 7):
                lo = [b for b in trained if b < w]
                hi = [b for b in trained if b > w]
                if lo and hi and str(w) in e:
                    nb = min(e[str(max(lo))], e[str(min(hi))])
                    gap = nb - e[str(w)]
                    out.append(f"{'ok  ' if gap <= 1.0 else 'MISS'} {name} untrained {w}: {gap:+.2f} below its worse neighbour (<= 1.0)")
            if by["anyprec"].get("command") != by[name].get("command"):  # a ratio is measured side by side
                out.append(f"     anyprec/{name} training time: not measured in one run (rerun both to compare)")
                continue
            ratio = by["anyprec"]["train_s"] / by[name]["train_s"]
            goal = {4: 3.0, 10: 4.5}.get(by[name]["config"]["epochs"]) if name.startswith("emq-f0.2") else None
            verdict = "     " if goal is None else ("ok   " if ratio >= goal else "MISS ")
            out.append(f"{verdict}anyprec/{name} training time {ratio:.2f}x" + (f" (>= {goal})" if goal else ""))
    for m, refs in FEWSHOT_REFS.items():
        for lab, ref in refs.items():
            if m in by and ref in by and lab in by[m]["top1"]:
                ref_lab = next(iter(by[ref]["top1"]))  # a dedicated model has one setting
                gap, seeds = _gap(by[ref], ref_lab, by[m], lab)
                out.append(f"{'ok  ' if gap <= 1.0 else 'MISS'} {m} width {lab}: {gap:+.2f} below {ref} (<= 1.0)"
                           + seeds + _kernels(by[m], by[ref]))
    if "msq" in by and "fp" in by:
        gap, seeds = _gap(by["fp"], "fp", by["msq"], "mixed") if "mixed" in by["msq"]["top1"] else (
            by["fp"]["top1"]["fp"], "")
        out.append(f"{'ok  ' if gap <= 1.5 else 'MISS'} msq x16 {gap:+.2f} below fp (<= 1.5)"
                   + seeds + _kernels(by["msq"], by["fp"]))
    if rows and rows[0]["config"]["epochs"] == 2 and rows[0]["config"].get("subset") == 10000:
        if "qat2" in by:
            out.append(f"     qat2, a dedicated W2A2 model at this budget: {by['qat2']['top1']['2']:.2f}")
        for m in [n for n in by if by[n]["method"] in ("qat", "anyprec", "emq", "mebqat")
                  and not _spec(by[n]).get("reference")]:
            # the widths the run trained, and for emq the ones it serves between two trained widths;
            # a list like 1,32 trains none of 2..8, and EMQ's 2 bits then lie below its range
            q = [int(b) for b in _trained_labels(by[m]) if b != "fp"]
            span = range(min(q), max(q) + 1) if by[m]["method"] == "emq" and q else q
            judged = {k: v for k, v in by[m]["top1"].items() if k.isdigit() and 2 <= int(k) <= 8
                      and int(k) in span}
            if not judged:
                out.append(f"     {m} 2..8 bits >= 97%: trains none of 2..8 here")
                continue
            low = {k: v for k, v in judged.items() if v < 97.0}
            out.append(f"{'ok  ' if not low else 'MISS'} {m} 2..8 bits >= 97%"
                       + (f" (below: {low})" if low else ""))
    return out


# --- output ---------------------------------------------------------------------------------

def _cfg_text(c: dict) -> str:
    arch = c["arch"] + (f" w{c['width']:g}" if c.get("width") not in (None, 1) else "")
    if c.get("episodic"):
        return f"{arch}, 4-way 1-shot, {c['epochs']} ep of 100 episodes"
    return f"{arch}, {c['subset'] or 'all'} imgs, {c['epochs']} ep, batch {c['batch']}"


def _table_rows(rows: list[dict]) -> list[dict]:
    """One line per cell and method: a row measured over several seeds shows their mean (and each)."""
    cells = list(dict.fromkeys(r["cell"] for r in rows))
    return [p for c in cells for p in _pooled([r for r in rows if r["cell"] == c]).values()]


def table(rows: list[dict]) -> str:
    lines = ["| cell | method | configuration | optimizer (resolved) | top-1 per width | train s | code |",
             "|---|---|---|---|---|---|---|"]
    for r in _table_rows(rows):
        o = r["optim"]
        warm = (f", warm-up {o['warmup_fraction']:g} of run" if o.get("warmup_fraction")
                else f", warm-up {o['warmup_epochs']:g} ep" if o.get("warmup_epochs") else "")
        if o.get("grad_clip"):
            warm += f", clip {o['grad_clip']:g}"
        bits = f" bits {r['config']['bits']}" if _spec(r).get("bits") else ""
        widths = " · ".join(f"{k}: {v:.2f}" + (" (" + " / ".join(f"{x:.1f}" for x in r["top1_seeds"][k]) + ")"
                                               if "top1_seeds" in r else "") for k, v in r["top1"].items())
        if "seeds" in r:
            widths = f"mean of seeds {','.join(map(str, r['seeds']))}: " + widths
        lines.append(f"| {r['cell']} | {_name(r)} | {_cfg_text(r['config'])}{bits} | "
                     f"{o['optimizer']} {o['lr']:.4g}{warm} | {widths} | {r['train_s']:.0f} | {_code_text(r)} |")
    if any(r.get("problems") for r in rows):
        lines += ["", "Health check failures: " + "; ".join(
            f"{r['cell']}/{_name(r)} (seed {seed_of(r)}): {p}" for r in rows for p in r.get("problems", []))]
    return "\n".join(lines)


def code_summary(rows: list[dict]) -> str:
    """One line on which library code measured the rows (the table's last column)."""
    trees = Counter(_code_text(r) for r in rows)
    parts = [f"`{t}` {n} rows" if t != "—" else f"{n} rows before the stamp was recorded"
             for t, n in trees.most_common()]
    head = ("Every row measured on one library tree" if len(trees) == 1 and "—" not in trees
            else "Code that measured the rows (`mbq/` git tree, `+` = uncommitted changes; torch; "
                 "the CPU kernel set where recorded)")
    return f"{head}: " + "; ".join(parts) + "."


def target_summary(checks: dict[str, list[str]]) -> str:
    """One row per cell: how many of its targets are met, and each miss in a few words."""
    lines = ["| cell | targets met | misses |", "|---|---|---|"]
    for cell, found in checks.items():
        judged = [ln for ln in found if ln.startswith(("ok", "MISS"))]
        misses = [ln[4:].strip() for ln in judged if ln.startswith("MISS")]
        lines.append(f"| {cell} | {len(judged) - len(misses)} of {len(judged)} | "
                     + ("; ".join(misses).replace("|", "/") or "—") + " |")
    return "\n".join(lines)


def write_doc(rows: list[dict], checks: dict[str, list[str]], commands: list[str]) -> None:
    begin, end = "<!-- defaults:begin -->", "<!-- defaults:end -->"
    body = [begin, "Measured with " + ", then ".join(f"`{c}`" for c in commands)
            + " (seed 0 unless a command names another; CPU, 2 threads; later runs replace a cell's rows of"
            " the same method and seed). Where every method of a cell ran several seeds, its targets are"
            " judged on their mean and the table shows the mean with each seed's figure in brackets.",
            "", code_summary(rows), "", table(rows), "", "Targets (issue 14) per cell:", "",
            target_summary(checks), ""]
    for cell, lines in checks.items():
        body += [f"**{cell}**", "", *[f"- `{ln}`" for ln in lines], ""]
    body.append(end)
    text = DOC.read_text() if DOC.exists() else "# Benchmarks\n\n"
    if begin in text:
        text = text[:text.index(begin)] + "\n".join(body) + text[text.index(end) + len(end):]
    else:
        text += "\n" + "\n".join(body) + "\n"
    DOC.write_text(text)


def _merged(previous: dict, rows: list[dict]) -> list[dict]:
    """Earlier rows of the results file, with this run's rows replacing the same cell/method/seed."""
    new = {(r["cell"], _name(r), seed_of(r)) for r in rows}
    kept = [r for r in previous.get("rows", []) if (r["cell"], _name(r), seed_of(r)) not in new]
    order = list(CELLS)
    return sorted(kept + rows, key=lambda r: (order.index(r["cell"]) if r["cell"] in order else len(order),
                                              seed_of(r)))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="the quick plan only (~25 min on 2 cores)")
    ap.add_argument("--plan", choices=list(PLANS), help="a named subset of the grid")
    ap.add_argument("--cells", help="comma-separated cell names (default: all, or the plan's)")
    ap.add_argument("--methods", help="comma-separated methods (default: each cell's)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--seeds", help="comma-separated seeds, each a run of the whole plan (replaces --seed); "
                                    "a cell whose every method ran the same seeds is judged on their mean")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--fresh", action="store_true", help="discard the rows already in --out")
    ap.add_argument("--table", action="store_true", help="also rewrite the table in docs/benchmarks.md")
    ap.add_argument("--list", action="store_true", help="print the runs and their argv, train nothing")
    ap.add_argument("--retable", action="store_true",
                    help="recheck the rows already in --out and rewrite the docs table; train nothing")
    a = ap.parse_args(argv)
    if a.retable:
        retable(a.out)
        return

    plan_name = "quick" if a.quick else a.plan
    plan = dict(PLANS[plan_name]) if plan_name else {c: [m for m in METHODS if fits(c, m)] for c in CELLS}
    if a.cells:
        names = a.cells.split(",")
        unknown = [c for c in names if c not in CELLS]
        if unknown:
            ap.error(f"unknown cell(s) {unknown}; cells: {', '.join(CELLS)}")
        plan = {c: plan.get(c, [m for m in METHODS if fits(c, m)]) for c in names}
    if a.methods:
        want = a.methods.split(",")
        unknown = [m for m in want if m not in METHODS]
        if unknown:
            ap.error(f"unknown method(s) {unknown}; methods: {', '.join(METHODS)}")
        plan = {c: [m for m in want if fits(c, m)] for c in plan}
        plan = {c: ms for c, ms in plan.items() if ms}
        if not plan:
            ap.error("no cell of the selection runs those methods (episodic methods run on the fs- cells only)")
    try:
        seeds = [int(x) for x in a.seeds.split(",")] if a.seeds else [a.seed]
    except ValueError:
        ap.error(f"--seeds takes comma-separated integers, got {a.seeds!r}")
    if a.list:
        for seed in seeds:
            for c, ms in plan.items():
                for m in ms:
                    print(f"{c} {m}: mbq train {' '.join(argv_for(CELLS[c], m, Path(f'{c}-{m}.safetensors'), seed))}")
        return

    import torch
    torch.set_num_threads(a.threads)
    previous = {} if a.fresh or not a.out.exists() else json.loads(a.out.read_text())
    command = "python benchmarks/defaults.py " + " ".join(argv if argv is not None else sys.argv[1:])
    commands = [c for c in previous.get("commands", []) if c != command] + [command]
    rows: list[dict] = []
    stamp = code_stamp()  # taken before the first run imports mbq: the code every row runs
    with tempfile.TemporaryDirectory() as tmp:
        for seed, c in ((seed, c) for seed in seeds for c in plan):
            for m in plan[c]:
                _log(f"{c} / {m} / seed {seed}")
                row = run_one(c, m, Path(tmp), seed)
                row["command"], row["code"] = command, stamp
                _log(f"  {m}: {row['train_s']:.0f}s  " + "  ".join(f"{k}:{v:.2f}" for k, v in row["top1"].items()))
                rows.append(row)
                doc = _write_results(a.out, _merged(previous, rows), commands)
    for cell, lines in doc["checks"].items():
        print(f"{cell}:")
        for ln in lines:
            print(f"  {ln}")
    print(table(doc["rows"]))
    if a.table:
        write_doc(doc["rows"], doc["checks"], doc["commands"])


def retable(path: Path = RESULTS) -> None:
    """Recheck every cell of the results file and rewrite the table (no training)."""
    doc = json.loads(path.read_text())
    doc = _write_results(path, doc["rows"], doc["commands"])
    write_doc(doc["rows"], doc["checks"], doc["commands"])


def _write_results(path: Path, rows: list[dict], commands: list[str]) -> dict:
    """Rewritten after every run: an interrupted sweep keeps what it measured."""
    cells = list(dict.fromkeys(r["cell"] for r in rows))
    checks = {cell: check_cell([r for r in rows if r["cell"] == cell]) for cell in cells}
    doc = {"commands": commands, "rows": rows, "checks": checks}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc, indent=1))
    tmp.replace(path)
    return doc


if __name__ == "__main__":
    main()
