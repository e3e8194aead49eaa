"""Steps of workflow/rules/images.smk: the uint8 image cache of a dataset."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated as A

from .registry import Manifest, step


@step("image-cache")
def image_cache(backbone: A[str, "model id or local folder (its image processor sets the size)"], manifest: Manifest,
                out: A[Path, "cache root; the cache goes to <out>/<processor key>/"],
                threads: A[int | None, "decoding worker processes"] = None) -> dict:
    """Decode, resize and crop every image of a manifest once, with the backbone's image
    processor, into a uint8 cache that training, evaluation and embedding stream from."""
    from ..backbone.clip import load_clip
    from ..data.images import build_cache
    from ..data.manifest import read_manifest

    _, processor = load_clip(backbone)
    paths = read_manifest(manifest).column("image_path").to_pylist()
    return build_cache(paths, processor, out, workers=threads or 1)
