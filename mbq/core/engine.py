"""The training loop shared by every method.

The engine owns devices, data loading, the optimizer and schedule, AMP,
DDP, validation, metrics and checkpoints; a :class:`Method` supplies the
model and the gradients of each step. Progress goes to a ``reporter``
callback (the CLI draws it); core never prints.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from . import _distributed as dist
from ._atomic import atomic_path
from ._runfiles import config_path, metrics_path, state_path
from .checkpoint import read_checkpoint, save_checkpoint
from .config import TrainConfig
from .data import BatchLoader, create_dataset, split_holdout, take_subset
from .errors import MbqError, RunFailed
from .health import check_run
from .methods.base import Method

# called as report(event, **data); events: "start", "step", "epoch", "trained" (the epochs
# and the method's finishing pass are done; the final test follows), "done", "log"
Reporter = Callable[..., None]


def _null_reporter(event: str, **data) -> None:
    pass


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda", dist.local_rank()) if torch.cuda.is_available() else torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise MbqError(f"--device {name}: CUDA is not available on this machine (use --device cpu)")
        dev = torch.device(name)
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise MbqError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) present")
        return dev
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)
    try:
        import numpy as np
        np.random.seed(seed % 2**32)
    except ImportError:
        pass


@dataclass
class TrainContext:
    """What a method sees during training."""

    cfg: TrainConfig
    method: Method
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    device: torch.device
    train_set: Any
    val_set: Any
    test_set: Any
    train_loader: BatchLoader
    rank: int = 0
    world_size: int = 1
    epoch: int = 0
    global_step: int = 0
    report: Reporter = _null_reporter
    extra: dict = field(default_factory=dict)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def autocast(self):
        if self.cfg.amp and self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def backward(self, loss: torch.Tensor) -> None:
        """Backward with a finiteness check (a diverged run stops cleanly)."""
        if not torch.isfinite(loss.detach()).all():
            raise RunFailed(f"loss became {loss.detach().float().item()} at epoch {self.epoch + 1}, "
                            f"step {self.global_step}; stopped (the last checkpoint is kept). "
                            + self.method.divergence_advice())
        loss.backward()

    def loader(self, dataset=None, *, shuffle: bool = True, augment: bool = True, indices=None,
               batch_size: int | None = None, seed_offset: int = 0, drop_last: bool = False) -> BatchLoader:
        """A loader over (a subset of) the training data, sharded for DDP."""
        dc = self.cfg.data
        return BatchLoader(dataset if dataset is not None else self.train_set,
                           batch_size or dc.batch_size, shuffle=shuffle,
                           augment=augment and dc.augment, device=self.device,
                           seed=self.cfg.seed + seed_offset, indices=indices, rank=self.rank,
                           world_size=self.world_size, drop_last=drop_last)

    def eval_loader(self, dataset, indices=None) -> BatchLoader:
        return BatchLoader(dataset, self.cfg.data.eval_batch_size, shuffle=False, augment=False,
                           device=self.device, indices=indices)


# --- data ----------------------------------------------------------------------------

def load_data(cfg: TrainConfig, device: torch.device):
    """(train, val, test) datasets per the config; fills model shape fields."""
    dc = cfg.data
    train, test = create_dataset(dc.name, data_dir=str(dc.data_dir) if dc.data_dir else None,
                                 download=dc.download, image_size=dc.image_size)
    val = None
    if dc.val_size:
        n_val = min(dc.val_size, len(train) // 10)
        if n_val > 0:
            train, val = split_holdout(train, n_val, seed=cfg.seed)
    if dc.train_subset:
        if dc.train_subset > len(train):
            raise MbqError(f"--train-subset {dc.train_subset} is larger than the training set ({len(train)})")
        train = take_subset(train, dc.train_subset, seed=cfg.seed)
    mc = cfg.model
    mc.num_classes, mc.in_channels, mc.image_size = train.num_classes, train.in_channels, train.image_size
    return train.to(device), (val.to(device) if val is not None else None), test.to(device)


def dataset_meta(ds) -> dict:
    return {"name": ds.name, "mean": list(ds.mean), "std": list(ds.std),
            "num_classes": ds.num_classes, "in_channels": ds.in_channels, "image_size": ds.image_size}


# --- optimizer & schedule --------------------------------------------------------------

def build_optimizer(params, oc) -> torch.optim.Optimizer:
    if oc.optimizer == "sgd":
        return torch.optim.SGD(params, lr=oc.lr, momentum=oc.momentum, weight_decay=oc.weight_decay,
                               nesterov=oc.momentum > 0)
    cls = torch.optim.AdamW if oc.optimizer == "adamw" else torch.optim.Adam
    return cls(params, lr=oc.lr, weight_decay=oc.weight_decay)


def clip_gradients(params, max_norm: float | None) -> torch.Tensor | None:
    """Cap the total gradient norm at ``max_norm`` (0 or None: leave the gradients alone);
    returns the norm before the cap, or None when there is no cap."""
    if max_norm:
        return nn.utils.clip_grad_norm_(params, max_norm)
    return None


def _grad_norm_metrics(norms: list[torch.Tensor], max_norm: float | None) -> dict:
    """An epoch's pre-cap gradient norms as the median and the fraction of steps the cap
    shrank: whether a cap shapes the run or only catches spikes."""
    if not norms or not max_norm:
        return {}
    t = torch.stack([n.detach().float().cpu() for n in norms])  # one sync per epoch, not per step
    finite = t[torch.isfinite(t)]
    if finite.numel() == 0:
        return {}
    return {"grad_norm": float(finite.median()), "clipped": float((t > max_norm).float().mean())}


def build_scheduler(opt, oc, epochs: int, steps_per_epoch: int):
    total = max(1, epochs * steps_per_epoch)
    warm = int(oc.warmup_epochs * steps_per_epoch) or int(oc.warmup_fraction * total)
    miles = [int((m if m <= 1 else m / epochs) * total) for m in oc.milestones]

    def factor(step: int) -> float:
        if warm and step < warm:
            return (step + 1) / warm
        if oc.schedule == "cosine":
            t = (step - warm) / max(1, total - warm)
            return 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))
        if oc.schedule == "step":
            return oc.gamma ** sum(step >= m for m in miles)
        return 1.0

    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


# --- checkpoints -------------------------------------------------------------------------

def run_record(cfg: TrainConfig, method: Method) -> dict:
    """The run's configuration with every method option, defaults included, so that the
    record (and ``--resume``) says what the run did whatever later defaults become."""
    return dict(cfg.model_dump(mode="json"), options=method.opts.model_dump(mode="json"))


def checkpoint_meta(ctx: TrainContext, metrics: dict) -> dict:
    cfg = ctx.cfg
    meta = {"mbq.method": cfg.method, "mbq.arch": cfg.model.arch,
            "mbq.num_classes": str(cfg.model.num_classes), "mbq.in_channels": str(cfg.model.in_channels),
            "mbq.image_size": str(cfg.model.image_size), "mbq.dataset": dataset_meta(ctx.train_set),
            "mbq.bits": ctx.method.trained_bits(), "mbq.config": run_record(cfg, ctx.method),
            "mbq.metrics": metrics}
    meta.update(ctx.method.metadata(ctx))
    return meta


def _rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": repr(random.getstate())}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "python" in state:
        import ast
        random.setstate(ast.literal_eval(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_training_state(ctx: TrainContext, epoch: int, metrics: dict) -> None:
    out = ctx.cfg.out
    model = ctx.model
    with _setting_kept(ctx):
        save_checkpoint(model, out, checkpoint_meta(ctx, metrics))
    state = {"epoch": epoch, "global_step": ctx.global_step, "optimizer": ctx.optimizer.state_dict(),
             "scheduler": ctx.scheduler.state_dict(), "rng": _rng_state(),
             "method": ctx.method.state_dict(), "metrics": json.dumps(metrics)}
    with atomic_path(state_path(out)) as tmp:
        torch.save(state, tmp)


@contextlib.contextmanager
def _setting_kept(ctx: TrainContext):
    """Checkpoints are written at the method's first (reference) setting."""
    settings = ctx.method.eval_settings()
    if settings:
        ctx.method.apply_setting(ctx.model, settings[0])
    yield


