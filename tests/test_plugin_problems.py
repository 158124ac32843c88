"""What a plugin author gets wrong, and what evomerge does about it: each broken plugin is
listed with its error and contributes nothing, the built-ins keep working, and hooks run
through pluggy (tracing, wrappers) like any pluggy host's."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pluggy
import pytest
import torch

from evomerge import hookimpl, hookspecs
from evomerge.merge.registry import MERGE_METHODS, MethodRegistry

BROKEN = {
    # a third party reusing the entry-point name of evomerge's own dfs plugin
    "clash": ("dfs", "import evomerge\n"),
    # hookimpl on a misspelt hook name (no spec has it)
    "typo": (
        "typo",
        "from evomerge import hookimpl\n\n"
        "@hookimpl\ndef evomerge_register_fitness_term():\n    return []\n",
    ),
    # a hook that raises
    "raiser": (
        "raiser",
        "from evomerge import hookimpl\n\n"
        "@hookimpl\ndef evomerge_register_fitness_terms():\n"
        "    raise RuntimeError('my hook is broken')\n",
    ),
    # one term instead of a list of them
    "single": (
        "single",
        "from evomerge import hookimpl\nfrom evomerge.fitness import TaskMetricTerm\n\n"
        "@hookimpl\ndef evomerge_register_fitness_terms():\n"
        "    return TaskMetricTerm('x', 'evomerge_cloze_narrative_fitness', 'acc')\n",
    ),
    # a strategy the run would replace by the seed loop without calling it
    "weighty": (
        "weighty",
        "from evomerge import hookimpl\n\n"
        "class Weighty:\n    name = 'weighty'\n    kind = 'weights'\n\n"
        "@hookimpl\ndef evomerge_register_strategies():\n    return [Weighty]\n",
    ),
}


def _install(site: Path, dist: str, entry: str, module: str, source: str) -> None:
    """A distribution written by hand (module + .dist-info with its entry point), as pip would."""
    (site / f"{module}.py").write_text(source)
    info = site / f"{dist.replace('-', '_')}-0.0.1.dist-info"  # pip's name: no '-' in it
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.0.1\n")
    (info / "entry_points.txt").write_text(f"[evomerge]\n{entry} = {module}\n")


def test_broken_plugins_are_listed_by_name_and_the_rest_keeps_working(tmp_path: Path) -> None:
    for key, (entry, source) in BROKEN.items():
        _install(tmp_path, f"evo-{key}", entry, f"evo_{key}", source)
    path = f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"
    env = {**os.environ, "PYTHONPATH": path, "COLUMNS": "250", "EVOMERGE_TRACE_HOOKS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "evomerge", "plugins", "list"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    out = " ".join(result.stdout.split())
    assert "plugin 'dfs' from evo-clash 0.0.1 (evo_clash) failed to load: entry point name " in out
    assert "'dfs' is taken by evomerge" in out
    assert (
        "plugin 'typo' from evo-typo 0.0.1 (evo_typo) failed to load: PluginValidationError" in out
    )
    assert "evomerge_register_fitness_term" in out
    assert (
        "plugin 'raiser' from evo-raiser 0.0.1 failed to load: evomerge_register_fitness_terms: "
        "RuntimeError: my hook is broken" in out
    )
    assert "plugin 'single' from evo-single 0.0.1 failed to load: " in out
    assert "evomerge_register_fitness_terms returned <evomerge.fitness.terms.TaskMetricTerm" in out
    assert "not a list" in out
    assert "plugin 'weighty' from evo-weighty 0.0.1 failed to load: " in out
    assert "kind must be \"genomes\", got 'weights'" in out
    rows = {
        cells[1].strip(): cells[3].strip()
        for line in result.stdout.splitlines()
        if len(cells := line.split("│")) > 3
    }
    # the built-ins are untouched: evomerge's own dfs, every fitness term, both strategies
    assert rows["dfs"] == "merge_methods: dfs"
    assert (
        rows["evomerge.fitness.builtin_terms"]
        == "fitness_terms: accuracy, memory, perplexity, speed"
    )
    assert rows["evomerge.search.strategy"] == "strategies: cmaes, seed"
    # hooks run through pluggy: EVOMERGE_TRACE_HOOKS traces them
    assert "evomerge_register_merge_methods" in result.stderr


def test_unknown_name_mentions_the_plugins_that_failed(monkeypatch: pytest.MonkeyPatch) -> None:
    from evomerge import plugins
    from evomerge.merge.registry import get_method

    failed = plugins.PluginLoadError("review", "evo-review 0.0.1", "ImportError: no numpy", "")
    monkeypatch.setattr(plugins, "_load_errors", [failed])
    with pytest.raises(KeyError, match="plugins that failed to load: 'review' \\(ImportError"):
        get_method("median")


class _Methods:
    """A plugin of one class-based merge method (the built-in ``linear``, renamed)."""

    def __init__(self, name: str) -> None:
        from evomerge.merge.methods.linear import linear

        self.method = type(linear)()
        self.method._setup(linear.fn, name, "any", None)

    @hookimpl
    def evomerge_register_merge_methods(self) -> list[Any]:
        return [self.method]


class _Wrapper:
    """A new-style pluggy wrapper around every plugin's registration: it sees the results."""

    seen: list[Any] = []

    @hookimpl(wrapper=True)
    def evomerge_register_merge_methods(self) -> Any:
        result = yield
        self.seen.append(result)
        return result


