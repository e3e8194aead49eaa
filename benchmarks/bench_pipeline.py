"""Snakemake's own overhead, and the embedded default's time broken down by rule.

    python benchmarks/bench_pipeline.py [--quick] [--wall SECONDS] [--results results/embedded]

(a) Overhead. `snakemake -n` on the largest paper preset in config/ (the one with the
most jobs; presets reading real datasets are pointed at the miniature copies
tests/miniatures.py writes, results in a temp dir), and a no-op rerun on an up-to-date
results/embedded: `snakemake -n` and `snakemake --cores 2` (the latter only when the dry
run says there is nothing to do, so this benchmark never runs pipeline work; if jobs are
pending only by provenance -- params or code changed since the run -- and none by
modification time, with `--rerun-triggers mtime`, said in a note), against the time of the
work itself (the sum of the `s` column of results/embedded/benchmarks/**/*.tsv).

(b) The default DAG end to end, by rule: from the Snakemake `benchmark:` .tsv files, summed
as the results page sums them (rule = the path's first component under benchmarks/; a job
that ran in a warm child adds the child's CPU from its log), and from the job start/finish
lines of the Snakemake logs, which also cover rules without a `benchmark:` directive.
Total wall time: `--wall SECONDS` if given, else from .snakemake/log/: the latest run of
results/embedded plus the earlier runs back to the one that started the DAG (rule
`world`), summed. A run with training replicates (`replicates: R`; replicate k's files in
<results>/replicates/<k>) is also given each replicate's CPU per rule kind, and its target is
per replicate: the run's wall time / R. Target: 15 minutes (--target; 45 for the decisive preset's results folder,
`--results results/embedded_decisive --target 45`).
--quick: the preset picked by its configured task and method counts (no dry run of every
preset), one repetition of each command.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import yaml

import _common as C

from sglora.analyses.results_page import rule_times
from sglora.evaluation.replicates import replicate_results

TARGET_WALL_S = 15 * 60
SNAKEMAKE = str(Path(sys.executable).parent / "snakemake")


def snakemake(args: list[str]) -> tuple[float, subprocess.CompletedProcess]:
    t = time.perf_counter()
    proc = subprocess.run([SNAKEMAKE, *args], cwd=C.ROOT, capture_output=True, text=True)
    return time.perf_counter() - t, proc


def job_count(out: str) -> int | None:
    m = re.search(r"^total\s+(\d+)\s*$", out, re.M)
    if m:
        return int(m.group(1))
    return 0 if "Nothing to be done" in out else None


def preset_size(cfg: dict) -> int:
    """A cheap proxy for a preset's job count: LoRAs to train plus (group, method) pairs."""
    loras = {(cfg["experts"]["dataset"], t) for t in cfg["experts"]["tasks"]}
    pairs = 0
    for g in cfg.get("groups", {}).values():
        loras |= {(g["dataset"], t) for t in g["tasks"]}
        pairs += len(g.get("methods", []))
    return len(loras) + pairs


def patched_presets(tmp: Path) -> dict[str, Path]:
    """Every paper preset (config/*.yaml but tiny.yaml), results in ``tmp``, real dataset
    roots pointed at miniatures (as tests/dryrun_configs.py does)."""
    out, roots = {}, None
    for path in sorted((C.ROOT / "config").glob("*.yaml")):
        if path.stem == "tiny":
            continue
        cfg = yaml.safe_load(path.read_text())
        real = [d for d in cfg.get("datasets", {}).values() if d.get("kind") != "embedded"]
        if real:
            if roots is None:
                sys.path.insert(0, str(C.ROOT / "tests"))
                from miniatures import write_all  # noqa: PLC0415

                roots = write_all(tmp / "data")
            for d in real:
                d["root"] = str(roots[d["kind"]])
        cfg["results"] = str(tmp / "results" / path.stem)
        p = tmp / f"{path.stem}.yaml"
        p.write_text(yaml.safe_dump(cfg))
        out[path.stem] = p
    return out


# --- (b) the DAG by rule --------------------------------------------------------------------

def bench_rule(path: str | Path) -> str:
    """The rule a benchmark .tsv belongs to: the first path component under benchmarks/
    (``train_lora/world/x.tsv``), or the file's stem (``train_cvae.tsv``, ``train_cond_pdiff.tsv``)."""
    parts = Path(path).parts
    rel = parts[len(parts) - 1 - parts[::-1].index("benchmarks") + 1:] if "benchmarks" in parts else parts[-1:]
    return rel[0] if len(rel) > 1 else Path(rel[-1]).stem


_STAMP = re.compile(r"^\[(\w{3} \w{3} +\d+ \d\d:\d\d:\d\d \d{4})\]$")


