from __future__ import annotations

import json
import re
from html import unescape
from pathlib import Path

from tests.conftest import QUICK_STRATEGIES, run_bench

SECTIONS = ["caller", "scorecard", "crossovers", "every-route", "claims", "decision", "latency", "throughput", "overhead", "payload", "memory", "coldstart", "correctness",
            "environment"]


def test_report_renders_every_section(quick_run: Path, tmp_path: Path):
    html = (quick_run / "report.html").read_text()
    for sid in SECTIONS:
        assert f"<section id={sid}>" in html, sid
    figures = re.findall(r"src='data:image/png;base64,([A-Za-z0-9+/=]{2000,})'", html)
    assert len(figures) >= 9  # distributions, p50/p99, 3 throughput, overhead, payload, memory, cold start
    assert "http://" not in html and "https://" not in html  # self-contained
    assert "alt='shapes-transformer'" in html  # the quick profile measures the transformer's lengths: latency against length
    text = unescape(html)  # "torch's" is "torch&#x27;s" in the page
    assert "wins at" in text or " tie at " in text
    for phrase in ("in-process torch's time", "fit R²", "GB/s", "Cold start", "max abs err",
                   "ready from nothing", "runtime import", "p99 95% CI"):
        assert phrase in text, phrase
    md = (quick_run / "report.md").read_text()
    for heading in ("## Decision by caller language", "## Every strategy ranked", "## Marshaling cost: payload sweep", "## Memory", "## Correctness"):
        assert heading in md
    for png in re.findall(r"\]\((report_files/[\w.]+\.png)\)", md):
        assert (quick_run / png).stat().st_size > 1000
    # re-rendering from the results folder alone gives the same page structure
    p = run_bench("report", str(quick_run), cwd=tmp_path)
    assert p.returncode == 0 and "report.html" in p.stdout


def test_decision_table_ranks_both_strategies(quick_run: Path):
    md = (quick_run / "report.md").read_text()
    table = md.split("## Every strategy ranked", 1)[1].split("##", 1)[0]
    rows = [ln for ln in table.splitlines() if ln.startswith("| mlp") or ln.startswith("| transformer") or ln.startswith("| cnn")]
    assert len(rows) == 6  # 3 models x 2 batch sizes
    assert all(all(re.search(rf"(^|[ ;]){re.escape(s)} ", r) for s in QUICK_STRATEGIES) for r in rows)


def test_report_says_how_each_route_ran_each_model(quick_run: Path):
    """The ONNX variant every ORT route ran (one set of rows for the routes that share the file) and
    what ExecuTorch delegated, per model."""
    md = (quick_run / "report.md").read_text()
    table = md.split("## How each route ran each model", 1)[1].split("\n## ", 1)[0]
    for model in ("mlp", "cnn", "transformer"):
        # the routes that run the onnxruntime strategy's file, from Python, C++ and C# on both CLRs
        assert f"| {model} | clr-onnxruntime, cpp-onnxruntime, onnxruntime | onnx variant | " in table, model
        assert re.search(rf"\| {model} \| executorch \| xnnpack delegation \| (complete|partial)", table), model
    assert "(fastest correct)" in table and "other variants" in table


def test_the_common_claims_are_answered_from_the_run_s_own_cells(quick_run: Path):
    md = (quick_run / "report.md").read_text()
    table = md.split("## The common claims, answered by this run", 1)[1].split("\n## ", 1)[0]
    rows = {ln.split(" | ")[0].lstrip("| "): ln for ln in table.splitlines() if ln.startswith("| ") and "---" not in ln}
    grpc = next(v for k, v in rows.items() if k.startswith("A gRPC microservice"))
    assert re.search(r"grpc: \+[0-9.]+ (µs|ms) at 1 KiB", grpc) and "of torch's time" in grpc
    text = next(v for k, v in rows.items() if k.startswith("Sending tensors as text"))
    assert re.search(r"grpc-naive takes .*[0-9.]+x at 1 MiB", text)
    onnx = next(v for k, v in rows.items() if k.startswith("ONNX Runtime gives"))
    for who in ("from Python (onnxruntime)", "from C# (clr-onnxruntime)", "from C++ (cpp-onnxruntime)"):
        assert who in onnx, onnx
    assert "not measured" not in onnx
    ts = next(v for k, v in rows.items() if k.startswith("TorchScript"))
    assert "(libtorch-ts):" in ts and "(libtorch-aoti):" in ts
    net = next(v for k, v in rows.items() if k.startswith("Embedding Python in .NET"))
    assert "clr-capi:" in net and "clr-embed:" in net and "slower than bulk" in net


