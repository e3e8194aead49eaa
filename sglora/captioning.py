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
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import pyarrow as pa
import pyarrow.parquet as pq

from .io import SGLoraError, Settings, write_json, write_table
from .manifest import read_manifest, write_manifest

log = logging.getLogger("sglora.captioning")

INSTRUCTION = (
    "You are an image description assistant. Please analyze the given image carefully "
    "and provide a detailed description of its contents."
)
QUERY_TEMPLATE = "A photo of {class_name}."
DEFAULT_MODEL = "Qwen/Qwen2-VL-7B-Instruct"
BACKENDS = ("qwen2vl", "synthetic", "none")  # none: keep the dataset's own captions
LAYOUT_VERSION = 1  # bump when the prompt layout changes: invalidates old shards
PROVENANCE = pa.schema(
    [("caption_model", pa.string()), ("caption_prompt_hash", pa.string()), ("caption_seed", pa.int64())]
)
SHARD_SCHEMA = pa.schema(
    [("image_path", pa.string()), ("class_name", pa.string()), ("captions", pa.list_(pa.string()))]
    + list(PROVENANCE)
    + [("rejected", pa.int64())]
)


@dataclass
class Demonstration:
    """One in-context example: an image, its class and the caption to imitate."""

    image: str
    class_name: str
    caption: str


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


# --- prompt -------------------------------------------------------------------------


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
                "image_sha256": _file_sha256(Path(d.image), "a demonstration image"),
                "class_name": d.class_name,
                "caption": d.caption,
            }
            for d in opts.demonstrations
        ],
    }


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


# --- model --------------------------------------------------------------------------


@functools.cache
def register_image_only_processor():
    """A Qwen2-VL processor without the video processor, registered with ``AutoProcessor``.

    transformers' ``Qwen2VLProcessor`` insists on a video processor, and that needs
    torchvision, which this project does not depend on. Captioning only feeds images,
    so this subclass drops the video part. Registering it (under a private config key,
    leaving the real ``Qwen2VLConfig`` mapping alone) lets ``AutoProcessor`` find it by
    name in checkpoints saved with it, e.g. :mod:`sglora.tiny_qwen`. Returns the class.
    """
    from transformers import AutoProcessor, PretrainedConfig, Qwen2VLProcessor
    from transformers.processing_utils import ProcessorMixin

    class ImageOnlyQwen2VLProcessor(Qwen2VLProcessor):
        def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
            self.image_token = getattr(tokenizer, "image_token", None) or "<|image_pad|>"
            self.video_token = getattr(tokenizer, "video_token", None) or "<|video_pad|>"
            self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
            self.video_token_id = tokenizer.convert_tokens_to_ids(self.video_token)
            ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template)

    class _ImageOnlyKey(PretrainedConfig):
        model_type = "sglora_image_only_qwen2_vl"

    ImageOnlyQwen2VLProcessor.__module__ = __name__
    AutoProcessor.register(_ImageOnlyKey, ImageOnlyQwen2VLProcessor)
    return ImageOnlyQwen2VLProcessor


def load_processor(model: str, trust_remote_code: bool = False):
    """``AutoProcessor`` when torchvision is installed; otherwise the image-only processor
    built from the same checkpoint files (tokenizer, image processor, chat template)."""
    from transformers import AutoProcessor
    from transformers.utils import is_torchvision_available

    cls = register_image_only_processor()
    saved_as_image_only = _processor_class_name(model) == cls.__name__
    if is_torchvision_available() or saved_as_image_only:
        processor = AutoProcessor.from_pretrained(model, trust_remote_code=trust_remote_code)
    else:
        processor = cls.from_pretrained(model, trust_remote_code=trust_remote_code)
    processor.tokenizer.padding_side = "left"  # batched generation continues on the right
    return processor


def _processor_class_name(model: str) -> str | None:
    path = Path(model) / "processor_config.json"
    if path.is_file():
        return json.loads(path.read_text()).get("processor_class")
    return None


