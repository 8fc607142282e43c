"""Training progress on stderr: a rich bar on a terminal, one line per epoch otherwise."""
from __future__ import annotations

import sys


class TrainReporter:
    def __init__(self, quiet: bool):
        from rich.console import Console

        self.console = Console(stderr=True, soft_wrap=True)
        self.quiet = quiet
        self.live = not quiet and self.console.is_terminal and sys.stderr.isatty()
        self.progress = None
        self.task = None

    def __call__(self, event: str, **d) -> None:
        if self.quiet:
            return
        getattr(self, f"_on_{event}", lambda **_: None)(**d)

    def _on_log(self, message: str) -> None:
        self.console.print(f"[dim]{message}[/]", highlight=False)

    def _on_start(self, epochs, start_epoch, steps, method, train_size, device, world_size) -> None:
        ddp = f", {world_size} processes" if world_size > 1 else ""
        self.console.print(f"training [bold]{method}[/] on {train_size} images, {epochs} epochs, "
                           f"{steps} steps/epoch, {device}{ddp}", highlight=False)
        if self.live:
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                                       TimeElapsedColumn, TimeRemainingColumn)

            self.progress = Progress(TextColumn("[bold]epoch {task.fields[epoch]}"), BarColumn(),
                                     MofNCompleteColumn(), TextColumn("{task.fields[stats]}"),
                                     TimeElapsedColumn(), TimeRemainingColumn(),
                                     console=self.console, transient=True)
            self.progress.start()
            self.task = self.progress.add_task("train", total=steps, epoch=f"{start_epoch + 1}/{epochs}",
                                               stats="")
        self.epochs = epochs

    def _on_step(self, epoch, step, steps, loss, acc, ips) -> None:
        if self.progress is not None:
            self.progress.update(self.task, completed=step, total=steps,
                                 epoch=f"{epoch + 1}/{self.epochs}",
                                 stats=f"loss {loss:.3f} acc {acc:5.1f}% {ips:,.0f} img/s")

    def _on_epoch(self, **m) -> None:
        val = m.get("val_top1") or {}
        vs = " ".join(f"{k}:{v:.2f}" for k, v in val.items())
        extra = {k: v for k, v in m.items() if k in ("compression", "avg_bits", "coreset_size")}
        ex = " ".join(f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}" for k, v in extra.items())
        if "clipped" in m:
            ex = f"{ex} grad-norm {m['grad_norm']:.2f} (capped on {m['clipped']:.0%} of steps)".strip()
        line = (f"epoch {m['epoch']}/{self.epochs}  loss {m['train_loss']:.4f}  acc {m['train_acc']:.2f}%  "
                f"val top-1 [{vs}]  {m['images_per_s']:,.0f} img/s  {m['wall_s']:.1f}s {ex}")
        if self.progress is not None:
            self.progress.console.print(line, highlight=False, markup=False)
            self.progress.reset(self.task)
        else:
            self.console.print(line, highlight=False, markup=False)

    def _on_done(self, test, out) -> None:
        self.close()
        self.console.print(f"saved {out}", highlight=False)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None
