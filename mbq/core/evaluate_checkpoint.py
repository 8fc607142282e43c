"""Evaluate a saved checkpoint at requested precisions (what ``mbq eval`` runs)."""
from __future__ import annotations

import copy
from pathlib import Path

from .defaults import EVAL_BATCH
from .errors import MbqError


def _bits_list(ws) -> str:
    return ", ".join("fp" if w >= 32 else str(w) for w in ws)


def _pair_error(cfg, w: int, a: int) -> MbqError:
    from .bitpairs import is_valid_pair

    if not is_valid_pair(w, a):
        why = "FP weights need FP activations; 1-bit activations need 1-bit weights"
    else:
        why = f"this {cfg.method} checkpoint was not trained for it"
    return MbqError(f"(w={_bits_list([w])}, a={_bits_list([a])}) is not an evaluable pair ({why}); "
                    "--pairs all evaluates every pair it answers at")


RECALIBRATE_WIDTHS = ("all", "untrained", "extrapolated")


def is_extrapolated(w: int | None, trained: list[int]) -> bool:
    """True where a width lies outside the trained range (or has no width: a per-layer
    scheme), i.e. where per-width BN statistics have a trained neighbour on one side only."""
    return w is None or not trained or not min(trained) <= w <= max(trained)


def datasets_for(meta: dict, cfg, dataset: str | None, data_dir: str | None):
    """(name, train, test) for evaluating a model: its recorded dataset unless
    another is named; MbqError if the data does not fit the model's shape."""
    from .data import create_dataset

    name = dataset or cfg.data.name
    ddir = data_dir or (str(cfg.data.data_dir) if cfg.data.data_dir else None)
    train, test = create_dataset(name, data_dir=ddir, image_size=cfg.data.image_size)
    shape = (test.in_channels, test.image_size, test.num_classes)
    want = (meta["mbq.in_channels"], meta["mbq.image_size"], meta["mbq.num_classes"])
    if shape != want:
        raise MbqError(f"dataset {name} has (channels, size, classes) {shape} but the model expects {want}")
    return name, train, test


