"""Flickr30K with the Karpathy split: one general image-text retrieval task.

Reads ``dataset_flickr30k.json`` (``images[{filename, split, sentences[{raw}]}]``) and
the images folder. Karpathy ``test`` (1,000 images) is the ``test`` split; ``train`` and
``restval`` are ``train``. Karpathy ``val`` is dropped by default: it is the split other
work tunes on, and keeping it out keeps our test numbers comparable to theirs
(``val_split="train"`` folds it into training instead).
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa

from ...io import SGLoraError, inside, slugify
from ..manifest import DEFAULT_TEMPLATE, describe, make_manifest
from ._common import check_limit, field, filter_images, load_json, require_root, with_bad_images

TASK_NAME = "Flickr30K"
KARPATHY = {"train": "train", "restval": "train", "test": "test", "val": None}


def build(
    root: str | Path,
    images_dir: str = "flickr30k-images",
    split_file: str = "dataset_flickr30k.json",
    max_images: int | None = None,
    val_split: str | None = None,
    template: str = DEFAULT_TEMPLATE,
    on_bad_image: str = "skip",
) -> pa.Table:
    """The Flickr30K manifest.

    - ``images_dir``: image folder, relative to ``root`` (the archive unpacks to
      ``flickr30k-images``).
    - ``split_file``: the Karpathy JSON, relative to ``root``.
    - ``max_images``: at most this many images per split, first by file name.
    - ``val_split``: where Karpathy ``val`` goes: ``None`` (dropped, default), ``"train"``
      or ``"test"``.
    - ``template``: description template (``<class name>`` is ``"Flickr30K"``).
    - ``on_bad_image``: ``skip`` (leave out and list) or ``error``.
    """
    root = require_root(root, "flickr30k")
    max_images = check_limit(max_images, "max_images")
    if val_split not in (None, "train", "test"):
        raise SGLoraError(f"option 'val_split' is {val_split!r}; expected null, 'train' or 'test'")
    mapping = dict(KARPATHY, val=val_split)
    inside(root, split_file), inside(root, images_dir)  # refuse '../' escapes
    path = root / split_file
    data = load_json(path, "the Karpathy split JSON with 'images'")
    per_split: dict[str, list[tuple[str, list[str]]]] = {"train": [], "test": []}
    for i, img in enumerate(field(data, "images", path, "", list)):
        where = f"images[{i}]"
        name = field(img, "filename", path, where, str)
        karpathy = field(img, "split", path, where, str)
        if karpathy not in mapping:
            raise SGLoraError(f"{path}: field '{where}.split' is {karpathy!r}; expected one of {sorted(mapping)}")
        sentences = field(img, "sentences", path, where, list)
        caps = [field(s, "raw", path, f"{where}.sentences[{j}]", str).strip() for j, s in enumerate(sentences)]
        if mapping[karpathy] is not None:
            per_split[mapping[karpathy]].append((name, caps))
    rows = []
    for split, items in per_split.items():
        for name, caps in sorted(items)[: max_images or None]:
            rows.append(
                dict(
                    dataset="flickr30k",
                    task=slugify(TASK_NAME),
                    task_name=TASK_NAME,
                    class_name=TASK_NAME,
                    description=describe(TASK_NAME, template),
                    image_path=str(root / images_dir / name),
                    captions=caps,
                    split=split,
                )
            )
    rows, bad = filter_images(rows, on_bad_image)
    return with_bad_images(make_manifest(rows), bad)
