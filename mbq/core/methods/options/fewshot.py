"""Options of the few-shot methods: mebqat-maml, mebqat-pn and the baselines
fomaml, protonet (FP) and qat-fomaml, qat-pn (one pair: --bits N --act-bits)."""
from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, field_validator

from ...config import MethodOptions
from ...defaults import REF_BATCH
from ._bittasks import BitTaskOptions
from ._multibit import PACT_DEFAULT

_ALL_WIDTHS = [2, 3, 4, 5, 6, 7, 8, 16, 32]


class EpisodeOptions(MethodOptions):
    """An epoch is ``--episodes-per-epoch`` episodes of ``--ways`` x (``--shots`` + ``--queries``)."""

    # PACT activations, as for the other quantized methods: with the [0, 1] clamp, W4 qat-pn on
    # resnet20 w0.5 ended at chance (28.8% 4-way) after 2 epochs, 50.3% with PACT (FP 49.8%)
    # the rate is each family's: PNOptions and MAMLOptions
    train_defaults: ClassVar[dict] = dict(PACT_DEFAULT, **{"optim.optimizer": "adam", "optim.weight_decay": 0.0})
    # every family has --fp-path; a checkpoint from before it trained FP on the raw weight
    recorded_in_quant: ClassVar[dict] = {"fp_path": ("fp_path", "identity")}

    ways: int = Field(4, ge=2, description="classes per episode (N-way)")
    shots: int = Field(1, ge=1, description="support images per class (K-shot)")
    queries: int = Field(15, ge=1, description="query images per class")
    meta_train_classes: list[int] | None = Field(
        None, description="class indices episodes are trained on, e.g. 0-5 (default: the first 60%)")
    meta_test_classes: list[int] | None = Field(
        None, description="disjoint class indices for validation/test episodes, e.g. 6-9 (default: the rest)")
    episodes_per_epoch: int = Field(100, ge=1, description="training episodes per epoch")
    val_episodes: int = Field(100, ge=1, description="meta-test episodes per validation")
    test_episodes: int = Field(600, ge=1, description="meta-test episodes of the final test, per setting")
    grad_clamp: float = Field(10.0, gt=0, description="clamp every averaged gradient element to ±this")

    def step_batch(self, batch_size: int) -> None:
        return None  # episodes, not --batch-size mini-batches: the LR is not batch-scaled

    @field_validator("meta_train_classes", "meta_test_classes", mode="before")
    @classmethod
    def _classes(cls, v, info):
        from ...fewshot.classes import parse_classes

        if v is None:
            return None
        return parse_classes(v, "--" + info.field_name.replace("_", "-"))


# MAML's outer step, (--meta-batch, Adam --lr): the paper's where the model's random features
# already separate classes (a flattened map: the cnn), else one episode per step at 3e-3. At the
# paper's step 2 epochs are 50 steps of 1e-4, which leave the model where it began (resnet20
# w0.5 fomaml 34.58, untrained 33.39; cnn 61.76, untrained 59.34); at 1 / 3e-3 resnet20 w0.5
# 54.94 (10 epochs 63.77, paper's 38.76), while the cnn fits its six training digits and loses
# 5 points on the other four (56.79). 1-bit weights do not keep the cnn's random features
# apart: W1A1 qat-fomaml 35.24 / 34.69 at the paper's step (seeds 0, 1), 54.75 / 51.52 at 1 / 3e-3.
# docs/benchmarks.md, "MAML's outer steps"
PAPER_OUTER = (4, 1e-4)
LEARNING_OUTER = (1, 3e-3)
# mebqat-maml's on pooled models: at 3e-3 its 2 bits ended near chance on resnet20 w0.5 at 2
# epochs on two seeds of three (41.99 / 29.19 / 39.34); at 1e-2 44.41 / 51.42 / 41.63, every
# width higher on the mean (10 epochs too). W4 qat-fomaml lost 8.7 points at 1e-2, so the
# baselines keep 3e-3 (docs/benchmarks.md, "MAML's outer steps")
MEBQAT_POOLED_OUTER = (1, 1e-2)


