"""The recipe: one YAML file that fully determines an evolution run.

Strict pydantic models (unknown keys are errors); ``load_recipe`` reports
errors as ``FILE:LINE: field.path: message`` so a typo points at its line.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from evomerge.fitness.config import FiniteFloat, FitnessConfig, Int
from evomerge.merge.combos import DEFAULT_COMBOS, ComboTable


class RecipeError(ValueError):
    """A recipe that cannot be run; the message names the file, line and field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class Phase1Source(_Strict):
    """Make the demo Phase-1 family when the input models are missing."""

    preset: Literal["tiny", "phase1-25m"] = Field(
        "tiny", description="Model preset of the demo family."
    )
    seed: Int = Field(0, description="Seed of the demo family.")
    out: Path = Field(
        Path("runs/phase1-tiny"), description="Where the family is (or will be) written."
    )


class InputsConfig(_Strict):
    """The three input models: explicit paths, or the demo family made on demand."""

    models: list[Path] | None = Field(
        None,
        description="Exactly three save_pretrained model dirs (or Hugging Face repo ids "
        "already in the local cache: nothing is downloaded).",
    )
    phase1: Phase1Source | None = Field(
        None, description="Make/reuse the demo Phase-1 family instead of `models`."
    )
    base_model: Path | None = Field(
        None,
        description="Optional common ancestor of the inputs; a dir or a cached repo id, as "
        "`models`. With it `cmaes` (`anchor: auto`) searches the stage-1 weights as task-vector "
        "coefficients against it; the seed loop does not use it. `combos show|export --recipe` "
        "take it for `--reference ancestor`.",
    )
    architecture: str | None = Field(
        None,
        description="model_type every input must have; default: the first input's own model_type.",
    )
    expected_params: Int | None = Field(None, description="Expected parameter count of each input.")
    params_tolerance: FiniteFloat = Field(
        0.05, ge=0, le=1, description="Allowed relative deviation from expected_params."
    )

    @model_validator(mode="after")
    def _one_source(self) -> InputsConfig:
        if (self.models is None) == (self.phase1 is None):
            raise ValueError("give exactly one of `models` (three paths) or `phase1`")
        if self.models is not None and len(self.models) != 3:
            raise ValueError(f"`models` must list exactly 3 model dirs, got {len(self.models)}")
        return self


class MutationConfig(_Strict):
    """How each elite becomes its mutated children."""

    operator: Literal["gaussian", "input_direction"] = Field(
        "gaussian",
        description=(
            "gaussian: N(0, sigma) noise (the seed); input_direction: a step of "
            "eps ~ N(0, sigma) of the way toward one random input model."
        ),
    )
    sigma: FiniteFloat = Field(
        0.01, gt=0, description="Noise scale (gaussian) or step scale (input_direction)."
    )
    sigma_mode: Literal["absolute", "relative"] = Field(
        "relative",
        description="gaussian only. absolute: sigma in weight units (the seed); relative: sigma x each tensor's RMS.",
    )
    rate: FiniteFloat = Field(0.01, gt=0, le=1, description="Fraction of elements perturbed.")


class EarlyStopConfig(_Strict):
    """Stop when the champion stops improving (null: always run every generation)."""

    min_improvement: FiniteFloat = Field(
        0.001, ge=0, description="Relative champion improvement that counts as progress."
    )
    patience: Int = Field(5, ge=1, description="Generations without progress before stopping.")


class SelectionConfig(_Strict):
    """Honest selection for genome strategies (docs/search.md "Honest selection").

    The fitness split is split again: a validation sample no candidate is
    selected on, and a pool the per-generation selection minibatches come from.
    The top candidates are re-scored on the validation sample before one is
    crowned; the test split stays for the final report.
    """

    minibatch: Literal["fresh", "fixed"] = Field(
        "fresh",
        description=(
            "fresh: a new sample of `fitness.max_items` documents per task each generation; "
            "fixed: the run's own fitness sample (`fitness.sample`)."
        ),
    )
    validation_items: Int = Field(
        48,
        ge=1,
        description="Documents per task of the validation sample (from the fitness split).",
    )
    top_k: Int = Field(
        3,
        ge=1,
        description=(
            "Re-scored on the validation sample: the best genome of each of the last "
            "`top_k` generations (plus the strategy's own final candidates and the best "
            "generation-0 combo)."
        ),
    )


