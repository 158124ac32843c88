"""The search-strategy interface the run calls, and the ``cmaes`` strategy.

Like :mod:`evomerge.evolution.loop`, a strategy never merges or scores: it
proposes genomes and is told their scores, so it is testable with any
``evaluate(genome) -> float`` (higher is better) and the run owns the engine,
the harness, lineage and checkpoints. A strategy class is what a plugin
registers (hook ``evomerge_register_strategies() -> list[type[Strategy]]``);
the run builds one per run with :func:`build_strategy` from the recipe's
``evolution.strategy: NAME`` and its options, validated by the class's
``Options`` model (``extra="forbid"``: an unknown option is an error).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from evomerge.hookspecs import hookimpl
from evomerge.merge.combos import parse_label
from evomerge.registry import Registry
from evomerge.search.cmaes import CmaesSearch, GeneSpace, GeneSpec
from evomerge.search.genome import Genome, parse_gene


class StrategyError(ValueError):
    """An unknown strategy or a bad strategy option (one line naming the field)."""


class StrategyOptions(BaseModel):
    """Base of every strategy's options: frozen, and unknown names are errors."""

    model_config = ConfigDict(frozen=True, extra="forbid")


@dataclass(frozen=True)
class SearchContext:
    """What the run knows when it builds a strategy."""

    num_inputs: int
    layer_groups: int = 1
    seed: int = 0
    #: whether the inputs' common ancestor is known (``anchor: auto`` then searches against it)
    has_base: bool = False


@dataclass(frozen=True)
class SearchState:
    """Where the run stands when it asks for the next genomes."""

    generation: int
    evaluations: int = 0


@runtime_checkable
class Strategy(Protocol):
    """propose -> (the run merges and scores) -> observe, once per generation."""

    name: ClassVar[str]
    kind: ClassVar[str]  # "genomes": the run's genome loop drives it
    Options: ClassVar[type[StrategyOptions]]

    def __init__(self, options: Any, context: SearchContext) -> None: ...

    def propose(self, state: SearchState) -> list[Genome]: ...

    def observe(self, genomes: Sequence[Genome], scores: Sequence[float]) -> None: ...

    @property
    def champion(self) -> tuple[Genome, float] | None: ...

    def final_candidates(self) -> list[Genome]: ...

    def state_dict(self) -> dict[str, Any]: ...


class SeedOptions(StrategyOptions):
    """The seed loop takes its settings from ``evolution`` itself (mutation, min_diversity, ...)."""


class SeedStrategy:
    """The user's loop (evomerge/evolution/loop.py): it evolves weights, not genomes.

    Registered like any strategy so ``evolution.strategy: seed`` resolves
    through the same hook; ``kind = "weights"`` tells the run to drive the
    :class:`~evomerge.evolution.loop.EvolutionLoop` instead of the genome loop.
    """

    name: ClassVar[str] = "seed"
    kind: ClassVar[str] = "weights"
    Options: ClassVar[type[StrategyOptions]] = SeedOptions

    def __init__(self, options: SeedOptions, context: SearchContext) -> None:
        self.options, self.context = options, context


#: search bounds of a stage-1 weight: a convex-ish mix of the inputs, or task-arithmetic
#: coefficients against the ancestor (free to shrink a layer's fine-tuning or extrapolate it)
WEIGHT_BOUNDS = {"inputs": (0.0, 1.0), "ancestor": (-0.5, 1.5)}


def gene_catalog(num_inputs: int, anchor: str = "inputs") -> dict[str, GeneSpec]:
    """The genes a recipe can name without bounds: mixing weights, density, λ, layer sources."""
    n = num_inputs
    lo, hi = WEIGHT_BOUNDS[anchor]
    specs = [
        GeneSpec(name=f"stage1.weight.{i}", lower=lo, upper=hi, initial=1 / n) for i in range(n)
    ]
    specs += [
        GeneSpec(name=f"stage2.weight.{i}", lower=0.0, upper=1.0, initial=1 / n) for i in range(n)
    ]
    specs += [
        GeneSpec(name="stage2.density", lower=0.05, upper=1.0, initial=0.2),
        GeneSpec(name="stage2.lambda", lower=0.0, upper=2.0, initial=1.0),
        # floor(value) indexes [stage2, M1, M2, M3]; starts on stage 2 itself
        GeneSpec(name="stage3.source", lower=0.0, upper=n + 1 - 1e-9, initial=0.5),
    ]
    return {s.name: s for s in specs}


