"""Steps of workflow/rules/backbone.smk: pretraining the embedded CLIP, embedding the tasks."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING
from typing import Annotated as A

from .registry import Backbone, Device, Manifests, Threads, step

if TYPE_CHECKING:
    from ..backbone.pretrain import PretrainSpec


@step("pretrain")
def pretrain(worlds: A[list[Path], "world folders written by 'sglora world'"],
             out: A[Path, "output folder (save_pretrained layout)"], pretrain: PretrainSpec,
             seed: A[int, "initialisation and data order"] = 0, threads: Threads = None) -> dict:
    """Pretrain the embedded benchmark's small CLIP on coarse captions of all classes."""
    from ..backbone.pretrain import pretrain_clip
    from ..data.world import pretraining_pairs

    pairs = pretraining_pairs([str(w) for w in worlds])
    return pretrain_clip(out, pairs.images, pairs.texts, pairs.vocab, seed=seed, threads=threads,
                         describes=pairs.describes, **asdict(pretrain))


@step("embed", device="device")
def embed(backbone: Backbone, manifest: Manifests, out: A[Path, "task embedding table (Parquet)"],
          template: A[str, "description template, e.g. 'a photo of a <class name>'"] = "",
          image_cache: A[dict[str, Path], "image caches (sglora image-cache)", {"metavar": "DATASET=DIR"}] = None,
          device: Device = "auto", threads: A[int | None, "DataLoader workers"] = None) -> dict:
    """Embed every task's description (text) and training images (visual) with the frozen backbone."""
    from ..backbone.embed import embed_tasks

    return embed_tasks(backbone, {d: str(p) for d, p in manifest.items()}, out, template=template or None,
                       device=device, caches={d: str(p) for d, p in (image_cache or {}).items()}, workers=threads or 0)
