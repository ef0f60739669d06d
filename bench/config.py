"""The run's configuration: a profile, then a TOML config file, then command-line flags, each
overriding the one before. Every mistake a user can make here is a UserError (exit 2).

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
import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import allocator
from bench.errors import UserError
from bench.measure import SamplingConfig
from fixtures.builtin import BUILTIN_MODELS, IDENTITY_ROW_BYTES
from fixtures.specs import ModelSpec, TensorSpec, parse_input_spec

PROFILES: dict[str, dict[str, Any]] = {
    "default": {
        "models": ["mlp", "cnn", "transformer"],
        "batch_sizes": [1, 8, 64],
        "threads": [1],
        "concurrency": [1, 4],
        "payload_sizes": ["1KiB", "16KiB", "256KiB", "1MiB", "16MiB", "64MiB"],
        "sampling": SamplingConfig(),
    },
    "tails": {  # the default matrix, sampled until each cell's p99 is bounded within 5% (or 15 s)
        "models": ["mlp", "cnn", "transformer"],
        "batch_sizes": [1, 8, 64],
        "threads": [1],
        "concurrency": [1, 4],
        "payload_sizes": ["1KiB", "1MiB", "16MiB"],
        "sampling": SamplingConfig(max_time_s=15.0, tail_quantile=0.99, tail_target_rel_ci=0.05),
    },
    "quick": {  # smoke runs and CI: every built-in model and strategy, short budgets
        "models": ["mlp", "cnn", "transformer"],
        "batch_sizes": [1, 8],
        "threads": [1],
        "concurrency": [1],
        "payload_sizes": ["1KiB", "1MiB"],
        "sampling": SamplingConfig(warmup_s=0.1, min_time_s=0.2, max_time_s=0.6, concurrency_s=0.5,
                                   target_rel_ci=0.02),
    },
}

TOP_KEYS = {"profile", "models", "strategies", "batch_sizes", "threads", "concurrency", "seed", "plugins",
            "payload_sweep", "sampling", "strategy", "model", "cpus", "malloc"}
MODEL_KEYS = {"name", "factory", "inputs", "outputs", "atol", "rtol", "description"}
_SIZE_RE = re.compile(r"^\s*(\d+)\s*(B|KiB|MiB|GiB)?\s*$", re.IGNORECASE)
_UNITS = {None: 1, "b": 1, "kib": 1024, "mib": 1024**2, "gib": 1024**3}


def parse_size(value: str | int) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        n = value
    else:
        m = _SIZE_RE.match(str(value))
        if not m:
            raise UserError(f"payload size {value!r} is not a size like '1KiB', '16MiB' or a byte count")
        n = int(m[1]) * _UNITS[m[2].lower() if m[2] else None]
    if n < IDENTITY_ROW_BYTES or n % IDENTITY_ROW_BYTES:
        raise UserError(f"payload size {value!r} must be a positive multiple of {IDENTITY_ROW_BYTES} bytes (one identity row)")
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
        return cls(**d)


def _int_list(key: str, value: Any, minimum: int = 1) -> list[int]:
    if isinstance(value, int) and not isinstance(value, bool):
        value = [value]
    if isinstance(value, str):
        try:
            value = [int(v) for v in value.split(",") if v.strip()]
        except ValueError:
            raise UserError(f"{key}: {value!r} is not a comma-separated list of integers") from None
    if not isinstance(value, list) or not value or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        raise UserError(f"{key} must be a non-empty list of integers, got {value!r}")
    bad = [v for v in value if v < minimum]
    if bad:
        raise UserError(f"{key} must be >= {minimum}, got {bad}")
    return sorted(set(value))


def parse_cpus(value: Any) -> list[int]:
    """``"1"``, ``"0-3"``, ``"1,3-5"`` or a list of ints; checked against the CPUs this process may use."""
    if isinstance(value, str):
        cpus: list[int] = []
        for part in [p.strip() for p in value.split(",") if p.strip()]:
            m = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
            if not m or (m[2] and int(m[2]) < int(m[1])):
                raise UserError(f"cpus: {part!r} is not a CPU number or range like 0-3")
            cpus += range(int(m[1]), int(m[2] or m[1]) + 1)
        value = cpus
    if isinstance(value, int) and not isinstance(value, bool):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(c, int) and not isinstance(c, bool) for c in value):
        raise UserError(f"cpus must be a list of CPU numbers or a string like '1-3', got {value!r}")
    allowed = sorted(os.sched_getaffinity(0))
    bad = sorted(set(value) - set(allowed))
    if bad:
        raise UserError(f"cpus {bad} are not available to this process (available: {allowed})")
    return sorted(set(value))


def _str_list(key: str, value: Any) -> list[str]:
    if isinstance(value, str):
        value = [v.strip() for v in value.split(",") if v.strip()]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise UserError(f"{key} must be a list of names, got {value!r}")
    return list(dict.fromkeys(value))


def _model_from_table(t: Any) -> ModelSpec:
    if not isinstance(t, dict):
        raise UserError(f"[[model]] entries must be tables, got {t!r}")
    unknown = set(t) - MODEL_KEYS
    if unknown:
        raise UserError(f"[[model]] has unknown keys {sorted(unknown)}; allowed: {sorted(MODEL_KEYS)}")
    for k in ("name", "factory", "inputs"):
        if k not in t:
            raise UserError(f"[[model]] {t.get('name', '?')!r} is missing {k!r}")
    inputs = t["inputs"]
    if isinstance(inputs, str):
        specs = parse_input_spec(inputs)
    elif isinstance(inputs, list) and inputs:
        try:
            specs = tuple(TensorSpec(**{**i, "shape": tuple(i["shape"])}) for i in inputs)
        except (TypeError, KeyError) as e:
            raise UserError(f"[[model]] {t['name']!r}: each input needs name, dtype, shape ({e})") from e
    else:
        raise UserError(f"[[model]] {t['name']!r}: inputs must be a spec string or a list of tables")
    return make_custom_model(str(t["name"]), str(t["factory"]), specs, t.get("outputs", ()),
                             t.get("atol", 1e-4), t.get("rtol", 1e-3), t.get("description", ""))


def make_custom_model(name: str, factory: str, inputs: tuple[TensorSpec, ...], outputs: Any = (),
                      atol: Any = 1e-4, rtol: Any = 1e-3, description: str = "") -> ModelSpec:
    if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.\-]*", name):
        raise UserError(f"model name {name!r} may hold only letters, digits, '_', '-' and '.'")
    if name in BUILTIN_MODELS:
        raise UserError(f"model name {name!r} is a built-in model; choose another name")
    if not all(isinstance(x, (int, float)) and x >= 0 for x in (atol, rtol)):
        raise UserError(f"model {name!r}: atol and rtol must be non-negative numbers")
    if not any("batch" in t.shape for t in inputs):
        raise UserError(f"model {name!r}: no input has a 'batch' dimension")
    return ModelSpec(name, factory, inputs, tuple(_str_list("outputs", list(outputs))), float(atol), float(rtol),
                     description or f"user model from {factory}")


def load_config_file(path: Path) -> dict[str, Any]:
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"config file {path} does not exist") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"config file {path} is not valid TOML: {e}") from None
    unknown = set(data) - TOP_KEYS
    if unknown:
        raise UserError(f"config file {path}: unknown keys {sorted(unknown)}; allowed: {sorted(TOP_KEYS)}")
    return data


def build_config(file_data: dict[str, Any], overrides: dict[str, Any], available_strategies: list[str]) -> RunConfig:
    """Profile <- file <- flags. ``overrides`` holds only the flags the user gave."""
    merged = {**file_data, **{k: v for k, v in overrides.items() if v is not None and k != "strategy_settings"}}
    profile = merged.get("profile", "default")
    if profile not in PROFILES:
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
    cfg.models = _str_list("models", merged.get("models", default_models))
    for m in cfg.models:
        if m not in known_models:
            raise UserError(f"unknown model {m!r}; available: {', '.join(known_models)}")

    cfg.strategies = _str_list("strategies", merged.get("strategies", available_strategies))
    for s in cfg.strategies:
        if s not in available_strategies:
            raise UserError(f"unknown strategy {s!r}; available: {', '.join(available_strategies)}")
    cfg.batch_sizes = _int_list("batch_sizes", merged.get("batch_sizes", base["batch_sizes"]))
    cfg.threads = _int_list("threads", merged.get("threads", base["threads"]))
    cfg.concurrency = _int_list("concurrency", merged.get("concurrency", base["concurrency"]))
    seed = merged.get("seed", 0)
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise UserError(f"seed must be a non-negative integer, got {seed!r}")
    cfg.seed = seed
    cfg.plugins = _str_list("plugins", merged.get("plugins", []))
    cfg.cpus = parse_cpus(merged["cpus"]) if merged.get("cpus") not in (None, "", []) else []
    if cfg.cpus and max(cfg.threads) > len(cfg.cpus):
        raise UserError(f"threads {max(cfg.threads)} need at least that many CPUs, but cpus lists {len(cfg.cpus)}: {cfg.cpus}")
    cfg.malloc = _str_list("malloc", merged.get("malloc") or [allocator.DEFAULT])
    if not cfg.malloc:
        raise UserError(f"malloc must name at least one of {', '.join(allocator.POLICIES)}")
    for policy in cfg.malloc:
        if policy not in allocator.POLICIES:
            raise UserError(f"malloc must be one of {', '.join(allocator.POLICIES)}, got {policy!r}")
        if allocator.unavailable(policy):
            raise UserError(f"malloc {policy}: {allocator.unavailable(policy)}")
    cfg.malloc = list(dict.fromkeys(cfg.malloc))

    sweep = file_data.get("payload_sweep", {})
    if not isinstance(sweep, dict) or set(sweep) - {"sizes", "strategies"}:
        raise UserError("[payload_sweep] takes only 'sizes' and 'strategies'")
    sizes = overrides.get("payload_sizes")
    if sizes is None:
        sizes = sweep.get("sizes", base["payload_sizes"])
    if isinstance(sizes, str):
        sizes = [] if sizes.strip().lower() in ("", "none", "off") else sizes.split(",")
    if not isinstance(sizes, list):
        raise UserError(f"payload sizes must be a list, got {sizes!r}")
    cfg.payload_sizes = sorted({parse_size(s) for s in sizes})
    cfg.payload_strategies = _str_list("payload_sweep.strategies", sweep.get("strategies", cfg.strategies))
    for s in cfg.payload_strategies:
        if s not in available_strategies:
            raise UserError(f"unknown strategy {s!r} in [payload_sweep]; available: {', '.join(available_strategies)}")
    if overrides.get("strategies") is not None:  # flags narrow the sweep too
        cfg.payload_strategies = [s for s in cfg.payload_strategies if s in cfg.strategies]

    sampling = file_data.get("sampling", {})
    if not isinstance(sampling, dict):
        raise UserError("[sampling] must be a table")
    fields_ = {f.name: f for f in dataclasses.fields(SamplingConfig)}
    unknown = set(sampling) - set(fields_)
    if unknown:
        raise UserError(f"[sampling] has unknown keys {sorted(unknown)}; allowed: {sorted(fields_)}")
    values = {**base["sampling"].to_json(), **sampling, **(overrides.get("sampling") or {})}
    for k, v in values.items():
        if not isinstance(v, (int, float)) or isinstance(v, bool) or v < 0:
            raise UserError(f"sampling.{k} must be a non-negative number, got {v!r}")
    if values["max_time_s"] < values["min_time_s"]:
        raise UserError("sampling.max_time_s must be >= sampling.min_time_s")
    if not values["tail_quantile"] < 1:
        raise UserError(f"sampling.tail_quantile must be 0 (off) or a fraction below 1 such as 0.99, got {values['tail_quantile']!r}")
    cfg.sampling = SamplingConfig.from_json({k: type(getattr(SamplingConfig(), k))(v) for k, v in values.items()})

    settings = file_data.get("strategy", {})
    if not isinstance(settings, dict) or not all(isinstance(v, dict) for v in settings.values()):
        raise UserError("[strategy.NAME] sections must be tables of settings")
    for s in settings:
        if s not in available_strategies:
            raise UserError(f"[strategy.{s}]: unknown strategy; available: {', '.join(available_strategies)}")
    cfg.strategy_settings = {k: dict(v) for k, v in settings.items()}
    for name, values in (overrides.get("strategy_settings") or {}).items():  # flags over the file
        cfg.strategy_settings.setdefault(name, {}).update(values)
    import strategies

    for name, values in cfg.strategy_settings.items():
        try:
            strategies.get(name).check_settings(values)
        except ValueError as e:
            raise UserError(f"[strategy.{name}]: {e}") from e
    return cfg
