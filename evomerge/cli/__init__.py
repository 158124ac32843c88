"""The ``evomerge`` command line: one typer sub-app per module in this package.

Each command group lives in its own module (``plugins_cmd``, ``data_cmd``, ...)
and is mounted here; commands import heavy libraries lazily so ``--help`` is fast.
"""

from __future__ import annotations

import typer

from evomerge.cli import plugins_cmd

app = typer.Typer(
    name="evomerge",
    help="Evolutionary model merging: recipes, merge plugins, fitness harnesses.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.add_typer(plugins_cmd.app, name="plugins")


def main() -> None:
    """Console-script entry point."""
    app()
