"""The run's configuration: a profile, then a TOML config file, then command-line flags, each
overriding the one before. Every mistake a user can make here is a UserError (exit 2).
(Over 400 lines because it is the whole schema in one place, each key beside its check: split, a reader
would hunt for where a key is read and where it is refused.)

Config file (TOML), every key optional::

    profile = "default"                     # or "quick"
    models = ["mlp", "cnn", "transformer"]
    strategies = ["torch", "onnxruntime"]
    batch_sizes = [1, 8, 64]
    threads = [1]
    concurrency = [1, 4]
    seed = 0
    plugins = ["mypkg.my_strategy"]         # modules that register extra strategies
    cpus = "1"                              # pin each cell's processes to these CPUs (steadier numbers)
    malloc = ["default"]                    # C allocator(s): default (glibc as shipped), steady, jemalloc, tcmalloc

    [payload_sweep]                         # identity model over payload sizes (each direction)
    sizes = ["1KiB", "1MiB", "64MiB"]
    strategies = ["torch", "onnxruntime"]   # default: the run's strategies

    [sampling]                              # see bench.measure.SamplingConfig
    max_time_s = 3.0

    [strategy.onnxruntime]                  # settings handed to that strategy's open()
    spinning = true

    [[model]]                               # bring your own model
    name = "tiny"
    factory = "mypkg.models:make_tiny"      # callable returning a torch.nn.Module
    inputs = "x:float32[batch,16]=-1..1"    # or a list of {name, dtype, shape, low, high, kind}
    outputs = ["y"]                         # optional
    atol = 1e-4
    rtol = 1e-3
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import allocator
from bench.measure import SamplingConfig
from fixtures.builtin import BUILTIN_MODELS, IDENTITY_ROW_BYTES
from fixtures.custom import make_custom_model
from fixtures.specs import ModelSpec, TensorSpec, parse_input_spec, split_dims
from plumbing.checks import finite_number, name_list
from plumbing.errors import UserError

PROFILES: dict[str, dict[str, Any]] = {
    "default": {
        "models": ["mlp", "cnn", "transformer"],
        "batch_sizes": [1, 8, 64],
        "threads": [1],
        "concurrency": [1, 4],
        "payload_sizes": ["1KiB", "16KiB", "256KiB", "1MiB", "16MiB", "64MiB"],
        "scenarios": ["latency", "closed-loop", "payload", "shapes"],
        "sampling": SamplingConfig(),
    },
    "tails": {  # the default matrix, sampled until each cell's p99 is bounded within 5% (or 15 s)
        "models": ["mlp", "cnn", "transformer"],
        "batch_sizes": [1, 8, 64],
        "threads": [1],
        "concurrency": [1, 4],
        "payload_sizes": ["1KiB", "1MiB", "16MiB"],
        # each cell alone, sampled until its p99 is bounded: turns of a tenth of a second cannot bound a tail
        "sampling": SamplingConfig(max_time_s=15.0, tail_quantile=0.99, tail_target_rel_ci=0.05, rounds=0),
    },
    "quick": {  # smoke runs and CI: every built-in model and strategy, short budgets
        "models": ["mlp", "cnn", "transformer"],
        "batch_sizes": [1, 8],
        "threads": [1],
        "concurrency": [1],
        "payload_sizes": ["1KiB", "1MiB"],
        "scenarios": ["latency", "closed-loop", "payload", "shapes"],
        "sampling": SamplingConfig(warmup_s=0.1, min_time_s=0.2, max_time_s=0.6, concurrency_s=0.5,
                                   target_rel_ci=0.02, rounds=6, turn_s=0.05),
    },
    "service": {  # the service question: the highest request rate within a p99 budget, and latency against rate
        "models": ["mlp", "cnn", "transformer"],
        "batch_sizes": [1],
        "threads": [1],
        "concurrency": [1],
        "payload_sizes": [],
        "scenarios": ["latency", "slo"],
        "scenario_defaults": {"slo": {"p99": "10ms"}},
        "sampling": SamplingConfig(),
    },
}

DEFAULT_SCENARIOS = ("latency", "closed-loop", "payload")  # what runs made before scenarios measured
TOP_KEYS = {"scenarios", "profile", "models", "strategies", "batch_sizes", "threads", "concurrency", "seed", "plugins",
            "payload_sweep", "sampling", "strategy", "model", "cpus", "malloc", "decision"}
MODEL_KEYS = {"name", "factory", "inputs", "outputs", "atol", "rtol", "description", "dims"}
PAYLOAD_SWEEP_KEYS = {"sizes", "strategies"}
# Caps on what one cell may ask for: past them a typo (a batch of 1000000000) would exhaust memory or
# run for days before anything useful happened, so they are refused before any cell runs.
MAX_BATCH = 65_536
MAX_CALL_BYTES = 4 * 1024**3  # the inputs of one call (and one payload-sweep size)
MAX_THREADS = 1024  # intra-op threads, and concurrent callers
MAX_TIME_S = 86_400.0  # any one sampling time
MAX_COUNT = 10_000_000  # sampling counts (warm-up calls, samples)
# the `bench run` flags that set [sampling] keys, named in their errors
SAMPLING_FLAGS = {"warmup_s": "--warmup", "min_time_s": "--min-time", "max_time_s": "--max-time",
                  "target_rel_ci": "--target-ci", "concurrency_s": "--concurrency-time", "rounds": "--rounds",
                  "turn_s": "--turn", "processes": "--processes"}
# [sampling] keys: (minimum, whether the minimum itself is allowed, an integer count)
_SAMPLING_RULES: dict[str, tuple[float, bool, bool]] = {
    "warmup_s": (0.0, True, False),  # 0: warm up by warmup_calls alone
    "warmup_calls": (0, True, True),  # 0 (with warmup_s 0): no warm-up
    "min_time_s": (0.0, True, False),  # 0: stop as soon as the median is stable
    "max_time_s": (0.0, False, False),
    "min_samples": (1, True, True),
    "max_samples": (1, True, True),
    "target_rel_ci": (0.0, True, False),  # 0: never stop early, sample for max_time_s
    "round_s": (0.0, False, False),
    "concurrency_s": (0.0, False, False),
    "tail_quantile": (0.0, True, False),  # 0: off; else below 1 (checked below)
    "tail_target_rel_ci": (0.0, True, False),
    "rounds": (0, True, True),  # 0: each cell measured alone (the method before interleaved rounds)
    "turn_s": (0.0, False, False),
    "processes": (1, True, True),
    "max_workers": (2, True, True),
}
_SIZE_RE = re.compile(r"^\s*(\d+)\s*(B|KiB|MiB|GiB)?\s*$", re.IGNORECASE)
_UNITS = {None: 1, "b": 1, "kib": 1024, "mib": 1024**2, "gib": 1024**3}


def unknown_keys(where: str, given: Any, known: Any) -> None:
    """One line naming the unknown keys, the nearest known key to each, and the known keys."""
    unknown = sorted(str(k) for k in set(given) - set(known))
    if not unknown:
        return
    near = {k: m[0] for k in unknown if (m := difflib.get_close_matches(k, sorted(known), n=1))}
    if len(unknown) == 1 and near:
        hint = f"; did you mean {near[unknown[0]]!r}?"
    else:
        hint = f"; did you mean {', '.join(f'{m!r} for {k!r}' for k, m in near.items())}?" if near else ""
    allowed = f"allowed: {sorted(known)}" if known else "it takes no settings"
    raise UserError(f"{where} has unknown keys {unknown}{hint} ({allowed})")


def parse_size(value: str | int) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        n = value
    else:
        m = _SIZE_RE.match(str(value)[:40])
        if not m:
            raise UserError(f"payload size {value!r} is not a size like '1KiB', '16MiB' or a byte count")
        n = int(m[1]) * _UNITS[m[2].lower() if m[2] else None]
    if n < IDENTITY_ROW_BYTES or n % IDENTITY_ROW_BYTES:
        raise UserError(f"payload size {value!r} must be a positive multiple of {IDENTITY_ROW_BYTES} bytes (one identity row)")
    if n > MAX_CALL_BYTES:
        raise UserError(f"payload size {value!r} is over the cap of {format_size(MAX_CALL_BYTES)}")
    return n


def format_size(n: int) -> str:
    for unit, scale in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if n >= scale and n % scale == 0:
            return f"{n // scale}{unit}"
    return f"{n}B"


@dataclass
class RunConfig:
    profile: str = "default"
    models: list[str] = field(default_factory=list)
    strategies: list[str] = field(default_factory=list)
    batch_sizes: list[int] = field(default_factory=list)
    threads: list[int] = field(default_factory=list)
    concurrency: list[int] = field(default_factory=list)
    payload_sizes: list[int] = field(default_factory=list)
    payload_strategies: list[str] = field(default_factory=list)
    seed: int = 0
    plugins: list[str] = field(default_factory=list)
    cpus: list[int] = field(default_factory=list)  # pin each cell's processes to these CPUs; empty: no pinning
    malloc: list[str] = field(default_factory=lambda: [allocator.DEFAULT])  # C allocator policies (bench.allocator); several: a matrix dimension
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    strategy_settings: dict[str, dict[str, Any]] = field(default_factory=dict)
    custom_models: dict[str, ModelSpec] = field(default_factory=dict)
    decision: dict[str, Any] = field(default_factory=dict)  # the reviewer's constraints (reports.decision)
    scenarios: list[str] = field(default_factory=lambda: list(DEFAULT_SCENARIOS))  # bench.scenarios, in run order
    scenario_options: dict[str, dict[str, Any]] = field(default_factory=dict)  # each scenario's validated options

    def model_spec(self, name: str) -> ModelSpec:
        return self.custom_models.get(name) or BUILTIN_MODELS[name]

    def to_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["sampling"] = self.sampling.to_json()
        d["custom_models"] = {k: v.to_json() for k, v in self.custom_models.items()}
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> RunConfig:
        d = dict(d)
        d["malloc"] = allocator.of_run(d)
        d["sampling"] = SamplingConfig.from_json(d.get("sampling", {}))
        d["custom_models"] = {k: ModelSpec.from_json(v) for k, v in d.get("custom_models", {}).items()}
        d.setdefault("scenarios", list(DEFAULT_SCENARIOS))  # runs made before scenarios were named
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


def _int_list(key: str, value: Any, minimum: int = 1, maximum: int | None = None) -> list[int]:
    if isinstance(value, int) and not isinstance(value, bool):
        value = [value]
    if isinstance(value, str):
        parts = [v.strip() for v in value.split(",") if v.strip()]
        if not all(re.fullmatch(r"[-+]?\d{1,18}", v, re.ASCII) for v in parts):
            raise UserError(f"{key}: {value[:80]!r} is not a comma-separated list of integers")
        value = [int(v) for v in parts]
    if not isinstance(value, list) or not value or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        raise UserError(f"{key} must be a non-empty list of integers, got {value!r}")
    bad = [v for v in value if v < minimum]
    if bad:
        raise UserError(f"{key} must be >= {minimum}, got {bad}")
    bad = [v for v in value if maximum is not None and v > maximum]
    if bad:
        raise UserError(f"{key} must be <= {maximum} (the harness's cap), got {bad}")
    return sorted(set(value))


def _compact(cpus: list[int]) -> str:
    """[0, 1, 2, 5] -> '0-2,5'"""
    out: list[str] = []
    for c in cpus:
        if out and c == int(out[-1].rsplit("-", 1)[-1]) + 1:
            out[-1] = f"{out[-1].split('-')[0]}-{c}"
        else:
            out.append(str(c))
    return ",".join(out)


def parse_cpus(value: Any) -> list[int]:
    """``"1"``, ``"0-3"``, ``"1,3-5"`` or a list of ints; checked against the CPUs this process may use.
    A range is checked by its bounds before it is expanded, so ``0-99999999999`` costs nothing."""
    allowed = sorted(os.sched_getaffinity(0))
    if isinstance(value, str):
        cpus: list[int] = []
        for part in [p.strip() for p in value.split(",") if p.strip()]:
            m = re.fullmatch(r"(\d{1,18})(?:-(\d{1,18}))?", part, re.ASCII)
            if not m or (m[2] and int(m[2]) < int(m[1])):
                raise UserError(f"cpus: {part[:40]!r} is not a CPU number or range like 0-3")
            lo, hi = int(m[1]), int(m[2] or m[1])
            if hi > allowed[-1]:
                beyond = f"[{lo}]" if lo == hi else f"[{max(lo, allowed[-1] + 1)}-{hi}]"
                raise UserError(f"cpus {beyond} are not available to this process (available: {_compact(allowed)})")
            cpus += range(lo, hi + 1)
        value = cpus
    if isinstance(value, int) and not isinstance(value, bool):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(c, int) and not isinstance(c, bool) for c in value):
        raise UserError(f"cpus must be a list of CPU numbers or a string like '1-3', got {value!r}")
    bad = sorted(set(value) - set(allowed))
    if bad:
        shown = str(bad) if len(bad) <= 8 else f"[{', '.join(map(str, bad[:8]))}, ...]"
        raise UserError(f"cpus {shown} are not available to this process (available: {_compact(allowed)})")
    return sorted(set(value))


def _model_from_table(t: Any) -> ModelSpec:
    if not isinstance(t, dict):
        raise UserError(f"[[model]] entries must be tables, got {t!r}")
    unknown_keys("[[model]]", t, MODEL_KEYS)
    for k in ("name", "factory", "inputs"):
        if k not in t:
            raise UserError(f"[[model]] {t.get('name', '?')!r} is missing {k!r}")
    inputs = t["inputs"]
    dims: dict[str, Any] = {}
    if isinstance(inputs, str):
        inputs, dims = split_dims(inputs)
        specs = parse_input_spec(inputs)
    elif isinstance(inputs, list) and inputs:
        specs = tuple(_input_from_table(t["name"], i) for i in inputs)
    else:
        raise UserError(f"[[model]] {t['name']!r}: inputs must be a spec string or a list of tables")
    table = t.get("dims", {})  # dims = {seq = [8, 512]} (or [8, 512, 64]: low, high, nominal)
    if not isinstance(table, dict):
        raise UserError(f"[[model]] {t['name']!r}: dims must be a table like {{seq = [8, 512]}}, got {table!r}")
    return make_custom_model(str(t["name"]), str(t["factory"]), specs, t.get("outputs", ()),
                             t.get("atol", 1e-4), t.get("rtol", 1e-3), t.get("description", ""), {**dims, **table})


def _input_from_table(model: Any, i: Any) -> TensorSpec:
    where = f"[[model]] {model!r}: an input"
    if not isinstance(i, dict):
        raise UserError(f"{where} must be a table with name, dtype, shape, got {i!r}")
    unknown_keys(where, i, [f.name for f in dataclasses.fields(TensorSpec)])
    missing = [k for k in ("name", "dtype", "shape") if k not in i]
    if missing:
        raise UserError(f"{where} is missing {missing}")
    if not isinstance(i["shape"], list):
        raise UserError(f"{where}: shape must be a list of dimensions, got {i['shape']!r}")
    return TensorSpec(**{**i, "shape": tuple(i["shape"])})


def load_config_file(path: Path) -> dict[str, Any]:
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"config file {path} does not exist") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"config file {path} is not valid TOML: {e}") from None
    plugins = data.get("plugins")
    if isinstance(plugins, list) and all(isinstance(m, str) for m in plugins):
        from bench import scenarios  # the file's own plugins may add scenario tables: know them first

        scenarios.discover(plugins)
    unknown_keys(f"config file {path}", data, top_keys())
    return data


def _sampling_value(k: str, v: Any) -> float | int:
    """One [sampling] value, checked: a finite number in its range (an integer for counts)."""
    minimum, inclusive, count = _SAMPLING_RULES.get(k, (0.0, True, False))
    kind = "an integer" if count else "a finite number"
    name = f"sampling.{k}" + (f" ({SAMPLING_FLAGS[k]})" if k in SAMPLING_FLAGS else "")
    if not finite_number(v):
        raise UserError(f"{name} must be {kind}, got {v!r}")
    if count and v != int(v):
        raise UserError(f"{name} must be an integer, got {v!r}")
    if v < minimum or (v == minimum and not inclusive):
        raise UserError(f"{name} must be {'>=' if inclusive else '>'} {minimum:g}, got {v!r}")
    cap = MAX_COUNT if count else MAX_TIME_S if k.endswith("_s") else None
    if cap is not None and v > cap:
        raise UserError(f"{name} must be <= {cap:g} (the harness's cap), got {v!r}")
    return int(v) if count else float(v)


def top_keys() -> set[str]:
    """The config file's keys: the fixed ones and each scenario's options table."""
    from bench import scenarios

    return TOP_KEYS | {scenarios.get(n).table for n in scenarios.names() if scenarios.get(n).table}


def _scenarios(cfg: RunConfig, file_data: dict[str, Any], merged: dict[str, Any], overrides: dict[str, Any],
               base: dict[str, Any]) -> None:
    """Which scenarios run, in order, and each one's options (its table <- its flags). A flag for a
    scenario the run does not include is refused: it would silently do nothing."""
    from bench import scenarios

    scenarios.discover(cfg.plugins)
    cfg.scenarios = name_list("scenarios", merged.get("scenarios", base.get("scenarios", list(DEFAULT_SCENARIOS))))
    if not cfg.scenarios:
        raise UserError(f"scenarios must name at least one of {', '.join(scenarios.names())}")
    for name in cfg.scenarios:
        scenarios.get(name)  # an unknown one: its error lists the known
    flags = overrides.get("scenario_flags") or {}  # flag -> value; a flag may set a key of several scenarios
    owned: set[str] = set()
    for name in cfg.scenarios:
        sc = scenarios.get(name)
        given = {k: flags[o.flag] for k, o in sc.options.items() if o.flag and flags.get(o.flag) is not None}
        owned.update(sc.options[k].flag for k in given)
        table = file_data.get(sc.table, {}) if sc.table else {}
        if isinstance(table, dict):  # the profile's defaults for it under the file's (a non-table: configure's error)
            table = {**base.get("scenario_defaults", {}).get(name, {}), **table}
        cfg.scenario_options[name] = sc.configure(table, given)
    for flag in flags:
        if flag not in owned and flags[flag] is not None:
            names = [n for n in scenarios.names() if any(o.flag == flag for o in scenarios.get(n).options.values())]
            raise UserError(f"{flag} applies to the {' or '.join(names)} scenario, which this run does not include "
                            f"(add it: --scenarios {','.join([*cfg.scenarios, names[0]])})")


def build_config(file_data: dict[str, Any], overrides: dict[str, Any], available_strategies: list[str]) -> RunConfig:
    """Profile <- file <- flags. ``overrides`` holds only the flags the user gave."""
    unknown_keys("the config", file_data, top_keys())
    merged = {**file_data, **{k: v for k, v in overrides.items() if v is not None and k != "strategy_settings"}}
    profile = merged.get("profile", "default")
    if not isinstance(profile, str) or profile not in PROFILES:
        raise UserError(f"unknown profile {profile!r}; available: {', '.join(PROFILES)}")
    base = PROFILES[profile]
    cfg = RunConfig(profile=profile)

    for t in file_data.get("model", []) if isinstance(file_data.get("model", []), list) else [file_data["model"]]:
        m = _model_from_table(t)
        cfg.custom_models[m.name] = m
    for m in overrides.get("custom_models") or []:
        cfg.custom_models[m.name] = m

    known_models = {**BUILTIN_MODELS, **cfg.custom_models}
    default_models = list(cfg.custom_models) if cfg.custom_models else base["models"]
    cfg.models = name_list("models", merged.get("models", default_models))
    for m in cfg.models:
        if m not in known_models:
            raise UserError(f"unknown model {m!r}; available: {', '.join(known_models)}")

    import strategies

    cfg.strategies = name_list("strategies", merged.get("strategies", available_strategies))
    for s in cfg.strategies:
        if "@" in s and s.partition("@")[0] in available_strategies:
            strategies.get(s)  # a known strategy with an unknown variant: its error names the variants
        if not strategies.known(s, available_strategies):
            raise UserError(f"unknown strategy {s!r}; available: {', '.join(available_strategies)}")
    cfg.batch_sizes = _int_list("batch_sizes", merged.get("batch_sizes", base["batch_sizes"]), maximum=MAX_BATCH)
    for m in cfg.models:
        spec = cfg.model_spec(m)
        if (big := spec.input_bytes(max(cfg.batch_sizes))) > MAX_CALL_BYTES:
            raise UserError(f"model {m!r} at batch {max(cfg.batch_sizes)} takes {big / 1024**3:,.1f} GiB of inputs a call, "
                            f"over the cap of {format_size(MAX_CALL_BYTES)}; use smaller batch sizes")
        largest = {k: hi for k, (_, hi, _) in spec.dims.items()}  # the shapes scenario reaches the top of each range
        if spec.dims and (big := spec.input_bytes(min(cfg.batch_sizes), largest)) > MAX_CALL_BYTES:
            raise UserError(f"model {m!r} at {', '.join(f'{k}={v}' for k, v in largest.items())} takes "
                            f"{big / 1024**3:,.1f} GiB of inputs a call, over the cap of {format_size(MAX_CALL_BYTES)}; "
                            "narrow the range")
    cfg.threads = _int_list("threads", merged.get("threads", base["threads"]), maximum=MAX_THREADS)
    cfg.concurrency = _int_list("concurrency", merged.get("concurrency", base["concurrency"]), maximum=MAX_THREADS)
    seed = merged.get("seed", 0)
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise UserError(f"seed must be a non-negative integer, got {seed!r}")
    cfg.seed = seed
    cfg.plugins = name_list("plugins", merged.get("plugins", []))
    _scenarios(cfg, file_data, merged, overrides, base)
    cfg.cpus = parse_cpus(merged["cpus"]) if merged.get("cpus") not in (None, "", []) else []
    if cfg.cpus and max(cfg.threads) > len(cfg.cpus):
        raise UserError(f"threads {max(cfg.threads)} need at least that many CPUs, but cpus lists {len(cfg.cpus)}: {cfg.cpus}")
    cfg.malloc = name_list("malloc", merged.get("malloc") or [allocator.DEFAULT])
    if not cfg.malloc:
        raise UserError(f"malloc must name at least one of {', '.join(allocator.POLICIES)}")
    for policy in cfg.malloc:
        if policy not in allocator.POLICIES:
            raise UserError(f"malloc must be one of {', '.join(allocator.POLICIES)}, got {policy!r}")
        if allocator.unavailable(policy):
            raise UserError(f"malloc {policy}: {allocator.unavailable(policy)}")
    cfg.malloc = list(dict.fromkeys(cfg.malloc))

    sweep = file_data.get("payload_sweep", {})
    if not isinstance(sweep, dict):
        raise UserError("[payload_sweep] must be a table with 'sizes' and 'strategies'")
    unknown_keys("[payload_sweep]", sweep, PAYLOAD_SWEEP_KEYS)
    sizes = overrides.get("payload_sizes")
    if sizes is None:
        sizes = sweep.get("sizes", base["payload_sizes"])
    if isinstance(sizes, str):
        sizes = [] if sizes.strip().lower() in ("", "none", "off") else sizes.split(",")
    if not isinstance(sizes, list):
        raise UserError(f"payload sizes must be a list, got {sizes!r}")
    cfg.payload_sizes = sorted({parse_size(s) for s in sizes})
    cfg.payload_strategies = name_list("payload_sweep.strategies", sweep.get("strategies", cfg.strategies))
    for s in cfg.payload_strategies:
        if not strategies.known(s, available_strategies):
            raise UserError(f"unknown strategy {s!r} in [payload_sweep]; available: {', '.join(available_strategies)}")
    if overrides.get("strategies") is not None:  # flags narrow the sweep too
        cfg.payload_strategies = [s for s in cfg.payload_strategies if s in cfg.strategies]

    sampling = file_data.get("sampling", {})
    if not isinstance(sampling, dict):
        raise UserError("[sampling] must be a table")
    unknown_keys("[sampling]", sampling, [f.name for f in dataclasses.fields(SamplingConfig)])
    values = {**base["sampling"].to_json(), **sampling, **(overrides.get("sampling") or {})}
    values = {k: _sampling_value(k, v) for k, v in values.items()}
    if values["max_time_s"] < values["min_time_s"]:
        raise UserError("sampling.max_time_s must be >= sampling.min_time_s")
    if values["max_samples"] < values["min_samples"]:
        raise UserError("sampling.max_samples must be >= sampling.min_samples")
    if not values["tail_quantile"] < 1:
        raise UserError(f"sampling.tail_quantile must be 0 (off) or a fraction below 1 such as 0.99, got {values['tail_quantile']!r}")
    cfg.sampling = SamplingConfig.from_json(values)

    decision = file_data.get("decision", {})
    if not isinstance(decision, dict):
        raise UserError("[decision] must be a table")
    from bench.constraints import check_constraints

    cfg.decision = check_constraints({**decision, **(overrides.get("decision") or {})})

    settings = file_data.get("strategy", {})
    if not isinstance(settings, dict) or not all(isinstance(v, dict) for v in settings.values()):
        raise UserError("[strategy.NAME] sections must be tables of settings")
    for s in settings:
        if not strategies.known(s, available_strategies):
            raise UserError(f"[strategy.{s}]: unknown strategy; available: {', '.join(available_strategies)}")
    cfg.strategy_settings = {k: dict(v) for k, v in settings.items()}
    for name, values in (overrides.get("strategy_settings") or {}).items():  # flags over the file
        cfg.strategy_settings.setdefault(name, {}).update(values)
    for name in dict.fromkeys([*cfg.strategy_settings, *cfg.strategies]):
        values = strategies.settings_for(name, cfg.strategy_settings)
        strategy = strategies.get(name)
        declared = getattr(strategy, "settings_keys", None)  # None: the strategy does not say, so no check
        if declared is not None:
            unknown_keys(f"[strategy.{name}]", values, {*declared, *(f.key for f in strategy.cli_flags)})
        try:
            strategy.check_settings(values)
        except ValueError as e:
            raise UserError(f"[strategy.{name}]: {e}") from e
    return cfg
