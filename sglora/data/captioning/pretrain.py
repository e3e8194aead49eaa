"""Pretraining the embedded benchmark's captioner: a small Qwen2-VL (:mod:`.tiny`) taught to
caption the world's images from the prompt of supplementary Figure 6.

Every training example is the chat the captioning step sends (:func:`.prompt.build_messages`):
the instruction as the system turn, the demonstrations (image, "A photo of {class}." and
the caption to imitate) as earlier turns, then the query image with its class; the target
is one of the query image's own captions (drawn anew each time it is seen), followed by
``<|im_end|>``. Only the target's tokens are scored. The demonstrations are the same in
every prompt and are saved with the model (``demonstrations.json`` and their images), so
the captioning step prompts with exactly what the model was trained with.

The model trains on the training images of the given tasks only (the pipeline passes the
seen tasks, the experts'), never on a test image: the captioner writes the captions of
unseen classes, as Qwen2-VL does for classes its own training never named.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from ...io import SGLoraError, Settings, atomic_path, reading, setting, write_json
from .prompt import DEMONSTRATIONS_FILE, INSTRUCTION, QUERY_TEMPLATE, Demonstration, build_messages


@dataclass
class CaptionerSpec(Settings):
    """How the embedded benchmark's Qwen2-VL captioner is pretrained (config section
    ``captioner.pretrain``)."""

    section: ClassVar[str] = "captioner.pretrain"

    steps: int = setting(1500, "optimizer steps", min=1)
    batch_size: int = setting(32, "prompts per step", min=1)
    lr: float = setting(3e-3, "peak AdamW learning rate (one-cycle schedule)", above=0)
    demonstrations: int = setting(2, "in-context demonstrations in every prompt (Figure 6: two)", min=0)
    image_size: int = setting(48, "images are resized to this many pixels square (a multiple of 2 x patch_size)", min=1)
    sizes: dict | None = setting(None, "model sizes (sglora.data.captioning.tiny.build_qwen2vl: hidden_size, layers, "
                                       "heads, vision_dim, vision_layers, patch_size; and vocab_size)")


@dataclass
class Example:
    """One training image: its path, the class it is captioned for and its own captions."""

    image: str
    class_name: str
    captions: list[str]


def training_examples(worlds: list[str | Path], tasks: list[str] | None = None) -> list[Example]:
    """The training-split images of ``tasks`` (all tasks: None) in the worlds' manifests, with
    the worlds' own captions, sorted by image path. A task named but absent is an error."""
    import pyarrow.parquet as pq

    from ..manifest import read_manifest

    out, seen = [], set()
    for world in worlds:
        world = Path(world)
        manifest = read_manifest(world / "manifest.raw.parquet").to_pylist()
        with reading(world / "captions.parquet", "world captions table (Parquet)"):
            captions = {r["image_path"]: r["captions"] for r in pq.read_table(world / "captions.parquet").to_pylist()}
        for row in manifest:
            if row["split"] != "train" or (tasks is not None and row["task"] not in tasks):
                continue
            seen.add(row["task"])
            if row["image_path"] not in captions:
                raise SGLoraError(f"{world / 'captions.parquet'}: no captions for {row['image_path']}")
            out.append(Example(row["image_path"], row["class_name"], list(captions[row["image_path"]])))
    missing = sorted(set(tasks or ()) - seen)
    if missing:
        raise SGLoraError(f"pretrain-captioner: tasks {missing} have no training images in {[str(w) for w in worlds]}")
    if not out:
        raise SGLoraError(f"pretrain-captioner: no training images in {[str(w) for w in worlds]}")
    return sorted(out, key=lambda e: e.image)


