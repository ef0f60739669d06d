"""Does the ONNX Runtime routes' choice of ONNX file hold up? After the prepare-time selection
(strategies/shared/onnx_export.py: every exporter, every optimization level, checked and timed
briefly at 1 thread, batch 1 and 8), every variant it timed, eager torch, and the `onnxruntime`
strategy's session as the harness opens it (the chosen variant) are measured again side by side in
rotating rounds, one thread, at batch 1 and 8: on the built-in transformer and on a BERT-style
encoder built from a `transformers` config (6 layers, d=384, 12 heads, seq 128, random weights).

Prints, per model and batch, each variant's median time, its ratio to the fastest variant, eager
torch's, the selection's own figure, and whether the strategy's session is within 3% of the fastest
variant measured in the same run. When the selection rejected the TorchScript-based exporter, that
exporter's file is made anyway (its trace check off), checked against eager torch and timed as
`torchscript*` rows: what the rejection costs, not a variant the harness could ship.

    python -m tests.benchmarks.onnx_variants [--rounds 6] [--seconds 0.25] [--models transformer,bert]
        [--batches 1,8]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

WITHIN = 1.03  # the strategy's session against the fastest variant measured in the same run


def median_s(fn, seconds: float, min_calls: int = 3, keep: list[float] | None = None) -> float:
    """Median of single calls over about ``seconds`` after one warm-up call: a BERT b8 call takes a
    good part of a second on one thread, so common.median_call_s's 25 calls would be too many.
    Every call's time also goes to ``keep``, for the fastest call over all rounds."""
    import numpy as np

    fn()
    samples = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end or len(samples) < min_calls:
        t0 = time.perf_counter_ns()
        fn()
        samples.append((time.perf_counter_ns() - t0) / 1e9)
    if keep is not None:
        keep.extend(samples)
    return float(np.median(samples))


def forced_torchscript(handle, out_dir: Path, checks) -> list[tuple[str, Path, str]]:
    """The TorchScript-based exporter with its trace check off; the levels whose outputs match eager
    torch at the selection's check batches."""
    import warnings

    import numpy as np
    import torch

    from fixtures.loading import to_torch_inputs
    from strategies.shared.onnx_export import EXPORT_BATCH, LEVELS, ort_session

    spec = handle.spec
    path = out_dir / "torchscript-unchecked.onnx"
    axes = {t.name: {t.shape.index("batch"): "batch"} for t in spec.inputs if "batch" in t.shape}
    axes.update({o: {0: "batch"} for o in spec.outputs})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(handle.build(), tuple(to_torch_inputs(spec, handle.example_inputs(EXPORT_BATCH))), str(path),
                          dynamo=False, opset_version=18, input_names=[t.name for t in spec.inputs],
                          output_names=list(spec.outputs), dynamic_axes=axes)
    ok = []
    for level in LEVELS:
        sess = ort_session(path, level, threads=1)
        names = [o.name for o in sess.get_outputs()]
        good = True
        for x, ref in checks:
            got = dict(zip(names, sess.run(names, x)))
            good = good and all(np.allclose(got[k], e, atol=spec.atol, rtol=spec.rtol) for k, e in ref.items())
        print(f"  torchscript*/{level}: {'matches eager torch' if good else 'DIFFERS from eager torch, not timed'}")
        if good:
            ok.append((f"torchscript*/{level}", path, level))
    return ok


def contrib_ops(path: Path) -> str:
    """The ONNX Runtime contrib ops (fusions) in a file, by count."""
    import onnx

    ops: dict[str, int] = {}
    for node in onnx.load(str(path), load_external_data=False).graph.node:
        if node.domain == "com.microsoft":
            ops[node.op_type] = ops.get(node.op_type, 0) + 1
    return ", ".join(f"{k} {n}" for k, n in sorted(ops.items()))


