"""Helpers every dataset adapter shares: checked file and field access, image checks.

Adapters read files other people wrote, so every lookup goes through a helper that
turns a missing file or a missing/malformed field into one :class:`SGLoraError` that
names the file, the field and what was expected, instead of a bare ``KeyError``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pyarrow as pa

from ...io import SGLoraError
from ..manifest import describe

log = logging.getLogger("sglora.data.datasets")

BAD_IMAGES_KEY = b"sglora.bad_images"
ON_BAD_IMAGE = ("skip", "error")


def require_root(root: str | Path, kind: str) -> Path:
    """The dataset's root folder; an error when it is missing."""
    root = Path(root)
    if not root.is_dir():
        raise SGLoraError(f"{root}: {kind} dataset root not found (expected a folder)")
    return root


def require_file(path: Path, what: str) -> Path:
    """``path``, which must be a file (``what``: what it should hold, for the error)."""
    if not path.is_file():
        raise SGLoraError(f"{path}: file not found (expected {what})")
    return path


def read_text(path: Path, what: str) -> str:
    """A text file's content as UTF-8; other bytes are an error naming the file and line."""
    require_file(path, what)
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise SGLoraError(f"{path}: line {line} is not UTF-8 text (byte {err.start}); expected {what}") from err


def load_json(path: Path, what: str) -> Any:
    """A dataset's JSON file; an error names the file and what it should hold."""
    require_file(path, what)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise SGLoraError(f"{path}: not valid JSON ({err}); expected {what}") from err


def field(obj: Any, key: str, file: Path, where: str, kind: type | tuple = object) -> Any:
    """``obj[key]``, checked: ``where`` is the path of ``obj`` inside the file
    (``"annotations[3]"``), so the error reads ``file: field 'annotations[3].caption' ...``."""
    name = f"{where}.{key}" if where else key
    if not isinstance(obj, dict):
        raise SGLoraError(f"{file}: field {where or '<top>'!r} is {type(obj).__name__}; expected an object")
    if key not in obj:
        raise SGLoraError(f"{file}: field {name!r} missing")
    value = obj[key]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        expected = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise SGLoraError(f"{file}: field {name!r} is {type(value).__name__}; expected {expected}")
    return value


def check_on_bad_image(value: str) -> str:
    """The option ``on_bad_image``, checked against its choices."""
    if value not in ON_BAD_IMAGE:
        raise SGLoraError(f"option 'on_bad_image' is {value!r}; expected one of {ON_BAD_IMAGE}")
    return value


def image_ok(path: Path) -> bool:
    """True when PIL can open and verify the file (a truncated or non-image file is not)."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            img.verify()
        return True
    except Exception:  # PIL raises many types for a broken file; all mean "bad image"
        return False


def filter_images(rows: list[dict], on_bad_image: str) -> tuple[list[dict], list[str]]:
    """Drop rows whose image is missing or unreadable (``skip``) or raise (``error``).
    Each distinct file is checked once, however many tasks it belongs to."""
    check_on_bad_image(on_bad_image)
    status: dict[str, bool] = {}
    for row in rows:
        path = row["image_path"]
        if path not in status:
            status[path] = image_ok(Path(path))
            if not status[path] and on_bad_image == "error":
                raise SGLoraError(f"{path}: missing or unreadable image (on_bad_image='error')")
    bad = sorted(p for p, ok in status.items() if not ok)
    if bad:
        log.warning("skipped %d bad image(s): %s", len(bad), ", ".join(bad[:10]) + (" ..." if len(bad) > 10 else ""))
    return [r for r in rows if status[r["image_path"]]], bad


def check_limit(value: Any, name: str) -> int | None:
    """An optional positive integer option (``None``: no limit)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise SGLoraError(f"option {name!r} is {value!r}; expected a positive integer or null")
    return value


def select_names(available: list[str], wanted: list[str] | None, option: str, file: Path) -> list[str]:
    """The ``wanted`` subset of ``available`` (all when ``None``); an unknown name is an error."""
    if wanted is None:
        return list(available)
    if isinstance(wanted, str):
        wanted = [wanted]
    unknown = [w for w in wanted if w not in available]
    if unknown:
        raise SGLoraError(
            f"{file}: option {option!r} names {unknown}, not found; expected names from {sorted(available)[:20]}"
            + (" ..." if len(available) > 20 else "")
        )
    return list(wanted)


def with_bad_images(table: pa.Table, bad: list[str]) -> pa.Table:
    """Record the skipped images in the table's schema metadata (it survives Parquet)."""
    meta = dict(table.schema.metadata or {})
    meta[BAD_IMAGES_KEY] = json.dumps(sorted(bad)).encode()
    return table.replace_schema_metadata(meta)


def bad_images(table: pa.Table) -> list[str]:
    """The images an adapter skipped as missing or unreadable (from the table's metadata)."""
    raw = (table.schema.metadata or {}).get(BAD_IMAGES_KEY)
    return json.loads(raw) if raw else []


def class_row(dataset: str, task: str, name: str, template: str, image_path: Path, split: str) -> dict:
    """A manifest row of an image labelled with one class and no captions of its own (its
    class's description stands for them)."""
    return dict(dataset=dataset, task=task, task_name=name, class_name=name, description=describe(name, template),
                image_path=str(image_path), captions=[], split=split)
