"""Scenario registry: each module of ``bench/scenarios/`` registers one kind of measurement with
``@register``; a plugin module (config ``plugins = [...]``, the same list strategies use) registers
more the same way. Everything else reaches scenarios through ``get``/``names`` and the ``Scenario``
class (``bench.scenarios.base``)."""

from __future__ import annotations

import importlib
import pkgutil

from bench.scenarios.base import Context, Measured, Metric, Option, Scenario
from bench.sections import Curve, Section, Table
from plumbing.errors import UserError

__all__ = ["Context", "Curve", "Measured", "Metric", "Option", "Scenario", "Section", "Table",
           "register", "discover", "get", "lookup", "names", "infer", "LEGACY"]

_REGISTRY: dict[str, Scenario] = {}
_DISCOVERED = False
# which scenario a cell recorded before scenarios existed belongs to (see ``infer``)
LEGACY = ("latency", "closed-loop", "payload")


def register(cls: type[Scenario]) -> type[Scenario]:
    name = getattr(cls, "name", None)
    if not name:
        raise TypeError(f"{cls.__qualname__} has no name")
    existing = _REGISTRY.get(name)
    if existing is not None and type(existing).__qualname__ != cls.__qualname__:
        raise TypeError(f"scenario name {name!r} registered twice ({type(existing).__module__}, {cls.__module__})")
    _REGISTRY[name] = cls()
    return cls


def discover(plugins: tuple[str, ...] | list[str] = ()) -> None:
    global _DISCOVERED
    if not _DISCOVERED:
        for info in pkgutil.iter_modules(__path__):
            if info.name != "base":
                importlib.import_module(f"{__name__}.{info.name}")
        _DISCOVERED = True
    for module in plugins:
        try:
            importlib.import_module(module)
        except Exception as e:
            raise UserError(f"plugin {module!r} cannot be imported: {type(e).__name__}: {e}") from e


def names() -> list[str]:
    discover()
    return list(_REGISTRY)


def get(name: str) -> Scenario:
    discover()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UserError(f"unknown scenario {name!r}; available: {', '.join(_REGISTRY)}") from None


def lookup(name: str) -> Scenario:
    """The scenario of recorded cells: registered, or (a plug-in not importable any more) a plain one
    that compares their latency samples and has no report part of its own."""
    discover()
    return _REGISTRY.get(name) or Scenario()


def infer(cell: dict) -> str:
    """The scenario of a cell recorded before cells named theirs: the identity sweep was the payload
    scenario, several callers closed-loop, one caller latency."""
    if cell.get("scenario"):
        return cell["scenario"]
    if cell.get("model") == "identity":
        return "payload"
    return "closed-loop" if int(cell.get("concurrency", 1)) > 1 else "latency"
