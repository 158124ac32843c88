"""The ``evomerge`` command line: one typer sub-app per module in this package.

Each command group lives in its own module (``plugins_cmd``, ``data_cmd``, ...)
and is mounted here; commands import heavy libraries lazily so ``--help`` is fast.
"""

from __future__ import annotations

import os
import sys

import typer

from evomerge.cli import (
    combos_cmd,  # noqa: I001 - merge engine CLI
    data_cmd,
    eval_cmd,
    lineage_cmd,
    phase1_cmd,
    plugins_cmd,
    recipe_cmd,
)

app = typer.Typer(
    name="evomerge",
    help="Evolutionary model merging: recipes, merge plugins, fitness harnesses.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.add_typer(plugins_cmd.app, name="plugins")
app.add_typer(phase1_cmd.app, name="phase1")
app.add_typer(data_cmd.app, name="data")
app.add_typer(eval_cmd.app)  # `eval` and `lm-eval`, top-level commands
app.add_typer(combos_cmd.app, name="combos")
app.add_typer(recipe_cmd.app, name="recipe")
app.add_typer(lineage_cmd.app, name="lineage")


def main() -> None:
    """Console-script entry point: load the plugins once, then run the command."""
    import evomerge

    evomerge.load_plugins()
    if sys.argv[1:2] != ["lm-eval"]:  # the lm-eval passthrough keeps lm-eval's own output
        # evomerge draws its own (rich) progress; the libraries' bars (weights loading per
        # model, dataset generation per task file) would print dozens of lines per run.
        # transformers is already imported (load_plugins registered the architectures there);
        # datasets reads its variable when lm-eval first imports it.
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    app()
