"""Assembling a paper-scale expert repository: peak memory, throughput, read speed.

    python benchmarks/bench_repository.py [--quick] [--experts 80 --snapshots 100] [--tmp DIR]

The data: `--experts` x `--snapshots` random vectors of the size of a CLIP ViT-B/16 LoRA
(rank 2 on q, k, v of 12 vision layers of width 768 and 12 text layers of width 512:
D = 184,320 floats), written beforehand as per-expert folders exactly as
`sglora.experts.training` writes them (snapshots.safetensors with the layout in its metadata, and
training.json). Paper scale, 80 x 100, is 5.9 GB of float32.

Measured, with the writers interleaved (A B C, C B A, ...), each run in a fresh subprocess:

- `sglora.experts.repository.assemble` streaming the folders into snapshots.parquet +
  experts.parquet: wall time, MB/s of snapshot data, and peak RSS (ru_maxrss) of the
  process, raw and minus its RSS after imports (target: < 1/4 of the data size);
- the baseline: the same snapshots read from the same safetensors files and written with a
  plain `pyarrow.parquet.ParquetWriter` (zstd, like assemble; one row group per expert,
  only the vector column); and for context the same write without dictionary encoding
  and column statistics, which a column of float vectors gains nothing from;
- reading the repository: `Repository.experts()` (the mu/var table), `Repository.expert(task)`
  latency (one expert's M x D snapshots) and `iter_snapshots` throughput.

Random floats barely compress, like real LoRA factors. Free disk is checked first (3x the
data size needed; scaled down with a note otherwise). The temporary data is removed.
--quick: 8 experts x 10 snapshots.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _common as C

EMB_DIM = 512  # CLIP ViT-B/16 embedding size (text and image)
BACKBONE = "openai/clip-vit-base-patch16"
SIDES = ("assemble", "parquet", "parquet_tuned")


def task_name(i: int) -> str:
    return f"task_{i:03d}"


def write_data(root: Path, experts: int, snapshots: int, layout, lora) -> float:
    """Per-expert folders as sglora.experts.training._write lays them out (the adapter only as its
    config: assemble checks that it is there but does not read the weights). Returns seconds."""
    from dataclasses import asdict

    import numpy as np

    from sglora.io import save_safetensors, write_json

    t = time.perf_counter()
    for i in range(experts):
        d = root / task_name(i)
        d.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(i)
        snaps = rng.standard_normal((snapshots, layout.dim), dtype=np.float32) * np.float32(0.01)
        save_safetensors(d / "snapshots.safetensors", {"snapshots": snaps},
                         {"layout": layout.to_json(), "task": task_name(i), "lora": json.dumps(asdict(lora), sort_keys=True)})
        write_json(d / "training.json", {"task": task_name(i), "losses": [1.0], "pairs": 0, "dim": layout.dim,
                                         "snapshots": snapshots, "lora": asdict(lora), "training": {}, "backbone": BACKBONE})
        write_json(d / "adapter" / "adapter_config.json", {"peft_type": "LORA", "r": lora.rank,
                                                           "lora_alpha": lora.alpha, "base_model_name_or_path": BACKBONE})
    return time.perf_counter() - t


# --- the child processes: one writer each, so ru_maxrss is that writer's peak ------------

def child(mode: str, data: Path, target: Path, experts: int) -> dict:
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from sglora.experts.training import read_snapshots
    from sglora.experts.repository import assemble

    names = [task_name(i) for i in range(experts)]
    rng = np.random.default_rng(0)
    emb = {t: {"task_name": t.replace("_", " "), "description": f"a photo of a {t}",
               "text_embedding": rng.standard_normal(EMB_DIM).astype(np.float32),
               "visual_embedding": rng.standard_normal(EMB_DIM).astype(np.float32)} for t in names}
    baseline = C.rss_mb()
    t = time.perf_counter()
    if mode == "assemble":
        assemble(target, [{"task": n, "lora_dir": str(data / n)} for n in names], emb, progress=False)
    else:
        target.mkdir(parents=True, exist_ok=True)
        writer = schema = None
        for n in names:
            snaps, layout = read_snapshots(data / n)
            if writer is None:
                schema = pa.schema([("vector", pa.list_(pa.float32(), layout.dim))])
                # "parquet": pyarrow's defaults (dictionary attempt + statistics), like assemble;
                # "parquet_tuned": neither, which a float vector column does not benefit from
                tuned = {"use_dictionary": False, "write_statistics": False} if mode == "parquet_tuned" else {}
                writer = pq.ParquetWriter(target / "plain.parquet", schema, compression="zstd", **tuned)
            flat = pa.FixedSizeListArray.from_arrays(pa.array(snaps.reshape(-1), pa.float32()), layout.dim)
            writer.write_table(pa.table({"vector": flat}, schema=schema))
            del snaps, flat
        writer.close()
    seconds = time.perf_counter() - t
    size = sum(p.stat().st_size for p in target.rglob("*") if p.is_file())
    return {"seconds": seconds, "baseline_mb": baseline, "peak_mb": C.peak_rss_mb(), "bytes": size}


def run_child(mode: str, data: Path, target: Path, experts: int) -> dict:
    shutil.rmtree(target, ignore_errors=True)
    cmd = [sys.executable, __file__, "--child", mode, "--data", str(data), "--target", str(target), "--experts", str(experts)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"{mode} child failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    ap = C.parser(__doc__)
    ap.add_argument("--experts", type=int, default=0, help="number of experts (default 80; 8 with --quick)")
    ap.add_argument("--snapshots", type=int, default=0, help="snapshots per expert (default 100; 10 with --quick)")
    ap.add_argument("--rounds", type=int, default=0, help="interleaved rounds of the writers (default 2; 1 with --quick)")
    ap.add_argument("--tmp", default=None, help="where the temporary data goes (default: the system temp dir)")
    ap.add_argument("--child", choices=list(SIDES), help=argparse_hidden())
    ap.add_argument("--data", help=argparse_hidden())
    ap.add_argument("--target", help=argparse_hidden())
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, Path(args.data), Path(args.target), args.experts)))
        return 0

    import numpy as np

    from sglora.experts.lora import LoraSpec
    from sglora.experts.repository import Repository

    experts = args.experts or (8 if args.quick else 80)
    snapshots = args.snapshots or (10 if args.quick else 100)
    rounds = args.rounds or (1 if args.quick else 2)
    info = C.machine()
    rep = C.Report("repository", quick=args.quick)
    C.print_machine("bench_repository: assembling a ViT-B/16-size expert repository", info, args.quick)

    layout = C.clip_lora_layout()
    lora = LoraSpec(rank=2, alpha=4.0)
    tmp_parent = Path(args.tmp or tempfile.gettempdir())
    free = shutil.disk_usage(tmp_parent).free
    data_bytes = experts * snapshots * layout.dim * 4
    if free < 3 * data_bytes:
        scale = free / (3 * data_bytes)
        new = max(1, int(experts * scale))
        rep.note(f"only {free / 1e9:.1f} GB free under {tmp_parent}; {3 * data_bytes / 1e9:.1f} GB needed for "
                 f"{experts} experts -- scaled down to {new} experts")
        experts = new
        data_bytes = experts * snapshots * layout.dim * 4
    data_mb = data_bytes / 2**20
    print(f"D = {layout.dim:,} ({len(layout.keys)} factors); {experts} experts x {snapshots} snapshots = "
          f"{data_bytes / 1e9:.2f} GB of float32; {free / 1e9:.0f} GB free under {tmp_parent}", flush=True)

    tmp = Path(tempfile.mkdtemp(prefix="sglora-bench-repo-", dir=tmp_parent))
    try:
        data = tmp / "loras"
        t_write = write_data(data, experts, snapshots, layout, lora)
        print(f"wrote the expert folders in {t_write:.1f} s", flush=True)
        runs = {m: [] for m in SIDES}
        for r in range(rounds):
            for mode in (SIDES if r % 2 == 0 else SIDES[::-1]):
                res = run_child(mode, data, tmp / mode, experts)
                runs[mode].append(res)
                print(f"round {r + 1}: {mode:8s} {res['seconds']:.2f} s, {data_mb / res['seconds']:.0f} MB/s, "
                      f"peak RSS {res['peak_mb']:.0f} MB (after imports {res['baseline_mb']:.0f} MB), "
                      f"output {res['bytes'] / 2**20:.0f} MB", flush=True)
                if mode != "assemble":
                    shutil.rmtree(tmp / mode, ignore_errors=True)
        # the repository of the last assemble run stays for the read benchmarks
        a_s = C.median([x["seconds"] for x in runs["assemble"]])
        p_s = C.median([x["seconds"] for x in runs["parquet"]])
        pt_s = C.median([x["seconds"] for x in runs["parquet_tuned"]])
        peak = max(x["peak_mb"] for x in runs["assemble"])
        grow = max(x["peak_mb"] - x["baseline_mb"] for x in runs["assemble"])
        repo_mb = runs["assemble"][-1]["bytes"] / 2**20

        repo = Repository(tmp / "assemble")
        t_experts = C.median([C.timed(repo.experts)[0] for _ in range(3)])
        pick = np.random.default_rng(0).choice(experts, size=min(experts, 3 if args.quick else 5), replace=False)
        repo.expert(task_name(int(pick[0])))  # warm the footer / file cache path once
        t_expert = [C.timed(repo.expert, task_name(int(i)))[0] for i in pick]
        t_iter = time.perf_counter()
        rows = 0
        for _, vecs in repo.iter_snapshots():
            rows += len(vecs)
        t_iter = time.perf_counter() - t_iter
        assert rows == experts * snapshots, rows
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    scale = f"{experts} experts x {snapshots} snapshots x D={layout.dim:,}"
    rep.add("data size (float32 snapshots)", data_mb, "MB", note=scale)
    rep.add("repository size on disk (zstd)", repo_mb, "MB")
    quarter = data_mb / 4
    rep.add("assemble peak RSS minus RSS after imports", grow, "MB", f"< {quarter:.0f} (1/4 of data)",
            None if args.quick else grow < quarter,
            note="quick: too little data for the ratio to mean anything" if args.quick else
            f"{grow / data_mb:.3f} of the data size; max over {rounds} runs", headline=True)
    rep.add("assemble raw peak RSS", peak, "MB", note="ru_maxrss of the assembling process")
    rep.add("assemble throughput", data_mb / a_s, "MB/s", note=f"median of {rounds}: {a_s:.2f} s")
    rep.add("plain pyarrow.parquet write throughput (same bytes, zstd)", data_mb / p_s, "MB/s",
            note=f"median of {rounds}: {p_s:.2f} s; read from the same safetensors")
    rep.add("assemble throughput / plain parquet write", p_s / a_s, "x", headline=True,
            note=("interleaved A B C, C B A" if rounds > 1 else "one round (--quick)") + "; 1.0 = no overhead over a bare Parquet write")
    rep.add("for context: parquet write without dictionary and statistics", data_mb / pt_s, "MB/s",
            note=f"median of {rounds}: {pt_s:.2f} s; use_dictionary=False, write_statistics=False")
    rep.add("Repository.experts() (mu/var table)", t_experts * 1e3, "ms", note="median of 3")
    rep.add("Repository.expert(task) latency", C.median(t_expert) * 1e3, "ms",
            note=f"median of {len(t_expert)} experts, {snapshots} x D each")
    rep.add("iter_snapshots throughput", data_mb / t_iter, "MB/s", note=f"all {rows} snapshots, {t_iter:.1f} s")
    rep.add("writing the expert folders (setup)", data_mb / t_write, "MB/s", note="save_safetensors; not a target")
    rep.write(C.out_dir(args), info)
    return 0


def argparse_hidden():
    import argparse

    return argparse.SUPPRESS


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
