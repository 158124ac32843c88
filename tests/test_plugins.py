"""The plugin system: hook documentation, entry-point loading, broken plugins reported not fatal."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pluggy
import pytest

from evomerge import hookspecs
from evomerge.architectures import ARCHITECTURES, UnknownArchitectureError, get_architecture
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
    with pytest.raises(
        UnknownArchitectureError,
        match="no plugin registers architecture 'nope' and transformers has no causal LM "
        "of that model_type; registered: .*trm_titans_mag",
    ):
        get_architecture("nope")


def test_transformers_families_need_no_plugin() -> None:
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    llama = get_architecture("llama")
    assert (llama.config_class, llama.model_class) == (LlamaConfig, LlamaForCausalLM)
    assert llama.mergekit_definition is None  # mergekit knows transformers' families itself
    qwen2 = get_architecture("qwen2")
    assert (qwen2.config_class, qwen2.model_class) == (Qwen2Config, Qwen2ForCausalLM)
    assert "llama" not in ARCHITECTURES.names()  # listed: only what plugins register


def _run_python(code: str, env: dict[str, str] | None = None) -> str:
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_import_evomerge_loads_no_plugin() -> None:
    code = "import evomerge, sys; print([m for m in sys.modules if m.startswith('evomerge_')])"
    assert _run_python(code).strip() == "[]"


def test_load_plugins_registers_families_with_transformers(tmp_path: Path) -> None:
    """Before load_plugins, transformers does not know the plugin family; after it, Auto* load it."""
    code = textwrap.dedent(
        f"""
        import evomerge
        from transformers import AutoConfig, AutoModelForCausalLM
        try:
            AutoConfig.for_model("trm_titans_mag")
            print("known before load_plugins")
        except ValueError:
            pass
        assert evomerge.load_plugins() is evomerge.load_plugins()  # built once
        from evomerge.architectures import get_architecture
        arch = get_architecture("trm_titans_mag")
        arch.model_class(arch.config("tiny")).save_pretrained({str(tmp_path)!r})
        model = AutoModelForCausalLM.from_pretrained({str(tmp_path)!r})
        print(type(model).__name__)
        """
    )
    assert _run_python(code).split() == ["TrmTitansForCausalLM"]


def test_a_name_registered_twice_names_both_plugins() -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    from evomerge import hookimpl
    from evomerge.architectures import Architecture

    class Plugin:
        @hookimpl
        def evomerge_register_architectures(self) -> list[Architecture]:
            return [Architecture("twice", LlamaConfig, LlamaForCausalLM)]

    pm = pluggy.PluginManager("evomerge")
    pm.add_hookspecs(hookspecs)
    pm.register(Plugin(), name="one")
    pm.register(Plugin(), name="two")
    with pytest.raises(
        ValueError, match="architecture 'twice' is registered by both 'one' and 'two'"
    ):
        ARCHITECTURES.collect(pm)


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


DOCS_PLUGIN_CHECK = r"""
import torch
from typer.testing import CliRunner

from evomerge.cli import app
from evomerge.merge import InputSet, MergeEngine, get_method
from evomerge.merge.config import ComboConfig
from evomerge.merge.mergekit_bridge import register_with_mergekit

listing = CliRunner().invoke(app, ["plugins", "list"], terminal_width=200)
print(listing.output)
g = torch.Generator().manual_seed(0)
models = [{"w": torch.randn(4, 3, generator=g), "b": torch.randn(3, generator=g)} for _ in range(3)]
config = ComboConfig.from_yaml("merge_method: median\nmodels: [{model: a}, {model: b}, {model: c}]\n")
out = {}
MergeEngine().run_config(config, InputSet(models, names=["a", "b", "c"]), out=out)
for key in models[0]:
    assert torch.equal(out[key], torch.stack([m[key] for m in models]).median(dim=0).values), key
print("method:", type(get_method("median")).__name__, [p.name for p in get_method("median").parameters()])
register_with_mergekit()
from mergekit.merge_methods import registry as mk
print("mergekit:", "median" in {m.spec.name for m in mk.registered_methods()})
"""


def test_docs_example_plugin_merges_is_listed_and_reaches_mergekit(docs_plugin) -> None:  # type: ignore[no-untyped-def]
    """docs/plugins.md's two-file package, installed as is: one decorated function is a whole method."""
    source = docs_plugin.files["evomerge-median/evomerge_median/__init__.py"]
    assert len(source.splitlines()) <= 15
    out = _run_python(DOCS_PLUGIN_CHECK, env=docs_plugin.env)
    row = next(line for line in out.splitlines() if "evomerge-median" in line)
    assert [cell.strip() for cell in row.split("│")[1:4]] == [
        "median",
        "evomerge-median 0.1.0",
        "merge_methods: median",
    ]
    assert "method: FunctionTensorMethod []" in out  # no weights declared: no per-input weight
    assert "mergekit: True" in out
