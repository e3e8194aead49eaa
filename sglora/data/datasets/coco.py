"""MS-COCO 2017 as the retrieval benchmark: one task per object category.

Reads the official annotation files (``annotations/captions_{train,val}2017.json`` and
``annotations/instances_{train,val}2017.json``); images live in ``{train,val}2017/``.
A task is a category (``"traffic light"``): the images that contain at least one
instance of it, each with its five human captions. ``train2017`` gives the ``train``
split, ``val2017`` the ``test`` split (COCO's test set has no public captions).
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa

from ...io import SGLoraError, unique_slugs
from ..manifest import DEFAULT_TEMPLATE, describe, make_manifest
from ._common import (
    check_limit,
    field,
    filter_images,
    load_json,
    log,
    require_root,
    select_names,
    with_bad_images,
)

SPLITS = {"train": "train2017", "test": "val2017"}


def _captions(path: Path) -> tuple[dict[int, str], dict[int, list[str]]]:
    """``{image id: file name}`` and ``{image id: [captions]}`` from a captions file."""
    data = load_json(path, "COCO captions JSON with 'images' and 'annotations'")
    images = field(data, "images", path, "", list)
    files: dict[int, str] = {}
    for i, img in enumerate(images):
        files[field(img, "id", path, f"images[{i}]", int)] = field(img, "file_name", path, f"images[{i}]", str)
    caps: dict[int, list[str]] = {}
    for i, ann in enumerate(field(data, "annotations", path, "", list)):
        image_id = field(ann, "image_id", path, f"annotations[{i}]", int)
        caps.setdefault(image_id, []).append(field(ann, "caption", path, f"annotations[{i}]", str).strip())
    return files, caps


def _instances(path: Path) -> tuple[dict[int, str], dict[int, set[int]]]:
    """``{category id: name}`` and ``{category id: {image ids}}`` from an instances file."""
    data = load_json(path, "COCO instances JSON with 'categories' and 'annotations'")
    names = {}
    for i, cat in enumerate(field(data, "categories", path, "", list)):
        names[field(cat, "id", path, f"categories[{i}]", int)] = field(cat, "name", path, f"categories[{i}]", str)
    members: dict[int, set[int]] = {}
    for i, ann in enumerate(field(data, "annotations", path, "", list)):
        image_id = field(ann, "image_id", path, f"annotations[{i}]", int)
        cat_id = field(ann, "category_id", path, f"annotations[{i}]", int)
        if cat_id not in names:
            raise SGLoraError(
                f"{path}: field 'annotations[{i}].category_id' is {cat_id}; "
                "expected an id listed in 'categories'"
            )
        members.setdefault(cat_id, set()).add(image_id)
    return names, members


def _present_splits(root: Path) -> dict[str, str]:
    """The splits whose annotation files exist (a copy made for evaluation often holds only
    ``val2017``); the missing ones are named in a warning. None present: all (an error
    then names the first missing file)."""
    ann = root / "annotations"
    present = {s: f for s, f in SPLITS.items()
               if (ann / f"captions_{f}.json").exists() or (ann / f"instances_{f}.json").exists()}
    missing = [f for s, f in SPLITS.items() if s not in present]
    if not present:
        return dict(SPLITS)
    if missing:
        log.warning("%s: COCO split(s) %s not found (no annotations/captions_<split>.json or instances_<split>.json); "
                    "reading only %s", root, missing, sorted(present.values()))
    return present


def build(
    root: str | Path,
    categories: list[str] | None = None,
    max_images: int | None = None,
    template: str = DEFAULT_TEMPLATE,
    on_bad_image: str = "skip",
) -> pa.Table:
    """The COCO manifest.

    - ``categories``: category names to keep (as COCO writes them, e.g. ``"teddy bear"``);
      default all 80.
    - ``max_images``: at most this many images per task and split: the ones with the
      smallest image ids, so the subset is the same on every machine.
    - ``template``: description template (``<class name>`` is the category).
    - ``on_bad_image``: ``skip`` (leave out and list) or ``error``.
    """
    root = require_root(root, "coco")
    max_images = check_limit(max_images, "max_images")
    rows, task_names = [], None
    for split, folder in _present_splits(root).items():
        cap_path = root / "annotations" / f"captions_{folder}.json"
        inst_path = root / "annotations" / f"instances_{folder}.json"
        files, caps = _captions(cap_path)
        names, members = _instances(inst_path)
        if task_names is None:
            task_names = select_names(sorted(set(names.values())), categories, "categories", inst_path)
            slugs = unique_slugs(task_names, str(inst_path))
        by_name = {name: cid for cid, name in names.items()}
        for name in task_names:
            if name not in by_name:
                raise SGLoraError(
                    f"{inst_path}: field 'categories' has no category named {name!r}; "
                    "expected the same categories in both splits"
                )
            for image_id in sorted(members.get(by_name[name], ()))[: max_images or None]:
                if image_id not in files:
                    raise SGLoraError(
                        f"{cap_path}: field 'images' has no entry with id {image_id}; "
                        f"expected every image of {inst_path.name} to be listed"
                    )
                rows.append(
                    dict(
                        dataset="coco",
                        task=slugs[name],
                        task_name=name,
                        class_name=name,
                        description=describe(name, template),
                        image_path=str(root / folder / files[image_id]),
                        captions=caps.get(image_id, []),
                        split=split,
                    )
                )
    rows, bad = filter_images(rows, on_bad_image)
    return with_bad_images(make_manifest(rows), bad)