def _trait(arch: str | None, trait: str) -> bool:
    from ...models import model_traits

    return arch is not None and model_traits(arch)[trait]


def _flat(arch: str | None) -> bool:
    return _trait(arch, "flat_features")


class MAMLOptions(EpisodeOptions):
    """First-order MAML: ``--meta-batch`` episodes per step, ``--inner-steps`` SGD steps each."""

    # runs begun before the outer step depended on the model used the paper's everywhere
    unrecorded_defaults: ClassVar[dict] = {"meta_batch": PAPER_OUTER[0]}
    # whether --bits names the weight widths the run trains (fomaml's FP model ignores it)
    trains_bits: ClassVar[bool] = True
    # the step on models that pool their features (and must learn them)
    pooled_outer: ClassVar[tuple[int, float]] = LEARNING_OUTER

    meta_batch: int = Field(PAPER_OUTER[0], ge=1, description=(
        "episodes per outer step (each with its own pair); default 4 on models whose head reads a "
        "flattened map (cnn) unless --bits has 1, else 1 (resnets, mobilenets, vit)"))
    inner_steps: int = Field(5, ge=1, description="SGD steps on the support set (training and test)")
    inner_lr: float = Field(0.1, gt=0, description="inner-loop SGD learning rate (0.01 for MiniImageNet)")
    # the raw weight takes a different inner step than a DoReFa width (whose gradient reaches w
    # scaled by mean|w| / max|tanh w|): at --inner-lr 0.1 FP fomaml on the cnn ended at 39.4%
    # (4-way; 4-bit qat-fomaml 61.5%), with the tanh path 61.9% (docs/mebqat.md)
    fp_path: Literal["tanh", "identity"] = Field(
        "tanh", description="weights at FP: E*tanh(w)/max|tanh(w)|, the parametrization every quantized "
                            "width uses, so one --inner-lr fits all widths; identity: the raw weight")

    @classmethod
    def learning_step(cls, arch: str | None) -> tuple[int, float]:
        """(--meta-batch, --lr) of a run on ``arch`` that has to learn its features."""
        return LEARNING_OUTER if _flat(arch) else cls.pooled_outer

    @classmethod
    def outer_step(cls, arch: str | None, bits: list[int] | None = None) -> tuple[int, float]:
        """(--meta-batch, --lr) a run of the model ``arch`` at weight widths ``bits`` gets by default."""
        if _flat(arch) and 1 not in (bits or ()):
            return PAPER_OUTER
        return cls.learning_step(arch)

    @classmethod
    def run_defaults(cls, options: dict, epochs: int, batch_size: int = REF_BATCH,
                     arch: str | None = None, bits: list[int] | None = None) -> tuple[dict, dict]:
        options, defaults = super().run_defaults(options, epochs, batch_size, arch, bits)
        meta_batch, lr = cls.outer_step(arch, bits if cls.trains_bits else None)
        return dict({"meta_batch": meta_batch}, **options), dict(defaults, **{"optim.lr": lr})


class FOMAMLOptions(MAMLOptions):
    """The FP baseline: --bits does not apply, so it never changes the outer step."""

    trains_bits: ClassVar[bool] = False

    meta_batch: int = Field(PAPER_OUTER[0], ge=1, description=(
        "episodes per outer step; default 4 on models whose head reads a flattened map (cnn), "
        "1 on those that pool their features (resnets, mobilenets, vit)"))


