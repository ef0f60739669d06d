"""ExecuTorch (PyTorch Mobile's successor): at prepare time the model goes through torch.export with a
bounded dynamic batch, is lowered to the XNNPACK backend (to_edge_transform_and_lower with the
XnnpackPartitioner) and saved as a .pte; a cell loads the .pte into ExecuTorch's runtime (the
pybindings) and runs it there, its thread pool set to the cell's threads.

What XNNPACK does not take runs on ExecuTorch's portable kernels; how much of the model that is gets
counted at prepare time (``executorch.json``) and shown by ``Session.describe()``, since a partial
delegation changes the numbers.
"""

from __future__ import annotations

import json
import threading
import time
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from fixtures.builtin import IDENTITY_ROW_BYTES
from strategies import register
from strategies.base import (
    Arrays,
    Availability,
    ModelHandle,
    Session,
    SessionOptions,
    ShapeUnsupported,
    Strategy,
    exporter_cause,
    package_version,
)

PROGRAM_FILE = "model.pte"
INFO_FILE = "executorch.json"
METHOD = "forward"
INSTALL = "pip install executorch==1.5.*"
EXPORT_BATCH = 2  # torch.export specialises sizes 0 and 1
#: ExecuTorch plans memory for the largest batch, so the batch dimension needs an upper bound
DEFAULT_MAX_BATCH = 1024
#: the identity model carries the payload sweep, whose largest size is 64 MiB (bench/config.py)
IDENTITY_MAX_BATCH = 64 * 1024 * 1024 // IDENTITY_ROW_BYTES
SELF_CHECK_BATCH = 3


class ExecuTorchError(RuntimeError):
    """Export or lowering failed; the message names the cause in one line."""


class BatchTooLarge(ValueError):
    """A call's batch exceeds the bound the program was lowered with."""


def max_batch_for(model: ModelHandle) -> int:
    spec = model.spec
    if spec.builtin and spec.name == "identity":
        return IDENTITY_MAX_BATCH
    return DEFAULT_MAX_BATCH


def one_line_failure(stage: str, e: Exception) -> ExecuTorchError:
    return ExecuTorchError(f"ExecuTorch {stage} failed ({type(e).__name__}): {exporter_cause(e)}")


def _batch_axes(model: ModelHandle) -> list[int | None]:
    return [t.shape.index("batch") if "batch" in t.shape else None for t in model.spec.inputs]


def _op_name(target: Any) -> str | None:
    """The kernel a call_function node runs, or None for what is no kernel: tuple unpacking
    (getitem), symbolic size arithmetic (sym_size, operator.mul) and the delegate call itself."""
    import torch
    from executorch.exir.dialects.edge._ops import EdgeOpOverload

    if isinstance(target, EdgeOpOverload):
        name = target.__name__
    elif isinstance(target, torch._ops.OpOverload):
        name = str(target)
    else:
        return None
    return None if name.startswith("aten.sym_") else name


def delegation_report(graph_module: Any) -> dict[str, Any]:
    """Count the ops inside XNNPACK delegates and the ops left to the portable kernels."""
    delegated: Counter[str] = Counter()
    portable: Counter[str] = Counter()
    subgraphs = 0
    for node in graph_module.graph.nodes:
        if node.op == "get_attr" and str(node.target).startswith("lowered_module_"):
            subgraphs += 1
            lowered = getattr(graph_module, node.target)
            for inner in lowered.original_module.graph.nodes:
                name = _op_name(inner.target) if inner.op == "call_function" else None
                if name:
                    delegated[name] += 1
        elif node.op == "call_function":
            name = _op_name(node.target)
            if name:
                portable[name] += 1
    n_del, n_port = sum(delegated.values()), sum(portable.values())
    if n_del + n_port == 0:
        summary = "complete: no ops to run (the outputs are the inputs)"
    elif n_port == 0:
        summary = f"complete: all {n_del} ops in {subgraphs} XNNPACK subgraph{'s' * (subgraphs != 1)}"
    else:
        ops = ", ".join(f"{k} x{v}" if v > 1 else k for k, v in portable.most_common())
        summary = f"partial: {n_port} of {n_del + n_port} ops on portable kernels ({ops})"
    return {"summary": summary, "complete": n_port == 0, "delegated_ops": n_del, "portable_ops": n_port,
            "xnnpack_subgraphs": subgraphs, "delegated": dict(delegated), "portable": dict(portable)}


