"""In-context captioning with Qwen2-VL (supplementary Figure 6), resumable and sharded.

Classification datasets have no captions, so each image gets ``captions_per_image``
(4) fine-grained captions from Qwen2-VL, prompted with an instruction, two
demonstrations (image + "A photo of {class}." -> a detailed caption) and the target.

Chat layout (what Qwen2-VL-Instruct was tuned on, so demonstrations read as earlier
turns of the same conversation rather than as text the model might copy):

- ``system``: the instruction of Figure 6 (it replaces Qwen's default system line);
- per demonstration: ``user`` = [image, "A photo of {class}."], ``assistant`` = caption;
- ``user`` = [target image, "A photo of {class}."], then the generation prompt.

The "Output:" labels of Figure 6 become the assistant turns; :func:`clean_caption`
still strips an "Output:" the model may echo.

Work is cut into shards of ``shard_size`` captioning units (an image with the class it
is captioned for), in sorted order. Each shard is one Parquet file under
``shard_dir/<settings hash>/``, named by its index and a hash of its content, written
atomically; a rerun skips shards that exist. The ``synthetic`` backend reads captions
from a Parquet file instead of a model and goes through the same shards and output,
so one pipeline rule serves the embedded benchmark and the real run; ``none`` keeps
the dataset's own captions (COCO, Flickr30K) and only adds the provenance columns.

Modules: :mod:`.config` (the options), :mod:`.prompt` (the chat messages and the
caption filter), :mod:`.qwen2vl` (the model backend), :mod:`.shards` (the step:
shards, the synthetic backend, the merge into the manifest).
"""

from .config import BACKENDS, DEFAULT_MODEL, CaptionOptions, parse_options
from .prompt import INSTRUCTION, QUERY_TEMPLATE, Demonstration, build_messages, clean_caption, is_degenerate
from .qwen2vl import load_captioner, load_processor, register_image_only_processor
from .shards import caption_manifest

__all__ = [
    "BACKENDS", "DEFAULT_MODEL", "INSTRUCTION", "QUERY_TEMPLATE", "CaptionOptions", "Demonstration",
    "build_messages", "caption_manifest", "clean_caption", "is_degenerate", "load_captioner", "load_processor",
    "parse_options", "register_image_only_processor",
]  # fmt: skip
