"""``shapes``: requests of varying shape through one caller. Real traffic is not one tensor repeated:
sentences have different lengths. For each model with named dimensions (``seq=8..128``), a set of
requests with sizes drawn from a length distribution (``--lengths fixed|uniform|lognormal``,
deterministic from the seed), or the user's own recorded requests (``--inputs DIR``, ``.npz`` files
replayed in file-name order), goes through every strategy in the same order:

- the first call of each request, timed apart, and marked where its shape is new to the session
  (re-planning, recompiling or a guard failure show there);
- then rounds over every request, timed, the samples kept per request;
- every request's outputs against eager torch (references computed once per run in the probe and
  cached by the requests' content), with the error distribution per output and, where an output
  looks like class scores, the share of rows whose argmax agrees.

The cell's latency is every timed call; its parts (one per length bucket: power-of-two bins of the
first named dimension) are rows of their own in summary.csv, compare and history (``@lognormal.seq16-31``),
so a regression at long lengths is not averaged away."""

from __future__ import annotations

import functools
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.record import Cell, CellResult, Status
from bench.scenarios import register
from bench.scenarios.base import (
    Context,
    Measured,
    Option,
    Scenario,
    choice,
    positive_int,
)
from bench.sections import Curve, Section, Table
from plumbing.errors import UserError
from strategies.base import ShapeUnsupported

DEFAULT_REQUESTS = 24


def _folder(label: str, v: Any) -> str:
    if v in (None, ""):
        return ""
    p = Path(str(v)).expanduser()
    if not p.is_dir():
        raise UserError(f"{label}: {v!r} is not a folder of .npz requests")
    return str(p.resolve())


@functools.lru_cache(maxsize=8)
def _digest(folder: str, stamp: float) -> str:
    from fixtures.requests import folder_digest

    return folder_digest(Path(folder))