def _restore_batch_bound(program: Any, max_batch: int) -> int | None:
    """Lowering re-traces the graph with fake tensors, and their conv picks a backend with a guard on
    the example batch (batch < 16 for an example of 2) that narrows the batch symbol's range in the
    shared ShapeEnv: memory would then be planned for 15 rows. The guard says nothing about the
    program (XNNPACK reshapes for any batch), so put the declared bound back. Returns the narrowed
    upper bound it found, if any."""
    import sympy
    import torch
    from torch.utils._sympy.value_ranges import ValueRanges

    narrowed = None
    for node in program.graph.nodes:
        val = node.meta.get("val") if node.op == "placeholder" else None
        if not isinstance(val, torch.Tensor):
            continue
        for dim in val.shape:
            if isinstance(dim, torch.SymInt) and isinstance(dim.node.expr, sympy.Symbol):
                env, sym = dim.node.shape_env, dim.node.expr
                vr = env.var_to_range.get(sym)
                if vr is not None and vr.upper.is_number and vr.upper < max_batch:
                    narrowed = int(vr.upper)
                    env.var_to_range[sym] = ValueRanges(vr.lower, max_batch)
    return narrowed


def _emitted_bound(et_program: Any, axes: list[int | None]) -> int:
    plan = et_program.executorch_program.execution_plan[0]
    bounds = [plan.values[i].val.sizes[a] for i, a in zip(plan.inputs, axes) if a is not None]
    return min(bounds) if bounds else 0


def lower(model: ModelHandle, out_dir: Path) -> dict[str, Any]:
    """torch.export (bounded dynamic batch) -> XNNPACK lowering -> .pte; returns what the report shows."""
    import torch
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import ExecutorchBackendConfig, to_edge_transform_and_lower
    from executorch.exir.passes import MemoryPlanningPass

    from fixtures.loading import to_torch_inputs

    spec = model.spec
    max_batch = max_batch_for(model)
    axes = _batch_axes(model)
    t0 = time.perf_counter()
    args = tuple(to_torch_inputs(spec, model.example_inputs(EXPORT_BATCH)))
    fixed: dict[str, int] = {}
    fixed_reason = ""
    for named in ([True, False] if spec.dims else [True]):
        try:
            exported = torch.export.export(model.build(), args, dynamic_shapes=model.dynamic_shapes(max_batch, named))
        except Exception as e:
            raise one_line_failure("export", e) from e
        t1 = time.perf_counter()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                edge = to_edge_transform_and_lower(exported, partitioner=[XnnpackPartitioner()])
            break
        except Exception as e:
            if named and spec.dims and "dynamic dimension" in str(e):
                # XNNPACK's reshape keeps one dynamic dimension: the batch stays dynamic (one program serves
                # every batch size), the named ones are fixed at their nominal size, and the session refuses
                # other sizes in words (ShapeUnsupported) rather than giving wrong outputs
                fixed = spec.nominal_sizes
                fixed_reason = f"XNNPACK lowering keeps one dynamic dimension ({exporter_cause(e)[:120]})"
                continue
            raise one_line_failure("XNNPACK lowering", e) from e
    lowered = edge.exported_program()
    narrowed = _restore_batch_bound(lowered, max_batch)
    delegation = delegation_report(lowered.graph_module)
    # Inputs stay outside the planned arena, so the runtime reads the caller's buffers (no copy in).
    # ExecuTorch 1.5 returns garbage when an output *is* an unplanned input (identity), so a
    # pass-through model keeps its inputs planned and they are copied in.
    user_inputs = {s.arg.name for s in lowered.graph_signature.input_specs if s.kind.name == "USER_INPUT"}
    out_node = next(n for n in lowered.graph.nodes if n.op == "output")
    passthrough = any(getattr(a, "name", None) in user_inputs for a in out_node.args[0])
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = edge.to_executorch(ExecutorchBackendConfig(
                memory_planning_pass=MemoryPlanningPass(alloc_graph_input=passthrough)))
    except Exception as e:
        raise one_line_failure("to_executorch", e) from e
    t2 = time.perf_counter()
    (out_dir / PROGRAM_FILE).write_bytes(program.buffer)
    plan = program.executorch_program.execution_plan[0]
    info = {
        "max_batch": _emitted_bound(program, axes) if any(a is not None for a in axes) else 0,
        "fixed_dims": fixed,
        "fixed_dims_reason": fixed_reason,
        "declared_max_batch": max_batch,
        "bound_narrowed_by_lowering_to": narrowed,
        "inputs_planned": passthrough,
        "planned_arena_bytes": int(sum(plan.non_const_buffer_sizes)),
        "pte_bytes": len(program.buffer),
        "delegation": delegation,
        "export_s": round(t1 - t0, 3),
        "lower_s": round(t2 - t1, 3),
    }
    info["self_check_max_abs_err"] = _self_check(model, out_dir / PROGRAM_FILE, info)
    return info


