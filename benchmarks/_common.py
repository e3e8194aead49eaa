"""What every benchmark script shares: the machine it ran on, interleaved timing, the
report (a Markdown table on stdout plus a CSV and a Markdown file under
``results/benchmarks/``), and the shape of a ViT-B/16 LoRA.

Not a benchmark itself (run_all.py skips files starting with ``_``).
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "results" / "benchmarks"
#: exit code of a benchmark whose inputs are missing (e.g. results/embedded before `make run`)
MISSING_INPUTS = 3
CSV_FIELDS = ["benchmark", "metric", "value", "unit", "target", "met", "headline", "quick", "note"]


# --- arguments ------------------------------------------------------------------------

def parser(doc: str) -> argparse.ArgumentParser:
    """The arguments every benchmark takes: --quick, --out, --threads."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="a smaller, faster version (smoke test)")
    ap.add_argument("--out", default=None,
                    help="folder for the CSV and Markdown results (default results/benchmarks, "
                         "results/benchmarks/quick with --quick)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (default 1, like config.yaml's `threads`)")
    return ap


def out_dir(args) -> Path:
    if args.out:
        return Path(args.out)
    return DEFAULT_OUT / "quick" if args.quick else DEFAULT_OUT


def require(paths: list[Path], what: str, hint: str = "run `make run` first") -> None:
    """Exit with MISSING_INPUTS and a clear message if any of ``paths`` is missing."""
    missing = [str(p) for p in paths if not Path(p).exists()]
    if missing:
        print(f"{what}: missing {', '.join(missing)} -- {hint}", file=sys.stderr)
        sys.exit(MISSING_INPUTS)


# --- the machine ----------------------------------------------------------------------

def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine(threads: int | None = None) -> dict:
    import torch

    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    info = {
        "cpu": cpu_model(),
        "cores": f"{usable} usable of {os.cpu_count()} logical",
        "torch": torch.__version__,
        "torch threads": threads if threads else torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none",
        "python": platform.python_version(),
        "platform": platform.platform(terse=True),
    }
    if hasattr(os, "getloadavg"):
        info["load average at start"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return info


def print_machine(name: str, info: dict, quick: bool) -> None:
    print(f"## {name}{' (--quick)' if quick else ''}\n")
    print("machine: " + "; ".join(f"{k}: {v}" for k, v in info.items()) + "\n", flush=True)


# --- timing ---------------------------------------------------------------------------

def median(xs) -> float:
    return float(statistics.median(xs))


def timed(fn: Callable, *a, **kw) -> tuple[float, object]:
    t = time.perf_counter()
    out = fn(*a, **kw)
    return time.perf_counter() - t, out


def interleaved(sides: dict[str, Callable[[], object]], rounds: int, warmup: int = 1) -> dict[str, list[float]]:
    """Time each side ``rounds`` times, interleaved: round r runs the sides in order, the
    next round in reverse order (A B, B A, A B ...), so a drift in machine load hits every
    side alike. ``warmup`` untimed rounds first. Returns {side: [seconds, ...]}."""
    names = list(sides)
    for _ in range(warmup):
        for n in names:
            sides[n]()
    times = {n: [] for n in names}
    for r in range(rounds):
        for n in (names if r % 2 == 0 else names[::-1]):
            dt, _ = timed(sides[n])
            times[n].append(dt)
    return times


def peak_rss_mb() -> float:
    """This process's peak resident set size so far (MB)."""
    import resource

    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / 1024 if sys.platform != "darwin" else kb / 2**20


def rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


# --- the report -----------------------------------------------------------------------

@dataclass
class Report:
    """Rows of one benchmark. ``headline`` rows go into run_all.py's summary table."""

    name: str
    quick: bool = False
    rows: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, metric: str, value, unit: str = "", target: str = "", met: bool | None = None,
            note: str = "", headline: bool = False) -> None:
        self.rows.append({"benchmark": self.name, "metric": metric, "value": value, "unit": unit,
                          "target": target, "met": "" if met is None else ("yes" if met else "NO"),
                          "headline": int(headline), "quick": int(self.quick), "note": note})

    def note(self, text: str) -> None:
        self.notes.append(text)
        print(f"note: {text}", flush=True)

    def markdown(self) -> str:
        lines = ["| metric | value | unit | target | met? | note |", "|---|---:|---|---|---|---|"]
        for r in self.rows:
            lines.append(f"| {r['metric']} | {fmt(r['value'])} | {r['unit']} | {r['target']} | {r['met']} | {r['note']} |")
        text = "\n".join(lines)
        if self.notes:
            text += "\n\n" + "\n".join(f"- {n}" for n in self.notes)
        return text

    def write(self, out: Path, info: dict) -> None:
        """Write ``<out>/<name>.csv`` and ``<out>/<name>.md`` and print the table."""
        out.mkdir(parents=True, exist_ok=True)
        with open(out / f"{self.name}.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=CSV_FIELDS)
            w.writeheader()
            for r in self.rows:
                w.writerow({**r, "value": fmt(r["value"]) if isinstance(r["value"], float) else r["value"]})
        head = f"## {self.name}{' (--quick)' if self.quick else ''}\n\nmachine: " + \
            "; ".join(f"{k}: {v}" for k, v in info.items())
        (out / f"{self.name}.md").write_text(head + "\n\n" + self.markdown() + "\n")
        print(self.markdown())
        print(f"\nwrote {out / (self.name + '.csv')} and {out / (self.name + '.md')}", flush=True)


def fmt(x) -> str:
    """Numbers with 4 significant digits (thousands separated from 1e5); anything else as it is."""
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return str(x)
    if isinstance(x, int) or abs(x) >= 1e5:
        return f"{x:,.0f}" if abs(x) >= 1e5 else str(x)
    return f"{x:.4g}"


# --- a ViT-B/16 LoRA ------------------------------------------------------------------

def clip_lora_layout(rank: int = 2, modules=("q_proj", "k_proj", "v_proj"), vision=(12, 768), text=(12, 512)):
    """The :class:`sglora.experts.lora.Layout` of a LoRA on CLIP, built from shapes alone: ``rank``
    on ``modules`` of ``vision = (layers, width)`` and ``text = (layers, width)``, keys as
    PEFT saves them (sorted). Defaults: CLIP ViT-B/16, the paper's rank 2 on q, k, v."""
    from sglora.experts.lora import Layout

    shapes = {}
    for tower, (layers, width) in (("vision_model", vision), ("text_model", text)):
        for i in range(layers):
            for m in modules:
                key = f"base_model.model.{tower}.encoder.layers.{i}.self_attn.{m}"
                shapes[f"{key}.lora_A.weight"] = (rank, width)
                shapes[f"{key}.lora_B.weight"] = (width, rank)
    keys = sorted(shapes)
    return Layout(keys, [shapes[k] for k in keys])
