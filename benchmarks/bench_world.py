"""The embedded default's first steps: world generation and backbone pretraining, wall time.

    python benchmarks/bench_world.py [--quick] [--threads 2]

Runs, in a temporary folder, what the rules `world` (both domains of config.yaml) and
`pretrain_backbone` run: sglora.data.world.generate_world for each embedded dataset with its
config options, then sglora.backbone.pretrain.pretrain_clip with config.yaml's backbone.pretrain
settings on the coarse captions of the training images (as `sglora pretrain` collects
them). Torch threads: 2, like the rule (max(threads, 2)). Target: < 5 minutes on 2 cores.
--quick: 2 + 1 classes, 12 images per class, 1 pretraining epoch.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

import yaml

import _common as C

TARGET_S = 5 * 60


def main(argv=None) -> int:
    ap = C.parser(__doc__)
    ap.add_argument("--config", default=str(C.ROOT / "config.yaml"))
    ap.set_defaults(threads=2)
    args = ap.parse_args(argv)


    from sglora.backbone.pretrain import pretrain_clip
    from sglora.data.world import generate_world, pretraining_pairs

    cfg = yaml.safe_load(Path(args.config).read_text())
    seed = cfg.get("seed", 0)
    pre = dict(cfg["backbone"].get("pretrain") or {})
    embedded = {n: d for n, d in cfg["datasets"].items() if d["kind"] == "embedded"}
    if not embedded:
        print(f"bench_world: {args.config} has no embedded dataset", file=sys.stderr)
        return C.MISSING_INPUTS
    info = C.machine(args.threads)
    rep = C.Report("world", quick=args.quick)
    C.print_machine("bench_world: embedded world generation + backbone pretraining", info, args.quick)
    if args.quick:
        pre["epochs"] = 1

    tmp = Path(tempfile.mkdtemp(prefix="sglora-bench-world-"))
    try:
        worlds, t_world, n_images = [], 0.0, 0
        for i, (name, d) in enumerate(embedded.items()):
            opts = dict(d.get("options") or {})
            if args.quick:
                opts["classes"] = opts["classes"][: 2 if i == 0 else 1]
                opts["images_per_class"], opts["test_per_class"] = 12, 4
            dt, out = C.timed(generate_world, tmp / name / "world", seed=seed, progress=False, **opts)
            t_world += dt
            n_images += out["images"]
            worlds.append(tmp / name / "world")
            rep.add(f"world `{name}` ({opts.get('domain', 'studio')}): {out['classes']} classes, {out['images']} images",
                    dt, "s")
            print(f"world {name}: {out['images']} images in {dt:.1f} s", flush=True)
        # the pairs `sglora pretrain` trains on (sglora.steps.backbone.pretrain)
        pairs = pretraining_pairs(worlds)
        texts = pairs.texts
        t_pre, res = C.timed(pretrain_clip, tmp / "backbone", pairs.images, texts, pairs.vocab, seed=seed,
                             threads=args.threads, progress=False, describes=pairs.describes, **pre)
        print(f"pretraining: {len(texts)} pairs x {pre.get('epochs')} epochs in {t_pre:.1f} s "
              f"(final loss {res['loss']:.3f})", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    total = t_world + t_pre
    rep.add(f"backbone pretraining: {len(texts)} pairs x {pre.get('epochs')} epochs, "
            f"{res['parameters'] / 1e6:.2f}M parameters", t_pre, "s", note=f"{args.threads} torch threads")
    rep.add("world (both domains) + pretraining, wall time", total / 60, "min", "< 5",
            None if args.quick else total < TARGET_S, headline=True,
            note="quick: reduced world and epochs" if args.quick else f"{n_images} images; {args.threads} threads")
    rep.write(C.out_dir(args), info)
    return 0


if __name__ == "__main__":
    sys.exit(main())
