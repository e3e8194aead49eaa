"""The GPU suite: ``pytest -m gpu`` runs the heavy steps on CUDA with the tiny models
(seconds each). Without CUDA the module skips with one line.

``SGLORA_GPU_SUITE_DEVICE=cpu`` runs the same tests on the CPU, to check the suite
itself on a machine without a GPU (the bf16 and CUDA-memory assertions then relax).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import TINY_TRAIN

DEVICE = os.environ.get("SGLORA_GPU_SUITE_DEVICE", "cuda")
CUDA = DEVICE.startswith("cuda")

pytestmark = pytest.mark.gpu
if CUDA and not torch.cuda.is_available():
    pytest.skip("no CUDA device: the GPU suite (pytest -m gpu) needs one", allow_module_level=True)


def _train(clip, world, out, **training):
    from sglora.experts.training import TrainSpec, read_snapshots, train_lora
    from sglora.experts.lora import LoraSpec

    spec = TrainSpec.from_dict({**TINY_TRAIN, "device": DEVICE, **training})
    info = train_lora(clip, world / "manifest.parquet", "tiger_lily", out, LoraSpec(), spec, threads=1, progress=False)
    return info, read_snapshots(out)[0]


def test_bf16_expert_step(tiny_world, tiny_clip, tmp_path):
    """Expert training on the GPU with bf16 autocast: finite, close to float32, and on
    CUDA visibly not float32 (autocast took effect)."""
    if CUDA:
        torch.cuda.reset_peak_memory_stats()
    bf16, snaps = _train(tiny_clip, tiny_world, tmp_path / "bf16", bf16=True)
    fp32, ref = _train(tiny_clip, tiny_world, tmp_path / "fp32", bf16=False)
    assert np.isfinite(snaps).all() and all(np.isfinite(bf16["losses"]))
    assert abs(bf16["losses"][0] - fp32["losses"][0]) <= 0.05 * abs(fp32["losses"][0])
    if CUDA:
        assert torch.cuda.max_memory_allocated() > 0
        assert bf16["losses"] != fp32["losses"]
    print(f"bf16 vs fp32 first-epoch loss: {bf16['losses'][0]:.5f} vs {fp32['losses'][0]:.5f}")


def test_two_gpu_runs_agree_within_tolerance(tiny_world, tiny_clip, tmp_path):
    """Determinism on the device: two runs with the same seeds; the measured difference
    is printed (README: the GPU tolerance) and must stay below 1e-3 relative."""
    _, a = _train(tiny_clip, tiny_world, tmp_path / "a")
    _, b = _train(tiny_clip, tiny_world, tmp_path / "b")
    rel = float(np.abs(a - b).max() / (np.abs(a).max() + 1e-12))
    print(f"two {DEVICE} runs: max |diff| {np.abs(a - b).max():.3g}, relative {rel:.3g}")
    assert rel <= 1e-3


def test_cvae_training_and_sampling(tiny_repo, tiny_embeddings, tmp_path):
    """train-cvae on the device, then SG-LoRA samples from it (through the CLI)."""
    from sglora.generator.candidates import load_candidates
    from sglora.cli import main

    cvae = {"latent": 4, "hidden": 32, "cond_dim": 16, "epochs": 5, "batch_size": 4, "device": DEVICE}
    prior = {"k": 2, "tau": 0.05, "modality": "textual"}
    assert main(["train-cvae", "--repository", str(tiny_repo), "--cvae", json.dumps(cvae), "--prior",
                 json.dumps(prior), "--out", str(tmp_path / "cvae")]) == 0
    out = tmp_path / "sglora.safetensors"
    assert main(["candidates", "--method", "sglora", "--tasks", "calla_lily", "--dataset", "world", "--repository",
                 str(tiny_repo), "--embeddings", str(tiny_embeddings), "--cvae", str(tmp_path / "cvae"), "--prior",
                 json.dumps(prior), "--sampling", json.dumps({"samples": 3, "seed": 0}), "--out", str(out)]) == 0
    vectors, _, _ = load_candidates(out)
    assert vectors["calla_lily"].shape[0] == 3 and np.isfinite(vectors["calla_lily"]).all()


def test_merged_lora_evaluation_matches_the_cpu(tiny_world, tiny_clip, tiny_experts, tmp_path):
    """A LoRA merged into the weights on the device encodes like the CPU (TF32
    convolutions allow ~1e-3), and evaluate on the device writes the same metrics file."""
    from sglora.backbone.clip import encode_images, load_clip
    from sglora.generator.candidates import load_candidates
    from sglora.cli import main
    from sglora.evaluation.scoring import evaluate_method, load_task
    from sglora.data.images import build_cache
    from sglora.experts.lora import LoraSpec, merged

    cands = tmp_path / "oracle.safetensors"
    assert main(["candidates", "--method", "oracle", "--loras", str(tiny_experts["tiger_lily"]), "--out", str(cands)]) == 0
    vectors, layout, _ = load_candidates(cands)
    _, processor = load_clip(tiny_clip)
    manifest = tiny_world / "manifest.parquet"
    from sglora.data.manifest import read_manifest

    build_cache(read_manifest(manifest).column("image_path").to_pylist(), processor, tmp_path / "cache")
    feats = {}
    for dev in ("cpu", DEVICE):
        model, processor = load_clip(tiny_clip, device=dev)
        data = load_task(manifest, "tiger_lily", processor, cache=tmp_path / "cache")
        with merged(model, vectors["tiger_lily"][0], layout, LoraSpec().scaling):
            feats[dev] = encode_images(model, data.pixels)
    assert float((feats["cpu"] - feats[DEVICE]).abs().max()) <= 5e-3
    res = evaluate_method(tiny_clip, manifest, ["tiger_lily"], "oracle", tmp_path / "metrics", cands,
                          LoraSpec().scaling, device=DEVICE, cache=tmp_path / "cache")
    assert set(res["tiger_lily"]) >= {"i2t_r1", "t2i_r1"}


def test_tiny_qwen2vl_captioning_batch(tmp_path):
    """One batch of in-context captions from the tiny random Qwen2-VL on the device (bf16)."""
    from PIL import Image

    from sglora.data.captioning import caption_manifest
    from sglora.data.manifest import make_manifest, read_manifest, write_manifest
    from tiny_qwen import save_tiny_qwen2vl

    rng = np.random.default_rng(0)

    def image(name):
        path = tmp_path / name
        Image.fromarray(rng.integers(0, 255, (10, 12, 3), dtype=np.uint8)).save(path)
        return str(path)

    rows = [dict(dataset="t", task="cat", task_name="cat", class_name="cat", description="a photo of a cat",
                 image_path=image(f"img{i}.png"), captions=[], split="train") for i in range(2)]
    write_manifest(tmp_path / "m.parquet", make_manifest(rows))
    demos = [dict(image=image("pug.png"), class_name="pug", caption="The pug has a fawn coat."),
             dict(image=image("birman.png"), class_name="birman", caption="The Birman has blue eyes.")]
    model = str(save_tiny_qwen2vl(tmp_path / "qwen"))
    summary = caption_manifest(tmp_path / "m.parquet", tmp_path / "out.parquet", "qwen2vl", tmp_path / "shards",
                               model=model, demonstrations=demos, batch_size=2, captions_per_image=1, device=DEVICE,
                               min_words=1, max_repeat_fraction=1.0, min_new_tokens=4, max_new_tokens=8,
                               progress=False)
    assert summary["images"] == 2 and not summary["incomplete"]
    assert all(c for c in read_manifest(tmp_path / "out.parquet").column("captions").to_pylist())
