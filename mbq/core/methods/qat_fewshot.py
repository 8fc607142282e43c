"""QAT + FOMAML / QAT + ProtoNet baselines: few-shot training at one dedicated
pair (``--bits N --act-bits same|M|fp``), tested at every pair."""
from __future__ import annotations

from .fomaml import FOMAMLMethod
from .protonet import ProtoNetMethod


class QATFOMAMLMethod(FOMAMLMethod):
    name = "qat-fomaml"
    policy = "fixed"


class QATPNMethod(ProtoNetMethod):
    name = "qat-pn"
    policy = "fixed"
