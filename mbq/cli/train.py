"""``mbq train``: one command for every method."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Optional

import typer

from ._common import ConfigOpt, DeviceOpt, JsonOpt, QuietOpt, SeedOpt, explicit_params, read_config_file

# CLI parameter -> dotted path in TrainConfig.
_MAP = {
    "method": "method", "bits": "bits", "act_bits": "act_bits", "epochs": "epochs", "out": "out",
    "seed": "seed", "device": "device", "amp": "amp", "resume": "resume",
    "arch": "model.arch", "width": "model.kwargs.width", "init": "model.init",
    "dataset": "data.name", "data_dir": "data.data_dir", "download": "data.download",
    "train_subset": "data.train_subset", "val_size": "data.val_size", "image_size": "data.image_size",
    "batch_size": "data.batch_size", "augment": "data.augment",
    "optimizer": "optim.optimizer", "lr": "optim.lr", "weight_decay": "optim.weight_decay",
    "momentum": "optim.momentum", "schedule": "optim.schedule", "warmup": "optim.warmup_epochs",
    "warmup_fraction": "optim.warmup_fraction",
    "grad_clip": "optim.grad_clip",
    "quantizer": "quant.weight", "act_quantizer": "quant.act", "first_last_bits": "quant.first_last_bits",
}
# --quantizer presets: weight quantizer + matching activation quantizer.
_PRESETS = {"dorefa": ("dorefa", "clamp"), "sat": ("dorefa", "pact"), "lsq": ("lsq", "lsq"),
            "roundclamp": ("roundclamp", "clamp")}


def _epilog() -> str:
    from ._method_options import options_help
    return options_help()


def _set(d: dict, dotted: str, value) -> None:
    *parents, last = dotted.split(".")
    for p in parents:
        d = d.setdefault(p, {})
    d[last] = value


def _given_fields(explicit: set[str], file_values: dict, options: set[str]) -> set[str]:
    """The dotted fields a command sets: its flags, its config file and its method options."""
    names = {k for k in explicit | set(file_values) if k in _MAP}
    fields = {_MAP[k] for k in names} | {f"options.{k}" for k in options}
    if "quantizer" in names:
        fields.add("quant.act")  # a preset sets both
    if "width" in names:
        fields.add("model.kwargs.expand")
    return fields


def _given(dotted: str, explicit: set[str], file_values: dict) -> bool:
    return dotted in _given_fields(explicit, file_values, set())


def _apply_method_defaults(doc: dict, defaults: dict, explicit: set[str], file_values: dict) -> None:
    """A method's own defaults for shared flags (``train_defaults`` on its options class,
    e.g. mebqat -> SGD at 0.1), used where neither a flag nor the config file set them."""
    def given(dotted: str) -> bool:
        return _given(dotted, explicit, file_values)

    for dotted, value in defaults.items():
        # a method's LR and decay go with its optimizer: not applied when the user picked one
        if not given(dotted) and not (dotted in ("optim.lr", "optim.weight_decay")
                                      and given("optim.optimizer")):
            # one warm-up: a method's default never stacks on the user's other form of it
            if dotted.startswith("optim.warmup") and (given("optim.warmup_epochs")
                                                      or given("optim.warmup_fraction")):
                continue
            _set(doc, dotted, value)


def _scale_lr(cfg, opts_cls) -> None:
    """A default LR is stated at REF_BATCH images per gradient: scale it to this run's."""
    from pydantic import ValidationError

    from mbq.core.config import format_validation_error
    from mbq.core.defaults import lr_for_batch
    from mbq.core.errors import MbqError

    try:
        opts = opts_cls.model_validate(cfg.options)
    except ValidationError as e:
        raise MbqError(format_validation_error(e, as_flags=True)) from None
    batch = opts.step_batch(cfg.data.batch_size)
    if batch is not None:
        # a method's rule goes with its own optimizer (SGD); another one scales by its own
        rule = opts_cls.lr_batch_rule if cfg.optim.optimizer == "sgd" else None
        cfg.optim.lr = lr_for_batch(cfg.optim.lr, cfg.optim.optimizer, batch, rule=rule)


def _int_or(value, default: int) -> int:
    """The run's shape for a method's defaults; a bad value is left for validation to name."""
    try:
        return int(value) if value is not None else default
    except (TypeError, ValueError):
        return default


def _flag(dotted: str) -> str | None:
    """``optim.lr`` -> ``--lr``, ``options.coreset_fraction`` -> ``--coreset-fraction``;
    None for a field no flag sets (e.g. ``model.num_classes``, set from the data)."""
    if dotted.startswith("options."):
        return "--" + dotted[8:].replace("_", "-")
    if dotted == "model.kwargs.expand":
        return "--width"
    names = [k for k, v in _MAP.items() if v == dotted]
    return "--" + names[0].replace("_", "-") if names else None


