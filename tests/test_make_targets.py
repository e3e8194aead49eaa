"""The Makefile's test targets: `make test` is the whole suite (lint, the dry run of every
shipped config, every test), `make check` its fast tier (lint and the tests not marked slow,
heavy or gpu); and every marker the tests use is registered in pyproject.toml."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from conftest import ROOT

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="needs make")


def planned(target: str) -> str:
    """The commands `make <target>` runs, without running them (the venv taken as set up)."""
    proc = subprocess.run(["make", "-n", "-o", ".venv/.installed", target], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def pytest_line(commands: str) -> str:
    lines = [line for line in commands.splitlines() if "-m pytest" in line]
    assert len(lines) == 1, commands
    return lines[0]


def test_make_test_runs_lint_every_dry_run_and_every_test():
    commands = planned("test")
    assert "snakemake --lint" in commands and "snakefmt --check Snakefile workflow/" in commands
    assert "tests/dryrun_configs.py" in commands
    assert " -m " not in pytest_line(commands).split("-m pytest", 1)[1]


def test_make_check_is_lint_and_the_fast_tier():
    commands = planned("check")
    assert "snakemake --lint" in commands and "snakefmt --check Snakefile workflow/" in commands
    assert "dryrun_configs" not in commands
    assert '-m "not slow and not heavy and not gpu"' in pytest_line(commands)


def test_every_marker_the_tests_use_is_registered():
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    registered = {m.split(":")[0] for m in tomllib.loads((ROOT / "pyproject.toml").read_text())
                  ["tool"]["pytest"]["ini_options"]["markers"]}
    builtin = {"parametrize", "skipif", "skip", "xfail", "usefixtures", "filterwarnings"}
    used = set()
    for path in (ROOT / "tests").glob("*.py"):
        used |= set(re.findall(r"pytest\.mark\.(\w+)", path.read_text()))
    assert used - builtin <= registered, f"markers used but not registered in pyproject.toml: {used - builtin - registered}"
