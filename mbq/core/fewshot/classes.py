"""Meta-train / meta-test class splits. Pure Python (used by the torch-free options)."""
from __future__ import annotations

from ..errors import MbqError

TRAIN_FRACTION = 0.6  # MNIST: digits 0-5 meta-train, 6-9 meta-test


def parse_classes(spec, name: str = "--meta-train-classes") -> list[int]:
    """``"0-5"``, ``"0,2,4"``, ``"0-3,8"`` or a list of ints -> sorted distinct class indices.

    Raises ValueError with one line for anything else.
    """
    if isinstance(spec, (list, tuple)):
        parts = [str(p) for p in spec]
    else:
        parts = [p.strip() for p in str(spec).split(",")]
    out: list[int] = []
    for p in parts:
        lo, sep, hi = p.partition("-")
        try:
            a = int(lo)
            b = int(hi) if sep else a
        except ValueError:
            raise ValueError(f"{name}: '{p}' is not a class index or range (use e.g. 0-5 or 0,1,2)") from None
        if a < 0 or b < a:
            raise ValueError(f"{name}: '{p}' is not a valid range (use e.g. 0-5)")
        out.extend(range(a, b + 1))
    if not out:
        raise ValueError(f"{name} needs class indices such as 0-5")
    if len(set(out)) != len(out):
        raise ValueError(f"{name} lists a class twice: {spec}")
    return sorted(out)


def split_classes(num_classes: int, train: list[int] | None, test: list[int] | None) -> tuple[list[int], list[int]]:
    """(meta-train, meta-test) class lists, disjoint; defaults split the classes 60/40 in order."""
    if num_classes < 2:
        raise MbqError(f"few-shot training needs a dataset with at least 2 classes (it has {num_classes})")
    cut = max(1, min(num_classes - 1, round(TRAIN_FRACTION * num_classes)))
    if train is None:
        train = (list(range(cut)) if test is None
                 else [c for c in range(num_classes) if c not in test])
    if test is None:
        test = [c for c in range(num_classes) if c not in train]
    for flag, cls in (("--meta-train-classes", train), ("--meta-test-classes", test)):
        bad = [c for c in cls if c >= num_classes]
        if bad:
            raise MbqError(f"{flag}: class {bad[0]} does not exist (the dataset has classes 0-{num_classes - 1})")
        if not cls:
            raise MbqError(f"{flag} is empty: every class is in the other split; give both splits explicitly")
    both = sorted(set(train) & set(test))
    if both:
        raise MbqError(f"meta-train and meta-test classes must be disjoint; both contain {both}")
    return list(train), list(test)


def format_classes(cls: list[int]) -> str:
    """[0, 1, 2, 5] -> '0-2,5'."""
    out, i = [], 0
    while i < len(cls):
        j = i
        while j + 1 < len(cls) and cls[j + 1] == cls[j] + 1:
            j += 1
        out.append(str(cls[i]) if i == j else f"{cls[i]}-{cls[j]}")
        i = j + 1
    return ",".join(out)
