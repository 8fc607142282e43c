"""Prototypical networks (FP baseline, ``--method protonet``): one episode per
step; the network's output is the embedding."""
from __future__ import annotations

import math

from torch import nn

from ..fewshot import protonet as pn
from ..fewshot.episodes import load_episode
from ..quant import redraw_zero_weight, set_bits
from ._fewshot import FewShotMethod
from ._task_grads import TaskGradients, usage_masks
from .base import accuracy


class ProtoNetMethod(FewShotMethod):
    name = "protonet"
    policy = "fp"
    pairs_per_episode = 1

    def out_features(self) -> int:
        return self.opts.emb_dim

    def near_chance_advice(self) -> str | None:
        # a model that has to learn its features from random initialisation needs more episodes
        # than resnet20 or the cnn (mobilenet_v2: 29.39 after 200, 50.30 after 1 000); vit_tiny
        # collapsed to one embedding at 3e-3 (loss ln 4 from epoch 3) and learned at 3e-4
        steps = self.steps_per_epoch(0) * self.cfg.epochs
        name = {"adam": "Adam", "adamw": "AdamW", "sgd": "SGD"}.get(self.cfg.optim.optimizer, self.cfg.optim.optimizer)
        return (f"ProtoNet took {steps} episode{'s' * (steps != 1)} at {name} {self.cfg.optim.lr:g}; try more "
                f"--epochs, and a lower --lr if the training loss sits at ln({self.opts.ways}) = "
                f"{math.log(self.opts.ways):.3f} (every image mapped to one embedding) "
                "(docs/mebqat.md, \"Few-shot on other models\")")

    def build_model(self):
        model = super().build_model()
        # a zero head (torchvision's ViT) maps every image to one embedding: every distance
        # ties, the loss is ln(ways) and its gradient zero (vit_tiny protonet: 25.00%)
        for m in model.modules():
            if isinstance(m, nn.Linear):
                redraw_zero_weight(m)
        return model

    def steps_per_epoch(self, n_batches: int) -> int:
        return self.opts.episodes_per_epoch

    def epoch_items(self, ctx, g, rng):
        for _ in range(self.opts.episodes_per_epoch):
            ep = load_episode(ctx.train_set, self._train_sampler.sample(g), ctx.device)
            yield ep, self.sample_pairs(self.pairs_per_episode)

    def train_step(self, ctx, item) -> dict[str, float]:
        ep, pairs = item
        model = ctx.model
        grads = TaskGradients(model)
        losses, accs = [], []
        for w, a in pairs:
            set_bits(model, w, a)
            masks = usage_masks(model)
            with ctx.autocast():
                loss, logits = pn.episode_loss(model, ep)
            ctx.backward(loss)
            grads.add_from_grads(model, masks)
            losses.append(loss.item())
            accs.append(accuracy(logits.detach(), ep.yq))
        grads.write()
        return {"loss": sum(losses) / len(losses), "acc": sum(accs) / len(accs),
                "n": len(ep.xs) + len(ep.xq)}

    def episode_score(self, model, ep) -> float:
        return pn.episode_accuracy(model, ep)
