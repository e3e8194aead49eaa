"""Paper scale: images streamed from the uint8 cache, one GPU per local job, requests a
machine cannot meet refused before a run starts."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from conftest import ROOT, TINY_TRAIN

BIN = Path(sys.executable).parent


def _paths(world: Path, split: str | None = None) -> list[str]:
    from sglora.data.manifest import read_manifest

    rows = read_manifest(world / "manifest.parquet").to_pylist()
    return [r["image_path"] for r in rows if split in (None, r["split"])]


# --- the image cache ---------------------------------------------------------------


@pytest.mark.parametrize("size", [32, 24])
def test_cached_pixels_equal_the_image_processor(size, tiny_world, tmp_path):
    """Cached uint8 + normalisation on the device = ``processor.image_processor(images)``,
    bit for bit: the same size (no resize) and a real resize + center crop of 32 px images
    to 24 px; images of another shape (a 40 x 56 PNG) too."""
    from PIL import Image
    from transformers import CLIPImageProcessorPil

    from sglora.backbone.clip import load_images
    from sglora.data.images import build_cache, task_batches

    odd = tmp_path / "odd.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 56, 3), dtype=np.uint8)).save(odd)
    paths = _paths(tiny_world)[:20] + [str(odd)]
    processor = CLIPImageProcessorPil(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
    build_cache(paths, processor, tmp_path / "cache", workers=2, batch_size=7)
    want = torch.from_numpy(processor(load_images(paths), return_tensors="np")["pixel_values"])
    for cache in (tmp_path / "cache", None):  # from the cache, and decoded on the fly
        got = torch.cat(list(task_batches(paths, processor, cache, batch_size=8).on("cpu")))
        assert got.dtype == torch.float32 and got.shape == want.shape
        assert torch.equal(got, want), (got - want).abs().max()


def test_cache_is_keyed_by_the_image_processor(tiny_world, tmp_path):
    """A backbone with another input size does not read this cache: the error names both."""
    from transformers import CLIPImageProcessorPil

    from sglora.data.images import ImageCache, build_cache, processor_key
    from sglora.io import SGLoraError

    p32 = CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    p24 = CLIPImageProcessorPil(size={"shortest_edge": 24}, crop_size={"height": 24, "width": 24})
    info = build_cache(_paths(tiny_world)[:4], p32, tmp_path / "cache")
    assert info["key"] == processor_key(p32) != processor_key(p24)
    assert (tmp_path / "cache" / info["key"] / "pixels.npy").stat().st_size >= 4 * 3 * 32 * 32
    with pytest.raises(SGLoraError, match=f"key {processor_key(p24)}.*{info['key']}"):
        ImageCache.open(tmp_path / "cache", p24)
    cache = ImageCache.open(tmp_path / "cache", p32)
    with pytest.raises(SGLoraError, match="not in the cache"):
        cache.rows([str(tmp_path / "elsewhere.png")])


def test_no_step_decodes_a_whole_task_into_float(tiny_world, tiny_clip, tiny_repo, tmp_path, monkeypatch):
    """Expert training, evaluation, MoLE training and evaluation and embedding run from
    the cache with the all-at-once float decoder (``backbone.pixel_values``) disabled, and
    the expert equals the one trained from decoded images (same pixels, same order)."""
    from sglora.backbone import clip as backbone
    from sglora.baselines.mole import MoLESpec, evaluate_mole, train_mole
    from sglora.backbone.embed import embed_tasks
    from sglora.evaluation.scoring import evaluate_method
    from sglora.experts.training import TrainSpec, read_snapshots, train_lora
    from sglora.data.images import build_cache
    from sglora.experts.lora import LoraSpec

    _, processor = backbone.load_clip(tiny_clip)
    manifest = tiny_world / "manifest.parquet"
    build_cache(_paths(tiny_world), processor, tmp_path / "cache")
    train = TrainSpec.from_dict(TINY_TRAIN)
    train_lora(tiny_clip, manifest, "tiger_lily", tmp_path / "decoded", LoraSpec(), train, threads=1, progress=False)

    def refuse(*a, **k):
        raise AssertionError("a whole task decoded into float32")

    monkeypatch.setattr(backbone, "pixel_values", refuse)
    cache = tmp_path / "cache"
    train_lora(tiny_clip, manifest, "tiger_lily", tmp_path / "cached", LoraSpec(), train, threads=2, progress=False,
               cache=cache)
    assert np.array_equal(read_snapshots(tmp_path / "cached")[0], read_snapshots(tmp_path / "decoded")[0])
    evaluate_method(tiny_clip, manifest, ["tiger_lily"], "zero_shot", tmp_path / "metrics", cache=cache, threads=1)
    spec = MoLESpec.from_dict({"epochs": 1, "batch_size": 8, "probe_pairs": 4, "device": "cpu"})
    train_mole(tiny_clip, manifest, ["scottish_terrier", "tiger_lily"], tiny_repo, tmp_path / "mole", spec,
               progress=False, cache=cache)
    evaluate_mole(tiny_clip, manifest, ["water_lily"], tmp_path / "mole", tmp_path / "mole_metrics", cache=cache)
    embed_tasks(tiny_clip, {"world": manifest}, tmp_path / "emb.parquet", caches={"world": cache})
    assert (tmp_path / "metrics" / "tiger_lily.json").exists() and (tmp_path / "mole_metrics" / "water_lily.json").exists()


# --- one GPU per job -----------------------------------------------------------------

HOLDER = """
import os, sys, time
from sglora.cli import build_parser, claim_gpu
args = build_parser().parse_args(["evaluate", "--backbone", "b", "--manifest", "m", "--tasks", "t",
                                  "--method", "zero_shot", "--out", "o"])
