"""Validated configuration (pydantic v2). Torch-free: the CLI imports it for
``--help`` and for validation before any heavy import.

Shared sections live here; each method adds its own options class
(a subclass of :class:`MethodOptions`) in ``mbq/core/methods/options/``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from .defaults import EVAL_BATCH, LARGE_BATCH_WARMUP, REF_BATCH

VALID_BITS = (1, 2, 3, 4, 5, 6, 7, 8, 16, 32)
FP_BITS = 32


def check_bits(b: int) -> int:
    if int(b) not in VALID_BITS:
        raise ValueError(f"bit-width {b} is not supported (use 1..8, 16 or 32 for FP)")
    return int(b)


def parse_bits(text: str | int | list, *, allow_all: bool = True, name: str = "--bits") -> list[int]:
    """Parse ``"2,4,8"`` / ``"all"`` / ``"fp"`` into a list of bit-widths (order kept).

    Raises ValueError with a one-line message for anything else, including
    duplicates and empty lists.
    """
    if isinstance(text, int):
        return [check_bits(text)]
    if isinstance(text, list):
        items = [str(t) for t in text]
    else:
        t = str(text).strip().lower()
        if t == "all" and allow_all:
            return [1, 2, 3, 4, 5, 6, 7, 8, 32]
        items = [p.strip() for p in t.split(",")]
    if not items or any(p == "" for p in items):
        raise ValueError(f"{name} needs a comma-separated list of bit-widths such as 2,4,8")
    out = []
    for p in items:
        if p in ("fp", "32", "float"):
            out.append(32)
            continue
        try:
            out.append(check_bits(int(p)))
        except ValueError as e:
            if p.lstrip("-").isdigit():
                raise
            raise ValueError(f"{name}: '{p}' is not a bit-width (use e.g. 2,4,8 or fp)") from e
    if len(set(out)) != len(out):
        raise ValueError(f"{name} lists a bit-width twice: {text}")
    return out


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(_Strict):
    name: str = "mnist"
    data_dir: Path | None = None
    download: bool = False
    image_size: int | None = Field(None, ge=4, le=1024)
    train_subset: int | None = Field(None, ge=1, description="use only N training images")
    val_size: int = Field(5000, ge=0, description="held-out validation images taken from train")
    batch_size: int = Field(128, ge=1)
    eval_batch_size: int = Field(EVAL_BATCH, ge=1)
    augment: bool = True


class ModelConfig(_Strict):
    arch: str = "resnet20"
    kwargs: dict = Field(default_factory=dict, description="extra architecture options")
    num_classes: int | None = None  # filled from the dataset
    in_channels: int | None = None
    image_size: int | None = None
    init: Path | None = None


class QuantConfig(_Strict):
    weight: Literal["dorefa", "roundclamp", "lsq"] = "dorefa"
    act: Literal["clamp", "clamp_fp", "pact", "pact_fp", "pact_width", "pact_width_fp", "lsq", "none"] = "clamp"
    w_bits: int = 32
    a_bits: int = 32
    first_last_bits: int = 32
    fp_path: Literal["identity", "tanh"] = "identity"
    # RoundClamp's range: max|w| per layer or per output channel. Absent from checkpoints
    # written before the field existed, which were all per layer.
    w_scale: Literal["tensor", "channel"] = "tensor"
    wbc: bool = False
    wbc_detach: bool = False
    wbc_per_channel: bool = True
    switchable_bn: list[int] | None = None
    width_stats_bn: bool = False  # one affine, running statistics per width (EMQ --bn-stats per-width)
    # a layer whose input can be negative (mobilenets' bottlenecks, vit's LayerNorm) quantizes
    # it on a symmetric grid; unsigned, such inputs lose everything below 0 (W4A4 mobilenet_v2
    # trained to 47.6% training accuracy in 2 epochs against 91.3% signed). Absent from
    # checkpoints written before it existed, which quantized every input unsigned.
    signed_inputs: bool = True

    @field_validator("w_bits", "a_bits", "first_last_bits")
    @classmethod
    def _bits_ok(cls, v):
        return check_bits(v)

    @model_validator(mode="after")
    def _scale_ok(self):
        if self.w_scale == "channel" and self.weight != "roundclamp":
            raise ValueError(f"w_scale 'channel' is a RoundClamp range; the {self.weight} quantizer has its own")
        return self


class OptimConfig(_Strict):
    optimizer: Literal["sgd", "adamw", "adam"] = "sgd"
    lr: float = Field(0.1, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(5e-4, ge=0)
    schedule: Literal["cosine", "step", "constant"] = "cosine"
    warmup_epochs: float = Field(0.0, ge=0, description="linear warm-up, in epochs")
    warmup_fraction: float = Field(0.0, ge=0, lt=1, description="linear warm-up, as a fraction of the run's steps")
    milestones: list[float] = Field(default_factory=lambda: [0.5, 0.75],
                                    description="step schedule: fractions of the run (or epochs if > 1)")
    gamma: float = Field(0.1, gt=0, le=1)
    grad_clip: float | None = Field(None, ge=0, description="cap on the gradient norm (0 or None: no cap)")


class MethodOptions(_Strict):
    """Base class for a method's own options (``mbq train --method X --opt ...``)."""

    # shared flags this method defaults differently, e.g. {"optim.lr": 0.2} (at REF_BATCH)
    train_defaults: ClassVar[dict] = {}
    # how the default LR follows the batch: None by optimizer, or one of mbq.core.defaults.LR_RULES
    lr_batch_rule: ClassVar[str | None] = None
    # options whose default changed, as {option: (quant field, value before the field existed)}:
    # a checkpoint that does not record the option takes it from its quant config, so it
    # rebuilds as it was trained (mbq.core.checkpoint)
    recorded_in_quant: ClassVar[dict[str, tuple[str, str]]] = {}

    # options whose default changed before runs recorded every option, as {option: the old
    # default}: ``--resume`` of such a run continues it with the value it began with
    unrecorded_defaults: ClassVar[dict[str, Any]] = {}

    # a method whose step grows linearly above REF_BATCH sets this: there its step is warmed up
    # over LARGE_BATCH_WARMUP of the run and its gradient norm capped at this value
    large_batch_grad_clip: ClassVar[float | None] = None

    @classmethod
    def run_defaults(cls, options: dict, epochs: int, batch_size: int = REF_BATCH,
                     arch: str | None = None, bits: list[int] | None = None) -> tuple[dict, dict]:
        """(options, shared-flag defaults) for a run of ``epochs`` epochs at ``batch_size`` on
        the model ``arch`` at weight widths ``bits``: a method whose defaults depend on the
        run's shape, model or widths resolves them here, before validation."""
        defaults = dict(cls.train_defaults)
        if cls.large_batch_grad_clip is not None and batch_size > REF_BATCH:
            defaults["optim.warmup_fraction"] = LARGE_BATCH_WARMUP
            defaults["optim.grad_clip"] = cls.large_batch_grad_clip
        return options, defaults

    def step_batch(self, batch_size: int) -> int | None:
        """Images behind each gradient a step sums (the default LR scales with it);
        None: not a mini-batch method (episodes), so the LR is not scaled."""
        return batch_size


