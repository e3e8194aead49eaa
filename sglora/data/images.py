"""Images streamed from a per-dataset uint8 cache at the backbone's input size.

Decoding a JPEG and resizing it costs more than a LoRA step on it, and holding a task's
images as float32 (0.6 MB each at 224 px) does not scale: COCO's largest category would
need ~38 GB. So each dataset's images are decoded, resized and center-cropped *once*, by
the backbone's own image processor, into a cache of uint8 arrays (``build_cache``; the
``image_cache`` rule). Training, evaluation, MoLE and embedding read batches from it
through a ``torch.utils.data.DataLoader`` (:func:`loader`) and normalise them on the
device (:class:`Normalize`), so at most a few batches are ever in memory.

The cache lives in ``<root>/<key>/``, ``key`` a hash of the processor settings that
shape the uint8 pixels (size, crop, resampling): a different backbone gets its own
cache, and reading a cache with the wrong processor is an error naming both keys.

Exactness: the uint8 pixels are the processor's own resize + crop output (its
``do_rescale=False, do_normalize=False`` path, uint8 for the PIL backend), and
:class:`Normalize` maps each uint8 value through a 3 x 256 table computed by the same
processor's rescale + normalise, so a batch equals ``processor.image_processor(images)``
bit for bit whenever the processor's resize returns uint8 (the PIL backend, and
torchvision's on uint8 input). A processor that resized in float would be rounded to
uint8 here (at most half a grey level, 0.002 after rescaling); none of the CLIP
processors in transformers 5 does.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
import torch

from ..io import SGLoraError, atomic_path, write_json

#: image-processor settings that change the uint8 pixels (normalisation happens later)
SHAPE_KEYS = ("size", "crop_size", "resample", "do_resize", "do_center_crop", "do_convert_rgb", "do_pad", "pad_size")


def _image_processor(processor):
    return getattr(processor, "image_processor", processor)


def processor_key(processor) -> str:
    """A short hash of the settings that decide the cached pixels (and the backend)."""
    ip = _image_processor(processor)
    d = ip.to_dict()
    settings = {k: d.get(k) for k in SHAPE_KEYS if k in d}
    settings["backend"] = type(ip).__name__
    text = json.dumps(settings, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def decode(paths: Sequence[str], processor) -> np.ndarray:
    """Decode, resize and center-crop images with the processor: uint8 (N, 3, H, W)."""
    from ..backbone.clip import load_images

    out = _image_processor(processor)(load_images(list(paths)), do_rescale=False, do_normalize=False,
                                      return_tensors="np")["pixel_values"]
    out = np.asarray(out)
    if out.dtype != np.uint8:  # a processor that resized in float: round to the nearest grey level
        out = np.clip(np.rint(out), 0, 255).astype(np.uint8)
    return out


class Normalize:
    """The processor's rescale + normalise as a lookup table, applied on the device:
    uint8 (B, 3, H, W) on any device -> float32 pixels, equal to the processor's."""

    def __init__(self, processor):
        from PIL import Image

        ramp = np.repeat(np.arange(256, dtype=np.uint8)[None, :, None], 3, axis=2)  # 1 x 256 RGB, value = column
        ip = _image_processor(processor)
        table = ip([Image.fromarray(ramp)], do_resize=False, do_center_crop=False, return_tensors="np")["pixel_values"]
        table = np.asarray(table, dtype=np.float32)[0]  # 3 x 1 x 256
        if table.shape != (3, 1, 256):
            raise SGLoraError(f"image processor {type(ip).__name__}: cannot read its normalisation (got {table.shape})")
        self.table = torch.from_numpy(table.reshape(3, 256).copy())
        self._on: dict[torch.device, torch.Tensor] = {}

    def __call__(self, batch: torch.Tensor, device: torch.device | str | None = None) -> torch.Tensor:
        device = torch.device(device) if device is not None else batch.device
        batch = batch.to(device, non_blocking=True)
        if batch.dtype != torch.uint8 or batch.ndim != 4 or batch.shape[1] != 3:
            raise SGLoraError(f"expected uint8 images (B, 3, H, W), got {batch.dtype} {tuple(batch.shape)}")
        if device not in self._on:
            self._on[device] = self.table.to(device).reshape(-1)
        offset = torch.arange(3, device=device).view(1, 3, 1, 1) * 256
        return torch.take(self._on[device], batch.long() + offset)


