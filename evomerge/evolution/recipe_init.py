"""`evomerge recipe init`: a commented recipe for three fine-tunes, written from their files.

A user with three fine-tunes of one base should not have to learn the recipe schema
before a first run: the recipe is recipes/local-finetunes.yaml's shape (CMA-ES over
per-layer-group weights, the demo tasks any tokenizer scores), with the models'
paths written relative to the recipe's folder (as recipes resolve them) and the layer
groups fitted to the inputs' decoder layers. Text, not ``yaml.safe_dump``, so the
comments that explain each choice survive.
"""

from __future__ import annotations

import os
import shlex
from dataclasses import dataclass
from pathlib import Path

#: Layer groups a recipe starts with: per-group genes without more dimensions than
#: CMA-ES's 8-candidate generations can search (docs/search.md).
LAYER_GROUPS = 4


@dataclass(frozen=True)
class InitModels:
    """The models as the recipe will name them, and what their files say."""

    models: list[str]  # relative to the recipe's folder, absolute, or a cached repo id
    base: str | None
    architecture: str
    layers: int | None
    param_count: int


@dataclass(frozen=True)
class InitTask:
    """The user's own lm-eval task as a weighted term (``fitness.task_metrics``)."""

    task_dir: str  # as the recipe names it (relative to its folder, or absolute)
    task: str  # scored during the search
    test_task: str  # scored only in the held-out report
    metric: str
    #: Where `recipe init` found the task's data files: lm-eval reads a relative
    #: ``data_files`` path from the working directory, so the run must start there too.
    run_from: str

    @property
    def term(self) -> str:
        """The term's key in ``fitness.weights``: the task's name (the built-in terms'
        names, perplexity / accuracy / speed / memory, are taken: then ``TASK_METRIC``)."""
        from evomerge.fitness.terms import registered_fitness_terms

        taken = set(registered_fitness_terms())
        return self.task if self.task not in taken else f"{self.task}_{self.metric}"


def task_problem(task_dir: Path, task: str, test_task: str, metric: str) -> str | None:
    """Why the recipe could not score ``task`` / ``test_task`` from ``task_dir``, naming the
    option, or None: what `recipe validate` checks of them (before anything is written),
    and, beyond it, that the metric is one the tasks' YAML lists."""
    from evomerge.evolution.recipe_check import missing_data_files, task_files_in

    if not task_dir.is_dir():
        return f"--task-dir: {task_dir}: not a directory"
    if task == test_task:
        return (
            f"--test-task: {test_task!r} is --task too; the held-out report needs a task of "
            "documents the search never scored"
        )
    found = task_files_in(task_dir)
    for flag, name in (("--task", task), ("--test-task", test_task)):
        if name not in found:
            known = ", ".join(sorted(found)) or "none"
            return f"{flag}: unknown task {name!r}: not defined in {task_dir} (it has: {known})"
        if problem := missing_data_files(*found[name]):
            return f"{flag}: {problem}"
        listed = found[name][1].get("metric_list")
        metrics = [m.get("metric") for m in listed or [] if isinstance(m, dict)]
        if metrics and metric not in metrics:
            return f"--metric: {metric!r} is not in {name}'s metric_list ({', '.join(map(str, metrics))})"
    return None


def recipe_name(recipe_path: Path) -> str:
    """The run's name: the recipe file's stem (also the default output dir's name)."""
    return recipe_path.stem.replace(" ", "-") or "evomerge"


def written_path(name: str, located: Path, recipe_dir: Path) -> str:
    """How the recipe names a model: a repo id as given (the cache resolves it again), a dir
    relative to the recipe's folder when the two share a folder below the root (a project
    whose recipe and models move together), else absolute."""
    from evomerge.hub_cache import looks_like_repo_id, model_location

    folder = recipe_dir.resolve()
    # a repo id stays one only if the recipe will resolve it to this very snapshot (a dir of
    # that name beside the recipe would win over the cache)
    cached = looks_like_repo_id(name) and not Path(name).exists()
    if cached and model_location(name, folder).resolve() == located.resolve():
        return name
    # the model's own name kept (a symlinked model stays the link), its folder resolved
    absolute = located.absolute().parent.resolve() / located.name
    try:
        shared = Path(os.path.commonpath([absolute, folder]))
    except ValueError:  # another drive (Windows)
        return str(absolute)
    if shared == Path(shared.anchor):
        return str(absolute)
    return os.path.relpath(absolute, folder)


