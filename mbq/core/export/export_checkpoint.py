"""What ``mbq export`` runs: a checkpoint at one or several precisions -> packed / ONNX files."""
from __future__ import annotations

import copy
import datetime as _dt
import hashlib
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Callable

from .._atomic import atomic_path
from ..errors import MbqError
from . import FORMATS

_SUFFIX = {"packed": ".packed.safetensors", "onnx": ".onnx"}


def _bits_list(ws) -> str:
    return ", ".join("fp" if w >= 32 else str(w) for w in ws)


def parse_bit(text: str | int | None) -> int | str | None:
    """``--bit``: None, ``"all"``, or one width (``fp`` = 32)."""
    from ..config import check_bits

    if text is None:
        return None
    t = str(text).strip().lower()
    if t == "all":
        return "all"
    if t in ("fp", "float"):
        return 32
    try:
        return check_bits(int(t))
    except ValueError:
        raise MbqError(f"--bit must be a bit-width (1..8, 16, 32/fp) or 'all', got {text}") from None


def sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _settings(method, cfg, want) -> tuple[list, list[str]]:
    from ..methods.base import Setting

    trained = list(dict.fromkeys(method.trained_bits()))
    if want is None and len(trained) > 1:
        raise MbqError(f"this {cfg.method} checkpoint serves several widths ({_bits_list(trained)}); "
                       "choose one with --bit N, or --bit all for one file per width")
    if want is None or (want == "all" and len(trained) == 1):
        return [method.eval_settings()[0]], []
    widths, notes = (trained if want == "all" else [want]), []
    for w in widths:
        if not method.supports_bits(w):
            sup = [b for b in (1, 2, 3, 4, 5, 6, 7, 8, 16, 32) if method.supports_bits(b)]
            raise MbqError(f"--bit {w} is not available for this {cfg.method} checkpoint "
                           f"(it supports {_bits_list(sup)})")
    if 16 in widths:
        if want != "all":
            raise MbqError("export handles 1..8-bit and float (32) layers, not 16 bits")
        notes.append("16 bits skipped: export handles 1..8-bit and float layers")
        widths = [w for w in widths if w != 16]
    return [Setting(w, cfg.act_bits_for(w)) for w in widths], notes


def _tag(label: str) -> str:
    return f"{label}bit" if label.isdigit() else label


def _targets(src: Path, out: Path | None, fmt: str, settings: list, force: bool,
             labelled: bool) -> list[Path]:
    if out is None:
        out = src.with_name(src.name.removesuffix(".safetensors") + _SUFFIX[fmt])
    if fmt == "onnx" and out.suffix.lower() != ".onnx":
        raise MbqError(f"--out {out}: an ONNX file must end in .onnx")
    if fmt == "packed" and out.suffix.lower() == ".onnx":
        raise MbqError(f"--out {out}: a packed file is safetensors; do not name it .onnx")
    if not out.parent.exists():
        raise MbqError(f"output folder {out.parent} does not exist")
    paths = [out.with_name(f"{out.stem}.{_tag(s.label)}{out.suffix}") for s in settings] \
        if labelled else [out]
    for p in paths:
        if p.resolve() == src.resolve():
            raise MbqError(f"--out {p} would overwrite the checkpoint being exported")
        if p.exists() and not force:
            raise MbqError(f"{p} exists; pass --force to overwrite it")
    return paths


class _LazyCalib:
    """Training batches for a method's prepare_eval (BN re-estimation); loaded on first use,
    the same loader ``mbq eval`` builds, so export and eval see the same model."""

    def __init__(self, cfg, device, seed: int):
        self.cfg, self.device, self.seed, self._loader = cfg, device, seed, None

    def __iter__(self):
        if self._loader is None:
            from ..data import BatchLoader, create_dataset

            d = self.cfg.data
            train, _ = create_dataset(d.name, data_dir=str(d.data_dir) if d.data_dir else None,
                                      image_size=d.image_size)
            self._loader = BatchLoader(train.to(self.device), 256, shuffle=True, augment=False,
                                       device=self.device, seed=self.seed)
        return iter(self._loader)


