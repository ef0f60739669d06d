"""The ONNX file every ONNX Runtime route runs (Python, C++, and any later caller of the same file),
chosen the way a careful team would ship it.

At prepare time the model is exported by each exporter (the dynamo exporter; the TorchScript-based
one while torch ships it; ORT's transformer optimizer over either, where it fuses something), each
file is checked against eager torch at each graph optimization level, the correct ones are timed
briefly, and the fastest becomes model.onnx with its level; export.json records every variant's time
or why it lost. A setting (`variant = "torchscript/EXTENDED"`) forces another.

One selection per model, cached by content under ``$BENCH_CACHE_DIR/onnx-export/``: the strategies
hard-link it into their own artifact folders, so the Python and C++ callers measure the very same
file, and the model is exported once, not once per route."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

from strategies.base import CliFlag, ModelHandle, exporter_cause, package_version

MODEL_FILE = "model.onnx"
INFO_FILE = "export.json"
EXPORT_BATCH = 2  # torch.export specialises sizes 0 and 1, so trace the batch dimension at 2


class ExportError(RuntimeError):
    """The model could not be exported to ONNX; the message names the cause in one line."""


def export_failure(e: Exception) -> ExportError:
    return ExportError(f"ONNX export failed ({type(e).__name__}): {exporter_cause(e)}")


def exporter_id() -> str:
    """What decides the chosen file besides the model: this module, the exporters' versions and the
    ONNX Runtime the variants were checked and timed on.
    Routes that run the file put it in their runtime versions, so their caches follow it."""
    h = hashlib.sha256(Path(__file__).read_bytes())
    for dist in ("torch", "onnx", "onnxscript", "onnxruntime"):  # ORT: the selection checked and timed on it
        h.update(f"{dist}={package_version(dist)}".encode())
    return h.hexdigest()[:16]


def _graph_info(path: Path) -> dict:
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    ops: dict[str, int] = {}
    for node in proto.graph.node:
        ops[node.op_type] = ops.get(node.op_type, 0) + 1
    return {"opset": max((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), default=0),
            "nodes": len(proto.graph.node), "ops": ops}


def export_onnx(model: ModelHandle, path: Path) -> dict:
    """torch.onnx.export(dynamo=True) with every input's batch dimension dynamic."""
    import torch

    from fixtures.loading import to_torch_inputs

    spec = model.spec
    args = tuple(to_torch_inputs(spec, model.example_inputs(EXPORT_BATCH)))
    try:
        program = torch.onnx.export(
            model.build(), args, dynamo=True, input_names=[t.name for t in spec.inputs],
            output_names=list(spec.outputs), dynamic_shapes=model.dynamic_shapes(), optimize=True, verbose=False,
        )
    except Exception as e:
        raise export_failure(e) from e
    if program is None:
        raise RuntimeError("torch.onnx.export returned no program")
    program.save(str(path))
    return {"exporter": "torch.onnx.export(dynamo=True, optimize=True)", **_graph_info(path)}


def export_torchscript_based(model: ModelHandle, path: Path) -> dict:
    """The TorchScript-based exporter (dynamo=False, opset 18, batch axes dynamic). It traces, so a
    branch on a tensor's value would be frozen into the graph: the tracer's warning that it turned a
    tensor into a Python bool rejects the file. (A trace specialised to the batch size is caught by
    the selection's check at two batch sizes.)"""
    import warnings

    import torch

    from fixtures.loading import to_torch_inputs

    spec = model.spec
    args = tuple(to_torch_inputs(spec, model.example_inputs(EXPORT_BATCH)))
    axes = {t.name: {i: d for i, d in enumerate(t.shape) if isinstance(d, str)} for t in spec.inputs}
    axes.update({o: {0: "batch"} for o in spec.outputs})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", torch.jit.TracerWarning)
        try:
            torch.onnx.export(model.build(), args, str(path), dynamo=False, opset_version=18,
                              input_names=[t.name for t in spec.inputs], output_names=list(spec.outputs),
                              dynamic_axes=axes)
        except Exception as e:
            raise export_failure(e) from e
    # The model's own code is held to the rule. A library's tensor-to-bool conversions under tracing
    # (transformers compares shapes: the sequence length, which the spec fixes) are counted, not
    # refused: the file is still checked against eager torch at two batch sizes before it is used.
    import sysconfig

    libs = tuple(str(Path(sysconfig.get_paths()[k]).resolve()) for k in ("purelib", "platlib"))
    bools = [w for w in caught if issubclass(w.category, torch.jit.TracerWarning) and "Python boolean" in str(w.message)]
    traced = [w for w in bools if not str(Path(w.filename).resolve()).startswith(libs)]
    if traced:
        first = str(traced[0].message).strip().splitlines()[0]
        raise ExportError(f"the trace may not generalise (TracerWarning): {first[:200]}")
    return {"exporter": "torch.onnx.export(dynamo=False, opset 18)", **_graph_info(path),
            **({"library_trace_warnings": len(bools)} if bools else {})}


