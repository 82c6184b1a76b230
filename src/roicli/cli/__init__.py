"""roicli's command line: `roicli align|pool|precise|inspect|compare|show`.

Each command parses its options, calls the library and renders what comes back; errors raised by the
library (roicli.errors) become one line on stderr and an exit code (1 for data, 2 for usage).
"""

from __future__ import annotations

import typer

from roicli.cli import batch_cmd, compare_cmd, inspect_cmd, pooling, show_cmd

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="RoI Align, RoI Pool and exact RoI pooling on feature maps, with the quantization error "
    "of RoI Pool made visible. Every command has --help.",
)
pooling.register(app)
inspect_cmd.register(app)
compare_cmd.register(app)
show_cmd.register(app)
batch_cmd.register(app)


def main() -> None:
    app()
