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
from typing import Any, ClassVar, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from evomerge.merge.combos import parse_label
from evomerge.search.cmaes import CmaesSearch, GeneSpace, GeneSpec
from evomerge.search.genome import Genome


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


@dataclass(frozen=True)
class SearchState:
    """Where the run stands when it asks for the next genomes."""

    generation: int
    evaluations: int = 0


@runtime_checkable
class Strategy(Protocol):
    """propose -> (the run merges and scores) -> observe, once per generation."""

    name: ClassVar[str]
    Options: ClassVar[type[StrategyOptions]]

    def __init__(self, options: Any, context: SearchContext) -> None: ...

    def propose(self, state: SearchState) -> list[Genome]: ...

    def observe(self, genomes: Sequence[Genome], scores: Sequence[float]) -> None: ...

    @property
    def champion(self) -> tuple[Genome, float] | None: ...

    def state_dict(self) -> dict[str, Any]: ...


def gene_catalog(num_inputs: int) -> dict[str, GeneSpec]:
    """The genes a recipe can name without bounds: mixing weights, density, λ."""
    n = num_inputs
    specs = [
        GeneSpec(name=f"stage1.weight.{i}", lower=0.0, upper=1.0, initial=1 / n) for i in range(n)
    ]
    specs += [
        GeneSpec(name=f"stage2.weight.{i}", lower=0.0, upper=1.0, initial=1 / n) for i in range(n)
    ]
    specs += [
        GeneSpec(name="stage2.density", lower=0.05, upper=1.0, initial=0.2),
        GeneSpec(name="stage2.lambda", lower=0.0, upper=2.0, initial=1.0),
    ]
    return {s.name: s for s in specs}


class CmaesOptions(StrategyOptions):
    """``evolution.strategy: cmaes`` options (σ₀ is a fraction of each gene's range)."""

    popsize: int = Field(8, ge=2)
    sigma0: float = Field(0.2, gt=0.0)
    combo: str = "000"
    search_combo: bool = False
    #: catalog names (:func:`gene_catalog`) or full specs; None = the whole catalog
    genes: list[str | GeneSpec] | None = None

    @field_validator("combo")
    @classmethod
    def _label(cls, combo: str) -> str:
        parse_label(combo)
        return combo


class CmaesStrategy:
    """CMA-ES (pycma) over per-layer-group genes; the combo is fixed or searched as 3 bit genes."""

    name: ClassVar[str] = "cmaes"
    Options: ClassVar[type[StrategyOptions]] = CmaesOptions

    def __init__(self, options: CmaesOptions, context: SearchContext):
        self.options, self.context = options, context
        catalog = gene_catalog(context.num_inputs)
        chosen = options.genes if options.genes is not None else list(catalog)
        specs = []
        for gene in chosen:
            if isinstance(gene, str) and gene not in catalog:
                raise StrategyError(
                    f"genes: unknown gene {gene!r}; known: {', '.join(catalog)} "
                    "(or give {name, lower, upper, initial})"
                )
            specs.append(catalog[gene] if isinstance(gene, str) else gene)
        space = GeneSpace(
            genes=tuple(specs),
            layer_groups=context.layer_groups,
            combo=options.combo,
            search_combo=options.search_combo,
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

    def state_dict(self) -> dict[str, Any]:
        return {"options": self.options.model_dump(mode="json"), "search": self.search.state_dict()}

    @classmethod
    def from_state_dict(cls, state: Mapping[str, Any], context: SearchContext) -> CmaesStrategy:
        self = cls.__new__(cls)
        self.options = CmaesOptions.model_validate(state["options"])
        self.context = context
        self.search = CmaesSearch.from_state_dict(state["search"])
        return self


BUILTIN_STRATEGIES: tuple[type[Strategy], ...] = (CmaesStrategy,)


def find_strategy(
    name: str, strategies: Sequence[type[Strategy]] = BUILTIN_STRATEGIES
) -> type[Strategy]:
    """The registered strategy class called ``name``; otherwise one line listing the known ones."""
    for cls in strategies:
        if cls.name == name:
            return cls
    known = ", ".join(sorted(c.name for c in strategies))
    raise StrategyError(f"strategy: unknown strategy {name!r}; known: {known}")


def build_strategy(
    name: str,
    options: Mapping[str, Any] | None,
    context: SearchContext,
    strategies: Sequence[type[Strategy]] = BUILTIN_STRATEGIES,
) -> Strategy:
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
