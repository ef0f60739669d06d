"""Code that runs in a fresh worker process: ``python -m bench.worker JOB.json``.

Three jobs, each reading its JSON job file and writing one JSON result atomically:

- ``probe``: build a model, check its input spec fits, hash its weights, save eager-torch reference
  outputs for each batch size (NumPy .npz, never pickle).
- ``prepare``: build one strategy's artifacts for one model into the cache.
- ``cell``: open a strategy, then cold start, warm-up, the cell's scenario (bench.scenarios), memory
  and CPU of every process, correctness against the references; its result is the cell's record
  (bench.record.CellResult) as JSON.
- ``warm``: open a route's session and keep it warm, measuring turns of several batch sizes on request
  (bench.rounds, the run's latency cells; bench.rematch).
- ``generator``: the open-loop load generator's own ceiling, against a session that does nothing.

Anything a job raises becomes its result's error; a crash leaves no result, which the runner
turns into the cell's error. Only JSON and .npz cross the process boundary.
"""

from __future__ import annotations

import time

STARTED = time.time()  # the interpreter is up: the cold start's "interpreter" phase ends here

import contextlib
import json
import os
import shutil
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np

from bench import allocator
from plumbing.cache import reference_path
from plumbing.errors import UserError
from plumbing.files import EX_CANNOT_WRITE, WRITE_ERRORS, atomic_write_json
from strategies.base import ShapeUnsupported


def probe(job: dict[str, Any]) -> dict[str, Any]:
    import torch

    from fixtures.loading import build_model, model_content_hash, outputs_to_dict, to_torch_inputs
    from fixtures.specs import ModelSpec, make_inputs

    spec = ModelSpec.from_json(job["model"])
    seed = job["seed"]
    torch.set_num_threads(1)
    model = build_model(spec, seed)
    try:
        with torch.inference_mode():
            raw = model(*to_torch_inputs(spec, make_inputs(spec, 2, seed)))
    except Exception as e:
        shapes = "; ".join(t.describe() for t in spec.inputs)
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise UserError(f"input spec [{shapes}] does not fit model {spec.name!r}: {type(e).__name__}: {first}") from e
    outs = outputs_to_dict(raw, spec.outputs)
    if spec.outputs and len(spec.outputs) != len(outs):
        raise UserError(f"model {spec.name!r} returns {len(outs)} outputs but its spec names {len(spec.outputs)}")
    names = tuple(outs)
    spec = spec.with_outputs(names)
    content_hash = model_content_hash(model, spec, seed)  # a changed model never reuses artifacts
    ref_dir = Path(job["refs_root"]) / f"{spec.name}-{content_hash}"
    ref_dir.mkdir(parents=True, exist_ok=True)
    for batch in job["batches"]:
        path = reference_path(ref_dir, batch)
        if path.exists():
            continue
        with torch.inference_mode():
            out = outputs_to_dict(model(*to_torch_inputs(spec, make_inputs(spec, batch, seed))), names)
        for k, v in out.items():
            if v.is_floating_point() and not bool(torch.isfinite(v).all()):
                bad = int((~torch.isfinite(v)).sum())
                raise ValueError(f"its reference output {k!r} at batch {batch} holds {bad} NaN or inf value(s) for the "
                                 "generated inputs, so no strategy can be checked against it (narrow the input ranges?)")
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.npz")
        np.savez(tmp, **{k: v.numpy() for k, v in out.items()})
        os.replace(tmp, path)
    for plan in job.get("plans") or []:  # requests of varying shape: every one's reference, once per content
        _request_references(model, spec, seed, plan, ref_dir)
    return {
        "content_hash": content_hash, "outputs": list(names), "ref_dir": str(ref_dir),
        "params": int(sum(p.numel() for p in model.parameters())),
        "output_shapes": {k: list(v.shape) for k, v in outs.items()},
    }


