"""The library's import graph: one direction, no cycles, a thin command line.

Layers, top to bottom (a module imports only from its own layer or below):

    cli, __main__   argument parsing (sglora/cli.py) and warm starts (sglora/warm.py: a job's
                    process hands its command to a server that forks from the CLI)
    steps           one typed function per pipeline step, one module per rules file (sglora/steps/)
    stages          one subpackage per stage of the method: data, backbone, experts, generator,
                    baselines, evaluation, analyses
    core            io (files, settings dataclasses), methods (the registry), paper (numbers),
                    devices (device choice, GPU slots)

Every module belongs to exactly one layer: a new module goes into the stage it belongs to.
Imports inside functions count too: a lazy import is still a dependency. Imports under
``if TYPE_CHECKING:`` do not: they never run (annotations only).
"""

from __future__ import annotations

import ast
from pathlib import Path

from conftest import ROOT

PACKAGE = ROOT / "sglora"
CORE = {"sglora", "sglora.io", "sglora.methods", "sglora.paper", "sglora.devices"}
STAGES = {"data", "backbone", "experts", "generator", "baselines", "evaluation", "analyses"}
CLI, STEPS, STAGE, BASE = 3, 2, 1, 0


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The sglora modules ``name`` imports (anywhere in the file)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    tree = ast.parse(path.read_text())
    typing_only = {id(n) for block in ast.walk(tree) if isinstance(block, ast.If)
                   and getattr(block.test, "id", getattr(block.test, "attr", None)) == "TYPE_CHECKING"
                   for stmt in block.body for n in ast.walk(stmt)}
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            # `from . import x` names a module; `from .m import f` names m
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in known:  # sglora.x.y -> the module that exists
                t = t.rpartition(".")[0]
            if t and t != name:
                found.add(t)
    return found


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {name: imports(name, path, set(mods)) for name, path in mods.items()}


def layer(name: str) -> int | None:
    """The layer of a module, ``None`` when it belongs to none."""
    parts = name.split(".")
    if name in ("sglora.cli", "sglora.__main__", "sglora.warm"):
        return CLI
    if parts[:2] == ["sglora", "steps"]:
        return STEPS
    if len(parts) > 1 and parts[1] in STAGES:
        return STAGE
    return BASE if name in CORE else None


def test_every_module_has_a_layer():
    stray = sorted(m for m in modules() if layer(m) is None)
    assert not stray, f"modules outside the stages, steps and core: {stray}"


def test_no_upward_imports():
    wrong = [f"{m} (layer {layer(m)}) imports {d} (layer {layer(d)})"
             for m, deps in graph().items() for d in sorted(deps) if layer(d) > layer(m)]
    assert not wrong, "\n".join(wrong)


def test_core_modules_import_only_core():
    g = graph()
    wrong = {m: sorted(g[m] - CORE) for m in CORE if m in g and g[m] - CORE}
    assert not wrong, wrong


def test_each_rules_file_has_its_steps_module():
    rules = {p.stem for p in (ROOT / "workflow" / "rules").glob("*.smk")  # not common.smk, <x>_common.smk: helpers
             if p.stem != "common" and not p.stem.endswith("_common")}
    assert rules <= {p.stem for p in (PACKAGE / "steps").glob("*.py")}, "sglora/steps/ has one module per rules file"


def test_no_import_cycles():
    g = graph()
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for d in sorted(g[m]):
            if state.get(d) == 1:
                return stack[stack.index(d):] + [d]
            if d not in state and (cycle := visit(d)):
                return cycle
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(g):
        if m not in state:
            cycle = visit(m)
            assert cycle is None, " -> ".join(cycle)


def test_the_library_never_imports_snakemake():
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            assert not any(n.split(".")[0] == "snakemake" for n in names), path


def test_cli_only_parses_arguments():
    lines = (PACKAGE / "cli.py").read_text().splitlines()
    assert len(lines) <= 160, f"sglora/cli.py has {len(lines)} lines; step logic belongs in sglora/steps/"
    assert graph()["sglora.cli"] <= {"sglora.steps", "sglora.io", "sglora.backbone.clip", "sglora.devices", "sglora.warm"}


def test_python_m_sglora_works_like_sglora():
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "sglora", "--help"], capture_output=True, text=True, check=True,
                         cwd=ROOT).stdout
    assert "train-lora" in out and "generate" in out


