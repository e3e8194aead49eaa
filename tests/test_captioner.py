"""The embedded worlds' captioner (sglora/data/captioning/pretrain.py): a small Qwen2-VL trained
with the Figure 6 prompt, saved like a hub checkpoint and loaded by the caption step's own
code; deterministic; the caption step's shards know its weights."""

from __future__ import annotations

import json

import pytest
from PIL import Image
from safetensors.torch import load_file

from sglora.data.captioning import INSTRUCTION, build_messages, caption_manifest, load_processor, parse_options
from sglora.data.captioning.pretrain import (DEMONSTRATIONS_FILE, CaptionerSpec, _Encoder, choose_demonstrations,
                                             pretrain_captioner, training_examples)
from sglora.data.manifest import read_manifest
from sglora.data.world import generate_world
from sglora.io import SGLoraError

SIZES = dict(hidden_size=32, layers=1, heads=2, vision_dim=16, vision_layers=1, patch_size=4, vocab_size=300)
SPEC = CaptionerSpec(steps=3, batch_size=4, image_size=32, sizes=SIZES)
CLASSES = ["scottish terrier", "tiger lily", "boston terrier"]
RELAXED = dict(min_words=1, max_repeat_fraction=1.0, min_new_tokens=2, max_new_tokens=6, max_retries=8, progress=False)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("captioner_world")
    generate_world(root / "w", classes=CLASSES, images_per_class=6, test_per_class=2, image_size=32, progress=False)
    return root / "w"


@pytest.fixture(scope="module")
def captioner(world, tmp_path_factory):
    examples = training_examples([world], ["scottish_terrier", "tiger_lily"])
    out = tmp_path_factory.mktemp("captioner") / "model"
    pretrain_captioner(out, examples, SPEC, seed=0, threads=1, progress=False)
    return out


def test_training_examples_are_the_named_tasks_training_images(world):
    examples = training_examples([world], ["scottish_terrier", "tiger_lily"])
    manifest = read_manifest(world / "manifest.raw.parquet").to_pylist()
    train = {r["image_path"] for r in manifest if r["split"] == "train" and r["task"] in ("scottish_terrier", "tiger_lily")}
    assert {e.image for e in examples} == train and len(examples) == 8  # 4 training images each, no test image
    assert all(len(e.captions) == 4 for e in examples)
    with pytest.raises(SGLoraError, match="pug"):
        training_examples([world], ["scottish_terrier", "pug"])
    demos = choose_demonstrations(examples, 2)
    assert [d.class_name for d in demos] == ["scottish terrier", "tiger lily"]
    with pytest.raises(SGLoraError, match="captioner.pretrain.demonstrations"):
        choose_demonstrations(examples, 3)


def test_the_captioner_loads_and_captions_through_the_hub_code_path(captioner, world, tmp_path):
    """The saved folder is a Qwen2-VL checkpoint: the caption step (qwen2vl backend) loads it
    with from_pretrained and captions a manifest with its demonstrations; a rerun reuses
    every shard and writes the same captions (deterministic, resumable)."""
    from transformers import AutoConfig

    assert AutoConfig.from_pretrained(captioner).model_type == "qwen2_vl"
    demos = json.loads((captioner / DEMONSTRATIONS_FILE).read_text())
    assert [d["class_name"] for d in demos] == ["scottish terrier", "tiger lily"]
    assert all((captioner / d["image"]).is_file() for d in demos)
    opts = dict(model=str(captioner), demonstrations_file=str(captioner / DEMONSTRATIONS_FILE), shard_size=4,
                batch_size=4, **RELAXED)
    manifest, shards = world / "manifest.raw.parquet", tmp_path / "shards"
    first = caption_manifest(manifest, tmp_path / "a.parquet", "qwen2vl", shards, **opts)
    assert first["images"] == 18 and first["incomplete"] == []
    captions = read_manifest(tmp_path / "a.parquet").column("captions").to_pylist()
    assert all(len(c) == 4 for c in captions)
    for shard in sorted(shards.rglob("shard-*.parquet"))[::2]:
        shard.unlink()  # a killed run: some shards never written
    again = caption_manifest(manifest, tmp_path / "b.parquet", "qwen2vl", shards, **opts)
    assert again["shards_done"] > 0 and again["shards_skipped"] > 0
    assert read_manifest(tmp_path / "b.parquet").column("captions").to_pylist() == captions