class EvolutionConfig(_Strict):
    """The generation loop: strategy, population scheme, mutation, re-seeding, early stop, seed."""

    strategy: str = Field(
        "seed",
        description=(
            "Search strategy: seed (the user's loop: elites, mutation, loser merging) or "
            "cmaes (CMA-ES over per-layer-group genes), or a plugin's."
        ),
    )
    strategy_options: dict[str, Any] = Field(
        default_factory=dict,
        description="The strategy's own options (cmaes: popsize, sigma0, combo, genes, fixed, anchor).",
    )
    layer_groups: Int = Field(
        1,
        ge=1,
        description="Genome strategies: contiguous groups of decoder layers with their own genes.",
    )
    embedding_group: bool = Field(
        False,
        description=(
            "Genome strategies: the tensors outside the decoder layers (embeddings, final "
            "norm, LM head) get genes of their own (one more group); false: group 0's."
        ),
    )
    selection: SelectionConfig = Field(default_factory=lambda: SelectionConfig())

    generations: Int = Field(50, ge=0, description="Generations after generation 0.")
    population: Literal[8] = Field(
        8, description="Population size (the combo scheme fixes it at 8)."
    )
    elites: Literal[2] = Field(2, description="Top models kept as parents of mutated children.")
    children_per_elite: Literal[3] = Field(3, description="Mutated children per elite.")
    mutation: MutationConfig = Field(default_factory=lambda: MutationConfig())
    min_diversity: FiniteFloat = Field(
        0.3, ge=0, description="Re-seed the bottom 2 below this diversity."
    )
    early_stop: EarlyStopConfig | None = Field(default_factory=lambda: EarlyStopConfig())
    seed: Int = Field(0, description="Seed of every random choice of the run.")

    @property
    def gene_groups(self) -> int:
        """Values per gene: the layer groups, plus the embedding group when there is one."""
        return self.layer_groups + int(self.embedding_group)


class FitnessSection(FitnessConfig):
    """The fitness harness's config (evomerge.fitness.FitnessConfig) plus the run's targets."""

    min_improvement: FiniteFloat = Field(
        0.20, description="Target relative improvement over the inputs' mean."
    )
    sample: Literal["first", "random"] = Field(
        "first",
        description=(
            "Which `max_items` documents per fitness task are the run's own sample (generation "
            "0, the inputs' normalisation, the best gen-0 pick, FrankenMerge / DFS "
            "calibration text): first: the first of each file (lm-eval's `limit`); random: "
            "drawn at random with the run's seed, for task files in some order (a book's "
            "chapters, a library's modules A to Z)."
        ),
    )
    report_max_items: Int | None = Field(
        None,
        ge=1,
        description=(
            "Documents per task for the final held-out test-split report, a fixed-seed "
            "random sample (null: fitness.max_items, the search's own count)."
        ),
    )


class TrackingConfig(_Strict):
    """Progress logging: evolution.jsonl and evolution.png always, W&B as configured here."""

    wandb_mode: Literal["offline", "online", "disabled"] = Field("offline", description="W&B mode.")
    project: str = Field("evomerge", description="W&B project name.")


class DeviceConfig(_Strict):
    """Where and in which precision merging and evaluation run."""

    device: str = Field(
        "auto",
        pattern=r"^(auto|cpu|(cuda|mps|xpu)(:\d+)?)$",
        description="auto (accelerate's choice), cpu, cuda, cuda:N.",
    )
    precision: Literal["fp32", "bf16"] = Field(
        "fp32",
        description="Evaluation precision: bf16 autocasts the fitness forwards.",
    )
    storage: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto",
        description=(
            "dtype the inputs and every candidate are held (and the champion saved) in; "
            "auto: the inputs' own (config.json `dtype`, fp32 when unset). Merging math runs "
            "in fp32 per tensor either way."
        ),
    )
    inputs: Literal["auto", "device", "host", "disk"] = Field(
        "auto",
        description=(
            "Where the input weights (and their base) are held: device (resident beside the "
            "candidates), host (host memory, each tensor copied to the device "
            "when a merge reads it), disk (read from their safetensors files per tensor, never "
            "held); auto: device while inputs and candidates fit the device's free memory, "
            "else host (GPU only), else disk "
            "(see [Where the inputs live](#where-the-inputs-live))."
        ),
    )


