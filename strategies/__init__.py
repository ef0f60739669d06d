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

from plumbing.errors import UserError
from strategies.base import (
    Arrivals,
    Availability,
    CallTimings,
    LoadTimings,
    ModelHandle,
    Session,
    SessionOptions,
    Strategy,
)

__all__ = [
    "Arrivals", "Availability", "CallTimings", "LoadTimings", "ModelHandle", "Session", "SessionOptions", "Strategy",
    "register", "discover", "get", "names", "known", "settings_for",
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
    """The strategy called ``name``; ``BASE@VARIANT`` is BASE with its variant setting fixed (its own
    strategy in a run, its own cells and results)."""
    discover()
    base, sep, variant = name.partition("@")
    if base not in _REGISTRY:
        raise UserError(f"unknown strategy {name!r}; available: {', '.join(sorted(_REGISTRY))}")
    cls = _REGISTRY[base]
    strategy = cls()
    if sep:
        if variant not in cls.variants:
            has = f"its variants: {', '.join(f'{base}@{v}' for v in cls.variants)}" if cls.variants else "it has no variants"
            raise UserError(f"unknown strategy {name!r}: {has}")
        strategy.name = name  # type: ignore[misc]  # the instance's own name: its cells say which variant ran
    return strategy


def known(name: str, available: list[str] | tuple[str, ...]) -> bool:
    """Whether ``name`` is one of ``available`` or a variant (BASE@VARIANT) of one."""
    base, sep, variant = name.partition("@")
    if not sep:
        return name in available
    return base in available and base in _REGISTRY and variant in _REGISTRY[base].variants


def settings_for(name: str, settings: dict[str, dict]) -> dict:
    """The settings a cell of strategy ``name`` runs with: [strategy.BASE], then [strategy.BASE@VARIANT],
    then the variant itself."""
    base, sep, variant = name.partition("@")
    merged = dict(settings.get(base, {}))
    if sep:
        merged.update(settings.get(name, {}))
        merged[_REGISTRY[base].variant_key] = variant
    return merged
