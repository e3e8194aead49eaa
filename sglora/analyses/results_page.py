"""The results page of a run (`docs/results.md` for the embedded default): the premises, every
group's table and paired table, the time each kind of job took and what produced the numbers,
assembled from the files the run wrote, so the page can never disagree with the run."""
from __future__ import annotations

import csv
import os
import platform
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

from ..io import SGLoraError, atomic_path, reading


@dataclass(frozen=True)
class RuleTime:
    """Time of one kind of job (a rule) summed over its jobs, from Snakemake's benchmark files."""
    rule: str
    jobs: int
    wall_s: float
    cpu_s: float
    max_rss_mb: float


#: the last line of a warm job's log (sglora/warm.py): what its child used
WARM_USAGE = re.compile(r"^sglora: ran in warm child \d+: ([0-9.]+) CPU-s, max RSS ([0-9.]+) MB", re.M)


def warm_usage(log: Path) -> tuple[float, float] | None:
    """``(CPU seconds, max RSS MB)`` of the warm child that ran a job, from its log; ``None``
    when the job ran in its own process (or has no log)."""
    found = WARM_USAGE.findall(log.read_text(errors="replace")) if log.is_file() else []
    return (float(found[-1][0]), float(found[-1][1])) if found else None


def rule_times(benchmarks: str | Path, logs: str | Path | None = None) -> list[RuleTime]:
    """Sum every benchmark TSV under ``benchmarks`` by rule (its first path component), most
    job time first. A job that ran in a warm child (its log ``logs/<same path>.log`` says so)
    counts the child's CPU and RSS as well: Snakemake measured only the job's own process."""
    root = Path(benchmarks)
    acc: dict[str, list[float]] = {}
    for path in sorted(root.rglob("*.tsv")):
        rule = path.relative_to(root).parts[0].removesuffix(".tsv")
        with reading(path, "a Snakemake benchmark file"):
            rows = list(csv.DictReader(path.read_text().splitlines(), delimiter="\t"))
            wall = sum(float(r["s"]) for r in rows)
            cpu = sum(float(r["cpu_time"]) for r in rows)
            rss = max((float(r["max_rss"]) for r in rows if r["max_rss"] not in ("", "-")), default=0.0)
        child = warm_usage(Path(logs) / path.relative_to(root).with_suffix(".log")) if logs else None
        if child:
            cpu, rss = cpu + child[0], max(rss, child[1])
        a = acc.setdefault(rule, [0, 0.0, 0.0, 0.0])
        a[0] += 1
        a[1] += wall
        a[2] += cpu
        a[3] = max(a[3], rss)
    times = [RuleTime(rule, int(a[0]), a[1], a[2], a[3]) for rule, a in acc.items()]
    return sorted(times, key=lambda t: (-t.wall_s, t.rule))


def render_times(times: list[RuleTime]) -> str:
    """A Markdown table of :func:`rule_times`, with a total row."""
    lines = ["| rule | jobs | job time (min) | CPU time (min) | largest max RSS (MB) |", "|---|---:|---:|---:|---:|"]
    for t in times:
        lines.append(f"| {t.rule} | {t.jobs} | {t.wall_s / 60:.1f} | {t.cpu_s / 60:.1f} | {t.max_rss_mb:.0f} |")
    jobs, wall, cpu = sum(t.jobs for t in times), sum(t.wall_s for t in times), sum(t.cpu_s for t in times)
    lines.append(f"| **all** | {jobs} | {wall / 60:.1f} | {cpu / 60:.1f} | |")
    return "\n".join(lines)


def render_replicate_times(times: list[list[RuleTime]]) -> str:
    """A Markdown table of each training replicate's CPU time per rule kind (``times[k]``:
    replicate k's :func:`rule_times`), most CPU first, with a total row."""
    rules = sorted({t.rule for ts in times for t in ts},
                   key=lambda r: (-sum(t.cpu_s for ts in times for t in ts if t.rule == r), r))
    cpu = [{t.rule: t.cpu_s for t in ts} for ts in times]
    head = "| rule | " + " | ".join(f"replicate {k} CPU (min)" for k in range(len(times))) + " |"
    lines = [head, "|---|" + "---:|" * len(times)]
    lines += [f"| {r} | " + " | ".join(f"{c.get(r, 0.0) / 60:.1f}" for c in cpu) + " |" for r in rules]
    lines.append("| **all** | " + " | ".join(f"{sum(c.values()) / 60:.1f}" for c in cpu) + " |")
    return "\n".join(lines)


