"""BatchNorm without running statistics (MEBQAT ``--bn-mode batch``, few-shot)."""
from __future__ import annotations

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
