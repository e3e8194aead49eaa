"""Dataset adapters: each reads one dataset in the layout its authors distribute and
returns a task manifest (see :mod:`sglora.data.manifest`).

>>> table = build_manifest("pets", "/data/oxford-iiit-pet", max_images=50)

``ADAPTERS`` maps a dataset kind to its ``build(root, **options)`` function; the options
of each are the keyword arguments of that function (documented there and in
``docs/datasets.md``). Images an adapter found missing or unreadable are left out and
listed by :func:`bad_images`.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Callable

import pyarrow as pa

from ...io import SGLoraError
from . import cifar, coco, flickr, flowers, pets
from ._common import bad_images

ADAPTERS: dict[str, Callable[..., pa.Table]] = {
    "coco": coco.build,
    "pets": pets.build,
    "flowers": flowers.build,
    "flickr30k": flickr.build,
    "cifar100": cifar.build,
}


def adapter_options(kind: str) -> dict[str, object]:
    """The options an adapter takes, with their defaults."""
    fn = _adapter(kind)
    params = list(inspect.signature(fn).parameters.values())[1:]
    return {p.name: (None if p.default is inspect.Parameter.empty else p.default) for p in params}


def build_manifest(kind: str, root: str | Path, **options) -> pa.Table:
    """Build the manifest of dataset ``kind`` found under ``root``.

    Unknown options are an error (a typo must not silently fall back to a default).
    """
    fn = _adapter(kind)
    known = adapter_options(kind)
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise SGLoraError(f"dataset {kind!r}: unknown option(s) {unknown}; expected some of {sorted(known)}")
    return fn(root, **options)


def _adapter(kind: str) -> Callable[..., pa.Table]:
    if kind not in ADAPTERS:
        raise SGLoraError(f"unknown dataset kind {kind!r}; expected one of {sorted(ADAPTERS)}")
    return ADAPTERS[kind]


__all__ = ["ADAPTERS", "adapter_options", "bad_images", "build_manifest"]
