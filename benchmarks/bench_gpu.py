"""GPU throughput: expert training of a ViT-B/16-size CLIP and in-context captioning.

    python benchmarks/bench_gpu.py [--quick] [--device cuda]

Needs CUDA; without it, exits with code 3 (run_all.py lists it as skipped). Two figures,
the ones the presets' cost headers guess (docs/cluster.md: "~500 image-caption
pairs per second", "~1.5 images per second" for Qwen2-VL-7B):

- expert training: image-caption pairs per second of `sglora.experts.training.train_lora` (the
  real loop: images streamed from the uint8 cache, normalised on the GPU, bf16 autocast)
  on a random CLIP of ViT-B/16 size (patch 16, 224 px, 12 layers, width 768) with the
  paper's LoRA (rank 2 on q, k, v of both towers), batch 32; steps after the first 5
  timed (CUDA synchronised), from 320 x 240 JPEGs;
- captioning: images per second of `sglora.data.captioning.caption_manifest` (qwen2vl
  backend, batch 8, 4 captions an image) with the tiny random Qwen2-VL of
  tests/tiny_qwen.py: the pipeline's own cost around the model, not Qwen2-VL-7B's.

Peak GPU memory is reported with each. --quick: fewer images and steps, 2 layers per tower.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import _common as C


def main(argv=None) -> int:
    ap = C.parser(__doc__)
    ap.add_argument("--device", default="cuda", help="CUDA device (cpu: only to smoke-test this script)")
    args = ap.parse_args(argv)
    import torch

    cuda = args.device.startswith("cuda")
    if cuda and not torch.cuda.is_available():
        print("bench_gpu: no CUDA device -- this benchmark needs a GPU", file=sys.stderr)
        return C.MISSING_INPUTS
    from bench_images import vitb_clip, write_images, write_task_manifest

    import sglora.experts.training as E
    from sglora.backbone.clip import load_clip
    from sglora.data.captioning import caption_manifest
    from sglora.data.images import build_cache
    from sglora.experts.lora import LoraSpec

    sys.path.insert(0, str(C.ROOT / "tests"))  # the tiny Qwen2-VL is a test builder
    from tiny_qwen import save_tiny_qwen2vl  # noqa: PLC0415

    info = C.machine(args.threads)
    rep = C.Report("gpu", quick=args.quick)
    C.print_machine("bench_gpu: expert training and captioning throughput on the GPU", info, args.quick)
    n_img = 128 if args.quick else 1024
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        paths = write_images(tmp / "jpg", n_img + 8)
        write_task_manifest(tmp / "manifest.parquet", {"task": paths[8:]}, paths[:8])
        backbone = vitb_clip(tmp / "vitb", [f"a task photo number {k}" for k in range(5)], quick=args.quick)
        _, processor = load_clip(backbone)
        build_cache(paths, processor, tmp / "cache", workers=max(args.threads, 2))

        # --- expert training: time each step after a warm-up ---
        stamps: list[float] = []
        real_step = E.optimizer_step

        def step(*a, **k):
            real_step(*a, **k)
            if cuda:
                torch.cuda.synchronize()
            stamps.append(time.perf_counter())

        E.optimizer_step = step
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        epochs = 1 if args.quick else 2
        train = E.TrainSpec.from_dict({"epochs": epochs, "snapshots": 1, "batch_size": 32, "lr": 1e-3,
                                       "device": args.device, "bf16": True})
        try:
            E.train_lora(backbone, tmp / "manifest.parquet", "task", tmp / "lora", LoraSpec(), train,
                         threads=args.threads, progress=False, cache=tmp / "cache")
        finally:
            E.optimizer_step = real_step
        warm = min(5, len(stamps) // 2)
        pps = 32 * (len(stamps) - 1 - warm) / (stamps[-1] - stamps[warm])
        label = "ViT-B/16-size CLIP" if not args.quick else "ViT-B/16 widths, 2 layers/tower"
        rep.add(f"expert training, {label}, 224 px, {'bf16' if cuda else 'CPU smoke test'}", pps, "pairs/s", headline=True,
                note=f"batch 32, {len(stamps)} steps ({warm} warm-up), {args.threads} DataLoader worker(s)")
        if cuda:
            rep.add("peak GPU memory, expert training", torch.cuda.max_memory_allocated() / 2**30, "GB")

        # --- captioning with the tiny Qwen2-VL ---
        qwen = str(save_tiny_qwen2vl(tmp / "qwen"))
        n_cap = 16 if args.quick else 128
        write_task_manifest(tmp / "cap.parquet", {"cat": paths[8 : 8 + n_cap]}, paths[:1])
        demos = [dict(image=paths[0], class_name="pug", caption="The pug has a fawn coat."),
                 dict(image=paths[1], class_name="birman", caption="The Birman has blue eyes.")]
        opts = dict(model=qwen, demonstrations=demos, batch_size=8, captions_per_image=4, splits=["train"],
                    device=args.device, min_words=1, max_repeat_fraction=1.0, min_new_tokens=8, max_new_tokens=24,
                    progress=False)
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        caption_manifest(tmp / "cap.parquet", tmp / "warm.parquet", "qwen2vl", tmp / "warm_shards",
                         **dict(opts, seed=1))  # warm-up (CUDA kernels, model load)
        t, _ = C.timed(caption_manifest, tmp / "cap.parquet", tmp / "cap_out.parquet", "qwen2vl", tmp / "shards",
                       **opts)
        rep.add("captioning, tiny Qwen2-VL", n_cap / t, "images/s", headline=True,
                note=f"{n_cap} images, batch 8, 4 captions each, <= 24 new tokens; model load included")
        if cuda:
            rep.add("peak GPU memory, captioning", torch.cuda.max_memory_allocated() / 2**30, "GB")
    rep.write(C.out_dir(args), info)
    return 0


if __name__ == "__main__":
    sys.exit(main())