def render(
    init: InitModels, recipe_path: Path, generations: int, task: InitTask | None = None
) -> str:
    """The recipe's text."""
    name = recipe_name(recipe_path)
    groups = min(LAYER_GROUPS, init.layers) if init.layers else 1
    of_base = " of one base" if init.base else ""
    models = "\n".join(f"    - {_scalar(m)}" for m in init.models)
    base = (
        f"  base_model: {_scalar(init.base)}   # their common ancestor: the search scales each "
        "input's fine-tuning (task arithmetic)\n"
        if init.base
        else ""
    )
    layers = f"of the inputs' {init.layers} decoder layers" if init.layers else "of all layers"
    return f"""\
# Made by `evomerge recipe init` for three {init.architecture} fine-tunes{of_base}
# ({init.param_count / 1e6:,.1f}M parameters each): CMA-ES over per-layer-group merge weights
# (docs/search.md), scored on the demo perplexity and cloze tasks, which any tokenizer
# scores{_task_header(task)}. Check it, then run it:
#   evomerge recipe validate {shlex.quote(str(recipe_path))}
#   evomerge recipe run {shlex.quote(str(recipe_path))}
name: {_scalar(name)}
inputs:
  models:
{models}
{base}evolution:
  strategy: cmaes
  generations: {generations}
  layer_groups: {groups}                     # contiguous runs {layers}, one gene value each
  embedding_group: true                # embeddings / final norm / head get genes of their own
  strategy_options: {{popsize: 8, sigma0: 0.075}}
  seed: 0
fitness:
{_task_fitness(task)}  max_items: 32                        # documents per task and generation (a fresh sample each)
  report_max_items: 64                 # held-out documents per task in the final report (drawn at random)
  min_improvement: 0.05                # the target over the inputs' mean, held out
tracking: {{wandb_mode: offline, project: evomerge}}
# device auto: the GPU when there is one; storage auto: the inputs' own dtype; inputs auto:
# on the device while they fit beside the candidates, else host memory, else their files
device: {{device: auto, storage: auto, inputs: auto}}
output: {_scalar("runs/" + name)}
"""


def _task_header(task: InitTask | None) -> str:
    if task is None:
        return (
            '. To weigh your own lm-eval task too, see docs/recipes.md, "Your own\n'
            '# fine-tunes and your own task" (or `recipe init --task-dir DIR --task T --test-task H`)'
        )
    return (
        f", and on your own lm-eval task {task.task} (its {task.metric}; held out:\n"
        f"# {task.test_task}). lm-eval reads a task's relative data_files from the working "
        f"directory:\n# run it from {task.run_from}"
    )


def _task_fitness(task: InitTask | None) -> str:
    """The fitness block's terms: the demo tasks, plus the user's task when given."""
    if task is None:
        return (
            "  # speed and memory are equal for merges of one architecture, so they carry no "
            "weight\n  weights: {perplexity: 0.6, accuracy: 0.4}\n"
        )
    # block style throughout: in a flow list or mapping a comma or bracket in a name ends it
    return f"""\
  task_dirs:
    - {_scalar(task.task_dir)}
  task_metrics:
    - name: {_scalar(task.term)}
      task: {_scalar(task.task)}             # scored during the search
      test_task: {_scalar(task.test_task)}   # scored only in the held-out report
      metric: {_scalar(task.metric)}
  # the demo perplexity and cloze tasks plus your task; speed and memory are equal for
  # merges of one architecture, so they carry no weight
  weights:
    perplexity: 0.4
    accuracy: 0.2
    {_scalar(task.term)}: 0.4
"""


def _scalar(text: str) -> str:
    """``text`` as a YAML scalar: plain where YAML reads it back unchanged, else quoted."""
    import yaml

    try:
        same = yaml.safe_load(text) == text
    except yaml.YAMLError:  # `*x`, `&x`, `!x`, ...
        same = False
    if same and ": " not in text and " #" not in text:
        return text
    return yaml.safe_dump(text, default_style='"', width=float("inf")).strip()
