"""Images streamed from the uint8 cache (sglora/data/images.py): memory, cache build, training speed.

    python benchmarks/bench_images.py [--quick] [--threads N] [--baseline REV]

Three measurements, each side by side in this one run:

1. Memory. Expert training (`sglora.experts.training.train_lora`, from the cache) of a random CLIP
   of ViT-B/16 size (patch 16, 224 px, 12 layers, width 768 in both towers) on a
   generated task of 20,000 images and on one of 2,000 (5 captions each), each in its own
   process, stopped after a handful of steps. Growth = the highest RSS (sampled every 20
   ms) minus the RSS when the task's data start loading (model and LoRA already built).
   Targets: growth at 20,000 <= 1.5 GB and <= 1.2x the growth at 2,000. For context the
   previous code (--baseline revision: every image decoded into one float32 tensor) at
   2,000 images, and the same streamed run on 64 images: batch 4's training activations
   count in RSS on the CPU (on a GPU they would not), so that run shows the fixed cost
   and the difference the part that grows with the task.
2. Cache build. `sglora.data.images.build_cache` (decode + the backbone processor's resize
   and center crop + write) vs a plain PIL loop (open, convert RGB, resize the short side
   to 224 bicubic, center crop, np.asarray) over the same 240 x 320 JPEGs, both with
   --threads processes, interleaved, medians of process CPU time (children included;
   wall time reported too). Target >= 0.8x. The full 20,000-image build is timed once.
3. Training speed at the embedded default's size (config.yaml: 48 px world images,
   150 training images a task, the embedded CLIP's sizes, batch 32): `train_lora` from
   the cache vs the --baseline revision's `train_lora` (decode the task into float32,
   index it per batch), each in its own process, interleaved, the train_lora call's
   process CPU time (wall time reported too; on a shared machine it mostly measures the
   other processes), cache built beforehand (once per dataset, reported apart).
   Target >= 0.95x.

--quick: 200 vs 2,000 images, 2 layers per tower, fewer rounds (no verdicts).
--baseline: the git revision with the previous image loading (default: the parent of
the commit that added sglora/data/images.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _common as C

TRAIN_SNIPPET = r"""
import json, sys, threading, time
import psutil
args = json.loads(sys.argv[1])
import torch
import sglora.experts.training as E
from sglora.experts.lora import LoraSpec

proc, state = psutil.Process(), {"base": None, "peak": 0.0, "steps": 0}

def sample():
    while True:
        state["peak"] = max(state["peak"], proc.memory_info().rss)
        time.sleep(0.02)

real_pairs, real_step = E.task_pairs, E.optimizer_step
def task_pairs(*a, **k):  # called after the model and the LoRA are built, before any data
    state["base"] = proc.memory_info().rss
    state["peak"] = state["base"]
    threading.Thread(target=sample, daemon=True).start()
    return real_pairs(*a, **k)

class Enough(Exception):
    pass

def optimizer_step(*a, **k):
    real_step(*a, **k)
    state["steps"] += 1
    if args["steps"] and state["steps"] >= args["steps"]:
        state["peak"] = max(state["peak"], proc.memory_info().rss)
        raise Enough

E.task_pairs, E.optimizer_step = task_pairs, optimizer_step
kw = {"cache": args["cache"]} if args.get("cache") else {}
t, cpu = time.perf_counter(), time.process_time()
try:
    E.train_lora(args["backbone"], args["manifest"], args["task"], args["out"], LoraSpec(),
                 E.TrainSpec.from_dict(args["training"]), threads=args["threads"], progress=False, **kw)
except Enough:
    pass
dt, dcpu = time.perf_counter() - t, time.process_time() - cpu
print(json.dumps({"seconds": dt, "cpu_seconds": dcpu, "steps": state["steps"], "base_mb": state["base"] / 2**20,
                  "growth_mb": (state["peak"] - state["base"]) / 2**20}))
