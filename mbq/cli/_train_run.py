"""Runs a validated TrainConfig and renders the result (imports torch)."""
from __future__ import annotations

from ._common import emit_json, stdout_console
from ._progress import TrainReporter


def run_training(cfg, *, json_out: bool, quiet: bool) -> None:
    from mbq.core.engine import train
    from mbq.core.methods import create_method

    method = create_method(cfg)
    reporter = TrainReporter(quiet)
    try:
        result = train(cfg, method, reporter)
    finally:
        reporter.close()
    import os
    if int(os.environ.get("RANK", "0")) != 0:
        return
    doc = {"checkpoint": str(cfg.out), "method": cfg.method, "arch": cfg.model.arch,
           "dataset": cfg.data.name, "epochs": cfg.epochs, "top1": result["top1"]}
    if json_out:
        emit_json(doc)
        return
    from rich.table import Table

    table = Table(title=f"{cfg.method} — test top-1 ({cfg.data.name})")
    table.add_column("bits")
    table.add_column("top-1 %", justify="right")
    for k, v in result["top1"].items():
        table.add_row(k, f"{v:.2f}")
    stdout_console().print(table)
