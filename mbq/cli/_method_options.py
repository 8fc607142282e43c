"""Method-specific ``mbq train`` flags, parsed against each method's
pydantic options class (so each method declares its flags once)."""
from __future__ import annotations

from mbq.core.errors import MbqError


def _fields(cls) -> dict:
    return {k: f for k, f in cls.model_fields.items()}


def _is_bool(field) -> bool:
    return field.annotation is bool


def options_help() -> str:
    """Epilog for ``mbq train --help``: every method's own flags."""
    from mbq.core.methods import list_methods, options_class

    lines = ["Method options (after --method NAME):"]
    for name in list_methods():
        try:
            fields = _fields(options_class(name))
        except Exception:
            continue
        shown = [(k, f) for k, f in fields.items() if not (f.json_schema_extra or {}).get("hidden")]
        if not shown:
            continue
        lines.append(f"  {name}:")
        for k, f in shown:
            flag = "--" + k.replace("_", "-")
            if _is_bool(f):
                flag = f"{flag}/--no-{k.replace('_', '-')}"
            default = "" if f.default is None else f" [default: {f.default}]"
            lines.append(f"    {flag}  {f.description or ''}{default}")
    return "\n\n".join(["\n".join(lines[:1])] + ["\n".join(lines[1:])]) if len(lines) > 1 else ""


def parse_method_args(method: str, args: list[str]) -> dict:
    """``['--coreset-fraction', '0.2', '--no-wbc']`` -> ``{'coreset_fraction': '0.2', 'wbc': False}``."""
    from mbq.core.methods import list_methods, options_class

    fields = _fields(options_class(method))
    out: dict = {}
    i = 0
    while i < len(args):
        tok = args[i]
        if not tok.startswith("--"):
            raise MbqError(f"unexpected argument '{tok}' (mbq train takes no positional arguments)")
        key, _, inline = tok[2:].partition("=")
        neg = key.startswith("no-") and key[3:].replace("-", "_") in fields
        name = (key[3:] if neg else key).replace("-", "_")
        if name not in fields:
            owners = [m for m in list_methods() if m != method and name in _fields(options_class(m))]
            hint = f" (it belongs to --method {'/'.join(owners)})" if owners else ""
            raise MbqError(f"no such option: --{key} for --method {method}{hint}; see mbq train --help")
        if _is_bool(fields[name]):
            out[name] = (not neg) if not inline else inline.lower() in ("1", "true", "yes")
            i += 1
            continue
        if inline:
            out[name] = inline
            i += 1
        elif i + 1 < len(args):
            out[name] = args[i + 1]
            i += 2
        else:
            raise MbqError(f"option --{key} needs a value")
    return out


def options_argv(options: dict) -> list[str]:
    """The inverse of ``parse_method_args``: ``{'coreset_fraction': 0.2, 'wbc': False}`` ->
    ``['--coreset-fraction', '0.2', '--no-wbc']`` (scripts that build ``mbq train`` commands)."""
    argv: list[str] = []
    for name, v in options.items():
        flag = "--" + name.replace("_", "-")
        if isinstance(v, bool):
            argv.append(flag if v else "--no-" + name.replace("_", "-"))
        elif isinstance(v, (list, tuple)):
            argv += [flag, ",".join(str(x) for x in v)]
        else:
            argv += [flag, str(v)]
    return argv