def _request_references(model: Any, spec: Any, seed: int, plan: dict[str, Any], ref_dir: Path) -> None:
    """Eager torch's outputs for each request of a plan (fixtures.requests), as ``requests-KEY/i.npz``;
    a complete set (its DONE file) is reused."""
    import torch

    from fixtures.loading import outputs_to_dict, to_torch_inputs
    from fixtures.requests import plan_key, requests_for

    folder = ref_dir / f"requests-{plan_key(plan)}"
    if (folder / "DONE").exists():
        return
    tmp = folder.with_name(f"{folder.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        for i, (_sizes, x) in enumerate(requests_for(spec, seed, plan)):
            with torch.inference_mode():
                out = outputs_to_dict(model(*to_torch_inputs(spec, x)), spec.outputs)
            np.savez(tmp / f"{i}.npz", **{k: v.numpy() for k, v in out.items()})
        (tmp / "DONE").write_text("")
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def prepare(job: dict[str, Any]) -> dict[str, Any]:
    import strategies
    from fixtures.specs import ModelSpec
    from strategies.base import ModelHandle

    strategies.discover(job.get("plugins", []))
    strategy = strategies.get(job["strategy"])
    final = Path(job["artifact_dir"])
    tmp = final.with_name(f"{final.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    t0 = time.perf_counter()
    try:
        strategy.prepare(ModelHandle(ModelSpec.from_json(job["model"]), job["seed"], job["content_hash"]), tmp)
        seconds = time.perf_counter() - t0
        atomic_write_json(tmp / "DONE.json", {"seconds": seconds, "strategy": strategy.name})
        if final.exists():  # another run got there first
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {"seconds": seconds}


def _summ(ns: np.ndarray):
    from bench.stats import summarize

    return summarize(ns / 1e9)


def _open(job: dict[str, Any], strategy: Any, spec: Any) -> tuple[Any, Any]:
    """The cell's strategy session, as the cell's job describes it: (model handle, session)."""
    from strategies.base import ModelHandle, SessionOptions

    c = job["cell"]
    handle = ModelHandle(spec, job["seed"], job["content_hash"])
    options = SessionOptions(c["threads"], c["concurrency"], job.get("settings", {}))
    return handle, strategy.open(handle, Path(job["artifacts"]) if job.get("artifacts") else None, options)


def _capped(lat: np.ndarray, cap: int) -> list[int]:
    """The raw samples, evenly thinned to ``cap`` where there are more."""
    return (lat if len(lat) <= cap else lat[np.linspace(0, len(lat) - 1, cap).astype(int)]).tolist()


def cell(job: dict[str, Any]) -> dict[str, Any]:
    """Measure one cell; its record (bench.record.CellResult) goes back as JSON under "record"."""
    import strategies
    from bench import scenarios
    from bench.correctness import compare_outputs, worst
    from bench.cpu import CpuMeter
    from bench.environment import THREAD_ENV
    from bench.measure import SamplingConfig, warm_up
    from bench.memory import MemoryTracker
    from bench.record import Cell, CellResult, Correctness, Cpu, Memory, Part, Status, Throughput
    from bench.scenarios import Context
    from fixtures.specs import ModelSpec, make_inputs

    c = Cell.from_json(job["cell"])
    spec = ModelSpec.from_json(job["model"])
    cfg = SamplingConfig.from_json(job["sampling"])
    strategies.discover(job.get("plugins", []))
    scenarios.discover(job.get("plugins", []))
    strategy = strategies.get(c.strategy)
    inputs = make_inputs(spec, c.batch, job["seed"])
    tracker = MemoryTracker()  # baseline: the worker with its inputs, before the strategy's runtime loads
    cpu = CpuMeter({os.getpid(): "worker"})
    phases: dict[str, float] = {}
    if job.get("spawned_at"):
        phases["interpreter"] = max(0.0, STARTED - job["spawned_at"])
    t0 = time.perf_counter()
    strategy.load_runtime()
    phases["runtime import"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    handle, session = _open(job, strategy, spec)
    try:
        open_s = time.perf_counter() - t0
        phases["model build"] = handle.build_s
        phases["open"] = max(0.0, open_s - handle.build_s)
        for pid, role in session.pids():
            tracker.add(pid, role)
            cpu.add(pid, role)
        t1 = time.perf_counter()
        first = session.run(inputs)
        first_call_s = time.perf_counter() - t1
        phases["first call"] = first_call_s
        first = {k: np.array(v, copy=True) for k, v in first.items()}
        payload_bytes = spec.input_bytes(c.batch) + sum(v.nbytes for v in first.values())
        described = session.describe()
        warm_calls, per_call = warm_up(session, inputs, cfg)
        tracker.sample()
        ctx = Context(session, inputs, c, cfg, job.get("scenario_options") or {}, per_call,
                      tracker.sample, cpu, strategy.concurrent_calls, job)
        mark = cpu.mark()
        t_measure = time.perf_counter()
        m = scenarios.get(c.scenario).measure(ctx)
        measure_s = time.perf_counter() - t_measure  # the run's efficiency: time spent measuring
        cpu_s, by_role = (m.cpu_s, m.cpu_by_role) if m.cpu_s is not None else cpu.since(mark)
        cap = job.get("max_raw_samples", 50_000)
        parts = [Part(point=p["point"], latency=_summ(p["latency_ns"]), figures=p.get("figures") or {},
                      samples_ns=_capped(p["latency_ns"], cap)) for p in m.parts if len(p["latency_ns"])]
        calls_per_s = m.calls_per_s if m.calls_per_s is not None else (m.calls / m.wall_s if m.wall_s else 0.0)
        last = session.run(inputs)
        last = {k: np.array(v, copy=True) for k, v in last.items()}
        tracker.sample()
        extra = session.memory_extra()
    finally:
        tracker.sample()
        tracker.finish()
        session.close()
    with np.load(job["reference"], allow_pickle=False) as ref:
        expected = {k: ref[k] for k in ref.files}
    checked = worst(compare_outputs(first, expected, spec.atol, spec.rtol), compare_outputs(last, expected, spec.atol, spec.rtol))
    if m.problems:  # the scenario checked more than the first and last call, and found wrong outputs
        checked = {**checked, "ok": False, "problems": list(m.problems) + list(checked.get("problems", []))}
    status, error = Status.OK, ""
    if not checked["ok"]:
        status, error = Status.INVALID, "wrong outputs: " + "; ".join(checked["problems"])
    elif m.unsupported:  # correct where it ran, but it declared shapes of the model's range it cannot take
        status, error = Status.UNSUPPORTED, f"cannot take {m.unsupported}"
    record = CellResult(
        c, status, error, latency=_summ(m.latency_ns), samples_ns=_capped(m.latency_ns, cap),
        throughput=Throughput.of(calls_per_s, c.batch), open_s=open_s, first_call_s=first_call_s,
        cold_start_s=open_s + first_call_s, cold_start_phases=phases,
        phases={k: _summ(v) for k, v in m.phases_ns.items()}, payload_bytes=payload_bytes,
        memory=Memory.from_json(tracker.to_json(extra)),
        cpu=Cpu(cpu_s, m.calls, by_role, cpu_s / m.calls if m.calls else None),
        sampling={**m.sampling, "warmup_calls": warm_calls}, correctness=Correctness.from_json(checked),
        figures=dict(m.figures), detail=dict(m.detail), parts=parts, session=described, measure_s=measure_s,
        worker_pid=os.getpid(), cpu_affinity=sorted(os.sched_getaffinity(0)),
        malloc_env={k: os.environ[k] for k in allocator.ENV_KEYS if k in os.environ},
        thread_env={k: os.environ.get(k) for k in THREAD_ENV})
    return {"record": record.to_json()}


def warm(job: dict[str, Any]) -> dict[str, Any]:
    """A session kept open and warm, measuring turns on request (bench.rounds, bench.rematch). It opens the
    route as the cell job does (the cold start's phases go back in its first answer, ``ready``), warms up
    the first of ``job["batches"]``, then answers JSON lines on the job's pipes until ``{"stop": true}``:

    - ``{"batch": b, "warm": true}``: the first call at batch b (kept for the correctness check) and a warm-up;
    - ``{"batch": b, "seconds": s}``: a turn, calls for about s seconds (at least one); its median back, its
      samples kept;
    - ``{"batch": b, "finish": true}``: a last call, checked with the first against the reference, and the
      cell's share of this process (``bench.rounds.Partial``): its samples, phases, CPU and memory while it ran.

    Memory per cell: the process's baseline is taken before the runtime loads; each batch's steady RSS is
    the median of samples between its own turns, and its peak the kernel's mark reset when the batch began."""
    import strategies
    from bench.correctness import compare_outputs, worst
    from bench.cpu import CpuMeter
    from bench.environment import THREAD_ENV
    from bench.measure import SamplingConfig, warm_up
    from bench.memory import MemoryTracker, reset_peak
    from fixtures.specs import ModelSpec, make_inputs

    c = job["cell"]
    spec = ModelSpec.from_json(job["model"])
    cfg = SamplingConfig.from_json(job["sampling"])
    strategies.discover(job.get("plugins", []))
    strategy = strategies.get(c["strategy"])
    batches = [int(b) for b in job.get("batches") or [c["batch"]]]
    inputs = {b: make_inputs(spec, b, job["seed"]) for b in batches}
    cap = int(job.get("max_raw_samples", 50_000))
    requests, answers = (os.fdopen(fd, mode, buffering=1) for fd, mode in zip(job["fds"], ("r", "w")))
    tracker = MemoryTracker()
    cpu = CpuMeter({os.getpid(): "worker"})
    turns, session = 0, None
    state: dict[int, dict[str, Any]] = {}

    def say(msg: dict[str, Any]) -> None:
        answers.write(json.dumps(msg) + "\n")

    def begin(b: int) -> dict[str, Any]:
        if b not in inputs:
            raise ValueError(f"batch {b} is not one this worker was opened for ({batches})")
        t1 = time.perf_counter()
        first = {k: np.array(v, copy=True) for k, v in session.run(inputs[b]).items()}
        first_call_s = time.perf_counter() - t1
        warm_calls, per_call = warm_up(session, inputs[b], cfg)
        for p in tracker.procs.values():  # this cell's memory: its steady RSS from here to its finish, and its
            p.samples = []  # peak from the baseline for the first batch (the open and first call included, as a
            if state:  # cell measured alone has it), from here for the later ones
                reset_peak(p.pid)
        tracker.sample()
        st = {"first": first, "first_call_s": first_call_s, "warmup_calls": warm_calls, "per_call_s": per_call,
              "lat": [], "phases": {}, "measure_s": 0.0, "cpu_s": 0.0, "cpu_by_role": {},
              "payload_bytes": spec.input_bytes(b) + sum(v.nbytes for v in first.values())}
        state[b] = st
        return st

    try:
        phases: dict[str, float] = {}
        if job.get("spawned_at"):
            phases["interpreter"] = max(0.0, STARTED - job["spawned_at"])
        t0 = time.perf_counter()
        strategy.load_runtime()
        phases["runtime import"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        handle, session = _open(job, strategy, spec)
        open_s = time.perf_counter() - t0
        phases["model build"] = handle.build_s
        phases["open"] = max(0.0, open_s - handle.build_s)
        for pid, role in session.pids():
            tracker.add(pid, role)
            cpu.add(pid, role)
        st = begin(batches[0])
        phases["first call"] = st["first_call_s"]
        say({"ready": True, "per_call_s": st["per_call_s"], "open_s": open_s, "cold_start_phases": phases,
             "first_call_s": st["first_call_s"], "pid": os.getpid()})
        for line in requests:
            msg = json.loads(line)
            if not isinstance(msg, dict) or msg.get("stop"):
                break
            b = int(msg.get("batch", batches[0]))
            st = state.get(b)
            if msg.get("warm"):
                st = begin(b)
                say({"per_call_s": st["per_call_s"]})
                continue
            if st is None:
                st = begin(b)
            if msg.get("finish"):
                say({"partial": _finish_partial(session, inputs[b], st, tracker, cpu, job, b, cap, spec,
                                                compare_outputs, worst, THREAD_ENV)})
                del state[b]
                continue
            seconds = min(float(msg["seconds"]), 60.0)
            chunk = max(1, int(seconds / 5 / max(st["per_call_s"], 1e-7)))
            lats, mark, t_turn = [], cpu.mark(), time.perf_counter()
            end = t_turn + seconds
            while not lats or time.perf_counter() < end:
                timings = session.time_calls(inputs[b], chunk)
                lats.append(timings.latency_ns)
                for k, v in timings.phases_ns.items():
                    st["phases"].setdefault(k, []).append(v)
            st["measure_s"] += time.perf_counter() - t_turn
            used, by_role = cpu.since(mark)  # CPU over its own turns only, not while the other routes take theirs
            st["cpu_s"] += used
            for role, v in by_role.items():
                st["cpu_by_role"][role] = st["cpu_by_role"].get(role, 0.0) + v
            tracker.sample()  # outside the timed calls
            turn = np.concatenate(lats)
            st["lat"].append(turn)
            turns += 1
            say({"median_ns": float(np.median(turn)), "n": int(len(turn))})
    except Exception as e:  # the caller names it and goes on without this route
        with contextlib.suppress(OSError, ValueError):
            say({"error": f"{type(e).__name__}: {' '.join(str(e).split())[:900]}"})
        raise
    finally:
        if session is not None:
            session.close()
    return {"turns": turns}


def _finish_partial(session: Any, inputs: Any, st: dict[str, Any], tracker: Any, cpu: Any, job: dict[str, Any],
                    b: int, cap: int, spec: Any, compare_outputs: Any, worst: Any, thread_env: Any) -> dict[str, Any]:
    """One batch's share of a warm worker (bench.rounds.Partial as JSON)."""
    cpu_s, by_role = st["cpu_s"], st["cpu_by_role"]
    last = {k: np.array(v, copy=True) for k, v in session.run(inputs).items()}
    tracker.sample()
    tracker.finish()
    with np.load(job["references"][str(b)], allow_pickle=False) as ref:
        expected = {k: ref[k] for k in ref.files}
    checked = worst(compare_outputs(st["first"], expected, spec.atol, spec.rtol),
                    compare_outputs(last, expected, spec.atol, spec.rtol))
    lat = np.concatenate(st["lat"]) if st["lat"] else np.empty(0, dtype=np.int64)
    calls = int(len(lat))
    return {
        "samples_ns": _capped(lat, cap), "calls": calls, "median_ns": float(np.median(lat)) if calls else None,
        "sum_ns": int(lat.sum()), "turn_medians_ns": [float(np.median(t)) for t in st["lat"]],
        "phases_ns": {k: _capped(np.concatenate(v), cap) for k, v in st["phases"].items()},
        "cpu_s": cpu_s, "cpu_by_role": by_role, "memory": tracker.to_json(session.memory_extra()),
        "correctness": checked, "session": session.describe(), "payload_bytes": st["payload_bytes"],
        "first_call_s": st["first_call_s"], "warmup_calls": st["warmup_calls"], "measure_s": st["measure_s"],
        "worker_pid": os.getpid(), "cpu_affinity": sorted(os.sched_getaffinity(0)),
        "malloc_env": {k: os.environ[k] for k in allocator.ENV_KEYS if k in os.environ},
        "thread_env": {k: os.environ.get(k) for k in thread_env},
    }


def generator(job: dict[str, Any]) -> dict[str, Any]:
    from bench.arrivals import ceiling

    return ceiling(job.get("callers", 4))


JOBS = {"probe": probe, "prepare": prepare, "cell": cell, "generator": generator, "warm": warm}


def main(argv: list[str]) -> int:
    job = json.loads(Path(argv[0]).read_text())
    out = Path(job["out"])
    try:
        result = {"ok": True, **JOBS[job["kind"]](job)}
    except UserError as e:
        result = {"ok": False, "user_error": str(e)}
    except ShapeUnsupported as e:  # the route was built not to take any of the cell's shapes, and said so
        result = {"ok": False, "status": "unsupported", "error": f"cannot take this: {' '.join(str(e).split())[:600]}"}
    except BaseException as e:  # the job failed; the result says how, the run goes on
        text = " ".join(ln.strip() for ln in str(e).splitlines() if ln.strip())  # one line, whole in the traceback
        result = {"ok": False, "status": "error", "error": f"{type(e).__name__}: {text[:600]}".strip(),
                  "traceback": traceback.format_exc()}
    try:
        atomic_write_json(out, result, indent=None)
    except OSError as e:  # the results folder is full or read-only: say so, in as few bytes as possible
        if e.errno not in WRITE_ERRORS:
            raise
        try:
            atomic_write_json(out, {"ok": False, "write_error": [e.errno, e.strerror, e.filename]}, indent=None)
        except OSError:
            return EX_CANNOT_WRITE
    return 0


if __name__ == "__main__":
    code = main(sys.argv[1:])
    # The result is written and fsynced and the session closed: skip the interpreter's finalization,
    # which for an embedded CLR (pythonnet shutting down CoreCLR or Mono) took 8-9 s of every cell.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
