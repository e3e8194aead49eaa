"""SG-LoRA generation vs Oracle training: the time to get the LoRA of an unseen task.

    python benchmarks/bench_generation.py [--quick] [--tasks a,b] [--results results/embedded]

Side A (SG-LoRA): encode the task description with the backbone's text encoder, the
semantic prior (top-K experts, alpha, mu*, var*), one CVAE sample, and writing the PEFT
adapter folder. The backbone, the CVAE and the repository's expert table are already
loaded (their one-off load times are reported apart).

Side B (Oracle): `sglora.experts.training.train_lora` on the task's own training pairs with
config.yaml's `training:` and `lora:` settings, on the same backbone, writing its output
folder (snapshots + adapter). The backbone load is excluded: train_lora is handed an
already loaded copy. Reading and preprocessing the task's training images is included
(training needs them; generation does not).

The sides are interleaved per task (generate x k, train, generate x k); medians are
reported. Then each LoRA (the generated one and the freshly trained Oracle) is evaluated
on the task's test split with sglora.evaluation.scoring (I2T / T2I R@1, merged into the weights).
Needs a finished run of the embedded default in results/embedded (`make run`).
--quick: one task, the Oracle trained for 2 epochs (the ratio then understates the real one).
"""

from __future__ import annotations

import copy
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import yaml

import _common as C