class TrainConfig(_Strict):
    method: str = "qat"
    out: Path = Path("runs/model.safetensors")
    epochs: int = Field(10, ge=1)
    bits: list[int] = Field(default_factory=lambda: [4])
    act_bits: str = "same"
    seed: int = 0
    device: str = "auto"
    amp: bool = True
    resume: bool = False
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    quant: QuantConfig = Field(default_factory=QuantConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    options: dict = Field(default_factory=dict, description="method-specific, validated by the method")

    @field_validator("bits", mode="before")
    @classmethod
    def _bits_ok(cls, v):
        return parse_bits(v)

    @field_validator("act_bits")
    @classmethod
    def _act_bits_ok(cls, v):
        v = str(v).strip().lower()
        if v != "same":
            check_bits(int(v) if v.isdigit() else 32 if v == "fp" else -1)
        return v

    @model_validator(mode="after")
    def _warmup_ok(self):
        o = self.optim
        if o.warmup_epochs and o.warmup_fraction:
            raise ValueError("give the warm-up once: --warmup (epochs) or --warmup-fraction, not both")
        if o.warmup_epochs >= self.epochs:
            raise ValueError(f"--warmup {o.warmup_epochs:g} epochs is not shorter than the run "
                             f"(--epochs {self.epochs}); use --warmup-fraction for a share of the run")
        return self

    @model_validator(mode="after")
    def _device_ok(self):
        d = self.device
        if not (d in ("auto", "cpu", "cuda") or d.startswith("cuda:")):
            raise ValueError(f"--device must be auto, cpu, cuda or cuda:N (got {d})")
        return self

    def act_bits_for(self, w_bits: int) -> int:
        """Activation width that goes with weight width ``w_bits``."""
        if self.act_bits == "same":
            return w_bits
        return FP_BITS if self.act_bits == "fp" else int(self.act_bits)


def format_validation_error(err, *, as_flags: bool = False) -> str:
    """One line from a pydantic ValidationError (``as_flags``: fields named as CLI flags)."""
    parts = []
    for e in err.errors()[:3]:
        loc = ".".join(str(p) for p in e.get("loc", ()) if p != "__root__")
        if as_flags and loc:
            loc = "--" + loc.replace("_", "-")
        msg = e.get("msg", "").removeprefix("Value error, ")
        parts.append(f"{loc}: {msg}" if loc else msg)
    return "invalid configuration: " + "; ".join(parts)
