"""Pretraining the embedded benchmark's CLIP: a small CLIP (:mod:`sglora.backbone.tiny`) trained
contrastively on the world's (image, coarse caption) pairs."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch

from .clip import pixel_values, tokenize
from ..io import Settings, atomic_path, setting, write_json
from .contrastive import clip_loss, optimizer_step, positive_targets, same_text_targets, seed_everything


@dataclass
class PretrainSpec(Settings):
    """How the embedded benchmark's small CLIP is pretrained (config section ``backbone.pretrain``)."""

    section: ClassVar[str] = "backbone.pretrain"

    epochs: int = setting(30, "passes over the (image, coarse caption) pairs", min=1)
    batch_size: int = setting(64, "pairs per step", min=2)
    lr: float = setting(2e-3, "peak AdamW learning rate (one-cycle schedule)", above=0)
    sizes: dict | None = setting(None, "model sizes (sglora.backbone.tiny.build_clip: image_size, patch_size, hidden_size, "
                                       "layers, heads, projection_dim, max_text_length, vocab_size)")


def pretrain_clip(
    out_dir: str | Path,
    image_paths: list[str],
    texts: list[str],
    vocab_texts: list[str],
    epochs: int = 30,
    batch_size: int = 64,
    lr: float = 2e-3,
    seed: int = 0,
    sizes: dict | None = None,
    threads: int | None = None,
    progress: bool = True,
    describes=None,
) -> dict:
    """Pretrain a small CLIP contrastively on (image, coarse caption) pairs and save it
    with ``save_pretrained`` (model, tokenizer, image processor) into ``out_dir``.

    ``vocab_texts`` trains the tokenizer: every text the pipeline will ever encode (the
    fine captions too), so fine-grained words exist as tokens even though the backbone
    never saw them paired with images.

    ``describes(image_index, caption_index) -> bool tensor`` (batch indices into the pairs)
    says which caption of a batch truthfully describes which image ("a photo of a sparrow"
    describes every sparrow); those are the positives. Without it, equal texts are.
    """
    from tqdm import tqdm

    from .tiny import build_clip, clip_processor, clip_tokenizer

    sizes = dict(sizes or {})
    seed_everything(seed, threads)
    tokenizer = clip_tokenizer(vocab_texts, vocab_size=sizes.pop("vocab_size", 1024),
                               max_length=sizes.get("max_text_length", 32))
    model = build_clip(tokenizer, seed=seed, **sizes)
    processor = clip_processor(tokenizer, model.config.vision_config.image_size)
    pixels = pixel_values(processor, image_paths)
    enc = tokenize(processor, texts)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.1)
    steps_per_epoch = math.ceil(len(texts) / batch_size)
    total = epochs * steps_per_epoch
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=total, pct_start=0.1)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    losses = []
    bar = tqdm(range(epochs), desc="pretrain backbone", disable=not progress)
    for epoch in bar:
        order = torch.randperm(len(texts), generator=gen)
        run = 0.0
        for i in range(0, len(order), batch_size):
            idx = order[i : i + batch_size]
            if describes is None:
                loss = clip_loss(model, pixels[idx], enc["input_ids"][idx], enc["attention_mask"][idx],
                                 same_text_targets([texts[j] for j in idx]))
            else:
                i2t, t2i = positive_targets(describes(idx, idx))
                loss = clip_loss(model, pixels[idx], enc["input_ids"][idx], enc["attention_mask"][idx], i2t, t2i)
            optimizer_step(opt, loss, "pretrain backbone", epoch, losses)
            sched.step()
            run += loss.item()
        losses.append(run / steps_per_epoch)
        bar.set_postfix(loss=f"{losses[-1]:.3f}")
    model.eval()
    with atomic_path(out_dir, directory=True) as tmp:
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        write_json(Path(tmp) / "pretraining.json", {"epochs": epochs, "loss": losses, "pairs": len(texts), "seed": seed})
    return {"loss": losses[-1], "parameters": sum(p.numel() for p in model.parameters())}
