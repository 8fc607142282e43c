"""``--resume``: a run continues with the settings it began with, not with today's defaults.

A run records its resolved configuration, every method option included, beside its
checkpoint (``<out>.config.json``). On ``--resume`` that record is the configuration: a flag
the command repeats must agree with it, a flag it leaves out takes the run's value (so a
default changed since the run began does not change the run), and only where and how long
it runs come from the command. Torch-free.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from pydantic import ValidationError

from ._runfiles import config_path, state_path
from .config import TrainConfig, format_validation_error
from .errors import MbqError

# where the run continues, and where its data lies, are the command's
_FROM_COMMAND = ("out", "resume", "device", "amp", "data.data_dir", "data.download")
_MAY_CHANGE = ("epochs",)  # given: lengthens (or ends early) the schedule the run stepped on


def saved_config(out: Path) -> TrainConfig | None:
    """The configuration of the run saved at ``out`` (None: no run to continue there)."""
    path = config_path(out)
    if not path.exists() or not state_path(out).exists():
        return None
    try:
        return TrainConfig.model_validate_json(path.read_text())
    except (ValidationError, ValueError, OSError) as e:
        why = format_validation_error(e) if isinstance(e, ValidationError) else str(e).splitlines()[0]
        raise MbqError(f"--resume: {path} is not a run configuration this mbq can read ({why})") from None


def method_options(cfg: TrainConfig, *, record: bool = False) -> dict:
    """Every option of the run's method, validated.

    ``record``: ``cfg`` is a run's record. One from before options were recorded whole lacks
    those left at their default; they take the default the method had then
    (``unrecorded_defaults``), else today's.
    """
    from .methods import options_class

    cls = options_class(cfg.method)
    options = dict(cls.unrecorded_defaults, **cfg.options) if record else cfg.options
    try:
        return cls.model_validate(options).model_dump(mode="json")
    except ValidationError as e:
        raise MbqError(format_validation_error(e, as_flags=True)) from None


def _flat(doc: dict, prefix: str = "") -> dict[str, Any]:
    """``{"optim": {"lr": 0.2}}`` -> ``{"optim.lr": 0.2}`` (method options go in whole, as
    ``options.<name>``, by the caller)."""
    out: dict[str, Any] = {}
    for key, value in doc.items():
        name = prefix + key
        if isinstance(value, dict) and value:
            out.update(_flat(value, name + "."))
        else:
            out[name] = value
    return out


def _unflat(flat: dict[str, Any]) -> dict:
    doc: dict = {}
    for dotted, value in flat.items():
        *parents, last = dotted.split(".") if not dotted.startswith("options.") else ["options", dotted[8:]]
        d = doc
        for p in parents:
            d = d.setdefault(p, {})
        d[last] = value
    return doc


def _text(value: Any) -> str:
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    if value is None:
        return "none"
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value).lower() if isinstance(value, bool) else str(value)


def resume_config(cfg: TrainConfig, saved: TrainConfig, given: set[str],
                  flag: Callable[[str], str | None]) -> tuple[TrainConfig, list[str]]:
    """The configuration a resumed run trains with, and what it kept from the run that
    today's command would have set otherwise.

    ``cfg`` is what the command resolves to on its own, ``given`` the dotted fields it set
    (flags, config file, method options as ``options.<name>``), ``flag`` names a dotted
    field as the user knows it (``optim.lr`` -> ``--lr``; None: no flag sets it, so that the
    run kept it is no news). A given field that differs from the run's is refused: the
    optimizer and schedule state continue the run as it was.
    """
    new = _flat(cfg.model_dump(mode="json", exclude={"options"}))
    old = _flat(saved.model_dump(mode="json", exclude={"options"}))
    new_opts = method_options(cfg) if cfg.method == saved.method else {}
    new.update({f"options.{k}": v for k, v in new_opts.items()})
    old.update({f"options.{k}": v for k, v in method_options(saved, record=True).items()})

    keep = set(_FROM_COMMAND) | {k for k in _MAY_CHANGE if k in given}
    clash = [k for k in sorted(given - keep)
             if (k in new or k in old) and new.get(k) != old.get(k)]
    if clash:
        what = "; ".join(f"{flag(k) or k} {_text(new.get(k))} (the run: {_text(old.get(k))})" for k in clash)
        raise MbqError(f"--resume continues the run at {cfg.out} with its own settings, and this "
                       f"command changes them: {what}; drop those flags, or start a new run from it "
                       "(--init) at another --out")
    kept = [f"{flag(k)} {_text(v)} (this command alone: {_text(new.get(k))})"
            for k, v in old.items() if k not in keep and k in new and new[k] != v and flag(k)]
    merged = dict(old, **{k: new[k] for k in keep if k in new})
    try:
        resumed = TrainConfig.model_validate(_unflat(merged))
    except ValidationError as e:
        raise MbqError(f"--resume: {format_validation_error(e)}") from None
    return resumed, kept
