"""Shared by the methods whose tasks are (weight, activation) pairs: the
candidate sets and valid pairs of a config, and quantizer warm-up."""
from __future__ import annotations

import torch
from torch import nn

from .. import bitpairs
from ..errors import MbqError
from ..quant import FP_BITS, set_bits


def _fmt(bits) -> str:
    return ",".join("fp" if b >= FP_BITS else str(b) for b in bits)


def candidate_pairs(cfg, opts, method: str) -> tuple[list[int], list[int], list[tuple[int, int]]]:
    """(weight widths, activation widths, valid pairs) from ``--bits`` and ``--act-bits-candidates``.

    FP is always a candidate: (FP, FP) is the guaranteed task and the teacher.
    """
    if cfg.act_bits != "same":
        raise MbqError(f"--act-bits does not apply to --method {method}: activation widths are "
                       "drawn per task; restrict them with --act-bits-candidates")
    ws = sorted(set(cfg.bits) | {FP_BITS})
    acts = sorted(set(opts.act_bits_candidates or cfg.bits) | {FP_BITS})
    if 1 in ws and cfg.quant.weight != "dorefa":
        raise MbqError(f"the {cfg.quant.weight} weight quantizer has no 1-bit form; drop 1 from "
                       "--bits or use --quantizer dorefa / sat")
    pairs = bitpairs.valid_pairs(ws, acts)
    if not [p for p in pairs if p != (FP_BITS, FP_BITS)]:
        raise MbqError(f"--bits {_fmt(cfg.bits)} with activation candidates {_fmt(acts)} gives no "
                       "quantized (w, a) pair to train (1-bit activations need 1-bit weights); "
                       "add widths such as 2,4,8")
    return ws, acts, pairs


def check_room(meta_batch: int, guaranteed, pairs, turn_off: str | None = None) -> None:
    """Refuse a ``--meta-batch`` that leaves no task beside the guaranteed ones.

    Such a run draws only the guaranteed pairs and never trains the others.
    """
    fix = f"raise it or pass {turn_off}" if turn_off else "raise it"
    names = " and ".join(f"({_fmt([w])}, {_fmt([a])})".replace("fp", "FP") for w, a in guaranteed)
    if meta_batch < len(guaranteed):
        raise MbqError(f"--meta-batch {meta_batch} is smaller than the {len(guaranteed)} "
                       f"guaranteed tasks ({names}); {fix}")
    if meta_batch == len(guaranteed) and len(pairs) > len(guaranteed):
        raise MbqError(f"--meta-batch {meta_batch} holds only the guaranteed {names}, so no other "
                       f"pair would ever train; {fix}")


def fixed_pair(cfg, method: str) -> tuple[int, int]:
    """The one (w, a) of a dedicated-pair baseline: ``--bits N`` and ``--act-bits``."""
    if len(cfg.bits) != 1:
        raise MbqError(f"--method {method} trains one pair; got --bits {_fmt(cfg.bits)} "
                       "(give one width, and --act-bits for the activations)")
    w, a = cfg.bits[0], cfg.act_bits_for(cfg.bits[0])
    if not bitpairs.is_valid_pair(w, a):
        raise MbqError(f"(w{_fmt([w])}, a{_fmt([a])}) is not a valid pair: FP weights need FP "
                       "activations, 1-bit activations need 1-bit weights")
    if w == 1 and cfg.quant.weight != "dorefa":
        raise MbqError(f"the {cfg.quant.weight} weight quantizer has no 1-bit form; use --quantizer dorefa")
    return w, a


def all_pairs(cfg) -> list[tuple[int, int]]:
    """Every valid pair the model's quantizers can run (1-bit only with DoReFa weights)."""
    widths = bitpairs.ALL_WIDTHS if cfg.quant.weight == "dorefa" else bitpairs.ALL_WIDTHS[1:]
    return bitpairs.valid_pairs(widths)


def uses_lsq(model: nn.Module) -> bool:
    from ..quant.quantizers import LSQAct, LSQWeight
    return any(isinstance(m, (LSQAct, LSQWeight)) for m in model.modules())


@torch.no_grad()
def warm_up_quantizers(model: nn.Module, pairs, x: torch.Tensor) -> None:
    """Initialise LSQ steps of every width in ``pairs`` on the real weights, up front.

    LSQ sets a width's step on its first use; doing it here keeps that out of
    copies (the MAML inner loop) and identical across DDP ranks (broadcast after).
    """
    if not uses_lsq(model):
        return
    # train-mode statistics (as training will see them), running stats left untouched
    bns = [(m, m.momentum) for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for m, _ in bns:
        m.momentum = 0.0
    was_training = model.training
    model.train()
    seen_w, seen_a = set(), set()
    try:
        for w, a in pairs:
            if w in seen_w and a in seen_a:
                continue
            seen_w.add(w)
            seen_a.add(a)
            set_bits(model, w, a)
            model(x)
    finally:
        for m, mom in bns:
            m.momentum = mom
        model.train(was_training)
