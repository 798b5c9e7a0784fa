"""Generic type checks of plugin parameters against their factory's simple annotations.

A profile value reaches a plugin's factory as TOML gave it: text where a number is meant
("512"), a number where a list is meant, a list with text in it. A factory annotated with
simple types (int, float, str, bool, list[X], tuple[X, ...], tuple[X, Y], X | None) gets
each value checked before it is called, so the user reads "det_sizes: expected a list of
integers, got 'x' (text)" instead of whatever the first arithmetic on the value raises.
Any other annotation (Any, a class, a Literal, a dict) is left to the factory.
"""

from __future__ import annotations

import inspect
import types
import typing
from collections.abc import Callable
from typing import Any

_NAMES = {bool: "true or false", int: "an integer", float: "a number", str: "text"}
_PLURALS = {bool: "true/false values", int: "integers", float: "numbers", str: "texts"}
_KINDS = {bool: "true/false", int: "integer", float: "number", str: "text", list: "list"}


def init_chain(factory: Callable[..., Any]) -> list[Callable[..., Any]]:
    """The functions that take a factory's keyword parameters: the function itself, or for
    a class every ``__init__`` it defines along its MRO, the subclass's first."""
    if not inspect.isclass(factory):
        return [factory]
    return [vars(c)["__init__"] for c in factory.__mro__ if "__init__" in vars(c)]


def factory_hints(factory: Callable[..., Any]) -> dict[str, Any]:
    """The resolved annotation of each parameter of ``factory`` (a function or a class,
    following its ``__init__`` chain; a subclass's annotation wins). A function whose
    annotations cannot be resolved contributes none: its values are not checked."""
    hints: dict[str, Any] = {}
    for function in reversed(init_chain(factory)):
        try:
            found = typing.get_type_hints(function)
        except Exception:  # a hint naming what this process cannot import: not checkable
            continue
        hints.update((name, hint) for name, hint in found.items() if name != "return")
    return hints


def _all_fit(values: list[Any] | tuple[Any, ...], hints: list[Any]) -> bool | None:
    results = [fits(value, hint) for value, hint in zip(values, hints, strict=True)]
    return False if False in results else None if None in results else True


def _float64(value: int) -> bool:
    try:
        float(value)
    except OverflowError:
        return False
    return True


def fits(value: object, hint: Any) -> bool | None:
    """Whether ``value`` fits a simple annotation; None when the annotation is not simple
    (then nothing is known). A bool is not an integer and an integer is a number (if a
    float64 holds it)."""
    if hint is bool or hint is str:
        return isinstance(value, hint)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:  # an integer no float64 holds (10**400) is not a number here
        return isinstance(value, float) or (
            isinstance(value, int) and not isinstance(value, bool) and _float64(value)
        )
    if hint is type(None):
        return value is None
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        results = [fits(value, arm) for arm in args]
        return True if True in results else None if None in results else False
    if origin not in (list, tuple) or not args:
        return None
    if not isinstance(value, list | tuple):
        return False
    if origin is list or args[-1] is Ellipsis:
        return _all_fit(value, [args[0]] * len(value))
    return len(value) == len(args) and _all_fit(value, list(args))


def describe(hint: Any) -> str:
    """A simple annotation in the words of a profile's author ("a list of integers")."""
    if hint in _NAMES:
        return _NAMES[hint]
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        words = [describe(arm) for arm in args if arm is not type(None)]
        return " or ".join(dict.fromkeys(words))
    if origin is list or (origin is tuple and len(args) == 2 and args[1] is Ellipsis):
        return f"a list of {_PLURALS.get(args[0], 'values')}"
    if origin is tuple:
        return f"a list of {len(args)} values ({', '.join(describe(arm) for arm in args)})"
    return str(hint)


def wrong_types(factory: Callable[..., Any], params: dict[str, Any]) -> list[str]:
    """One "key: expected ..., got ..." line per value that does not fit its annotation."""
    hints = factory_hints(factory)
    problems = []
    for key, value in params.items():
        if key in hints and fits(value, hints[key]) is False:
            shown = repr(value) if len(repr(value)) <= 80 else f"{repr(value)[:80]}..."
            kind = _KINDS.get(type(value), "table" if isinstance(value, dict) else "value")
            problems.append(f"{key}: expected {describe(hints[key])}, got {shown} ({kind})")
    return problems