def parse_log(path: Path) -> dict:
    """Jobs (rule, start, end) and the span of one Snakemake log."""
    lines = path.read_text(errors="replace").splitlines()
    stamp = None
    starts, jobs, output_of, name_of = {}, [], {}, {}
    first = last = None
    pending_rule = pending_output = pending_bench = current = None
    for line in lines:
        m = _STAMP.match(line.strip())
        if m:
            current = None
            stamp = datetime.strptime(m.group(1), "%a %b %d %H:%M:%S %Y")
            first = first or stamp
            last = stamp
            continue
        m = re.match(r"^(?:local)?rule (\w+):$", line.strip())
        if m:
            pending_rule, pending_output, pending_bench, current = (m.group(1), stamp), None, None, None
            continue
        if pending_rule and line.strip().startswith("output: "):
            pending_output = line.strip()[len("output: "):]
            continue
        if line.strip().startswith("benchmark: ") and (pending_rule or current is not None):
            pending_bench = line.strip()[len("benchmark: "):]
            if current is not None:  # Snakemake prints it after the jobid line
                name_of[current] = bench_rule(pending_bench)
            continue
        m = re.match(r"^jobid: (\d+)$", line.strip())
        if m and pending_rule:
            starts[int(m.group(1))] = pending_rule[1]
            output_of[int(m.group(1))] = pending_output or f"{pending_rule[0]}#{m.group(1)}"
            name_of[int(m.group(1))] = bench_rule(pending_bench) if pending_bench else pending_rule[0]
            current, pending_rule = int(m.group(1)), None
            continue
        m = re.match(r"^Finished jobid: (\d+) \(Rule: (\w+)\)", line.strip())
        if m:
            j = int(m.group(1))
            if j in starts and stamp:
                jobs.append((name_of[j], (stamp - starts[j]).total_seconds(), output_of[j]))
    text = "\n".join(lines)
    el = re.search(r"Elapsed time: (\d+):(\d\d):(\d\d(?:\.\d+)?)", text)
    span = (int(el.group(1)) * 3600 + int(el.group(2)) * 60 + float(el.group(3))) if el else (
        (last - first).total_seconds() if first and last else 0.0)
    date = re.search(r"Date: (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)", text)
    return {"path": path, "jobs": jobs, "span": span, "finished": bool(el), "text": text,
            "date": date.group(1) if date else ""}


def embedded_logs(results: str) -> list[dict]:
    """Logs of runs that executed jobs of ``results`` (newest last), back to the one that ran
    `world`; `--touch` runs are skipped."""
    logs = []
    for p in sorted((C.ROOT / ".snakemake" / "log").glob("*.snakemake.log")):
        info = parse_log(p)
        command = re.search(r"Command: (.*)", info["text"])
        if command and re.search(r"(^|\s)(--touch|-t)(\s|$)", command.group(1)):
            continue  # `snakemake --touch` marks outputs up to date; it runs nothing
        if info["jobs"] and f"output: {results}/" in info["text"]:
            logs.append(info)
    chain = []
    for info in reversed(logs):
        chain.insert(0, info)
        if any(job[0] == "world" for job in info["jobs"]):
            break
    return chain