def build_config(values: dict, explicit: set[str], file_values: dict, extra_args: list[str],
                 notes: list[str] | None = None):
    """Merge config file < flags, validate, return a TrainConfig. With --resume, the saved
    run's configuration wins over defaults (mbq.core.resume); ``notes`` gets what it kept."""
    from pydantic import ValidationError

    from mbq.core.config import DataConfig, ModelConfig, TrainConfig, format_validation_error, parse_bits
    from mbq.core.errors import MbqError
    from mbq.core.resume import resume_config, saved_config

    from ._method_options import parse_method_args

    merged = {k: v for k, v in values.items() if k in _MAP}
    file_opts = dict(file_values.pop("options", {}) or {})
    for k, v in file_values.items():
        if k in _MAP and k not in explicit:
            merged[k] = v
        elif k not in _MAP:
            file_opts[k] = v
    out = Path(merged.get("out") or TrainConfig.model_fields["out"].default)
    saved = saved_config(out) if merged.get("resume") else None
    if saved is not None and "method" not in explicit and "method" not in file_values:
        merged["method"] = saved.method  # `mbq train --out RUN --resume` is enough
    doc: dict = {}
    for k, v in merged.items():
        if v is None:
            continue
        if k == "quantizer":
            if v not in _PRESETS:
                raise MbqError(f"--quantizer must be one of {', '.join(_PRESETS)} (got {v})")
            w, a = _PRESETS[v]
            _set(doc, "quant.weight", w)
            if "act_quantizer" not in explicit and not file_values.get("act_quantizer"):
                _set(doc, "quant.act", a)
            continue
        if k == "bits":
            try:
                v = parse_bits(str(v), allow_all=False)
            except ValueError as e:
                raise MbqError(str(e)) from None
        if k == "width" and str(merged.get("arch", "")).startswith("preact"):
            _set(doc, "model.kwargs.expand", int(v) if float(v).is_integer() else float(v))
            continue
        if k == "width" and float(v).is_integer():
            v = int(v)
        _set(doc, _MAP[k], v)
    method = doc.get("method", "qat")
    from mbq.core.methods import options_class
    opts_cls = options_class(method)  # unknown method -> MbqError
    opts = {k.replace("-", "_"): v for k, v in file_opts.items()}
    opts.update(parse_method_args(method, extra_args))
    given_options = set(opts)
    epochs = _int_or(doc.get("epochs"), TrainConfig.model_fields["epochs"].default)
    batch = _int_or(doc.get("data", {}).get("batch_size"), DataConfig.model_fields["batch_size"].default)
    arch = doc.get("model", {}).get("arch", ModelConfig.model_fields["arch"].default)
    bits = doc.get("bits") if _given("bits", explicit, file_values) else \
        opts_cls.train_defaults.get("bits", doc.get("bits"))
    opts, defaults = opts_cls.run_defaults(opts, epochs, batch, arch, bits)
    _apply_method_defaults(doc, defaults, explicit, file_values)
    optim = doc.get("optim", {})
    if "lr" not in optim and optim.get("optimizer", "sgd") != "sgd":
        from mbq.core.defaults import ADAM_LR
        _set(doc, "optim.lr", ADAM_LR)  # SGD's 0.1 would wreck an Adam run
    doc["options"] = opts
    try:
        cfg = TrainConfig.model_validate(doc)
    except ValidationError as e:
        raise MbqError(_flag_names(format_validation_error(e))) from None
    if not _given("optim.lr", explicit, file_values):
        _scale_lr(cfg, opts_cls)
    if saved is not None:
        cfg, kept = resume_config(cfg, saved, _given_fields(explicit, file_values, given_options), _flag)
        if notes is not None and kept:
            notes.append("--resume: continuing with the run's own settings where this command alone "
                         "would differ: " + "; ".join(kept))
    return cfg


def _flag_names(message: str) -> str:
    """``optim.lr: ...`` -> ``--lr: ...`` (users know the flags, not the config paths)."""
    for flag, dotted in sorted(_MAP.items(), key=lambda kv: -len(kv[1])):
        message = message.replace(f"{dotted}:", f"--{flag.replace('_', '-')}:")
    return message


def resolve_config(argv: list[str]):
    """The TrainConfig ``mbq train ARGV`` would run: the same flag defaults, config
    file, method defaults and LR scaling. Benchmarks build their runs with this."""
    import typer.main

    from .app import app

    cmd = typer.main.get_command(app).commands["train"]
    ctx = cmd.make_context("train", list(argv))
    file_values = read_config_file(ctx.params.get("config"))
    return build_config(dict(ctx.params), explicit_params(ctx), file_values, list(ctx.args))