class Recipe(_Strict):
    """A whole evolution run."""

    name: str = Field("evomerge-run", description="Run name (W&B run, output files).")
    inputs: InputsConfig
    combos: list[tuple[str, str]] = Field(
        default_factory=lambda: list(DEFAULT_COMBOS),
        min_length=3,
        max_length=3,
        description=(
            "The combo table, three [bit 0, bit 1] method pairs: bit i of a combo label "
            "picks combos[i][bit]; rows are the interpolation, task-arithmetic and "
            "selection stages (see [The combo table](#the-combo-table))."
        ),
    )
    stages: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="Per merge method, parameter overrides (e.g. dare: {density: 0.1}).",
    )
    evolution: EvolutionConfig = Field(default_factory=lambda: EvolutionConfig())
    fitness: FitnessSection = Field(default_factory=lambda: FitnessSection())
    tracking: TrackingConfig = Field(default_factory=lambda: TrackingConfig())
    device: DeviceConfig = Field(default_factory=lambda: DeviceConfig())
    output: Path = Field(
        Path("runs/evomerge"), description="Output dir (champion/, result.json, plots)."
    )
    #: the file and YAML tree it was loaded from, so later checks can name FILE:LINE
    _source: tuple[Path, Any] | None = PrivateAttr(default=None)

    def __eq__(self, other: object) -> bool:
        """Equal settings are equal recipes, wherever they were loaded from."""
        if not isinstance(other, Recipe):
            return NotImplemented
        return self.model_dump() == other.model_dump()

    __hash__ = None  # type: ignore[assignment]

    def where(self, loc: tuple[Any, ...]) -> str:
        """``FILE:LINE`` of field ``loc`` in the file this recipe came from (or the field alone)."""
        field = ".".join(str(p) for p in loc)
        if self._source is None:
            return f"recipe field {field}"
        path, root = self._source
        line = _line_of(root, loc)
        return f"{path}:{line}: {field}" if line else f"{path}: {field}"

    @field_validator("combos")
    @classmethod
    def _distinct_pairs(cls, combos: list[tuple[str, str]]) -> list[tuple[str, str]]:
        for row, (a, b) in enumerate(combos):
            if a == b:
                raise ValueError(f"row {row} names {a!r} twice: its bit would choose nothing")
        return combos

    def combo_table(self) -> ComboTable:
        """The ``combos:`` rows as ``StageParams.table`` takes them."""
        a, b, c = (tuple(pair) for pair in self.combos)
        return (a, b, c)  # type: ignore[return-value]

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)

    def given(self, loc: tuple[Any, ...]) -> str | None:
        """The text the recipe file gave for field ``loc`` (before paths were resolved)."""
        if self._source is None:
            return None
        node = self._source[1]
        for key in loc:
            if isinstance(node, yaml.MappingNode):
                node = next((v for k, v in node.value if getattr(k, "value", None) == key), None)
            elif isinstance(node, yaml.SequenceNode) and isinstance(key, int):
                node = node.value[key] if key < len(node.value) else None
            else:
                return None
        return node.value if isinstance(node, yaml.ScalarNode) else None

    def resolved(self, base_dir: Path) -> Recipe:
        """Relative paths resolve against the recipe file's folder, as a user expects; a model
        named by a Hugging Face repo id that is no dir there, to its cached snapshot."""
        from evomerge.hub_cache import model_location

        def fix(p: Path | None) -> Path | None:
            return None if p is None else (p if p.is_absolute() else (base_dir / p).resolve())

        def model(p: Path | None) -> Path | None:
            return None if p is None else model_location(p, base_dir)

        data = self.model_copy(deep=True)
        if data.inputs.models is not None:
            data.inputs.models = [model(p) for p in data.inputs.models]  # type: ignore[misc]
        if data.inputs.phase1 is not None:
            data.inputs.phase1.out = fix(data.inputs.phase1.out)  # type: ignore[assignment]
        data.inputs.base_model = model(data.inputs.base_model)
        data.fitness.task_dirs = [fix(p) for p in data.fitness.task_dirs]  # type: ignore[misc]
        data.output = fix(data.output)  # type: ignore[assignment]
        return data


def _line_of(root: yaml.Node | None, loc: tuple[Any, ...]) -> int | None:
    """1-based line of the YAML node at pydantic's error location (deepest that exists)."""
    node, line = root, None
    for key in loc:
        if node is None:
            break
        line = node.start_mark.line + 1
        if isinstance(node, yaml.MappingNode):
            match = [v for k, v in node.value if getattr(k, "value", None) == str(key)]
            node = match[0] if match else None
            if match:
                line = match[0].start_mark.line + 1
        elif isinstance(node, yaml.SequenceNode) and isinstance(key, int) and key < len(node.value):
            node = node.value[key]
            line = node.start_mark.line + 1
        else:
            node = None
    return line


