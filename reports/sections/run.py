"""The run's own sections: each other scenario's part, how each route ran each model, correctness, the
failed cells, the environment; and the warnings above them all."""

from __future__ import annotations

import json
import math
from typing import TYPE_CHECKING, Any

from bench import allocator
from bench.sections import Section, Table
from reports.tables import allocator_flips, decisions

if TYPE_CHECKING:
    from reports.content import Inputs


def run_warnings(x: Inputs) -> list[str]:
    """What a reader must know before any figure: an unfinished run, unreadable, failed or noisy cells, a
    remote server, a dirty tree, a ranking that depends on the allocator."""
    run, meta, env, valid, sessions = x.run, x.meta, x.env, x.valid, x.sessions
    df_cells = x.frame_cells
    warnings = []
    expected = len(meta.get("cells", [])) or len(df_cells)
    if meta.get("status") != "complete" or len(df_cells) < expected:
        warnings.append(f"Run status is **{meta.get('status', '?')}**: {len(df_cells)} of {expected} cells measured "
                        f"(`python -m bench run --resume {run.path}` finishes it).")
    if getattr(run, "unreadable", None):
        warnings.append(f"{len(run.unreadable)} cell file(s) could not be read and are left out: "
                        f"{', '.join(run.unreadable[:6])}{' ...' if len(run.unreadable) > 6 else ''} "
                        f"(`python -m bench run --resume {run.path}` measures them again).")
    for status, what in (("invalid", "gave wrong outputs and are not ranked"), ("error", "failed"),
                         ("skipped", "were skipped"),
                         ("unsupported", "are routes built not to take some of the shapes asked of them (they said so)")):
        n = int((df_cells.status == status).sum())
        if n:
            warnings.append(f"{n} cell(s) {what}: {', '.join(df_cells[df_cells.status == status].cell_id[:6])}"
                            + (" ..." if n > 6 else ""))
    noisy = valid[valid.noisy == True]  # noqa: E712
    if len(noisy):
        warnings.append(f"{len(noisy)} cell(s) have an IQR above 10% of the median: compare their percentiles, "
                        f"not only medians ({', '.join(noisy.cell_id[:5])}{' ...' if len(noisy) > 5 else ''}).")
    remote = {s: d for s, d in sessions.items() if d.get("remote")}
    if remote:
        warnings.append("Measured against a server started elsewhere: " + "; ".join(
            f"**{s}** via {d.get('transport')}" for s, d in sorted(remote.items()))
            + ". Their latency includes that network; their memory counts only this machine's client.")
    if env.get("git", {}).get("dirty"):
        warnings.append("The working tree had uncommitted changes when this run started.")
    if x.policies:
        warnings.extend(f"Allocator-dependent ranking: {f}." for f in allocator_flips(decisions(x.df_all)))
    return warnings


def scenario_parts(x: Inputs) -> list[Section]:
    """Each other scenario's own section (open-loop, slo, shapes, plug-ins), from its report hook."""
    from bench import scenarios

    out = []
    options = x.cfg.get("scenario_options") or {}
    for name in x.cfg.get("scenarios") or []:
        if name in x.standing or name not in scenarios.names():
            continue
        mine = [r for r in x.cells if r.cell.scenario == name]  # its cells, parts inside (record.with_parts() gives them apart)
        part = scenarios.get(name).report(x.frame[x.frame.scenario == name].to_dict("records"), mine, options.get(name, {}))
        if part is not None:
            out.append(part)
    return out


def artifacts(x: Inputs) -> list[Section]:
    """What each route chose or found for each model (the ONNX file and level, what other runtimes did)."""
    per_model = x.per_model
    if per_model:
        sec = Section("artifacts", "How each route ran each model")
        sec.text.append("What a strategy chose or found for each model: the ONNX file and optimization level every "
                        "ONNX Runtime route runs (the fastest correct of every exporter and level, timed side by "
                        "side when the artifact was built, with what the others cost), and what other runtimes "
                        "did with the model.")
        shared: dict[tuple[str, str], list[str]] = {}  # routes with the same facts for a model share rows
        for (m, st), facts in sorted(per_model.items()):
            shared.setdefault((m, json.dumps(facts, default=str)), []).append(st)
        sec.tables.append(Table(["model", "strategy", "fact", "value"], [
            [m, ", ".join(sts), k, str(v)] for (m, facts), sts in shared.items() for k, v in json.loads(facts).items()],
            align_numbers=False))
        return [sec]
    return []


