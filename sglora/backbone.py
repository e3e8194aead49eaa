"""The CLIP backbone: loading, encoding, and pretraining the embedded benchmark's CLIP.

``load_clip`` is the one way the pipeline gets a backbone: a model id
(``openai/clip-vit-base-patch16``) or a local folder written by ``save_pretrained``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from .io import SGLoraError, Settings, atomic_path, setting, write_json


def pick_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def seed_everything(seed: int, threads: int | None = None) -> None:
    """Seed torch and numpy and make CPU kernels deterministic."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    torch.use_deterministic_algorithms(True, warn_only=True)
    if threads:
        torch.set_num_threads(threads)


def load_clip(name_or_path: str, device: str = "cpu", trust_remote_code: bool = False):
    """Load ``(model, processor)`` with ``from_pretrained``; the model is in eval mode."""
    from transformers import CLIPModel, CLIPProcessor

    local = Path(name_or_path)
    if (local.is_absolute() or name_or_path.startswith(".")) and not local.exists():
        raise SGLoraError(f"backbone {name_or_path!r}: folder not found")
    try:
        model = CLIPModel.from_pretrained(name_or_path, trust_remote_code=trust_remote_code, use_safetensors=True)
        processor = CLIPProcessor.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
    except OSError as err:
        raise SGLoraError(
            f"backbone {name_or_path!r} could not be loaded ({err}). Give a local folder written by "
            "save_pretrained, or a model id that is in the Hugging Face cache."
        ) from err
    return model.to(device).eval(), processor


def load_images(paths: list[str]):
    from PIL import Image

    out = []
    for p in paths:
        try:
            with Image.open(p) as im:
                im.load()
                out.append(im if im.mode == "RGB" else im.convert("RGB"))
        except (OSError, ValueError) as err:
            raise SGLoraError(f"{p}: cannot read image ({err})") from err
    return out


def pixel_values(processor, paths: list[str], batch: int = 256) -> torch.Tensor:
    chunks = []
    for i in range(0, len(paths), batch):
        chunks.append(processor.image_processor(load_images(paths[i : i + batch]), return_tensors="pt")["pixel_values"])
    return torch.cat(chunks)


def tokenize(processor, texts: list[str]) -> dict[str, torch.Tensor]:
    """Token ids and attention mask, padded to the longest text of ``texts`` (not to the
    context length: padded positions are masked and cost a forward pass for nothing)."""
    max_len = min(processor.tokenizer.model_max_length, 77)
    enc = processor.tokenizer(texts, padding="longest", truncation=True, max_length=max_len, return_tensors="pt")
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}


def _features(out) -> torch.Tensor:
    # transformers 5 returns a model output for get_*_features; older versions a tensor
    return out if isinstance(out, torch.Tensor) else out.pooler_output


@torch.no_grad()
def encode_images(model, pixels, batch: int = 256) -> torch.Tensor:
    """Unit image embeddings of ``pixels``: a float tensor, or :class:`sglora.images.Batches`
    (uint8 batches streamed from the cache and normalised on the model's device)."""
    dev = next(model.parameters()).device
    if isinstance(pixels, torch.Tensor):
        chunks = (pixels[i : i + batch].to(dev) for i in range(0, len(pixels), batch))
    else:
        chunks = pixels.on(dev)
    feats = [_features(model.get_image_features(pixel_values=c)).float().cpu() for c in chunks]
    return F.normalize(torch.cat(feats), dim=-1)


@torch.no_grad()
def encode_texts(model, processor, texts: list[str], batch: int = 256) -> torch.Tensor:
    dev = next(model.parameters()).device
    feats = []
    for i in range(0, len(texts), batch):
        enc = tokenize(processor, texts[i : i + batch])
        feats.append(_features(model.get_text_features(**{k: v.to(dev) for k, v in enc.items()})))
    return F.normalize(torch.cat(feats).float(), dim=-1).cpu()


def clip_loss(model, pixels, input_ids, attention_mask, targets: torch.Tensor | None = None,
              targets_t2i: torch.Tensor | None = None) -> torch.Tensor:
    """Symmetric InfoNCE loss. ``targets`` (B x B, rows summing to 1) handles several
    positives per row (two images with the same caption); by default the diagonal.
    ``targets_t2i`` (captions x images) where the positives are not symmetric; by default
    ``targets.T``."""
    img = F.normalize(_features(model.get_image_features(pixel_values=pixels)), dim=-1)
    txt = F.normalize(_features(model.get_text_features(input_ids=input_ids, attention_mask=attention_mask)), dim=-1)
    logits = model.logit_scale.exp() * img @ txt.T
    if targets is None:
        targets = torch.eye(len(img), device=img.device)
    return 0.5 * (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets.T if targets_t2i is None else targets_t2i))


def optimizer_step(opt, loss: torch.Tensor, where: str, epoch: int, history: list) -> None:
    """One backward + update, refusing a non-finite loss: the error names the step
    (``where``), the epoch (0-based here, printed 1-based) and the last finite epoch loss
    (the last entry of ``history``: a number, or a dict with a ``loss`` key)."""
    if not torch.isfinite(loss):
        last = history[-1] if history else "none"
        last = last["loss"] if isinstance(last, dict) else last
        raise SGLoraError(f"{where}: loss is {loss.item()} at epoch {epoch + 1}; last finite epoch loss {last}")
    opt.zero_grad()
    loss.backward()
    opt.step()


def same_text_targets(texts: list[str]) -> torch.Tensor:
    """Soft targets for a batch where equal texts are all positives of each other."""
    ids = {t: i for i, t in enumerate(dict.fromkeys(texts))}
    k = torch.tensor([ids[t] for t in texts])
    eq = (k[:, None] == k[None, :]).float()
    return eq / eq.sum(1, keepdim=True)


def positive_targets(positive: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(image -> text, text -> image) targets from a boolean images x captions matrix of
    which caption truthfully describes which image: each row spreads its mass evenly over
    its positives."""
    pos = positive.float()
    return pos / pos.sum(1, keepdim=True), pos.T / pos.T.sum(1, keepdim=True)


@dataclass
class PretrainSpec(Settings):
    """How the embedded benchmark's small CLIP is pretrained (config section ``backbone.pretrain``)."""

    section: ClassVar[str] = "backbone.pretrain"

    epochs: int = setting(30, "passes over the (image, coarse caption) pairs", min=1)
    batch_size: int = setting(64, "pairs per step", min=2)
    lr: float = setting(2e-3, "peak AdamW learning rate (one-cycle schedule)", above=0)
    sizes: dict | None = setting(None, "model sizes (sglora.tiny.build_clip: image_size, patch_size, hidden_size, "
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
    for _ in bar:
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
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            run += loss.item()
        losses.append(run / steps_per_epoch)
        bar.set_postfix(loss=f"{losses[-1]:.3f}")
        if not math.isfinite(losses[-1]):
            raise SGLoraError(f"pretraining diverged at epoch {len(losses)} (last finite loss {losses[-2] if len(losses) > 1 else 'none'})")
    model.eval()
    with atomic_path(out_dir, directory=True) as tmp:
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        write_json(Path(tmp) / "pretraining.json", {"epochs": epochs, "loss": losses, "pairs": len(texts), "seed": seed})
    return {"loss": losses[-1], "parameters": sum(p.numel() for p in model.parameters())}