def test_the_report_renders_in_a_real_browser(quick_run: Path, tmp_path: Path):
    """Headless Chromium (Debian's `chromium`, which `nox -s tests` installs) loads the page as a
    reviewer's browser would: every section laid out, every embedded plot decoded, something drawn."""
    import shutil
    import struct
    import subprocess
    import zlib

    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    assert browser, "chromium is missing: `nox -s tests` installs it (apt-get install chromium)"
    page = tmp_path / "page.html"
    # errors: anything the page throws or logs as an error, caught from the first byte of the page on
    catch = ("<script>window.__errors = []; window.addEventListener('error', e => __errors.push(String(e.message))); "
             "const __ce = console.error; console.error = (...a) => { __errors.push(a.join(' ')); __ce(...a); };</script>")
    probe = ("<script>document.title = JSON.stringify({broken: [...document.images].filter(i => !i.complete || "
             "!i.naturalWidth).length, images: document.images.length, sections: document.querySelectorAll('section').length, "
             "width: document.documentElement.scrollWidth, height: document.documentElement.scrollHeight, errors: __errors, "
             "cards: [...document.querySelectorAll('#scorecard table')].map(t => [t.caption ? t.caption.textContent : '', "
             "t.tBodies[0].rows.length, t.getBoundingClientRect().width])});</script>")
    html = (quick_run / "report.html").read_text()
    assert "<head>" in html
    page.write_text(html.replace("<head>", "<head>" + catch, 1).replace("</body>", probe + "</body>"))
    flags = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=5000", "--window-size=1300,1600"]
    dom = subprocess.run([*flags, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=180)
    assert dom.returncode == 0, dom.stderr[-2000:]
    title = unescape(re.search(r"<title>(.*?)</title>", dom.stdout, re.S)[1])
    facts = json.loads(title)
    assert facts["broken"] == 0 and facts["images"] >= 9, facts
    assert facts["sections"] >= len(SECTIONS), facts
    assert facts["width"] <= 1300, facts  # no table pushes the page sideways at a laptop's width
    assert facts["errors"] == [], facts["errors"]
    # the scorecard: one table per model, a row per strategy, laid out (not collapsed to nothing)
    cards = {c[0].split(",")[0]: c for c in facts["cards"]}
    assert set(cards) == {"mlp", "cnn", "transformer"}, facts["cards"]
    assert all(rows == len(QUICK_STRATEGIES) and width > 600 for _, rows, width in cards.values()), facts["cards"]
    shot = tmp_path / "top.png"
    p = subprocess.run([*flags, f"--screenshot={shot}", page.as_uri()],
                       capture_output=True, text=True, timeout=180)
    assert p.returncode == 0 and shot.is_file(), p.stderr[-2000:]
    # the screenshot is not blank: decode the PNG's rows and count the pixels that are not background
    data = shot.read_bytes()
    w, h = struct.unpack(">II", data[16:24])
    idat = b"".join(data[i + 8:i + 8 + struct.unpack(">I", data[i:i + 4])[0]]
                    for i in [m.start() - 4 for m in re.finditer(b"IDAT", data)])
    raw = zlib.decompress(idat)
    assert (w, h) == (1300, 1600)
    distinct = len(set(raw[k] for k in range(0, len(raw), 97)))
    assert distinct > 20, distinct  # text, tables and colours, not one flat colour


def _record(cell, status="ok", p50_us=100.0, **kw):
    """A typed cell record as a worker makes one (its samples drawn around p50)."""
    import numpy as np

    from bench.record import CellResult, Correctness, OutputCheck, Status, Throughput
    from bench.stats import summarize

    if status in ("error", "skipped"):
        return CellResult(cell, Status(status), **kw)
    ns = [int(x) for x in np.random.default_rng(0).normal(p50_us * 1e3, p50_us * 50, 600)]
    lat = summarize(np.asarray(ns) / 1e9)
    check = OutputCheck(ok=status != "invalid", shape=[cell.batch, 4], dtype="float32", max_abs=2e-6, max_rel=1e-6,
                        worst={"error": 2e-6, "allowed": 1e-4, "used": 0.02})
    kw.setdefault("correctness", Correctness(ok=status != "invalid", atol=1e-4, rtol=1e-3, outputs={"logits": check}))
    return CellResult(cell, Status(status), latency=lat, samples_ns=ns, throughput=Throughput.of(1 / lat.p50, cell.batch),
                      open_s=0.02, first_call_s=0.001, payload_bytes=1024,
                      cold_start_phases={"interpreter": 0.05, "runtime import": 1.0, "open": 0.02, "first call": 0.001}, **kw)


def test_a_report_reads_typed_records_and_a_cell_s_parts_are_rows_not_cells(tmp_path: Path):
    """Without a benchmark run: a folder of typed records (a shapes cell measuring two length buckets, one
    route wrong at some lengths, one failed) reports each cell once, its parts as rows where rows are shown."""
    from bench.record import Cell, Part, Prepare
    from bench.results import RunDir
    from plumbing.files import atomic_write_json
    from reports.content import build

    run = RunDir(tmp_path / "r")
    cells = [Cell("mlp", s, 1, 1, 1) for s in ("torch", "onnxruntime", "libtorch-ts")]
    shapes = [Cell("transformer", s, 1, 1, 1, "", "shapes", "lognormal") for s in ("torch", "onnxruntime")]
    detail = {"dim": "seq", "requests": [{"length": n, "bucket": b, "p50_ms": 0.1 * n, "ok": n < 20, "first_ms": 1.0,
                                          "new_shape": True} for n, b in ((8, "8-15"), (20, "16-31"))]}
    parts = [Part("seq8-15", _record(shapes[0], p50_us=80.0).latency), Part("seq16-31", _record(shapes[0], p50_us=160.0).latency)]
    records = [
        _record(cells[0]), _record(cells[1], p50_us=70.0, prepare=Prepare(cache_hit=True, seconds=0.0, built_seconds=12.5)),
        _record(cells[2], "error", error="worker exited with code 1\nmore", traceback="Traceback: boom"),
        _record(shapes[0], p50_us=120.0, detail=detail, parts=parts),
        _record(shapes[1], "invalid", p50_us=90.0, detail=detail, parts=parts, error="wrong outputs: at 1 of 2 requests"),
    ]
    for r in records:
        run.write_cell(r)
    atomic_write_json(run.path / "run.json", {
        "status": "complete", "cells": [r.cell.to_json() for r in records],
        "config": {"models": ["mlp", "transformer"], "scenarios": ["latency", "shapes"], "seed": 0}})
    report = build(run)
    assert " 5 cells (3 valid) " in report.subtitle  # the two length buckets are rows of their cell, not cells
    assert not any("cells measured" in w for w in report.warnings)
    assert any("1 cell(s) failed: mlp/libtorch-ts/b1/t1/c1" in w for w in report.warnings)
    sec = {s.id: s for s in report.sections}
    cold = {row[1]: row for row in sec["coldstart"].tables[0].rows}
    assert cold["onnxruntime"][-1] == "cache hit" and cold["onnxruntime"][-3] == "12.50 s" and cold["torch"][-1] == "-"
    checked = [row[0] for row in sec["correctness"].tables[0].rows]
    assert shapes[0].id + ".seq8-15" in checked and checked.count(cells[0].id) == 1
    assert sec["errors"].details == [(cells[2].id, "Traceback: boom")]
    # the scenario's own part gets its cells (parts inside): one row per route, the wrong one said once
    table = sec["shapes"].tables[0]
    assert [row[0] for row in table.rows] == ["onnxruntime", "torch"], table.rows
    assert re.fullmatch(r"(79|80)\.\d µs \(p99 \d+\.\d µs\)", table.rows[1][1]), table.rows[1]  # the bucket's own row