def correctness(x: Inputs) -> list[Section]:
    """Every output of the first and last call of every cell against eager torch."""
    results_every = x.rows
    sec = Section("correctness", "Correctness against eager torch")
    rows, bad = [], set()
    checked = [(r, r.correctness) for r in results_every if r.correctness is not None]
    for r, corr in checked:
        if not corr.ok:
            bad.add(len(rows))
        for name, o in corr.outputs.items():
            w = o.worst  # bench.correctness's worst element: a plain dict
            rows.append([r.id, name, "x".join(map(str, o.shape)), o.dtype,
                         f"{o.max_abs:.2e}" if o.max_abs is not None else "-",
                         f"{w['error']:.2e} of {w['allowed']:.2e} ({w['used']:.1%})" if w else "-",
                         f"{corr.atol:g} + {corr.rtol:g} x |ref|", "ok" if o.ok else "WRONG"])
    n_ok = sum(1 for _, corr in checked if corr.ok)
    sec.text.append(f"Every output of the first and the last call is compared with eager torch on the same "
                    f"inputs. Each element may differ by atol + rtol x |reference| (numpy.allclose's rule); the "
                    f"worst element is the one that uses the largest share of its own allowance. {n_ok} of {len(checked)} "
                    "checked cells are correct.")
    sec.tables.append(Table(["cell", "output", "shape", "dtype", "max abs err", "worst element: error of allowed",
                             "tolerance per element", "result"], rows, bad))
    return [sec]


def errors(x: Inputs) -> list[Section]:
    """Failed, invalid, unsupported and skipped cells, each with its reason and traceback."""
    results_every = x.rows
    failed = [r for r in results_every if not r.ok]  # error, skipped, invalid, unsupported
    if failed:
        sec = Section("errors", "Failed, invalid and skipped cells")
        sec.tables.append(Table(["cell", "status", "reason"], [[r.id, str(r.status), _first_line(r.error, 300)]
                                                               for r in failed], set(range(len(failed)))))
        sec.details = [(r.id, r.traceback) for r in failed if r.traceback]
        return [sec]
    return []


def environment(x: Inputs) -> list[Section]:
    """The machine, the packages, the threads, the inputs, the commit, the sampling budget."""
    env, cfg, results, sessions = x.env, x.cfg, x.results, x.sessions
    sec = Section("environment", "Environment")
    pk = env.get("packages", {})
    git = env.get("git", {})
    sampling = cfg.get("sampling", {})
    kv = [
        ("CPU", f"{env.get('cpu_model', '?')} ({env.get('logical_cores')} logical, {env.get('physical_cores')} physical cores)"),
        ("memory", f"{env.get('memory_gb')} GB"), ("OS", env.get("os", "?")), ("Python", env.get("python", "?")),
        ("packages", ", ".join(f"{k} {v}" for k, v in pk.items() if v != "not installed")),
        ("strategy runtimes", "; ".join(f"{s}: " + ", ".join(f"{k} {v}" for k, v in vs.items())
                                        for s, vs in env.get("strategy_runtimes", {}).items())),
        ("threads", f"intra-op threads per cell as listed (every runtime set explicitly); thread counts in this run: "
                    f"{cfg.get('threads')}; the workers' own environment: " + (", ".join(
                        sorted({f"{k}={v}" for r in results for k, v in r.thread_env.items()}))
                        or "not recorded (results from before it was)")),
        ("inputs", _inputs_text(cfg)),
        ("git", f"{git.get('commit') or 'not a git checkout'}" + (f" on {git.get('branch')}" if git.get("branch") else "")
         + (" (dirty)" if git.get("dirty") else "")),
        ("profile", f"{cfg.get('profile')}; sampling: " + ", ".join(f"{k}={v}" for k, v in sampling.items())),
        ("CPU pinning", f"each cell's processes on CPUs {cfg['cpus']}" if cfg.get("cpus") else "none (the OS schedules freely)"),
        ("allocator", "; ".join(allocator.describe(p) for p in allocator.of_run(cfg))
         + ("; each cell names its policy" if len(allocator.of_run(cfg)) > 1 else "")),
        ("seed", str(cfg.get("seed"))), ("host", env.get("hostname", "?")), ("CI", str(env.get("ci"))),
    ] + [(f"session: {s}", ", ".join(f"{k} {v}" for k, v in d.items())) for s, d in sorted(sessions.items())]
    sec.tables.append(Table(["", ""], [[k, str(v)] for k, v in kv], align_numbers=False))
    return [sec]


def _inputs_text(cfg: dict[str, Any]) -> str:
    """How each model's inputs were generated: the spec with value ranges, and the seed."""
    from fixtures.builtin import BUILTIN_MODELS
    from fixtures.specs import ModelSpec

    custom = {k: ModelSpec.from_json(v) for k, v in (cfg.get("custom_models") or {}).items()}
    parts = []
    for name in dict.fromkeys([*(cfg.get("models") or []), *(["identity"] if cfg.get("payload_sizes") else [])]):
        spec = custom.get(name) or BUILTIN_MODELS.get(name)
        if spec is None:
            continue
        parts.append(f"{name}: " + "; ".join(
            t.describe() + (" padding mask (rows of ones, then zeros, at least half ones)" if t.kind == "padding_mask"
                            else f" uniform in [{t.low:g}, {t.high:g})") for t in spec.inputs))
    return " | ".join(parts) + f" (generated from seed {cfg.get('seed', 0)}; the same inputs for every strategy)"


def _first_line(s: Any, n: int = 140) -> str:
    s = "" if s is None or (isinstance(s, float) and math.isnan(s)) else str(s)
    return s.splitlines()[0][:n] if s else ""