def load_captioner(opts: CaptionOptions):
    """``(model, processor, device)`` for ``opts.model`` (a hub id or a local folder)."""
    import torch
    from transformers import Qwen2VLForConditionalGeneration

    from .backbone import pick_device

    device = str(pick_device(opts.device or "auto"))
    dtype_name = opts.dtype or ("bfloat16" if device.startswith("cuda") else "float32")
    dtype = getattr(torch, dtype_name, None)
    if not isinstance(dtype, torch.dtype):
        raise SGLoraError(f"caption option 'dtype' is {dtype_name!r}; expected a torch dtype name like 'bfloat16'")
    try:
        processor = load_processor(opts.model, opts.trust_remote_code)
        model = Qwen2VLForConditionalGeneration.from_pretrained(
            opts.model, dtype=dtype, trust_remote_code=opts.trust_remote_code, use_safetensors=True
        )
    except OSError as err:
        raise SGLoraError(f"{opts.model}: cannot load a Qwen2-VL checkpoint ({err})") from err
    return model.to(device).eval(), processor, device


def _images_kwargs(opts: CaptionOptions) -> dict:
    if opts.min_pixels is None and opts.max_pixels is None:
        return {}
    size = {}
    if opts.min_pixels is not None:
        size["shortest_edge"] = opts.min_pixels
    if opts.max_pixels is not None:
        size["longest_edge"] = opts.max_pixels
    return {"size": size}