def runtime_module() -> Any:
    """ExecuTorch's runtime extension. Its public face, ``portable_lib``, first imports all of
    ``executorch.exir`` (the compiler, torchao, ...): 2.5 s of a cell's cold start the runtime does
    not use. The extension itself loads in milliseconds once torch is imported."""
    import torch  # noqa: F401 - the extension resolves libtorch's symbols

    try:
        from executorch.extension.pybindings import _C

        return _C
    except ImportError:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "This API is experimental"
            from executorch.extension.pybindings import portable_lib
        return portable_lib


def _self_check(model: ModelHandle, path: Path, info: dict[str, Any]) -> float:
    """Run the fresh .pte once against eager torch: a wrong lowering fails prepare, not a cell."""
    from fixtures.loading import build_model, run_eager

    batch = min(SELF_CHECK_BATCH, info["max_batch"] or SELF_CHECK_BATCH)
    inputs = model.example_inputs(batch)
    expected = run_eager(build_model(model.spec, model.seed), model.spec, inputs)
    runner = ProgramRunner(model, path, info["max_batch"], info.get("fixed_dims"), info.get("fixed_dims_reason", ""))
    got = runner(inputs)
    worst = 0.0
    for name, e in expected.items():
        g = got.get(name)
        if g is None or g.shape != e.shape or g.dtype != e.dtype:
            raise ExecuTorchError(f"ExecuTorch program output {name!r} is {None if g is None else (g.shape, g.dtype)}, "
                                  f"eager torch gives {(e.shape, e.dtype)}")
        if e.size:
            worst = max(worst, float(np.max(np.abs(g.astype(np.float64) - e.astype(np.float64)))))
        if not np.allclose(g, e, atol=model.spec.atol, rtol=model.spec.rtol):
            raise ExecuTorchError(f"ExecuTorch program disagrees with eager torch on output {name!r} at batch {batch} "
                                  f"(max abs error {worst:.3g}, atol {model.spec.atol})")
    return worst


class ProgramRunner:
    """One loaded Program and its forward Method: its own planned arena, so one caller at a time."""

    def __init__(self, model: ModelHandle, path: Path, max_batch: int, fixed: dict[str, int] | None = None,
                 fixed_reason: str = "") -> None:
        import torch

        et = runtime_module()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.program = et._load_program(str(path))
            self.method = self.program.load_method(METHOD)
        self._from_numpy = torch.from_numpy
        self.inputs = [(t.name, a) for t, a in zip(model.spec.inputs, _batch_axes(model))]
        self.outputs = list(model.spec.outputs)
        self.max_batch = max_batch
        # a named dimension the program was lowered with fixed: (input, axis, name, size)
        self.fixed = [(t.name, i, d, fixed[d]) for t in model.spec.inputs for i, d in enumerate(t.shape)
                      if isinstance(d, str) and d in (fixed or {})]
        self.fixed_reason = fixed_reason

    def __call__(self, inputs: Arrays) -> dict[str, np.ndarray]:
        for name, axis, dim, size in self.fixed:
            if inputs[name].shape[axis] != size:
                raise ShapeUnsupported(f"this ExecuTorch program was lowered with {dim} fixed at {size}, so it cannot "
                                       f"take {dim}={inputs[name].shape[axis]}: {self.fixed_reason}")
        args = []
        for name, axis in self.inputs:
            a = inputs[name]
            if axis is not None and a.shape[axis] > self.max_batch:
                raise BatchTooLarge(f"batch {a.shape[axis]} exceeds the ExecuTorch program's bound of {self.max_batch} "
                                    f"rows (input {name!r}); the bound is fixed when the .pte is lowered")
            args.append(self._from_numpy(np.ascontiguousarray(a)))
        # clone_outputs: the outputs live in the method's planned arena, which the next call overwrites
        outs = self.method(args, clone_outputs=True)
        if self.outputs and len(outs) != len(self.outputs):
            raise RuntimeError(f"program returned {len(outs)} outputs, expected {len(self.outputs)} ({self.outputs})")
        names = self.outputs or [f"output_{i}" for i in range(len(outs))]
        return {n: o.numpy() for n, o in zip(names, outs)}


