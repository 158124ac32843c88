"""Lineage: how every candidate was made, so the champion can be rebuilt from it alone.

A node is one operation: a combo merge of three parents (generation 0's parents
are the inputs), a mutation of one parent, a re-seed (a combo of the
inputs), or a genome (its resolved config over the inputs, and their ancestor
``input:base`` when it searches against it). Nodes form a DAG with at most eight nodes per generation; ``ancestry``
collects the part of it that a champion needs.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

INPUT_IDS = ("input:1", "input:2", "input:3")

NodeKind = Literal["combo", "mutation", "genome"]
#: the inputs' common ancestor, a parent of genomes searched against it
BASE_ID = "input:base"


@dataclass
class LineageNode:
    """One candidate's recipe: the op, its parents, and every random seed it used."""

    id: str
    generation: int
    kind: NodeKind
    parents: list[str]
    seed: int
    combo: str | None = None
    mutation: dict[str, Any] | None = None
    #: what the merge actually did (resolved config, layer slices a stage chose, fallbacks)
    merge_record: dict[str, Any] = field(default_factory=dict)
    fitness: float | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LineageNode:
        return cls(**data)


class LineageBook:
    """All nodes that may still matter: the live population's and the champion's ancestry."""

    def __init__(self) -> None:
        self.nodes: dict[str, LineageNode] = {}

    def add(self, node: LineageNode) -> LineageNode:
        if node.id in self.nodes:
            raise ValueError(f"duplicate lineage node {node.id}")
        self.nodes[node.id] = node
        return node

    def ancestry(self, node_id: str) -> list[LineageNode]:
        """The nodes needed to rebuild ``node_id``, parents before children."""
        seen: dict[str, LineageNode] = {}
        stack = [node_id]
        while stack:
            current = stack.pop()
            if current in seen or current in INPUT_IDS or current == BASE_ID:
                continue
            node = self.nodes[current]
            seen[current] = node
            stack.extend(node.parents)
        return sorted(seen.values(), key=lambda n: (n.generation, n.id))

    def prune(self, keep: list[str]) -> None:
        """Forget nodes that no kept node descends from (bounds the book's size)."""
        needed: set[str] = set()
        for node_id in keep:
            needed.update(n.id for n in self.ancestry(node_id))
        self.nodes = {k: v for k, v in self.nodes.items() if k in needed}

    def to_json(self) -> list[dict[str, Any]]:
        return [
            n.to_json() for n in sorted(self.nodes.values(), key=lambda n: (n.generation, n.id))
        ]

    @classmethod
    def from_json(cls, data: list[dict[str, Any]]) -> LineageBook:
        book = cls()
        for item in data:
            book.add(LineageNode.from_json(item))
        return book