def optimize_for_transformers(src: Path, path: Path) -> dict:
    """ONNX Runtime's transformer optimizer (model_type "bert"); fails when it fuses nothing, since
    then the file is the same graph as its source."""
    from onnxruntime.transformers import optimizer

    opt = optimizer.optimize_model(str(src), model_type="bert", num_heads=0, hidden_size=0, opt_level=0)
    fused = {k: v for k, v in opt.get_fused_operator_statistics().items() if v}
    if not fused:
        raise ExportError("ORT's transformer optimizer recognised nothing to fuse in this model")
    opt.save_model_to_file(str(path))
    return {"exporter": "ORT transformer optimizer (bert)", "fused": fused, **_graph_info(path)}


EXPORTERS = {"dynamo": export_onnx, "torchscript": export_torchscript_based}
#: ONNX Runtime's graph optimization levels, by the value its C and Python APIs take
LEVELS = {"BASIC": 1, "EXTENDED": 2, "ALL": 99}
SELECTION_BATCHES = (1, 8)  # timed at these batch sizes, one intra-op thread
SELECTION_SECONDS = 0.15  # per variant and batch size, over SELECTION_ROUNDS rotating rounds
SELECTION_ROUNDS = 3


def ort_session(path: Path, level: str, threads: int = 1, spinning: bool = True):
    """An ONNX Runtime session as every Python caller here opens one: CPU provider, the given intra-op
    threads, one inter-op thread, sequential execution, the given optimization level."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel(LEVELS[level])
    if not spinning:
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def _median_call_s(fn, seconds: float) -> float:
    import time

    import numpy as np

    for _ in range(3):
        fn()
    times = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end or len(times) < 5:
        t0 = time.perf_counter_ns()
        fn()
        times.append(time.perf_counter_ns() - t0)
    return float(np.median(times)) / 1e9


def select_variant(model: ModelHandle, out_dir: Path) -> dict:
    """Export every way a careful team would try, check each file at each optimization level against
    eager torch, time the correct ones briefly side by side, and keep the fastest as model.onnx.

    Returns the record written to export.json: the chosen variant and every variant's figures or the
    reason it lost. Raises the dynamo exporter's one-line error when nothing exports at all."""
    import math

    import numpy as np
    import torch

    from fixtures.loading import outputs_to_dict, to_torch_inputs

    spec = model.spec
    module = model.build()
    checks = {}
    for b in (1, 3):  # two batch sizes: a fixed batch axis fails here
        x = model.example_inputs(b)
        with torch.inference_mode():
            ref = outputs_to_dict(module(*to_torch_inputs(spec, x)), spec.outputs)
        checks[b] = (x, {k: v.numpy() for k, v in ref.items()})
    timed = {b: model.example_inputs(b) for b in SELECTION_BATCHES}

    vdir = out_dir / "variants"
    vdir.mkdir(exist_ok=True)
    files: dict[str, dict] = {}
    failures: list[dict] = []
    first_error: Exception | None = None
    for name, export in EXPORTERS.items():
        try:
            files[name] = export(model, vdir / f"{name}.onnx")
        except Exception as e:
            first_error = first_error or e
            failures.append({"variant": name, "lost": f"export failed: {str(e)[:300]}"})
    for name in list(files):
        try:
            files[f"{name}+ortopt"] = optimize_for_transformers(vdir / f"{name}.onnx", vdir / f"{name}+ortopt.onnx")
        except Exception as e:
            failures.append({"variant": f"{name}+ortopt", "lost": str(e).splitlines()[0][:300] if str(e) else type(e).__name__})
    if not files:
        assert first_error is not None
        raise first_error if isinstance(first_error, ExportError) else export_failure(first_error)

    variants: list[dict] = []
    runnable: list[tuple[dict, Any, list[str]]] = []
    for name, info in files.items():
        for level in LEVELS:
            v = {"variant": f"{name}/{level}", "file": f"variants/{name}.onnx", "level": level,
                 **{k: info[k] for k in ("exporter", "opset", "nodes") if k in info}}
            variants.append(v)
            try:
                sess = ort_session(vdir / f"{name}.onnx", level)
                names = [o.name for o in sess.get_outputs()]
                for b, (x, ref) in checks.items():
                    got = dict(zip(names, sess.run(names, x)))
                    for k, e in ref.items():
                        if k not in got or got[k].shape != e.shape or not np.allclose(got[k], e, atol=spec.atol, rtol=spec.rtol):
                            raise ValueError(f"output {k} differs from eager torch at batch {b}")
                runnable.append((v, sess, names))
            except Exception as e:
                v["lost"] = f"{type(e).__name__}: {str(e).strip().splitlines()[0][:200] if str(e).strip() else ''}"
    # side by side in rotating rounds, so drift on a shared machine does not pick the winner
    samples: dict[tuple[int, int], list[float]] = {}
    for r in range(SELECTION_ROUNDS):
        order = runnable[r % max(len(runnable), 1):] + runnable[:r % max(len(runnable), 1)]
        for v, sess, names in order:
            for b, x in timed.items():
                t = _median_call_s(lambda s=sess, x=x, n=names: s.run(n, x), SELECTION_SECONDS / SELECTION_ROUNDS)
                samples.setdefault((id(v), b), []).append(t)
    for v, _, _ in runnable:
        for b in SELECTION_BATCHES:
            v[f"b{b}_s"] = float(np.median(samples[(id(v), b)]))
        v["score_s"] = math.prod(v[f"b{b}_s"] for b in SELECTION_BATCHES) ** (1 / len(SELECTION_BATCHES))
    del runnable
    ok = [v for v in variants if "score_s" in v]
    if not ok:
        raise ExportError("no ONNX variant gives eager torch's outputs: " + "; ".join(f"{v['variant']}: {v['lost']}" for v in variants[:3]))
    best = min(ok, key=lambda v: v["score_s"])
    for v in ok:
        if v is not best:
            v["lost"] = f"{v['score_s'] / best['score_s'] - 1:+.1%} slower than {best['variant']}"
    _link_or_copy(out_dir / best["file"], out_dir / MODEL_FILE)
    chosen_info = files[best["file"][len("variants/"):-len(".onnx")]]
    return {"chosen": best["variant"], "level": best["level"], "exporter": best["exporter"],
            "opset": chosen_info["opset"], "nodes": chosen_info["nodes"],
            "main_ops": dict(sorted(chosen_info["ops"].items(), key=lambda kv: -kv[1])[:8]),
            "fused": chosen_info.get("fused", {}), "selection": f"1 thread, batch {'/'.join(map(str, SELECTION_BATCHES))}",
            "variants": variants + failures}


