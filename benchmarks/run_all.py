"""Run every benchmark, one after the other, and summarise them in one table.

    python benchmarks/run_all.py [--quick] [--only generation,eval] [--out DIR]

Each benchmarks/bench_*.py runs in its own subprocess (`--quick` and `--out` pass
through); its Markdown goes to this script's stdout as it comes. Their CSV rows are
collected into <out>/summary.csv (default results/benchmarks/, results/benchmarks/quick/
with --quick) and the headline rows printed as one Markdown table: benchmark, measured,
target, met?. A benchmark whose inputs are missing (exit code 3: results/embedded before
`make run`) is reported as skipped; any other failure makes the exit code 1.
"""

from __future__ import annotations

import csv
import subprocess
import sys
import time
from pathlib import Path

import _common as C

HERE = Path(__file__).resolve().parent
#: run order: cheap first; generation and pipeline read results/embedded
ORDER = ["world", "cvae", "lora_batches", "warm", "eval", "generation", "repository", "images", "gpu", "pipeline"]


def scripts() -> list[Path]:
    found = {p.stem.removeprefix("bench_"): p for p in HERE.glob("bench_*.py")}
    return [found[n] for n in ORDER if n in found] + [found[n] for n in sorted(found) if n not in ORDER]


def main(argv=None) -> int:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="every benchmark's smaller, faster version")
    ap.add_argument("--only", default="", help="comma-separated benchmark names (e.g. generation,eval)")
    ap.add_argument("--out", default=None, help="results folder (default results/benchmarks[/quick])")
    args = ap.parse_args(argv)
    out = Path(args.out) if args.out else (C.DEFAULT_OUT / "quick" if args.quick else C.DEFAULT_OUT)
    only = {s.strip() for s in args.only.split(",") if s.strip()}
    todo = [p for p in scripts() if not only or p.stem.removeprefix("bench_") in only]
    unknown = only - {p.stem.removeprefix("bench_") for p in scripts()}
    if unknown:
        print(f"run_all: unknown benchmark(s) {sorted(unknown)}; have {[p.stem for p in scripts()]}", file=sys.stderr)
        return 2

    info = C.machine()
    C.print_machine(f"run_all: {len(todo)} benchmarks", info, args.quick)
    rows, status = [], {}
    t_all = time.perf_counter()
    for script in todo:
        name = script.stem.removeprefix("bench_")
        cmd = [sys.executable, str(script), "--out", str(out)] + (["--quick"] if args.quick else [])
        print(f"\n$ {' '.join(cmd[1:])}", flush=True)
        t = time.perf_counter()
        proc = subprocess.run(cmd, cwd=C.ROOT, stderr=subprocess.PIPE, text=True)
        dt = time.perf_counter() - t
        if proc.returncode == 0:
            status[name] = f"ok ({dt:.0f} s)"
            with open(out / f"{name}.csv", newline="") as f:
                rows += list(csv.DictReader(f))
        else:
            last = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()][-1:] or ["(no message)"]
            kind = "skipped" if proc.returncode == C.MISSING_INPUTS else f"FAILED (exit {proc.returncode})"
            status[name] = f"{kind}: {last[0]}"
            if proc.returncode != C.MISSING_INPUTS:
                print(proc.stderr[-4000:], file=sys.stderr)
            rows.append({"benchmark": name, "metric": "(did not run)", "value": "", "unit": "", "target": "",
                         "met": kind.split(" ")[0], "headline": "1", "quick": str(int(args.quick)), "note": last[0]})
        print(f"[{name}: {status[name]}]", flush=True)
    total = time.perf_counter() - t_all

    out.mkdir(parents=True, exist_ok=True)
    with open(out / "summary.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=C.CSV_FIELDS)
        w.writeheader()
        w.writerows(rows)
    lines = ["| benchmark | measured | target | met? |", "|---|---|---|---|"]
    for r in rows:
        if r["headline"] != "1":
            continue
        measured = f"{r['metric']}: {r['value']} {r['unit']}".strip() if r["value"] != "" else r["note"]
        met = r["met"] or ("n/a (quick)" if r["target"] and args.quick else "")
        lines.append(f"| {r['benchmark']} | {measured} | {r['target'] or '-'} | {met or '-'} |")
    table = "\n".join(lines)
    print(f"\n## Summary{' (--quick)' if args.quick else ''}\n")
    print("machine: " + "; ".join(f"{k}: {v}" for k, v in info.items()) + "\n")
    print(table)
    print("\n" + "\n".join(f"- {n}: {s}" for n, s in status.items()))
    print(f"\ntotal {total:.0f} s; wrote {out / 'summary.csv'} and {out / 'summary.md'}")
    (out / "summary.md").write_text("machine: " + "; ".join(f"{k}: {v}" for k, v in info.items()) + "\n\n" + table + "\n")
    failed = [n for n, s in status.items() if s.startswith("FAILED")]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