def _manager(**plugins: object) -> pluggy.PluginManager:
    pm = pluggy.PluginManager("evomerge")
    pm.add_hookspecs(hookspecs)
    for name, plugin in plugins.items():
        pm.register(plugin, name=name)
    return pm


def test_hooks_run_through_pluggy_so_wrappers_work_and_items_keep_their_plugin() -> None:
    _Wrapper.seen.clear()
    mine = _Methods("mine")
    pm = _manager(wrapper=_Wrapper(), mine=mine)
    found = MERGE_METHODS.collect(pm)
    assert [(e.name, e.owner) for e in found.values()] == [("mine", "mine")]
    assert _Wrapper.seen == [[[mine.method]]]  # it wrapped that plugin's call, once


def test_a_method_named_like_one_of_mergekits_own_is_reported_and_dropped(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """mergekit would replay a config naming ``model_stock`` with its own method; the plugin
    is reported and the method left out, and every other method still works."""
    from evomerge import plugins

    monkeypatch.setattr(plugins, "_load_errors", [])
    import evomerge.merge.methods as builtins

    pm = _manager(builtins=builtins, mine=_Methods("model_stock"), fine=_Methods("fine"))
    registry = MethodRegistry.from_plugin_manager(pm)
    assert "model_stock" not in registry.names() and {"fine", "linear"} <= set(registry.names())
    (problem,) = plugins._load_errors
    assert problem.name == "mine"
    assert "written as 'model_stock', mergekit's own method" in problem.error


def test_decorator_mistakes_are_errors_at_import() -> None:
    import evomerge

    def median(tensors: list[torch.Tensor]) -> torch.Tensor:
        return torch.stack(tensors).median(dim=0).values

    with pytest.raises(
        TypeError, match='needs the method\'s name, as in @evomerge.merge_method\\("median"\\)'
    ):
        evomerge.merge_method(median)  # type: ignore[arg-type]

    def own_weight(deltas: list[torch.Tensor], *, weight: float = 1.0) -> torch.Tensor:
        return sum(deltas) * weight  # type: ignore[return-value]

    with pytest.raises(TypeError, match="parameter 'weight': the engine already has"):
        evomerge.merge_method("own_weight", stage="task_arithmetic")(own_weight)

    def unhinted(tensors: list[torch.Tensor], *, strength) -> torch.Tensor:  # type: ignore[no-untyped-def]
        return tensors[0]

    with pytest.raises(TypeError, match="parameter 'strength' has no type hint and no default"):
        evomerge.merge_method("unhinted")(unhinted)