def variant_for(artifacts: Path, forced: str | None) -> tuple[Path, str, dict]:
    """The ONNX file and optimization level a session runs: the prepared choice, or the variant a
    setting forces ("torchscript/EXTENDED"). Returns (file, level, export record)."""
    info = json.loads((artifacts / INFO_FILE).read_text()) if (artifacts / INFO_FILE).exists() else {}
    if not forced:
        return artifacts / MODEL_FILE, info.get("level", "ALL"), info
    known = {v["variant"]: v for v in info.get("variants", []) if "file" in v}
    if forced not in known:
        raise ValueError(f"ONNX variant {forced!r} is not among this model's: {', '.join(sorted(known)) or 'none recorded'}")
    v = known[forced]
    if "score_s" not in v:
        raise ValueError(f"ONNX variant {forced!r} was rejected at prepare time: {v.get('lost')}")
    return artifacts / v["file"], v["level"], info


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:  # another file system
        shutil.copyfile(src, dst)


def export_into(model: ModelHandle, out_dir: Path, cache_root: Path) -> dict:
    """Put the model's chosen ONNX file (model.onnx), its variants and export.json into out_dir,
    running the selection only on a cache miss. Returns the export record."""
    content_hash = model.content_hash
    if not content_hash:  # a handle built ad hoc (tests, benchmarks): hash the model as the probe does
        from fixtures.loading import model_content_hash

        content_hash = model_content_hash(model.build(), model.spec, model.seed)
    key = hashlib.sha256(json.dumps([exporter_id(), content_hash, model.seed, model.spec.to_json()],
                                    sort_keys=True).encode()).hexdigest()[:20]
    shared = cache_root / "onnx-export" / f"{model.spec.name}-{key}"
    if not (shared / INFO_FILE).exists():
        tmp = shared.with_name(f"{shared.name}.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        try:
            info = select_variant(model, tmp)
            (tmp / INFO_FILE).write_text(json.dumps(info))
            try:
                os.replace(tmp, shared)
            except OSError:  # another process renamed its finished selection into place first
                if not (shared / INFO_FILE).exists():
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    for src in sorted(shared.rglob("*")):
        dst = out_dir / src.relative_to(shared)
        if src.is_dir():
            dst.mkdir(parents=True, exist_ok=True)
        else:
            _link_or_copy(src, dst)
    return json.loads((out_dir / INFO_FILE).read_text())


def describe_export(info: dict, variant: str) -> dict:
    """What the report says of the ONNX file a session runs and of the variants it beat (per model)."""
    def timing(v: dict) -> str:
        if "b1_s" not in v:
            return f"{v['variant']}: {v.get('lost', '')}"
        return f"{v['variant']} {v['b1_s'] * 1e6:.1f}/{v['b8_s'] * 1e6:.1f} µs"

    chosen = next((v for v in info.get("variants", []) if v.get("variant") == variant), {})
    return {"per model": {
        "onnx variant": f"{variant} ({'forced by setting' if variant != info.get('chosen') else 'fastest correct'})"
                        + (f", {chosen['b1_s'] * 1e6:.1f}/{chosen['b8_s'] * 1e6:.1f} µs at batch 1/8" if "b1_s" in chosen else ""),
        "onnx file": f"{chosen.get('exporter', info.get('exporter', '?'))}, opset {chosen.get('opset', info.get('opset', '?'))}, "
                     f"{chosen.get('nodes', info.get('nodes', '?'))} nodes" + ("" if variant != info.get("chosen") else
                     "; main ops " + ", ".join(f"{k} {n}" for k, n in info.get("main_ops", {}).items())),
        "other variants (batch 1/8, 1 thread)": "; ".join(
            timing(v) for v in info.get("variants", []) if v.get("variant") != variant)}}


VARIANT_FLAG = CliFlag("--onnx-variant", "variant", "run this ONNX variant instead of the fastest correct one "
                       "(EXPORTER/LEVEL, e.g. torchscript/EXTENDED; `bench report` lists them)", "VARIANT")


def check_ort_settings(settings) -> None:
    """The settings every ONNX Runtime route takes: `variant` (EXPORTER/LEVEL) and `spinning`."""
    variant = settings.get("variant")
    if variant is not None:
        exporters = [*EXPORTERS, *(f"{e}+ortopt" for e in EXPORTERS)]
        exporter, _, level = str(variant).partition("/")
        if exporter not in exporters or level not in LEVELS:
            raise ValueError(f"ONNX variant {variant!r} is not EXPORTER/LEVEL with EXPORTER one of "
                             f"{', '.join(exporters)} and LEVEL one of {', '.join(LEVELS)}")
    if "spinning" in settings and not isinstance(settings["spinning"], bool):
        raise ValueError(f"spinning must be true or false, got {settings['spinning']!r}")
