"""A tiny random Qwen2-VL, built offline, for testing the captioner (a test builder: it
lives under tests/ and is not part of the library; benchmarks/bench_gpu.py borrows it the
way bench_pipeline.py borrows miniatures.py).

It has the real architecture (``Qwen2VLForConditionalGeneration``), Qwen's special
tokens and chat template, and a PIL image processor, all saved with
``save_pretrained``, so :func:`sglora.data.captioning.load_captioner` loads it exactly as it
loads ``Qwen/Qwen2-VL-7B-Instruct``. Its output is gibberish; what the tests check is
the plumbing (prompt, image tokens, batching, shards), not caption quality.
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
DEFAULT_TEXTS = [
    "You are an image description assistant. Please analyze the given image carefully "
    "and provide a detailed description of its contents.",
    "A photo of pug. The pug has a fawn coat, black mask, and wrinkled face.",
    "A photo of birman. The Birman cat has a sleek cream and brown coat and blue eyes.",
    "system user assistant a photo of a cat dog flower red green blue sits on the grass",
]


def qwen_tokenizer(texts: Iterable[str], vocab_size: int = 400):
    """A byte-level BPE ``Qwen2Tokenizer`` trained on ``texts``, with Qwen's special tokens
    at ids 0..6 (deterministic for the same texts)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import Qwen2Tokenizer
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

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
        vocab=model["vocab"],
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


def save_tiny_qwen2vl(out_dir: str | Path, texts: Iterable[str] | None = None, **sizes) -> Path:
    """Build and save a random tiny Qwen2-VL (model, tokenizer, image processor, chat
    template) to ``out_dir``; about 150k parameters at the defaults.

    Images are resized to between 8x8 and 16x16 pixels (1 to 4 image tokens each), so a
    prompt with three images stays short and CPU generation takes well under a second.

    The processor is saved as ``ImageOnlyQwen2VLProcessor`` (no torchvision needed):
    load it with :func:`sglora.data.captioning.load_processor`, or call
    :func:`sglora.data.captioning.register_image_only_processor` once before
    ``AutoProcessor.from_pretrained``.
    """
    from transformers import Qwen2VLImageProcessorPil

    from sglora.data.captioning import register_image_only_processor

    patch = sizes.get("patch_size", 4)
    factor = patch * 2  # patch x spatial merge
    tokenizer = qwen_tokenizer(list(texts or DEFAULT_TEXTS), vocab_size=sizes.pop("vocab_size", 400))
    model = build_qwen2vl(tokenizer, **sizes)
    image_processor = Qwen2VLImageProcessorPil(
        patch_size=patch,
        merge_size=2,
        temporal_patch_size=2,
        min_pixels=factor * factor,
        max_pixels=4 * factor * factor,
    )
    processor = register_image_only_processor()(
        image_processor=image_processor, tokenizer=tokenizer, chat_template=CHAT_TEMPLATE
    )
    out_dir = Path(out_dir)
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    return out_dir
