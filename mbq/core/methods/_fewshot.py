"""What the few-shot methods share: class-split episodes as the epoch, the
(w, a) task policy, batch-statistics BN, and episode-based scoring.

Policies: ``fp`` (vanilla FOMAML / ProtoNet), ``fixed`` (QAT + FOMAML / PN at
``--bits N --act-bits``), ``sampled`` (MEBQAT: pairs drawn from the valid set).
"""
from __future__ import annotations

from abc import abstractmethod

import random

from torch import nn

from .. import bitpairs
from ..config import QuantConfig
from ..errors import MbqError
from ..fewshot.classes import format_classes, split_classes
from ..fewshot.episodes import EpisodeSampler, generator, load_episode
from ..fewshot.evaluate import run_episodes
from ..quant import FP_BITS
from ._bittasks import all_pairs, candidate_pairs, fixed_pair, warm_up_quantizers
from ._bn import use_batch_statistics
from ._task_grads import clamp_grads
from .base import Method, Setting

FP_PAIR = (FP_BITS, FP_BITS)


class FewShotMethod(Method):
    episodic = True
    policy = "fp"
    guaranteed: tuple = ()  # pairs a sampled policy puts in every draw

    def __init__(self, cfg, opts):
        super().__init__(cfg, opts)
        if hasattr(opts, "fp_path"):  # written back so a rebuilt model has the same FP path
            cfg.quant = cfg.quant.model_copy(update={"fp_path": opts.fp_path})
        if self.policy == "sampled":
            self.train_pairs = candidate_pairs(cfg, opts, self.name)[2]
        elif self.policy == "fixed":
            self.train_pairs = [fixed_pair(cfg, self.name)]
        else:
            self.train_pairs = [FP_PAIR]
        self._rng = random.Random(0)
        self._samplers: dict = {}

    def chance_top1(self) -> float:
        return 100.0 / self.opts.ways  # episodes are N-way

    def training_accuracy_transfers(self) -> bool:
        return False  # test episodes draw novel classes: a gap to training is expected

    # --- subclass hooks ----------------------------------------------------------------
    @abstractmethod
    def out_features(self) -> int:
        """Width of the network's last layer (classifier head or embedding)."""

    @abstractmethod
    def episode_score(self, model: nn.Module, ep) -> float:
        """Query accuracy (percent) of one episode at the model's current setting."""

    @abstractmethod
    def epoch_items(self, ctx, g, rng):
        """The items of one epoch, each passed to ``train_step``."""

    # --- model -------------------------------------------------------------------------
    def quant_config(self) -> QuantConfig:
        w, a = self.train_pairs[0]
        return self.cfg.quant.model_copy(update={"w_bits": w, "a_bits": a})

    def build_model(self) -> nn.Module:
        # episodes are normalised with their own statistics (MAML / ProtoNet reference code)
        return use_batch_statistics(self._create_model(self.out_features()))

    @property
    def classes(self) -> tuple[list[int], list[int]]:
        return split_classes(self.cfg.model.num_classes, self.opts.meta_train_classes,
                             self.opts.meta_test_classes)

    # --- settings ----------------------------------------------------------------------
    def evaluable_pairs(self) -> list[tuple[int, int]]:
        """MEBQAT models answer at the pairs they trained; baselines are tested at every pair."""
        return list(self.train_pairs) if self.policy == "sampled" else all_pairs(self.cfg)

    def trained_bits(self) -> list[int]:
        return sorted({w for w, _ in self.train_pairs})

    def eval_settings(self) -> list[Setting]:
        if self.policy != "sampled":
            return [Setting(*self.train_pairs[0])]
        diag = [Setting(w, w) for w in self.trained_bits() if w != FP_BITS and (w, w) in self.train_pairs]
        return [Setting(*FP_PAIR)] + diag

    def supports_bits(self, w: int) -> bool:
        return any(pw == w for pw, _ in self.evaluable_pairs())

    def supports_pair(self, w: int, a: int) -> bool:
        return (w, a) in self.evaluable_pairs()

    # --- training ----------------------------------------------------------------------
    def setup(self, ctx) -> None:
        from .._distributed import broadcast_model

        o = self.opts
        train_cls, test_cls = self.classes
        self._train_sampler = EpisodeSampler(ctx.train_set.labels, train_cls, o.ways, o.shots, o.queries,
                                             "meta-train")
        self._eval_sampler(ctx.test_set, test=True)  # fail now, not after training
        if ctx.val_set is not None:
            self._eval_sampler(ctx.val_set, test=False)
        ep = load_episode(ctx.train_set, self._train_sampler.sample(generator(self.cfg.seed, "warm-up")),
                          ctx.device)
        warm_up_quantizers(ctx.model, self.train_pairs, ep.xq)
        broadcast_model(ctx.model)
        ctx.report("log", message=f"{self.name}: {o.ways}-way {o.shots}-shot, meta-train classes "
                                  f"{format_classes(train_cls)}, meta-test classes {format_classes(test_cls)}")

    def sample_pairs(self, n: int) -> list[tuple[int, int]]:
        if self.policy == "sampled":
            return bitpairs.sample_tasks(self.train_pairs, n, self.guaranteed, self._rng)
        return [self.train_pairs[0]] * n

    def epoch_batches(self, ctx, epoch: int):
        # episodes differ per rank (data parallel); pairs are the same on every rank
        g = generator(self.cfg.seed, epoch, ctx.rank, "episodes")
        self._rng = random.Random(f"{self.name}:{self.cfg.seed}:{epoch}")
        return self.epoch_items(ctx, g, self._rng)

    def before_optimizer_step(self, ctx) -> None:
        clamp_grads(ctx.model, self.opts.grad_clamp)

    # --- evaluation --------------------------------------------------------------------
    def _eval_sampler(self, dataset, test: bool) -> EpisodeSampler:
        key = (id(dataset), test)
        if key not in self._samplers:
            o = self.opts
            cls = self.classes[1]
            queries = o.queries
            if not test:  # a small held-out split: fewer queries rather than no validation
                queries = min(queries, EpisodeSampler.max_queries(dataset.labels, cls, o.shots))
                if queries < 1:
                    raise MbqError(f"the validation split has too few images of the meta-test classes "
                                   f"for {o.shots}-shot episodes; raise --val-size or pass --val-size 0")
            self._samplers[key] = EpisodeSampler(dataset.labels, cls, o.ways, o.shots, queries,
                                                 "meta-test")
        return self._samplers[key]

    def score(self, ctx, dataset, loader) -> float:
        test = dataset is ctx.test_set
        episodes = self.opts.test_episodes if test else self.opts.val_episodes
        r = run_episodes(ctx.model, dataset, self._eval_sampler(dataset, test), episodes,
                         self.cfg.seed, self.episode_score, ctx.device)
        return r["top1"]

    def check_eval_ways(self, ways: int) -> None:
        """Whether this checkpoint can be tested on ``ways``-way episodes."""

    def evaluate_episodes(self, model: nn.Module, dataset, pair: tuple[int, int], *, episodes: int,
                          ways: int, shots: int, queries: int, seed: int, device) -> dict:
        """Mean query accuracy and 95% CI over ``episodes`` meta-test episodes at ``pair``."""
        self.check_eval_ways(ways)
        sampler = EpisodeSampler(dataset.labels, self.classes[1], ways, shots, queries, "meta-test")
        first = load_episode(dataset, sampler.sample(generator(seed, "warm-up")), device)
        warm_up_quantizers(model, [pair], first.xs)  # LSQ widths a baseline never trained
        self.apply_setting(model, Setting(*pair))
        return run_episodes(model, dataset, sampler, episodes, seed, self.episode_score, device)

    def metadata(self, ctx) -> dict:
        o = self.opts
        train_cls, test_cls = self.classes
        return {"mbq.fewshot": {"ways": o.ways, "shots": o.shots, "queries": o.queries,
                                "meta_train_classes": train_cls, "meta_test_classes": test_cls,
                                "pairs": [list(p) for p in self.train_pairs]}}