"""


def run_training(pythonpath: str, **args) -> dict:
    env = {**os.environ, "PYTHONPATH": pythonpath, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run([sys.executable, "-c", TRAIN_SNIPPET, json.dumps(args)], env=env, capture_output=True,
                          text=True)
    if proc.returncode:
        raise RuntimeError(proc.stderr[-3000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def baseline_tree(rev: str | None, dest: Path) -> tuple[str, str]:
    """The previous code (``sglora/`` at ``rev``) unpacked into ``dest``; (path, rev)."""
    git = ["git", "-C", str(C.ROOT)]
    if not rev:
        added = subprocess.run(git + ["log", "--follow", "--diff-filter=A", "--format=%H", "--", "sglora/data/images.py"],
                               capture_output=True, text=True, check=True).stdout.split()
        rev = f"{added[-1]}^"
    rev = subprocess.run(git + ["rev-parse", "--short", rev], capture_output=True, text=True, check=True).stdout.strip()
    dest.mkdir(parents=True)
    archive = subprocess.run(git + ["archive", rev, "sglora"], capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    return str(dest), rev


def write_images(folder: Path, n: int, size=(320, 240), seed: int = 0) -> list[str]:
    """``n`` JPEGs of ``size`` (w, h): coloured blocks plus noise (varied, cheap)."""
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    w, h = size
    for i in range(n):
        base = rng.integers(0, 256, (h // 16, w // 16, 3), dtype=np.uint8).repeat(16, 0).repeat(16, 1)
        img = np.clip(base.astype(np.int16) + rng.integers(-20, 21, (h, w, 3)), 0, 255).astype(np.uint8)
        path = folder / f"{i:06d}.jpg"
        Image.fromarray(img).save(path, quality=90)
        paths.append(str(path))
    return paths


def write_task_manifest(path: Path, tasks: dict[str, list[str]], test: list[str]) -> None:
    from sglora.data.manifest import make_manifest, write_manifest

    rows = []
    for task, paths in tasks.items():
        for split, files in (("train", paths), ("test", test)):
            for p in files:
                rows.append(dict(dataset="bench", task=task, task_name=task, class_name=task,
                                 description=f"a photo of a {task}", image_path=p, split=split,
                                 captions=[f"a {task} photo number {k} of {Path(p).stem}" for k in range(5)]))
    write_manifest(path, make_manifest(rows))


def cpu_seconds() -> float:
    """CPU time of this process and its reaped children (worker processes)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def plain_resize(path: str, size: int = 224):
    import numpy as np
    from PIL import Image

    with Image.open(path) as im:
        im = im.convert("RGB")
        w, h = im.size
        scale = size / min(w, h)
        im = im.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.BICUBIC)
        left, top = (im.width - size) // 2, (im.height - size) // 2
        return np.asarray(im.crop((left, top, left + size, top + size)))


def plain_loop(paths: list[str], workers: int) -> int:
    if workers > 1:
        import multiprocessing as mp

        with mp.get_context("fork").Pool(workers) as pool:
            return sum(a.size > 0 for a in pool.imap(plain_resize, paths, chunksize=32))
    return sum(plain_resize(p).size > 0 for p in paths)


def vitb_clip(folder: Path, texts: list[str], quick: bool) -> str:
    from sglora.backbone.tiny import build_clip, clip_processor, clip_tokenizer

    tokenizer = clip_tokenizer(texts, vocab_size=512, max_length=77)
    model = build_clip(tokenizer, image_size=224, patch_size=16, hidden_size=768, layers=2 if quick else 12,
                       heads=12, projection_dim=512, max_text_length=77)
    clip_processor(tokenizer, 224).save_pretrained(folder)
    model.save_pretrained(folder)
    return str(folder)