def generate_captions(
    model, processor, images: list, class_names: list[str], opts: CaptionOptions, demo_images: list, seed: int
) -> list[list[str]]:
    """Raw sampled texts, ``captions_per_image`` per image, one batched ``generate`` call."""
    import torch

    conversations = [
        build_messages(img, name, opts.demonstrations, opts.instruction, opts.query_template, demo_images)
        for img, name in zip(images, class_names)
    ]
    texts = [processor.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in conversations]
    pixels = []  # demonstrations first, target last, conversation after conversation
    for img in images:
        pixels.extend(demo_images)
        pixels.append(img)
    inputs = processor(text=texts, images=pixels, padding=True, return_tensors="pt", **_images_kwargs(opts))
    inputs = inputs.to(model.device)
    if "pixel_values" in inputs:
        inputs["pixel_values"] = inputs["pixel_values"].to(model.dtype)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)
    with torch.inference_mode():
        out = model.generate(
            **inputs,
            do_sample=True,
            temperature=opts.temperature,
            top_p=opts.top_p,
            max_new_tokens=opts.max_new_tokens,
            min_new_tokens=opts.min_new_tokens,
            num_return_sequences=opts.captions_per_image,
            pad_token_id=processor.tokenizer.pad_token_id,
        )
    decoded = processor.batch_decode(out[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    k = opts.captions_per_image
    return [decoded[i * k : (i + 1) * k] for i in range(len(images))]


# --- shards -------------------------------------------------------------------------


def _sha(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, ensure_ascii=False).encode()).hexdigest()[:16]


def _file_sha256(path: Path, what: str = "a file") -> str:
    if not path.is_file():
        raise SGLoraError(f"{path}: file not found (expected {what})")
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _settings(backend: str, opts: CaptionOptions) -> dict:
    """What decides the captions: the shard folder is named by its hash. Device, dtype
    and batch size are left out so a shard made elsewhere still counts."""
    if backend == "synthetic":
        what = "caption option 'captions_file': Parquet with image_path, captions"
        return {"backend": backend, "captions_file_sha256": _file_sha256(Path(opts.captions_file), what)}
    return {
        "backend": backend,
        "model": opts.model,
        "prompt": prompt_spec(opts),
        "sampling": {
            k: getattr(opts, k)
            for k in (
                "captions_per_image", "temperature", "top_p", "max_new_tokens", "min_new_tokens", "seed",
                "min_words", "max_repeat_fraction", "max_retries", "min_pixels", "max_pixels",
            )
        },
    }  # fmt: skip


def _units(table: pa.Table, opts: CaptionOptions) -> list[tuple[str, str]]:
    """The (image_path, class_name) pairs to caption, sorted and without repeats (a COCO
    image in two tasks is captioned once per class it is asked about)."""
    units = set()
    for row in table.select(["image_path", "class_name", "captions", "split"]).to_pylist():
        if row["split"] in opts.splits and not (opts.keep_existing and row["captions"]):
            units.add((row["image_path"], row["class_name"]))
    return sorted(units)


def _caption_shard_qwen(units, state, opts: CaptionOptions, shard_seed: int) -> list[dict]:
    from PIL import Image

    model, processor, demo_images = state
    k = opts.captions_per_image
    kept: list[list[str]] = [[] for _ in units]
    rejected = [0] * len(units)
    images = []
    for path, _ in units:
        try:
            with Image.open(path) as img:
                images.append(img.convert("RGB"))
        except Exception as err:  # PIL raises many types for a broken file
            raise SGLoraError(f"{path}: cannot read image for captioning ({err})") from err
    for attempt in range(opts.max_retries + 1):
        todo = [i for i in range(len(units)) if len(kept[i]) < k]
        if not todo:
            break
        for start in range(0, len(todo), opts.batch_size):
            batch = todo[start : start + opts.batch_size]
            raw = generate_captions(
                model,
                processor,
                [images[i] for i in batch],
                [units[i][1] for i in batch],
                opts,
                demo_images,
                seed=shard_seed + 1_000_003 * attempt + start,
            )
            for i, texts in zip(batch, raw):
                for text in texts:
                    caption = clean_caption(text)
                    if is_degenerate(caption, opts.min_words, opts.max_repeat_fraction):
                        rejected[i] += 1
                    elif len(kept[i]) < k:
                        kept[i].append(caption)
    prompt_hash = _sha(prompt_spec(opts))
    return [
        dict(image_path=p, class_name=c, captions=kept[i], caption_model=opts.model,
             caption_prompt_hash=prompt_hash, caption_seed=shard_seed, rejected=rejected[i])
        for i, (p, c) in enumerate(units)
    ]  # fmt: skip


def _caption_shard_synthetic(units, state, opts: CaptionOptions, shard_seed: int) -> list[dict]:
    lookup, file_hash = state
    rows = []
    for path, class_name in units:
        if path not in lookup:
            raise SGLoraError(
                f"{opts.captions_file}: no row with image_path {path!r}; expected captions for every manifest image"
            )
        rows.append(
            dict(image_path=path, class_name=class_name, captions=lookup[path], caption_model="synthetic",
                 caption_prompt_hash=file_hash, caption_seed=None, rejected=0)
        )  # fmt: skip
    return rows


def _synthetic_state(opts: CaptionOptions):
    path = Path(opts.captions_file)
    if not path.is_file():
        raise SGLoraError(f"{path}: file not found (caption option 'captions_file')")
    table = pq.read_table(path)
    for col in ("image_path", "captions"):
        if col not in table.column_names:
            raise SGLoraError(f"{path}: column {col!r} missing; expected columns image_path, captions")
    lookup = {}
    for i, row in enumerate(table.select(["image_path", "captions"]).to_pylist()):
        caps = row["captions"]
        if not isinstance(row["image_path"], str) or not isinstance(caps, list):
            raise SGLoraError(f"{path}: row {i}: expected image_path (string) and captions (list of strings)")
        lookup[row["image_path"]] = [str(c) for c in caps]
    return lookup, _file_sha256(path)[:16]


def _qwen_state(opts: CaptionOptions):
    from PIL import Image

    if not opts.demonstrations:
        log.warning("captioning without demonstrations; supplementary Figure 6 uses two")
    model, processor, _ = load_captioner(opts)
    demo_images = []
    for d in opts.demonstrations:
        with Image.open(d.image) as img:
            demo_images.append(img.convert("RGB"))
    return model, processor, demo_images


def caption_manifest(
    manifest_in: Path, manifest_out: Path, backend: str, shard_dir: Path, **options
) -> dict:
    """Caption the images of ``manifest_in`` and write ``manifest_out``.

    The output is the input manifest with ``captions`` replaced for the captioned rows
    and three provenance columns (``caption_model``, ``caption_prompt_hash``,
    ``caption_seed``; null for rows left alone). Options: :class:`CaptionOptions`.
    Returns ``{images, shards, shards_done, shards_skipped, rejected, incomplete}``:
    ``rejected`` counts generations the filter threw away, ``incomplete`` lists the
    images left with fewer than ``captions_per_image`` captions after all retries.
    """
    from tqdm import tqdm

    opts = parse_options(backend, options)
    table = read_manifest(manifest_in)
    if backend == "none":  # same output columns, captions as the dataset gave them
        write_manifest(manifest_out, _merge(table, {}))
        return dict(images=0, shards=0, shards_done=0, shards_skipped=0, rejected=0, incomplete=[])
    units = _units(table, opts)
    settings = _settings(backend, opts)
    folder = Path(shard_dir) / _sha(settings)
    write_json(folder / "settings.json", settings)
    shards = [units[i : i + opts.shard_size] for i in range(0, len(units), opts.shard_size)]
    state = None
    done = skipped = 0
    results: dict[tuple[str, str], dict] = {}
    with tqdm(total=len(units), unit="img", desc=f"caption ({backend})", disable=not opts.progress) as bar:
        for index, shard in enumerate(shards):
            content = _sha([list(u) for u in shard])
            path = folder / f"shard-{index:05d}-{content}.parquet"
            if path.is_file():
                rows = pq.read_table(path).to_pylist()
                skipped += 1
            else:
                if state is None:
                    state = _synthetic_state(opts) if backend == "synthetic" else _qwen_state(opts)
                fn = _caption_shard_synthetic if backend == "synthetic" else _caption_shard_qwen
                rows = fn(shard, state, opts, int(_sha([opts.seed, content]), 16) % 2**31)
                write_table(path, pa.Table.from_pylist(rows, schema=SHARD_SCHEMA))
                done += 1
            for row in rows:
                results[(row["image_path"], row["class_name"])] = row
            bar.update(len(shard))
    wanted = opts.captions_per_image if backend == "qwen2vl" else 1  # synthetic: any caption will do
    incomplete = sorted({r["image_path"] for r in results.values() if len(r["captions"]) < wanted})
    rejected = sum(r["rejected"] for r in results.values())
    empty = sum(1 for r in results.values() if not r["captions"])
    if results and empty == len(results):
        raise SGLoraError(
            f"captioning {manifest_in}: the caption filter rejected every caption ({rejected} generations rejected "
            f"with min_words={opts.min_words}, max_repeat_fraction={opts.max_repeat_fraction}, "
            f"after {opts.max_retries} retries); {empty} of {len(results)} images have no caption. Loosen "
            "min_words / max_repeat_fraction, or check the captioning model"
        )
    out = _merge(table, results)
    write_manifest(manifest_out, out)
    _remove_other_settings(Path(shard_dir), folder)
    if incomplete:
        log.warning(
            "%d image(s) have fewer than %d valid captions after %d retries: %s",
            len(incomplete), wanted, opts.max_retries, ", ".join(incomplete[:20]),
        )  # fmt: skip
    summary = dict(
        images=len(units), shards=len(shards), shards_done=done, shards_skipped=skipped,
        rejected=rejected, incomplete=incomplete,
    )  # fmt: skip
    log.info("captioning summary: %s", {k: v for k, v in summary.items() if k != "incomplete"})
    return summary


def _remove_other_settings(shard_dir: Path, keep: Path) -> None:
    """After a complete run, drop the shard folders of earlier caption settings (each
    change of settings makes a new ``<hash>/`` folder); only folders this module wrote
    (with a ``settings.json``) are removed."""
    import shutil

    for folder in shard_dir.iterdir():
        if folder.is_dir() and folder != keep and (folder / "settings.json").is_file():
            shutil.rmtree(folder, ignore_errors=True)


def _merge(table: pa.Table, results: dict[tuple[str, str], dict]) -> pa.Table:
    """The input manifest with captions and provenance filled from ``results``."""
    rows = table.to_pylist()
    captions, model, phash, seed = [], [], [], []
    for row in rows:
        hit = results.get((row["image_path"], row["class_name"]))
        captions.append(hit["captions"] if hit else row["captions"])
        model.append(hit["caption_model"] if hit else row.get("caption_model"))
        phash.append(hit["caption_prompt_hash"] if hit else row.get("caption_prompt_hash"))
        seed.append(hit["caption_seed"] if hit else row.get("caption_seed"))
    index = table.schema.get_field_index("captions")
    out = table.set_column(index, "captions", pa.array(captions, pa.list_(pa.string())))
    for fld, values in zip(PROVENANCE, (model, phash, seed)):
        column = pa.array(values, fld.type)
        if fld.name in out.column_names:
            out = out.set_column(out.schema.get_field_index(fld.name), fld, column)
        else:
            out = out.append_column(fld, column)
    return out
