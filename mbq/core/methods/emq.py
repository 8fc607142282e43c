"""EMQ (Kim et al., NeurIPS 2025): one network for every bit-width, trained with
weight bias correction, one shared BatchNorm and bit-wise coreset sampling.

Each trained width ("child") steps on its own batch stream, drawn from its
own per-epoch subset of the data; gradients of all children accumulate into
one optimizer step. See docs/emq.md and shared/methods/EMQ.md.
"""
from __future__ import annotations

import math
from contextlib import nullcontext

import torch
from torch.nn import functional as F

from ..bitpairs import ALL_WIDTHS
from ..coreset.bitwise import BitwiseCoreset
from ..coreset.io import check_matches, read_coreset
from ..coreset.sampling import mix_seed
from ..coreset.scores import compute_scores
from ..errors import MbqError
from ..evaluate import recalibrate_bn
from ..quant import FP_BITS, set_bits
from ..quant.modules import WidthStatsBatchNorm2d
from ..quant.quantizers import ACT_QUANTIZERS
from ._bn import running_statistics
from ._multibit import MultiBitMethod, _bits_text, soft_cross_entropy
from .base import accuracy


class _ChildStreams:
    """One loader per child, iterated in lock-step: items are {bit: Batch}."""

    def __init__(self, loaders: dict):
        self.loaders = loaders

    def __len__(self) -> int:
        return min(len(ld) for ld in self.loaders.values())

    def __iter__(self):
        bits = list(self.loaders)
        for batches in zip(*(self.loaders[b] for b in bits)):
            yield dict(zip(bits, batches))


