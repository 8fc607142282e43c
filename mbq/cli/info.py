"""``mbq info``: what a checkpoint holds."""
from __future__ import annotations

import typer

from ._common import CkptArg, DeviceOpt, JsonOpt, QuietOpt, SeedOpt


def info(checkpoint: CkptArg, json_out: JsonOpt = False, quiet: QuietOpt = False,
         device: DeviceOpt = "cpu", seed: SeedOpt = 0) -> None:
    """Architecture, method, bit-widths, per-layer scheme, metrics and compression ratio."""
    from mbq.core.checkpoint_info import checkpoint_info

    doc = checkpoint_info(checkpoint)
    if json_out:
        from ._common import emit_json
        emit_json(doc)
        return
    from rich.table import Table

    from ._common import stdout_console
    con = stdout_console()
    for k in ("checkpoint", "format", "method", "arch", "dataset", "bits", "parameters",
              "compression", "average_bits", "created", "mbq_version"):
        if k in doc:
            v = doc[k]
            v = f"{v:.2f}x" if k == "compression" else f"{v:.2f}" if isinstance(v, float) else v
            con.print(f"[bold]{k:>13}[/]  {v}", highlight=False)
    if doc.get("metrics"):
        con.print(f"[bold]{'metrics':>13}[/]  {doc['metrics']}", highlight=False)
    hist = (doc.get("extra") or {}).get("prune_history")
    if isinstance(hist, list) and hist:
        epochs = sorted({h["epoch"] for h in hist if "epoch" in h})
        when = f" in epochs {epochs[0]}-{epochs[-1]}" if epochs else ""
        con.print(f"[bold]{'pruning':>13}[/]  {len(hist)} steps{when} (--json for each)", highlight=False)
    for k, v in (doc.get("extra") or {}).items():  # method settings, e.g. emq's coreset
        if k != "prune_history" and isinstance(v, dict):
            text = ", ".join(f"{a}={b}" for a, b in v.items() if b is not None)
            con.print(f"[bold]{k:>13}[/]  {text}", highlight=False)
    t = Table(title="per-layer precision")
    for col in ("layer", "kind", "params", "w bits", "a bits"):
        t.add_column(col, justify="right" if col != "layer" else "left")
    for r in doc["layers"]:
        t.add_row(r["name"], r["kind"], f"{r['params']:,}", str(r["w"]), str(r["a"]))
    con.print(t)


def register(app: typer.Typer) -> None:
    app.command("info")(info)