slot = claim_gpu(args)
print(os.environ["CUDA_VISIBLE_DEVICES"], flush=True)
time.sleep(600)
"""


def _holder(slots: Path, visible: str) -> subprocess.Popen:
    env = {**os.environ, "SGLORA_GPU_SLOTS": str(slots), "CUDA_VISIBLE_DEVICES": visible,
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    return subprocess.Popen([sys.executable, "-c", HOLDER], env=env, stdout=subprocess.PIPE, text=True)


@pytest.mark.heavy
def test_concurrent_gpu_jobs_get_distinct_devices_and_a_killed_job_frees_its_slot(tmp_path, monkeypatch):
    """Three GPU steps started at once on a (simulated) 3-GPU machine see three different
    devices; a fourth finds none free; after one holder is killed (SIGKILL: no cleanup
    runs) the next step gets exactly its device."""
    from sglora.devices import try_gpu_slot

    slots = tmp_path / "gpu_slots"
    procs = [_holder(slots, "0,1,2") for _ in range(3)]
    try:
        seen = [p.stdout.readline().strip() for p in procs]
        assert sorted(seen) == ["0", "1", "2"]
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2")
        assert try_gpu_slot(slots) is None
        victim = seen.index("1")
        procs[victim].send_signal(signal.SIGKILL)
        procs[victim].wait()
        late = _holder(slots, "0,1,2")
        procs.append(late)
        assert late.stdout.readline().strip() == "1"
    finally:
        for p in procs:
            p.kill()
            p.wait()


def test_only_steps_that_use_a_gpu_take_a_slot(tmp_path, monkeypatch):
    """--device cpu, no GPU visible, or no SGLORA_GPU_SLOTS (a SLURM job): no slot."""
    from sglora.cli import build_parser, claim_gpu

    base = ["evaluate", "--backbone", "b", "--manifest", "m", "--tasks", "t", "--method", "x", "--out", "o"]
    parse = build_parser().parse_args
    monkeypatch.setenv("SGLORA_GPU_SLOTS", str(tmp_path / "slots"))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
    assert claim_gpu(parse(base + ["--device", "cpu"])) is None
    assert claim_gpu(parse(["tables", "--metrics", "g/m=d", "--groups", "{}", "--out", "o"])) is None
    slot = claim_gpu(parse(base))
    assert slot.device == "3" and os.environ["CUDA_VISIBLE_DEVICES"] == "3"
    slot.release()
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert claim_gpu(parse(base)) is None
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    monkeypatch.delenv("SGLORA_GPU_SLOTS")
    assert claim_gpu(parse(base)) is None


# --- requests a machine cannot meet --------------------------------------------------


@pytest.mark.parametrize("case", ["mem_mb", "gpu", "gpu_limit"])
def test_impossible_request_is_refused_before_any_job(case, tmp_path):
    """A real (not dry) run of config/tiny.yaml asking 100 TB for train_lora, two GPUs of a
    (simulated) one-GPU machine, or giving --resources gpu=1 on a machine with no GPU,
    stops before its first job, naming the key."""
    cfg = yaml.safe_load((ROOT / "config" / "tiny.yaml").read_text())
    cfg["results"] = str(tmp_path / "results")
    args, visible = [], ""
    if case == "mem_mb":
        cfg["resources"] = {"train_lora": {"gpu": 0, "mem_mb": 10**8, "runtime": 10}}
        want = "resources.train_lora.mem_mb=100000000, but this machine has"
    elif case == "gpu":
        cfg["resources"] = {"train_lora": {"gpu": 2, "mem_mb": 1000, "runtime": 10}}
        want, visible = "resources.train_lora.gpu=2, but this machine has 1 GPU(s)", "0"
    else:
        args = ["--resources", "gpu=1"]
        want = "--resources gpu=1, but this machine has 0 GPU(s)"
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": visible}
    proc = subprocess.run([str(BIN / "snakemake"), "--cores", "1", "--replace-workflow-config", "--configfile",
                           str(path), *args], cwd=ROOT, capture_output=True, text=True, env=env, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and want in out, out[-3000:]
    assert not (tmp_path / "results" / "data").exists(), "a job ran"
