"""Small real Qwen2-VL models built offline from configs, like :mod:`sglora.backbone.tiny` for CLIP.

The embedded benchmark's captioner (:mod:`.pretrain`) and the tests use these: a
``Qwen2VLForConditionalGeneration`` of the real architecture with Qwen's special tokens and
Qwen2-VL-7B-Instruct's chat template, a byte-level BPE ``Qwen2Tokenizer`` trained on the
texts it will see, and a PIL image processor, saved with ``save_pretrained`` so
:func:`sglora.data.captioning.load_captioner` loads it exactly as it loads
``Qwen/Qwen2-VL-7B-Instruct``. No network is touched.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

QWEN_SPECIALS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
]
# Qwen2-VL-7B-Instruct's chat template, verbatim.
CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}"
    "{{ message['content'] }}<|im_end|>\n{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def qwen_tokenizer(texts: Iterable[str], vocab_size: int = 400):
    """A byte-level BPE ``Qwen2Tokenizer`` trained on ``texts``, with Qwen's special tokens
    at ids 0..6 (deterministic for the same texts)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import Qwen2Tokenizer
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    from ...backbone.tiny import stable_vocab

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=QWEN_SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(sorted(set(texts)), trainer)
    model = json.loads(tok.to_str())["model"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in model["merges"]]
    return Qwen2Tokenizer(
        vocab=stable_vocab(model["vocab"], merges, QWEN_SPECIALS),
        merges=merges,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        extra_special_tokens=QWEN_SPECIALS[1:],
    )


def build_qwen2vl(
    tokenizer,
    hidden_size: int = 64,
    layers: int = 2,
    heads: int = 4,
    vision_dim: int = 32,
    vision_layers: int = 1,
    patch_size: int = 4,
    seed: int = 0,
):
    """A randomly initialised ``Qwen2VLForConditionalGeneration`` (seeded)."""
    import torch
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in QWEN_SPECIALS}
    half = hidden_size // heads // 2  # mrope splits the rotary half-dim over (t, h, w)
    section = [half - 2 * (half // 3), half // 3, half // 3]
    config = Qwen2VLConfig(
        text_config=dict(
            vocab_size=len(tokenizer),
            hidden_size=hidden_size,
            intermediate_size=2 * hidden_size,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            num_key_value_heads=max(1, heads // 2),
            max_position_embeddings=2048,
            max_window_layers=layers,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": section},
            bos_token_id=ids["<|endoftext|>"],
            eos_token_id=ids["<|im_end|>"],
            pad_token_id=ids["<|endoftext|>"],
        ),
        vision_config=dict(
            depth=vision_layers,
            embed_dim=vision_dim,
            hidden_size=hidden_size,
            num_heads=2,
            mlp_ratio=2,
            patch_size=patch_size,
            spatial_merge_size=2,
            temporal_patch_size=2,
        ),
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )
    torch.manual_seed(seed)
    model = Qwen2VLForConditionalGeneration(config)
    model.generation_config.eos_token_id = ids["<|im_end|>"]
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    return model


def qwen_image_processor(patch_size: int, min_pixels: int, max_pixels: int):
    """Qwen2-VL's PIL image processor (spatial merge 2): an image becomes
    (height / patch_size / 2) x (width / patch_size / 2) tokens after resizing into
    [min_pixels, max_pixels] at a multiple of 2 x ``patch_size``."""
    from transformers import Qwen2VLImageProcessorPil

    return Qwen2VLImageProcessorPil(patch_size=patch_size, merge_size=2, temporal_patch_size=2,
                                    min_pixels=min_pixels, max_pixels=max_pixels)


def qwen_processor(image_processor, tokenizer):
    """The image-only Qwen2-VL processor of ``tokenizer`` and ``image_processor`` with Qwen2-VL's chat template."""
    from .qwen2vl import register_image_only_processor

    return register_image_only_processor()(
        image_processor=image_processor, tokenizer=tokenizer, chat_template=CHAT_TEMPLATE
    )


def save_qwen2vl(out_dir: str | Path, model, processor) -> Path:
    """Save ``model`` and its processor (:func:`qwen_processor`) in the layout of a hub checkpoint."""
    out_dir = Path(out_dir)
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    return out_dir
