"""The coreset file: per-bit scores and an initial per-bit selection (safetensors).

Tensors ``scores.<bit>`` (float32 [N]) and ``indices.<bit>`` (int64, sorted
dataset indices); header metadata names the dataset, its size and a
fingerprint of its labels, so a file is never applied to another split.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .._atomic import atomic_path
from ..checkpoint import read_header
from ..errors import MbqError

FORMAT = "coreset"
FORMAT_VERSION = "1"
_JSON_KEYS = ("bits", "size", "fraction", "seed", "subset_size")


def labels_fingerprint(labels: torch.Tensor) -> str:
    """Short hash of the label sequence: tells apart splits of equal size."""
    data = labels.detach().to(torch.int64).cpu().contiguous().numpy().tobytes()
    return hashlib.sha1(data).hexdigest()[:16]


@dataclass
class CoresetFile:
    scores: dict[int, torch.Tensor]
    indices: dict[int, torch.Tensor]
    meta: dict = field(default_factory=dict)

    @property
    def bits(self) -> list[int]:
        return sorted(self.scores)

    @property
    def size(self) -> int:
        return int(self.meta["size"])


def write_coreset(path: str | Path, cf: CoresetFile) -> Path:
    from safetensors.torch import save_file

    path = Path(path)
    if not path.parent.exists():
        raise MbqError(f"output folder {path.parent} does not exist")
    tensors = {}
    for b in cf.bits:
        tensors[f"scores.{b}"] = cf.scores[b].detach().float().cpu().contiguous()
        tensors[f"indices.{b}"] = cf.indices[b].detach().to(torch.int64).cpu().contiguous()
    meta = {"mbq.format": FORMAT, "mbq.format_version": FORMAT_VERSION,
            "mbq.bits": json.dumps(cf.bits)}
    meta.update({f"mbq.{k}": v if isinstance(v, str) else json.dumps(v) for k, v in cf.meta.items()})
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)
    return path


def _decode(raw: dict[str, str], path) -> dict:
    out = {}
    for k, v in raw.items():
        key = k.removeprefix("mbq.")
        try:
            out[key] = json.loads(v) if key in _JSON_KEYS else v
        except json.JSONDecodeError:
            raise MbqError(f"{path}: coreset metadata {k} is malformed") from None
    return out


def read_coreset(path: str | Path) -> CoresetFile:
    """Read and check a coreset file; MbqError (one line) for anything else."""
    raw = read_header(path)
    if raw.get("mbq.format") != FORMAT:
        what = raw.get("mbq.format", "plain safetensors")
        raise MbqError(f"{path} is not a coreset file (it is a '{what}' file); "
                       "make one with mbq select-coreset")
    if raw.get("mbq.format_version") != FORMAT_VERSION:
        raise MbqError(f"{path}: coreset format version {raw.get('mbq.format_version')} is not supported")
    meta = _decode(raw, path)
    from safetensors.torch import load_file
    try:
        tensors = load_file(str(path), device="cpu")
        bits = [int(b) for b in meta["bits"]]
        scores = {b: tensors[f"scores.{b}"] for b in bits}
        indices = {b: tensors[f"indices.{b}"] for b in bits}
        n = int(meta["size"])
    except (KeyError, ValueError, TypeError) as e:
        raise MbqError(f"{path}: coreset file is incomplete ({e})") from None
    except Exception as e:  # safetensors' own errors
        raise MbqError(f"{path}: could not read tensors ({e}); the file may be corrupt") from None
    for b in bits:
        idx = indices[b]
        if scores[b].numel() != n or (idx.numel() and (idx.min() < 0 or idx.max() >= n)):
            raise MbqError(f"{path}: {b}-bit scores/indices do not match the recorded size {n}")
    for k in ("bits", "format", "format_version"):
        meta.pop(k, None)
    return CoresetFile(scores, indices, meta)


def check_matches(cf: CoresetFile, dataset, path: str | Path = "coreset file") -> None:
    """The file must describe exactly this training split (name, size, labels)."""
    name, n = cf.meta.get("dataset"), cf.size
    hint = ("make the coreset from a checkpoint trained with the same --data, --train-subset, "
            "--val-size and --seed")
    if name != dataset.name:
        raise MbqError(f"{path} was made for dataset {name}, but this run trains on {dataset.name}; {hint}")
    if n != len(dataset):
        raise MbqError(f"{path} was made for {n} {name} training images, but this run has "
                       f"{len(dataset)}; {hint}")
    fp = cf.meta.get("labels_fingerprint")
    if fp is not None and fp != labels_fingerprint(dataset.labels):
        raise MbqError(f"{path} was made for a different split of {name} (same size, other images); {hint}")
