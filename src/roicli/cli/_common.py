"""What the commands share: error handling (and how an API parameter is spelled as a flag), the stderr console."""

from __future__ import annotations

import functools
import os
import sys
import traceback
import warnings

import typer
from rich.console import Console
from typer._click.exceptions import ClickException  # typer vendors Click (>= 0.26); never import click
from typer._click.globals import get_current_context
from typer.core import TyperGroup

from roicli.errors import RoicliError, Terminated


def stderr() -> Console:
    return Console(stderr=True, highlight=False, soft_wrap=True)


def fail(message: str, code: int = 1, hint: str | None = None) -> typer.Exit:
    console = stderr()
    message = " ".join(message.split())  # one line, whatever a library below put in it
    console.print(f"Error: {message}", markup=False, soft_wrap=True)
    if hint:
        console.print(f"Hint: {hint}", markup=False, soft_wrap=True)
    return typer.Exit(code)


class OneLineErrors(TyperGroup):
    """Usage errors (unknown option, bad choice, missing argument) as one line, `Error: ...`, exit 2,
    like every other error; the help text is one `--help` away and the line says so."""

    def main(self, *args, standalone_mode: bool = True, **kwargs):
        if not standalone_mode:
            return super().main(*args, standalone_mode=False, **kwargs)
        try:
            code = super().main(*args, standalone_mode=False, **kwargs)
        except ClickException as e:
            if type(e).__name__ == "NoArgsIsHelpError":  # `roicli` alone: the help, exit 2
                typer.echo(e.ctx.get_help() if e.ctx else "", err=True)
                sys.exit(e.exit_code)
            ctx = getattr(e, "ctx", None)
            where = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
            message = " ".join(e.format_message().split())
            stderr().print(f"Error: {message}{where}", markup=False, soft_wrap=True)
            sys.exit(e.exit_code)
        except typer.Abort:
            stderr().print("Error: aborted", markup=False)
            sys.exit(1)
        sys.exit(code if isinstance(code, int) else 0)


def handle_errors(fn):
    """Turn roicli's errors into `Error: ...` on stderr and an exit code; no tracebacks
    unless ROICLI_DEBUG=1. With the command's `--quiet`, the library's warnings are not shown."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            with warnings.catch_warnings():
                if kwargs.get("quiet"):
                    warnings.simplefilter("ignore")
                return fn(*args, **kwargs)
        except RoicliError as e:
            if os.environ.get("ROICLI_DEBUG") == "1":
                traceback.print_exc()
            raise fail(e.worded(flag_of), e.exit_code) from None
        except BrokenPipeError:  # the reader went away (`| head`): the data is incomplete, so say so
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            raise fail("stdout: the reader closed the pipe; the output is incomplete", 141) from None
        except KeyboardInterrupt:
            raise fail("interrupted; no partial output was left behind", 130) from None
        except Terminated:
            raise fail("terminated (SIGTERM); no partial output was left behind", Terminated.exit_code) from None
        except (typer.Exit, typer.Abort, SystemExit):
            raise
        except RecursionError:
            raise fail("input nested too deeply to read") from None
        except MemoryError:
            raise fail(
                "out of memory",
                hint="pool fewer RoIs at once (--chunk-size), split the job, or use a smaller --output-size",
            ) from None
        except Exception as e:  # a bug: say so in one line, details on request
            if os.environ.get("ROICLI_DEBUG") == "1":
                traceback.print_exc()
            raise fail(
                f"internal error: {type(e).__name__}: {e}",
                hint="run again with ROICLI_DEBUG=1 for a traceback, and report it",
            ) from None

    return wrapper


def flag_of(param: str) -> str:
    """How the running command spells the API's parameter `param` in an error: its option
    (`--chunk-size`, `-o/--output`, `--aligned/--no-aligned`) or argument (`FEATURES`), found by the
    command's parameter of that name; else `--param-name`."""
    ctx = get_current_context(silent=True)
    for p in ctx.command.params if ctx is not None else ():
        if p.name == param:
            if p.param_type_name == "argument":
                return p.metavar or p.name.upper()
            return "/".join([*p.opts, *p.secondary_opts])
    return "--" + param.replace("_", "-")


def show_progress(quiet: bool) -> bool:
    return not quiet and sys.stderr.isatty()