def main(argv=None) -> int:
    ap = C.parser(__doc__)
    ap.add_argument("--results", default=str(C.ROOT / "results" / "embedded"), help="a finished run of the embedded default")
    ap.add_argument("--config", default=str(C.ROOT / "config.yaml"))
    ap.add_argument("--group", default="in_dataset", help="evaluation group whose unseen tasks are used")
    ap.add_argument("--tasks", default="", help="comma-separated tasks (default: 3 tasks of different families; 1 with --quick)")
    ap.add_argument("--repeats", type=int, default=0, help="generations timed before and after each training (default 5; 3 with --quick)")
    args = ap.parse_args(argv)

    cfg = yaml.safe_load(Path(args.config).read_text())
    res = Path(args.results)
    group = cfg["groups"][args.group]
    dataset = group["dataset"]
    manifest = res / "data" / dataset / "manifest.parquet"
    C.require([res / "backbone", res / "repository" / "experts.parquet", res / "cvae" / "selected" / "model.safetensors",
               res / "tasks" / "embeddings.parquet", manifest], "bench_generation")

    import numpy as np
    import torch

    import sglora.experts.training as expert_mod
    from sglora.backbone.clip import encode_texts, load_clip
    from sglora.backbone.contrastive import seed_everything
    from sglora.generator.cvae import load_cvae
    from sglora.backbone.embed import read_embeddings
    from sglora.evaluation.scoring import evaluate_vectors, load_task
    from sglora.experts.training import TrainSpec, read_snapshots, train_lora
    from sglora.generator.sampling import sample_loras, task_seed
    from sglora.generator.settings import PriorSpec
    from sglora.experts.lora import LoraSpec, save_adapter
    from sglora.experts.repository import Repository

    if args.tasks:
        tasks = args.tasks.split(",")
    else:
        # one task per family (members come in pairs in the default group), quick: the first
        tasks = group["tasks"][::2][: 1 if args.quick else 3]
    unknown = [t for t in tasks if t not in group["tasks"]]
    if unknown:
        print(f"bench_generation: {unknown} not in groups.{args.group}.tasks of {args.config}", file=sys.stderr)
        return 2
    repeats = args.repeats or (3 if args.quick else 5)
    lora = LoraSpec.from_dict(cfg["lora"])
    train = TrainSpec.from_dict(cfg["training"])
    if args.quick:
        train = TrainSpec.from_dict({**cfg["training"], "epochs": 2, "snapshots": 1})
    seed_everything(0, args.threads)  # what train_lora sets; both sides run under it
    info = C.machine(args.threads)
    rep = C.Report("generation", quick=args.quick)
    C.print_machine("bench_generation: SG-LoRA generation vs Oracle training", info, args.quick)

    backbone = str(res / "backbone")
    t_backbone, (model, processor) = C.timed(load_clip, backbone)
    t_cvae, (cvae, cvae_cfg) = C.timed(load_cvae, res / "cvae" / "selected")
    t_repo, repo = C.timed(Repository, res / "repository")
    t_experts, experts = C.timed(repo.experts)
    prior = PriorSpec.from_dict(cvae_cfg.get("prior") or cfg["prior"])
    emb = read_embeddings(res / "tasks" / "embeddings.parquet", dataset)
    seed = int(cfg.get("sampling", {}).get("seed", 0))
    scaling = lora.scaling

    real_load_clip = expert_mod.load_clip
    tmp = Path(tempfile.mkdtemp(prefix="sglora-bench-gen-"))
    gen_times, train_times, ratios, r1 = [], [], [], {"zero_shot": [], "sglora": [], "oracle": []}
    steps: list[tuple[float, float, float]] = []  # (encode, prior + sample, write) of every generation
    try:
        for task in tasks:
            desc = emb[task]["description"]
            s = task_seed(seed, task)

            def generate(task=task, desc=desc, s=s):
                t0 = time.perf_counter()
                query = encode_texts(model, processor, [desc]).numpy()[0]
                t1 = time.perf_counter()
                vec, p = sample_loras(cvae, experts, query, prior, 1, s)
                t2 = time.perf_counter()
                save_adapter(tmp / "sglora" / task, vec[0], repo.layout, repo.lora, backbone,
                             {"task": task, "description": desc, "seed": s, "kind": "sglora"})
                steps.append((t1 - t0, t2 - t1, time.perf_counter() - t2))
                return vec

            fresh = copy.deepcopy(model)  # the backbone train_lora gets, loaded before the clock starts
            expert_mod.load_clip = lambda *a, **k: (fresh, processor)  # noqa: E731

            def oracle(task=task):
                return train_lora(backbone, manifest, task, tmp / "oracle" / task, lora, train,
                                  threads=args.threads, progress=False)

            vec = generate()  # warm-up (first call pays one-off allocations)
            del steps[-1]
            g_before = [C.timed(generate)[0] for _ in range(repeats)]
            t_train, _ = C.timed(oracle)
            expert_mod.load_clip = real_load_clip
            g_after = [C.timed(generate)[0] for _ in range(repeats)]
            g = g_before + g_after
            gen_times += g
            train_times.append(t_train)
            ratios.append(t_train / C.median(g))
            print(f"{task}: generate median {C.median(g) * 1e3:.1f} ms (n={len(g)}), Oracle training {t_train:.1f} s, "
                  f"ratio {ratios[-1]:,.0f}x", flush=True)

            data = load_task(manifest, task, processor)
            oracle_vec, _ = read_snapshots(tmp / "oracle" / task)
            zs = evaluate_vectors(model, processor, data, None, None, scaling)[0]
            sg = evaluate_vectors(model, processor, data, vec, repo.layout, scaling)[0]
            orc = evaluate_vectors(model, processor, data, oracle_vec[-1:], repo.layout, scaling)[0]
            for k, m in (("zero_shot", zs), ("sglora", sg), ("oracle", orc)):
                r1[k].append((m["i2t_r1"], m["t2i_r1"]))
            print(f"{task}: R@1 I2T/T2I zero-shot {zs['i2t_r1']:.1f}/{zs['t2i_r1']:.1f}, "
                  f"SG-LoRA {sg['i2t_r1']:.1f}/{sg['t2i_r1']:.1f}, Oracle {orc['i2t_r1']:.1f}/{orc['t2i_r1']:.1f}", flush=True)
    finally:
        expert_mod.load_clip = real_load_clip
        shutil.rmtree(tmp, ignore_errors=True)

    ratio = C.median(ratios)
    epochs_note = f"Oracle: {train.epochs} epochs, batch {train.batch_size}, lr {train.lr}, {args.threads} thread(s)"
    rep.add("SG-LoRA generation (encode + prior + CVAE sample + write adapter)", C.median(gen_times) * 1e3, "ms",
            note=f"median of {len(gen_times)}; models already loaded")
    rep.add("Oracle LoRA training (train_lora)", C.median(train_times), "s",
            note=f"median of {len(train_times)} task(s); {epochs_note}; backbone load excluded, image loading included")
    for i, part in enumerate(("encode the description", "semantic prior + CVAE sample", "write the PEFT adapter folder")):
        rep.add(f"  of which: {part}", C.median([st[i] for st in steps]) * 1e3, "ms", note="median")
    met = None if args.quick else ratio >= 1000
    rep.add("speed-up of generation over Oracle training", ratio, "x", ">= 1000", met,
            note=("quick: Oracle trained 2 epochs only, so this understates the ratio" if args.quick
                  else f"median over tasks {','.join(tasks)}"), headline=True)
    for name, label in (("zero_shot", "Zero-Shot"), ("sglora", "SG-LoRA (1 sample)"), ("oracle", "Oracle (fresh)")):
        arr = np.array(r1[name])
        rep.add(f"R@1 I2T {label}", float(arr[:, 0].mean()), "%", note=f"mean over {len(tasks)} task(s)")
        rep.add(f"R@1 T2I {label}", float(arr[:, 1].mean()), "%", note=f"mean over {len(tasks)} task(s)")
    rep.add("one-off: load backbone", t_backbone, "s", note="excluded from both sides")
    rep.add("one-off: load CVAE", t_cvae, "s", note="excluded (models already loaded)")
    rep.add("one-off: open repository + expert table", t_repo + t_experts, "s", note="excluded (models already loaded)")
    rep.note(f"tasks: {', '.join(tasks)} (groups.{args.group}, dataset {dataset}); "
             f"prior k={prior.k}, tau={prior.tau}; torch threads {torch.get_num_threads()}")
    rep.write(C.out_dir(args), info)
    print(json.dumps({"ratio": ratio}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
