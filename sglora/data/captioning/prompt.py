"""The prompt of supplementary Figure 6 as Qwen2-VL chat messages, its content hash,
and the post-processing of what the model writes (:func:`clean_caption`,
:func:`is_degenerate`). Layout of the chat: see :mod:`sglora.data.captioning`."""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ...io import SGLoraError, file_sha256, read_json

if TYPE_CHECKING:
    from .config import CaptionOptions

INSTRUCTION = (
    "You are an image description assistant. Please analyze the given image carefully "
    "and provide a detailed description of its contents."
)
QUERY_TEMPLATE = "A photo of {class_name}."
LAYOUT_VERSION = 1  # bump when the prompt layout changes: invalidates old shards
#: where a trained captioner keeps its demonstrations (image paths relative to the file)
DEMONSTRATIONS_FILE = "demonstrations.json"


@dataclass
class Demonstration:
    """One in-context example: an image, its class and the caption to imitate."""

    image: str
    class_name: str
    caption: str


def read_demonstrations(path: str | Path) -> list[dict]:
    """A demonstrations file (``[{image, class_name, caption}]``, images relative to the
    file's folder) as caption options (image paths resolved)."""
    path = Path(path)
    items = read_json(path)
    if not isinstance(items, list):
        raise SGLoraError(f"{path}: expected a JSON list of {{image, class_name, caption}}")
    out = []
    for i, item in enumerate(items):
        if not isinstance(item, dict) or not isinstance(item.get("image"), str):
            raise SGLoraError(f"{path}: item {i} lacks 'image'")
        out.append(dict(item, image=str(path.parent / item["image"])))
    return out


def build_messages(
    image: Any,
    class_name: str,
    demonstrations: list[Demonstration],
    instruction: str = INSTRUCTION,
    query_template: str = QUERY_TEMPLATE,
    demo_images: list[Any] | None = None,
) -> list[dict]:
    """The Figure 6 prompt as Qwen2-VL chat messages (layout in the module docstring).

    ``image`` / ``demo_images`` may be paths or PIL images; they are placed in the
    ``image`` entries in order (demonstrations first, target last), the order in which
    the processor expects the pixel inputs.
    """
    demo_images = demo_images or [d.image for d in demonstrations]
    messages = [{"role": "system", "content": [{"type": "text", "text": instruction}]}]
    for demo, demo_image in zip(demonstrations, demo_images):
        messages.append(
            {
                "role": "user",
                "content": [
                    {"type": "image", "image": demo_image},
                    {"type": "text", "text": query_template.format(class_name=demo.class_name)},
                ],
            }
        )
        messages.append({"role": "assistant", "content": [{"type": "text", "text": demo.caption}]})
    messages.append(
        {
            "role": "user",
            "content": [
                {"type": "image", "image": image},
                {"type": "text", "text": query_template.format(class_name=class_name)},
            ],
        }
    )
    return messages


def prompt_spec(opts: CaptionOptions) -> dict:
    """Everything about the prompt that changes the output (demonstration images by content)."""
    return {
        "layout": LAYOUT_VERSION,
        "instruction": opts.instruction,
        "query_template": opts.query_template,
        "demonstrations": [
            {
                "image_sha256": file_sha256(Path(d.image), "a demonstration image"),
                "class_name": d.class_name,
                "caption": d.caption,
            }
            for d in opts.demonstrations
        ],
    }


def json_hash(obj: Any) -> str:
    """16 hex digits of the SHA-256 of ``obj`` as sorted JSON: names prompts, caption
    settings and shards by content."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, ensure_ascii=False).encode()).hexdigest()[:16]


# --- post-processing ----------------------------------------------------------------

_ECHO = re.compile(r"^\s*(?:assistant\s*\n|output\s*:|caption\s*:)\s*", re.IGNORECASE)
# where a model that keeps going starts the next (hallucinated) turn
_CONTINUATION = re.compile(
    r"(?:^|\s)(?:input\s*:|\[demonstration|\[target|<\|im_)|(?:^|\n)\s*image\s*:", re.IGNORECASE
)


# control characters other than whitespace, and the replacement character of broken bytes
_UNPRINTABLE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ufffd]")


def clean_caption(text: str) -> str:
    """Strip what is not the caption: a prompt echo before the last "Output:", a leading
    role or "Output:" label, a hallucinated next "Input:"/"Image:" turn, control
    characters and U+FFFD (undecodable bytes), quotes and runs of whitespace."""
    text = _UNPRINTABLE.sub("", text)
    parts = re.split(r"(?i)\boutput\s*:", text)
    text = parts[-1]
    while True:
        stripped = _ECHO.sub("", text, count=1)
        if stripped == text:
            break
        text = stripped
    cut = _CONTINUATION.search(text)
    if cut and cut.start() > 0:
        text = text[: cut.start()]
    elif cut:
        text = ""
    text = re.sub(r"\s+", " ", text).strip().strip("\"'").strip()
    return text


def is_degenerate(text: str, min_words: int = 3, max_repeat_fraction: float = 0.5) -> bool:
    """True for an empty caption, one of fewer than ``min_words`` words, or one whose most
    frequent word makes up more than ``max_repeat_fraction`` of it ("dog dog dog dog")."""
    words = re.findall(r"\w+", text.lower())
    if not words or len(words) < min_words:
        return True
    return Counter(words).most_common(1)[0][1] / len(words) > max_repeat_fraction
