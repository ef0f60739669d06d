"""A C# application embedding CPython through its C API directly (CapiRunner.cs: P/Invoke, no
pythonnet in the call path), the pattern of DotNetPy-style embedding layers: the model stays in the
Python heap, inputs cross as zero-copy memoryviews over pinned .NET arrays, outputs come back through
the buffer protocol, and only shapes and dtypes cross as JSON text. Runs on CoreCLR or Mono."""

from strategies.clr_capi.strategy import ClrCapi

__all__ = ["ClrCapi"]
