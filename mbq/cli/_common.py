"""Shared CLI pieces: common options, consoles, output helpers. Torch-free."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

JsonOpt = Annotated[bool, typer.Option("--json", help="Print exactly one JSON document on stdout.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress or logs on stderr.")]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto, cpu, cuda or cuda:N.")]
SeedOpt = Annotated[int, typer.Option("--seed", help="Random seed (runs are reproducible on CPU).")]
ConfigOpt = Annotated[Optional[Path], typer.Option("--config", help="TOML/YAML file of defaults; flags override.")]
CkptArg = Annotated[Path, typer.Argument(help="An mbq checkpoint (.safetensors).", show_default=False)]


def stdout_console():
    from rich.console import Console
    return Console(soft_wrap=True)


def stderr_console():
    from rich.console import Console
    return Console(stderr=True, soft_wrap=True)


def emit_json(doc: Any) -> None:
    sys.stdout.write(json.dumps(doc, indent=2, default=str) + "\n")
    sys.stdout.flush()


def log(quiet: bool, message: str) -> None:
    if not quiet:
        stderr_console().print(message, highlight=False)


def read_config_file(path: Path | None) -> dict:
    """Defaults from a TOML or YAML file (flat keys, optional [options] table)."""
    from mbq.core.errors import MbqError

    if path is None:
        return {}
    if not path.exists():
        raise MbqError(f"--config: no such file: {path}")
    text = path.read_text()
    try:
        if path.suffix.lower() == ".toml":
            import tomllib
            data = tomllib.loads(text)
        elif path.suffix.lower() in (".yaml", ".yml"):
            import yaml
            data = yaml.safe_load(text) or {}
        else:
            raise MbqError(f"--config: {path} must end in .toml, .yaml or .yml")
    except MbqError:
        raise
    except Exception as e:
        raise MbqError(f"--config: cannot parse {path}: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise MbqError(f"--config: {path} must hold a mapping of option names to values")
    return {str(k).replace("-", "_"): v for k, v in data.items()}


def explicit_params(ctx: typer.Context) -> set[str]:
    """Names of the parameters the user gave on the command line."""
    # by name: typer >= 0.29 vendors click, so its ParameterSource is not click.core's
    def given(name: str) -> bool:
        src = ctx.get_parameter_source(name)
        return src is not None and src.name not in ("DEFAULT", "DEFAULT_MAP")

    return {name for name in ctx.params if given(name)}