def _load_init(cfg: TrainConfig, method: Method):
    """Read ``--init``: an mbq checkpoint (its metadata may shape the method) or a state_dict."""
    from .checkpoint import read_header
    from .models import read_state_dict_file

    path = Path(cfg.model.init)
    if path.suffix == ".safetensors":
        raw = read_header(path)
        if any(k.startswith("mbq.") for k in raw):
            tensors, meta = read_checkpoint(path)
            method.adopt_init(meta)
            return tensors
    return read_state_dict_file(path)


# --- the loop ------------------------------------------------------------------------------

def train(cfg: TrainConfig, method: Method, report: Reporter = _null_reporter) -> dict:
    """Run training; returns the final metrics. Raises MbqError / RunFailed."""
    device = resolve_device(cfg.device)
    rank, world = dist.init_from_env(device)
    if rank != 0:
        report = _null_reporter  # rank 0 alone prints
    if device.type == "cuda":
        torch.cuda.set_device(device)
    seed_everything(cfg.seed)
    out = Path(cfg.out)
    if rank == 0:
        out.parent.mkdir(parents=True, exist_ok=True)
    dist.barrier()  # unconditional: every rank must reach the same collectives

    resume_state = None
    if cfg.resume:
        if not out.exists() or not state_path(out).exists():
            raise MbqError(f"--resume: no checkpoint and state file at {out} (start without --resume)")
        resume_state = torch.load(state_path(out), map_location="cpu", weights_only=True)

    report("log", message=f"loading {cfg.data.name}")
    train_set, val_set, test_set = load_data(cfg, device)
    # a resumed run's weights are its checkpoint's, and what --init shaped is in its record
    init_state = _load_init(cfg, method) if cfg.model.init and resume_state is None else None
    model = method.build_model().to(device)
    if init_state is not None:
        from .models import load_init_weights
        rep = load_init_weights(model, init_state)
        report("log", message=f"--init: loaded {len(rep['loaded'])} tensors, skipped {len(rep['skipped'])}")
    if resume_state is not None:
        tensors, _ = read_checkpoint(out)
        model.load_state_dict(tensors)
    dist.broadcast_model(model)

    loader = BatchLoader(train_set, cfg.data.batch_size, shuffle=True, augment=cfg.data.augment,
                         device=device, seed=cfg.seed, rank=rank, world_size=world)
    optimizer = build_optimizer(method.param_groups(model), cfg.optim)
    steps = method.steps_per_epoch(len(loader)) if hasattr(method, "steps_per_epoch") else len(loader)
    scheduler = build_scheduler(optimizer, cfg.optim, cfg.epochs, steps)
    ctx = TrainContext(cfg, method, model, optimizer, scheduler, device, train_set, val_set, test_set,
                       loader, rank, world, report=report if rank == 0 else _null_reporter)
    start_epoch, history = 0, {}
    if resume_state is not None:
        optimizer.load_state_dict(resume_state["optimizer"])
        scheduler.load_state_dict(resume_state["scheduler"])
        method.load_state_dict(resume_state["method"])
        _set_rng_state(resume_state["rng"])
        start_epoch = resume_state["epoch"] + 1
        ctx.global_step = resume_state["global_step"]
        history = json.loads(resume_state.get("metrics", "{}"))
    method.setup(ctx)
    if rank == 0:
        from ._atomic import atomic_write_text
        atomic_write_text(config_path(out), json.dumps(run_record(cfg, method), indent=2))
        if resume_state is None and metrics_path(out).exists():
            metrics_path(out).unlink()  # a fresh run starts a fresh log

    report("start", epochs=cfg.epochs, start_epoch=start_epoch, steps=steps, method=cfg.method,
           train_size=len(train_set), device=str(device), world_size=world)
    metrics = history
    losses = _logged_losses(out, start_epoch) if start_epoch else []
    try:
        for epoch in range(start_epoch, cfg.epochs):
            ctx.epoch = epoch
            metrics = _run_epoch(ctx, epoch, steps)
            losses.append(metrics["train_loss"])
            if rank == 0:
                save_training_state(ctx, epoch, metrics)
                _append_metrics(out, metrics)
            report("epoch", **metrics)
            if method.done(ctx):
                report("log", message=f"{cfg.method}: finished early at epoch {epoch + 1}")
                break
        method.finish(ctx)
        report("trained")  # training's work ends here (the final test follows)
        final = _final_test(ctx)
        train_acc = (metrics or {}).get("train_acc") if method.training_accuracy_transfers() else None
        problems = check_run(final["top1"], method.trained_labels(), method.chance_top1(), losses,
                             train_acc, advice=method.near_chance_advice())
        final["health"] = {"healthy": not problems, "problems": problems}
        metrics = dict(metrics, test=final)
        if rank == 0:
            with _setting_kept(ctx):
                save_checkpoint(model, out, checkpoint_meta(ctx, final))
        report("done", test=final, out=str(out))
        return final
    finally:
        dist.shutdown()


