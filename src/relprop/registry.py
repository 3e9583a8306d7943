"""Methods by name: ``get_method("rsp")``, ``list_methods()``."""

from __future__ import annotations

from typing import Callable, TypeVar

T = TypeVar("T", bound=type)

_METHODS: dict[str, type] = {}


def register(name: str) -> Callable[[T], T]:
    """Class decorator: make a method class reachable as ``get_method(name)``."""

    def add(cls: T) -> T:
        key = name.lower()
        if key in _METHODS and _METHODS[key] is not cls:
            raise ValueError(f"a method named '{key}' is already registered ({_METHODS[key].__name__}).")
        _METHODS[key] = cls
        return cls

    return add


def get_method(name: str) -> type:
    """The method class registered as ``name`` (case-insensitive); ValueError listing the valid names."""
    try:
        return _METHODS[name.lower()]
    except KeyError:
        raise ValueError(f"unknown method '{name}'; choose one of: {', '.join(list_methods())}.") from None


def list_methods() -> list[str]:
    """Registered method names, sorted."""
    return sorted(_METHODS)