def main(argv=None) -> int:
    ap = C.parser(__doc__)
    ap.add_argument("--results", default=None, help="the embedded run (default: config.yaml's `results`)")
    ap.add_argument("--wall", type=float, default=None, help="end-to-end wall time of the default DAG in seconds, if known")
    ap.add_argument("--repeats", type=int, default=0, help="repetitions of each timed command (default 3; 1 with --quick)")
    ap.add_argument("--target", type=float, default=TARGET_WALL_S / 60,
                    help="wall-time target of the run in minutes (default 15, the default DAG's; "
                         "45 for config/embedded/decisive.yaml's results/embedded_decisive)")
    args = ap.parse_args(argv)
    repeats = args.repeats or (1 if args.quick else 3)
    default_rel = yaml.safe_load((C.ROOT / "config.yaml").read_text())["results"].rstrip("/")
    results_rel = (args.results or default_rel).rstrip("/")
    res = C.ROOT / results_rel
    bench_dir = res / "benchmarks"
    C.require([bench_dir], "bench_pipeline")

    info = C.machine()
    rep = C.Report("pipeline", quick=args.quick)
    C.print_machine("bench_pipeline: Snakemake overhead and the default DAG by rule", info, args.quick)

    # training replicates (config replicates: R): replicate k's files in replicate_results(results, k)
    replicates = [Path(replicate_results(str(res), 0))]
    while (Path(replicate_results(str(res), len(replicates))) / "benchmarks").is_dir():
        replicates.append(Path(replicate_results(str(res), len(replicates))))
    # the results page's sums (its warm jobs' children's CPU and RSS included, from their logs), per replicate
    rep_times = [rule_times(r / "benchmarks", r / "logs") for r in replicates]
    by_rule = {t.rule: {"jobs": t.jobs, "s": t.wall_s, "cpu_time": t.cpu_s, "max_rss": t.max_rss_mb}
               for t in rep_times[0]}
    work = sum(r["s"] for r in by_rule.values())
    print(f"work: {work:.0f} s in {sum(r['jobs'] for r in by_rule.values())} benchmarked jobs"
          + (f" (replicate 0 of {len(replicates)})" if len(replicates) > 1 else ""), flush=True)

    # (a) snakemake -n on the largest paper preset
    with tempfile.TemporaryDirectory(prefix="sglora-bench-pipe-") as tmp:
        presets = patched_presets(Path(tmp))
        if not presets:
            rep.note("no paper preset in config/: timing the dry run of config.yaml instead")
            presets = {"config": C.ROOT / "config.yaml"}
        failed = []
        if args.quick:
            # the preset with the most configured tasks and methods that dry-runs
            sizes = {n: preset_size(yaml.safe_load(p.read_text())) for n, p in presets.items()}
            order = sorted(sizes, key=lambda n: (-sizes[n], n))[:3]  # quick: give up after 3 failures
            how = "picked by configured tasks and methods (--quick)"
        else:
            jobs = {}
            for n, p in presets.items():
                dt, proc = snakemake(["-n", "--configfile", str(p)])
                if proc.returncode:
                    failed.append(n)
                    continue
                jobs[n] = job_count(proc.stdout + proc.stderr) or 0
                print(f"  dry run config/{n}.yaml: {jobs[n]} jobs, {dt:.1f} s", flush=True)
            order = sorted(jobs, key=lambda n: (-jobs[n], n))
            how = f"the most jobs of {len(jobs)} presets that dry-run"
        times, n_jobs, name = [], None, None
        for cand in order:
            dt, proc = snakemake(["-n", "--configfile", str(presets[cand])])
            if proc.returncode:
                failed.append(cand)
                continue
            name, n_jobs, times = cand, job_count(proc.stdout + proc.stderr), [dt]
            break
        if name is None:
            rep.note("no paper preset passed its dry run: timing the dry run of config.yaml (a fresh results "
                     "folder) instead")
            name, fallback = "config", Path(tmp) / "config.yaml"
            cfg = yaml.safe_load((C.ROOT / "config.yaml").read_text())
            cfg["results"] = str(Path(tmp) / "results" / "config")
            fallback.write_text(yaml.safe_dump(cfg))
            presets[name] = fallback
            dt, proc = snakemake(["-n", "--configfile", str(fallback)])
            if proc.returncode:
                raise RuntimeError(f"snakemake -n on config.yaml failed:\n{(proc.stdout + proc.stderr)[-3000:]}")
            n_jobs, times = job_count(proc.stdout + proc.stderr), [dt]
        for _ in range(repeats - 1):
            dt, proc = snakemake(["-n", "--configfile", str(presets[name])])
            times.append(dt)
        if failed:
            rep.note(f"{len(failed)} preset(s) failed their dry run and were skipped: "
                     + ", ".join(f"config/{n}.yaml" for n in sorted(set(failed)))
                     + " (run tests/dryrun_configs.py for the errors)")
    where = "config.yaml, fallback" if name == "config" else f"config/{name}.yaml"
    rep.add(f"snakemake -n, largest preset ({where}, {n_jobs} jobs)", C.median(times), "s",
            note=f"{how}; median of {repeats}; miniature dataset roots", headline=True)

    # no-op rerun of the embedded default
    noop_n = []
    pending = None
    for _ in range(repeats):
        dt, proc = snakemake(["-n"])
        noop_n.append(dt)
        pending = job_count(proc.stdout + proc.stderr)
    locked = any((C.ROOT / ".snakemake" / "locks").glob("*")) if (C.ROOT / ".snakemake" / "locks").exists() else False
    rep.add("snakemake -n on results/embedded", C.median(noop_n), "s",
            note=f"median of {repeats}; " + ("nothing to do" if pending == 0 else f"{pending} jobs pending"))
    trigger = []
    if pending and not locked:
        # pending only because code/params/config changed since the run? Then the outputs are
        # up to date by modification time, and `--rerun-triggers mtime` gives a true no-op
        _, proc = snakemake(["-n", "--rerun-triggers", "mtime"])
        if job_count(proc.stdout + proc.stderr) == 0:
            trigger = ["--rerun-triggers", "mtime"]
            rep.note(f"results/embedded has {pending} jobs pending by provenance (params/code changed since its run) "
                     "but none by modification time: the no-op rerun uses --rerun-triggers mtime")
    if (pending == 0 or trigger) and not locked:
        runs = []
        for _ in range(repeats):
            dt, proc = snakemake(["--cores", "2", *trigger])
            if proc.returncode:
                raise RuntimeError(f"no-op `snakemake --cores 2` failed:\n{proc.stderr[-3000:]}")
            runs.append(dt)
        rerun = C.median(runs)
        rep.add(f"no-op rerun: snakemake --cores 2 {' '.join(trigger)} on up-to-date results/embedded".replace("  ", " "),
                rerun, "s", note=f"median of {repeats}")
        if work:
            rep.add("no-op rerun / time of the work", rerun / work, "x", headline=True,
                    note=f"work = sum of benchmark .tsv `s` = {work:.0f} s")
    else:
        why = "a Snakemake run holds the lock" if locked else f"results/embedded is not up to date ({pending} jobs pending)"
        rep.note(f"no-op `snakemake --cores 2` skipped: {why}; this benchmark never runs pipeline work")
        if work:
            rep.add("dry run / time of the work", C.median(noop_n) / work, "x", headline=True,
                    note=f"work = sum of benchmark .tsv `s` = {work:.0f} s; the --cores 2 rerun was skipped")

    # (b) the default DAG by rule
    logs = embedded_logs(results_rel)
    latest: dict[str, tuple[str, float]] = {}  # output -> (rule, seconds) of its latest run
    for lg in logs:
        for rule, sec, output in lg["jobs"]:
            latest[output] = (rule, sec)
    log_rules: dict[str, list[float]] = {}
    for rule, sec in latest.values():
        log_rules.setdefault(rule, []).append(sec)
    for rule in sorted(set(by_rule) | set(log_rules), key=lambda r: -(by_rule.get(r, {}).get("s") or sum(log_rules.get(r, [0])))):
        if rule == "all":
            continue
        t = by_rule.get(rule)
        lj = log_rules.get(rule, [])
        if t:
            rep.add(f"rule {rule}", t["s"], "s",
                    note=f"{t['jobs']} job(s), benchmark .tsv; cpu {t['cpu_time']:.0f} s (warm children's from their logs); "
                         f"max RSS {t['max_rss']:.0f} MB"
                         + (f"; log: {sum(lj):.0f} s" if lj else ""))
        else:
            rep.add(f"rule {rule}", float(sum(lj)), "s",
                    note=f"{len(lj)} job(s), from the Snakemake logs, latest run of each output (no benchmark: directive)")
    rep.add("work: sum of benchmark .tsv `s`", work, "s", note="rules with a benchmark: directive only"
            + ("; replicate 0's" if len(replicates) > 1 else ""))
    if len(replicates) > 1:
        for k, times in enumerate(rep_times):
            cpu = {t.rule: t.cpu_s for t in times}
            top = ", ".join(f"{r} {c / 60:.1f}" for r, c in sorted(cpu.items(), key=lambda kv: -kv[1])[:8])
            rep.add(f"replicate {k}: CPU time of its benchmarked jobs", sum(cpu.values()) / 60, "min",
                    note=f"{sum(t.jobs for t in times)} jobs; CPU-min per rule kind: {top}")
    if args.wall is not None:
        wall, src = args.wall, "--wall"
    elif logs:
        wall = sum(lg["span"] for lg in logs)
        src = (f"sum of {len(logs)} Snakemake log(s) since the run that started the DAG (reruns included): "
               + ", ".join(f"{lg['path'].name} ({lg['span']:.0f} s{'' if lg['finished'] else ', unfinished'})" for lg in logs))
    else:
        wall, src = None, "unknown (no --wall, no log of a results/embedded run)"
    # the last outputs of a run: the tables and figures (rules tables, figures)
    complete = any((res / "tables").glob("*.paired.md")) and (res / "figures" / "r1_bars.png").exists()
    if args.wall is None and logs and not logs[-1]["finished"]:
        complete = False  # a run of results/embedded is still going
    if wall is not None:
        label = "default DAG" if results_rel == default_rel else f"DAG of {results_rel}"
        n = len(replicates)
        how = src if complete else f"the DAG is not complete (run in progress or stopped); {src}"
        if n > 1:  # the target is per replicate: the run's wall time over its replicates
            rep.add(f"{label} end to end, wall time ({n} training replicates)", wall / 60, "min", note=how)
        rep.add(f"{label} end to end, wall time" + (" per replicate" if n > 1 else ""), wall / n / 60, "min",
                f"< {args.target:g}", wall / n < args.target * 60 if complete else None, headline=True,
                note=(f"the run's wall time / {n}; " if n > 1 else "") + how)
    else:
        rep.note(f"wall time {src}")
    rep.write(C.out_dir(args), info)
    return 0


if __name__ == "__main__":
    sys.exit(main())
