from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from strategies import register
from strategies.base import (
    Arrays,
    Availability,
    ModelHandle,
    Session,
    SessionOptions,
    Strategy,
    package_version,
)

MODEL_FILE = "model.onnx"
EXPORT_BATCH = 2  # torch.export specialises sizes 0 and 1, so trace the batch dimension at 2


class ExportError(RuntimeError):
    """The model could not be exported to ONNX; the message names the cause in one line."""


def export_failure(e: Exception) -> ExportError:
    """torch.onnx's messages run to pages with ANSI colours; keep the exception summary and the
    model line that raised it. The full text stays in the traceback."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(e))
    cause = text.strip().splitlines()[0] if text.strip() else type(e).__name__
    m = re.search(r"## Exception summary\s*\n\s*(.+)", text)
    if m:
        cause = re.sub(r"<class '(?:[\w.]+\.)?(\w+)'>", r"\1", m.group(1).strip())
    where = re.search(r'The following call raised this error:\s*\n\s*File "([^"]+)", line (\d+).*\n\s*(.+)', text)
    loc = f" at {Path(where.group(1)).name}:{where.group(2)} `{where.group(3).strip()}`" if where else ""
    return ExportError(f"ONNX export failed ({type(e).__name__}): {cause[:300]}{loc}")


def export_onnx(model: ModelHandle, path: Path) -> dict:
    """torch.onnx.export(dynamo=True) with every input's batch dimension dynamic."""
    import torch

    from fixtures.loading import to_torch_inputs

    spec = model.spec
    module = model.build()
    args = tuple(to_torch_inputs(spec, model.example_inputs(EXPORT_BATCH)))
    batch = torch.export.Dim("batch", min=1)
    dynamic_shapes = tuple({t.shape.index("batch"): batch} if "batch" in t.shape else {} for t in spec.inputs)
    try:
        program = torch.onnx.export(
            module, args, dynamo=True, input_names=[t.name for t in spec.inputs],
            output_names=list(spec.outputs), dynamic_shapes=dynamic_shapes, optimize=True, verbose=False,
        )
    except Exception as e:
        raise export_failure(e) from e
    if program is None:
        raise RuntimeError("torch.onnx.export returned no program")
    program.save(str(path))
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    return {"opset": max((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), default=0),
            "nodes": len(proto.graph.node)}


class OrtSession(Session):
    def __init__(self, path: Path, threads: int, settings: dict) -> None:
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if not settings.get("spinning", True):
            so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self._ort = ort
        self._sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        self._outputs = [o.name for o in self._sess.get_outputs()]
        self._from_numpy = ort.OrtValue.ortvalue_from_numpy
        self._run_opts = ort.RunOptions()

    def run(self, inputs: Arrays) -> dict[str, np.ndarray]:
        # OrtValues wrap the NumPy buffers (no copy in); OrtValue.numpy() views the output (no copy out).
        feed = {k: self._from_numpy(v) for k, v in inputs.items()}
        outs = self._sess.run_with_ort_values(self._outputs, feed, self._run_opts)
        return {name: o.numpy() for name, o in zip(self._outputs, outs)}


@register
class OnnxRuntime(Strategy):
    name = "onnxruntime"
    summary = "ONNX export (dynamo, dynamic batch) on ONNX Runtime CPU, OrtValues without copies"
    needs_artifacts = True
    prepare_hint = "torch.onnx.export, a few seconds"

    def available(self) -> Availability:
        for module in ("onnxruntime", "onnx", "onnxscript"):
            a = Availability.missing_module(module, f"pip install {module}")
            if not a.ok:
                return a
        return Availability(True)

    def runtime_versions(self) -> dict[str, str]:
        return {d: package_version(d) for d in ("onnxruntime", "onnx", "onnxscript", "torch")}

    def prepare(self, model: ModelHandle, out_dir: Path) -> None:
        info = export_onnx(model, out_dir / MODEL_FILE)
        (out_dir / "export.json").write_text(json.dumps(info))

    def open(self, model: ModelHandle, artifacts: Path | None, options: SessionOptions) -> Session:
        assert artifacts is not None
        return OrtSession(artifacts / MODEL_FILE, options.threads, dict(options.settings))
