"""Strategy registry.

Every subpackage of ``strategies/`` is imported on discovery; it registers its strategy classes with
``@register``. Strategies outside this folder register the same way from a plugin module (config
``plugins = [...]`` or ``--plugin MODULE``) or an entry point in the ``interop_bench.strategies`` group.
The runner only ever talks to the registry and the ``Strategy``/``Session`` interface.
"""

from __future__ import annotations

import importlib
import pkgutil
from importlib.metadata import entry_points

from bench.errors import UserError
from strategies.base import (
    Availability,
    CallTimings,
    LoadTimings,
    ModelHandle,
    Session,
    SessionOptions,
    Strategy,
)

__all__ = [
    "Availability", "CallTimings", "LoadTimings", "ModelHandle", "Session", "SessionOptions", "Strategy",
    "register", "discover", "get", "names",
]

_REGISTRY: dict[str, type[Strategy]] = {}
_DISCOVERED = False
_BROKEN: dict[str, str] = {}  # subpackage -> import error, shown by `bench list`


def register(cls: type[Strategy]) -> type[Strategy]:
    name = getattr(cls, "name", None)
    if not name:
        raise TypeError(f"{cls.__qualname__} has no name")
    existing = _REGISTRY.get(name)
    if existing is not None and existing is not cls and existing.__qualname__ != cls.__qualname__:
        raise TypeError(f"strategy name {name!r} registered twice ({existing.__module__}, {cls.__module__})")
    _REGISTRY[name] = cls
    return cls


def discover(plugins: tuple[str, ...] | list[str] = ()) -> None:
    global _DISCOVERED
    if not _DISCOVERED:
        for info in pkgutil.iter_modules(__path__):
            if info.ispkg:
                try:
                    importlib.import_module(f"{__name__}.{info.name}")
                except Exception as e:  # one broken strategy must not hide the others
                    _BROKEN[info.name] = f"{type(e).__name__}: {e}"
        for ep in entry_points(group="interop_bench.strategies"):
            try:
                ep.load()
            except Exception as e:
                _BROKEN[ep.name] = f"{type(e).__name__}: {e}"
        _DISCOVERED = True
    for module in plugins:
        try:
            importlib.import_module(module)
        except Exception as e:
            raise UserError(f"strategy plugin {module!r} cannot be imported: {type(e).__name__}: {e}") from e


def names() -> list[str]:
    discover()
    return sorted(_REGISTRY)


def broken() -> dict[str, str]:
    discover()
    return dict(_BROKEN)


def get(name: str) -> Strategy:
    discover()
    if name not in _REGISTRY:
        raise UserError(f"unknown strategy {name!r}; available: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]()