class EMQMethod(MultiBitMethod):
    name = "emq"

    def __init__(self, cfg, opts):
        super().__init__(cfg, opts)
        self.coreset: BitwiseCoreset | None = None
        self._resume_state: dict | None = None

    def quant_config(self):
        o = self.opts
        act = self.cfg.quant.act
        if o.fp_act == "clamp" and act + "_fp" in ACT_QUANTIZERS:
            act += "_fp"  # the shared BN sees one activation range at every width, FP included
        return self._quant(act=act, wbc=o.wbc, wbc_detach=o.wbc_detach,
                           wbc_per_channel=o.wbc_per_channel, switchable_bn=None,
                           width_stats_bn=o.bn_stats == "per-width")

    # --- schedule ------------------------------------------------------------------
    def steps_per_epoch(self, n_batches: int) -> int:
        """Mean optimizer steps per epoch (warm-up epochs on all data, then f of it).

        The dataset size is not known here; f * n_batches rounded up matches the
        coreset loaders' length to within a step.
        """
        o = self.opts
        if o.coreset_fraction >= 1:
            return n_batches
        warm = 0 if o.coreset or o.coreset_warmup_data == "subset" else min(o.coreset_warmup, self.cfg.epochs)
        bs = self.cfg.data.batch_size
        core = max(1, math.ceil(o.coreset_fraction * n_batches * bs / self.child_batch - 1e-9))
        total = warm * n_batches + (self.cfg.epochs - warm) * core
        return max(1, round(total / self.cfg.epochs))

    @property
    def child_batch(self) -> int:
        return self.opts.step_batch(self.cfg.data.batch_size)

    def setup(self, ctx) -> None:
        o = self.opts
        if o.fraction_is_auto and not self.cfg.resume:  # a resumed run keeps the fraction it began with
            ctx.report("log", message=f"emq: each width trains on {o.coreset_fraction:g} of the data per "
                                      f"epoch (the default for {self.cfg.epochs} epochs: max(0.2, min(1, "
                                      "2 / epochs)); --coreset-fraction sets it)")
        file = None
        if o.coreset is not None and o.coreset_fraction < 1:
            file = read_coreset(o.coreset)
            check_matches(file, ctx.train_set, o.coreset)
            missing = [b for b in self.cfg.bits if b not in file.scores]
            if missing:
                raise MbqError(f"{o.coreset} has scores for {_bits_text(file.bits)} but --bits includes "
                               f"{_bits_text(missing)}; run mbq select-coreset with --bits "
                               f"{_bits_text(self.cfg.bits)}")
        elif o.coreset is not None:
            raise MbqError("--coreset needs --coreset-fraction below 1 (the fraction the file was made with)")
        self.coreset = BitwiseCoreset(self.cfg.bits, len(ctx.train_set), fraction=o.coreset_fraction,
                                      score=o.coreset_score, sampling=o.coreset_sampling,
                                      seed=self.cfg.seed, warmup=o.coreset_warmup,
                                      rescore_every=o.coreset_rescore_every, file=file,
                                      warmup_data=o.coreset_warmup_data, mix=o.coreset_uniform_mix)
        if file is not None:
            sizes = {b: file.indices[b].numel() for b in self.cfg.bits}
            if any(k != self.coreset.k for k in sizes.values()):
                raise MbqError(f"{o.coreset} selects {max(sizes.values())} images per width but "
                               f"--coreset-fraction {o.coreset_fraction} means {self.coreset.k}; pass "
                               f"--coreset-fraction {file.meta.get('fraction')}")
        if self._resume_state is not None:
            try:
                self.coreset.load_state_dict(self._resume_state)
            except (KeyError, ValueError) as e:
                raise MbqError(f"--resume: the saved coreset state does not fit this run ({e})") from None
            self._resume_state = None

    # --- training --------------------------------------------------------------------
    def epoch_batches(self, ctx, epoch: int):
        cs = self.coreset
        if cs.needs_scores(epoch):
            self._score(ctx, epoch)
        subsets = cs.draw(epoch)
        loaders = {}
        for b in self.bits_desc:
            ld = ctx.loader(indices=subsets[b], seed_offset=b,
                            batch_size=self.child_batch if subsets[b] is not None else None)
            ld.set_epoch(epoch)
            loaders[b] = ld
        return _ChildStreams(loaders)

    def _score(self, ctx, epoch: int) -> None:
        cs, model = self.coreset, ctx.model
        if cs.score == "forgetting":
            scores = cs.tracked_scores()
        else:
            pool = self._score_pool(epoch)
            m = cs.n if pool is None else pool.numel()
            ctx.report("log", message=f"emq: scoring {m} of {cs.n} images ({cs.score}) at "
                                      f"{_bits_text(self.bits_desc)} bits")
            loader = ctx.eval_loader(ctx.train_set, indices=pool)
            scores = {}
            for b in self.bits_desc:
                set_bits(model, b, self.cfg.act_bits_for(b))
                with ctx.autocast():
                    scores[b] = compute_scores(model, loader, cs.score, cs.n, seed=self.cfg.seed, bit=b,
                                               partial=pool is not None)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            for b in self.bits_desc:  # identical on every rank, whatever the float noise
                t = scores[b].to(ctx.device)
                torch.distributed.broadcast(t, src=0)
                scores[b] = t.cpu()
        cs.set_scores(scores, epoch)
        model.train()

    def _score_pool(self, epoch: int) -> torch.Tensor | None:
        """The images one scoring pass scores (None: all): a random pool of
        --coreset-score-pool coreset sizes, fixed by (seed, epoch)."""
        cs = self.coreset
        m = math.ceil(self.opts.coreset_score_pool * cs.k)
        if m >= cs.n:
            return None
        g = torch.Generator().manual_seed(mix_seed(self.cfg.seed, epoch, 7331))
        return torch.randperm(cs.n, generator=g)[:m].sort().values

    def _teacher(self, ctx, b: int, x: torch.Tensor) -> torch.Tensor | None:
        kd = self.opts.kd
        if kd == "none" or b >= FP_BITS:
            return None
        if kd == "fp":
            tb = FP_BITS
        else:
            higher = [t for t in self.cfg.bits if t > b]
            if not higher:
                return None
            tb = min(higher)
        set_bits(ctx.model, tb, self.cfg.act_bits_for(tb))
        with torch.no_grad(), ctx.autocast():
            return ctx.model(x).detach()

    def train_step(self, ctx, item) -> dict[str, float]:
        model, cs = ctx.model, self.coreset
        stats: dict[str, float] = {}
        tot_loss = tot_acc = 0.0
        n = 0
        scale = 1.0 / len(self.bits_desc) if self.opts.child_loss == "mean" else 1.0
        for b in self.bits_desc:
            batch = item[b]
            teacher = self._teacher(ctx, b, batch.x)
            set_bits(model, b, self.cfg.act_bits_for(b))
            frozen = self.opts.bn_stats == "top" and b != self.bits_desc[0]
            with ctx.autocast(), running_statistics(model) if frozen else nullcontext():
                logits = model(batch.x)
                loss = F.cross_entropy(logits, batch.y)
                if teacher is not None:
                    loss = loss + soft_cross_entropy(logits, teacher)
            ctx.backward(loss * scale)
            logits = logits.detach()
            cs.observe(b, batch.idx, logits.argmax(1) == batch.y)
            acc = accuracy(logits, batch.y)
            stats[f"loss_{b}"], stats[f"acc_{b}"] = loss.item(), acc
            tot_loss += stats[f"loss_{b}"]
            tot_acc += acc
            n += len(batch.y)
        k = len(self.bits_desc)
        return dict(stats, loss=tot_loss / k, acc=tot_acc / k, n=n)

    def end_epoch(self, ctx, epoch: int) -> dict:
        return self.coreset.summary(epoch)

    def finish(self, ctx) -> None:
        """Measure the per-width BN statistics on the final weights (forward passes only, no
        parameter changes): of every width with --final-bn all, else of the untrained ones, so
        each serves with statistics of its own and no data is needed at eval."""
        n_img = self.opts.untrained_bn_images
        widths = self.final_bn_widths()
        has_rows = any(isinstance(m, WidthStatsBatchNorm2d) for m in ctx.model.modules())
        if not n_img or not has_rows or not widths:
            return
        batch = ctx.cfg.data.batch_size
        n_batches = max(1, math.ceil(n_img / (batch * ctx.world_size)))
        used = min(n_batches * batch * ctx.world_size, len(ctx.train_set))
        which = "every width" if self.opts.final_bn == "all" else "the untrained widths"
        ctx.report("log", message=f"emq: measuring BatchNorm statistics at {which} "
                                  f"{_bits_text(widths)} on {used} training images "
                                  "(--untrained-bn-images, --final-bn)")
        loader = ctx.loader(shuffle=True, augment=False, seed_offset=4099)
        for b in widths:
            set_bits(ctx.model, b, self.cfg.act_bits_for(b))
            with ctx.autocast():
                recalibrate_bn(ctx.model, loader, n_batches, kinds=WidthStatsBatchNorm2d)

    def final_bn_widths(self) -> list[int]:
        """The widths whose statistics ``finish`` measures, ascending (FP last)."""
        if self.opts.final_bn == "untrained":
            return self.untrained_widths()
        return [b for b in ALL_WIDTHS if self.supports_bits(b)]

    def val_settings(self):
        """With --eval-bits all (default), each epoch validates the trained widths only where
        ``finish`` will measure the others: until then they have no statistics of their own, and
        a figure for them would be of interpolated statistics the checkpoint does not serve."""
        settings = self.eval_settings()
        o = self.opts
        if o.eval_bits != "all" or o.bn_stats != "per-width" or not o.untrained_bn_images:
            return settings
        return [s for s in settings if s.w in self.cfg.bits]

    def untrained_widths(self) -> list[int]:
        """Every width the model serves that training did not normalise, ascending (FP last)."""
        return [b for b in ALL_WIDTHS if b not in self.cfg.bits and self.supports_bits(b)]

    # --- state ---------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"coreset": self.coreset.state_dict()} if self.coreset is not None else {}

    def load_state_dict(self, state: dict) -> None:
        # the engine restores before setup(); the coreset is built there (it needs the data)
        self._resume_state = state.get("coreset")

    def metadata(self, ctx) -> dict:
        o = self.opts
        cs = {"fraction": o.coreset_fraction, "score": o.coreset_score, "sampling": o.coreset_sampling,
              "uniform_mix": o.coreset_uniform_mix, "score_pool": o.coreset_score_pool,
              "batch": self.child_batch,
              "warmup": 0 if o.coreset else o.coreset_warmup, "warmup_data": o.coreset_warmup_data,
              "child_loss": o.child_loss, "bn_stats": o.bn_stats, "wbc": o.wbc,
              "untrained_bn_images": o.untrained_bn_images if o.bn_stats == "per-width" else 0,
              "final_bn": o.final_bn,
              "file": str(o.coreset) if o.coreset else None}
        return {"mbq.coreset": cs}
