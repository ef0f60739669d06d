"""OpenVINO Runtime on the CPU device.

Source of the graph: the ONNX export the ONNX Runtime routes share (``strategies.shared.onnx_export``:
the exporter their selection chose, as plain ONNX, dynamic batch), read by OpenVINO's ONNX frontend
and saved as IR (model.xml/.bin, fp32 weights) in ``prepare()``; ``open()`` reads the IR and runs ``compile_model``, so cold start counts
both. Why ONNX and not ``ov.convert_model(torch_module)``, measured at 1 thread, latency hint, fp32
(median µs per call, batch 1 / 8, this 2-vCPU AMD EPYC, OpenVINO 2026.4.1):

    model        convert_model(module)   convert_model(torch.export)   ONNX file
    mlp          56.9 / 64.5             56.9 / 64.1                   57.5 / 63.8
    cnn          60.0 / 201.0            59.7 / 200.0                  60.7 / 200.6
    transformer  109.9 / 367.8           145.0 / 459.5                 110.9 / 373.9

Converting the module directly traces it with TorchScript, which silently bakes one branch of
data-dependent control flow into the graph (``tests/byom_models.py:make_data_dependent`` converts
"fine" and then gives wrong answers for half its inputs); converting a ``torch.export`` program fails
loudly like the ONNX export but runs the transformer 30% slower. The ONNX file is as fast as tracing,
fails loudly, and is the export the ``onnxruntime`` routes start from, so they compare runtimes more
than exporters. The cache key includes the exporter's identity for that reason.

The batch dimension stays dynamic (one compiled model serves every batch): a static-shape compile is
faster (see ``DYNAMIC_BATCH_COST`` in describe()), but the cell's batch is only known from the first
input, and compiling there would hide the compile in a timed call.

Inference precision is pinned to f32: on CPUs with AVX512-BF16/AMX, OpenVINO's default is bf16,
which misses the models' tolerances against eager torch and is not the computation the others do.
"""

from __future__ import annotations

import json
import re
import shutil
import threading
import time
from pathlib import Path
from typing import Any

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

MODEL_XML = "model.xml"
ONNX_DIR = "onnx"  # the shared ONNX export, linked in while converting; removed once the IR is written
INFO_FILE = "convert.json"
DEVICE = "CPU"
SOURCE = "the ONNX Runtime routes' ONNX export -> OpenVINO IR"
# Measured (identity model, 1 MiB in/out, 1 thread, infer(list)): share_outputs=True views 59 µs per call,
# copied outputs 83 µs; copy-in 94 µs vs shared-in 83 µs. Views would be overwritten by the same
# thread's next call, so outputs are copied.
OUTPUTS = "copied out of the request's output tensor: a view would be overwritten by the next call"
INPUTS = "ov.Tensor over the NumPy buffers (shared_memory=True, no copy) set on the request"
DYNAMIC_BATCH_COST = ("a dynamic batch costs, vs a static-shape compile at 1 thread, batch 1 / 8: mlp 9% / 4%, "
                      "cnn 11% / 3%, transformer 28% / 11%; kept dynamic")


class ConversionError(RuntimeError):
    """The model could not be exported or converted for OpenVINO; the message is one line."""


