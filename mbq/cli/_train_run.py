"""Runs a validated TrainConfig and renders the result (imports torch)."""
from __future__ import annotations

from ._common import emit_json, stderr_console, stdout_console
from ._progress import TrainReporter


def run_training(cfg, *, json_out: bool, quiet: bool, health_check: bool = True) -> None:
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
    health = result.get("health", {"healthy": True, "problems": []})
    doc = {"checkpoint": str(cfg.out), "method": cfg.method, "arch": cfg.model.arch,
           "dataset": cfg.data.name, "epochs": cfg.epochs, "top1": result["top1"],
           "healthy": health["healthy"], "problems": health["problems"]}
    if json_out:
        emit_json(doc)
    else:
        _print_table(cfg, result)
    if health["problems"]:
        _report_problems(cfg, health["problems"], fail=health_check)


def _report_problems(cfg, problems: list[str], *, fail: bool) -> None:
    """The checkpoint is kept (for inspection); with the check on, the run still fails."""
    import typer

    console = stderr_console()
    for p in problems:
        console.print(f"{'error' if fail else 'warning'}: {p}", highlight=False, markup=False)
    if not fail:
        return
    console.print(f"error: training failed its health check; the checkpoint is at {cfg.out} "
                  f"for inspection", highlight=False, markup=False)
    raise typer.Exit(1)


def _print_table(cfg, result) -> None:
    from rich.table import Table

    table = Table(title=f"{cfg.method} — test top-1 ({cfg.data.name})")
    table.add_column("bits")
    table.add_column("top-1 %", justify="right")
    for k, v in result["top1"].items():
        table.add_row(k, f"{v:.2f}")
    stdout_console().print(table)
