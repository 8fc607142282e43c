"""The ``mbq`` command. Importing this module must not import torch:
``mbq --help`` answers in well under a second."""
from __future__ import annotations

import os
import sys
from typing import Annotated, Optional

import typer
from typer.core import TyperGroup

from . import eval as _eval
from . import export as _export
from . import info as _info
from . import prune as _prune
from . import select_coreset as _select_coreset
from . import sensitivity as _sensitivity
from . import train as _train


def _fail(message: str, code: int) -> None:
    from rich.console import Console

    Console(stderr=True, soft_wrap=True).print(f"[bold red]error:[/] {message}", highlight=False)
    sys.exit(code)


class _MbqGroup(TyperGroup):
    """Maps every failure of a subcommand to one line on stderr and an exit code
    (here, not in ``main``, so CliRunner and ``python -m mbq`` behave alike)."""

    def invoke(self, ctx):
        from typer._click import exceptions as tce

        from mbq.core.errors import MbqError, RunFailed

        passthrough = (typer.Exit, typer.Abort, tce.ClickException, SystemExit)
        try:  # a standalone click, if installed, has its own classes
            import click
            passthrough += (click.exceptions.Exit, click.exceptions.Abort, click.ClickException)
        except ImportError:
            pass

        debug = bool(os.environ.get("MBQ_DEBUG"))
        try:
            return super().invoke(ctx)
        except passthrough:
            raise
        except KeyboardInterrupt:
            _fail("interrupted; the last complete checkpoint is kept", 130)
        except MbqError as e:
            if debug:
                raise
            _fail(str(e), e.exit_code)
        except RunFailed as e:
            if debug:
                raise
            _fail(str(e), e.exit_code)
        except Exception as e:  # last resort: still one line unless debugging
            if debug:
                raise
            from pydantic import ValidationError

            if isinstance(e, ValidationError):
                from mbq.core.config import format_validation_error
                _fail(format_validation_error(e), 2)
            first = str(e).strip().splitlines()[0] if str(e).strip() else ""
            _fail(f"{type(e).__name__}: {first} (set MBQ_DEBUG=1 or pass --debug for the traceback)", 1)


app = typer.Typer(
    name="mbq",
    cls=_MbqGroup,
    help="Quantization-aware training for multi-bit and mixed-precision vision networks.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


@app.callback()
def _process_options(
    threads: Annotated[Optional[int], typer.Option(
        "--threads", min=1, help="CPU threads of this process (default: one per core). Runs sharing a "
                                 "machine should split its cores: oversubscribed threads wait on each other.")] = None,
) -> None:
    if threads is not None:
        os.environ["OMP_NUM_THREADS"] = str(threads)  # read when torch is first imported
        if "torch" in sys.modules:
            sys.modules["torch"].set_num_threads(threads)


_train.register(app)
_eval.register(app)
_info.register(app)
_export.register(app)
_select_coreset.register(app)
_sensitivity.register(app)
_prune.register(app)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point (``mbq``) and ``python -m mbq``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--debug" in argv:
        argv.remove("--debug")
        os.environ["MBQ_DEBUG"] = "1"
    try:
        app(args=argv, prog_name="mbq")
    except KeyboardInterrupt:  # Ctrl-C outside a command body
        _fail("interrupted", 130)
