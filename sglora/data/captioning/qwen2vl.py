"""The Qwen2-VL backend: an image-only processor, loading the model, batched sampling,
and captioning one shard with the caption filter and retries."""

from __future__ import annotations

import functools
import json
import logging
from pathlib import Path

from ...io import SGLoraError
from .config import CaptionOptions
from .prompt import build_messages, clean_caption, is_degenerate, json_hash, prompt_spec

log = logging.getLogger("sglora.data.captioning")


@functools.cache
def register_image_only_processor():
    """A Qwen2-VL processor without the video processor, registered with ``AutoProcessor``.

    transformers' ``Qwen2VLProcessor`` insists on a video processor, and that needs
    torchvision, which this project does not depend on. Captioning only feeds images,
    so this subclass drops the video part. Registering it (under a private config key,
    leaving the real ``Qwen2VLConfig`` mapping alone) lets ``AutoProcessor`` find it by
    name in checkpoints saved with it, e.g. the test model of ``tests/tiny_qwen.py``.
    Returns the class.
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

    from ...devices import pick_device

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


def load_state(opts: CaptionOptions):
    """``(model, processor, demonstration images)``: what :func:`caption_shard` needs."""
    from PIL import Image

    if not opts.demonstrations:
        log.warning("captioning without demonstrations; supplementary Figure 6 uses two")
    model, processor, _ = load_captioner(opts)
    demo_images = []
    for d in opts.demonstrations:
        with Image.open(d.image) as img:
            demo_images.append(img.convert("RGB"))
    return model, processor, demo_images


def caption_shard(units, state, opts: CaptionOptions, shard_seed: int) -> list[dict]:
    """One shard's rows (:data:`sglora.data.captioning.shards.SHARD_SCHEMA`): ``captions_per_image``
    captions per (image, class) unit, degenerate ones rejected and regenerated with a new
    seed up to ``max_retries`` times."""
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
    prompt_hash = json_hash(prompt_spec(opts))
    return [
        dict(image_path=p, class_name=c, captions=kept[i], caption_model=opts.model,
             caption_prompt_hash=prompt_hash, caption_seed=shard_seed, rejected=rejected[i])
        for i, (p, c) in enumerate(units)
    ]  # fmt: skip
