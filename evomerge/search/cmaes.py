"""CMA-ES over a genome's continuous genes, via pycma (the ``cma`` package), resumable bit-exactly.

Search coordinates: pycma works in the unit cube ``[0, 1]^d`` with its
``bounds`` option (its default ``BoundTransform``: a smooth, piecewise-quadratic
map into the box, so every asked solution is feasible and pycma's own
distribution stays unbounded); coordinate ``u`` of gene ``g`` means
``g.lower + u·(g.upper − g.lower)``. So σ₀ is a fraction of each gene's range,
whatever the ranges are. The vector is gene-major: ``[g0·group0, g0·group1, …,
g1·group0, …]``, then, when the combo is searched, three bit coordinates
(bit = ``u > 0.5``; a given initial combo starts at 0.25 / 0.75).

Determinism: by default pycma samples from ``numpy.random``'s global
generator (and a pickled strategy silently gets a private *copy* of it). Here
pycma's ``randn`` option is a generator of the search's own, seeded by the
run seed and pickled with the strategy (so pycma's ``seed`` option is unused:
``nan``), and every pycma call also runs inside :meth:`CmaesSearch._own_rng`,
which swaps in a second own state for pycma's other ``numpy.random`` uses and
swaps the caller's back, so other code using ``numpy.random`` (lm-eval, a data
loader) cannot shift the search. :meth:`CmaesSearch.state_dict` stores the
pickled strategy (base64) and that state; with an ask pending it stores the
state *before* the ask and re-asks on load (pycma files asked solutions under
``hash(bytes)``, which differs between processes), so a run killed anywhere
resumes to the same asks and the same champion.
"""

from __future__ import annotations

import base64
import math
import pickle
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from evomerge.merge.combos import parse_label
from evomerge.search.genome import Genome, parse_gene

STATE_FORMAT = "evomerge.search.cmaes/1"


class _Randn:
    """pycma's ``randn(lam, n)`` from a generator of its own (pickled, state included)."""

    def __init__(self, seed: int):
        self.rs = np.random.RandomState(seed)

    def __call__(self, *shape: int) -> np.ndarray:
        return self.rs.standard_normal(shape)


_BIT_START = (0.25, 0.75)


class GeneSpec(BaseModel):
    """One searched gene: its name (``stage2.density``), bounds and initial value (all groups)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    name: str
    lower: float
    upper: float
    initial: float

    @model_validator(mode="after")
    def _check(self) -> GeneSpec:
        parse_gene(self.name)
        if (
            not (math.isfinite(self.lower) and math.isfinite(self.upper))
            or self.lower >= self.upper
        ):
            raise ValueError(f"gene {self.name!r}: need finite lower < upper")
        if not self.lower <= self.initial <= self.upper:
            raise ValueError(
                f"gene {self.name!r}: initial {self.initial} is outside [{self.lower}, {self.upper}]"
            )
        return self


class GeneSpace(BaseModel):
    """Genes × layer groups (+ optionally the 3 combo bits) <-> the flat unit-cube CMA vector."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    genes: tuple[GeneSpec, ...]
    layer_groups: int = Field(ge=1)
    combo: str = "000"
    search_combo: bool = False
    #: genes held at one value in every group, written into every genome
    fixed: dict[str, float] = Field(default_factory=dict)
    anchor: Literal["inputs", "ancestor"] = "inputs"

    @model_validator(mode="after")
    def _check(self) -> GeneSpace:
        parse_label(self.combo)
        for name in self.fixed:
            parse_gene(name)
        names = [g.name for g in self.genes]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate gene names in {names}")
        if not self.genes and not self.search_combo:
            raise ValueError("a gene space needs at least one gene (or search_combo)")
        return self

    @property
    def dim(self) -> int:
        return len(self.genes) * self.layer_groups + (3 if self.search_combo else 0)

    def initial_vector(self) -> list[float]:
        """The start point: every gene at its initial value in every group; the given combo's bits."""
        u = [
            (g.initial - g.lower) / (g.upper - g.lower)
            for g in self.genes
            for _ in range(self.layer_groups)
        ]
        if self.search_combo:
            u += [_BIT_START[int(b)] for b in self.combo]
        return u

    def to_genome(self, u: Sequence[float]) -> Genome:
        """The genome at unit-cube point ``u`` (values clipped into the box against rounding)."""
        if len(u) != self.dim:
            raise ValueError(f"vector has {len(u)} coordinates, the gene space {self.dim}")
        k = self.layer_groups
        genes = {}
        for i, g in enumerate(self.genes):
            coords = [min(1.0, max(0.0, float(x))) for x in u[i * k : (i + 1) * k]]
            genes[g.name] = tuple(g.lower + c * (g.upper - g.lower) for c in coords)
        for name, value in self.fixed.items():
            genes.setdefault(name, (float(value),) * k)
        combo = self.combo
        if self.search_combo:
            combo = "".join("1" if float(x) > 0.5 else "0" for x in u[-3:])
        return Genome(combo=combo, layer_groups=k, genes=genes, anchor=self.anchor)