def evaluate_checkpoint(path: str | Path, *, pairs: list[tuple[int, int | None]] | str | None = None,
                        dataset: str | None = None, data_dir: str | None = None,
                        batch_size: int = EVAL_BATCH, limit: int | None = None, recalibrate_bn: int = 0,
                        recalibrate_widths: str = "all", device: str = "auto", seed: int = 0,
                        all_requested: bool = False,
                        episodes: int | None = None, ways: int | None = None,
                        shots: int | None = None, queries: int | None = None) -> dict:
    """``pairs``: None (the method's own settings), ``"all"`` (every valid (w, a) pair
    the checkpoint answers at) or a list; ``episodes``/``ways``/``shots``/``queries``
    shape the episodes of a few-shot checkpoint. ``recalibrate_widths="extrapolated"``
    re-estimates BN (``recalibrate_bn`` batches) only at widths outside the trained range,
    where a shared BN's per-width statistics have a neighbour on one side only;
    ``"untrained"`` at every width the model was not trained at (interpolated ones too),
    keeping the trained widths' own statistics."""
    if recalibrate_widths not in RECALIBRATE_WIDTHS:
        raise MbqError(f"--recalibrate-widths takes all, untrained or extrapolated (got {recalibrate_widths})")
    import torch

    from .checkpoint import load_checkpoint
    from .config import TrainConfig
    from .data import BatchLoader
    from .engine import resolve_device, seed_everything
    from .evaluate import evaluate, recalibrate_bn as recal
    from .methods import create_method
    from .methods.base import Setting
    from .quant import compression_ratio, get_bit_scheme

    dev = resolve_device(device)
    seed_everything(seed)
    model, meta = load_checkpoint(path, dev)
    cfg = TrainConfig.model_validate(meta["mbq.config"])
    method = create_method(cfg)
    name, train, test = datasets_for(meta, cfg, dataset, data_dir)
    notes: list[str] = []
    episodic = getattr(method, "episodic", False)
    if not episodic and any(v is not None for v in (episodes, ways, shots, queries)):
        raise MbqError(f"--episodes/--ways/--shots/--queries apply to few-shot checkpoints "
                       f"(mebqat-maml, mebqat-pn, fomaml, protonet, qat-*); this one is {cfg.method}")
    if pairs is None:
        settings = method.eval_settings()
    elif pairs == "all":
        from .bitpairs import ALL_WIDTHS, valid_pairs
        from .quant import quantized_layers
        one_bit = all(getattr(m.weight_quant, "supports_1bit", True) for _, m in quantized_layers(model))
        widths = ALL_WIDTHS if one_bit else ALL_WIDTHS[1:]
        settings = [Setting(w, a) for w, a in valid_pairs(widths) if method.supports_pair(w, a)]
    else:
        settings = []
        for w, a in pairs:
            if not method.supports_bits(w):
                if all_requested:
                    continue
                sup = [b for b in (1, 2, 3, 4, 5, 6, 7, 8, 16, 32) if method.supports_bits(b)]
                raise MbqError(f"--bit {w} is not available for this {cfg.method} checkpoint "
                               f"(it supports {_bits_list(sup)})")
            a = a if a is not None else cfg.act_bits_for(w)
            if not method.supports_pair(w, a):
                if all_requested:
                    continue
                raise _pair_error(cfg, w, a)
            settings.append(Setting(w, a))
        trained = set(method.trained_bits())
        untrained = [s.w for s in settings if s.w not in trained]
        if untrained and cfg.method in ("qat", "fp"):
            notes.append(f"{cfg.method} model trained at {_bits_list(sorted(trained))}; "
                         f"{_bits_list(untrained)} were never trained")
    test = test.to(dev)
    if limit is not None:
        test = test.subset(torch.arange(min(limit, len(test))))
    if episodic:
        from .fewshot.evaluate import evaluate_settings
        rows = evaluate_settings(method, model, test, settings, episodes=episodes, ways=ways,
                                 shots=shots, queries=queries, seed=seed, device=dev)
        return {"checkpoint": str(path), "method": cfg.method, "arch": cfg.model.arch, "dataset": name,
                "results": rows, "notes": notes}
    loader = BatchLoader(test, batch_size, shuffle=False, augment=False, device=dev)
    calib = BatchLoader(train.to(dev), min(batch_size, 256), shuffle=True, augment=False, device=dev,
                        seed=seed)
    trained = method.trained_bits()

    def _recal_batches(s) -> int:
        chosen = {"all": True, "untrained": s.w not in trained,  # extrapolated ones included
                  "extrapolated": is_extrapolated(s.w, trained)}[recalibrate_widths]
        return recalibrate_bn if chosen else 0

    base_state = copy.deepcopy(model.state_dict()) if recalibrate_bn else None
    rows = []
    for s in settings:
        if base_state is not None:
            model.load_state_dict(base_state)
        method.apply_setting(model, s)
        n_recal = _recal_batches(s)
        if n_recal:
            recal(model, calib, n_recal)
        note = method.prepare_eval(model, s, calib, recalibrated=n_recal)
        if note and note not in notes:
            notes.append(note)
        r = evaluate(model, loader)
        w, a = (s.w, s.a) if s.w is not None else ("mixed", "mixed")
        bits_value = s.w if s.w is not None and s.w == s.a else s.label
        rows.append({"label": s.label, "bits": bits_value, "w": w, "a": a, "top1": r["top1"],
                     "loss": r["loss"], "n": r["n"], "compression": compression_ratio(model),
                     "recalibrated_bn": n_recal or None})
        if s.w is None:  # a per-layer scheme: say what it is
            rows[-1]["layer_bits"] = {n: wa["w"] for n, wa in get_bit_scheme(model).items()}
    return {"checkpoint": str(path), "method": cfg.method, "arch": cfg.model.arch, "dataset": name,
            "results": rows, "notes": notes}
