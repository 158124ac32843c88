"""lm-eval task YAMLs over local data files, generated from the templates in ``evomerge/tasks``.

One perplexity task (``loglikelihood_rolling``) and one cloze task
(``multiple_choice``) per domain and split, plus per-split groups. The same
generated directory is lm-eval's ``--include_path`` and the fast harness's task
source, so both run literally the same task definitions. Paths in the YAMLs are
absolute: lm-eval resolves relative ``data_files`` against the working
directory, not the YAML's folder.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from string import Template
from typing import TYPE_CHECKING, Any, Protocol

from evomerge.data.layout import DOMAINS, EVAL_SPLITS
from evomerge.fitness.offline import ensure_offline

if TYPE_CHECKING:
    from lm_eval.api.task import Task

_PPL_FIELDS = ("text",)
_CLOZE_FIELDS = ("id", "context", "choices", "label")


class DataLayoutLike(Protocol):
    """What :func:`write_tasks` needs from ``evomerge.data.DataLayout``."""

    def ppl_path(self, domain: str, split: str) -> Path: ...

    def cloze_path(self, domain: str, split: str) -> Path: ...


def ppl_task_name(domain: str, split: str) -> str:
    """Name of the generated perplexity task, e.g. ``evomerge_ppl_narrative_fitness``."""
    return f"evomerge_ppl_{domain}_{split}"


def cloze_task_name(domain: str, split: str) -> str:
    """Name of the generated cloze task, e.g. ``evomerge_cloze_narrative_fitness``."""
    return f"evomerge_cloze_{domain}_{split}"


def group_name(split: str) -> str:
    """Name of the group of every generated task of ``split``, e.g. ``evomerge_fitness``."""
    return f"evomerge_{split}"


def generated_task_names(domains: Iterable[str], split: str) -> list[str]:
    """The perplexity and cloze task names of ``domains`` for ``split``, in a stable order."""
    names = [ppl_task_name(d, split) for d in domains]
    return names + [cloze_task_name(d, split) for d in domains]


def _template(name: str) -> Template:
    return Template(resources.files("evomerge.tasks").joinpath(name).read_text())


def _check_jsonl(path: Path, fields: Sequence[str]) -> None:
    """Fail early, naming the file, rather than deep inside lm-eval or datasets."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: data file not found")
    with path.open() as fh:
        first = fh.readline()
    if not first.strip():
        raise ValueError(f"{path}: empty data file")
    try:
        row = json.loads(first)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: line 1 is not JSON ({exc.msg})") from None
    missing = [f for f in fields if f not in row]
    if missing:
        raise ValueError(f"{path}: line 1 lacks field(s) {', '.join(missing)}")


def write_tasks(
    layout: DataLayoutLike,
    out_dir: Path,
    *,
    domains: Sequence[str] = DOMAINS,
    splits: Sequence[str] = EVAL_SPLITS,
) -> Path:
    """Write concrete task YAMLs (per domain and split) and groups into ``out_dir``; return it."""
    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    ppl_t, cloze_t, group_t = (
        _template("perplexity.yaml"),
        _template("cloze.yaml"),
        _template("group.yaml"),
    )
    for split in splits:
        for domain in domains:
            ppl = Path(layout.ppl_path(domain, split)).resolve()
            cloze = Path(layout.cloze_path(domain, split)).resolve()
            _check_jsonl(ppl, _PPL_FIELDS)
            _check_jsonl(cloze, _CLOZE_FIELDS)
            # json.dumps gives a double-quoted scalar that YAML reads back verbatim.
            name = ppl_task_name(domain, split)
            (out_dir / f"{name}.yaml").write_text(
                ppl_t.substitute(task=name, data_file=json.dumps(str(ppl)))
            )
            name = cloze_task_name(domain, split)
            (out_dir / f"{name}.yaml").write_text(
                cloze_t.substitute(task=name, data_file=json.dumps(str(cloze)))
            )
        (out_dir / f"{group_name(split)}.yaml").write_text(
            group_t.substitute(
                group=group_name(split),
                tasks=json.dumps(generated_task_names(domains, split)),
            )
        )
    return out_dir


@dataclass(frozen=True)
class TaskSuite:
    """A set of lm-eval task names and the directories that define them.

    ``split`` is ``"fitness"`` or ``"test"`` for generated suites (``None`` when
    unknown); the harness refuses to draw a calibration batch from ``"test"``.
    """

    names: tuple[str, ...]
    include_paths: tuple[Path, ...]
    split: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    def task_manager(self) -> Any:
        """An lm-eval ``TaskManager`` over ``include_paths`` only (no built-in tasks to index)."""
        ensure_offline()
        from lm_eval.tasks import TaskManager

        return TaskManager(
            include_path=[str(p) for p in self.include_paths], include_defaults=False
        )

    def load(self) -> dict[str, Task]:
        """Instantiate the tasks (groups expanded), by name; unknown names are one clear error."""
        manager = self.task_manager()
        known = set(manager.all_tasks) | set(manager.all_groups) | set(manager.all_tags)
        unknown = [n for n in self.names if n not in known]
        if unknown:
            where = ", ".join(str(p) for p in self.include_paths) or "(no task dirs)"
            raise KeyError(
                f"unknown task(s) {', '.join(unknown)} in {where}; "
                f"known: {', '.join(sorted(manager.all_tasks)) or 'none'}"
            )
        return dict(manager.load(list(self.names))["tasks"])

    def doc_counts(self) -> dict[str, int]:
        """Documents per task, by name: what a sample of them is drawn from."""
        return {name: len(task.eval_docs) for name, task in self.load().items()}


def suite_for(
    task_dir: Path,
    *,
    domains: Sequence[str] = DOMAINS,
    split: str = "fitness",
    tasks: Sequence[str] | None = None,
    extra_dirs: Sequence[Path] = (),
    extra_tasks: Sequence[str] = (),
) -> TaskSuite:
    """The suite of ``tasks`` (default: every generated task of ``domains`` and ``split``).

    ``extra_tasks`` (the recipe's task metrics for ``split``) join either set.
    """
    if split not in EVAL_SPLITS:
        raise ValueError(f"split must be one of {', '.join(EVAL_SPLITS)}, got {split!r}")
    names = tuple(tasks) if tasks else tuple(generated_task_names(domains, split))
    names += tuple(t for t in extra_tasks if t not in names)
    paths = (Path(task_dir).resolve(), *(Path(p).resolve() for p in extra_dirs))
    return TaskSuite(names=names, include_paths=paths, split=split)