def _quantized_bytes(plan) -> dict:
    """Bytes of the rewritten quantized layers in a packed file, against float32 weights."""
    from .packed import _layer_tensors

    codes = params = bias = floats = 0
    for p in plan.layers.values():
        if p.codes is None:
            continue
        t = _layer_tensors(p)
        codes += t[f"{p.name}.weight.codes"].numel()
        params += 4 * (p.codes.scale.numel() + p.codes.zero_point.numel())
        bias += 4 * p.bias.numel() if p.bias is not None else 0
        floats += 4 * p.numel
    return {"codes": codes, "scale_zero_point": params, "bias": bias, "float32_weights": floats}


def export_checkpoint(path: str | Path, *, fmt: str = "packed", bit=None, out: str | Path | None = None,
                      force: bool = False, device: str = "auto", seed: int = 0, opset: int = 21,
                      report: Callable[[str], None] | None = None) -> dict:
    """Export ``path`` at ``bit`` (None: the checkpoint's own setting; ``"all"``: every trained
    width) as ``fmt``; returns what was written.  All files appear together or none."""
    if fmt not in FORMATS:
        raise MbqError(f"unknown --format {fmt} (choose from: {', '.join(FORMATS)})")
    if fmt == "onnx":
        from .onnx_export import check_opset
        check_opset(opset)  # also: the onnx package is there
    want = parse_bit(bit)
    path = Path(path)
    from ..checkpoint import load_checkpoint
    from ..config import TrainConfig
    from ..engine import resolve_device, seed_everything
    from ..methods import create_method
    from ..quant import weight_layers
    from ..quant.functional import FP_BITS
    from .fold import trace
    from .plan import build_plan, float_arch, theoretical_bytes

    dev = resolve_device(device)
    seed_everything(seed)
    model, meta = load_checkpoint(path, dev)
    cfg = TrainConfig.model_validate(meta["mbq.config"])
    method = create_method(cfg)
    settings, notes = _settings(method, cfg, want)
    targets = _targets(path, Path(out) if out else None, fmt, settings, force, want == "all")
    arch = float_arch(cfg.model.model_dump())
    gm = trace(arch)
    float_bytes = 4 * sum(m.weight.numel() for _, m in weight_layers(arch))
    base = copy.deepcopy(model.state_dict()) if len(settings) > 1 else None
    calib = _LazyCalib(cfg, dev, seed)
    source = {"source": path.name, "source_sha256": sha256(path), "format": fmt,
              "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
    files = []
    with ExitStack() as stack:
        for s, target in zip(settings, targets):
            t0 = time.perf_counter()
            if base is not None:
                model.load_state_dict(base)
            method.apply_setting(model, s)
            note = method.prepare_eval(model, s, calib)
            if note:
                notes.append(note)
            plan = build_plan(model, arch, gm)
            setting = {"label": s.label, "w": s.w, "a": s.a}
            widths = sorted({p.w_bits for p in plan.layers.values() if p.w_bits < FP_BITS}) or [FP_BITS]
            emeta = dict(meta, **{"mbq.bits": [s.w] if s.w is not None else widths,
                                  "mbq.export": dict(source, setting=setting)})
            tmp = stack.enter_context(atomic_path(target))
            entry = {"path": str(target), "format": fmt, "label": s.label, "w": s.w, "a": s.a}
            if fmt == "packed":
                from .packed import write_packed
                write_packed(plan, emeta, setting, tmp)
                entry["quantized_layers"] = _quantized_bytes(plan)
            else:
                from .onnx_export import write_onnx
                write_onnx(plan, arch, gm, emeta, setting, tmp, opset)
            entry.update(size=tmp.stat().st_size, sha256=sha256(tmp), checkpoint_size=path.stat().st_size,
                         theoretical_bytes=theoretical_bytes(plan, arch), float_weight_bytes=float_bytes,
                         seconds=round(time.perf_counter() - t0, 3))
            files.append(entry)
            if report:
                report(f"{s.label}: {target} ({entry['size']:,} bytes, {entry['seconds']:.2f}s)")
    return {"checkpoint": str(path), "format": fmt, "method": cfg.method, "arch": cfg.model.arch,
            "files": files, "notes": notes}