def _run_epoch(ctx: TrainContext, epoch: int, steps: int) -> dict:
    model, method = ctx.model, ctx.method
    ctx.train_loader.set_epoch(epoch)
    model.train()
    t0 = time.perf_counter()
    tot_loss = tot_acc = 0.0
    n_steps = n_samples = 0
    per_key: dict[str, float] = {}
    norms: list[torch.Tensor] = []
    for i, batch in enumerate(method.epoch_batches(ctx, epoch)):
        ctx.optimizer.zero_grad(set_to_none=True)
        stats = method.train_step(ctx, batch)
        if ctx.world_size > 1:
            dist.average_gradients(model)
        method.before_optimizer_step(ctx)
        norm = clip_gradients(model.parameters(), ctx.cfg.optim.grad_clip)
        if norm is not None:
            norms.append(norm)
        ctx.optimizer.step()
        ctx.scheduler.step()
        ctx.global_step += 1
        n_steps += 1
        n_samples += int(stats.get("n", 0))
        tot_loss += stats["loss"]
        tot_acc += stats.get("acc", 0.0)
        for k, v in stats.items():
            if k not in ("loss", "acc", "n") and isinstance(v, (int, float)):
                per_key[k] = per_key.get(k, 0.0) + v
        el = time.perf_counter() - t0
        ctx.report("step", epoch=epoch, step=i + 1, steps=steps, loss=tot_loss / n_steps,
                   acc=tot_acc / n_steps, ips=n_samples * ctx.world_size / max(el, 1e-9))
    wall = time.perf_counter() - t0
    extra = method.end_epoch(ctx, epoch)
    metrics = {"epoch": epoch + 1, "lr": ctx.optimizer.param_groups[0]["lr"],
               "train_loss": tot_loss / max(n_steps, 1), "train_acc": tot_acc / max(n_steps, 1),
               "images_per_s": n_samples * ctx.world_size / max(wall, 1e-9), "wall_s": wall,
               "steps": n_steps}
    metrics.update({k: v / max(n_steps, 1) for k, v in per_key.items()})
    metrics.update(_grad_norm_metrics(norms, ctx.cfg.optim.grad_clip))
    if ctx.val_set is not None:
        metrics["val_top1"] = _eval_settings(ctx, ctx.val_set, ctx.method.val_settings())
    metrics.update(extra)
    return metrics


