"""Evaluation speed: encoding images with a LoRA merged into the weights vs the bare backbone.

    python benchmarks/bench_eval.py [--quick] [--results results/embedded]

sglora.evaluation.scoring merges each LoRA into the backbone's weights (W += s * B @ A, the context
manager sglora.experts.lora.merged) before encoding, so a LoRA should cost nothing at inference.
Measured as images per second of `sglora.backbone.clip.encode_images`, three sides interleaved
(A B C, C B A, ...), medians:

- bare: the backbone alone;
- merged: the same model inside `merged(...)` (target: >= 0.9x the bare backbone);
- PEFT, unmerged (for context): `peft.get_peft_model` + `set_peft_model_state_dict`, the
  LoRA computed on the side in every forward pass.

The one-off cost of merging and restoring the weights is reported apart. Two backbones:
the embedded run's CLIP (results/embedded/backbone, one unseen task's test images, its
Oracle LoRA) and a randomly initialised CLIP of ViT-B/16 size (transformers CLIPConfig
defaults, patch 16, image 224; random weights, pixels and LoRA: speed only). The merged
and the PEFT model are checked to give the same features.

Then one whole evaluation job of the finished run (`sglora evaluate`, the group's SG-LoRA
candidates, every sample), as the workflow runs it, in subprocesses with the CLI's
allocator tuning (`sglora.devices.tune_allocator`) on and off (`SGLORA_MALLOC=0`),
interleaved: wall time and the job's user + system CPU time (target: tuned <= 0.95x).
--quick: fewer rounds, and 2 layers per tower and one image per pass for the ViT-B/16-size CLIP;
the evaluation job on 2 tasks, one round.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import yaml

import _common as C


def bench_backbone(rep, label, model, pixels, vector, layout, lora, rounds, passes, quick):
    import torch
    from peft import get_peft_model, set_peft_model_state_dict

    from sglora.backbone.clip import encode_images
    from sglora.experts.lora import merged

    peft_model = get_peft_model(copy.deepcopy(model), lora.peft_config())
    set_peft_model_state_dict(peft_model, layout.to_state(vector))
    peft_model.eval()
    peft_clip = peft_model.base_model.model  # the CLIPModel with LoRA layers injected

    def encode(m):
        for _ in range(passes):
            feats = encode_images(m, pixels)
        return feats

    def bare():
        return encode(model)

    def with_merged():
        with merged(model, vector, layout, lora.scaling):
            t, out = C.timed(encode, model)
        return t

    # merged: time only the encoding inside the context; merging is measured apart
    names = ["bare", "merged", "peft"]
    times = {n: [] for n in names}
    bare()
    with_merged()
    encode(peft_clip)  # warm-up
    for r in range(rounds):
        for n in (names if r % 2 == 0 else names[::-1]):
            if n == "bare":
                times[n].append(C.timed(bare)[0])
            elif n == "merged":
                times[n].append(with_merged())
            else:
                times[n].append(C.timed(encode, peft_clip)[0])

    def merge_only():
        with merged(model, vector, layout, lora.scaling):
            pass

    t_merge = C.median([C.timed(merge_only)[0] for _ in range(5)])
    with merged(model, vector, layout, lora.scaling):
        f_merged = encode_images(model, pixels)
    f_peft = encode_images(peft_clip, pixels)
    diff = float((f_merged - f_peft).abs().max())
    f_bare = encode_images(model, pixels)
    moved = float((f_merged - f_bare).abs().max())

    n_img = len(pixels) * passes
    ips = {n: n_img / C.median(times[n]) for n in names}
    rel = ips["merged"] / ips["bare"]
    shape = tuple((pixels if isinstance(pixels, torch.Tensor) else next(iter(pixels.on("cpu")))).shape[1:])
    note = f"median of {rounds}; {len(pixels)} image(s) x {passes} pass(es) of {shape}"
    rep.add(f"{label}: bare backbone", ips["bare"], "images/s", note=note)
    rep.add(f"{label}: LoRA merged", ips["merged"], "images/s", note=note)
    rep.add(f"{label}: PEFT, unmerged (context)", ips["peft"], "images/s", note=note)
    rep.add(f"{label}: merged / bare", rel, "x", ">= 0.9", None if quick else rel >= 0.9, headline=True,
            note="quick: too few images to judge" if quick else "interleaved A B C, C B A")
    rep.add(f"{label}: PEFT unmerged / bare", ips["peft"] / ips["bare"], "x", note="context")
    rep.add(f"{label}: merge + restore the weights, once per LoRA", t_merge * 1e3, "ms", note="median of 5")
    rep.add(f"{label}: max abs difference of merged vs PEFT features", diff, "",
            note=f"sanity check (the LoRA itself moves features by up to {moved:.3g})")
    print(f"{label}: bare {ips['bare']:.1f} img/s, merged {ips['merged']:.1f}, PEFT {ips['peft']:.1f}; "
          f"merged/bare {rel:.3f}; merge {t_merge * 1e3:.1f} ms; |merged-PEFT| {diff:.2e}", flush=True)
    del peft_model, peft_clip
    torch.cuda.empty_cache() if torch.cuda.is_available() else None


def bench_allocator(rep, res: Path, cfg: dict, group_name: str, threads: int, rounds: int, tasks: int,
                    quick: bool) -> None:
    """One `sglora evaluate` job of the run, SGLORA_MALLOC=1 vs 0, interleaved."""
    import json
    import os
    import resource
    import shutil
    import subprocess
    import tempfile

    group = cfg["groups"][group_name]
    candidates = res / "candidates" / group_name / "sglora.safetensors"
    if not candidates.exists():
        rep.note(f"evaluation job with and without the allocator tuning: skipped ({candidates} not found)")
        return
    out = Path(tempfile.mkdtemp(prefix="bench_eval_"))
    cmd = [sys.executable, "-m", "sglora", "evaluate", "--backbone", str(res / "backbone"),
           "--manifest", str(res / "data" / group["dataset"] / "manifest.parquet"),
           "--tasks", ",".join(group["tasks"][:tasks]), "--method", "sglora", "--group", group_name,
           "--candidates", str(candidates), "--lora", json.dumps(cfg["lora"]),
           "--image-cache", str(res / "data" / group["dataset"] / "image_cache"),
           "--gallery", str(cfg.get("evaluation", {}).get("gallery", 0)), "--device", "cpu",
           "--threads", str(threads), "--out", str(out)]
    cpu_times = {"1": [], "0": []}  # user + system seconds of each job, by SGLORA_MALLOC

    def job(tuned: str):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        subprocess.run(cmd, env={**os.environ, "SGLORA_MALLOC": tuned}, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu_times[tuned].append((after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime))

    try:
        walls = C.interleaved({"1": lambda: job("1"), "0": lambda: job("0")}, rounds, warmup=0)
    finally:
        shutil.rmtree(out, ignore_errors=True)
    wall = {k: C.median(v) for k, v in walls.items()}
    cpu = {k: C.median(v) for k, v in cpu_times.items()}
    rel = cpu["1"] / cpu["0"]
    note = f"`sglora evaluate` of {group_name}/sglora on {tasks} task(s), median of {rounds}, interleaved"
    rep.add("evaluation job: wall time, allocator tuned", wall["1"], "s", note=note)
    rep.add("evaluation job: wall time, SGLORA_MALLOC=0", wall["0"], "s", note=note)
    rep.add("evaluation job: CPU time, tuned / SGLORA_MALLOC=0", rel, "x", "<= 0.95", None if quick else rel <= 0.95,
            headline=True, note=f"user + system: {cpu['1']:.1f} s vs {cpu['0']:.1f} s")
    print(f"evaluation job: wall {wall['1']:.1f} s tuned vs {wall['0']:.1f} s untuned; CPU {cpu['1']:.1f} vs "
          f"{cpu['0']:.1f} s ({rel:.2f}x)", flush=True)


def main(argv=None) -> int:
    ap = C.parser(__doc__)
    ap.add_argument("--results", default=str(C.ROOT / "results" / "embedded"))
    ap.add_argument("--config", default=str(C.ROOT / "config.yaml"))
    ap.add_argument("--group", default="in_dataset")
    ap.add_argument("--vitb-images", type=int, default=0, help="ViT-B/16 images per pass (default 8; 1 with --quick)")
    args = ap.parse_args(argv)

    cfg = yaml.safe_load(Path(args.config).read_text())
    res = Path(args.results)
    group = cfg["groups"][args.group]
    task = group["tasks"][0]
    manifest = res / "data" / group["dataset"] / "manifest.parquet"
    oracle_dir = res / "loras" / group["dataset"] / task
    C.require([res / "backbone", manifest, oracle_dir / "snapshots.safetensors"], "bench_eval")

    import numpy as np
    import torch
    from transformers import CLIPConfig, CLIPModel

    from sglora.backbone.clip import load_clip
    from sglora.evaluation.scoring import load_task
    from sglora.experts.training import read_snapshots
    from sglora.experts.lora import Layout, LoraSpec, add_lora

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    info = C.machine(args.threads)
    rep = C.Report("eval", quick=args.quick)
    C.print_machine("bench_eval: encoding with a merged LoRA vs the bare backbone", info, args.quick)
    lora = LoraSpec.from_dict(cfg["lora"])

    # 1. the embedded backbone, one unseen task's test images, its Oracle LoRA
    model, processor = load_clip(str(res / "backbone"))
    data = load_task(manifest, task, processor)
    snaps, layout = read_snapshots(oracle_dir)
    bench_backbone(rep, "embedded CLIP", model, data.pixels, snaps[-1], layout, lora,
                   rounds=3 if args.quick else 7, passes=2 if args.quick else 10, quick=args.quick)
    del model

    # 2. a random CLIP of ViT-B/16 size
    n_img = args.vitb_images or (1 if args.quick else 8)
    # --quick keeps ViT-B/16's widths and image size but only 2 layers per tower
    layers = {"num_hidden_layers": 2} if args.quick else {}
    config = CLIPConfig(vision_config={"patch_size": 16, "image_size": 224, **layers}, text_config=layers)
    with torch.no_grad():
        t_init, vitb = C.timed(CLIPModel, config)
    vitb.eval()
    layout = Layout.of(add_lora(copy.deepcopy(vitb), lora))
    vector = (np.random.default_rng(0).standard_normal(layout.dim) * 0.02).astype(np.float32)
    pixels = torch.randn(n_img, 3, 224, 224)
    n_params = sum(p.numel() for p in vitb.parameters())
    rep.note(f"{'ViT-B/16-size' if not args.quick else '2-layer ViT-B/16-width'} CLIP: {n_params / 1e6:.0f}M parameters, random init in {t_init:.1f} s; "
             f"LoRA D = {layout.dim:,}; embedded task: {task} ({len(data.pixels)} test images)")
    label = "ViT-B/16 CLIP (random)" if not args.quick else "ViT-B/16 widths, 2 layers/tower (random)"
    bench_backbone(rep, label, vitb, pixels, vector, layout, lora,
                   rounds=2 if args.quick else 3, passes=1, quick=args.quick)
    del vitb

    # 3. one evaluation job of the run, with and without the CLI's allocator tuning
    bench_allocator(rep, res, cfg, args.group, args.threads, rounds=1 if args.quick else 3,
                    tasks=2 if args.quick else len(group["tasks"]), quick=args.quick)
    rep.write(C.out_dir(args), info)
    return 0


if __name__ == "__main__":
    sys.exit(main())
