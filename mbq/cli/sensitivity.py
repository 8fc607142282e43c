"""``mbq sensitivity``: per-layer Hessian traces, Ω and the MSQ k rule of a checkpoint."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ._common import CkptArg, DeviceOpt, JsonOpt, QuietOpt, SeedOpt

ProbesOpt = Annotated[int, typer.Option(help="Hutchinson probes (the cap when --tol is given).")]
TolOpt = Annotated[Optional[float], typer.Option(help="Stop once the running mean of the trace changes by less than this (relative).")]
BatchesOpt = Annotated[int, typer.Option(help="Training batches the Hessian is taken over.")]
BatchSizeOpt = Annotated[int, typer.Option(help="Images per batch.")]
MinBitsOpt = Annotated[int, typer.Option(help="No layer below this width (the k rule and pruning respect it).")]
DataDirOpt = Annotated[Optional[Path], typer.Option(help="Dataset folder (default: the one used in training).")]


def _fmt(v, spec: str = ".4g") -> str:
    return "-" if v is None else format(v, spec)


def _plot(rows: list[dict], path: Path, title: str) -> None:
    from ._plot import _pyplot

    plt = _pyplot()
    names = [r["name"] for r in rows]
    xs = range(len(rows))
    fig, ax = plt.subplots(figsize=(max(6, 0.35 * len(rows) + 2), 4))
    ax.bar(xs, [r["omega"] for r in rows], color="tab:blue", label="Ω")
    ax.set_ylabel("Ω = Tr(H)/N · ||Q(W)−W||²")
    ax.set_xticks(list(xs), names, rotation=75, fontsize=7)
    ax2 = ax.twinx()
    ax2.plot(xs, [r["bits"] for r in rows], color="tab:red", marker="o", label="bits")
    ax2.set_ylabel("weight bits")
    ax.set_title(title)
    fig.legend(loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def sensitivity(
    checkpoint: CkptArg,
    probes: ProbesOpt = 64,
    tol: TolOpt = None,
    batches: BatchesOpt = 4,
    batch_size: BatchSizeOpt = 128,
    min_bits: MinBitsOpt = 2,
    data_dir: DataDirOpt = None,
    plot: Annotated[Optional[Path], typer.Option(help="Write a PNG bar chart of Ω and bits per layer.")] = None,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
    device: DeviceOpt = "auto",
    seed: SeedOpt = 0,
) -> None:
    """Per-layer Hessian trace (Hutchinson, one probe shared by all layers), Ω and the MSQ k."""
    from mbq.core.errors import MbqError
    from mbq.core.sensitivity_checkpoint import check_probe_args

    check_probe_args(probes, batches, batch_size, tol, min_bits)
    if plot is not None and not plot.parent.exists():
        raise MbqError(f"--plot: folder {plot.parent} does not exist")
    from ._common import log
    log(quiet, f"Hessian traces of {checkpoint}: {probes} probes{' max' if tol else ''}, "
               f"{batches} x {batch_size} images")
    from mbq.core.sensitivity_checkpoint import checkpoint_sensitivity

    doc = checkpoint_sensitivity(checkpoint, probes=probes, tol=tol, batches=batches,
                                 batch_size=batch_size, min_bits=min_bits, device=device, seed=seed,
                                 data_dir=str(data_dir) if data_dir else None)
    if plot is not None:
        _plot(doc["layers"], plot, f"{doc['method']} {doc['arch']}: sensitivity")
    if json_out:
        from ._common import emit_json
        emit_json(doc)
        return
    from rich.table import Table

    from ._common import stdout_console
    t = Table(title=f"{checkpoint} — Hessian sensitivity ({doc['probes']} probes, {doc['images']} images)")
    for col in ("layer", "params", "bits", "trace", "±se", "tr/N", "qerr", "Ω", "k"):
        t.add_column(col, justify="left" if col == "layer" else "right", no_wrap=True)
    for r in doc["layers"]:
        t.add_row(r["name"], f"{r['params']:,}", str(r["bits"]), _fmt(r["trace"], ".3g"),
                  _fmt(r["trace_se"], ".2g"), _fmt(r["avg_trace"], ".3g"), _fmt(r["qerr"], ".3g"),
                  _fmt(r["omega"], ".3g"), str(r["k"]))
    t.caption = "qerr = ||Q(W)-W||², Ω = tr/N · qerr; k: bits the MSQ rule prunes per round"
    con = stdout_console()
    con.print(t)
    con.print(f"whole-model trace {doc['total_trace']:.5g} ± {_fmt(doc['total_trace_se'], '.2g')} "
              f"(other parameters {doc['other_trace']:.4g}); k threshold: mean Ω {doc['threshold']:.4g}; "
              f"{doc['seconds']:.1f}s", highlight=False)


def register(app: typer.Typer) -> None:
    app.command("sensitivity")(sensitivity)
