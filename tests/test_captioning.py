"""The in-context captioner on a tiny random Qwen2-VL loaded with from_pretrained."""

from __future__ import annotations

import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from sglora.data.captioning import (
    INSTRUCTION,
    Demonstration,
    build_messages,
    caption_manifest,
    clean_caption,
    is_degenerate,
    load_processor,
    parse_options,
)
from sglora.io import SGLoraError
from sglora.data.manifest import make_manifest, read_manifest, write_manifest

# a random model writes gibberish: let any non-empty text through, and forbid an
# immediate end-of-text so there is always something to keep
RELAXED = dict(min_words=1, max_repeat_fraction=1.0, min_new_tokens=4, max_new_tokens=8, progress=False)


@pytest.fixture(scope="module")
def tiny_qwen(tmp_path_factory):
    """Build and save the tiny Qwen2-VL once; every test loads it from disk, offline."""
    from tiny_qwen import save_tiny_qwen2vl

    old = os.environ.get("HF_HUB_OFFLINE")
    os.environ["HF_HUB_OFFLINE"] = "1"
    yield str(save_tiny_qwen2vl(tmp_path_factory.mktemp("tiny_qwen")))
    if old is None:
        os.environ.pop("HF_HUB_OFFLINE", None)
    else:
        os.environ["HF_HUB_OFFLINE"] = old


def image(path, size, seed=0):
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(path)
    return str(path)


@pytest.fixture
def workdir(tmp_path):
    """Five images (cat x3, dog x2, both splits) in a manifest, and two demonstrations."""
    rows = []
    for i in range(5):
        name = "cat" if i < 3 else "dog"
        rows.append(
            dict(dataset="test", task=name, task_name=name, class_name=name, description=f"a photo of a {name}",
                 image_path=image(tmp_path / f"img{i}.png", (12 + i, 10), seed=i), captions=[],
                 split="train" if i % 2 == 0 else "test")
        )  # fmt: skip
    write_manifest(tmp_path / "manifest.parquet", make_manifest(rows))
    demos = [
        dict(image=image(tmp_path / "pug.png", (8, 8), 10), class_name="pug", caption="The pug has a fawn coat."),
        dict(image=image(tmp_path / "birman.png", (16, 8), 11), class_name="birman",
             caption="The Birman has blue eyes."),  # fmt: skip
    ]
    return tmp_path, demos


def test_tiny_qwen_loads_with_auto_classes(tiny_qwen):
    from transformers import AutoProcessor, Qwen2VLForConditionalGeneration

    processor = AutoProcessor.from_pretrained(tiny_qwen)
    model = Qwen2VLForConditionalGeneration.from_pretrained(tiny_qwen)
    assert sum(p.numel() for p in model.parameters()) < 1_000_000
    tok = processor.tokenizer
    for special in ["<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>",
                    "<|video_pad|>", "<|endoftext|>"]:  # fmt: skip
        assert len(tok(special, add_special_tokens=False).input_ids) == 1
    assert model.config.image_token_id == tok.convert_tokens_to_ids("<|image_pad|>")
    assert "<|im_start|>" in processor.chat_template
    assert type(processor.image_processor).__name__ == "Qwen2VLImageProcessorPil"


def test_loads_a_hub_style_checkpoint(tiny_qwen, tmp_path):
    """Real Qwen2-VL checkpoints name ``Qwen2VLProcessor`` (which needs torchvision for its
    video part) and keep the image processor in preprocessor_config.json; load_processor
    must still give a working image-only processor."""
    import shutil
    from pathlib import Path

    src, dst = Path(tiny_qwen), tmp_path / "hub_style"
    dst.mkdir()
    for name in ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json"):
        shutil.copy(src / name, dst / name)
    tok_cfg = json.loads((src / "tokenizer_config.json").read_text())
    tok_cfg.pop("processor_class", None)
    (dst / "tokenizer_config.json").write_text(json.dumps(tok_cfg))
    image_cfg = dict(json.loads((src / "processor_config.json").read_text())["image_processor"])
    image_cfg["processor_class"] = "Qwen2VLProcessor"
    (dst / "preprocessor_config.json").write_text(json.dumps(image_cfg))
    (dst / "chat_template.json").write_text(json.dumps({"chat_template": (src / "chat_template.jinja").read_text()}))
    processor = load_processor(str(dst))
    text = processor.apply_chat_template(
        build_messages("x.png", "cat", []), tokenize=False, add_generation_prompt=True
    )
    enc = processor(text=[text], images=[Image.new("RGB", (16, 16))], return_tensors="pt")
    assert enc["image_grid_thw"].tolist() == [[1, 4, 4]]
    assert processor.tokenizer.padding_side == "left"


