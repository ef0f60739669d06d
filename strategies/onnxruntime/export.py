"""The ONNX export every ONNX Runtime route runs (Python, C++, and any later caller of the same file).

One export per model, cached by content under ``$BENCH_CACHE_DIR/onnx-export/``: the strategies that
run it hard-link it into their own artifact folders, so the Python and C++ callers measure the very
same file and the model is exported once, not once per route."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from pathlib import Path

from strategies.base import ModelHandle, package_version

MODEL_FILE = "model.onnx"
INFO_FILE = "export.json"
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


def exporter_id() -> str:
    """What decides the exported file besides the model: this module and the exporters' versions.
    Routes that run the file put it in their runtime versions, so their caches follow it."""
    h = hashlib.sha256(Path(__file__).read_bytes())
    for dist in ("torch", "onnx", "onnxscript"):
        h.update(f"{dist}={package_version(dist)}".encode())
    return h.hexdigest()[:16]


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
    return {"exporter": "torch.onnx.export(dynamo=True, optimize=True)",
            "opset": max((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), default=0),
            "nodes": len(proto.graph.node)}


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:  # another file system
        shutil.copyfile(src, dst)


def export_into(model: ModelHandle, out_dir: Path, cache_root: Path | None) -> dict:
    """Put the model's ONNX file (and export.json) into out_dir, exporting only on a cache miss.

    A model without a content hash (built ad hoc, e.g. in a test) is exported straight into out_dir:
    without the hash there is no safe key."""
    if not model.content_hash or cache_root is None:
        info = export_onnx(model, out_dir / MODEL_FILE)
        (out_dir / INFO_FILE).write_text(json.dumps(info))
        return info
    key = hashlib.sha256(json.dumps([exporter_id(), model.content_hash, model.seed, model.spec.to_json()],
                                    sort_keys=True).encode()).hexdigest()[:20]
    shared = cache_root / "onnx-export" / f"{model.spec.name}-{key}"
    if not (shared / INFO_FILE).exists():
        tmp = shared.with_name(f"{shared.name}.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        try:
            info = export_onnx(model, tmp / MODEL_FILE)
            (tmp / INFO_FILE).write_text(json.dumps(info))
            if shared.exists():  # another process got there first
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                os.replace(tmp, shared)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    for name in (MODEL_FILE, INFO_FILE):
        _link_or_copy(shared / name, out_dir / name)
    info = json.loads((out_dir / INFO_FILE).read_text())
    return info