def provenance(threads: int) -> dict[str, str]:
    """What produced a run's numbers: the code's commit, torch, the CPU capability or GPU, threads.

    Numbers are byte-identical only where all of these match: another CPU capability
    (AVX-512 vs AVX2) rounds differently and training takes another path."""
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    return {
        "commit": _commit(),
        "torch": torch.__version__,
        "cpu capability": torch.backends.cpu.get_cpu_capability(),
        "cpu": platform.processor() or platform.machine(),
        "cores": str(os.cpu_count()),
        "gpu": gpu,
        "threads per job": str(threads),
    }


def _commit() -> str:
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "-C", str(here), "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             timeout=10)
        dirty = subprocess.run(["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no", "--", "."],
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "unknown (no git)"
    if out.returncode:
        return "unknown (not a git checkout)"
    return out.stdout.strip() + (" (with uncommitted changes to sglora/)" if dirty.stdout.strip() else "")


def _read(path: Path, what: str) -> str:
    with reading(path, what):
        return path.read_text(encoding="utf-8").strip()


def write_results_page(out: str | Path, title: str, tables: str | Path, groups: list[str], paired: list[str],
                       premises: str | Path | None, benchmarks: str | Path | None, threads: int,
                       source: str = "", controls: list[str] = (), captions: str | Path | None = None,
                       logs: str | Path | None = None, pooled: str | Path | None = None, replicates: int = 1,
                       replicate_benchmarks: list[str | Path] = ()) -> None:
    """Write the results page: provenance, premises, the caption quality (``captions``: its
    Markdown table), per group its table, its paired table and its description controls
    (read from ``tables/<group>.md``, ``<group>.paired.md`` and ``<group>.controls.md``), the
    same tables pooled over training replicates (``pooled``: their folder), then the time per rule
    (and, given the benchmark folders of replicates 1, 2, ... in ``replicate_benchmarks``, their
    logs beside them, every replicate's CPU time per rule kind)."""
    tables = Path(tables)
    missing = [g for g in groups if not (tables / f"{g}.md").is_file()]
    if missing:
        raise SGLoraError(f"{tables}: no table for the groups {missing} (expected <group>.md)")
    parts = [f"# {title}", "",
             "Written by the rule `results_page` from the run's own files"
             + (f" ({source})" if source else "") + "; do not edit by hand: rerun the DAG.", ""]
    parts += ["| produced with | |", "|---|---|"]
    parts += [f"| {k} | {v} |" for k, v in provenance(threads).items()]
    parts += [f"| training replicates | {replicates}" + (" (one training of every model: training noise is in no interval)"
                                                          if replicates == 1 else " (pooled below)") + " |"]
    parts += ["", "Numbers are byte-identical only on the same CPU capability (or GPU), torch version and threads; "
              "elsewhere rounding differs and training takes another path, like another training seed.", ""]
    if premises:
        parts += ["## Premises", "", _read(Path(premises), "the premises table"), ""]
    if captions:
        parts += ["## Captions", "", _read(Path(captions), "the caption quality table"), ""]
    for g in groups:
        parts += [f"## Group `{g}`", "", _read(tables / f"{g}.md", f"the table of group {g}"), ""]
        if g in paired:
            parts += [_read(tables / f"{g}.paired.md", f"the paired table of group {g}"), ""]
        if g in controls:
            parts += [_read(tables / f"{g}.controls.md", f"the controls table of group {g}"), ""]
    if pooled:
        parts += ["## Pooled over the training replicates", "",
                  "The groups above are replicate 0's (this run's own training). Below, every mean and interval is "
                  "pooled over the training replicates (the same world and tasks, every training rerun under other "
                  "seeds: `sglora/evaluation/replicates.py`), and each paired difference lists each replicate's own "
                  "verdict. A verdict is only as strong as it is here.", ""]
        for g in groups:
            parts += [f"### Group `{g}`, pooled", "", _read(Path(pooled) / f"{g}.md", f"the pooled table of group {g}"), ""]
            if g in paired:
                parts += [_read(Path(pooled) / f"{g}.paired.md", f"the pooled paired table of group {g}"), ""]
    if benchmarks and Path(benchmarks).is_dir():
        parts += ["## Time per rule", "",
                  "Summed over the run's Snakemake benchmark files (job time is each job's wall time; jobs ran "
                  "side by side up to `--cores`). A job that ran in a child of the warm server (`docs/pipeline.md`) "
                  "adds the child's CPU and RSS from its log (Snakemake measured only the job's own process).",
                  "", render_times(own := rule_times(benchmarks, logs)), ""]
        if replicate_benchmarks:
            times = [own] + [rule_times(b, Path(b).parent / "logs") for b in replicate_benchmarks]
            parts += ["The table above is replicate 0's. Every training replicate's CPU time per rule kind:", "",
                      render_replicate_times(times), ""]
    with atomic_path(out) as tmp:
        tmp.write_text("\n".join(parts).rstrip() + "\n", encoding="utf-8")
