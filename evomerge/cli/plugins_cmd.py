"""``evomerge plugins``: what is installed and what each plugin registers."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(help="Inspect installed evomerge plugins.", no_args_is_help=True)


@app.callback()
def _group() -> None:
    """Inspect installed evomerge plugins."""


def _registrations() -> dict[str, list[str]]:
    """Names each plugin registers, per plugin name (architectures, methods, terms...)."""
    from evomerge.plugins import get_plugin_manager

    pm = get_plugin_manager()
    found: dict[str, list[str]] = {}
    for hook_name in pm.hook.__dict__:
        if not hook_name.startswith("evomerge_register_"):
            continue
        kind = hook_name.removeprefix("evomerge_register_")
        for impl in getattr(pm.hook, hook_name).get_hookimpls():
            try:
                items = impl.function() or []
            except Exception as exc:  # noqa: BLE001 - report, never crash the listing
                found.setdefault(impl.plugin_name, []).append(f"{kind}: error {exc}")
                continue
            names = [_item_name(item) for item in items]
            if names:
                found.setdefault(impl.plugin_name, []).append(f"{kind}: {', '.join(names)}")
    return found


def _item_name(item: object) -> str:
    for attr in ("model_type", "name"):
        value = getattr(item, attr, None)
        if value is not None:
            return str(value() if callable(value) else value)
    return repr(item)


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
    errors = plugin_load_errors()
    for err in errors:
        console.print(
            f"[red]plugin {err.name!r} from {err.source} failed to load:[/red] {err.error}",
            soft_wrap=True,
        )
