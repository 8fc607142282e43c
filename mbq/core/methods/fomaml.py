"""First-order MAML (FP baseline, ``--method fomaml``): ``--meta-batch`` episodes
per step, each adapted with ``--inner-steps`` SGD steps on its support set; the
query-loss gradients at the adapted weights are averaged into the shared ones."""
from __future__ import annotations

import copy
import math

from ..errors import MbqError
from ..fewshot import maml
from ..fewshot.episodes import load_episode
from ..quant import set_bits
from ._fewshot import FewShotMethod
from ._task_grads import TaskGradients, usage_masks
from .base import accuracy

_WILD_LR = 1e-2  # above it the advice is a smaller step, not more steps


class FOMAMLMethod(FewShotMethod):
    name = "fomaml"
    policy = "fp"

    def __init__(self, cfg, opts):
        super().__init__(cfg, opts)
        self._fast = None

    def out_features(self) -> int:
        return self.opts.ways  # an N-way head, episode labels 0..N-1

    def steps_per_epoch(self, n_batches: int) -> int:
        return math.ceil(self.opts.episodes_per_epoch / self.opts.meta_batch)

    def near_chance_advice(self) -> str | None:
        # what to try is the method's step for a model that learns its features, where a run took
        # fewer or smaller steps (resnet20 w0.5, 200 episodes: fomaml 34.58 at the paper's step,
        # 54.94 at 3e-3)
        o, lr, opt = self.opts, self.cfg.optim.lr, self.cfg.optim.optimizer
        steps = self.steps_per_epoch(0) * self.cfg.epochs
        advised_batch, advised_lr = type(o).learning_step(self.cfg.model.arch)
        tries = ([f"--meta-batch {advised_batch} ({o.meta_batch // advised_batch}x the outer steps)"]
                 if o.meta_batch > advised_batch else [])
        if opt != "sgd" and lr < advised_lr:
            tries.append(f"--lr {advised_lr:g}")
        elif opt != "sgd" and lr > _WILD_LR:
            tries.append("a lower --lr")
        tries.append("more --epochs")
        name = {"adam": "Adam", "adamw": "AdamW", "sgd": "SGD"}.get(opt, opt)
        # a query loss above chance's is the inner loop overshooting, which no outer step mends
        # (vit_tiny fomaml: loss 2.5-3.9 at --inner-lr 0.1, 1.36-1.40 at 0.01)
        return (f"MAML took {steps} outer step{'s' * (steps != 1)} at {name} {lr:g}; try "
                f"{', '.join(tries)}, and a lower --inner-lr (now {o.inner_lr:g}) if the training loss "
                f"sits above ln({o.ways}) = {math.log(o.ways):.3f} (docs/mebqat.md, \"MAML's outer step\")")

    def divergence_advice(self) -> str:
        # the inner loop's plain SGD steps are the likelier cause: on mobilenet_v2 its support
        # gradients reach norms of 1e3 (resnet20: 2-10), while Adam bounds the outer step
        return (f"Lower --inner-lr (now {self.opts.inner_lr:g}: {self.opts.inner_steps} plain SGD steps "
                "on each support set), then --lr, or check the data.")

    def _fast_copy(self, model):
        if self._fast is None or self._fast[0] is not model:
            self._fast = (model, copy.deepcopy(model))
        return self._fast[1]

    def epoch_items(self, ctx, g, rng):
        for _ in range(self.steps_per_epoch(0)):
            pairs = self.sample_pairs(self.opts.meta_batch)
            yield [(load_episode(ctx.train_set, self._train_sampler.sample(g), ctx.device), p)
                   for p in pairs]

    def train_step(self, ctx, item) -> dict[str, float]:
        o = self.opts
        grads = TaskGradients(ctx.model)
        losses, accs, n = [], [], 0
        for ep, (w, a) in item:
            fast = maml.load_weights(self._fast_copy(ctx.model), ctx.model)
            set_bits(fast, w, a)
            maml.adapt(fast, ep, o.inner_steps, o.inner_lr)
            with ctx.autocast():
                loss, logits = maml.query_loss(fast, ep)
            ctx.backward(loss)
            grads.add_from_grads(fast, usage_masks(fast))
            losses.append(loss.item())
            accs.append(accuracy(logits.detach(), ep.yq))
            n += len(ep.xs) + len(ep.xq)
        grads.write()
        return {"loss": sum(losses) / len(losses), "acc": sum(accs) / len(accs), "n": n}

    def episode_score(self, model, ep) -> float:
        return maml.episode_accuracy(model, self._fast_copy(model), ep, self.opts.inner_steps,
                                     self.opts.inner_lr)

    def check_eval_ways(self, ways: int) -> None:
        if ways != self.opts.ways:
            raise MbqError(f"--ways {ways}: this {self.name} checkpoint has a {self.opts.ways}-way head; "
                           f"evaluate it with --ways {self.opts.ways}")
