"""Warm starts: CPU seconds per job, each job in its own process vs forked from the warm server.

    python benchmarks/bench_warm.py [--quick] [--loras 4] [--threads 1]

Runs the same jobs two ways, side by side in one run: each `sglora` command in a fresh
process (SGLORA_WARM unset), and each handed to a warm server (sglora/warm.py) that forks a
child for it, as a local Snakemake run does. The jobs are a small DAG's kinds: `check-tasks`
per task (light), `train-lora` per task (config.yaml's `lora:` and `training:`, 10 epochs),
and one zero-shot `evaluate` over the tasks. Each side runs its jobs one after the other;
the sides alternate (A B, B A) and the medians are reported. CPU time is user + system of
the jobs' processes and, on the warm side, of the server's children (the server's own
imports, paid once per run, are reported apart). The two sides' outputs are compared byte
by byte. Inputs as in bench_lora_batches.py (the world of config.yaml's first embedded
dataset, a random CLIP of its backbone sizes, the image cache). --quick: 2 tasks, tiny
sizes, 2 epochs, one round.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _common as C
from bench_lora_batches import arguments, digest, setup

from sglora import warm


def server_cpu(pid: int) -> float:
    """User + system seconds of the server and of its reaped children (its jobs)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(f) for f in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def run(argvs: list[list[str]], env: dict, server: int | None) -> tuple[float, float]:
    """CPU seconds of the jobs (their processes, and the server's children for warm jobs) and wall seconds."""
    before, s0, t = resource.getrusage(resource.RUSAGE_CHILDREN), server_cpu(server) if server else 0.0, time.perf_counter()
    for argv in argvs:
        proc = subprocess.run(["sglora", *argv], capture_output=True, text=True, env=env)
        if proc.returncode or "running in this process" in proc.stderr and warm.WARM_ENV in env:
            raise SystemExit(f"bench_warm: sglora {argv[0]} failed or ran cold:\n{proc.stderr[-3000:]}")
    wall = time.perf_counter() - t
    time.sleep(0.5)  # the server reaps its children every 0.2 s
    after, s1 = resource.getrusage(resource.RUSAGE_CHILDREN), server_cpu(server) if server else 0.0
    return after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime + s1 - s0, wall


def main(argv=None) -> int:
    args, cfg, n, training, rounds = arguments(__doc__, argv, 4, {"epochs": 10, "snapshots": 5})

    info = C.machine(args.threads)
    rep = C.Report("warm", quick=args.quick)
    C.print_machine(f"bench_warm: {n} tasks' jobs, fresh processes vs the warm server", info, args.quick)
    tmp = Path(tempfile.mkdtemp(prefix="sgw-bench-"))
    env = {k: v for k, v in os.environ.items() if k != warm.WARM_ENV}
    env.update(PYTHONPATH=str(C.ROOT), HF_HUB_OFFLINE="1", PATH=f"{Path(sys.executable).parent}:{env.get('PATH', '')}")
    env.update({k: str(args.threads) for k in warm.THREAD_VARS})
    (tmp / "server").mkdir()
    proc, path = warm.start(tmp / "server", wait=300, env={k: v for k, v in env.items() if k not in warm.PER_JOB})
    if proc is None:
        raise SystemExit(f"bench_warm: {path}")
    try:
        server_start = server_cpu(proc.pid)
        inp = setup(tmp, cfg, n, args.quick)
        manifest = str(inp["manifest"])
        common = ["--backbone", str(inp["backbone"]), "--manifest", manifest, "--image-cache", str(inp["cache"]),
                  "--threads", str(args.threads)]

        def jobs(out: Path) -> list[list[str]]:
            checks = [["check-tasks", "--manifest", f"world={manifest}", "--wanted",
                       json.dumps({"experts.tasks": {"world": [t]}}), "--out", str(out / "tasks" / f"{t}.json")]
                      for t in inp["tasks"]]
            loras = [["train-lora", *common, "--task", t, "--out", str(out / "loras" / t), "--lora",
                      json.dumps(cfg["lora"]), "--training", json.dumps(training)] for t in inp["tasks"]]
            evaluate = [["evaluate", *common, "--tasks", ",".join(inp["tasks"]), "--method", "zero_shot",
                         "--device", "cpu", "--out", str(out / "metrics")]]
            return checks + loras + evaluate

        sides = {"fresh": (env, None), "warm": (env | {warm.WARM_ENV: path}, proc.pid)}
        count = len(jobs(tmp))
        cpu: dict[str, list[float]] = {s: [] for s in sides}
        wall: dict[str, list[float]] = {s: [] for s in sides}
        for r in range(rounds):
            for side in (sides if r % 2 == 0 else reversed(list(sides))):
                c, w = run(jobs(tmp / f"{side}{r}"), *sides[side])
                cpu[side].append(c / count)
                wall[side].append(w / count)
                print(f"round {r + 1}, {side}: {c / count:.2f} CPU-s and {w / count:.2f} s per job", flush=True)
        same = all(digest(tmp / f"fresh{r}") == digest(tmp / f"warm{r}") for r in range(rounds))
    finally:
        warm.stop(proc, path)
        shutil.rmtree(tmp, ignore_errors=True)

    a, b = C.median(cpu["fresh"]), C.median(cpu["warm"])
    note = f"{count} jobs ({n} check-tasks, {n} train-lora of {training['epochs']} epochs, 1 evaluate), " \
           f"{args.threads} thread(s), median of {rounds}"
    rep.add("CPU per job, each in its own process", a, "s", note=note)
    rep.add("CPU per job, forked from the warm server", b, "s", note=note)
    rep.add("wall per job, each in its own process", C.median(wall["fresh"]), "s")
    rep.add("wall per job, forked from the warm server", C.median(wall["warm"]), "s")
    rep.add("the server's imports, once per run", server_start, "s")
    rep.add("warm / own process, CPU per job", b / a, "x", "< 1", None if args.quick else b < a, headline=True,
            note="quick: tiny sizes" if args.quick else note)
    rep.add("warm outputs byte-identical to fresh processes'", float(same), "bool", "1", same)
    rep.write(C.out_dir(args), info)
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
