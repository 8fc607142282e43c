"""``mbq export``: a checkpoint as a packed integer file or an ONNX QDQ graph."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ._common import CkptArg, DeviceOpt, JsonOpt, QuietOpt, SeedOpt


def export_cmd(
    checkpoint: CkptArg,
    fmt: Annotated[str, typer.Option("--format", "-f", help="packed (bit-packed safetensors, integer runtime) or onnx (QuantizeLinear/DequantizeLinear graph).")] = "packed",
    bit: Annotated[Optional[str], typer.Option("--bit", help="Width to export (1..8 or fp), or 'all': one file per trained width. Default: the checkpoint's own precision (its scheme for mixed precision).")] = None,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="File to write (default: beside the checkpoint). With --bit all the width goes into each name (model.4bit.onnx).")] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite existing output files.")] = False,
    opset: Annotated[int, typer.Option(help="ONNX opset (21 or newer: INT4/UINT4 Q/DQ).")] = 21,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
    device: DeviceOpt = "auto",
    seed: SeedOpt = 0,
) -> None:
    """Export a checkpoint at one or every bit-width; prints paths, sizes and sha256."""
    from ._common import log

    from mbq.core.export.export_checkpoint import export_checkpoint

    result = export_checkpoint(checkpoint, fmt=fmt, bit=bit, out=out, force=force, device=device,
                               seed=seed, opset=opset, report=lambda m: log(quiet, m))
    for note in result["notes"]:
        log(quiet, f"note: {note}")
    if json_out:
        from ._common import emit_json
        emit_json(result)
        return
    from rich.table import Table

    from ._common import stdout_console
    t = Table(title=f"{result['checkpoint']} — {result['method']} {result['arch']} as {result['format']}")
    for col in ("file", "bits", "bytes", "of checkpoint", "scheme bytes", "sha256"):
        t.add_column(col, justify="left" if col == "file" else "right",
                     overflow="fold" if col == "file" else "ellipsis")
    for f in result["files"]:
        t.add_row(f["path"], f["label"], f"{f['size']:,}", f"{f['size'] / f['checkpoint_size']:.1%}",
                  f"{f['theoretical_bytes']:,}", f["sha256"][:16])
    stdout_console().print(t)


def register(app: typer.Typer) -> None:
    app.command("export")(export_cmd)
