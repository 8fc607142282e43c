"""End-of-run health check: a trained width near chance, or a training loss that
climbs over the last epochs, marks the run as failed (the CLI exits 1 on it).

Pure functions over the run's figures, so the engine, the CLI and the
benchmarks judge a run the same way.
"""
from __future__ import annotations

from typing import Iterable, Sequence

NEAR_CHANCE_SHARE = 0.1  # "near chance": under a tenth of the way from chance to 100%
RISE_EPOCHS = 3          # the loss rose over the last this-many epoch means ...
RISE_FACTOR = 1.25       # ... and ends this far above the run's best epoch


def near_chance_floor(chance: float) -> float:
    """The top-1 (percent) under which a trained width counts as near chance."""
    return chance + NEAR_CHANCE_SHARE * (100.0 - chance)


def loss_rising(losses: Sequence[float]) -> bool:
    """Whether the per-epoch training loss climbed over the last ``RISE_EPOCHS`` epochs.

    Needs every one of those epochs to be higher than the one before and the last
    to stand clearly above the run's best, so the noise of a flat loss never fires it.
    """
    if len(losses) < RISE_EPOCHS:
        return False
    tail = list(losses[-RISE_EPOCHS:])
    climbing = all(b > a for a, b in zip(tail, tail[1:]))
    return climbing and tail[-1] > RISE_FACTOR * min(losses)


def check_run(top1: dict[str, float], trained: Iterable[str], chance: float,
              losses: Sequence[float]) -> list[str]:
    """Problems with a finished run, one sentence each (empty when healthy).

    ``top1``: test top-1 per setting label; ``trained``: the labels the run trained
    (untrained widths are reported, not judged); ``losses``: mean training loss per epoch.
    """
    floor = near_chance_floor(chance)
    problems = [f"width {label} ended at {top1[label]:.2f}% top-1, near chance ({chance:.1f}%): "
                f"the run did not learn at this width"
                for label in trained if label in top1 and top1[label] < floor]
    if loss_rising(losses):
        tail = ", ".join(f"{v:.3g}" for v in losses[-RISE_EPOCHS:])
        problems.append(f"training loss rose over the last {RISE_EPOCHS} epochs ({tail}; best "
                        f"{min(losses):.3g}): the run is diverging (try a lower --lr)")
    return problems
