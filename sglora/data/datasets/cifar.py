"""CIFAR-100 superclasses as classification tasks: 20 tasks, each a 5-way problem.

Reads the python version (``cifar-100-python/{train,test,meta}``: pickled dicts with
``b'data'`` N x 3072 uint8, the R, G and B 32x32 planes of each image row after row,
``b'fine_labels'``, ``b'coarse_labels'``, ``b'filenames'``; ``meta`` holds
``b'fine_label_names'`` and ``b'coarse_label_names'``). Every later step wants image
files, so each image is written once as a PNG under ``image_dir``; a rerun leaves
files that are already there (same byte size) alone.

A task is a superclass (``task_name`` "aquatic mammals"), ``class_name`` is the fine
class ("otter"), and the single caption is "a photo of a <fine class>".
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import numpy as np
import pyarrow as pa

from ...io import SGLoraError, atomic_path, slugify, unique_slugs
from ..manifest import DEFAULT_TEMPLATE, describe, make_manifest
from ._common import check_limit, require_file, require_root, select_names

SPLITS = {"train": "train", "test": "test"}
CAPTION = "a photo of a {}"
# A pickle can run code; these are the only globals the official files need.
_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
}


def _latin1_encode(text: str, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    """``_codecs.encode`` as protocol-2 pickles written by Python 3 use it for bytes
    (``encode(text, "latin1")``); only that encoding is allowed."""
    if encoding not in ("latin1", "latin-1") or not isinstance(text, str):
        raise pickle.UnpicklingError(f"_codecs.encode with encoding {encoding!r} is not allowed in a CIFAR pickle")
    return text.encode("latin1", errors)


class _SafeUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) == ("_codecs", "encode"):
            return _latin1_encode
        if (module, name) not in _ALLOWED:
            raise pickle.UnpicklingError(f"global '{module}.{name}' is not allowed in a CIFAR pickle")
        return super().find_class(module, name)


def _load(path: Path, keys: list[bytes]) -> dict:
    require_file(path, f"a CIFAR-100 python pickle with {[k.decode() for k in keys]}")
    try:
        with path.open("rb") as f:
            data = _SafeUnpickler(f, encoding="bytes").load()
    except Exception as err:  # pickle raises many types on a broken file
        raise SGLoraError(f"{path}: not a readable CIFAR pickle ({err})") from err
    if not isinstance(data, dict):
        raise SGLoraError(f"{path}: holds a {type(data).__name__}; expected a dict")
    for key in keys:
        if key not in data:
            raise SGLoraError(f"{path}: field {key!r} missing")
    return data


def _names(meta: dict, key: bytes, path: Path) -> list[str]:
    names = meta[key]
    if not isinstance(names, list) or not all(isinstance(n, (bytes, str)) for n in names):
        raise SGLoraError(f"{path}: field {key!r} is not a list of names")
    return [(n.decode() if isinstance(n, bytes) else n).replace("_", " ") for n in names]


def _labels(data: dict, key: bytes, n: int, size: int, path: Path) -> np.ndarray:
    labels = np.asarray(data[key])
    if labels.shape != (n,) or labels.dtype.kind not in "iu" or labels.min() < 0 or labels.max() >= size:
        raise SGLoraError(f"{path}: field {key!r} is not {n} integer labels in 0..{size - 1}")
    return labels


def _write_pngs(images: list[tuple[np.ndarray, Path]]) -> None:
    """Write the PNGs of one read as a set: a failure removes the files this call wrote."""
    written: list[Path] = []
    try:
        for pixels, path in images:
            if _write_png(pixels, path):
                written.append(path)
    except BaseException:
        for path in written:
            path.unlink(missing_ok=True)
        raise


def _write_png(pixels: np.ndarray, path: Path) -> bool:
    """Write one 32x32 RGB image unless an identical-size file is already there; True if written."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(pixels.reshape(3, 32, 32).transpose(1, 2, 0)).save(buf, format="PNG")
    data = buf.getvalue()
    if path.is_file() and path.stat().st_size == len(data):
        return False
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return True


def build(
    root: str | Path,
    image_dir: str | Path | None = None,
    superclasses: list[str] | None = None,
    max_images: int | None = None,
    template: str = DEFAULT_TEMPLATE,
) -> pa.Table:
    """The CIFAR-100 superclass manifest; writes the PNGs it lists.

    - ``image_dir``: where the PNGs go (``<image_dir>/<split>/<fine class>/<index>_<file>``);
      default ``<root>/cifar-100-png``.
    - ``superclasses``: superclass names to keep, with spaces (``"aquatic mammals"``);
      default all 20.
    - ``max_images``: at most this many images per fine class and split, in file order.
    - ``template``: description template; ``<superclass name>`` (or ``<class name>``) is
      the superclass, ``<classes>`` its five fine classes.
    """
    root = require_root(root, "cifar100")
    max_images = check_limit(max_images, "max_images")
    base = root / "cifar-100-python"
    image_dir = Path(image_dir) if image_dir is not None else root / "cifar-100-png"
    meta_path = base / "meta"
    meta = _load(meta_path, [b"fine_label_names", b"coarse_label_names"])
    fine_names = _names(meta, b"fine_label_names", meta_path)
    coarse_names = _names(meta, b"coarse_label_names", meta_path)
    wanted = select_names(coarse_names, superclasses, "superclasses", meta_path)
    slugs = unique_slugs(wanted, str(meta_path))
    unique_slugs(fine_names, str(meta_path))  # fine names become folder names
    members: dict[str, list[str]] = {}
    rows, images = [], []
    for split, file in SPLITS.items():
        path = base / file
        data = _load(path, [b"data", b"fine_labels", b"coarse_labels", b"filenames"])
        pixels = np.asarray(data[b"data"])
        if pixels.ndim != 2 or pixels.shape[1] != 3072 or pixels.dtype != np.uint8:
            raise SGLoraError(f"{path}: field b'data' has shape {pixels.shape} {pixels.dtype}; expected N x 3072 uint8")
        n = len(pixels)
        fine = _labels(data, b"fine_labels", n, len(fine_names), path)
        coarse = _labels(data, b"coarse_labels", n, len(coarse_names), path)
        files = data[b"filenames"]
        if not isinstance(files, list) or len(files) != n:
            raise SGLoraError(f"{path}: field b'filenames' is not a list of {n} names")
        taken: dict[int, int] = {}
        for i in range(n):
            superclass, fine_class = coarse_names[coarse[i]], fine_names[fine[i]]
            if superclass not in slugs:
                continue
            members.setdefault(superclass, [])
            if fine_class not in members[superclass]:
                members[superclass].append(fine_class)
            if max_images is not None and taken.get(fine[i], 0) >= max_images:
                continue
            taken[fine[i]] = taken.get(fine[i], 0) + 1
            name = files[i].decode() if isinstance(files[i], bytes) else str(files[i])
            out = image_dir / split / slugify(fine_class) / f"{i:05d}_{slugify(Path(name).stem)}.png"
            images.append((pixels[i], out))  # written once every split has been read and checked
            rows.append(
                dict(
                    dataset="cifar100",
                    task=slugs[superclass],
                    task_name=superclass,
                    class_name=fine_class,
                    description=None,
                    image_path=str(out),
                    captions=[CAPTION.format(fine_class)],
                    split=split,
                )
            )
    for row in rows:
        row["description"] = describe(row["task_name"], template, sorted(members[row["task_name"]]))
    table = make_manifest(rows)
    _write_pngs(images)
    return table