class ImageCache:
    """One dataset's cached images for one processor: ``pixels.npy`` (uint8 N x 3 x H x W,
    read with ``pread``, so reading never maps the file into memory) and ``images.json``
    (the image paths, row order)."""

    def __init__(self, folder: str | Path):
        folder = Path(folder)
        meta = folder / "images.json"
        if not meta.exists():
            raise SGLoraError(f"{folder}: not an image cache (images.json missing)")
        info = json.loads(meta.read_text())
        self.folder, self.key = folder, info["key"]
        self.shape = tuple(info["shape"])  # (3, H, W)
        self.row = {p: i for i, p in enumerate(info["paths"])}
        arr = np.load(folder / "pixels.npy", mmap_mode="r")
        if arr.shape != (len(self.row), *self.shape) or arr.dtype != np.uint8:
            raise SGLoraError(f"{folder}/pixels.npy: shape {arr.shape} {arr.dtype}; images.json says "
                              f"{(len(self.row), *self.shape)} uint8")
        self.offset, self.nbytes = arr.offset, int(np.prod(self.shape))
        del arr
        self._fd: int | None = None
        self._pid = -1

    @classmethod
    def open(cls, root: str | Path, processor) -> "ImageCache":
        """The cache under ``root`` for ``processor``; an error names the keys present."""
        root, key = Path(root), processor_key(processor)
        if not (root / key / "images.json").exists():
            have = sorted(p.parent.name for p in root.glob("*/images.json"))
            raise SGLoraError(f"{root}: no image cache for this backbone's image processor (key {key}); "
                              f"present: {have or 'none'}. Rebuild it (rule image_cache / sglora image-cache).")
        return cls(root / key)

    def rows(self, paths: Sequence[str]) -> np.ndarray:
        """The cache rows of the images at ``paths``; an image not in the cache is an error."""
        missing = [p for p in paths if p not in self.row]
        if missing:
            raise SGLoraError(f"{self.folder}: {len(missing)} image(s) not in the cache, e.g. {missing[0]}; "
                              "rebuild it from the current manifest")
        return np.array([self.row[p] for p in paths], dtype=np.int64)

    def read(self, rows: Iterable[int]) -> np.ndarray:
        """uint8 (len(rows), 3, H, W), one ``pread`` per image."""
        if self._fd is None or self._pid != os.getpid():  # one descriptor per (worker) process
            self._fd, self._pid = os.open(self.folder / "pixels.npy", os.O_RDONLY), os.getpid()
        rows = list(rows)
        out = np.empty((len(rows), *self.shape), dtype=np.uint8)
        flat = out.reshape(len(rows), -1)
        for i, r in enumerate(rows):
            buf = os.pread(self._fd, self.nbytes, self.offset + int(r) * self.nbytes)
            if len(buf) != self.nbytes:
                raise SGLoraError(f"{self.folder}/pixels.npy: truncated at row {r}")
            flat[i] = np.frombuffer(buf, dtype=np.uint8)
        return out

    def __getstate__(self):  # a DataLoader worker opens its own descriptor
        return {**self.__dict__, "_fd": None, "_pid": -1}

    def __del__(self):
        if getattr(self, "_fd", None) is not None and self._pid == os.getpid():
            os.close(self._fd)


class TaskImages(torch.utils.data.Dataset):
    """The uint8 images of a list of paths, from the cache when one is given, else
    decoded and resized on the fly (batch by batch: the same pixels, just slower)."""

    def __init__(self, paths: Sequence[str], processor, cache: ImageCache | None = None):
        self.paths = list(paths)
        self.cache = cache
        self.processor = None if cache is not None else processor
        self.cache_rows = cache.rows(self.paths) if cache is not None else None

    def __len__(self) -> int:
        return len(self.paths)

    def __getitems__(self, idx: Sequence[int]) -> torch.Tensor:
        if self.cache is not None:
            return torch.from_numpy(self.cache.read(self.cache_rows[list(idx)]))
        return torch.from_numpy(decode([self.paths[i] for i in idx], self.processor))

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.__getitems__([i])[0]