def load_recipe(path: Path) -> Recipe:
    """Parse and validate a recipe file; every problem is a RecipeError naming file:line: field."""
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"{path}: recipe file not found")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise RecipeError(
            f"{path}: not UTF-8 text (byte {exc.start}): save the recipe as UTF-8"
        ) from None
    if _is_merge_config(text):
        raise RecipeError(
            f"{path}: a merge config (merge_method:), not an evolution recipe; "
            f"run it with `evomerge combos run {path} --out OUT`"
        )
    try:
        root = yaml.compose(text)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise RecipeError(yaml_problem(path, exc)) from None
    _check_duplicate_keys(path, root, ())
    if not isinstance(data, dict):
        raise RecipeError(
            f"{path}:1: a recipe must be a mapping of sections (inputs, evolution, ...)"
        )
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = error_loc(tuple(err["loc"]))
        field = ".".join(str(p) for p in loc) or "(top level)"
        line = _line_of(root, loc)
        where = f"{path}:{line}" if line else str(path)
        more = f" (and {len(exc.errors()) - 1} more)" if len(exc.errors()) > 1 else ""
        raise RecipeError(f"{where}: {field}: {err['msg']}{more}") from None
    recipe = recipe.resolved(path.parent.resolve())
    recipe._source = (path, root)
    _check_names(path, root, data, recipe)
    return recipe


def _is_merge_config(text: str) -> bool:
    """Whether the file's first YAML document is a mergekit config (`combos export` writes
    them, several documents to a file), which a user may hand to `recipe` by mistake."""
    try:
        first = next(yaml.safe_load_all(text), None)
    except yaml.YAMLError:
        return False
    recipe_sections = {"inputs", "evolution", "fitness", "combos", "stages", "output"}
    return isinstance(first, dict) and "merge_method" in first and not recipe_sections & set(first)


def yaml_problem(path: Path, exc: yaml.YAMLError) -> str:
    """``FILE:LINE: invalid YAML: what`` for a file PyYAML could not parse."""
    mark = getattr(exc, "problem_mark", None)
    where = f"{path}:{mark.line + 1}" if mark else str(path)
    return f"{where}: invalid YAML: {getattr(exc, 'problem', exc)}"


def error_loc(loc: tuple[Any, ...]) -> tuple[Any, ...]:
    """A pydantic error location without its union-member names: the field a user wrote."""
    return tuple(p for p in loc if not _is_union_tag(p))


def _is_union_tag(part: Any) -> bool:
    """pydantic's name of a union member in an error location (``int``, ``literal['auto']``)."""
    return isinstance(part, str) and bool(
        re.fullmatch(r"int|float|str|bool|(literal|function-\w+|constrained-\w+)\[.*\]", part)
    )


def _check_duplicate_keys(path: Path, node: yaml.Node | None, loc: tuple[Any, ...]) -> None:
    """A key given twice in one mapping (YAML keeps the last silently): ``FILE:LINE: field``."""
    if isinstance(node, yaml.MappingNode):
        seen: set[Any] = set()
        for key, value in node.value:
            name = getattr(key, "value", None)
            if key.tag == "tag:yaml.org,2002:merge":  # `<<: *anchor` keys merge, each of them
                continue
            if (key.tag, name) in seen:
                field = ".".join(str(p) for p in (*loc, name))
                raise RecipeError(
                    f"{path}:{key.start_mark.line + 1}: {field}: given twice (YAML would keep "
                    "only the last)"
                )
            seen.add((key.tag, name))
            _check_duplicate_keys(path, value, (*loc, name))
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _check_duplicate_keys(path, item, (*loc, i))


def _check_names(path: Path, root: yaml.Node | None, data: dict[str, Any], recipe: Recipe) -> None:
    """The first name no registry or task file resolves, as ``FILE:LINE: field: message``."""
    from evomerge.evolution.recipe_check import recipe_problems

    problem = next(recipe_problems(recipe), None)
    if problem is None:
        return
    loc, message = problem
    line = _line_of(root, loc)
    where = f"{path}:{line}" if line else str(path)
    field = ".".join(str(p) for p in loc)
    unset = _first_unset(data, loc)
    if unset:
        message += f" (from the default: the recipe sets no `{unset}`)"
    raise RecipeError(f"{where}: {field}: {message}")


def _first_unset(data: Any, loc: tuple[Any, ...]) -> str | None:
    """The shortest prefix of ``loc`` the file does not set (a default's problem), or None."""
    node = data
    for depth, key in enumerate(loc):
        in_mapping = isinstance(node, dict) and key in node
        in_list = isinstance(node, list) and isinstance(key, int) and key < len(node)
        if not (in_mapping or in_list):
            return ".".join(str(k) for k in loc[: depth + 1])
        node = node[key]
    return None
