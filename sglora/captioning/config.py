"""The options of a captioning run (:class:`CaptionOptions`, the ``--options-json`` keys),
checked by :func:`parse_options`."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..io import SGLoraError
from .prompt import INSTRUCTION, QUERY_TEMPLATE, Demonstration

DEFAULT_MODEL = "Qwen/Qwen2-VL-7B-Instruct"
BACKENDS = ("qwen2vl", "synthetic", "none")  # none: keep the dataset's own captions


@dataclass
class CaptionOptions:
    """Options of :func:`caption_manifest` (the ``--options-json`` keys)."""

    model: str = field(default=DEFAULT_MODEL, metadata={"help": "Hub id or local path of a Qwen2-VL checkpoint"})
    trust_remote_code: bool = field(default=False, metadata={"help": "passed to from_pretrained; keep False"})
    demonstrations: list = field(
        default_factory=list, metadata={"help": "[{image, class_name, caption}]; Figure 6 uses two"}
    )
    instruction: str = field(default=INSTRUCTION, metadata={"help": "system turn"})
    query_template: str = field(default=QUERY_TEMPLATE, metadata={"help": "user text; {class_name} is filled"})
    captions_per_image: int = field(default=4, metadata={"help": "captions kept per image"})
    temperature: float = field(default=0.7, metadata={"help": "sampling temperature"})
    top_p: float = field(default=0.9, metadata={"help": "nucleus sampling mass"})
    max_new_tokens: int = field(default=96, metadata={"help": "caption length limit in tokens"})
    min_new_tokens: int = field(default=0, metadata={"help": "forbid end-of-text before this many tokens"})
    seed: int = field(default=0, metadata={"help": "base seed; each shard derives its own from it"})
    min_words: int = field(default=3, metadata={"help": "a caption with fewer words is rejected"})
    max_repeat_fraction: float = field(
        default=0.5, metadata={"help": "a caption whose most frequent word exceeds this share is rejected"}
    )
    max_retries: int = field(default=3, metadata={"help": "regenerations (new seed) for images short of captions"})
    splits: list = field(default_factory=lambda: ["train", "test"], metadata={"help": "manifest splits to caption"})
    keep_existing: bool = field(default=False, metadata={"help": "skip images that already have captions"})
    shard_size: int = field(default=64, metadata={"help": "captioning units per shard file"})
    batch_size: int = field(default=8, metadata={"help": "images per generate() call"})
    min_pixels: int | None = field(default=None, metadata={"help": "image processor lower pixel bound"})
    max_pixels: int | None = field(default=None, metadata={"help": "image processor upper pixel bound"})
    device: str | None = field(default=None, metadata={"help": "default: cuda when available, else cpu"})
    dtype: str | None = field(default=None, metadata={"help": "default: bfloat16 on cuda, float32 on cpu"})
    captions_file: str | None = field(
        default=None, metadata={"help": "synthetic backend: Parquet with image_path, captions"}
    )
    progress: bool = field(default=True, metadata={"help": "show a tqdm progress bar"})


def parse_options(backend: str, options: dict[str, Any]) -> CaptionOptions:
    """Check the backend and option names/values; an unknown key is an error, not ignored."""
    if backend not in BACKENDS:
        raise SGLoraError(f"caption backend {backend!r} unknown; expected one of {BACKENDS}")
    known = {f.name for f in dataclasses.fields(CaptionOptions)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise SGLoraError(f"caption options: unknown key(s) {unknown}; expected some of {sorted(known)}")
    opts = CaptionOptions(**options)
    opts.demonstrations = [_demonstration(d, i) for i, d in enumerate(opts.demonstrations)]
    for name in ("captions_per_image", "shard_size", "batch_size", "max_new_tokens"):
        if not isinstance(getattr(opts, name), int) or getattr(opts, name) < 1:
            raise SGLoraError(f"caption option {name!r} is {getattr(opts, name)!r}; expected a positive integer")
    if "{class_name}" not in opts.query_template:
        raise SGLoraError(f"caption option 'query_template' is {opts.query_template!r}; expected a '{{class_name}}'")
    bad = set(opts.splits) - {"train", "test"}
    if bad:
        raise SGLoraError(f"caption option 'splits' has {sorted(bad)}; expected 'train' and/or 'test'")
    if backend == "synthetic" and not opts.captions_file:
        raise SGLoraError(
            "caption backend 'synthetic' needs the option 'captions_file' (Parquet: image_path, captions)"
        )
    return opts


def _demonstration(item: Any, i: int) -> Demonstration:
    if isinstance(item, Demonstration):
        return item
    if not isinstance(item, dict):
        raise SGLoraError(f"caption option 'demonstrations[{i}]' is {type(item).__name__}; expected an object")
    for key in ("image", "class_name", "caption"):
        if not isinstance(item.get(key), str) or not item[key]:
            raise SGLoraError(f"caption option 'demonstrations[{i}].{key}' missing; expected a non-empty string")
    if not Path(item["image"]).is_file():
        raise SGLoraError(f"{item['image']}: file not found (caption option 'demonstrations[{i}].image')")
    return Demonstration(item["image"], item["class_name"], item["caption"])
