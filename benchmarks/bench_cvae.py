"""CVAE training cost: step time and peak memory at ViT-B/16 LoRA size and at the embedded size.

    python benchmarks/bench_cvae.py [--quick] [--batch 64]

One training step of sglora.generator.cvae.CVAE exactly as train_cvae runs it (loss = reconstruction
+ KL, backward, Adam step), with config.yaml's `cvae:` widths, on random snapshots and
conditions (the cost does not depend on the values), at two LoRA sizes:

- ViT-B/16: rank 2 on q, k, v of 12 vision layers (width 768) and 12 text layers
  (width 512), D = 184,320;
- the embedded default: config.yaml's backbone.pretrain sizes (and the repository's D if
  results/embedded/repository exists, which must agree).

Each size runs in its own subprocess: peak RSS (ru_maxrss) raw and minus the RSS after
imports; median step time after one untimed step (Adam allocates its state there);
cvae_parameters() next to the model's real parameter count, and the memory weights + grads
+ Adam's two moments take (16 bytes per parameter). A GPU changes the step time, not the
memory: the estimate printed is the step's FLOPs at a nominal GPU rate, labelled as such.
--quick: the ViT-B/16 widths with 1 of 12 layers per tower, batch 16, 2 timed steps.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml

import _common as C

# nominal A100/H100-class figures, for the printed GPU estimate only (nothing here is measured on a GPU)
GPU_TFLOPS = 50.0  # sustained FP32/TF32 GEMM rate
GPU_TBPS = 2.0  # memory bandwidth
GPU_BYTES_PER_PARAM = 44  # weights read ~3x (forward, two backward GEMMs), grad written, Adam reads 4 and writes 3 fp32


def child(dim: int, spec: dict, batch: int, steps: int, threads: int, fused: bool = True) -> dict:
    import torch

    from sglora.generator.cvae import CVAE, cvae_optimizer, cvae_parameters
    from sglora.generator.settings import CVAESpec

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    spec = CVAESpec.from_dict(spec)
    baseline = C.rss_mb()
    model = CVAE(dim, spec)
    n_params = sum(p.numel() for p in model.parameters())
    opt = cvae_optimizer(model, spec.lr, fused=fused)
    x = torch.randn(batch, dim) * 0.01
    mu = torch.randn(batch, dim) * 0.01
    var = torch.rand(batch, dim) * 1e-4

    def step():
        loss, rec, kl = model.loss(x, mu, var)
        opt.zero_grad()
        loss.backward()
        opt.step()
        return float(loss)

    model.train()
    step()  # Adam's state is allocated here
    times = [C.timed(step)[0] for _ in range(steps)]
    return {"dim": dim, "params": n_params, "cvae_parameters": cvae_parameters(dim, spec), "batch": batch,
            "step_s": C.median(times), "steps": steps, "baseline_mb": baseline, "peak_mb": C.peak_rss_mb()}


def run_child(dim, spec, batch, steps, threads, fused=True) -> dict:
    cmd = [sys.executable, __file__, "--child", json.dumps({"dim": dim, "spec": spec, "batch": batch, "steps": steps,
                                                            "threads": threads, "fused": fused})]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"cvae child (D={dim}) failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def flops_per_step(dim: int, spec: dict, batch: int) -> float:
    """Multiply-adds of the linear layers x 2 (FLOPs) x 3 (forward + backward)."""
    h, L, cd = spec["hidden"], spec["latent"], spec["cond_dim"]
    macs = 2 * dim * cd + (dim + cd) * h + h * 2 * L + cd * h + h * 2 * L + (L + cd) * h + h * h + h * dim
    return 2.0 * 3.0 * batch * macs


def main(argv=None) -> int:
    ap = C.parser(__doc__)
    ap.add_argument("--config", default=str(C.ROOT / "config.yaml"))
    ap.add_argument("--results", default=str(C.ROOT / "results" / "embedded"))
    ap.add_argument("--batch", type=int, default=0, help="batch size (default config.yaml's cvae.batch_size, 64; 16 with --quick)")
    ap.add_argument("--steps", type=int, default=0, help="timed steps (default 5 at ViT-B/16 size, 20 at the embedded size; 2/10 with --quick)")
    ap.add_argument("--child", help=argparse_hidden())
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(child(**json.loads(args.child))))
        return 0

    from sglora.generator.settings import CVAESpec

    cfg = yaml.safe_load(Path(args.config).read_text())
    spec = {k: v for k, v in cfg["cvae"].items()}
    full = CVAESpec.from_dict(spec)
    batch = args.batch or (16 if args.quick else full.batch_size)
    info = C.machine(args.threads)
    rep = C.Report("cvae", quick=args.quick)
    C.print_machine("bench_cvae: CVAE training step at ViT-B/16 and embedded LoRA sizes", info, args.quick)

    rank = cfg["lora"]["rank"]
    mods = tuple(cfg["lora"]["target_modules"])
    vitb_layers = 1 if args.quick else 12
    vitb = C.clip_lora_layout(rank, mods, vision=(vitb_layers, 768), text=(vitb_layers, 512)).dim
    sizes = cfg["backbone"]["pretrain"]["sizes"]
    towers = cfg["lora"]["towers"]
    w, n = sizes["hidden_size"], sizes["layers"]
    emb = C.clip_lora_layout(rank, mods, vision=(n if "vision" in towers else 0, w), text=(n if "text" in towers else 0, w)).dim
    repo = Path(args.results) / "repository"
    if (repo / "experts.parquet").exists():
        from sglora.experts.repository import Repository

        real = Repository(repo).layout.dim
        if real != emb:
            rep.note(f"results/embedded's repository has D = {real:,}, config.yaml gives {emb:,}: using the repository's")
            emb = real
    vitb_label = "ViT-B/16" if not args.quick else "ViT-B/16 widths, 1 layer/tower"
    plans = [(vitb_label, vitb, args.steps or (2 if args.quick else 5)), ("embedded", emb, args.steps or (10 if args.quick else 20))]
    spec_json = {k: spec[k] for k in ("latent", "hidden", "cond_dim", "kl_weight", "residual", "normalization", "lr")}
    for label, dim, steps in plans:
        r = run_child(dim, spec_json, batch, steps, args.threads)
        mem_model = r["params"] * 16 / 2**20
        grow = r["peak_mb"] - r["baseline_mb"]
        fl = flops_per_step(dim, spec, batch)
        epoch_steps = -(-80 * 100 // full.batch_size)  # the paper's repository: 80 experts x 100 snapshots
        print(f"{label}: D={dim:,}, {r['params'] / 1e6:.1f}M parameters, step {r['step_s'] * 1e3:.0f} ms "
              f"(batch {batch}), peak RSS {r['peak_mb']:.0f} MB (+{grow:.0f} MB)", flush=True)
        rep.add(f"{label}: D", dim, "floats")
        rep.add(f"{label}: cvae_parameters()", r["cvae_parameters"], "weights",
                note="equals the model's count" if r["cvae_parameters"] == r["params"] else f"model has {r['params']:,}")
        rep.add(f"{label}: training step (forward + backward + Adam)", r["step_s"] * 1e3, "ms",
                note=f"batch {batch}, median of {steps}, {args.threads} thread(s)", headline=True)
        rep.add(f"{label}: peak RSS minus RSS after imports", grow, "MB",
                note=f"weights + grads + Adam moments = {mem_model:.0f} MB; raw peak {r['peak_mb']:.0f} MB", headline=True)
        rep.add(f"{label}: FLOPs per step", fl / 1e9, "GFLOP", note=f"{fl / r['step_s'] / 1e9:.1f} GFLOP/s achieved here")
        if label != "embedded":
            hours = epoch_steps * full.epochs * r["step_s"] * full.batch_size / batch / 3600
            rep.add(f"{label}: paper-scale training (80 x 100 snapshots, {full.epochs} epochs) on this CPU", hours, "h",
                    note=f"{epoch_steps} steps/epoch at batch {full.batch_size}"
                         + (f"; step time scaled linearly from batch {batch}" if batch != full.batch_size else ""))
            gpu_ms = (fl * full.batch_size / batch / (GPU_TFLOPS * 1e12) + r["params"] * GPU_BYTES_PER_PARAM / (GPU_TBPS * 1e12)) * 1e3
            rep.add(f"{label}: estimated step on a GPU (batch {full.batch_size})", gpu_ms, "ms",
                    note=f"estimate, not measured: FLOPs at {GPU_TFLOPS:.0f} TFLOP/s + ~{GPU_BYTES_PER_PARAM} B/param "
                         f"of weight, grad and Adam traffic at {GPU_TBPS:.0f} TB/s; paper-scale training "
                         f"~{epoch_steps * full.epochs * gpu_ms / 6e4:.2g} min")
    # cvae_optimizer's fused Adam against the plain one at the embedded size, side by side in
    # this run: each in its own child, sides alternated (A B, B A; one round with --quick)
    steps = plans[-1][2]
    times: dict[bool, list[float]] = {True: [], False: []}
    for order in ((True, False),) if args.quick else ((True, False), (False, True)):
        for fused in order:
            times[fused].append(run_child(emb, spec_json, batch, steps, args.threads, fused)["step_s"])
    fused_s, plain_s = C.median(times[True]), C.median(times[False])
    print(f"embedded: step with fused Adam {fused_s * 1e3:.1f} ms, plain Adam {plain_s * 1e3:.1f} ms", flush=True)
    rep.add("embedded: training step with the plain (unfused) Adam", plain_s * 1e3, "ms",
            note=f"median of {len(times[False])} children")
    rep.add("embedded: step time, fused Adam / plain Adam", fused_s / plain_s, "x",
            note=f"train_cvae's cvae_optimizer (fused) against torch.optim.Adam's default on the CPU; "
                 f"median of {len(times[True])} children each, alternated", headline=True)
    rep.note(f"config.yaml's cvae widths: hidden {spec['hidden']}, cond_dim {spec['cond_dim']}, latent {spec['latent']}")
    if batch != 64:
        rep.note(f"batch {batch} instead of 64" + (" (--quick)" if args.quick else ""))
    rep.note("a GPU changes the step time, not the memory: the three D-wide linear layers (condition, encoder "
             "input, decoder output) dominate; a GPU runs them at tens of TFLOP/s, and at batch 64 the step becomes "
             "bound by reading the weights and Adam's state (see the estimate). Weights, grads and Adam's moments "
             "take 16 B per parameter wherever they live, plus a few batch x D activations")
    rep.write(C.out_dir(args), info)
    return 0


def argparse_hidden():
    import argparse

    return argparse.SUPPRESS


if __name__ == "__main__":
    sys.exit(main())
