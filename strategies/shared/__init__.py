"""What several routes share, imported by each route that needs it (this package registers no strategy):

- ``onnx_export``: the one ONNX file every ONNX-consuming route runs (ONNX Runtime from Python, C# and
  C++, OpenVINO), exported with each exporter and chosen by measurement;
- ``ort_library``: where the onnxruntime wheel's native C library is, for the routes that load it
  without Python (C++, C#);
- ``dotnet``: the .NET side of every clr-* route (the runtimes, the one assembly compiled from every
  clr-* folder's C#, loading it).

A route's artifacts are keyed by its own folder and every module of ``strategies`` it imports
(``Strategy.source_hash``), so editing something shared rebuilds the routes that use it.
"""
