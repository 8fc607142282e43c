"""The ``mbq`` command. Importing this module must not import torch:
``mbq --help`` answers in well under a second."""
from __future__ import annotations

import sys

import typer

from . import eval as _eval
from . import export as _export
from . import info as _info
from . import prune as _prune
from . import select_coreset as _select_coreset
from . import sensitivity as _sensitivity
from . import train as _train

app = typer.Typer(
    name="mbq",
    help="Quantization-aware training for multi-bit and mixed-precision vision networks.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

_train.register(app)
_eval.register(app)
_info.register(app)
_export.register(app)
_sensitivity.register(app)
_prune.register(app)
_select_coreset.register(app)


def _fail(message: str, code: int) -> None:
    from rich.console import Console

    Console(stderr=True, soft_wrap=True).print(f"[bold red]error:[/] {message}", highlight=False)
    sys.exit(code)


def main(argv: list[str] | None = None) -> None:
    """Entry point: maps every failure to one line and an exit code."""
    import click

    from mbq.core.errors import MbqError, RunFailed

    debug = "--debug" in (argv if argv is not None else sys.argv)
    if debug:
        argv = [a for a in (argv if argv is not None else sys.argv[1:]) if a != "--debug"]
    try:
        code = app(args=argv, standalone_mode=False)
        sys.exit(code if isinstance(code, int) else 0)
    except click.exceptions.Abort:
        _fail("interrupted", 130)
    except KeyboardInterrupt:
        _fail("interrupted; the last complete checkpoint is kept", 130)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except MbqError as e:
        if debug:
            raise
        _fail(str(e), 2)
    except RunFailed as e:
        if debug:
            raise
        _fail(str(e), 1)
    except SystemExit:
        raise
    except Exception as e:  # last resort: still one line unless --debug
        from pydantic import ValidationError

        if debug:
            raise
        if isinstance(e, ValidationError):
            from mbq.core.config import format_validation_error
            _fail(format_validation_error(e), 2)
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        _fail(f"{type(e).__name__}: {first} (run with --debug for the traceback)", 1)