def test_prompt_layout_and_image_tokens(tiny_qwen, workdir):
    tmp, demos = workdir
    processor = load_processor(tiny_qwen)
    demonstrations = [Demonstration(**d) for d in demos]
    target = image(tmp / "target.png", (16, 16), 12)
    messages = build_messages(target, "cat", demonstrations)
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user", "assistant", "user"]
    text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    order = [INSTRUCTION, "A photo of pug.", "The pug has a fawn coat.", "A photo of birman.",
             "The Birman has blue eyes.", "A photo of cat."]  # fmt: skip
    positions = [text.index(s) for s in order]
    assert positions == sorted(positions)
    assert text.count("<|image_pad|>") == 3
    assert text.endswith("A photo of cat.<|im_end|>\n<|im_start|>assistant\n")
    assert text.index("<|image_pad|>", positions[-2]) < positions[-1]  # target image just before its query
    # the processor expands each image placeholder to that image's token count, in order:
    # 8x8 -> 1 token, 16x8 -> 2, 16x16 -> 4 (4-pixel patches, 2x2 merge)
    images = [Image.open(p).convert("RGB") for p in (demos[0]["image"], demos[1]["image"], target)]
    enc = processor(text=[text], images=images, return_tensors="pt")
    ids = enc["input_ids"][0].tolist()
    start, pad = processor.tokenizer.convert_tokens_to_ids(["<|vision_start|>", "<|image_pad|>"])
    runs = []
    for i, tok in enumerate(ids):
        if tok == start:
            n = 0
            while ids[i + 1 + n] == pad:
                n += 1
            runs.append(n)
    expected = (enc["image_grid_thw"].prod(-1) // 4).tolist()
    assert runs == expected == [1, 2, 4]


def test_clean_caption():
    assert clean_caption("  Output: A brown dog runs.  ") == "A brown dog runs."
    assert clean_caption("Input: A photo of pug.\nOutput: The pug sits on a rock.") == "The pug sits on a rock."
    assert clean_caption('"A cat on a mat."\nInput: A photo of dog.') == "A cat on a mat."
    assert clean_caption("assistant\nA   red\n flower") == "A red flower"
    assert clean_caption("Input: A photo of pug.") == ""
    assert clean_caption("A close-up image: a dog on grass.") == "A close-up image: a dog on grass."
    assert clean_caption("A dog\x00 on\x1b grass\ufffd.\x7f") == "A dog on grass."
    assert clean_caption("A\tdog\r\non grass.") == "A dog on grass."


def test_degenerate_filter():
    assert is_degenerate("")
    assert is_degenerate("   ")
    assert is_degenerate("A dog.")  # two words
    assert is_degenerate("dog dog dog dog cat")  # one word is 80%
    assert is_degenerate("the the the cat", max_repeat_fraction=0.5)
    assert not is_degenerate("The pug has a fawn coat and a black mask.")
    assert not is_degenerate("A dog.", min_words=1)
    assert not is_degenerate("dog dog dog", min_words=1, max_repeat_fraction=1.0)


def test_caption_end_to_end_and_resume(tiny_qwen, workdir):
    tmp, demos = workdir
    kwargs = dict(model=tiny_qwen, demonstrations=demos, shard_size=2, batch_size=2, **RELAXED)
    out, shards = tmp / "out.parquet", tmp / "shards"
    summary = caption_manifest(tmp / "manifest.parquet", out, "qwen2vl", shards, **kwargs)
    assert summary == dict(images=5, shards=3, shards_done=3, shards_skipped=0, rejected=summary["rejected"],
                           incomplete=[])  # fmt: skip
    table = read_manifest(out)
    assert all(len(c) == 4 and all(c) for c in table.column("captions").to_pylist())
    assert set(table.column("caption_model").to_pylist()) == {tiny_qwen}
    assert len(set(table.column("caption_prompt_hash").to_pylist())) == 1
    assert None not in table.column("caption_seed").to_pylist()
    files = sorted((p for p in shards.rglob("shard-*.parquet")))
    assert len(files) == 3 and len({f.parent for f in files}) == 1
    assert (files[0].parent / "settings.json").is_file()

    # rerun: nothing to do
    again = caption_manifest(tmp / "manifest.parquet", tmp / "out2.parquet", "qwen2vl", shards, **kwargs)
    assert (again["shards_done"], again["shards_skipped"]) == (0, 3)
    # delete one shard: only that one is made again, the same way (same seed)
    mtimes = {f: f.stat().st_mtime_ns for f in files}
    files[1].unlink()
    resumed = caption_manifest(tmp / "manifest.parquet", tmp / "out3.parquet", "qwen2vl", shards, **kwargs)
    assert (resumed["shards_done"], resumed["shards_skipped"]) == (1, 2)
    assert files[1].is_file()
    assert files[0].stat().st_mtime_ns == mtimes[files[0]] and files[2].stat().st_mtime_ns == mtimes[files[2]]
    assert read_manifest(tmp / "out3.parquet").column("captions").to_pylist() == table.column("captions").to_pylist()

    # other sampling settings: a new shard folder, nothing reused; the old settings' folder is cleaned up
    (shards / "mine").mkdir()  # not a shard folder: left alone
    other = caption_manifest(tmp / "manifest.parquet", tmp / "out4.parquet", "qwen2vl", shards,
                             **dict(kwargs, temperature=1.3))  # fmt: skip
    assert other["shards_done"] == 3
    assert not files[0].parent.exists() and (shards / "mine").is_dir()
    assert len({f.parent for f in shards.rglob("shard-*.parquet")}) == 1


def test_caption_only_some_splits(tiny_qwen, workdir):
    tmp, demos = workdir
    summary = caption_manifest(tmp / "manifest.parquet", tmp / "out.parquet", "qwen2vl", tmp / "shards",
                               model=tiny_qwen, demonstrations=demos, splits=["test"], captions_per_image=2,
                               **RELAXED)  # fmt: skip
    assert summary["images"] == 2
    for row in read_manifest(tmp / "out.parquet").to_pylist():
        if row["split"] == "test":
            assert len(row["captions"]) == 2 and row["caption_model"] == tiny_qwen
        else:
            assert row["captions"] == [] and row["caption_model"] is None and row["caption_seed"] is None


def test_rejected_captions_are_retried_then_stop_the_step(tiny_qwen, workdir):
    tmp, demos = workdir
    strict = dict(RELAXED, min_words=1000)  # nothing can pass
    with pytest.raises(SGLoraError) as err:
        caption_manifest(tmp / "manifest.parquet", tmp / "out.parquet", "qwen2vl", tmp / "shards",
                         model=tiny_qwen, demonstrations=demos, captions_per_image=2, max_retries=1,
                         **strict)  # fmt: skip
    message = str(err.value)
    assert "rejected every caption" in message and "min_words=1000" in message
    assert "20 generations rejected" in message  # images x captions x (1 + retries)
    assert "5 of 5 images have no caption" in message
    assert not (tmp / "out.parquet").exists()
    assert pq.read_table(next((tmp / "shards").rglob("shard-*.parquet"))).column("rejected").to_pylist()[0] == 4


def test_synthetic_backend(workdir):
    tmp, _ = workdir
    manifest = read_manifest(tmp / "manifest.parquet")
    paths = manifest.column("image_path").to_pylist()
    captions = pa.table({"image_path": paths, "captions": [[f"caption {i} a", f"caption {i} b"] for i in range(5)]})
    pq.write_table(captions, tmp / "world_captions.parquet")
    opts = dict(captions_file=str(tmp / "world_captions.parquet"), shard_size=3, progress=False)
    summary = caption_manifest(tmp / "manifest.parquet", tmp / "out.parquet", "synthetic", tmp / "shards", **opts)
    assert (summary["images"], summary["shards_done"], summary["incomplete"]) == (5, 2, [])
    out = read_manifest(tmp / "out.parquet")
    by_path = dict(zip(out.column("image_path").to_pylist(), out.column("captions").to_pylist()))
    assert by_path[paths[0]] == ["caption 0 a", "caption 0 b"]
    assert set(out.column("caption_model").to_pylist()) == {"synthetic"}
    again = caption_manifest(tmp / "manifest.parquet", tmp / "out.parquet", "synthetic", tmp / "shards", **opts)
    assert again["shards_skipped"] == 2
    pq.write_table(captions.slice(1), tmp / "world_captions.parquet")  # a different file: new folder
    with pytest.raises(SGLoraError, match=rf"world_captions.parquet: no row with image_path '{paths[0]}'"):
        caption_manifest(tmp / "manifest.parquet", tmp / "out.parquet", "synthetic", tmp / "shards", **opts)


def test_none_backend_keeps_captions(workdir):
    tmp, _ = workdir
    summary = caption_manifest(tmp / "manifest.parquet", tmp / "out.parquet", "none", tmp / "shards")
    assert summary["images"] == 0 and not (tmp / "shards").exists()
    out = read_manifest(tmp / "out.parquet")
    assert out.column("captions").to_pylist() == read_manifest(tmp / "manifest.parquet").column("captions").to_pylist()
    assert set(out.column("caption_model").to_pylist()) == {None}


def test_option_errors(tmp_path):
    with pytest.raises(SGLoraError, match=r"unknown key\(s\) \['temprature'\]"):
        parse_options("qwen2vl", {"temprature": 0.5})
    with pytest.raises(SGLoraError, match=r"backend 'llava' unknown"):
        parse_options("llava", {})
    with pytest.raises(SGLoraError, match=r"'demonstrations\[0\].caption' missing"):
        parse_options("qwen2vl", {"demonstrations": [{"image": "x.png", "class_name": "pug"}]})
    with pytest.raises(SGLoraError, match=r"needs the option 'captions_file'"):
        parse_options("synthetic", {})
    assert parse_options("qwen2vl", {}).trust_remote_code is False


def test_cli(tmp_path, workdir, capsys):
    from sglora.cli import build_parser, main

    parser = build_parser()
    assert "Figure 6" in parser._subparsers._group_actions[0].choices["caption"].description
    # manifest from a tiny Flickr30K layout
    root = tmp_path / "flickr"
    (root / "imgs").mkdir(parents=True)
    image(root / "imgs" / "a.jpg", (8, 8))
    (root / "karpathy.json").write_text(json.dumps(
        {"images": [{"filename": "a.jpg", "split": "test", "sentences": [{"raw": "A dog."}]}]}
    ))  # fmt: skip
    out = tmp_path / "m.parquet"
    assert main(["manifest", "--dataset", "flickr30k", "--root", str(root), "--out", str(out),
                 "--option", "images_dir=imgs", "--options", '{"split_file": "karpathy.json"}']) == 0  # fmt: skip
    assert json.loads(capsys.readouterr().out)["rows"] == 1
    assert read_manifest(out).column("captions").to_pylist() == [["A dog."]]
    # caption with the synthetic backend
    wtmp, _ = workdir
    paths = read_manifest(wtmp / "manifest.parquet").column("image_path").to_pylist()
    pq.write_table(pa.table({"image_path": paths, "captions": [["x y z"]] * 5}), wtmp / "c.parquet")
    options = json.dumps({"captions_file": str(wtmp / "c.parquet"), "progress": False})
    assert main(["caption", "--manifest", str(wtmp / "manifest.parquet"), "--out", str(wtmp / "o.parquet"),
                 "--backend", "synthetic", "--shard-dir", str(wtmp / "s"), "--options", options]) == 0  # fmt: skip
    assert json.loads(capsys.readouterr().out)["images"] == 5
