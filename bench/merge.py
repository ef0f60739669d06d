"""Combine the shards of one matrix (``bench run --shard i/n`` on several machines) into one run
folder, so one report and one comparison cover the whole sweep."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

from bench.results import RunDir
from plumbing.errors import UserError


def merge_runs(shards: list[RunDir], dest: RunDir) -> tuple[int, int, list[str]]:
    """Copy every shard's cells into ``dest`` with one run.json. Returns (cells merged, cells in the
    matrix, warnings). The shards must come from the same config; a cell measured twice is refused."""
    from bench.config import RunConfig
    from bench.runner import build_matrix

    if dest.exists() or dest.path.exists():
        raise UserError(f"{dest.path} already exists; merge into a new folder")
    metas = [s.meta() for s in shards]
    config = metas[0]["config"]
    for s, m in zip(shards[1:], metas[1:]):
        if m["config"] != config:
            raise UserError(f"{s.path} was run with another config than {shards[0].path}: not shards of one matrix")
    seen: dict[str, str] = {}
    for s in shards:
        for f in s.cells_dir.glob("*.json"):
            if f.name in seen:
                raise UserError(f"cell {f.stem} is in both {seen[f.name]} and {s.path}: shards overlap")
            seen[f.name] = str(s.path)
    matrix = build_matrix(RunConfig.from_json(config))
    warnings = []
    envs = {s.id: m.get("environment", {}) for s, m in zip(shards, metas)}
    machines = {(e.get("cpu_model"), e.get("logical_cores"), json.dumps(e.get("packages"), sort_keys=True)) for e in envs.values()}
    if len(machines) > 1:
        warnings.append(f"the {len(shards)} shards ran on {len(machines)} different machines or library sets: "
                        "compare cells across shards with care")
    missing = [c.id for c in matrix if c.key + ".json" not in seen]
    if missing:
        warnings.append(f"{len(missing)} of {len(matrix)} cells are in no shard (a shard missing or unfinished): "
                        + ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else ""))
    # built in a temporary folder beside the destination and renamed into place only when whole: a merge
    # that fails (a full disk, a killed process) leaves no half-written run that looks complete
    final = dest
    dest = RunDir(final.path.with_name(f".{final.path.name}.tmp-{os.getpid()}"))
    shutil.rmtree(dest.path, ignore_errors=True)
    try:
        dest.cells_dir.mkdir(parents=True)
        _write(dest, final, shards, metas, seen, matrix, missing, envs, config)
        os.replace(dest.path, final.path)
    except BaseException:
        shutil.rmtree(dest.path, ignore_errors=True)
        raise
    final.write_summary()  # its rows carry the run folder's final name
    return len(seen), len(matrix), warnings


def _write(dest: RunDir, final: RunDir, shards: list[RunDir], metas: list[dict], seen: dict[str, str], matrix: list,
           missing: list[str], envs: dict, config: dict) -> None:
    for name, src in seen.items():
        shutil.copy2(Path(src) / "cells" / name, dest.cells_dir / name)
    from bench import rounds

    for s in shards:  # each shard's interleaved rounds (a group split over shards keeps each shard's own rounds)
        got = rounds.read(s.path)
        if got:
            sampling = dict(config.get("sampling") or {})
            rounds.write(dest.path, list(got.values()), int(sampling.get("rounds", 0)), float(sampling.get("turn_s", 0)),
                         int(sampling.get("processes", 1)))
    ids = {m.get("run_id") for m in metas}
    run_id = ids.pop() if len(ids) == 1 and None not in ids else final.id  # the run's own id, as its shards had it
    dest.write_meta({
        "run_id": run_id, "status": "complete" if not missing else "partial", "config": config,
        "environment": metas[0].get("environment", {}), "cells": [c.to_json() for c in matrix],
        "started": min(m.get("started", time.time()) for m in metas), "finished": time.time(),
        "merged_from": [{"run": str(s.path), "shard": m.get("shard"), "environment": envs[s.id]}
                        for s, m in zip(shards, metas)],
    })