class CmaesOptions(StrategyOptions):
    """``evolution.strategy: cmaes`` options (σ₀ is a fraction of each gene's range)."""

    popsize: int = Field(8, ge=2)
    #: 0.075 of the range: 0.15 in task-arithmetic units, the best of docs/benchmarks.md
    sigma0: float = Field(0.075, gt=0.0)
    combo: str = "000"
    search_combo: bool = False
    #: catalog names (:func:`gene_catalog`) or full specs; None = the stage-1 weights
    genes: list[str | GeneSpec] | None = None
    #: genes held at one value in every group (default: stages 2 and 3 pass stage 1 through)
    fixed: dict[str, float] = Field(
        default_factory=lambda: {"stage2.lambda": 0.0, "stage3.source": 0.0}
    )
    #: stage-1 weights against the common ancestor (auto: when the inputs have one)
    anchor: Literal["auto", "inputs", "ancestor"] = "auto"

    @field_validator("combo")
    @classmethod
    def _label(cls, combo: str) -> str:
        parse_label(combo)
        return combo

    @field_validator("fixed")
    @classmethod
    def _fixed_names(cls, fixed: dict[str, float]) -> dict[str, float]:
        for name in fixed:
            parse_gene(name)
        return fixed


class CmaesStrategy:
    """CMA-ES (pycma) over per-layer-group genes; the combo is fixed or searched as 3 bit genes."""

    name: ClassVar[str] = "cmaes"
    kind: ClassVar[str] = "genomes"
    Options: ClassVar[type[StrategyOptions]] = CmaesOptions

    def __init__(self, options: CmaesOptions, context: SearchContext):
        self.options, self.context = options, context
        anchor = options.anchor
        if anchor == "auto":
            anchor = "ancestor" if context.has_base else "inputs"
        if anchor == "ancestor" and not context.has_base:
            raise StrategyError(
                "anchor: ancestor needs the inputs' common ancestor (inputs.base_model)"
            )
        catalog = gene_catalog(context.num_inputs, anchor)
        default = [f"stage1.weight.{i}" for i in range(context.num_inputs)]
        chosen = options.genes if options.genes is not None else default
        specs = []
        for gene in chosen:
            if isinstance(gene, str) and gene not in catalog:
                raise StrategyError(
                    f"genes: unknown gene {gene!r}; known: {', '.join(catalog)} "
                    "(or give {name, lower, upper, initial})"
                )
            specs.append(catalog[gene] if isinstance(gene, str) else gene)
        searched = {s.name for s in specs}
        fixed = {k: v for k, v in options.fixed.items() if k not in searched}
        space = GeneSpace(
            genes=tuple(specs),
            layer_groups=context.layer_groups,
            combo=options.combo,
            search_combo=options.search_combo,
            fixed=fixed,
            anchor=anchor,
        )
        self.search = CmaesSearch(space, options.sigma0, options.popsize, context.seed)

    def propose(self, state: SearchState) -> list[Genome]:
        return self.search.ask()

    def observe(self, genomes: Sequence[Genome], scores: Sequence[float]) -> None:
        self.search.tell(genomes, scores)

    @property
    def champion(self) -> tuple[Genome, float] | None:
        s = self.search
        return None if s.champion is None else (s.champion, float(s.champion_fitness or 0.0))

    def final_candidates(self) -> list[Genome]:
        """The distribution's mean (often better held out than any single sample) and the start
        point (against the ancestor: the uniform average), so crowning never falls below it."""
        space = self.search.space
        return [self.search.mean_genome(), space.to_genome(space.initial_vector())]

    def state_dict(self) -> dict[str, Any]:
        return {"options": self.options.model_dump(mode="json"), "search": self.search.state_dict()}

    @classmethod
    def from_state_dict(cls, state: Mapping[str, Any], context: SearchContext) -> CmaesStrategy:
        self = cls.__new__(cls)
        self.options = CmaesOptions.model_validate(state["options"])
        self.context = context
        self.search = CmaesSearch.from_state_dict(state["search"])
        return self


