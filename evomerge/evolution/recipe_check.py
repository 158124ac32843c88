"""Resolve every name a schema-valid recipe uses, so a bad one stops the run before it writes.

Pydantic checks a recipe's shape; the names in it (merge methods in ``combos:``
and ``stages:``, their parameters, fitness terms, domains and tasks) only mean
something to the plugin registries and the task files. Each check yields
``(field location, message)``; ``load_recipe`` turns the first one into a
``FILE:LINE: field.path: message`` error. Nothing here loads a model or data.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml

#: A schema-valid ``evomerge.evolution.recipe.Recipe`` (not imported: recipe.py calls
#: this module, and the checks only read its fields).
Recipe = Any

#: A problem: where in the recipe (pydantic-style location) and what is wrong there.
Problem = tuple[tuple[Any, ...], str]


def recipe_problems(recipe: Recipe) -> Iterator[Problem]:
    """Every unresolvable name of ``recipe``, in the order a reader meets them (lazily)."""
    yield from _combo_problems(recipe)
    yield from _stage_problems(recipe)
    yield from _fitness_term_problems(recipe)
    yield from _domain_problems(recipe)
    yield from _task_problems(recipe)
    yield from _strategy_problems(recipe)


def _combo_problems(recipe: Recipe) -> Iterator[Problem]:
    """Each ``combos[i][bit]`` is a registered method whose declared stage fits row ``i``."""
    from evomerge.merge.base import MergeConfigError
    from evomerge.merge.combos import check_combo_method
    from evomerge.merge.registry import UnknownMergeMethodError, get_registry

    registry = get_registry()
    for row, pair in enumerate(recipe.combos):
        for bit, name in enumerate(pair):
            try:
                check_combo_method(row, name, registry)
            except (UnknownMergeMethodError, MergeConfigError) as exc:
                yield ("combos", row, bit), str(exc)


def _stage_problems(recipe: Recipe) -> Iterator[Problem]:
    """Each ``stages:`` key names a method; its parameters (and every combo method's) resolve.

    Parameters are checked by the method's own declaration (``resolve``: names,
    types, choices, ranges), so a plugin method is checked like a built-in one.
    """
    from evomerge.merge.base import MergeConfigError
    from evomerge.merge.registry import UnknownMergeMethodError, get_registry

    registry = get_registry()
    places: dict[str, tuple[Any, ...]] = {}
    for row, pair in enumerate(recipe.combos):
        for bit, name in enumerate(pair):
            places.setdefault(name, ("combos", row, bit))
    for key in recipe.stages:
        try:
            resolved = registry.resolve(key)
        except UnknownMergeMethodError as exc:
            yield ("stages", key), str(exc)
            return
        if resolved.method.name() != key:
            yield ("stages", key), _alias_message(key, resolved)
            return
        places[key] = ("stages", key)
    for name, place in places.items():
        params = recipe.stages.get(name, {})
        try:
            method = registry.get(name)
            method.resolve(_with_seed(method, params))
        except UnknownMergeMethodError:
            continue  # a combo method: reported by _combo_problems
        except MergeConfigError as exc:
            wrong = next((k for k in params if repr(str(k)) in str(exc)), None)
            yield (place if wrong is None else (*place, wrong)), str(exc)


def _alias_message(key: str, resolved: Any) -> str:
    """Overrides are keyed by the evomerge name: the engine looks them up by it."""
    name = resolved.method.name()
    implied = ", ".join(f"{k}: {v}" for k, v in resolved.alias.implied.items())
    example = f" (e.g. {name}: {{{implied}}})" if implied else ""
    return f"{key!r} is a mergekit name of merge method {name!r}; key its parameters by {name!r}{example}"


def _with_seed(method: Any, params: Mapping[str, Any]) -> dict[str, Any]:
    """The engine supplies ``seed`` itself (from the run's seed), so a recipe need not."""
    out = dict(params)
    if "seed" not in out and any(p.name == "seed" for p in method.parameters()):
        out["seed"] = 0
    return out


def _fitness_term_problems(recipe: Recipe) -> Iterator[Problem]:
    """Each ``fitness.weights`` key is a term some plugin registers."""
    from evomerge.fitness.terms import (
        RecipeTaskMetricTerm,
        TaskMetricTerm,
        UnknownFitnessTermError,
        get_fitness_term,
        registered_fitness_terms,
    )

    for name, weight in recipe.fitness.weights.items():
        try:
            term = get_fitness_term(name, recipe.fitness)
        except UnknownFitnessTermError as exc:
            yield ("fitness", "weights", name), str(exc)
            continue
        except ValueError as exc:  # a task metric lm-eval cannot orient
            yield ("fitness", "weights", name), str(exc)
            continue
        plugin_term = isinstance(term, TaskMetricTerm) and not isinstance(
            term,
            RecipeTaskMetricTerm,  # the recipe's own: _task_problems checks those
        )
        if weight > 0 and plugin_term:
            for problem in _plugin_term_problems(recipe, term):
                yield ("fitness", "weights", name), f"{name!r}: {problem}"
    registered = set(registered_fitness_terms())
    for i, spec in enumerate(recipe.fitness.task_metrics):
        if spec.name in registered:
            yield (
                ("fitness", "task_metrics", i, "name"),
                f"{spec.name!r} is already a registered fitness term; pick another name",
            )
        elif spec.name not in recipe.fitness.weights:
            yield (
                ("fitness", "task_metrics", i, "name"),
                f"{spec.name!r} has no weight; add it to fitness.weights",
            )


def _plugin_term_problems(recipe: Recipe, term: Any) -> Iterator[str]:
    """A plugin's weighted ``TaskMetricTerm`` gets the checks a recipe's ``task_metrics``
    entry gets: both tasks exist with their data, and the test task holds documents the
    search never selects on (else the held-out report fails, or is not held out)."""
    from evomerge.data.layout import EVAL_SPLITS as SPLITS
    from evomerge.fitness.tasks import generated_task_names

    if term.test_task is None:
        yield (
            f"scores lm-eval task {term.task!r} but names no test_task, so the held-out "
            "report could only score it on documents the search selected on; give its "
            "TaskMetricTerm a test_task"
        )
        return
    domains = recipe.fitness.domains
    searched = {*generated_task_names(domains, "fitness"), *(recipe.fitness.tasks or []), term.task}
    if term.test_task in searched:
        yield (
            f"test_task {term.test_task!r} is a task the search scores; it needs held-out documents"
        )
    own: dict[str, tuple[Path, dict[str, Any]]] = {}
    for folder in recipe.fitness.task_dirs:
        if Path(folder).is_dir():
            own.update(task_files_in(Path(folder)))
    generated = {t for split in SPLITS for t in generated_task_names(domains, split)}
    for key in ("task", "test_task"):
        task = getattr(term, key)
        if task in own:
            if problem := missing_data_files(*own[task]):
                yield problem
        elif task not in generated:
            yield f"unknown {key} {task!r}: not a generated task nor one in fitness.task_dirs"


def _domain_problems(recipe: Recipe) -> Iterator[Problem]:
    """``fitness.domains`` are domains of the demo data (tasks are generated per domain)."""
    from evomerge.data.layout import DOMAINS as DEFAULT_DOMAINS

    if not recipe.fitness.domains:
        yield ("fitness", "domains"), "give at least one domain"
    for i, domain in enumerate(recipe.fitness.domains):
        if domain not in DEFAULT_DOMAINS:
            yield (
                ("fitness", "domains", i),
                f"unknown domain {domain!r}; the data has: {', '.join(DEFAULT_DOMAINS)}",
            )


def _task_problems(recipe: Recipe) -> Iterator[Problem]:
    """``fitness.task_dirs`` exist and ``fitness.tasks`` name generated tasks or theirs."""
    from evomerge.data.layout import EVAL_SPLITS as SPLITS
    from evomerge.fitness.tasks import generated_task_names, group_name

    dirs = recipe.fitness.task_dirs
    for i, folder in enumerate(dirs):
        if not Path(folder).is_dir():
            yield ("fitness", "task_dirs", i), f"{folder}: not a directory"
            return
    own: dict[str, tuple[Path, dict[str, Any]]] = {}
    for folder in dirs:
        own.update(task_files_in(Path(folder)))
    for i, spec in enumerate(recipe.fitness.task_metrics):
        for key in ("task", "test_task"):
            name = getattr(spec, key)
            if name not in own:
                where = ", ".join(map(str, dirs)) or "no fitness.task_dirs"
                yield (
                    ("fitness", "task_metrics", i, key),
                    f"unknown task {name!r}: not defined in {where}",
                )
            elif problem := missing_data_files(*own[name]):
                yield ("fitness", "task_metrics", i, key), problem
    if recipe.fitness.tasks is None:
        return
    known: set[str] = set()
    for split in SPLITS:
        known.update(generated_task_names(recipe.fitness.domains, split))
        known.add(group_name(split))
    for folder in dirs:
        known |= task_names_in(Path(folder))
    for i, task in enumerate(recipe.fitness.tasks):
        if task not in known:
            where = f" or in {', '.join(map(str, dirs))}" if dirs else ""
            yield (
                ("fitness", "tasks", i),
                f"unknown task {task!r}: not a generated task{where}; "
                f"known: {', '.join(sorted(known))}",
            )


class _TolerantLoader(yaml.SafeLoader):
    """Reads lm-eval task YAMLs, whose ``!function`` tags plain safe_load rejects."""


_TolerantLoader.add_multi_constructor("!", lambda loader, suffix, node: None)


def task_files_in(folder: Path) -> dict[str, tuple[Path, dict[str, Any]]]:
    """Each task, group and tag name the lm-eval YAMLs under ``folder`` define -> (file, YAML)."""
    found: dict[str, tuple[Path, dict[str, Any]]] = {}
    for path in sorted(folder.rglob("*.yaml")):
        try:
            data = yaml.load(path.read_text(encoding="utf-8"), Loader=_TolerantLoader)  # noqa: S506
        except (OSError, UnicodeDecodeError, yaml.YAMLError):
            continue  # not a task file lm-eval could read either
        if not isinstance(data, dict):
            continue
        for key in ("task", "group", "tag"):
            value = data.get(key)
            values = value if isinstance(value, list) else [value]
            found.update((v, (path, data)) for v in values if isinstance(v, str))
    return found


def task_names_in(folder: Path) -> set[str]:
    """The task, group and tag names the lm-eval YAMLs under ``folder`` define (as lm-eval indexes)."""
    return set(task_files_in(folder))


def missing_data_files(yaml_file: Path, task: dict[str, Any]) -> str | None:
    """Why a task's local ``dataset_kwargs.data_files`` cannot be read, or None.

    lm-eval hands relative paths to ``datasets``, which resolves them against the
    working directory, not the YAML's folder: the check says so, rather than
    letting ``datasets`` fail deep inside the first fitness measurement.
    """
    kwargs = task.get("dataset_kwargs")
    files = kwargs.get("data_files") if isinstance(kwargs, dict) else None
    values = files.values() if isinstance(files, dict) else [files]
    for value in values:
        for name in value if isinstance(value, list) else [value]:
            if isinstance(name, str) and "://" not in name and not Path(name).exists():
                where = (
                    ""
                    if Path(name).is_absolute()
                    else f" (relative to the working directory {Path.cwd()}, as lm-eval reads it)"
                )
                return f"{yaml_file}: dataset_kwargs.data_files: {name} not found{where}"
    return None


def _strategy_problems(recipe: Recipe) -> Iterator[Problem]:
    """``evolution.strategy`` is registered and its ``strategy_options`` build it."""
    from pydantic import ValidationError

    from evomerge.search.strategy import SearchContext, StrategyError, build_strategy, find_strategy

    evo = recipe.evolution
    try:
        cls = find_strategy(evo.strategy)
    except StrategyError as exc:
        yield ("evolution", "strategy"), str(exc).removeprefix("strategy: ")
        return
    try:
        cls.Options.model_validate(evo.strategy_options)
    except ValidationError as exc:
        first = exc.errors()[0]
        yield ("evolution", "strategy_options", *first["loc"]), first["msg"]
        return
    has_base = recipe.inputs.phase1 is not None or recipe.inputs.base_model is not None
    context = SearchContext(
        num_inputs=3, layer_groups=evo.gene_groups, seed=evo.seed, has_base=has_base
    )
    try:
        build_strategy(evo.strategy, evo.strategy_options, context)
    except StrategyError as exc:
        yield ("evolution", "strategy_options"), str(exc)
