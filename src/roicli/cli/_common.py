"""What the commands share: error handling, the stderr console, option parsing."""

from __future__ import annotations

import functools
import os
import re
import sys
import traceback

import typer
from rich.console import Console

from roicli.errors import RoicliError, UsageError


def stderr() -> Console:
    return Console(stderr=True, highlight=False, soft_wrap=True)


def fail(message: str, code: int = 1, hint: str | None = None) -> typer.Exit:
    console = stderr()
    console.print(f"Error: {message}", markup=False, soft_wrap=True)
    if hint:
        console.print(f"Hint: {hint}", markup=False, soft_wrap=True)
    return typer.Exit(code)


def handle_errors(fn):
    """Turn roicli's errors into `Error: ...` on stderr and an exit code; no tracebacks
    unless ROICLI_DEBUG=1."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except RoicliError as e:
            if os.environ.get("ROICLI_DEBUG") == "1":
                traceback.print_exc()
            raise fail(str(e), e.exit_code) from None
        except BrokenPipeError:  # the reader went away (`| head`): stop quietly, like other tools
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            raise typer.Exit(141) from None
        except KeyboardInterrupt:
            raise fail("interrupted; no output was written", 130) from None
        except (typer.Exit, typer.Abort, SystemExit):
            raise
        except Exception as e:  # a bug: say so in one line, details on request
            if os.environ.get("ROICLI_DEBUG") == "1":
                traceback.print_exc()
            raise fail(
                f"internal error: {type(e).__name__}: {e}",
                hint="run again with ROICLI_DEBUG=1 for a traceback, and report it",
            ) from None

    return wrapper


def parse_output_size(text: str) -> tuple[int, int]:
    """`7` -> (7, 7); `7x5` -> (7, 5)."""
    m = re.fullmatch(r"\s*(\d+)\s*(?:[xX,]\s*(\d+)\s*)?", text)
    if not m or int(m.group(1)) <= 0 or (m.group(2) is not None and int(m.group(2)) <= 0):
        raise UsageError(f"--output-size: expected a positive size like 7 or 7x5, got {text!r}")
    ph = int(m.group(1))
    return ph, int(m.group(2)) if m.group(2) else ph


def show_progress(quiet: bool) -> bool:
    return not quiet and sys.stderr.isatty()
