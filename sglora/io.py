"""Small I/O helpers shared by every step: atomic writes, slugs, safe paths.

Every file a step writes goes through :func:`atomic_path`: it is written to a temporary
name in the same folder and renamed into place, so an interrupted run never leaves a
half-written file behind.
"""

from __future__ import annotations

import contextlib
import hashlib
import glob
import json
import os
import re
import shutil
import tempfile
import unicodedata
from dataclasses import MISSING, field, fields
from pathlib import Path
from typing import Any, ClassVar, Iterator


class SGLoraError(Exception):
    """An error in user input (a config, a dataset, a file) with a clear message."""


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, directory: bool = False) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` on success.

    With ``directory=True`` the temporary path is a fresh folder, and an existing
    folder at ``path`` is replaced. On error the temporary file or folder is removed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale(path)
    if directory:
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    else:
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        tmp = Path(name)
    try:
        yield tmp
        _share(tmp, directory)
        if directory:
            if path.exists():
                old = path.with_name(f".{path.name}.old")
                shutil.rmtree(old, ignore_errors=True)
                path.rename(old)
                tmp.rename(path)
                shutil.rmtree(old, ignore_errors=True)
            else:
                tmp.rename(path)
        else:
            os.replace(tmp, path)
    except BaseException:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        raise


def _share(tmp: Path, directory: bool) -> None:
    """Give a finished temporary the mode a plain ``open``/``mkdir`` would: ``mkstemp`` and
    ``mkdtemp`` create 0600/0700, which colleagues on a shared file system cannot read."""
    if tmp.exists():
        os.chmod(tmp, (0o777 if directory else 0o666) & ~umask())


def umask() -> int:
    """The process's file-creation mask (read without changing it for good)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _remove_stale(path: Path) -> None:
    """Remove temporaries a killed earlier write of ``path`` left behind. Safe: one output
    has one writer at a time (Snakemake runs one job per output)."""
    for stale in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        if stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)
        else:
            stale.unlink(missing_ok=True)
    old = path.with_name(f".{path.name}.old")
    if old.exists():
        shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def exclusive(lock: str | os.PathLike, what: str) -> Iterator[None]:
    """Hold an exclusive lock on the file ``lock`` for the block, or refuse at once naming
    ``what``. The file is created (with its folder) and removed on release; the kernel
    drops the lock when the process ends, however it ends."""
    import fcntl

    lock = Path(lock)
    try:
        lock.parent.mkdir(parents=True, exist_ok=True)
        while True:
            f = open(lock, "a")
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                f.close()
                raise SGLoraError(f"{what}: another process is writing it (it holds {lock}); "
                                  "wait for it to finish") from None
            try:  # a holder that finished removed the file: lock the one that is there now
                if os.fstat(f.fileno()).st_ino == os.stat(lock).st_ino:
                    break
            except FileNotFoundError:
                pass
            f.close()
    except OSError as err:
        raise SGLoraError(f"{what}: cannot write there ({type(err).__name__}: {one_line(err)})") from err
    try:
        yield
    finally:
        lock.unlink(missing_ok=True)
        f.close()


def one_line(err: BaseException, limit: int = 300) -> str:
    """An exception's message on one line (readers' messages can span several)."""
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) <= limit else text[:limit] + " ..."


@contextlib.contextmanager
def reading(path: str | os.PathLike, what: str) -> Iterator[None]:
    """Turn any low-level error of a reader (truncated, random or malformed bytes: pyarrow,
    safetensors, json, torch) into one :class:`SGLoraError` naming the file."""
    try:
        yield
    except SGLoraError as err:
        if str(path) in str(err):
            raise
        raise SGLoraError(f"{path}: {err}") from err
    except Exception as err:  # noqa: BLE001 - every reader error becomes one line naming the file
        raise SGLoraError(f"{path}: not a readable {what} ({type(err).__name__}: {one_line(err)})") from err


# an indented list of ints: real newlines never occur inside a JSON string
_INT_LIST = re.compile(r"\[\n\s*-?\d+(?:,\n\s*-?\d+)*\n\s*\]")


def write_json(path: str | os.PathLike, obj: Any, flat_int_lists: bool = False) -> None:
    """Write ``obj`` as indented, key-sorted JSON, atomically (byte-stable across runs).
    ``flat_int_lists``: lists of ints on one line each (per-query ranks stay readable)."""
    text = json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False)
    if flat_int_lists:
        text = _INT_LIST.sub(lambda m: "[" + ", ".join(re.findall(r"-?\d+", m.group(0))) + "]", text)
    with atomic_path(path) as tmp:
        tmp.write_text(text + "\n")


def read_json(path: str | os.PathLike) -> Any:
    """Read a JSON file; an error names the file."""
    path = Path(path)
    if not path.exists():
        raise SGLoraError(f"{path}: file not found")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise SGLoraError(f"{path}: not valid JSON ({one_line(err)})") from err


#: how every Parquet file is written: each page carries a CRC, so a flipped bit is a read
#: error (readers pass ``page_checksum_verification=True``) instead of a silently changed value
PARQUET_WRITE = {"compression": "zstd", "write_page_checksum": True}


def write_table(path: str | os.PathLike, table) -> None:
    """Write a pyarrow Table (or pandas DataFrame) as Parquet, atomically and deterministically."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not isinstance(table, pa.Table):
        table = pa.Table.from_pandas(table, preserve_index=False)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, **PARQUET_WRITE)


def file_sha256(path: str | os.PathLike, what: str = "a file") -> str:
    """The SHA-256 of a file's bytes (hex), e.g. to name exactly which model a result came from."""
    path = Path(path)
    if not path.is_file():
        raise SGLoraError(f"{path}: file not found (expected {what})")
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def slugify(name: str) -> str:
    """A safe task id from a free-text class name: ``"American Pit Bull Terrier"`` ->
    ``"american_pit_bull_terrier"``. Only ``[a-z0-9_]`` survive, so a slug can never
    name a path outside its folder."""
    text = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    slug = re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")
    if not slug:
        raise SGLoraError(f"class name {name!r} gives an empty task id")
    return slug


def unique_slugs(names: list[str], where: str = "") -> dict[str, str]:
    """Map each name to its slug; two names with one slug are an error naming both."""
    seen: dict[str, str] = {}
    for name in names:
        slug = slugify(name)
        if slug in seen and seen[slug] != name:
            raise SGLoraError(
                f"{where}: class names {seen[slug]!r} and {name!r} both give the task id {slug!r}"
            )
        seen[slug] = name
    return {name: slug for slug, name in seen.items()}


def inside(root: str | os.PathLike, *parts: str) -> Path:
    """Join ``parts`` under ``root`` and refuse any result that escapes ``root``."""
    root = Path(root).resolve()
    path = root.joinpath(*parts).resolve()
    if path != root and root not in path.parents:
        raise SGLoraError(f"path {'/'.join(parts)!r} escapes {root}")
    return path


_ST_DTYPES = {"float32": "F32", "float64": "F64", "float16": "F16", "int64": "I64", "int32": "I32",
              "int16": "I16", "int8": "I8", "uint8": "U8", "bool": "BOOL"}


def save_safetensors(path: str | os.PathLike, tensors: dict, metadata: dict[str, str] | None = None) -> None:
    """Write a safetensors file atomically and *byte-deterministically*.

    The reference writer orders the header's metadata by hash-map order, which changes
    from run to run; here the header is sorted JSON, so the same tensors and metadata
    always give the same bytes. Files load with ``safetensors`` / ``peft`` as usual.
    Accepts numpy arrays or torch tensors (moved to CPU).
    """
    import numpy as np

    arrays = {}
    for name, t in tensors.items():
        if hasattr(t, "detach"):
            t = t.detach().cpu().contiguous().numpy()
        arrays[name] = np.ascontiguousarray(t)
    header: dict[str, Any] = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    offset = 0
    names = sorted(arrays)
    for name in names:
        a = arrays[name]
        if str(a.dtype) not in _ST_DTYPES:
            raise SGLoraError(f"{path}: tensor {name!r} has dtype {a.dtype}, which safetensors cannot store here")
        header[name] = {"dtype": _ST_DTYPES[str(a.dtype)], "shape": list(a.shape),
                        "data_offsets": [offset, offset + a.nbytes]}
        offset += a.nbytes
    blob = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(len(blob).to_bytes(8, "little"))
            f.write(blob)
            for name in names:
                f.write(arrays[name].astype(arrays[name].dtype.newbyteorder("<"), copy=False).tobytes())


def setting(default=MISSING, help: str = "", *, factory=None, min=None, max=None, above=None,
            choices=None):
    """A field of a settings dataclass that carries its help text and bounds (checked by
    :class:`Settings` when the object is made). ``min``/``max``: inclusive bounds;
    ``above``: exclusive lower bound; ``choices``: allowed values (for a list, of each
    item). ``factory``: default factory for a mutable default."""
    meta = {"help": help, "min": min, "max": max, "above": above, "choices": choices}
    meta = {k: v for k, v in meta.items() if v is not None}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


class Settings:
    """Base of every settings dataclass (``LoraSpec``, ``CVAESpec``, ...): one config section.

    Each field is made with :func:`setting`, so it documents itself and states its bounds;
    ``__post_init__`` checks them (an object built directly is checked like one read from
    a config) and then :meth:`check` (cross-field rules). Errors name ``<section>.<field>``.
    """

    section: ClassVar[str] = ""

    def __post_init__(self):
        for f in fields(self):
            check_value(f"{self.section}.{f.name}", getattr(self, f.name), f.metadata)
        self.check()

    def check(self) -> None:
        """Rules between fields (override)."""

    @classmethod
    def from_dict(cls, values: dict | None):
        """The settings of a config section (a dict), refusing unknown keys by name."""
        return from_section(cls, values, cls.section)


def check_value(name: str, value: Any, meta) -> None:
    """Check ``value`` against a :func:`setting`'s bounds; an error names ``name``."""
    if value is None:
        return
    choices = meta.get("choices")
    if choices is not None:
        items = value if isinstance(value, list) else [value]
        bad = [v for v in items if v not in choices]
        if bad or (isinstance(value, list) and not value):
            what = "a non-empty subset" if isinstance(value, list) else "one"
            raise SGLoraError(f"{name}: {value!r} is not {what} of {list(choices)}")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return
    if "min" in meta and value < meta["min"]:
        raise SGLoraError(f"{name} must be >= {meta['min']}, got {value!r}")
    if "max" in meta and value > meta["max"]:
        raise SGLoraError(f"{name} must be <= {meta['max']}, got {value!r}")
    if "above" in meta and not value > meta["above"]:
        raise SGLoraError(f"{name} must be > {meta['above']}, got {value!r}")


def from_section(cls, values: dict | None, section: str):
    """Build the dataclass ``cls`` from a config section, refusing unknown keys by name."""
    values = dict(values or {})
    known = [f.name for f in fields(cls)]
    unknown = set(values) - set(known)
    if unknown:
        raise SGLoraError(f"{section}: unknown key(s) {sorted(unknown)}; known keys: {sorted(known)}")
    return cls(**values)


def json_object(text: str | None, flag: str) -> dict[str, Any]:
    """Parse a command-line JSON object (a config section); an error names the flag."""
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise SGLoraError(f"{flag}: not valid JSON ({err}); expected a JSON object") from err
    if not isinstance(value, dict):
        raise SGLoraError(f"{flag}: is a {type(value).__name__}; expected a JSON object")
    return value


def comma_list(text: str) -> list[str]:
    """``"a,b,,c"`` -> ``["a", "b", "c"]``."""
    return [t for t in text.split(",") if t]
