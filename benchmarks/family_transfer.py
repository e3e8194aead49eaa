"""The embedded benchmark's premise, measured: does an expert help its own family more?

Evaluates every expert LoRA (mean snapshot) of a finished run on every unseen in-dataset
task and compares, for each unseen task, experts of its own family against experts of
other families, and both against the Zero-Shot backbone and the task's Oracle.

    python benchmarks/family_transfer.py [--results results/embedded] [--group in_dataset]

Prints a Markdown table and writes results/<run>/benchmarks/family_transfer.csv.
"""

from __future__ import annotations

import csv
import sys

import numpy as np



def main(argv=None) -> int:
    from _analysis import finished_run

    from sglora.evaluation.scoring import evaluate_vectors, load_task
    from sglora.experts.training import read_snapshots
    from sglora.data.world import family_of

    run = finished_run(__doc__, argv)
    a, res, group, manifest = run.args, run.res, run.group, run.manifest
    repo, experts, model, processor = run.repo, run.experts, run.model, run.processor
    rows = []
    for t_i, task in enumerate(group["tasks"]):
        data = load_task(manifest, task, processor)
        fam = family_of(task.replace("_", " "))
        zs = evaluate_vectors(model, processor, data, None, None, 1.0)[0]
        oracle_vec, _ = read_snapshots(res / "loras" / group["dataset"] / task)
        oracle = evaluate_vectors(model, processor, data, oracle_vec[-1:], repo.layout, repo.lora.scaling)[0]
        per = evaluate_vectors(model, processor, data, experts.mu, repo.layout, repo.lora.scaling)
        for e, m in zip(experts.names, per):
            rows.append({"task": task, "expert": e, "same_family": family_of(e) == fam,
                         "i2t_r1": m["i2t_r1"], "t2i_r1": m["t2i_r1"],
                         "zero_shot_i2t_r1": zs["i2t_r1"], "zero_shot_t2i_r1": zs["t2i_r1"],
                         "oracle_i2t_r1": oracle["i2t_r1"], "oracle_t2i_r1": oracle["t2i_r1"]})
        print(f"[{t_i + 1}/{len(group['tasks'])}] {task}", file=sys.stderr)
    out = res / "benchmarks" / "family_transfer.csv"
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)

    def mean(key, pred):
        return float(np.mean([r[key] for r in rows if pred(r)]))

    tasks = {r["task"]: r for r in rows}
    zs_i = float(np.mean([r["zero_shot_i2t_r1"] for r in tasks.values()]))
    zs_t = float(np.mean([r["zero_shot_t2i_r1"] for r in tasks.values()]))
    or_i = float(np.mean([r["oracle_i2t_r1"] for r in tasks.values()]))
    or_t = float(np.mean([r["oracle_t2i_r1"] for r in tasks.values()]))
    same_i, same_t = mean("i2t_r1", lambda r: r["same_family"]), mean("t2i_r1", lambda r: r["same_family"])
    other_i, other_t = mean("i2t_r1", lambda r: not r["same_family"]), mean("t2i_r1", lambda r: not r["same_family"])
    wins = sum(
        np.mean([r["i2t_r1"] + r["t2i_r1"] for r in rows if r["task"] == t and r["same_family"]])
        > np.mean([r["i2t_r1"] + r["t2i_r1"] for r in rows if r["task"] == t and not r["same_family"]])
        for t in tasks)
    print(f"| {a.group} ({len(tasks)} unseen tasks) | I2T R@1 | T2I R@1 |")
    print("|---|---:|---:|")
    print(f"| Zero-Shot backbone | {zs_i:.2f} | {zs_t:.2f} |")
    print(f"| expert of the same family (mean) | {same_i:.2f} | {same_t:.2f} |")
    print(f"| expert of another family (mean) | {other_i:.2f} | {other_t:.2f} |")
    print(f"| Oracle (trained on the task) | {or_i:.2f} | {or_t:.2f} |")
    print(f"\nsame-family minus other-family: I2T {same_i - other_i:+.2f}, T2I {same_t - other_t:+.2f}; "
          f"same family better on {wins}/{len(tasks)} tasks; Oracle minus Zero-Shot: I2T {or_i - zs_i:+.2f}, "
          f"T2I {or_t - zs_t:+.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
