"""End-of-run health check: a trained width near chance or far under the last
epoch's training accuracy, or a training loss that climbs over the last epochs,
marks the run as failed (the CLI exits 1 on it).

Pure functions over the run's figures, so the engine, the CLI and the
benchmarks judge a run the same way.
"""
from __future__ import annotations

from typing import Iterable, Sequence

# "near chance": under a fifth of the way from chance to 100% (28% for 10 classes, 40% for
# 4-way episodes). A tenth (19%) passed anyprec --kd none at 19-23% on MNIST. A quarter would
# also flag few-shot widths that learned: 4-way 1-shot episodes of novel classes top out near
# 60-67% here, and mebqat-pn's 2 bits on resnet20 w0.5 end at 43-44%
NEAR_CHANCE_SHARE = 0.2
RISE_EPOCHS = 3          # the loss rose over the last this-many epoch means ...
RISE_FACTOR = 1.25       # ... and ends this far above the run's best epoch
COLLAPSE_SHARE = 0.5     # a trained width tested under this share of the last epoch's training accuracy


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
              losses: Sequence[float], train_acc: float | None = None,
              advice: str | None = None) -> list[str]:
    """Problems with a finished run, one sentence each (empty when healthy).

    ``top1``: test top-1 per setting label; ``trained``: the labels the run trained
    (untrained widths are reported, not judged); ``losses``: mean training loss per epoch;
    ``train_acc``: the last epoch's mean training accuracy (percent), if known; ``advice``:
    the method's next step for a run that did not learn, added once to the first width
    near chance. A width that trained well but tests under half of ``train_acc`` lost what
    it learned after the last step or in evaluation (a pruning round with no training after it, BatchNorm
    statistics that do not fit the width): near chance is not the only way to fail.
    """
    floor = near_chance_floor(chance)
    problems = []
    for label in [t for t in trained if t in top1]:
        v = top1[label]
        if v < floor:
            problems.append(f"width {label} ended at {v:.2f}% top-1, near chance ({chance:.1f}%): "
                            "the run did not learn at this width")
            if advice:
                problems[-1] += f"; {advice}"
                advice = None
        elif train_acc is not None and train_acc > floor and v < COLLAPSE_SHARE * train_acc:
            problems.append(f"width {label} ended at {v:.2f}% top-1, under half the last epoch's "
                            f"training accuracy ({train_acc:.1f}%): the trained model does not hold "
                            "in evaluation")
    if loss_rising(losses):
        tail = ", ".join(f"{v:.3g}" for v in losses[-RISE_EPOCHS:])
        problems.append(f"training loss rose over the last {RISE_EPOCHS} epochs ({tail}; best "
                        f"{min(losses):.3g}): the run is diverging (try a lower --lr)")
    return problems