def choose_demonstrations(examples: list[Example], n: int) -> list[Demonstration]:
    """``n`` demonstrations: the first image (by path) of ``n`` different classes, spread over
    the classes in sorted order, each with its first caption."""
    by_class: dict[str, Example] = {}
    for e in examples:
        by_class.setdefault(e.class_name, e)
    names = sorted(by_class)
    if n > len(names):
        raise SGLoraError(f"captioner.pretrain.demonstrations is {n}; the training images have {len(names)} classes")
    picks = [names[(i * len(names)) // n] for i in range(n)]
    return [Demonstration(by_class[c].image, c, by_class[c].captions[0]) for c in picks]


class _Encoder:
    """Token ids of prompts and targets, and pixel rows of images, each computed once."""

    def __init__(self, processor, demos: list[Demonstration], instruction: str, query_template: str):
        from PIL import Image

        self.processor, self.demos = processor, demos
        self.instruction, self.query_template = instruction, query_template
        self.demo_images = []
        for d in demos:
            with Image.open(d.image) as img:
                self.demo_images.append(img.convert("RGB"))
        self.end = processor.tokenizer.convert_tokens_to_ids("<|im_end|>")
        self._prompts: dict[str, tuple[list[int], list[int]]] = {}
        self._targets: dict[str, list[int]] = {}

    def pixels(self, images: list) -> tuple:
        """(pixel rows, grid per image) of PIL images, as the processor makes them."""
        enc = self.processor.image_processor(images=images, return_tensors="pt")
        return enc["pixel_values"], enc["image_grid_thw"]

    def prompt(self, class_name: str, query_image) -> tuple[list[int], list[int]]:
        """(input ids, multimodal token types) of the chat up to the assistant's turn; the
        same for every image of a class (the images are of one size)."""
        if class_name not in self._prompts:
            messages = build_messages(query_image, class_name, self.demos, self.instruction, self.query_template,
                                      self.demo_images)
            text = self.processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            enc = self.processor(text=[text], images=self.demo_images + [query_image], return_tensors="pt")
            self._prompts[class_name] = (enc["input_ids"][0].tolist(), enc["mm_token_type_ids"][0].tolist())
        return self._prompts[class_name]

    def target(self, caption: str) -> list[int]:
        if caption not in self._targets:
            self._targets[caption] = self.processor.tokenizer(caption)["input_ids"] + [self.end]
        return self._targets[caption]


def pretrain_captioner(out_dir: str | Path, examples: list[Example], spec: CaptionerSpec | None = None,
                       seed: int = 0, threads: int | None = None, instruction: str = INSTRUCTION,
                       query_template: str = QUERY_TEMPLATE, progress: bool = True) -> dict:
    """Train a small Qwen2-VL on ``examples`` (Figure 6 prompts, see the module docstring) and
    save it, its processor, its demonstrations and its loss curve into ``out_dir``."""
    import torch
    from PIL import Image
    from tqdm import tqdm

    from ...backbone.contrastive import optimizer_step, seed_everything
    from .tiny import build_qwen2vl, qwen_image_processor, qwen_processor, qwen_tokenizer, save_qwen2vl

    spec = spec or CaptionerSpec()
    sizes = dict(spec.sizes or {})
    seed_everything(seed, threads)
    demos = choose_demonstrations(examples, spec.demonstrations)
    names = sorted({e.class_name for e in examples})
    texts = [instruction] + [query_template.format(class_name=n) for n in names]
    texts += [c for e in examples for c in e.captions]
    tokenizer = qwen_tokenizer(texts, vocab_size=sizes.pop("vocab_size", 700))
    model = build_qwen2vl(tokenizer, seed=seed, **sizes)
    patch = model.config.vision_config.patch_size
    side = max(2 * patch, round(spec.image_size / (2 * patch)) * 2 * patch)
    image_processor = qwen_image_processor(patch, side * side, side * side)
    processor = qwen_processor(image_processor, tokenizer)
    encoder = _Encoder(processor, demos, instruction, query_template)

    images = []
    for e in tqdm(examples, desc="captioner images", disable=not progress):
        with Image.open(e.image) as img:
            images.append(img.convert("RGB"))
    demo_rows, demo_grid = encoder.pixels(encoder.demo_images) if demos else (None, None)
    rows, grid = encoder.pixels(images)
    per_image = int(grid[0].prod())
    if not bool((grid == grid[0]).all()):
        raise SGLoraError("pretrain-captioner: the training images differ in size after resizing")
    rows = rows.view(len(images), per_image, -1)

    opt = torch.optim.AdamW(model.parameters(), lr=spec.lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=spec.lr, total_steps=spec.steps, pct_start=0.1)
    gen = torch.Generator().manual_seed(seed)
    pad = tokenizer.pad_token_id
    order, at, losses, run = torch.randperm(len(examples), generator=gen), 0, [], 0.0
    model.train()
    bar = tqdm(range(spec.steps), desc="pretrain captioner", disable=not progress)
    for step in bar:
        if at + spec.batch_size > len(order):
            order, at = torch.randperm(len(examples), generator=gen), 0
        idx = order[at: at + spec.batch_size].tolist()
        at += spec.batch_size
        picks = torch.randint(0, 1 << 30, (len(idx),), generator=gen).tolist()
        seqs = []
        for i, pick in zip(idx, picks):
            ids, kinds = encoder.prompt(examples[i].class_name, images[i])
            target = encoder.target(examples[i].captions[pick % len(examples[i].captions)])
            seqs.append((ids + target, kinds + [0] * len(target), len(ids)))
        width = max(len(s[0]) for s in seqs)
        input_ids = torch.full((len(seqs), width), pad)
        labels = torch.full((len(seqs), width), -100)
        types = torch.zeros((len(seqs), width), dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for b, (ids, kinds, n_prompt) in enumerate(seqs):
            input_ids[b, : len(ids)] = torch.tensor(ids)
            labels[b, n_prompt: len(ids)] = torch.tensor(ids[n_prompt:])
            types[b, : len(ids)] = torch.tensor(kinds)
            mask[b, : len(ids)] = 1
        pixel_parts, grids = [], []
        for i in idx:  # demonstrations first, the query last, prompt after prompt
            if demos:
                pixel_parts.append(demo_rows)
                grids.append(demo_grid)
            pixel_parts.append(rows[i])
            grids.append(grid[:1])
        loss = model(input_ids=input_ids, attention_mask=mask, labels=labels, mm_token_type_ids=types,
                     pixel_values=torch.cat(pixel_parts), image_grid_thw=torch.cat(grids)).loss
        optimizer_step(opt, loss, "pretrain captioner", step, losses, unit="step", clip_norm=1.0)
        sched.step()
        run = loss.item() if step == 0 else 0.95 * run + 0.05 * loss.item()
        if step % 25 == 0 or step == spec.steps - 1:
            losses.append(round(run, 4))
            bar.set_postfix(loss=f"{run:.3f}")
    model.eval()
    with atomic_path(out_dir, directory=True) as tmp:
        tmp = Path(tmp)
        save_qwen2vl(tmp, model, processor)
        saved = []
        for k, d in enumerate(demos):
            name = f"demonstrations/{k}{Path(d.image).suffix}"
            (tmp / name).parent.mkdir(exist_ok=True)
            shutil.copyfile(d.image, tmp / name)
            saved.append({"image": name, "class_name": d.class_name, "caption": d.caption, "source": d.image})
        write_json(tmp / DEMONSTRATIONS_FILE, saved)
        write_json(tmp / "pretraining.json", {"steps": spec.steps, "loss_every_25_steps": losses, "images": len(examples),
                                              "classes": names, "seed": seed, "image_side": side})
    return {"loss": losses[-1], "parameters": sum(p.numel() for p in model.parameters()), "images": len(examples),
            "epochs": round(spec.steps * spec.batch_size / len(examples), 2)}

