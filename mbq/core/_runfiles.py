"""The files a training run keeps beside its checkpoint. Torch-free."""
from __future__ import annotations

from pathlib import Path


def _beside(out: Path, suffix: str) -> Path:
    out = Path(out)
    return out.with_name(out.name.removesuffix(".safetensors") + suffix)


def state_path(out: Path) -> Path:
    """Optimizer, schedule, RNG and method state: what ``--resume`` continues from."""
    return _beside(out, ".state.pt")


def metrics_path(out: Path) -> Path:
    return _beside(out, ".metrics.jsonl")


def config_path(out: Path) -> Path:
    """The resolved configuration the run trains with (every method option recorded)."""
    return _beside(out, ".config.json")
