"""LoRA training in batches: CPU seconds per LoRA, one process per LoRA vs one process for all.

    python benchmarks/bench_lora_batches.py [--quick] [--loras 6] [--threads 1]

Trains the same N LoRAs of the embedded default's world two ways, side by side in one run:
`sglora train-lora` once per LoRA, each in its own process (the rule train_lora, one job
per LoRA), and `sglora train-loras` over all N in one process (a train_lora_<reader>_<k>
batch). Each side runs its processes one after the other; the sides alternate (A B, B A)
and the medians are reported. CPU time is the processes' user + system time (children's
rusage), wall time is reported too; the difference per LoRA is what a process pays before
it trains (imports of torch and transformers, the CLI). The two sides' folders are compared
byte by byte. Inputs, in a temp dir: the world of config.yaml's first embedded dataset (the
first N classes), a random CLIP of config.yaml's backbone sizes, its image cache;
config.yaml's `lora:` and `training:` (device cpu). --quick: 2 LoRAs, tiny images and CLIP,
2 epochs, one round.
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

import _common as C


def setup(tmp: Path, cfg: dict, n: int, quick: bool) -> dict:
    """World, captioned manifest, random CLIP and image cache: the inputs of a train_lora job."""
    import pyarrow.parquet as pq

    from sglora.backbone.clip import load_clip
    from sglora.data.images import build_cache
    from sglora.data.manifest import make_manifest, write_manifest
    from sglora.backbone.tiny import save_tiny_clip
    from sglora.data.world import generate_world

    dataset = next(d for d in cfg["datasets"].values() if d["kind"] == "embedded")
    opts = dict(dataset.get("options") or {})
    sizes = dict(cfg["backbone"]["pretrain"]["sizes"])
    if quick:
        opts.update(images_per_class=12, test_per_class=4, image_size=32)
        sizes.update(image_size=32, hidden_size=32, layers=2, heads=2, projection_dim=32)
    opts["classes"] = opts["classes"][:n]
    world = tmp / "world"
    generate_world(world, seed=cfg.get("seed", 0), progress=False, **opts)
    caps = {r["image_path"]: r["captions"] for r in pq.read_table(world / "captions.parquet").to_pylist()}
    rows = pq.read_table(world / "manifest.raw.parquet").to_pylist()
    for r in rows:
        r["captions"] = list(caps[r["image_path"]])
    write_manifest(world / "manifest.parquet", make_manifest(rows))
    clip = save_tiny_clip(tmp / "clip", [c for cs in caps.values() for c in cs], **sizes)
    build_cache([r["image_path"] for r in rows], load_clip(str(clip))[1], tmp / "cache")
    tasks = [c.replace(" ", "_") for c in opts["classes"]]
    return {"manifest": world / "manifest.parquet", "backbone": clip, "cache": tmp / "cache", "tasks": tasks}


def run(argvs: list[list[str]]) -> tuple[float, float]:
    """CPU seconds (user + system of the processes) and wall seconds of the commands, one after the other."""
    env = dict(os.environ, PYTHONPATH=str(C.ROOT), HF_HUB_OFFLINE="1")
    before, t = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
    for argv in argvs:
        proc = subprocess.run([sys.executable, "-m", "sglora", *argv], capture_output=True, text=True, env=env)
        if proc.returncode:
            raise SystemExit(f"bench_lora_batches: sglora {argv[0]} failed:\n{proc.stderr[-3000:]}")
    wall, after = time.perf_counter() - t, resource.getrusage(resource.RUSAGE_CHILDREN)
    return after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime, wall


def digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def arguments(doc: str, argv, loras: int, training: dict) -> tuple:
    """The command line of a benchmark that trains LoRAs of config.yaml's world: ``(args,
    config, LoRAs per side, training section (device cpu, ``training`` on top unless
    --quick: 2 epochs), rounds)``."""
    ap = C.parser(doc)
    ap.add_argument("--config", default=str(C.ROOT / "config.yaml"))
    ap.add_argument("--loras", type=int, default=None, help=f"LoRAs trained on each side (default {loras}; --quick 2)")
    ap.set_defaults(threads=1)
    args = ap.parse_args(argv)
    cfg = yaml.safe_load(Path(args.config).read_text())
    n = args.loras or (2 if args.quick else loras)
    section = dict(cfg["training"], device="cpu") | ({"epochs": 2, "snapshots": 2} if args.quick else training)
    return args, cfg, n, section, 1 if args.quick else 2


def main(argv=None) -> int:
    args, cfg, n, training, rounds = arguments(__doc__, argv, 6, {})

    info = C.machine(args.threads)
    rep = C.Report("lora_batches", quick=args.quick)
    C.print_machine(f"bench_lora_batches: {n} LoRAs, one process each vs one batch", info, args.quick)
    tmp = Path(tempfile.mkdtemp(prefix="sglora-bench-lora-batches-"))
    try:
        inp = setup(tmp, cfg, n, args.quick)
        common = ["--backbone", str(inp["backbone"]), "--manifest", str(inp["manifest"]), "--image-cache",
                  str(inp["cache"]), "--lora", json.dumps(cfg["lora"]), "--training", json.dumps(training),
                  "--threads", str(args.threads)]

        def single(out: Path) -> list[list[str]]:
            return [["train-lora", *common, "--task", t, "--out", str(out / t)] for t in inp["tasks"]]

        def batch(out: Path) -> list[list[str]]:
            return [["train-loras", *common, "--loras", *[f"{t}={out / t}" for t in inp["tasks"]]]]

        sides = {"single": single, "batch": batch}
        cpu: dict[str, list[float]] = {s: [] for s in sides}
        wall: dict[str, list[float]] = {s: [] for s in sides}
        for r in range(rounds):
            for side in (sides if r % 2 == 0 else reversed(list(sides))):
                out = tmp / f"{side}{r}"
                c, w = run(sides[side](out))
                cpu[side].append(c / n)
                wall[side].append(w / n)
                print(f"round {r + 1}, {side}: {c / n:.2f} CPU-s and {w / n:.2f} s per LoRA", flush=True)
        same = all(digest(tmp / f"single{r}" / t) == digest(tmp / f"batch{r}" / t)
                   for r in range(rounds) for t in inp["tasks"])
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    a, b = C.median(cpu["single"]), C.median(cpu["batch"])
    note = f"{n} LoRAs, {training['epochs']} epochs, {args.threads} thread(s), median of {rounds}"
    rep.add("CPU per LoRA, one process per LoRA (train-lora)", a, "s", note=note)
    rep.add("CPU per LoRA, one batch (train-loras)", b, "s", note=note)
    rep.add("wall per LoRA, one process per LoRA", C.median(wall["single"]), "s")
    rep.add("wall per LoRA, one batch", C.median(wall["batch"]), "s")
    rep.add("CPU a process pays before it trains (per LoRA saved)", a - b, "s")
    rep.add("batch / one process per LoRA, CPU per LoRA", b / a, "x", "< 1", None if args.quick else b < a,
            headline=True, note="quick: tiny sizes" if args.quick else note)
    rep.add("batch folders byte-identical to one process per LoRA", float(same), "bool", "1", same)
    rep.write(C.out_dir(args), info)
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
