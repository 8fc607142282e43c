"""BatchNorm statistics modes: none kept (MEBQAT ``--bn-mode batch``, few-shot), or
running statistics used in training (EMQ ``--bn-stats top``)."""
from __future__ import annotations

from contextlib import contextmanager

from torch import nn


def use_batch_statistics(model: nn.Module) -> nn.Module:
    """Make every BatchNorm normalise with the current batch's statistics, also in eval().

    The running buffers are removed (as ``track_running_stats=False`` does), so
    the state dict of a model built this way has none to load or save.
    """
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.track_running_stats = False
            m.running_mean = None
            m.running_var = None
            m.num_batches_tracked = None
    return model


@contextmanager
def running_statistics(model: nn.Module):
    """Inside the block every BatchNorm normalises with (and leaves alone) its running
    statistics, as in eval(); the rest of the model keeps its mode. Gradients still flow."""
    bns = [m for m in model.modules()
           if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training and m.track_running_stats]
    for m in bns:
        m.train(False)
    try:
        yield
    finally:
        for m in bns:
            m.train(True)