def ort_call(sess):
    names = [o.name for o in sess.get_outputs()]
    return lambda x: sess.run(names, x)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--seconds", type=float, default=0.25, help="per measurement and round (BERT b8: at least 3 calls)")
    ap.add_argument("--models", default="transformer,bert")
    ap.add_argument("--batches", default="1,8")
    args = ap.parse_args()

    import torch

    import strategies
    from fixtures.builtin import BUILTIN_MODELS
    from fixtures.loading import run_eager, to_torch_inputs
    from plumbing.cache import default_cache_dir
    from strategies.base import ModelHandle, SessionOptions
    from strategies.shared.onnx_export import export_into, ort_session
    from tests.benchmarks.common import rotating

    torch.set_num_threads(1)
    tmp = Path(tempfile.mkdtemp())
    ort = strategies.get("onnxruntime")
    print(f"ONNX variants side by side, 1 thread, {args.rounds} rotating rounds of ~{args.seconds}s per measurement")
    for model in args.models.split(","):
        if model == "bert":
            from tests.bert_models import bert_spec

            spec = bert_spec()
        else:
            spec = BUILTIN_MODELS[model]
        handle = ModelHandle(spec, 0)
        art = tmp / model
        art.mkdir()
        t0 = time.perf_counter()
        info = export_into(handle, art, default_cache_dir())
        print(f"\n{model}: {spec.description}")
        print(f"  selection ({time.perf_counter() - t0:.0f} s, cached after the first run) chose {info['chosen']}")
        for f in sorted({v["file"] for v in info["variants"] if "file" in v}):
            print(f"  {f}: {contrib_ops(art / f) or 'no ORT contrib ops'}")
        for v in info["variants"]:
            if "score_s" not in v:
                print(f"  not timed: {v['variant']}: {v.get('lost', '')[:150]}")

        module = handle.build()
        calls = {}  # name -> a call taking the inputs
        picks = {}
        for v in info["variants"]:
            if "score_s" in v:
                sess = ort_session(art / v["file"], v["level"], threads=1)
                picks[v["variant"]] = v
                calls[v["variant"]] = ort_call(sess)
        if any(v["variant"] == "torchscript" and "file" not in v for v in info["variants"]):
            checks = [(handle.example_inputs(b), run_eager(module, spec, handle.example_inputs(b))) for b in (1, 3)]
            for name, path, level in forced_torchscript(handle, art, checks):
                sess = ort_session(path, level, threads=1)
                calls[name] = ort_call(sess)
        strategy_session = ort.open(handle, art, SessionOptions(1))
        calls["onnxruntime strategy"] = strategy_session.run

        def eager(x, m=module, spec=spec):
            with torch.inference_mode():
                return m(*to_torch_inputs(spec, x))

        calls["torch eager"] = eager

        for batch in map(int, args.batches.split(",")):
            x = handle.example_inputs(batch)
            every: dict[str, list[float]] = {n: [] for n in calls}
            times = rotating({n: (lambda fn=fn, x=x, k=every[n]: median_s(lambda: fn(x), args.seconds, keep=k))
                              for n, fn in calls.items()}, args.rounds)
            best = {n: min(t) for n, t in every.items()}
            med = {n: statistics.median(t) for n, t in times.items()}
            variants = [n for n in calls if n in picks]
            fastest = min(variants, key=med.__getitem__)
            fastest_any = min([n for n in calls if n in picks or n.startswith("torchscript*")], key=med.__getitem__)
            sel_rank = sorted(variants, key=lambda n: picks[n].get(f"b{batch}_s", picks[n]["score_s"]))
            print(f"  batch {batch}: {'variant':<30} {'median':>10} {'/fastest*':>9} {'min':>10} {'selection':>10} "
                  f"{'rank here/sel.':>15}")
            order = sorted(calls, key=med.__getitem__)
            for n in order:
                sel = f"{picks[n][f'b{batch}_s'] * 1e3:8.2f}ms" if f"b{batch}_s" in picks.get(n, {}) else ""
                rank = (f"{sorted(variants, key=med.__getitem__).index(n) + 1}/{sel_rank.index(n) + 1}"
                        if n in picks else "")
                mark = " (chosen)" if n == info["chosen"] else ""
                rel = statistics.median(a / b for a, b in zip(times[n], times[fastest]))
                print(f"           {n + mark:<30} {med[n] * 1e3:8.2f}ms {rel:9.3f} {best[n] * 1e3:8.2f}ms "
                      f"{sel:>10} {rank:>15}")
            per_round = [a / b for a, b in zip(times["onnxruntime strategy"], times[fastest])]
            ratio = statistics.median(per_round)
            ok = "yes" if ratio <= WITHIN else "NO"
            print(f"           strategy ({info['chosen']}) vs fastest variant here ({fastest}): {ratio:.3f} "
                  f"(median of per-round ratios, rounds {min(per_round):.2f}..{max(per_round):.2f}) -> within 3%: {ok}")
            quickest, ours = min(variants, key=best.__getitem__), best["onnxruntime strategy"]
            print(f"           by the fastest single call (less sensitive to load): strategy {ours * 1e3:.2f} ms vs "
                  f"{quickest} {best[quickest] * 1e3:.2f} ms: {ours / best[quickest]:.3f} -> within 3%: "
                  f"{'yes' if ours <= WITHIN * best[quickest] else 'NO'}")
            if fastest_any != fastest:
                r = statistics.median(a / b for a, b in zip(times["onnxruntime strategy"], times[fastest_any]))
                print(f"           strategy vs {fastest_any} (rejected by the trace check): {r:.3f}")
            print("           (*median of per-round ratios to the fastest variant by median)")
            print(f"           eager torch / strategy: {med['torch eager'] / med['onnxruntime strategy']:.3f}")
        strategy_session.close()
        del calls
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
