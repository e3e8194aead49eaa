"""The CLIP backbone: loading it and encoding images and texts.

``load_clip`` is the one way the pipeline gets a backbone: a model id
(``openai/clip-vit-base-patch16``) or a local folder written by ``save_pretrained``.
Training helpers (the contrastive loss, seeding, the optimizer step) are in
:mod:`sglora.backbone.contrastive`; pretraining the embedded benchmark's CLIP in :mod:`sglora.backbone.pretrain`.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from ..io import SGLoraError


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
    """Open and decode images as RGB; an unreadable file is an error naming it."""
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
    """The processor's pixel tensor of the images at ``paths``, decoded in batches."""
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


def pooled_features(out) -> torch.Tensor:
    # transformers 5 returns a model output for get_*_features; older versions a tensor
    """The pooled features of a ``get_*_features`` call, whichever type transformers returns."""
    return out if isinstance(out, torch.Tensor) else out.pooler_output


@torch.no_grad()
def encode_images(model, pixels, batch: int = 256) -> torch.Tensor:
    """Unit image embeddings of ``pixels``: a float tensor, or :class:`sglora.data.images.Batches`
    (uint8 batches streamed from the cache and normalised on the model's device)."""
    dev = next(model.parameters()).device
    if isinstance(pixels, torch.Tensor):
        chunks = (pixels[i : i + batch].to(dev) for i in range(0, len(pixels), batch))
    else:
        chunks = pixels.on(dev)
    feats = [pooled_features(model.get_image_features(pixel_values=c)).float().cpu() for c in chunks]
    return F.normalize(torch.cat(feats), dim=-1)


def text_batches(processor, texts: list[str], batch: int = 256) -> list[dict[str, torch.Tensor]]:
    """``texts`` tokenized in the batches :func:`encode_texts` encodes them in (each padded to
    its own longest text). Evaluation tokenizes a task's captions once and encodes them
    under every LoRA it scores."""
    return [tokenize(processor, texts[i : i + batch]) for i in range(0, len(texts), batch)]


@torch.no_grad()
def encode_texts(model, processor, texts: list[str], batch: int = 256,
                 tokens: list[dict[str, torch.Tensor]] | None = None) -> torch.Tensor:
    """Unit text embeddings of ``texts``; ``tokens``: their :func:`text_batches`, when the
    caller already has them (the same numbers, without tokenizing again)."""
    dev = next(model.parameters()).device
    feats = []
    for enc in text_batches(processor, texts, batch) if tokens is None else tokens:
        feats.append(pooled_features(model.get_text_features(**{k: v.to(dev) for k, v in enc.items()})))
    return F.normalize(torch.cat(feats).float(), dim=-1).cpu()
