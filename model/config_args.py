"""Command-line options generated from a config class, so a field is declared once (its type, choices and the
docstring under it) and the command line cannot drift from it.

    parser = argparse.ArgumentParser()
    options = add_config_arguments(parser, TrainConfig, aliases={"manifests": ["--manifest"]})
    overrides = given_overrides(parser.parse_args(argv), options)      # only the options given on the line
    cfg = get_train_preset(stage, preset, **overrides)                  # defaults stay the preset's

Works for dataclasses and pydantic models. Each field becomes ``--field-name``: bools ``--x/--no-x``,
``Literal`` fields with ``choices``, lists ``nargs="+"`` (repeatable), tuples a fixed ``nargs``, ``X | None``
also takes ``none``, anything else (dicts, nested configs) a JSON or YAML mapping merged by the config.
Written here because the libraries that do this (jsonargparse, pydantic-settings' CLI source) would replace the
`smartedit` argparse tree and its flag spellings rather than add options to it.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import functools
import inspect
import sys
import textwrap
import types
import typing
from collections.abc import Callable, Iterable
from typing import Any, Literal

import yaml

_NONE = ("none", "null")


@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """The docstring under each annotated field of ``cls`` (and its bases), first line only."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__[:-1]):
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError):
            continue
        body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
        for node, nxt in zip(body, body[1:]):
            if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and isinstance(nxt, ast.Expr)
                    and isinstance(nxt.value, ast.Constant) and isinstance(nxt.value.value, str)):
                docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs


def config_fields(cls: type) -> dict[str, Any]:
    """Field name → resolved annotation, in declaration order (dataclass or pydantic model)."""
    if hasattr(cls, "model_fields"):
        return {name: info.annotation for name, info in cls.model_fields.items()}
    hints = typing.get_type_hints(cls, vars(sys.modules[cls.__module__]))
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.init}


def _strip_none(hint: Any) -> tuple[Any, bool]:
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return (rest[0] if len(rest) == 1 else typing.Union[tuple(rest)]), True
    return hint, False


def _optional(convert: Callable[[str], Any]) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        return None if text.strip().lower() in _NONE else convert(text)

    parse.__name__ = getattr(convert, "__name__", "value")
    return parse


def _mapping(text: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise argparse.ArgumentTypeError(f"not JSON/YAML: {err}") from None


_mapping.__name__ = "JSON"


def _option_kwargs(hint: Any) -> dict[str, Any]:
    inner, optional = _strip_none(hint)
    origin, args = typing.get_origin(inner), typing.get_args(inner)
    wrap = _optional if optional else (lambda f: f)
    if inner is bool:
        return {"action": argparse.BooleanOptionalAction}
    if origin is Literal:
        return {"type": wrap(type(args[0])), "choices": list(args) + ([None] if optional else []),
                "metavar": "{" + ",".join(map(str, args)) + "}"}
    if inner in (int, float, str):
        return {"type": wrap(inner)}
    if origin in (list, set, frozenset) and args:
        item = _option_kwargs(args[0])
        return {"nargs": "+", "action": "extend", "type": item.get("type", _mapping),
                **({"choices": item["choices"], "metavar": item["metavar"]} if "choices" in item else {})}
    if origin is tuple and args and Ellipsis not in args:
        return {"nargs": len(args), "type": _option_kwargs(args[0]).get("type", _mapping)}
    return {"type": _mapping}


def add_config_arguments(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    cls: type,
    *,
    skip: Iterable[str] = (),
    aliases: dict[str, list[str]] | None = None,
    types_: dict[str, Callable[[str], Any]] | None = None,
    prefix: str = "",
    help_suffix: str = "",
) -> dict[str, str]:
    """Add one option per field of ``cls`` (except ``skip``); defaults are left unset so that only the options
    given reach the config (the preset or class keeps its defaults). Returns option dest → field name."""
    docs = field_docs(cls)
    aliases, types_ = aliases or {}, types_ or {}
    dests: dict[str, str] = {}
    for name, hint in config_fields(cls).items():
        if name in skip:
            continue
        kwargs = _option_kwargs(hint)
        if name in types_:
            kwargs = {"type": types_[name]}
        dest = f"{prefix}{name}"
        flags = [f"--{prefix.replace('_', '-')}{name.replace('_', '-')}", *aliases.get(name, [])]
        help_text = (docs.get(name, "") + help_suffix).replace("%", "%%")
        parser.add_argument(*flags, dest=dest, default=argparse.SUPPRESS, help=help_text or None, **kwargs)
        dests[dest] = name
    return dests


def given_overrides(args: argparse.Namespace, dests: dict[str, str]) -> dict[str, Any]:
    """Field → value for the options that were given on the command line."""
    return {field: getattr(args, dest) for dest, field in dests.items() if hasattr(args, dest)}