class CmaesSearch:
    """ask / tell over a :class:`GeneSpace` (maximising fitness; pycma minimises its negation)."""

    def __init__(self, space: GeneSpace, sigma0: float, popsize: int, seed: int):
        if not (isinstance(sigma0, (int, float)) and math.isfinite(sigma0) and sigma0 > 0):
            raise ValueError(f"sigma0 must be a positive number, got {sigma0!r}")
        if isinstance(popsize, bool) or not isinstance(popsize, int) or popsize < 2:
            raise ValueError(f"popsize must be an integer >= 2, got {popsize!r}")
        self.space, self.sigma0, self.popsize, self.seed = space, float(sigma0), popsize, seed
        self._rng: Any = np.random.RandomState([seed, 1]).get_state()
        self._pending: list[list[float]] | None = None
        self._before_ask: tuple[str, str] | None = None
        self.champion: Genome | None = None
        self.champion_fitness: float | None = None
        self.evaluations = 0
        import cma

        options = {
            "bounds": [0.0, 1.0],
            "popsize": popsize,
            "seed": float("nan"),
            "randn": _Randn(seed),
            "verbose": -9,
            "verb_log": 0,
            "verb_disp": 0,
        }
        with self._own_rng():
            self._es = cma.CMAEvolutionStrategy(space.initial_vector(), self.sigma0, options)

    @contextmanager
    def _own_rng(self) -> Iterator[None]:
        outer = np.random.get_state()
        np.random.set_state(self._rng)
        try:
            yield
        finally:
            self._rng = np.random.get_state()
            np.random.set_state(outer)

    @property
    def generation(self) -> int:
        """Generations told so far."""
        return int(self._es.countiter)

    def mean_genome(self) -> Genome:
        """The search distribution's mean, in the box (pycma's ``xfavorite``)."""
        with self._own_rng():
            mean = self._es.result.xfavorite
        return self.space.to_genome([float(x) for x in mean])

    def ask(self) -> list[Genome]:
        """The next population; asking again before ``tell`` returns the same one."""
        if self._pending is None:
            self._before_ask = (_b64(self._es), _b64(self._rng))
            with self._own_rng():
                solutions = self._es.ask()
            self._pending = [[float(x) for x in s] for s in solutions]
        return [self.space.to_genome(u) for u in self._pending]

    def tell(self, genomes: Sequence[Genome], fitnesses: Sequence[float]) -> None:
        """Report the asked genomes' fitnesses (higher is better; any order, each exactly once)."""
        if self._pending is None:
            raise RuntimeError("tell() without a pending ask()")
        if len(genomes) != len(fitnesses):
            raise ValueError(f"{len(genomes)} genomes but {len(fitnesses)} fitnesses")
        order = _match(
            [self.space.to_genome(u).to_json() for u in self._pending],
            [g.to_json() for g in genomes],
        )
        values = [float(f) for f in fitnesses]
        if not all(math.isfinite(f) for f in values):
            raise ValueError(f"fitnesses must be finite, got {values}")
        vectors = [np.array(self._pending[i], dtype=float) for i in order]
        with self._own_rng():
            self._es.tell(vectors, [-f for f in values])
        for genome, fitness in zip(genomes, values, strict=True):
            if self.champion_fitness is None or fitness > self.champion_fitness:
                self.champion, self.champion_fitness = genome, fitness
        self.evaluations += len(values)
        self._pending = self._before_ask = None

    # -- checkpoints ------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """JSON-able state; :meth:`from_state_dict` resumes to identical asks and champion."""
        es, rng = self._before_ask or (_b64(self._es), _b64(self._rng))
        return {
            "format": STATE_FORMAT,
            "space": self.space.model_dump(mode="json"),
            "sigma0": self.sigma0,
            "popsize": self.popsize,
            "seed": self.seed,
            "es": es,
            "rng": rng,
            "pending": self._pending,
            "champion": self.champion.to_json() if self.champion is not None else None,
            "champion_fitness": self.champion_fitness,
            "evaluations": self.evaluations,
        }

    @classmethod
    def from_state_dict(cls, state: Mapping[str, Any]) -> CmaesSearch:
        if state.get("format") != STATE_FORMAT:
            raise ValueError(f"not a CMA-ES search state (format {state.get('format')!r})")
        self = cls.__new__(cls)
        self.space = GeneSpace.model_validate(state["space"])
        self.sigma0, self.popsize, self.seed = state["sigma0"], state["popsize"], state["seed"]
        self._es = _unb64(state["es"])
        self._rng = _unb64(state["rng"])
        self._pending = self._before_ask = None
        champion = state["champion"]
        self.champion = Genome.from_json(champion) if champion is not None else None
        self.champion_fitness = state["champion_fitness"]
        self.evaluations = state["evaluations"]
        if state["pending"] is not None:
            self.ask()
            if self._pending != state["pending"]:
                raise ValueError("the checkpoint does not reproduce its pending population")
        return self


def _match(asked: Sequence[str], told: Sequence[str]) -> list[int]:
    """Index into ``asked`` of each told genome (equal genomes matched in order)."""
    free = list(range(len(asked)))
    order = []
    for text in told:
        i = next((i for i in free if asked[i] == text), None)
        if i is None:
            raise ValueError("tell() needs exactly the genomes of the last ask()")
        free.remove(i)
        order.append(i)
    if free:
        raise ValueError(f"tell() lacks {len(free)} genome(s) of the last ask()")
    return order


def _b64(obj: Any) -> str:
    return base64.b64encode(pickle.dumps(obj, protocol=4)).decode("ascii")


def _unb64(text: str) -> Any:
    # The checkpoint is the run's own file (as trusted as the recipe that wrote it).
    return pickle.loads(base64.b64decode(text))  # noqa: S301