def test_the_training_prompt_is_the_captioning_prompt(captioner, world):
    """What the captioner is trained on is, token for token, the Figure 6 chat the caption step
    sends: the instruction, two demonstrations (image, 'A photo of <class>.', caption), then
    the query image and its class, ending at the assistant's turn."""
    processor = load_processor(str(captioner))
    opts = parse_options("qwen2vl", dict(model=str(captioner), demonstrations_file=str(captioner / DEMONSTRATIONS_FILE)))
    encoder = _Encoder(processor, opts.demonstrations, opts.instruction, opts.query_template)
    path = str(world / "images" / "boston_terrier" / "0001.png")
    query = Image.open(path).convert("RGB")
    ids, types = encoder.prompt("boston terrier", query)
    messages = build_messages(query, "boston terrier", opts.demonstrations, demo_images=encoder.demo_images)
    text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    sent = processor(text=[text], images=encoder.demo_images + [query], return_tensors="pt")
    assert ids == sent["input_ids"][0].tolist() and types == sent["mm_token_type_ids"][0].tolist()
    order = [INSTRUCTION, "A photo of scottish terrier.", opts.demonstrations[0].caption, "A photo of tiger lily.",
             opts.demonstrations[1].caption, "A photo of boston terrier."]
    positions = [text.index(s) for s in order]
    assert positions == sorted(positions) and text.count("<|image_pad|>") == 3
    assert text.endswith("A photo of boston terrier.<|im_end|>\n<|im_start|>assistant\n")
    assert sent["image_grid_thw"].tolist() == [[1, 8, 8]] * 3  # 32 px, 4 px patches


def test_the_captioner_is_deterministic_and_its_seed_matters(captioner, world, tmp_path):
    examples = training_examples([world], ["scottish_terrier", "tiger_lily"])
    pretrain_captioner(tmp_path / "again", examples, SPEC, seed=0, threads=1, progress=False)
    pretrain_captioner(tmp_path / "other", examples, SPEC, seed=1, threads=1, progress=False)
    weights = load_file(captioner / "model.safetensors")
    again, other = load_file(tmp_path / "again" / "model.safetensors"), load_file(tmp_path / "other" / "model.safetensors")
    assert all((weights[k] == again[k]).all() for k in weights)
    assert any((weights[k] != other[k]).any() for k in weights)
    assert (captioner / "tokenizer.json").read_bytes() == (tmp_path / "again" / "tokenizer.json").read_bytes()


def test_retrained_weights_in_the_same_folder_are_not_served_old_shards(world, tmp_path):
    """The shard folder is named by the checkpoint's weights, not only its path: a captioner
    retrained in place captions anew instead of reusing the old model's shards."""
    from sglora.data.captioning.shards import shard_folder

    examples = training_examples([world], ["scottish_terrier", "tiger_lily"])
    model = tmp_path / "model"
    options = lambda: dict(model=str(model), demonstrations_file=str(model / DEMONSTRATIONS_FILE))  # noqa: E731
    pretrain_captioner(model, examples, SPEC, seed=0, threads=1, progress=False)
    before = shard_folder(tmp_path / "shards", "qwen2vl", options())
    pretrain_captioner(model, examples, SPEC, seed=1, threads=1, progress=False)
    assert shard_folder(tmp_path / "shards", "qwen2vl", options()) != before


def test_demonstrations_file_errors(tmp_path, captioner):
    with pytest.raises(SGLoraError, match="both given"):
        parse_options("qwen2vl", dict(demonstrations_file=str(captioner / DEMONSTRATIONS_FILE),
                                      demonstrations=[dict(image="x.png", class_name="x", caption="x")]))
    bad = tmp_path / "demos.json"
    bad.write_text("{not json")
    with pytest.raises(SGLoraError, match=str(bad)):
        parse_options("qwen2vl", dict(demonstrations_file=str(bad)))


def test_a_world_captioned_by_qwen2vl_without_a_model_uses_the_trained_captioner(tmp_path):
    """In config.yaml's DAG with the world's captioner set to qwen2vl (no model): one
    pretrain_captioner job learns from the experts' tasks only (no validation or test task),
    and the world's caption job reads it, prompting with its demonstrations."""
    import yaml

    from conftest import ROOT
    from test_presets import dry_run_jobs

    cfg = yaml.safe_load((ROOT / "config.yaml").read_text())
    results = tmp_path / "results"
    cfg["results"] = str(results)
    cfg["datasets"]["world"]["captioner"] = {"backend": "qwen2vl", "options": {"batch_size": 16}}
    cfg["captioner"] = {"pretrain": {"steps": 10}}
    jobs = dry_run_jobs(cfg, tmp_path)
    (train,) = [j for j in jobs if j["rule"] == "pretrain_captioner"]
    tasks = train["shell"].split("--tasks ")[1].split()[0].strip("'").split(",")
    assert tasks == cfg["experts"]["tasks"]
    assert '"steps": 10' in train["shell"]
    captions = {j["wildcards"]: j for j in jobs if j["rule"] == "caption"}
    world, sketch = captions["dataset=world"], captions["dataset=world_sketch"]
    assert f"{results}/captioner" in world["input"]
    assert f'"model": "{results}/captioner"' in world["shell"]
    assert f'"demonstrations_file": "{results}/captioner/demonstrations.json"' in world["shell"]
    assert f"{results}/captioner" not in sketch["input"] and "synthetic" in sketch["shell"]
    cfg["datasets"]["world"]["captioner"]["options"]["model"] = "Qwen/Qwen2-VL-7B-Instruct"  # a named model: no training
    assert not [j for j in dry_run_jobs(cfg, tmp_path) if j["rule"] == "pretrain_captioner"]
