"""The claims users arrive with (../shared/CONTEXT.md), each answered from this run's own cells and
never written by hand: a claim whose cells were not in the run says so. One caller, the run's
primary allocator policy; ratios are medians over the model and batch cells both strategies ran."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

from bench.stats import CostFit
from reports.tables import fmt_ms, fmt_ratio

NOT_MEASURED = "not measured in this run"
SIGNIFICANT = 0.10  # an overhead above 10% of the in-process call is called significant


@dataclass
class Claim:
    claim: str
    answer: str


def _single(df: pd.DataFrame) -> pd.DataFrame:
    ok = df[df.valid & df.p50_ms.notna()]
    return ok[ok.concurrency == ok.concurrency.min()] if len(ok) else ok


def _paired(df: pd.DataFrame, a: str, b: str, models: bool = True) -> pd.DataFrame:
    """a's and b's p50 on the cells both ran (model cells, or identity payload cells)."""
    s = _single(df)
    s = s[s.model != "identity"] if models else s[s.model == "identity"]
    x = s[s.strategy == a].set_index(["model", "batch", "threads"]).p50_ms
    y = s[s.strategy == b].set_index(["model", "batch", "threads"]).p50_ms
    both = pd.concat([x.rename("a"), y.rename("b")], axis=1).dropna()
    return both.reset_index()


def _ratio_text(df: pd.DataFrame, a: str, b: str) -> str | None:
    """'0.43x-0.59x (median 0.50x) over 6 cells' of a's time against b's, or None if none in common."""
    both = _paired(df, a, b)
    if both.empty:
        return None
    r = both.a / both.b
    if len(r) == 1:
        row = both.iloc[0]
        return f"{fmt_ratio(r.iloc[0])} ({row.model}, batch {row.batch})"
    return f"{fmt_ratio(r.min())}-{fmt_ratio(r.max())} (median {fmt_ratio(r.median())}) over {len(r)} model/batch cells"


def _fit_text(fit: CostFit) -> str:
    per = "nothing measurable per byte" if math.isinf(fit.bandwidth_Bps) else f"{fmt_ms(1e12 / fit.bandwidth_Bps)} per GB"
    return f"{fmt_ms(fit.fixed_s * 1e3)} per call + {per}"


def answer(df: pd.DataFrame, fits: dict[str, CostFit]) -> list[Claim]:
    strategies = set(df.strategy)
    out = []

    # 1. gRPC's overhead, by payload size and on the models
    grpc = [s for s in ("grpc", "grpc-uds", "clr-grpc") if s in strategies]
    if "torch" in strategies and grpc:
        parts = []
        for g in grpc:
            sweep = _paired(df, g, "torch", models=False)
            if len(sweep):
                sweep = sweep.assign(kib=sweep.batch)  # identity rows are 1 KiB
                parts.append(f"{g}: " + ", ".join(
                    f"+{fmt_ms(r.a - r.b)} at {_size(int(r.kib))}" for r in sweep.sort_values("kib").itertuples()))
            models = _paired(df, g, "torch")
            if len(models):
                over = (models.a - models.b) / models.b
                parts.append(f"{g} on the models: {fmt_ratio((models.a / models.b).median())} of torch's time (median), "
                             f"the overhead {'significant' if over.median() > SIGNIFICANT else 'not significant'} "
                             f"(over {SIGNIFICANT:.0%} of the call) in {int((over > SIGNIFICANT).sum())} of {len(over)} cells")
        text = "; ".join(parts) or NOT_MEASURED
    else:
        text = NOT_MEASURED + " (needs torch and a grpc route)"
    out.append(Claim("A gRPC microservice's communication overhead \"can become significant\"", text))

    # 2. text encoding against raw bytes
    r = None
    if {"grpc", "grpc-naive"} <= strategies:
        sweep = _paired(df, "grpc-naive", "grpc", models=False)
        r = ", ".join(f"{fmt_ratio(x.a / x.b)} at {_size(int(x.batch))}" for x in sweep.sort_values("batch").itertuples())
        models = _ratio_text(df, "grpc-naive", "grpc")
        r = "; ".join(p for p in (r and f"identity: {r}", models and f"models: {models}") if p) or None
    out.append(Claim("Sending tensors as text (JSON lists) instead of raw bytes",
                     f"grpc-naive takes {r} of grpc's time" if r else NOT_MEASURED + " (needs grpc and grpc-naive)"))

    # 3. ONNX Runtime against eager torch, from each language
    parts = []
    for s, who in (("onnxruntime", "from Python"), ("clr-onnxruntime", "from C#"), ("cpp-onnxruntime", "from C++")):
        t = _ratio_text(df, s, "torch") if s in strategies and "torch" in strategies else None
        parts.append(f"{who} ({s}): {t} of eager torch's time" if t else f"{who}: {NOT_MEASURED}")
    out.append(Claim("ONNX Runtime gives \"efficiency similar to native PyTorch inference\"", "; ".join(parts)))

    # 4. TorchScript and AOTInductor against eager
    parts = []
    for s, what in (("libtorch-ts", "TorchScript in C++"), ("libtorch-aoti", "AOTInductor in C++")):
        t = _ratio_text(df, s, "torch") if s in strategies and "torch" in strategies else None
        parts.append(f"{what} ({s}): {t} of eager torch's time" if t else f"{what}: {NOT_MEASURED}")
    out.append(Claim("TorchScript \"typically introduces a slight performance overhead\" against eager PyTorch",
                     "; ".join(parts)))

    # 5. the .NET boundary per call and per byte
    parts = [f"{s}: {_fit_text(fits[s])}" for s in ("clr-capi", "clr-embed", "clr-naive", "clr-onnxruntime") if s in fits]
    if {"clr-naive", "clr-embed"} <= set(fits) and not math.isinf(fits["clr-embed"].bandwidth_Bps) \
            and not math.isinf(fits["clr-naive"].bandwidth_Bps):
        parts.append(f"element by element moves bytes {fits['clr-embed'].bandwidth_Bps / fits['clr-naive'].bandwidth_Bps:,.0f}x "
                     "slower than bulk")
    out.append(Claim("Embedding Python in .NET has \"low latency\"; per-element conversion is the trap",
                     "; ".join(parts) + " (identity payload sweep)" if parts else NOT_MEASURED + " (needs clr-* routes in the payload sweep)"))

    # 6. which routes fail on which models
    bad = df[~df.valid]
    if len(bad):
        rows = bad.drop_duplicates(["model", "strategy"])
        text = "; ".join(f"{r.strategy} on {r.model}: {r.status}"
                         + (f" ({str(r.error).splitlines()[0][:100]})" if isinstance(r.error, str) and r.error else "")
                         for r in rows.itertuples())
    else:
        text = f"every route ran every model in this run correctly ({df.model.nunique()} models, {len(strategies)} strategies)"
    out.append(Claim("Export \"can fail on custom operators or new architectures\"", text))
    return out


def _size(kib: int) -> str:
    return f"{kib // 1024} MiB" if kib >= 1024 and kib % 1024 == 0 else f"{kib} KiB"