@register
class Shapes(Scenario):
    name = "shapes"
    summary = ("requests of varying shape (a length distribution over the model's named dimensions, or recorded "
               "requests replayed): latency per length bucket, each new shape's first call, every request checked")
    table = "shapes"
    options = {
        "lengths": Option("lognormal", choice("fixed", "uniform", "lognormal"),
                          "how generated requests' lengths are drawn from each named dimension's range", "--lengths"),
        "requests": Option(DEFAULT_REQUESTS, lambda label, v: positive_int(label, v, 2000),
                           "how many distinct requests are generated", "--shape-requests"),
        "inputs": Option("", _folder, "a folder of recorded requests (.npz, one each) to replay instead", "--inputs"),
    }
    figure_columns = ("requests", "new_shape_first_ms", "argmax_agreement", "p99_abs_err")

    def timeout_s(self, sampling: Any, options: dict[str, Any]) -> float:
        return sampling.warmup_s * 4 + sampling.max_time_s * 3 + 10.0 * int(options.get("requests") or DEFAULT_REQUESTS) + 60

    def _models(self, cfg: Any, options: dict[str, Any]) -> list[tuple[str, int, str]]:
        """(model, batch, point) per model this scenario measures."""
        from fixtures.requests import replayed, request_files, request_names

        out = []
        if options.get("inputs"):
            # the recorded requests are for the models whose input names they carry (the first file says which);
            # for those, every file is checked here: a bad one stops the run before it starts
            folder = Path(options["inputs"])
            first = request_names(request_files(folder)[0])
            mine = [n for n in cfg.models if {t.name for t in cfg.model_spec(n).inputs} == first] or cfg.models[:1]
            if len(cfg.models) > 1 and not [n for n in cfg.models if {t.name for t in cfg.model_spec(n).inputs} == first]:
                raise UserError(f"--inputs {folder}: its requests carry {sorted(first)}, the inputs of none of the run's "
                                f"models ({', '.join(cfg.models)}); pick the model with --models")
            for name in mine:
                reqs = replayed(folder, cfg.model_spec(name))
                out.append((name, int(reqs[0][0]["batch"]), "replay"))
            return out
        for name in cfg.models:
            spec = cfg.model_spec(name)
            if spec.dims:
                out.append((name, min(cfg.batch_sizes) if cfg.batch_sizes else 1, str(options["lengths"])))
        return out

    def cells(self, cfg: Any, options: dict[str, Any]) -> list[Cell]:
        policies = cfg.malloc if len(cfg.malloc) > 1 else [""]
        return [Cell(model, s, batch, threads, 1, policy, self.name, point)
                for model, batch, point in self._models(cfg, options) for threads in cfg.threads
                for policy in policies for s in cfg.strategies]

    def reference_plan(self, cell: Cell, options: dict[str, Any]) -> dict[str, Any] | None:
        if cell.point == "replay":
            folder = str(options["inputs"])
            return {"kind": "replay", "dir": folder, "digest": _digest(folder, Path(folder).stat().st_mtime)}
        return {"kind": "generated", "lengths": str(options["lengths"]), "count": int(options["requests"]),
                "batch": cell.batch}

    def point_label(self, point: str) -> str:
        return point.replace(".", " ")

    def measure(self, ctx: Context) -> Measured:
        from bench.correctness import compare_outputs
        from fixtures.requests import bucket_edges, bucket_of, plan_key, requests_for
        from fixtures.specs import ModelSpec

        spec = ModelSpec.from_json(ctx.job["model"])
        plan = self.reference_plan(ctx.cell, ctx.options)
        reqs = requests_for(spec, ctx.job["seed"], plan)
        ref_dir = Path(ctx.job["ref_dir"]) / f"requests-{plan_key(plan)}"
        dim = sorted(spec.dims)[0] if spec.dims else None
        edges = bucket_edges(*spec.dims[dim][:2]) if dim else []
        session = ctx.session

        # 1. each request once, in order: its first call timed apart, its outputs checked
        seen: set[tuple] = set()
        unsupported = ""
        per: list[dict[str, Any]] = []
        checks = []
        for i, (sizes, x) in enumerate(reqs):
            shape = tuple(sorted((k, v.shape) for k, v in x.items()))
            with np.load(ref_dir / f"{i}.npz", allow_pickle=False) as z:
                expected = {k: z[k] for k in z.files}
            t0 = time.perf_counter_ns()
            try:
                out = session.run(x)
                first = time.perf_counter_ns() - t0
                out = {k: np.array(v, copy=True) for k, v in out.items()}
                check = compare_outputs(out, expected, spec.atol, spec.rtol)
            except ShapeUnsupported as e:  # built not to take this size (its toolchain fixed it), and says so
                first = time.perf_counter_ns() - t0
                out, unsupported = {}, unsupported or f"{' '.join(str(e).split())[:300]}"
                check = {"ok": True, "outputs": {}, "problems": [], "unsupported": True}
            except Exception as e:  # a route that cannot take this shape at all: this request fails, the rest go on
                first = time.perf_counter_ns() - t0
                out, text = {}, " ".join(str(e).split())
                check = {"ok": False, "outputs": {}, "problems": [f"raised {type(e).__name__}: {text[:200]}"]}
            checks.append((out, expected, check))
            n = sizes.get(dim, 0) if dim else 0
            per.append({"i": i, "sizes": {k: v for k, v in sizes.items() if k != "batch"},
                        "batch": int(next(iter(x.values())).shape[0]) if x else 0, "bucket": bucket_of(n, edges) if dim else "all",
                        "length": n, "first_ms": first / 1e6, "new_shape": shape not in seen, "ok": bool(check["ok"]),
                        "unsupported": bool(check.get("unsupported"))})
            seen.add(shape)
            ctx.between_rounds()

        # 2. rounds over every request, each request's calls timed by the session (its own loop)
        budget = max(ctx.sampling.min_time_s, ctx.sampling.max_time_s)
        rounds = 3
        lat: list[list[np.ndarray]] = [[] for _ in reqs]
        est = [max(p["first_ms"] / 1e3, 1e-6) for p in per]
        t_start = time.perf_counter()
        for _ in range(rounds):
            for i, (_, x) in enumerate(reqs):
                if not checks[i][0]:  # it raised: nothing to time
                    continue
                k = max(1, int(budget / rounds / len(reqs) / est[i]))
                got = session.time_calls(x, k).latency_ns
                lat[i].append(got)
                est[i] = float(np.median(got)) / 1e9
            ctx.between_rounds()
        wall = time.perf_counter() - t_start
        timed = [a for rs in lat for a in rs]
        every = np.concatenate(timed) if timed else np.empty(0, dtype=np.int64)
        for p, rs in zip(per, lat):
            p["p50_ms"] = float(np.median(np.concatenate(rs))) / 1e6 if rs else None

        # 3. correctness over every request
        correctness = _errors(checks)
        problems = [f"request {p['i']} ({', '.join(f'{k}={v}' for k, v in p['sizes'].items()) or 'batch ' + str(p['batch'])}): "
                    + "; ".join(c["problems"][:2]) for p, (_, _, c) in zip(per, checks) if not c["ok"]]

        if not len(every):
            if unsupported and not problems:
                raise ShapeUnsupported(unsupported)
            raise RuntimeError(f"every request failed; {problems[0] if problems else 'none was timed'}")
        parts = []
        if dim:
            for b in dict.fromkeys(p["bucket"] for p in sorted(per, key=lambda p: p["length"])):
                idx = [p["i"] for p in per if p["bucket"] == b]
                got = [a for i in idx for a in lat[i]]
                if not got:
                    continue
                ns = np.concatenate(got)
                firsts = [per[i]["first_ms"] for i in idx if per[i]["new_shape"]]
                parts.append({"point": f"{dim}{b}", "latency_ns": ns, "figures": {
                    "requests": len(idx), "new_shape_first_ms": float(np.median(firsts)) if firsts else None}})
        firsts = [p["first_ms"] for p in per if p["new_shape"]]
        figures = {"requests": len(reqs), "new_shape_first_ms": float(np.median(firsts)) if firsts else None,
                   "argmax_agreement": correctness.get("argmax_agreement"),
                   "p99_abs_err": max((o["p99_abs"] for o in correctness["outputs"].values()), default=None)}
        detail = {"dim": dim, "edges": edges, "plan": {k: v for k, v in plan.items() if k != "dir"}, "requests": per,
                  "correctness": correctness, "distinct_shapes": len(seen), "problems": problems[:20]}
        return Measured(every, len(every), wall, {"rounds": rounds, "requests": len(reqs), "budget_s": budget},
                        calls_per_s=len(every) / (every.sum() / 1e9) if len(every) else 0.0, figures=figures,
                        detail=detail, parts=parts, problems=problems,
                        unsupported=(f"{sum(p['unsupported'] for p in per)} of {len(per)} requests: {unsupported}"
                                     if unsupported else ""))

    def describe(self, result: CellResult) -> str:
        d = result.detail
        reqs = d.get("requests") or []
        if not reqs:
            return ""
        by: dict[str, list[float]] = {}
        for p in sorted(reqs, key=lambda p: p["length"]):
            if p.get("p50_ms") is not None:
                by.setdefault(p["bucket"], []).append(p["p50_ms"])
        text = "  ".join(f"{d.get('dim') or ''}{b}: {np.median(v):.3g}ms" for b, v in by.items())
        bad = sum(not p["ok"] for p in reqs)
        return f"{len(reqs)} requests  {text}" + (f"  {bad} WRONG" if bad else "")

    def report(self, rows: list[dict[str, Any]], results: list[CellResult], options: dict[str, Any]) -> Section | None:
        mine = [r for r in results if (r.status.ran or r.status is Status.UNSUPPORTED)
                and r.detail.get("requests")]
        if not mine:
            return None
        part = Section("shapes", "Variable shapes: latency against length, and every request checked")
        pooled: dict[tuple[str, str, str], tuple[Any, Any]] = {}  # (model, strategy, "seq8-15") -> the bucket row's p50, p99
        for row in rows:
            point = str(row.get("point") or "")
            if "." in point:
                pooled[(row["model"], row["strategy"], point.split(".", 1)[1])] = (row.get("p50_ms"), row.get("p99_ms"))
        replay = any(r.cell.point == "replay" for r in mine)
        part.text.append(
            ("Recorded requests replayed" if replay else f"{len(mine[0].detail['requests'])} requests with "
             f"lengths drawn {options.get('lengths', 'lognormal')} over each model's range")
            + ", in the same order through every strategy, one caller. *first call (new shape)* is the median first "
            "call of a request whose shape the session had not seen: re-planning, recompiling or a shape guard show "
            "there. Every request's outputs are checked against eager torch; a strategy wrong at any length is "
            "invalid, never ranked.")
        for model in dict.fromkeys(r.cell.model for r in mine):
            rs = sorted((r for r in mine if r.cell.model == model), key=lambda r: r.cell.strategy)
            d0 = rs[0].detail
            dim = d0.get("dim") or "size"
            buckets = list(dict.fromkeys(p["bucket"] for r in rs for p in sorted(r.detail["requests"],
                                                                                   key=lambda p: p["length"])))
            series: dict[str, list[tuple[float, float]]] = {}
            table = []
            for r in rs:
                d = r.detail
                by: dict[str, list[float]] = {}
                pts: dict[int, list[float]] = {}
                for p in d["requests"]:
                    if p.get("p50_ms") is not None:
                        by.setdefault(p["bucket"], []).append(p["p50_ms"])
                        pts.setdefault(p["length"], []).append(p["p50_ms"] / 1e3)
                series[r.cell.strategy] = sorted((float(n), float(np.median(v))) for n, v in pts.items() if n)
                c = d.get("correctness") or {}
                errs = "; ".join(f"{k} max {_e(o.get('max_abs'))}, p99 {_e(o.get('p99_abs'))} (rel max {_e(o.get('max_rel'))})"
                                 for k, o in c.get("outputs", {}).items())
                agree = c.get("argmax_agreement")
                firsts = [p["first_ms"] for p in d["requests"] if p["new_shape"]]
                status = "ok" if r.ok else (
                    f"cannot take {sum(p.get('unsupported', False) for p in d['requests'])} of {len(d['requests'])}"
                    if r.status is Status.UNSUPPORTED else f"WRONG at {sum(not p['ok'] for p in d['requests'])} of {len(d['requests'])}")
                table.append([r.cell.strategy] + [_bucket(pooled.get((model, r.cell.strategy, f"{dim}{b}")), by.get(b))
                                                        for b in buckets]
                             + [_ms(float(np.median(firsts))) if firsts else "-", status, errs or "-",
                                f"{agree:.1%}" if agree is not None else "-"])
            for r in results:  # the routes of this model with nothing per request to show: say why
                if r.cell.model == model and r not in mine and not r.ok:
                    table.append([r.cell.strategy] + ["-"] * len(buckets)
                                 + ["-", f"{r.status}: {r.first_error_line[:160]}",
                                    "-", "-"])
            part.tables.append(Table(["strategy"] + [f"{dim} {b}: p50 (p99)" for b in buckets]
                                         + ["first call (new shape)", "outputs", "abs error (max, p99 over requests; rel max)",
                                            "argmax agrees"], table,
                                         title=f"{model}: median latency per {dim} bucket, batch {rs[0].cell.batch}"))
            if any(series.values()):
                part.figures.append(Curve(f"shapes-{model}", f"{dim} (the request's length)", "median latency", series,
                                         log_y=True, y_seconds=True,
                                         title=f"{model}: median latency against {dim}, per request, each route"))
        return part


