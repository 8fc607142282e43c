"""MEBQAT-PN: ProtoNet where each episode is trained at ``--meta-batch`` random
(w, a) pairs ((FP, FP) always among them with ``--guarantee-fp``); the query
losses' gradients are averaged per parameter, clamped, and applied in one Adam step."""
from __future__ import annotations

from ._bittasks import check_room
from ._fewshot import FP_PAIR
from .protonet import ProtoNetMethod


class MEBQATPNMethod(ProtoNetMethod):
    name = "mebqat-pn"
    policy = "sampled"

    def __init__(self, cfg, opts):
        super().__init__(cfg, opts)
        self.guaranteed = (FP_PAIR,) if opts.guarantee_fp else ()
        check_room(opts.meta_batch, self.guaranteed, self.train_pairs, "--no-guarantee-fp")

    @property
    def pairs_per_episode(self) -> int:
        return self.opts.meta_batch
