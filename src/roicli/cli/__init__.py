"""roicli's command line: `roicli align|pool|precise|inspect|compare|show|batch`.

Each command parses its options, calls the library and renders what comes back; errors raised by the
library (roicli.errors) become one line on stderr and an exit code (1 for data, 2 for usage).

Start-up stays light: the command modules import torch, numpy and Ray inside the commands, so
`roicli --help`, `roicli COMMAND --help` and `roicli inspect` never load them.
"""

from __future__ import annotations

import signal
import sys
import warnings
from typing import Annotated

import typer

import roicli
from roicli.cli import batch_cmd, compare_cmd, inspect_cmd, kernels_cmd, pooling, show_cmd
from roicli.cli._common import OneLineErrors
from roicli.errors import Terminated

app = typer.Typer(
    cls=OneLineErrors,
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # plain help: no `<bool>` on flags, and `[ray]` is not taken for markup
    context_settings={"help_option_names": ["-h", "--help"]},
    help="RoI Align, RoI Pool and exact RoI pooling on feature maps, with the quantization error "
    "of RoI Pool made visible. Every command has --help.",
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"roicli {roicli.__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print roicli's version and exit."),
    ] = False,
) -> None:
    """RoI Align, RoI Pool and exact RoI pooling on feature maps, with the quantization error of RoI Pool
    made visible. Every command has --help."""


pooling.register(app)
inspect_cmd.register(app)
compare_cmd.register(app)
show_cmd.register(app)
batch_cmd.register(app)
kernels_cmd.register(app)


def _terminate(signum, frame) -> None:
    raise Terminated()


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """A warning the library raises (e.g. `KernelFallbackWarning`) as one line on stderr, like the
    commands' own warnings: no source line, no file name."""
    text = " ".join(str(message).split())
    try:
        (file or sys.stderr).write(f"Warning: {text}\n")
    except (OSError, ValueError):
        pass


def main() -> None:
    # SIGTERM unwinds like Ctrl-C: temp files are removed on the way out, then exit 143.
    signal.signal(signal.SIGTERM, _terminate)
    warnings.showwarning = _one_line_warning
    app()