def _bucket(row: tuple[Any, Any] | None, per_request: list[float] | None) -> str:
    """A bucket's p50 (p99 where its samples bound it), from its own row; else the median of its requests'."""
    def num(v: Any) -> float | None:
        return None if v is None or v != v else float(v)

    p50, p99 = (num(row[0]), num(row[1])) if row else (None, None)
    if p50 is None:
        return _ms(float(np.median(per_request))) if per_request else "-"
    return _ms(p50) + (f" (p99 {_ms(p99)})" if p99 is not None else "")


def _ms(v: float) -> str:
    return f"{v * 1e3:.3g} µs" if v < 1 else f"{v:.3g} ms"


CLASS_SCORES = ("logit", "score", "prob", "class", "label")


def _e(v: Any) -> str:
    return "-" if v is None else f"{v:.1e}"


def _errors(checks: list[tuple[dict[str, np.ndarray], dict[str, np.ndarray], dict[str, Any]]]) -> dict[str, Any]:
    """Per output, over every request: the largest and the 99th percentile of each request's max abs and
    rel error; where an output looks like class scores ([batch, classes], float, named like logits or
    the model's only output), the share of rows
    whose argmax agrees with eager torch."""
    outputs: dict[str, dict[str, float]] = {}
    agree = total = 0
    for out, expected, check in checks:
        for name, rec in check["outputs"].items():
            o = outputs.setdefault(name, {"abs": [], "rel": []})
            o["abs"].append(rec.get("max_abs", float("inf")))
            o["rel"].append(rec.get("max_rel", float("inf")))
            a, e = out.get(name), expected[name]
            scores = any(w in name.lower() for w in CLASS_SCORES) or len(expected) == 1  # a lone 2-D output: a classifier's
            if scores and a is not None and a.shape == e.shape and e.ndim == 2 and e.shape[1] >= 2 and e.dtype.kind == "f":
                agree += int((np.argmax(a, axis=1) == np.argmax(e, axis=1)).sum())
                total += e.shape[0]
    summary = {name: {"max_abs": float(np.max(o["abs"])), "p99_abs": float(np.percentile(o["abs"], 99)),
                      "max_rel": float(np.max(o["rel"])), "p99_rel": float(np.percentile(o["rel"], 99))}
               for name, o in outputs.items()}
    return {"outputs": summary, "requests": len(checks), "wrong": sum(not c["ok"] for _, _, c in checks),
            "argmax_agreement": agree / total if total else None}
