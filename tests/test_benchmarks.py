"""Smoke test of the benchmark suite: every script runs in its --quick form and writes its
rows. No timing is asserted here (timings belong in benchmarks/, not in tests)."""

import csv
import subprocess
import sys

import pytest

from conftest import ROOT

pytestmark = pytest.mark.slow


def test_quick_suite_runs(tmp_path):
    out = tmp_path / "bench"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "run_all.py"), "--quick", "--out", str(out),
                           "--only", "repository,cvae,world"], cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = list(csv.DictReader(open(out / "summary.csv")))
    names = {r.get("benchmark") for r in rows}
    assert {"repository", "cvae", "world"} <= names, names
    assert "| benchmark | measured | target | met? |" in proc.stdout