def _whole(batch):
    return batch


class Schedule:
    """The index batches of the current pass, for a persistent DataLoader: set
    ``batches`` before each epoch; the loader reads them anew when iterated."""

    def __init__(self, batches: Sequence[Sequence[int]] = ()):
        self.batches = [list(b) for b in batches]

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def loader(images: TaskImages, batches: Schedule | Sequence[Sequence[int]] | int, workers: int = 0,
           pin_memory: bool = False) -> torch.utils.data.DataLoader:
    """A DataLoader of uint8 batches: ``batches`` is a :class:`Schedule` (training order,
    changed per epoch), a list of index batches, or a batch size (file order).
    ``workers`` = the step's threads; with 0 or 1 the reads happen in this process (a
    worker process costs more than a cached read). Its own generator leaves torch's
    global random stream untouched."""
    if isinstance(batches, int):
        size = batches
        batches = [list(range(i, min(i + size, len(images)))) for i in range(0, len(images), size)]
    if not isinstance(batches, Schedule):
        batches = Schedule(batches)
    workers = workers if workers and workers > 1 else 0
    return torch.utils.data.DataLoader(images, batch_sampler=batches, num_workers=workers, collate_fn=_whole,
                                       pin_memory=pin_memory, persistent_workers=workers > 0,
                                       generator=torch.Generator())


class Batches:
    """A task's images as normalised float batches on a device, re-iterable (one pass per
    LoRA in evaluation). Never holds more than the batches in flight."""

    def __init__(self, images: TaskImages, normalize: Normalize, batch_size: int = 256, workers: int = 0):
        self.images, self.normalize, self.batch_size, self.workers = images, normalize, batch_size, workers
        self._loaders: dict[bool, torch.utils.data.DataLoader] = {}  # one per pin_memory; workers persist

    def __len__(self) -> int:
        return len(self.images)

    def on(self, device: torch.device | str) -> Iterator[torch.Tensor]:
        """The batches as normalised float tensors on ``device``."""
        device = torch.device(device)
        pin = device.type == "cuda"
        if pin not in self._loaders:
            self._loaders[pin] = loader(self.images, self.batch_size, self.workers, pin_memory=pin)
        for batch in self._loaders[pin]:
            yield self.normalize(batch, device)


def task_batches(paths: Sequence[str], processor, cache: str | Path | None = None, batch_size: int = 256,
                 workers: int = 0) -> Batches:
    """:class:`Batches` of ``paths``, from the cache folder ``cache`` (root of the keyed
    caches) when given."""
    images = TaskImages(paths, processor, ImageCache.open(cache, processor) if cache else None)
    return Batches(images, Normalize(processor), batch_size, workers)


def build_cache(paths: Sequence[str], processor, root: str | Path, workers: int = 1, batch_size: int = 64) -> dict:
    """Decode, resize and crop every image once into ``root/<key>/`` (atomically).

    ``workers`` DataLoader processes decode in parallel; the rows are streamed to disk in
    order, so memory stays at a few batches whatever the dataset's size."""
    paths = list(dict.fromkeys(paths))
    if not paths:
        raise SGLoraError("image cache: no images to cache")
    key = processor_key(processor)
    images = TaskImages(paths, processor)
    first = images.__getitems__([0])
    shape = tuple(first.shape[1:])
    folder = Path(root) / key
    with atomic_path(folder, directory=True) as tmp:
        with open(tmp / "pixels.npy", "wb") as f:
            np.lib.format.write_array_header_2_0(
                f, {"descr": "|u1", "fortran_order": False, "shape": (len(paths), *shape)})
            for batch in loader(images, batch_size, workers if workers > 1 else 0):
                if tuple(batch.shape[1:]) != shape:
                    raise SGLoraError(f"image cache: the processor gave {tuple(batch.shape[1:])} and {shape}; "
                                      "it must give one size (center crop)")
                f.write(memoryview(batch.numpy()).cast("B"))
        write_json(tmp / "images.json", {"key": key, "shape": list(shape), "paths": paths,
                                         "processor": json.loads(json.dumps(_image_processor(processor).to_dict(), default=str))})
    return {"images": len(paths), "key": key, "shape": list(shape),
            "bytes": int(len(paths) * np.prod(shape))}