def main(argv=None) -> int:
    ap = C.parser(__doc__)
    ap.add_argument("--baseline", default=None, help="git revision of the previous image loading")
    ap.add_argument("--tmp", default=None, help="scratch folder (default: the system temp dir); needs ~3.5 GB")
    args = ap.parse_args(argv)
    import numpy as np
    import yaml

    from sglora.backbone.clip import load_clip
    from sglora.data.images import build_cache

    info = C.machine(args.threads)
    rep = C.Report("images", quick=args.quick)
    C.print_machine("bench_images: streamed images (memory, cache build, training speed)", info, args.quick)
    here = os.pathsep.join([str(C.ROOT), os.environ.get("PYTHONPATH", "")])
    n_small, n_big = (200, 2000) if args.quick else (2000, 20000)
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        tmp = Path(tmp)
        old_path, rev = baseline_tree(args.baseline, tmp / "baseline")
        rep.note(f"baseline: sglora at {rev} (images decoded into one float32 tensor per task)")

        # --- data: n_big JPEGs, tasks 'big' (all) and 'small' (the first n_small) ---
        t, paths = C.timed(write_images, tmp / "jpg", n_big + 16)
        test, paths = paths[:16], paths[16:]
        rep.note(f"wrote {len(paths) + 16} JPEGs of 320 x 240 in {t:.0f} s")
        manifest = tmp / "manifest.parquet"
        write_task_manifest(manifest, {"big": paths, "small": paths[:n_small], "few": paths[:64]}, test)
        backbone = vitb_clip(tmp / "vitb", [f"a big photo number {k}" for k in range(5)] + ["a small photo"], args.quick)
        _, processor = load_clip(backbone)

        # --- 2. cache build vs a plain PIL loop (same files, same number of processes) ---
        subset = paths[: 300 if args.quick else 1500]
        workers = max(args.threads, 1)
        k = [0]

        def build():
            k[0] += 1
            build_cache(subset, processor, tmp / f"cache_{k[0]}", workers=workers)

        sides = {"cache": build, "plain": lambda: plain_loop(subset, workers)}
        wall, cpu = {n: [] for n in sides}, {n: [] for n in sides}
        build()  # warm-up (page cache, imports)
        for r in range(3 if args.quick else 7):
            for n in (list(sides) if r % 2 == 0 else list(sides)[::-1]):
                w0, c0 = time.perf_counter(), cpu_seconds()
                sides[n]()
                wall[n].append(time.perf_counter() - w0)
                cpu[n].append(cpu_seconds() - c0)
        ips = {n: len(subset) / C.median(t) for n, t in cpu.items()}
        ratio = ips["cache"] / ips["plain"]
        rep.add("cache build: images per CPU-second", ips["cache"], "img/CPU-s",
                note=f"{len(subset)} JPEGs 320x240 -> 224, {workers} process(es); decode, resize, crop, write")
        rep.add("plain PIL decode + resize + crop: images per CPU-second", ips["plain"], "img/CPU-s")
        rep.add("cache build vs plain PIL loop (CPU time)", ratio, "x", ">= 0.8", None if args.quick else ratio >= 0.8,
                headline=True, note="process CPU time, children included")
        rep.add("cache build vs plain PIL loop (wall time)", C.median(wall["plain"]) / C.median(wall["cache"]), "x")
        t_full, built = C.timed(build_cache, paths, processor, tmp / "cache", workers=workers)
        rep.add(f"full cache build ({len(paths):,} images)", t_full, "s",
                note=f"{len(paths) / t_full:.0f} img/s, {built['bytes'] / 2**30:.2f} GB uint8 on disk")

        # --- 1. memory: streamed training at n_big vs n_small, the old code at n_small ---
        mem_train = {"epochs": 1, "snapshots": 1, "batch_size": 4, "lr": 1e-3, "seed": 0, "device": "cpu"}
        steps = 3
        common = dict(backbone=backbone, manifest=str(manifest), training=mem_train, threads=args.threads, steps=steps)
        small = run_training(here, task="small", out=str(tmp / "m_small"), cache=str(tmp / "cache"), **common)
        big = run_training(here, task="big", out=str(tmp / "m_big"), cache=str(tmp / "cache"), **common)
        few = run_training(here, task="few", out=str(tmp / "m_few"), cache=str(tmp / "cache"), **common)
        old = run_training(old_path, task="small", out=str(tmp / "m_old"), **common)
        rep.add(f"RSS growth, streamed, {n_big:,} images", big["growth_mb"] / 1024, "GB", "<= 1.5",
                None if args.quick else big["growth_mb"] <= 1.5 * 1024, headline=True,
                note=f"{steps} steps of batch 4; RSS {big['base_mb'] / 1024:.2f} GB before the data")
        rep.add(f"RSS growth, streamed, {n_small:,} images", small["growth_mb"] / 1024, "GB")
        ratio_mem = big["growth_mb"] / small["growth_mb"]
        rep.add(f"RSS growth {n_big:,} / {n_small:,} images", ratio_mem, "x", "<= 1.2",
                None if args.quick else ratio_mem <= 1.2, headline=True)
        rep.add("RSS growth, streamed, 64 images (the fixed cost: activations, optimizer)", few["growth_mb"] / 1024,
                "GB", note="training activations of batch 4 are in RSS on the CPU (on a GPU they are not)")
        rep.add(f"RSS growth due to the task's size, {n_big:,} images", (big["growth_mb"] - few["growth_mb"]) / 1024,
                "GB", note=f"growth at {n_big:,} minus growth at 64")
        rep.add(f"RSS growth, previous code, {n_small:,} images", old["growth_mb"] / 1024, "GB",
                note=f"float32 copy of the task: {n_small * 3 * 224 * 224 * 4 / 2**30:.2f} GB; at {n_big:,}: "
                     f"{n_big * 3 * 224 * 224 * 4 / 2**30:.1f} GB")

        # --- 3. training speed at the embedded default's size ---
        from sglora.backbone.tiny import save_tiny_clip
        from sglora.data.world import generate_world

        cfg = yaml.safe_load((C.ROOT / "config.yaml").read_text())
        sizes = dict(cfg["backbone"]["pretrain"]["sizes"])
        opts = cfg["datasets"]["world"]["options"]
        world = tmp / "world"
        generate_world(world, opts["classes"][:1], images_per_class=opts["images_per_class"],
                       test_per_class=opts["test_per_class"], image_size=opts["image_size"], domain=opts["domain"],
                       progress=False)
        import pyarrow.parquet as pq

        caps = {r["image_path"]: r["captions"] for r in pq.read_table(world / "captions.parquet").to_pylist()}
        rows = pq.read_table(world / "manifest.raw.parquet").to_pylist()
        from sglora.data.manifest import make_manifest, write_manifest

        for r in rows:
            r["captions"] = list(caps[r["image_path"]])
        write_manifest(world / "manifest.parquet", make_manifest(rows))
        texts = [c for cs in caps.values() for c in cs]
        small_clip = save_tiny_clip(tmp / "embedded_clip", texts, **sizes)
        _, proc_small = load_clip(str(small_clip))
        t_cache, _ = C.timed(build_cache, [r["image_path"] for r in rows], proc_small, tmp / "world_cache")
        task = rows[0]["task"]
        train = {**cfg["training"], "epochs": 4 if args.quick else 10, "snapshots": 2, "device": "cpu"}
        speed = dict(backbone=str(small_clip), manifest=str(world / "manifest.parquet"), task=task, training=train,
                     threads=args.threads, steps=0)
        n_train = sum(r["split"] == "train" and r["task"] == task for r in rows)
        sides = {"streamed": lambda: run_training(here, out=str(tmp / "s_new"), cache=str(tmp / "world_cache"), **speed),
                 "previous": lambda: run_training(old_path, out=str(tmp / "s_old"), **speed)}
        secs = {n: [] for n in sides}
        cpus = {n: [] for n in sides}
        for r in range(3 if args.quick else 9):
            for n in (list(sides) if r % 2 == 0 else list(sides)[::-1]):
                out = sides[n]()
                secs[n].append(out["seconds"])
                cpus[n].append(out["cpu_seconds"])
        pairs = n_train * train["epochs"]
        pps = {n: pairs / C.median(s) for n, s in secs.items()}
        cps = {n: pairs / C.median(s) for n, s in cpus.items()}
        rep.add("expert training, embedded size, streamed", cps["streamed"], "pairs/CPU-s",
                note=f"{task}: {n_train} pairs x {train['epochs']} epochs, batch {train['batch_size']}, "
                     f"{opts['image_size']} px, {args.threads} thread(s); the train_lora call, data loading included")
        rep.add("expert training, embedded size, previous code", cps["previous"], "pairs/CPU-s")
        ratio_cpu = cps["streamed"] / cps["previous"]
        rep.add("expert training speed, streamed vs previous (CPU time)", ratio_cpu, "x", ">= 0.95",
                None if args.quick else ratio_cpu >= 0.95, headline=True,
                note="process CPU time: on a shared machine wall time mostly measures the other processes")
        rep.add("expert training speed, streamed vs previous (wall time)", pps["streamed"] / pps["previous"], "x",
                note=f"{pps['streamed']:.1f} vs {pps['previous']:.1f} pairs/s")
        rep.add("cache build of that world (once per dataset)", t_cache, "s", note=f"{len(rows)} images")
        rep.note("wall seconds per side: " + "; ".join(f"{n}: {', '.join(f'{x:.2f}' for x in s)}" for n, s in secs.items()))
        rep.note("CPU seconds per side: " + "; ".join(f"{n}: {', '.join(f'{x:.2f}' for x in s)}" for n, s in cpus.items()))
    rep.write(C.out_dir(args), info)
    return 0


if __name__ == "__main__":
    sys.exit(main())
