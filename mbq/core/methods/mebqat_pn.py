"""MEBQAT-PN: ProtoNet where each episode is trained at ``--meta-batch`` random
(w, a) pairs; the query losses' gradients are averaged per parameter, clamped,
and applied in one Adam step."""
from __future__ import annotations

from .protonet import ProtoNetMethod


class MEBQATPNMethod(ProtoNetMethod):
    name = "mebqat-pn"
    policy = "sampled"

    @property
    def pairs_per_episode(self) -> int:
        return self.opts.meta_batch
