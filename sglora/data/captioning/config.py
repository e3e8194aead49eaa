"""The options of a captioning run (:class:`CaptionOptions`, the ``--options`` keys),
checked by :func:`parse_options`."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from ...io import SGLoraError, Settings
from .prompt import INSTRUCTION, QUERY_TEMPLATE, Demonstration, read_demonstrations

DEFAULT_MODEL = "Qwen/Qwen2-VL-7B-Instruct"
BACKENDS = ("qwen2vl", "synthetic", "none")  # none: keep the dataset's own captions


@dataclass
class CaptionOptions(Settings):
    """Options of :func:`caption_manifest` (config ``datasets.<name>.captioner.options``, the
    ``--options`` of ``sglora caption``)."""

    section: ClassVar[str] = "captioner.options"

    model: str = field(default=DEFAULT_MODEL, metadata={"help": "Hub id or local path of a Qwen2-VL checkpoint"})
    trust_remote_code: bool = field(default=False, metadata={"help": "passed to from_pretrained; keep False"})
    demonstrations: list = field(
        default_factory=list, metadata={"help": "[{image, class_name, caption}]; Figure 6 uses two"}
    )
    demonstrations_file: str | None = field(
        default=None, metadata={"help": "JSON [{image, class_name, caption}], images relative to the file (a trained "
                                        "captioner's demonstrations.json); instead of demonstrations"}
    )
    instruction: str = field(default=INSTRUCTION, metadata={"help": "system turn"})
    query_template: str = field(default=QUERY_TEMPLATE, metadata={"help": "user text; {class_name} is filled"})
    captions_per_image: int = field(default=4, metadata={"help": "captions kept per image", "min": 1})
    temperature: float = field(default=0.7, metadata={"help": "sampling temperature"})
    top_p: float = field(default=0.9, metadata={"help": "nucleus sampling mass"})
    max_new_tokens: int = field(default=96, metadata={"help": "caption length limit in tokens", "min": 1})
    min_new_tokens: int = field(default=0, metadata={"help": "forbid end-of-text before this many tokens"})
    seed: int = field(default=0, metadata={"help": "base seed; each shard derives its own from it"})
    min_words: int = field(default=3, metadata={"help": "a caption with fewer words is rejected"})
    max_repeat_fraction: float = field(
        default=0.5, metadata={"help": "a caption whose most frequent word exceeds this share is rejected"}
    )
    max_retries: int = field(default=3, metadata={"help": "regenerations (new seed) for images short of captions"})
    splits: list = field(
        default_factory=lambda: ["train", "test"], metadata={"help": "manifest splits to caption", "choices": ("train", "test")}
    )
    keep_existing: bool = field(default=False, metadata={"help": "skip images that already have captions"})
    shard_size: int = field(default=64, metadata={"help": "captioning units per shard file", "min": 1})
    batch_size: int = field(default=8, metadata={"help": "images per generate() call", "min": 1})
    min_pixels: int | None = field(default=None, metadata={"help": "image processor lower pixel bound"})
    max_pixels: int | None = field(default=None, metadata={"help": "image processor upper pixel bound"})
    device: str | None = field(default=None, metadata={"help": "default: cuda when available, else cpu"})
    dtype: str | None = field(default=None, metadata={"help": "default: bfloat16 on cuda, float32 on cpu"})
    captions_file: str | None = field(
        default=None, metadata={"help": "synthetic backend: Parquet with image_path, captions"}
    )
    progress: bool = field(default=True, metadata={"help": "show a tqdm progress bar"})

    def check(self) -> None:
        if self.demonstrations_file:
            if self.demonstrations:
                raise SGLoraError("caption options 'demonstrations' and 'demonstrations_file' both given; expected one")
            self.demonstrations = read_demonstrations(self.demonstrations_file)
        self.demonstrations = [_demonstration(d, i) for i, d in enumerate(self.demonstrations)]
        for name in ("captions_per_image", "shard_size", "batch_size", "max_new_tokens"):
            if not isinstance(getattr(self, name), int):
                raise SGLoraError(f"caption option {name!r} is {getattr(self, name)!r}; expected a positive integer")
        if "{class_name}" not in self.query_template:
            raise SGLoraError(f"caption option 'query_template' is {self.query_template!r}; expected a '{{class_name}}'")


def parse_options(backend: str, options: dict[str, Any]) -> CaptionOptions:
    """Check the backend and option names/values; an unknown key is an error, not ignored."""
    if backend not in BACKENDS:
        raise SGLoraError(f"caption backend {backend!r} unknown; expected one of {BACKENDS}")
    opts = CaptionOptions.from_dict(options)
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