def test_every_step_prints_its_help(capsys):
    """Help texts are %-formatted by argparse: a step whose docstring says "95%" must still print."""
    import pytest

    from sglora.cli import build_parser
    from sglora.steps import STEPS

    for name in [None, *STEPS]:
        with pytest.raises(SystemExit) as exit_:
            build_parser().parse_args(["--help"] if name is None else [name, "--help"])
        assert exit_.value.code == 0, name
    assert "study-summary" in capsys.readouterr().out


def test_every_lazy_import_resolves():
    """Imports inside functions run only when the function does: a moved name breaks them
    silently until a rule calls that step. Resolve every ``from <sglora module> import x``."""
    import importlib

    known = modules()
    bad = []
    for name, path in known.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.ImportFrom) or not (node.level or (node.module or "").startswith("sglora")):
                continue
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            module = importlib.import_module(base)
            for alias in node.names:
                if not hasattr(module, alias.name) and f"{base}.{alias.name}" not in known:
                    bad.append(f"{path.relative_to(ROOT)}:{node.lineno}: {base} has no {alias.name}")
    assert not bad, "\n".join(bad)


def test_settings_home_names_every_settings_class():
    """``steps.SETTINGS_HOME`` says where each settings class of a step's signature lives
    (imported only when a step that takes it runs): every entry resolves, and every
    settings class in a signature has an entry (building every step's parser resolves them)."""
    from sglora.io import Settings
    from sglora.steps import SETTINGS_HOME, STEPS, hints, settings_class

    for name in SETTINGS_HOME:
        cls = settings_class(name)
        assert cls.__name__ == name and issubclass(cls, Settings), name
    taken = {h.__name__ for fn in STEPS.values() for h in _types_in(hints(fn).values())
             if isinstance(h, type) and issubclass(h, Settings)}
    assert taken == set(SETTINGS_HOME)


def _types_in(hints):
    import typing

    for hint in hints:
        stack = [hint]
        while stack:
            h = stack.pop()
            stack.extend(typing.get_args(h))
            yield h


def test_a_light_step_runs_without_importing_torch(tiny_world, tmp_path):
    """Most Snakemake jobs are light (task checks, tables, ...): each is a fresh process, and
    torch's import (~2 s of CPU) would cost more than the job."""
    import subprocess
    import sys

    code = (
        "import sys; from sglora.cli import main\n"
        f"rc = main(['check-tasks', '--manifest', 'world={tiny_world / 'manifest.parquet'}', "
        f"'--wanted', '{{\"experts.tasks\": {{\"world\": [\"scottish_terrier\"]}}}}', '--out', '{tmp_path / 'c.json'}'])\n"
        "assert rc == 0, rc\n"
        "assert 'torch' not in sys.modules, 'check-tasks imported torch'\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "c.json").exists()


def test_settings_parameters_default_to_the_settings_class():
    """A step's settings parameter is required or defaults to ``DEFAULT`` (the class's own
    defaults): no step builds a fallback settings object itself."""
    import inspect

    from sglora.io import Settings
    from sglora.steps import DEFAULT, STEPS, hints

    wrong = []
    for name, fn in STEPS.items():
        params = inspect.signature(fn).parameters
        for pname, hint in hints(fn).items():
            kinds = [h for h in _types_in([hint]) if isinstance(h, type) and issubclass(h, Settings)]
            if kinds and params[pname].default not in (inspect.Parameter.empty, DEFAULT):
                wrong.append(f"{name} --{pname}: default {params[pname].default!r}")
    assert not wrong, "\n".join(wrong)
    for path in (PACKAGE / "steps").glob("*.py"):
        assert "settings_class(" not in path.read_text() or path.name == "registry.py", path


def test_a_step_called_from_python_gets_default_settings():
    """Left out, a settings parameter is the class's defaults, as on the command line; given,
    it is used as is."""
    from dataclasses import replace

    from sglora.generator.settings import PriorSpec
    from sglora.steps.registry import DEFAULT, STEPS, step

    try:
        @step("probe-only-in-this-test")
        def probe(prior: PriorSpec = DEFAULT, k: int = 1):
            return prior, k

        assert probe(k=2) == (PriorSpec(), 2)
        mine = replace(PriorSpec(), k=3)
        assert probe(mine)[0] is mine
    finally:
        STEPS.pop("probe-only-in-this-test", None)