def conversion_failure(e: Exception, stage: str) -> ConversionError:
    """OpenVINO's messages stack 'Exception from src/...:NN:' lines and blank lines around the cause;
    keep the cause on one line, without ANSI colours. The full text stays in the traceback."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(e))
    lines = [ln.strip() for ln in text.splitlines()]
    lines = [ln for ln in lines if ln and not re.fullmatch(r"Exception from \S+:\d+:?", ln)]
    cause = re.sub(r"\s+", " ", " ".join(lines)).strip() or type(e).__name__
    return ConversionError(f"OpenVINO {stage} failed ({type(e).__name__}): {cause[:300]}")


def convert(model: ModelHandle, out_dir: Path) -> dict[str, Any]:
    """Take the shared ONNX export (dynamic batch), read it with OpenVINO, pin every non-batch
    dimension, save IR. Of the ONNX variants, the exporter that ONNX Runtime's selection chose, as
    plain ONNX: a file through ORT's transformer optimizer holds ORT-only fused ops."""
    import openvino as ov

    from plumbing.cache import default_cache_dir
    from strategies.shared.onnx_export import export_into

    spec = model.spec
    onnx_dir = out_dir / ONNX_DIR
    onnx_dir.mkdir()
    t0 = time.perf_counter()
    try:
        export = export_into(model, onnx_dir, default_cache_dir())
    except Exception as e:  # ExportError is one line already (the onnxruntime strategy's export_failure)
        shutil.rmtree(onnx_dir, ignore_errors=True)
        one_line = "\n" not in str(e) and "\x1b" not in str(e)
        raise (ConversionError(f"OpenVINO: {e}") if one_line else conversion_failure(e, "ONNX export")) from e
    exporter = export["chosen"].split("/")[0].removesuffix("+ortopt")
    onnx_path = onnx_dir / "variants" / f"{exporter}.onnx"
    t1 = time.perf_counter()
    try:
        ov_model = ov.Core().read_model(str(onnx_path))
        names = [p.get_any_name() for p in ov_model.inputs]
        if sorted(names) != sorted(t.name for t in spec.inputs):
            raise ValueError(f"model inputs {names} differ from the spec's {[t.name for t in spec.inputs]}")
        def dim(d: int | str) -> Any:  # batch: any; a named dimension: its range; the rest static
            if d == "batch":
                return -1
            return ov.Dimension(*spec.dims[d][:2]) if isinstance(d, str) else int(d)

        shapes = {t.name: ov.PartialShape([dim(d) for d in t.shape]) for t in spec.inputs}
        ov_model.reshape(shapes)  # batch dynamic, the rest static: the CPU plugin plans for them
        ov.save_model(ov_model, str(out_dir / MODEL_XML), compress_to_fp16=False)
    except Exception as e:
        raise conversion_failure(e, "conversion") from e
    finally:
        shutil.rmtree(onnx_dir, ignore_errors=True)
    info = {"export_s": t1 - t0, "convert_s": time.perf_counter() - t1, "source": f"{SOURCE}: {exporter} exporter",
            "inputs": {k: str(v) for k, v in shapes.items()}}
    (out_dir / INFO_FILE).write_text(json.dumps(info))
    return info