def _eval_settings(ctx: TrainContext, dataset, settings=None) -> dict[str, float]:
    out = {}
    loader = ctx.eval_loader(dataset)
    calib = ctx.loader(shuffle=True, augment=False, seed_offset=7919)
    for s in ctx.method.eval_settings() if settings is None else settings:
        ctx.method.apply_setting(ctx.model, s)
        ctx.method.prepare_eval(ctx.model, s, calib)
        out[s.label] = ctx.method.score(ctx, dataset, loader)
    ctx.model.train()
    return out


def _final_test(ctx: TrainContext) -> dict:
    top1 = _eval_settings(ctx, ctx.test_set)
    return {"top1": top1, "dataset": ctx.cfg.data.name, "split": "test"}


def _logged_losses(out: Path, epochs: int) -> list[float]:
    """Per-epoch training losses of the first ``epochs`` epochs, from the run's metrics log."""
    by_epoch = {}
    if metrics_path(out).exists():
        for line in metrics_path(out).read_text().splitlines():
            try:
                m = json.loads(line)
                by_epoch[int(m["epoch"])] = float(m["train_loss"])
            except (ValueError, KeyError, TypeError):
                continue  # a torn last line of an interrupted run
    return [by_epoch[e] for e in sorted(by_epoch) if e <= epochs]


def _append_metrics(out: Path, metrics: dict) -> None:
    with open(metrics_path(out), "a") as f:
        f.write(json.dumps(metrics) + "\n")
