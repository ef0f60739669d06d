"""The model called from C#: Mono's CLR hosted through pythonnet, bulk or element-by-element marshaling."""

from strategies.clr.strategy import ClrEmbed, ClrNaive

__all__ = ["ClrEmbed", "ClrNaive"]