def compile_config(options: SessionOptions) -> dict[str, Any]:
    """The CPU plugin's settings for one cell: its threads, and streams for its callers."""
    threads = max(1, int(options.threads))
    callers = max(1, int(options.concurrency))
    config: dict[str, Any] = {"INFERENCE_NUM_THREADS": threads, "INFERENCE_PRECISION_HINT": "f32"}
    if callers == 1:
        config |= {"PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1}
    else:
        # N streams of `threads` threads (INFERENCE_NUM_THREADS is the total over all streams), so N
        # callers run at once, as with torch, whose OpenMP gives each caller its own team. ONNX
        # Runtime's callers share one session's intra-op pool instead, so at threads >= 2 this gives
        # OpenVINO more threads than ORT under load; at one thread (the default) every route runs N
        # calls on N threads. With fewer streams the requests would queue behind each other.
        config |= {"PERFORMANCE_HINT": "THROUGHPUT", "NUM_STREAMS": callers, "INFERENCE_NUM_THREADS": threads * callers,
                   "PERFORMANCE_HINT_NUM_REQUESTS": callers}
    return config


class OpenVinoSession(Session):
    def __init__(self, model: ModelHandle, xml: Path, options: SessionOptions) -> None:
        import openvino as ov

        self._ov_version = ov.get_version()
        self._tensor = ov.Tensor
        info = xml.with_name(INFO_FILE)
        self._source = json.loads(info.read_text()).get("source", SOURCE) if info.exists() else SOURCE
        self.config = compile_config(options)
        core = ov.Core()
        self.compiled = core.compile_model(str(xml), DEVICE, self.config)
        spec = model.spec
        self._input_names = [p.get_any_name() for p in self.compiled.inputs]  # positional feed order
        outs = self.compiled.outputs
        self._output_names = (list(spec.outputs) if len(spec.outputs) == len(outs)
                              else ["output"] if len(outs) == 1 else [f"output_{i}" for i in range(len(outs))])
        self._local = threading.local()
        self._lock = threading.Lock()
        self._requests: list[Any] = []
        self._callers = max(1, int(options.concurrency))

    def request(self) -> Any:
        """This thread's InferRequest: concurrent callers never share one."""
        req = getattr(self._local, "request", None)
        if req is None:
            req = self.compiled.create_infer_request()
            self._local.request = req
            with self._lock:
                self._requests.append(req)
        return req

    def run(self, inputs: Arrays) -> dict[str, np.ndarray]:
        # Tensors over the NumPy buffers, set on this thread's request; infer(); outputs copied out.
        # Measured at 1 thread: identity 1 KiB 12 µs, mlp batch 1 37 µs per call, against 30 and 58 µs
        # through InferRequest.infer(list, share_inputs=True), whose Python-side conversions cost ~20 µs.
        req = self.request()
        tensor = self._tensor
        for i, name in enumerate(self._input_names):
            req.set_input_tensor(i, tensor(inputs[name], shared_memory=True))
        req.infer()
        return {name: req.get_output_tensor(i).data.copy() for i, name in enumerate(self._output_names)}

    def applied(self) -> dict[str, Any]:
        """What the compiled model actually runs with, read back from the plugin."""
        c = self.compiled
        return {
            "hint": str(c.get_property("PERFORMANCE_HINT")).rsplit(".", 1)[-1],
            "streams": int(c.get_property("NUM_STREAMS")),
            "threads": int(c.get_property("INFERENCE_NUM_THREADS")),
            "precision": c.get_property("INFERENCE_PRECISION_HINT").get_type_name(),
            "optimal_requests": int(c.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")),
            "cpu_pinning": bool(c.get_property("ENABLE_CPU_PINNING")),
        }

    def describe(self) -> dict[str, Any]:
        a = self.applied()
        return {
            "source": self._source,
            "device": DEVICE,
            "openvino": self._ov_version,
            "hint": a["hint"],
            "streams": a["streams"],
            "threads": a["threads"],
            "streams_rule": "1 caller: LATENCY, 1 stream; N callers: THROUGHPUT, N streams of the cell's threads each "
                            "(OpenVINO caps them at one per core)",
            "infer_requests": f"one per calling thread ({self._callers} caller(s))",
            "precision": a["precision"],
            "cpu_pinning": a["cpu_pinning"],
            "dynamic_batch": True,
            "dynamic_batch_cost": DYNAMIC_BATCH_COST,
            "inputs": INPUTS,
            "outputs": OUTPUTS,
        }

    def close(self) -> None:
        with self._lock:
            self._requests.clear()
        self._local = threading.local()
        self.compiled = None


@register
class OpenVino(Strategy):
    languages = ("python",)  # measured through OpenVINO's Python API; its C/C++ API would serve C++ callers
    python_at_deployment = True
    artifact = "OpenVINO IR (converted from the ONNX file)"
    exporter = "torch.onnx, then OpenVINO's converter"
    runtime_modules = ("openvino",)
    settings_keys = ()
    name = "openvino"
    summary = "OpenVINO Runtime CPU: shared ONNX export -> IR, dynamic batch, f32, one infer request per caller"
    needs_artifacts = True
    prepare_hint = "torch.onnx.export + conversion to OpenVINO IR, a few seconds"

    def available(self) -> Availability:
        for module, install in (("openvino", "pip install openvino"), ("onnx", "pip install onnx"),
                                ("onnxscript", "pip install onnxscript")):
            a = Availability.missing_module(module, install)
            if not a.ok:
                return a
        return Availability(True)

    def runtime_versions(self) -> dict[str, str]:
        from strategies.shared.onnx_export import exporter_id

        return {**{d: package_version(d) for d in ("openvino", "onnx", "onnxscript", "torch")},
                "onnx export": exporter_id()}

    def prepare(self, model: ModelHandle, out_dir: Path) -> None:
        convert(model, out_dir)

    def open(self, model: ModelHandle, artifacts: Path | None, options: SessionOptions) -> Session:
        assert artifacts is not None
        return OpenVinoSession(model, artifacts / MODEL_XML, options)
