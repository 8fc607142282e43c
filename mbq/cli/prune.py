"""``mbq prune``: give a trained checkpoint a mixed-precision scheme without training."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ._common import CkptArg, DeviceOpt, JsonOpt, QuietOpt, SeedOpt
from .sensitivity import BatchesOpt, BatchSizeOpt, DataDirOpt, MinBitsOpt, ProbesOpt, TolOpt


def prune(
    checkpoint: CkptArg,
    out: Annotated[Path, typer.Option(help="Checkpoint to write (.safetensors).")],
    target_compression: Annotated[Optional[float], typer.Option(help="Compression ratio to reach, 32*sum(N)/sum(bits*N) (16 = 2-bit average).")] = None,
    rule: Annotated[str, typer.Option(help="greedy: lower the layer with the least Ω increase per bit saved until the target; msq: one MSQ round (LSB rate < threshold, Hessian k).")] = "greedy",
    prune_threshold: Annotated[float, typer.Option(help="--rule msq: prune a layer whose LSB non-zero rate is below this.")] = 0.3,
    min_bits: MinBitsOpt = 2,
    probes: ProbesOpt = 64,
    tol: TolOpt = None,
    batches: BatchesOpt = 4,
    batch_size: BatchSizeOpt = 128,
    data_dir: DataDirOpt = None,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
    device: DeviceOpt = "auto",
    seed: SeedOpt = 0,
) -> None:
    """Assign per-layer bits to a trained checkpoint (fine-tune it with: mbq train --method qat --init OUT)."""
    from mbq.core.prune_checkpoint import check_prune_args
    from mbq.core.sensitivity_checkpoint import check_probe_args

    check_prune_args(out, target_compression, rule, prune_threshold)
    check_probe_args(probes, batches, batch_size, tol, min_bits)
    from mbq.core.prune_checkpoint import prune_checkpoint

    from ._common import log
    log(quiet, f"pruning {checkpoint} ({rule} rule) with {probes} Hessian probes")
    doc = prune_checkpoint(checkpoint, out, target=target_compression, rule=rule, alpha=prune_threshold,
                           min_bits=min_bits, probes=probes, tol=tol, batches=batches,
                           batch_size=batch_size, device=device, seed=seed,
                           data_dir=str(data_dir) if data_dir else None)
    for note in doc["notes"]:
        log(quiet, f"note: {note}")
    if json_out:
        from ._common import emit_json
        emit_json(doc)
        return
    from rich.table import Table

    from ._common import stdout_console
    omega = {r["name"]: r["omega"] for r in doc["sensitivity"]}
    params = {r["name"]: r["params"] for r in doc["sensitivity"]}
    t = Table(title=f"{checkpoint} -> {doc['out']} ({doc['rule']})")
    for col in ("layer", "params", "Ω", "bits before", "bits after"):
        t.add_column(col, justify="left" if col == "layer" else "right")
    for name, b in doc["bits_before"].items():
        a = doc["bits_after"][name]
        t.add_row(name, f"{params[name]:,}", f"{omega[name]:.4g}", str(b),
                  f"[bold]{a}[/]" if a != b else str(a))
    con = stdout_console()
    con.print(t)
    con.print(f"compression {doc['compression_before']:.2f}x -> {doc['compression_after']:.2f}x "
              f"(average {doc['average_bits_before']:.2f} -> {doc['average_bits_after']:.2f} bits); "
              f"{len(doc['steps'])} steps; wrote {doc['out']}", highlight=False)


def register(app: typer.Typer) -> None:
    app.command("prune")(prune)