class PNOptions(EpisodeOptions):
    """Prototypical networks: the network's output is the embedding."""

    # Adam 3e-3, not the paper's 1e-3: 200 episodes at 1e-3 left resnet20 w0.5 undertrained
    # (protonet 49.77, 4-bit qat-pn 50.51, 2-bit qat-pn at chance, 27.58); at 3e-3 66.66 /
    # 60.95, and the cnn gained too (protonet 57.88 -> 59.99). 1e-2 cost the 2-epoch cnn 4-9
    # points against 3e-3 (docs/benchmarks.md, "The ProtoNet family's step")
    train_defaults: ClassVar[dict] = dict(EpisodeOptions.train_defaults, **{"optim.lr": 3e-3})
    # a transformer trained from scratch fails at that step: 10 epochs of vit_tiny protonet sat
    # at ln(ways), every image on one embedding, from epoch 3 (seed 0), or ended under the health
    # floor at 37.01 (seed 1); at 3e-4 41.26 / 40.73 (docs/mebqat.md, "Few-shot on other models")
    transformer_lr: ClassVar[float] = 3e-4

    @classmethod
    def run_defaults(cls, options: dict, epochs: int, batch_size: int = REF_BATCH,
                     arch: str | None = None, bits: list[int] | None = None) -> tuple[dict, dict]:
        options, defaults = super().run_defaults(options, epochs, batch_size, arch, bits)
        if _trait(arch, "transformer"):
            defaults = dict(defaults, **{"optim.lr": cls.transformer_lr})
        return options, defaults

    emb_dim: int = Field(64, ge=1, description="embedding size (the last layer's width)")
    # protonet is the plain FP baseline: the raw weight (tanh was level with it on the cnn,
    # seeds 0-2: 60.92 against 61.68)
    fp_path: Literal["tanh", "identity"] = Field(
        "identity", description="weights at FP: the raw weight (identity) or E*tanh(w)/max|tanh(w)|, "
                                "the parametrization every quantized width rounds (tanh)")


class MEBQATMAMLOptions(MAMLOptions, BitTaskOptions):
    # the shared clip, not anyprec's per-width one: on the 10-epoch cnn cell pact_width cost
    # mebqat-maml's quantized widths ~6 points (4 bits 55.80 against 61.60; docs/benchmarks.md)
    train_defaults: ClassVar[dict] = dict(MAMLOptions.train_defaults, bits=_ALL_WIDTHS)
    # one set of weights trained at every width from a short run needs the larger step; the cnn
    # keeps the family's (its 1-bit case included: fs-5w was measured there)
    pooled_outer: ClassVar[tuple[int, float]] = MEBQAT_POOLED_OUTER


class MEBQATPNOptions(PNOptions, BitTaskOptions):
    # the shared clip: at the 3e-3 step the per-width one cost the cnn ~6 points at every
    # width (fs-cnn 4 bits 54.13 against 60.53; docs/benchmarks.md)
    train_defaults: ClassVar[dict] = dict(PNOptions.train_defaults, bits=_ALL_WIDTHS)

    # runs begun before the option trained FP on the raw weight
    unrecorded_defaults: ClassVar[dict] = {"fp_path": "identity"}

    meta_batch: int = Field(4, ge=1, description="(w, a) pairs per episode, (FP, FP) included with --guarantee-fp")
    # off, as in the paper (all 4 pairs drawn at random): FP in every episode, as in mebqat's
    # meta-batches, lifted the 2-epoch cnn at every width (seeds 0-2, FP / 2 / 4 bits +1.8 /
    # +2.2 / +1.8), left the 10-epoch cnn level and cost full-width resnet20 3.5 / 3.0 at FP /
    # 4 bits (docs/benchmarks.md, "mebqat-pn's pairs")
    guarantee_fp: bool = Field(False, description="put (FP, FP) among every episode's pairs, the rest drawn "
                                                  "at random (off: all drawn at random, as in the paper)")
    # tanh, as anyprec, emq and the MAML family: one set of weights serves FP and every quantized
    # width, and on the raw weight FP pulled them elsewhere (fs-cnn, seeds 0-2, FP / 2 / 4 bits:
    # 57.85 / 53.67 / 57.35 -> 62.79 / 58.92 / 62.64; resnet20 w0.5 59.01 / 43.32 / 59.18 ->
    # 60.11 / 47.82 / 59.50; docs/benchmarks.md)
    fp_path: Literal["tanh", "identity"] = Field(
        "tanh", description="weights at FP: E*tanh(w)/max|tanh(w)|, the parametrization every quantized "
                            "width rounds, so FP and the quantized widths train one set of weights "
                            "alike; identity: the raw weight")
