"""Dataset registry: ``@register_dataset(name)`` factories -> (train, test)."""

from __future__ import annotations

from typing import Callable

from mbq.core.errors import MbqError

_FACTORIES: dict[str, Callable] = {}


def _canonical(name: str) -> str:
    # "Fashion_MNIST" and "fashion-mnist" name the same thing on a command line.
    return name.strip().lower().replace("_", "-")


def register_dataset(name: str):
    """Decorator: register ``fn(*, data_dir, download, image_size) -> (train, test)``."""
    key = _canonical(name)

    def deco(fn: Callable) -> Callable:
        if key in _FACTORIES:
            raise ValueError(f"dataset {key!r} is already registered")
        _FACTORIES[key] = fn
        return fn

    return deco


def list_datasets() -> list[str]:
    return sorted(_FACTORIES)


def create_dataset(
    name: str,
    data_dir: str | None = None,
    download: bool = False,
    image_size: int | None = None,
):
    """Build the (train, test) pair of a registered dataset."""
    fn = _FACTORIES.get(_canonical(name))
    if fn is None:
        raise MbqError(
            f"unknown dataset {name!r}; known datasets: {', '.join(list_datasets())}"
        )
    if image_size is not None and (not isinstance(image_size, int) or image_size < 1):
        raise MbqError(f"image size must be a positive integer, got {image_size!r}")
    return fn(data_dir=None if data_dir is None else str(data_dir),
              download=bool(download), image_size=image_size)