class ExecuTorchSession(Session):
    def __init__(self, model: ModelHandle, artifacts: Path, options: SessionOptions) -> None:
        self.info = json.loads((artifacts / INFO_FILE).read_text())
        et = runtime_module()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if et._threadpool_get_thread_count() != options.threads:
                et._unsafe_reset_threadpool(options.threads)  # "unsafe": nothing may be running on it
            self.pool_threads = int(et._threadpool_get_thread_count())
        if self.pool_threads != options.threads:
            raise RuntimeError(f"ExecuTorch's thread pool has {self.pool_threads} threads after asking for {options.threads}")
        # One Method keeps its inputs, intermediates and outputs in one planned arena, so it takes one
        # call at a time. A loaded program per calling thread would not run them in parallel either:
        # the pybindings hold the GIL while a method executes (measured: two threads with a program
        # each take twice as long as one), and every program holds a resident arena of its own. So
        # one program, and a lock that makes the serialisation explicit.
        self._runner = ProgramRunner(model, artifacts / PROGRAM_FILE, self.info["max_batch"], self.info.get("fixed_dims"),
                                     self.info.get("fixed_dims_reason", ""))
        self._lock = threading.Lock()

    def run(self, inputs: Arrays) -> dict[str, np.ndarray]:
        with self._lock:
            return self._runner(inputs)

    def memory_extra(self) -> dict[str, int]:
        # planned at the batch bound and zero-filled at load, so resident from the start
        return {"executorch_planned_arena": int(self.info["planned_arena_bytes"])}

    def describe(self) -> dict[str, Any]:
        info = self.info
        return {
            "backend": "XNNPACK (portable kernels for the rest)",
            "threads": self.pool_threads,
            "outputs": "copied (clone_outputs): the runtime reuses its planned output memory across calls",
            "calls": "serialised: one loaded method, whose run holds the GIL",
            "per model": {
                "xnnpack delegation": info["delegation"]["summary"],
                "batch bound": str(info["max_batch"]),
                **({"fixed dimensions": ", ".join(f"{k}={v}" for k, v in info["fixed_dims"].items())
                    + f" ({info.get('fixed_dims_reason', '')})"} if info.get("fixed_dims") else {}),
                "planned memory": (f"{info['planned_arena_bytes'] / 2**20:.1f} MiB" if info["planned_arena_bytes"] >= 2**20
                                   else f"{info['planned_arena_bytes'] / 1024:.1f} KiB") + ", reserved at load",
                "inputs": "copied into the planned arena (an output is an input)" if info["inputs_planned"]
                else "zero-copy (torch.from_numpy views, not memory-planned)",
            },
        }

    def close(self) -> None:
        self._runner = None  # type: ignore[assignment]


@register
class ExecuTorchXnnpack(Strategy):
    languages = ("python",)  # measured through ExecuTorch's Python runtime bindings; its C++ runtime would serve C++
    python_at_deployment = True
    artifact = "ExecuTorch program (.pte)"
    exporter = "torch.export, lowered to XNNPACK"
    runtime_modules = ("torch", "executorch.extension.pybindings._C")
    settings_keys = ()
    name = "executorch"
    summary = ("torch.export -> XNNPACK-lowered .pte (bounded dynamic batch) run by ExecuTorch's runtime "
               "(pybindings), inputs zero-copy, outputs copied")
    needs_artifacts = True
    concurrent_calls = True
    prepare_hint = "torch.export and XNNPACK lowering to a .pte, about 1-10 s per model"

    def available(self) -> Availability:
        import importlib.util

        for module in ("executorch.exir", "executorch.extension.pybindings._C"):
            try:
                found = importlib.util.find_spec(module) is not None
            except ModuleNotFoundError:
                found = False
            if not found:
                return Availability(False, f"ExecuTorch is not installed: no module '{module}' ({INSTALL})")
        return Availability(True)

    def runtime_versions(self) -> dict[str, str]:
        return {"executorch": package_version("executorch"), "torch": package_version("torch")}

    def prepare(self, model: ModelHandle, out_dir: Path) -> None:
        info = lower(model, out_dir)
        (out_dir / INFO_FILE).write_text(json.dumps(info, indent=1))

    def open(self, model: ModelHandle, artifacts: Path | None, options: SessionOptions) -> Session:
        assert artifacts is not None
        return ExecuTorchSession(model, artifacts, options)
