"""``evomerge plugins``: what is installed and what each plugin registers."""

from __future__ import annotations

from typing import Any

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(help="Inspect installed evomerge plugins.", no_args_is_help=True)


@app.callback()
def _group() -> None:
    """Inspect installed evomerge plugins."""


def _registrations() -> dict[str, list[str]]:
    """What each plugin registers, per plugin name: ``architectures: ...``, ``merge_methods: ...``.

    Built before the load errors are read: a hook that fails is recorded while collecting."""
    from evomerge.architectures import ARCHITECTURES
    from evomerge.fitness.terms import FITNESS_TERMS
    from evomerge.merge.registry import MERGE_METHODS
    from evomerge.registry import Registry
    from evomerge.search.strategy import STRATEGIES

    registries: list[tuple[str, Registry[Any]]] = [
        ("architectures", ARCHITECTURES),
        ("merge_methods", MERGE_METHODS),
        ("fitness_terms", FITNESS_TERMS),
        ("strategies", STRATEGIES),
    ]
    found: dict[str, list[str]] = {}
    for kind, registry in registries:
        try:
            entries = registry.items()
        except Exception as exc:  # noqa: BLE001 - report (e.g. a name clash), never crash the listing
            found.setdefault("(error)", []).append(f"{kind}: {exc}")
            continue
        owners: dict[str, list[str]] = {}
        for entry in entries:
            owners.setdefault(entry.owner, []).append(entry.name)
        for owner, names in owners.items():
            found.setdefault(owner, []).append(f"{kind}: {', '.join(names)}")
    return found


@app.command("list")
def list_cmd() -> None:
    """Print each plugin, its package and what it registers; broken plugins are listed with their error."""
    from evomerge.plugins import list_plugins, plugin_load_errors

    console = Console()
    table = Table(title="evomerge plugins")
    table.add_column("plugin")
    table.add_column("package")
    table.add_column("registers")
    regs = _registrations()
    for info in list_plugins():
        table.add_row(
            info.name, f"{info.package} {info.version}", "\n".join(regs.get(info.name, [])) or "-"
        )
    console.print(table)
    for problem in regs.get("(error)", []):
        console.print(f"[red]{problem}[/red]", soft_wrap=True)
    errors = plugin_load_errors()
    for err in errors:
        console.print(
            f"[red]plugin {err.name!r} from {err.source} failed to load:[/red] {err.error}",
            soft_wrap=True,
        )