BUILTIN_STRATEGIES: tuple[type[Any], ...] = (SeedStrategy, CmaesStrategy)


@hookimpl
def evomerge_register_strategies() -> list[type[Any]]:
    """The built-in strategies, registered through the public hook (``DEFAULT_PLUGINS``)."""
    return list(BUILTIN_STRATEGIES)


def _strategy_name(cls: type[Any]) -> str:
    return str(cls.name)


def _strategy_problem(cls: type[Any]) -> str | None:
    """Why a registered class cannot run: the run drives any strategy but the built-in seed
    loop through the genome loop, so ``kind`` must say so (a ``weights`` one would be
    replaced by the seed's loop, its ``propose`` never called)."""
    if not isinstance(getattr(cls, "name", None), str):
        return "it has no `name` string"
    if cls is not SeedStrategy and getattr(cls, "kind", None) != "genomes":
        return f'kind must be "genomes", got {getattr(cls, "kind", None)!r}'
    return None


STRATEGIES: Registry[type[Any]] = Registry(
    "search strategy",
    "evomerge_register_strategies",
    type,
    _strategy_name,
    check=_strategy_problem,
)


def registered_strategies() -> list[type[Any]]:
    """Every strategy class the loaded plugins register (the built-ins included)."""
    return [e.item for e in STRATEGIES.items()]


def find_strategy(name: str, strategies: Sequence[type[Any]] | None = None) -> type[Any]:
    """The registered strategy class called ``name``; otherwise one line listing the known ones."""
    strategies = registered_strategies() if strategies is None else strategies
    for cls in strategies:
        if cls.name == name:
            return cls
    from evomerge.plugins import load_error_note

    known = ", ".join(sorted(c.name for c in strategies))
    raise StrategyError(f"strategy: unknown strategy {name!r}; known: {known}{load_error_note()}")


def build_strategy(
    name: str,
    options: Mapping[str, Any] | None,
    context: SearchContext,
    strategies: Sequence[type[Any]] | None = None,
) -> Any:
    """Validate ``options`` against the strategy's ``Options`` and build it (errors: one line)."""
    cls = find_strategy(name, strategies)
    try:
        parsed = cls.Options.model_validate(dict(options or {}))
    except ValidationError as exc:
        raise StrategyError(f"{name} option {_one_line(exc)}") from None
    try:
        return cls(parsed, context)
    except StrategyError:
        raise
    except ValidationError as exc:
        raise StrategyError(f"{name} option {_one_line(exc)}") from None
    except ValueError as exc:
        raise StrategyError(f"{name}: {str(exc).splitlines()[0]}") from None


def _one_line(exc: ValidationError) -> str:
    """``field.path: message`` of pydantic's first error."""
    first = exc.errors()[0]
    field = ".".join(str(p) for p in first["loc"]) or "options"
    return f"{field}: {first['msg']}"


def run_search(
    strategy: Strategy, evaluate: Callable[[Genome], float], generations: int
) -> list[tuple[Genome, float]]:
    """The minimal loop: ``generations`` rounds of propose / evaluate / observe; every evaluation."""
    history: list[tuple[Genome, float]] = []
    for generation in range(generations):
        genomes = strategy.propose(SearchState(generation=generation, evaluations=len(history)))
        scores = [float(evaluate(g)) for g in genomes]
        strategy.observe(genomes, scores)
        history.extend(zip(genomes, scores, strict=True))
    return history
