"""The open question of method.md, measured: how should a *training* snapshot's condition
be built? Trains one CVAE per mode on a finished run's repository and evaluates SG-LoRA's
samples on an evaluation group, side by side with Top-K LoRA Weighted (mu* alone).

    python benchmarks/cvae_condition.py [--results results/embedded] [--group in_dataset]

Modes: loo (aggregator over the other experts; our default), all (expert included),
self (the expert's own mu_n, var_n). Prints a Markdown table; writes
<results>/benchmarks/cvae_condition.csv.
"""

from __future__ import annotations

import csv
import sys
import time

import numpy as np



def main(argv=None) -> int:
    import torch
    from _analysis import finished_run

    from sglora.cvae import CVAESpec, train_cvae
    from sglora.embed import read_embeddings
    from sglora.evaluate import evaluate_vectors, load_task
    from sglora.generate import PriorSpec, sample_loras, task_seed
    from sglora.prior import semantic_prior, training_conditions

    torch.set_num_threads(2)
    run = finished_run(__doc__, argv, {"modes": "loo,all,self"})
    a, cfg, res, group, manifest = run.args, run.cfg, run.res, run.group, run.manifest
    repo, experts, model, processor = run.repo, run.experts, run.model, run.processor
    prior = PriorSpec.from_dict(cfg["prior"])
    keys = experts.embedding(prior.modality)
    tasks, vecs = [], []
    for t, v in repo.iter_snapshots():
        tasks += t
        vecs.append(v)
    x = np.concatenate(vecs)
    index = np.array([experts.tasks.index(t) for t in tasks])
    emb = read_embeddings(res / "tasks" / "embeddings.parquet", group["dataset"])
    data = {t: load_task(manifest, t, processor) for t in group["tasks"]}
    key = "text_embedding" if prior.modality == "textual" else "visual_embedding"
    n, seed = int(cfg["sampling"]["samples"]), int(cfg["sampling"]["seed"])
    rows = []
    topk = []
    for t in group["tasks"]:
        p = semantic_prior(emb[t][key], keys, experts.mu, experts.var, k=prior.k, tau=prior.tau)
        topk.append(evaluate_vectors(model, processor, data[t], p.mu[None], repo.layout, repo.lora.scaling)[0])
    rows.append({"method": "Top-K LoRA Weighted (mu*)", "i2t_r1": np.mean([m["i2t_r1"] for m in topk]),
                 "t2i_r1": np.mean([m["t2i_r1"] for m in topk]), "train_s": 0.0})
    for mode in a.modes.split(","):
        spec = CVAESpec.from_dict(dict(cfg["cvae"], condition=mode, device="cpu"))
        cm, cv = training_conditions(keys, experts.mu, experts.var, prior.k, prior.tau, mode)
        t0 = time.time()
        cvae, _ = train_cvae(x, index, cm, cv, spec, threads=2, progress=False)
        train_s = time.time() - t0
        per = []
        for t in group["tasks"]:
            v, _ = sample_loras(cvae, experts, emb[t][key], prior, n, task_seed(seed, t))
            per += evaluate_vectors(model, processor, data[t], v, repo.layout, repo.lora.scaling)
        rows.append({"method": f"SG-LoRA, condition={mode} (mean of {n})", "i2t_r1": np.mean([m["i2t_r1"] for m in per]),
                     "t2i_r1": np.mean([m["t2i_r1"] for m in per]), "train_s": train_s})
        print(f"{mode}: done", file=sys.stderr)
    out = res / "benchmarks" / "cvae_condition.csv"
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    print(f"| {a.group}: condition of a training snapshot | I2T R@1 | T2I R@1 | CVAE training (s) |")
    print("|---|---:|---:|---:|")
    for r in rows:
        print(f"| {r['method']} | {r['i2t_r1']:.2f} | {r['t2i_r1']:.2f} | {r['train_s']:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
