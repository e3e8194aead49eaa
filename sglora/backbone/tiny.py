"""Small real models built offline from configs.

The embedded benchmark's backbone and the tests use these: a CLIP (``CLIPModel``) with
a BPE tokenizer trained locally on the texts it will see, and a PIL image processor,
saved with ``save_pretrained`` so ``from_pretrained(local_dir)`` loads it exactly as it
loads ``openai/clip-vit-base-patch16``. No network is touched.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

CLIP_SPECIALS = ["<|startoftext|>", "<|endoftext|>"]


def train_bpe_vocab(texts: Iterable[str], vocab_size: int = 512) -> tuple[dict, list]:
    """Train a CLIP-style byte-pair vocabulary (lower-cased, ``</w>`` word ends) on ``texts``.

    Returns ``(vocab, merges)`` for ``CLIPTokenizer(vocab=..., merges=...)``. Deterministic
    for the same texts.
    """
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token="<|endoftext|>", end_of_word_suffix="</w>"))
    tok.normalizer = normalizers.Sequence([normalizers.NFC(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=CLIP_SPECIALS,
        end_of_word_suffix="</w>",
        initial_alphabet=list("abcdefghijklmnopqrstuvwxyz0123456789"),
        show_progress=False,
    )
    tok.train_from_iterator(sorted(set(texts)), trainer)
    model = json.loads(tok.to_str())["model"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split()) for m in model["merges"]]
    return stable_vocab(model["vocab"], merges, CLIP_SPECIALS), merges


def stable_vocab(vocab: dict, merges: list[tuple[str, str]], specials: list[str]) -> dict:
    """A trained BPE vocabulary renumbered: ``specials``, the alphabet sorted, then the merges'
    tokens in merge order. The trainer numbers the alphabet in hash-map order, which changes
    from process to process; this order does not."""
    made = list(dict.fromkeys(a + b for a, b in merges))
    base = sorted(t for t in vocab if t not in specials and t not in set(made))
    order = specials + base + [t for t in made if t not in specials]
    return {t: i for i, t in enumerate(order)}


def clip_tokenizer(texts: Iterable[str], vocab_size: int = 512, max_length: int = 32):
    """A CLIP tokenizer with a byte-pair vocabulary learned from ``texts``."""
    from transformers import CLIPTokenizer

    vocab, merges = train_bpe_vocab(texts, vocab_size)
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=max_length)


def clip_processor(tokenizer, image_size: int):
    """A CLIP processor: ``tokenizer`` and an image processor at ``image_size`` pixels."""
    from transformers import CLIPImageProcessorPil, CLIPProcessor

    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": image_size},
        crop_size={"height": image_size, "width": image_size},
    )
    return CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer)


def build_clip(
    tokenizer,
    image_size: int = 32,
    patch_size: int = 8,
    hidden_size: int = 32,
    layers: int = 2,
    heads: int = 2,
    projection_dim: int = 32,
    max_text_length: int = 32,
    seed: int = 0,
):
    """A randomly initialised ``CLIPModel`` of the given size (seeded)."""
    import torch
    from transformers import CLIPConfig, CLIPModel

    tower = dict(
        hidden_size=hidden_size,
        intermediate_size=4 * hidden_size,
        num_hidden_layers=layers,
        num_attention_heads=heads,
    )
    config = CLIPConfig(
        text_config=dict(
            tower,
            vocab_size=len(tokenizer),
            max_position_embeddings=max_text_length,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        ),
        vision_config=dict(tower, image_size=image_size, patch_size=patch_size),
        projection_dim=projection_dim,
    )
    torch.manual_seed(seed)
    return CLIPModel(config)


def save_tiny_clip(out_dir: str | Path, texts: Iterable[str] | None = None, **sizes) -> Path:
    """Build and save a random tiny CLIP (model, tokenizer, image processor) to ``out_dir``.

    A few hundred thousand parameters at the defaults; for tests.
    """
    texts = list(texts or ["a photo of a cat", "a photo of a dog", "a red flower on the left"])
    tokenizer = clip_tokenizer(texts, vocab_size=sizes.pop("vocab_size", 256))
    model = build_clip(tokenizer, **sizes)
    processor = clip_processor(tokenizer, model.config.vision_config.image_size)
    out_dir = Path(out_dir)
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    return out_dir
