#!/usr/bin/env python
"""Render the recipe field tables of docs/recipes.md from the pydantic models.

The tables live between two markers in docs/recipes.md; the prose and the
annotated example around them are hand-written. tests/test_recipe_docs.py
fails when the file is out of date, so a new recipe field cannot ship
undocumented.

    python scripts/gen_recipe_docs.py          # rewrite docs/recipes.md
    python scripts/gen_recipe_docs.py --check  # exit 1 if it is out of date

A field's description is its ``Field(description=...)``, else its ``#:``
comment (the Sphinx convention), else, for a section, its model's docstring.
"""

from __future__ import annotations

import argparse
import ast
import inspect
import json
import sys
import textwrap
import types
import typing
from functools import cache
from pathlib import Path
from typing import Any

import annotated_types
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import to_jsonable_python

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "recipes.md"
BEGIN = "<!-- BEGIN GENERATED: scripts/gen_recipe_docs.py -->"
END = "<!-- END GENERATED -->"


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    """The pydantic models an annotation mentions (``X | None``, ``list[X]``...)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in typing.get_args(annotation) for m in _models_in(arg)]


def _anchor(path: str) -> str:
    return "recipe" if not path else path.replace(".", "-")


def type_name(annotation: Any, path: str = "") -> str:
    """A reader's name for a type: ``float``, ``"a" | "b"``, ``list[path]``, a section link."""
    if annotation is type(None):
        return "null"
    if annotation is Any:
        return "any"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return f"[section](#{_anchor(path)})"
    if isinstance(annotation, type) and issubclass(annotation, Path):
        return "path"
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Annotated:  # StrictInt, FiniteFloat: the number type is what a reader needs
        return type_name(args[0], path)
    if origin is typing.Literal:
        return " | ".join(json.dumps(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(type_name(a, path) for a in args)
    if origin is not None:
        inner = ", ".join(type_name(a, path) for a in args)
        return f"{getattr(origin, '__name__', str(origin))}[{inner}]"
    return getattr(annotation, "__name__", str(annotation))


def _constraints(info: FieldInfo) -> list[str]:
    out = []
    bounds = (
        (annotated_types.Ge, "ge", ">="),
        (annotated_types.Gt, "gt", ">"),
        (annotated_types.Le, "le", "<="),
        (annotated_types.Lt, "lt", "<"),
    )
    for meta in info.metadata:
        for kind, attr, symbol in bounds:
            if isinstance(meta, kind):
                out.append(f"{symbol} {getattr(meta, attr)}")
    return out


def default_text(info: FieldInfo, path: str) -> str:
    if info.is_required():
        return "**required**"
    value = info.get_default(call_default_factory=True, validated_data={})
    if isinstance(value, BaseModel):
        return f"see [`{path}`](#{_anchor(path)})"
    return f"`{json.dumps(to_jsonable_python(value))}`"


@cache
def _doc_comments(cls: type) -> dict[str, str]:
    """``#:`` comments above annotated attributes in a class body, by attribute name."""
    try:
        lines, _ = inspect.getsourcelines(cls)
    except (OSError, TypeError):
        return {}
    src = textwrap.dedent("".join(lines))
    src_lines = src.splitlines()
    found: dict[str, str] = {}
    for node in ast.parse(src).body[0].body:  # type: ignore[attr-defined]
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            comment: list[str] = []
            i = node.lineno - 2
            while i >= 0 and src_lines[i].strip().startswith("#:"):
                comment.insert(0, src_lines[i].strip()[2:].strip())
                i -= 1
            if comment:
                found[node.target.id] = " ".join(comment)
    return found


def description(model: type[BaseModel], name: str, info: FieldInfo) -> str:
    """Field description, else ``#:`` comment, else the section model's docstring (first paragraph)."""
    if info.description:
        return info.description
    for cls in model.__mro__:
        if name in cls.__dict__.get("__annotations__", {}):
            comment = _doc_comments(cls).get(name)
            if comment:
                return comment
            break
    for section in _models_in(info.annotation):
        doc = inspect.getdoc(section)
        if doc and section.__doc__ is not None and "__doc__" in section.__dict__:
            return doc.split("\n\n")[0].replace("\n", " ")
    return ""


def sections(model: type[BaseModel], path: str = "") -> list[tuple[str, type[BaseModel]]]:
    """Every section of the recipe, depth first, as (dotted YAML path, model)."""
    out = [(path, model)]
    for name, info in model.model_fields.items():
        for sub in _models_in(info.annotation):
            out.extend(sections(sub, f"{path}.{name}" if path else name))
    return out


def undocumented(model: type[BaseModel]) -> list[str]:
    """Dotted paths of the fields that have no description anywhere."""
    return [
        f"{path}.{name}" if path else name
        for path, section in sections(model)
        for name, info in section.model_fields.items()
        if not description(section, name, info)
    ]


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_tables(model: type[BaseModel]) -> str:
    """The Markdown field tables, one per section."""
    parts = []
    for path, section in sections(model):
        title = f"`{path}`" if path else "Top level"
        parts.append(f'<a id="{_anchor(path)}"></a>\n\n### {title}\n')
        doc = inspect.getdoc(section) if "__doc__" in section.__dict__ and section.__doc__ else ""
        if doc:
            parts.append(doc.split("\n\n")[0].replace("\n", " ") + "\n")
        parts.append("| Field | Type | Default | Description |\n|---|---|---|---|")
        for name, info in section.model_fields.items():
            sub = f"{path}.{name}" if path else name
            kind = ", ".join([type_name(info.annotation, sub), *_constraints(info)])
            row = [
                f"`{name}`",
                kind,
                default_text(info, sub),
                description(section, name, info) or "—",
            ]
            parts.append("| " + " | ".join(_cell(c) for c in row) + " |")
        parts.append("")
    return "\n".join(parts).rstrip() + "\n"


def render_doc(current: str) -> str:
    """``current`` with the text between the markers replaced by fresh tables."""
    from evomerge.evolution.recipe import Recipe

    if BEGIN not in current or END not in current:
        raise SystemExit(f"{DOC}: markers {BEGIN!r} / {END!r} not found")
    head, rest = current.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{BEGIN}\n\n{render_tables(Recipe)}\n{END}{tail}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--check", action="store_true", help="exit 1 if docs/recipes.md is out of date"
    )
    args = parser.parse_args(argv)
    current = DOC.read_text()
    fresh = render_doc(current)
    if args.check:
        if fresh != current:
            print(f"{DOC} is out of date: run python scripts/gen_recipe_docs.py", file=sys.stderr)
            return 1
        return 0
    if fresh != current:
        DOC.write_text(fresh)
        print(f"wrote {DOC}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
