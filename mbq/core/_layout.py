"""Channels-last memory layout for inference passes on CPU.

oneDNN's CPU convolutions run about 1.3-1.7x faster on NHWC tensors for the
small-channel networks mbq trains (resnet20, forward only). Only no-grad passes
switch (evaluation, coreset scoring, BatchNorm statistics): training in NHWC
changes every result's last digits and its gain varied between machines. The
model's parameters go back to their own layout afterwards (the optimizer's
state keeps matching them).
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator

import torch
from torch import nn


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


def _to_nhwc(x: torch.Tensor) -> torch.Tensor:
    # restride even where is_contiguous(channels_last) already holds (C == 1 or
    # 1x1 kernels are ambiguous): oneDNN picks its layout from the actual strides
    if x.dim() != 4:
        return x
    return torch.empty_like(x, memory_format=torch.channels_last).copy_(x)


@contextmanager
def inference_layout(model: nn.Module) -> Iterator[Callable[[torch.Tensor], torch.Tensor]]:
    """Within the block the model's 4-d tensors are channels-last (CPU only).

    Yields the function that puts an input batch in the matching layout.
    """
    tensors = [t for t in list(model.parameters()) + list(model.buffers()) if t.dim() == 4]
    if not tensors or any(t.device.type != "cpu" for t in tensors):
        yield _identity
        return
    saved = [(t, t.data) for t in tensors]
    for t in tensors:
        t.data = _to_nhwc(t.data)
    try:
        yield _to_nhwc
    finally:
        for t, own in saved:  # the original storage, with anything written meanwhile
            own.copy_(t.data)
            t.data = own
