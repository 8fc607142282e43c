"""PNG plots (needs the ``plot`` extra)."""
from __future__ import annotations

from pathlib import Path


def _pyplot():
    from mbq.core.errors import MbqError
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise MbqError("--plot needs matplotlib: pip install 'mbq[plot]'") from None
    return plt


def plot_top1(rows: list[dict], path: Path, title: str = "") -> None:
    plt = _pyplot()
    xs = [r["label"] for r in rows]
    ys = [r["top1"] for r in rows]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(range(len(xs)), ys, marker="o")
    ax.set_xticks(range(len(xs)), xs)
    ax.set_xlabel("bit-width")
    ax.set_ylabel("top-1 (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
