"""The plugin system: hook documentation, entry-point loading, broken plugins reported not fatal."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from evomerge import hookspecs
from evomerge.architectures import UnknownArchitectureError, get_architecture
from evomerge.plugins import get_plugin_manager, list_plugins

ROOT = Path(__file__).resolve().parents[1]


def _hook_names() -> list[str]:
    return sorted(n for n in dir(hookspecs) if n.startswith("evomerge_"))


def test_every_hook_is_prefixed_typed_and_documented() -> None:
    docs = (ROOT / "docs" / "plugins.md").read_text()
    names = _hook_names()
    assert names, "hookspecs.py defines no hooks"
    for name in names:
        fn = getattr(hookspecs, name)
        assert fn.__doc__ and fn.__doc__.strip(), f"{name} has no docstring"
        assert "return" in fn.__annotations__, f"{name} has no return annotation"
        assert re.search(rf"^### {name}$", docs, re.M), (
            f"{name} is not documented in docs/plugins.md"
        )


def test_plugin_manager_has_no_unknown_hooks() -> None:
    pm = get_plugin_manager()
    pm.check_pending()  # raises on a hookimpl that matches no hookspec
    assert any(p.name == "trm_titans" for p in list_plugins())


def test_unknown_architecture_is_a_clear_error() -> None:
    with pytest.raises(UnknownArchitectureError, match="no plugin registers architecture 'nope'"):
        get_architecture("nope")


def _fake_distribution(site: Path, dist: str, entry_point: str) -> None:
    """Install a distribution by hand: a .dist-info with an entry_points.txt, as pip would."""
    info = site / f"{dist}-0.0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.0.1\n")
    (info / "entry_points.txt").write_text(f"[evomerge]\n{entry_point}\n")


def _plugins_list(site: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": f"{site}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    return subprocess.run(
        [sys.executable, "-m", "evomerge", "plugins", "list"],
        capture_output=True,
        text=True,
        env={**env, "COLUMNS": "200"},
        timeout=300,
    )


def test_broken_plugin_is_reported_by_name_and_cli_survives(tmp_path: Path) -> None:
    (tmp_path / "broken_evo_plugin.py").write_text("raise RuntimeError('deliberately broken')\n")
    _fake_distribution(tmp_path, "broken-evo-plugin", "broken = broken_evo_plugin")
    result = _plugins_list(tmp_path)
    assert result.returncode == 0, result.stderr
    out = " ".join(result.stdout.split())
    assert "plugin 'broken' from broken-evo-plugin 0.0.1" in out
    assert "RuntimeError: deliberately broken" in out
    assert "trm_titans" in out  # the working plugins are still listed


def test_third_party_plugin_registers_through_entry_point(tmp_path: Path) -> None:
    (tmp_path / "extra_arch_plugin.py").write_text(
        textwrap.dedent(
            """
            from transformers import LlamaConfig, LlamaForCausalLM

            from evomerge import hookimpl
            from evomerge.architectures import Architecture


            class TinyLlamaConfig(LlamaConfig):
                model_type = "tiny_llama_demo"


            class TinyLlama(LlamaForCausalLM):
                config_class = TinyLlamaConfig


            @hookimpl
            def evomerge_register_architectures():
                return [Architecture("tiny_llama_demo", TinyLlamaConfig, TinyLlama, {"tiny": {}})]
            """
        )
    )
    _fake_distribution(tmp_path, "extra-arch-plugin", "extra = extra_arch_plugin")
    result = _plugins_list(tmp_path)
    assert result.returncode == 0, result.stderr
    out = " ".join(result.stdout.split())
    assert "extra-arch-plugin 0.0.1" in out
    assert "architectures: tiny_llama_demo" in out


def test_plugin_imported_before_evomerge_still_registers() -> None:
    """A plugin whose own import pulls in evomerge first must not be registered half-imported."""
    code = (
        "import evomerge_frankenmerge\n"
        "from evomerge.plugins import get_plugin_manager\n"
        "pm = get_plugin_manager()\n"
        "plugin = pm.get_plugin('frankenmerge')\n"
        "print(sorted(h.name for h in pm.get_hookcallers(plugin)))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    assert "evomerge_register_merge_methods" in result.stdout
