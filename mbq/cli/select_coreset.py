"""``mbq select-coreset``: per-bit importance scores and a first per-bit selection."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from mbq.core.defaults import EVAL_BATCH

from ._common import CkptArg, DeviceOpt, JsonOpt, QuietOpt, SeedOpt


def select_coreset_cmd(
    checkpoint: CkptArg,
    out: Annotated[Path, typer.Option(help="Coreset file to write (.safetensors).")],
    bits: Annotated[Optional[str], typer.Option(help="Widths to score, e.g. 2,4,8 (default: the checkpoint's trained widths).")] = None,
    fraction: Annotated[float, typer.Option(help="Fraction of the training set each width keeps, in (0, 1].")] = 0.2,
    score: Annotated[str, typer.Option(help="el2n, grand, entropy or random.")] = "el2n",
    sampling: Annotated[str, typer.Option(help="weighted (prop. to score plus its mean), stratified, topk or random.")] = "weighted",
    uniform_mix: Annotated[float, typer.Option(help="weighted: share of the probability spread uniformly (0 = proportional to the score).")] = 0.5,
    batch_size: Annotated[int, typer.Option(help="Scoring batch size.")] = EVAL_BATCH,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
    device: DeviceOpt = "auto",
    seed: SeedOpt = 0,
) -> None:
    """Per-bit importance scores and a first selection (for mbq train --method emq --coreset).

    Scores every image of the checkpoint's training split at each width and
    writes them, with one subset per width, as a safetensors file."""
    from mbq.core.config import parse_bits
    from mbq.core.errors import MbqError

    _choice("--score", score, ("el2n", "grand", "entropy", "random", "forgetting"))
    _choice("--sampling", sampling, ("weighted", "stratified", "topk", "random"))
    if batch_size < 1:
        raise MbqError(f"--batch-size must be at least 1, got {batch_size}")
    try:
        widths = parse_bits(bits, allow_all=False) if bits is not None else None
    except ValueError as e:
        raise MbqError(str(e)) from None

    from mbq.core.coreset.select import select_coreset

    from ._common import stderr_console
    bar = _Bar(quiet)
    try:
        result = select_coreset(checkpoint, out, bits=widths, fraction=fraction, score=score,
                                sampling=sampling, uniform_mix=uniform_mix, batch_size=batch_size, device=device, seed=seed,
                                start=bar.start, progress=bar.advance)
    finally:
        bar.close()
    if not quiet:
        for note in result["notes"]:
            stderr_console().print(f"note: {note}", highlight=False)
    if json_out:
        from ._common import emit_json
        emit_json({k: v for k, v in result.items() if k != "notes"})
        return
    _render(result)


def _choice(flag: str, value: str, allowed: tuple[str, ...]) -> None:
    from mbq.core.errors import MbqError
    if value not in allowed:
        raise MbqError(f"{flag} must be one of {', '.join(allowed)} (got {value})")


class _Bar:
    """A rich progress bar on stderr when it is a terminal (and not --quiet)."""

    def __init__(self, quiet: bool):
        import sys

        from ._common import stderr_console
        self.console = stderr_console()
        self.live = not quiet and self.console.is_terminal and sys.stderr.isatty()
        self.progress = self.task = None

    def start(self, total: int) -> None:
        if not self.live:
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
        self.progress = Progress(TextColumn("scoring"), BarColumn(), MofNCompleteColumn(),
                                 TimeRemainingColumn(), console=self.console, transient=True)
        self.progress.start()
        self.task = self.progress.add_task("score", total=total)

    def advance(self, n: int) -> None:
        if self.progress is not None:
            self.progress.advance(self.task, n)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None


def _render(r: dict) -> None:
    from rich.table import Table

    from ._common import stdout_console
    con = stdout_console()
    con.print(f"wrote {r['out']}: {r['subset_size']} of {r['size']} {r['dataset']} images per width "
              f"({r['score']}, {r['sampling']})", highlight=False)
    t = Table(title="per-bit scores")
    for col in ("bits", "mean", "std", "min", "median", "max"):
        t.add_column(col, justify="right")
    for b, s in r["stats"].items():
        t.add_row("fp" if int(b) >= 32 else b, *(f"{s[k]:.4f}" for k in ("mean", "std", "min", "median", "max")))
    con.print(t)
    if r["overlap"]:
        ov = "  ".join(f"{k}: {v:.2f}" for k, v in r["overlap"].items())
        con.print(f"subset overlap between widths  {ov}", highlight=False)


def register(app: typer.Typer) -> None:
    app.command("select-coreset")(select_coreset_cmd)