def train(
    ctx: typer.Context,
    method: Annotated[str, typer.Option(help="fp, qat, emq, msq, mebqat, anyprec, bsq, ... (see below).")] = "qat",
    bits: Annotated[str, typer.Option(help="Weight bit-width(s) to train, e.g. 4 or 2,4,8.")] = "4",
    act_bits: Annotated[str, typer.Option(help="Activation bits: same (as weights), N, or fp.")] = "same",
    arch: Annotated[str, typer.Option("--arch", "--model", help="Architecture (resnet20, cnn, resnet18, mobilenet_v2, vit_tiny, ...).")] = "resnet20",
    width: Annotated[Optional[float], typer.Option(help="Width multiplier (resnet20) / expand (preact_resnet20).")] = None,
    dataset: Annotated[str, typer.Option("--data", "--dataset", help="mnist, fashion-mnist, cifar10, cifar100, svhn, imagefolder, digits, fake.")] = "mnist",
    data_dir: Annotated[Optional[Path], typer.Option(help="Folder of the dataset files.")] = None,
    download: Annotated[bool, typer.Option(help="Download the dataset into --data-dir (needs network).")] = False,
    train_subset: Annotated[Optional[int], typer.Option(help="Train on N images only (quick runs).")] = None,
    val_size: Annotated[int, typer.Option(help="Held-out validation images taken from train.")] = 5000,
    image_size: Annotated[Optional[int], typer.Option(help="Resize (imagefolder/fake).")] = None,
    epochs: Annotated[int, typer.Option(help="Training epochs.")] = 10,
    batch_size: Annotated[int, typer.Option(help="Mini-batch size.")] = 128,
    augment: Annotated[bool, typer.Option(help="The dataset's default batch augmentation.")] = True,
    optimizer: Annotated[str, typer.Option(help="sgd, adamw or adam.")] = "sgd",
    lr: Annotated[Optional[float], typer.Option(help="Peak learning rate (default: the method's, stated at batch 128 and scaled to --batch-size: linearly for SGD, by the square root for Adam; fp, qat and msq by the square root above 128, mebqat on both sides; fp, qat, msq, emq and mebqat warm up and cap the gradient norm at every batch; anyprec caps it at every batch and warms up above 128; episodic methods: Adam 3e-3, not scaled, mebqat-maml 1e-2; MAML on the cnn, unless --bits has 1, the paper's 1e-4; the ProtoNet family on vit 3e-4).", show_default=False)] = None,
    weight_decay: Annotated[float, typer.Option(help="Weight decay.")] = 5e-4,
    momentum: Annotated[float, typer.Option(help="SGD momentum.")] = 0.9,
    schedule: Annotated[str, typer.Option(help="cosine, step or constant.")] = "cosine",
    warmup: Annotated[float, typer.Option(help="Linear warm-up epochs (shorter than the run).")] = 0.0,
    warmup_fraction: Annotated[float, typer.Option(help="Linear warm-up as a fraction of the run's steps, in [0, 1) (default: the method's, see --lr; 0 for the others).")] = 0.0,
    grad_clip: Annotated[Optional[float], typer.Option(help="Clip the gradient norm to this (0: no clipping; by default fp, qat and msq clip at 2; emq at 2 where each width's batch (coreset fraction x batch) holds 128 images or the batch is above 128, else 5; mebqat at 1; anyprec at 2).")] = None,
    quantizer: Annotated[Optional[str], typer.Option(help="dorefa (DoReFa weights, clamp acts), sat (DoReFa weights, PACT acts: the default of qat, emq, mebqat and the episodic methods; anyprec defaults to PACT with a clip scaled per width), lsq, roundclamp.")] = None,
    act_quantizer: Annotated[Optional[str], typer.Option(help="clamp, pact, pact_width (one learned clip, used at alpha * r(bits): the default of anyprec), lsq or none.")] = None,
    first_last_bits: Annotated[Optional[int], typer.Option(help="Bits of the first conv and last linear (32 = float).")] = None,
    init: Annotated[Optional[Path], typer.Option(help="Start from an mbq checkpoint or a torchvision state_dict file.")] = None,
    out: Annotated[Path, typer.Option(help="Checkpoint to write (.safetensors).")] = Path("runs/model.safetensors"),
    resume: Annotated[bool, typer.Option(help="Continue the run saved at --out with the settings it began with (its .config.json): flags left out take the run's values, contradicting ones are refused; --epochs may lengthen it.")] = False,
    amp: Annotated[bool, typer.Option(help="bfloat16 autocast on CUDA.")] = True,
    health_check: Annotated[bool, typer.Option("--health-check/--no-health-check", help="Exit 1 when a trained width ends near chance or the training loss climbs over the last epochs (--no-health-check: report it, exit 0; for smoke runs).")] = True,
    config: ConfigOpt = None,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
    device: DeviceOpt = "auto",
    seed: SeedOpt = 0,
) -> None:
    """Train a model with one of mbq's methods and write a checkpoint."""
    explicit = explicit_params(ctx)
    values = dict(ctx.params)
    file_values = read_config_file(config)
    notes: list[str] = []
    cfg = build_config(values, explicit, file_values, list(ctx.args), notes)
    if notes and not quiet and int(os.environ.get("RANK", "0")) == 0:  # one line per run, not per rank
        from ._common import stderr_console
        for line in notes:
            stderr_console().print(line, highlight=False, markup=False, soft_wrap=True)
    if cfg.out.suffix != ".safetensors":
        from mbq.core.errors import MbqError
        raise MbqError(f"--out must end in .safetensors (got {cfg.out})")

    from ._train_run import run_training
    run_training(cfg, json_out=json_out, quiet=quiet, health_check=health_check)


def register(app: typer.Typer) -> None:
    app.command(
        "train",
        context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
        epilog=_epilog(),
    )(train)
