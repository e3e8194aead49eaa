"""A tiny random Qwen2-VL, built offline, for testing the captioner (a test builder: it
lives under tests/; benchmarks/bench_gpu.py borrows it the way bench_pipeline.py borrows
miniatures.py). The model, tokenizer and processor come from :mod:`sglora.data.captioning.tiny`,
which the embedded captioner is built with too.

It has the real architecture (``Qwen2VLForConditionalGeneration``), Qwen's special
tokens and chat template, and a PIL image processor, all saved with
``save_pretrained``, so :func:`sglora.data.captioning.load_captioner` loads it exactly as it
loads ``Qwen/Qwen2-VL-7B-Instruct``. Its output is gibberish; what the tests check is
the plumbing (prompt, image tokens, batching, shards), not caption quality.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

from sglora.data.captioning.tiny import (build_qwen2vl, qwen_image_processor, qwen_processor, qwen_tokenizer,
                                         save_qwen2vl)

DEFAULT_TEXTS = [
    "You are an image description assistant. Please analyze the given image carefully "
    "and provide a detailed description of its contents.",
    "A photo of pug. The pug has a fawn coat, black mask, and wrinkled face.",
    "A photo of birman. The Birman cat has a sleek cream and brown coat and blue eyes.",
    "system user assistant a photo of a cat dog flower red green blue sits on the grass",
]


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
    patch = sizes.get("patch_size", 4)
    factor = patch * 2  # patch x spatial merge
    tokenizer = qwen_tokenizer(list(texts or DEFAULT_TEXTS), vocab_size=sizes.pop("vocab_size", 400))
    model = build_qwen2vl(tokenizer, **sizes)
    image_processor = qwen_image_processor(patch, factor * factor, 4 * factor * factor)
    return save_qwen2vl(out_dir, model, qwen_processor(image_processor, tokenizer))
