"""Imports run one way: plumbing <- fixtures <- strategies <- bench <- reports <- the command line
(bench.cli, bench.arguments, bench.lifecycle). Every import statement counts, those inside functions too:
a lazy import that runs back up is still a cycle in the design."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LAYERS = ("plumbing", "fixtures", "strategies", "bench", "reports", "cli")
CLI = ("bench.cli", "bench.arguments", "bench.lifecycle", "bench.__main__")


def layer(module: str) -> int | None:
    """The layer of a module of the project (None: not the project's)."""
    if module in CLI or any(module.startswith(c + ".") for c in CLI):
        return LAYERS.index("cli")
    top = module.split(".")[0]
    return LAYERS.index(top) if top in LAYERS[:-1] else None


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(tree: ast.AST, importer: str) -> list[tuple[int, str]]:
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the importer's package
                base = importer.split(".")[: -node.level] if not importer.endswith("__init__") else importer.split(".")
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            out += [(node.lineno, mod)] + [(node.lineno, f"{mod}.{a.name}") for a in node.names if f"{mod}.{a.name}" in CLI]
    return out


def violations(sources: dict[Path, str], root: Path = ROOT) -> list[str]:
    """Every import of a higher layer from a lower one, as 'file:line: module imports module'."""
    bad = []
    for path, text in sorted(sources.items()):
        me = module_name(path, root)
        mine = layer(me)
        if mine is None:
            continue
        for line, target in imported(ast.parse(text, str(path)), me):
            theirs = layer(target)
            if theirs is not None and theirs > mine:
                bad.append(f"{path.relative_to(root)}:{line}: {me} ({LAYERS[mine]}) imports {target} ({LAYERS[theirs]})")
    return bad


def project_sources() -> dict[Path, str]:
    return {f: f.read_text() for top in LAYERS[:-1] for f in (ROOT / top).rglob("*.py") if "__pycache__" not in f.parts}


def test_imports_run_one_way():
    sources = project_sources()
    assert len(sources) > 80
    assert violations(sources) == []


def test_the_bottom_layer_imports_nothing_of_the_project():
    for path, text in project_sources().items():
        if path.relative_to(ROOT).parts[0] == "plumbing":
            others = [t for _, t in imported(ast.parse(text), module_name(path)) if layer(t) not in (None, 0)]
            assert not others, (path, others)


def test_a_planted_upward_import_is_caught_wherever_it_hides():
    sources = project_sources()
    errors = ROOT / "plumbing" / "errors.py"
    spec = ROOT / "fixtures" / "specs.py"
    route = ROOT / "strategies" / "torch" / "strategy.py"
    runner = ROOT / "bench" / "runner.py"
    planted = {
        errors: sources[errors] + "\nfrom bench.results import RunDir\n",
        spec: sources[spec] + "\ndef _late():\n    import strategies.base\n",
        route: sources[route] + "\ndef _late():\n    from bench import config\n",
        runner: sources[runner] + "\ndef _late():\n    from bench import lifecycle\n",
    }
    found = violations({**sources, **planted})
    assert len(found) == 4, found
    assert any("plumbing.errors (plumbing) imports bench.results (bench)" in f for f in found)
    assert any("fixtures.specs (fixtures) imports strategies.base (strategies)" in f for f in found)
    assert any("strategies.torch.strategy (strategies) imports bench (bench)" in f for f in found)
    assert any("bench.runner (bench) imports bench.lifecycle (cli)" in f for f in found)
