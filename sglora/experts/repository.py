"""The expert repository: every snapshot of every expert, in Parquet.

A repository is a folder with two tables:

- ``snapshots.parquet``: one row per snapshot: ``task, task_name, description, snapshot,
  vector`` (``vector`` a fixed-size list of float32). One row group per expert, written
  as a stream, so assembling never holds more than one expert in memory.
- ``experts.parquet``: one row per expert: ``task, task_name, description,
  text_embedding, visual_embedding`` (d_n in each modality), ``mu`` and ``var`` (the
  element-wise mean and variance of its snapshots), ``snapshots``.

Both carry the LoRA layout (module keys, shapes, offsets), the LoRA spec and the backbone
in their schema metadata, so any vector turns back into a PEFT adapter.
DuckDB and pandas read them as they are.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..io import PARQUET_WRITE, SGLoraError, atomic_path, read_json, reading
from .lora import Layout, LoraSpec


EXPERTS_TABLE = "expert table (Parquet written by 'sglora assemble')"
SNAPSHOTS_TABLE = "snapshot table (Parquet written by 'sglora assemble')"

#: a LoRA whose norm is above this multiple of the repository's largest expert norm is not
#: a LoRA of it (a corrupted weight, an overflow): sampling and evaluation refuse it
NORM_FACTOR = 100.0


def _meta(layout: Layout, lora: dict, backbone: str) -> dict[bytes, bytes]:
    return {b"sglora.layout": layout.to_json().encode(), b"sglora.lora": json.dumps(lora, sort_keys=True).encode(),
            b"sglora.backbone": backbone.encode()}


def assemble(
    out_dir: str | Path,
    experts: list[dict],
    embeddings: dict[str, dict],
    progress: bool = True,
) -> dict:
    """Stream experts into a repository folder.

    ``experts``: ``[{"task": ..., "lora_dir": ...}]``; ``embeddings[task]``: the row of the
    task embedding table (``task_name, description, text_embedding, visual_embedding``).
    """
    from tqdm import tqdm

    from .training import read_snapshots

    if not experts:
        raise SGLoraError("assemble: the expert list is empty")
    layout = lora = backbone = None
    expert_rows = []
    out_dir = Path(out_dir)
    with atomic_path(out_dir, directory=True) as tmp:
        writer = None
        try:
            for e in tqdm(experts, desc="assemble", disable=not progress):
                task = e["task"]
                if task not in embeddings:
                    raise SGLoraError(f"assemble: no task embedding for expert {task!r}")
                snaps, lay = read_snapshots(e["lora_dir"])
                info = _check_expert(Path(e["lora_dir"]), task, snaps)
                if layout is None:
                    layout, lora, backbone = lay, info["lora"], _provenance(info["backbone"], out_dir)
                    vec_type = pa.list_(pa.float32(), layout.dim)
                    schema = pa.schema([("task", pa.string()), ("task_name", pa.string()), ("description", pa.string()),
                                        ("snapshot", pa.int32()), ("vector", vec_type)], metadata=_meta(layout, lora, backbone))
                    writer = pq.ParquetWriter(tmp / "snapshots.parquet", schema, **PARQUET_WRITE)
                elif lay.keys != layout.keys or lay.shapes != layout.shapes:
                    raise SGLoraError(f"{Path(e['lora_dir']) / 'snapshots.safetensors'}: LoRA layout (module keys and "
                                      f"shapes, {lay.dim} values) differs from the first expert's ({layout.dim} values)")
                emb = embeddings[task]
                m = len(snaps)
                flat = pa.FixedSizeListArray.from_arrays(pa.array(snaps.reshape(-1), pa.float32()), layout.dim)
                writer.write_table(pa.table({
                    "task": [task] * m, "task_name": [emb["task_name"]] * m, "description": [emb["description"]] * m,
                    "snapshot": pa.array(np.arange(m), pa.int32()), "vector": flat}, schema=schema))
                snaps64 = snaps.astype(np.float64)
                expert_rows.append({
                    "task": task, "task_name": emb["task_name"], "description": emb["description"],
                    "text_embedding": list(emb["text_embedding"]), "visual_embedding": list(emb["visual_embedding"]),
                    "mu": snaps64.mean(0).astype(np.float32), "var": snaps64.var(0).astype(np.float32), "snapshots": m})
                del snaps, snaps64, flat
        finally:
            if writer is not None:
                writer.close()
        emb_dim = len(expert_rows[0]["text_embedding"])
        vis_dim = len(expert_rows[0]["visual_embedding"])
        schema = pa.schema([("task", pa.string()), ("task_name", pa.string()), ("description", pa.string()),
                            ("text_embedding", pa.list_(pa.float32(), emb_dim)),
                            ("visual_embedding", pa.list_(pa.float32(), vis_dim)),
                            ("mu", pa.list_(pa.float32(), layout.dim)), ("var", pa.list_(pa.float32(), layout.dim)),
                            ("snapshots", pa.int32())], metadata=_meta(layout, lora, backbone))
        cols = {f.name: [r[f.name] for r in expert_rows] for f in schema}
        cols["mu"] = pa.FixedSizeListArray.from_arrays(pa.array(np.concatenate(cols["mu"]), pa.float32()), layout.dim)
        cols["var"] = pa.FixedSizeListArray.from_arrays(pa.array(np.concatenate(cols["var"]), pa.float32()), layout.dim)
        pq.write_table(pa.table(cols, schema=schema), tmp / "experts.parquet", **PARQUET_WRITE)
    return {"experts": len(expert_rows), "dim": layout.dim, "snapshots": sum(r["snapshots"] for r in expert_rows)}


def _check_expert(lora_dir: Path, task: str, snaps: np.ndarray) -> dict:
    """Refuse a trained LoRA folder that is incomplete or holds non-finite values, naming
    it, before it enters the repository (the CVAE would fail later without a name)."""
    adapter = lora_dir / "adapter" / "adapter_config.json"
    if not adapter.is_file():
        raise SGLoraError(f"{adapter}: not found; {lora_dir} is not a complete trained LoRA folder "
                          "(snapshots.safetensors, adapter/, training.json)")
    bad = int(np.size(snaps) - np.isfinite(snaps).sum())
    if bad:
        raise SGLoraError(f"{lora_dir / 'snapshots.safetensors'}: expert {task!r} has {bad} non-finite (NaN/inf) "
                          "value(s) in its snapshots")
    path = lora_dir / "training.json"
    info = read_json(path)
    if not isinstance(info, dict) or not {"lora", "backbone"} <= set(info):
        raise SGLoraError(f"{path}: expected a JSON object with the keys 'lora' and 'backbone'")
    return info


def _provenance(backbone: str, repository: Path) -> str:
    """The backbone as the repository records it: a local folder relative to the
    repository (so the repository works from any folder and moves with its results), a
    model id as it is."""
    local = Path(backbone)
    if not local.is_dir():
        return backbone
    return os.path.relpath(local.resolve(), Path(repository).resolve())


def resolve_backbone(recorded: str, repository: Path) -> str:
    """Undo :func:`_provenance`: a recorded local folder, relative to the repository,
    becomes an absolute path; a model id stays as it is."""
    if Path(recorded).is_absolute():
        return recorded
    here = (Path(repository) / recorded).resolve()
    if recorded.startswith(".") or here.is_dir():
        return str(here)
    return recorded  # a model id, or an old repository's path relative to the working folder


@dataclass
class Repository:
    """Read access to a repository folder without loading all snapshots."""

    path: Path

    def __post_init__(self):
        self.path = Path(self.path)
        for name in ("snapshots.parquet", "experts.parquet"):
            if not (self.path / name).exists():
                raise SGLoraError(f"{self.path / name}: repository table not found")
        with reading(self.path / "experts.parquet", EXPERTS_TABLE):
            meta = pq.read_schema(self.path / "experts.parquet").metadata or {}
            for key in (b"sglora.layout", b"sglora.lora", b"sglora.backbone"):
                if key not in meta:
                    raise SGLoraError(f"{self.path / 'experts.parquet'}: schema metadata lacks {key.decode()!r}")
            self.layout = Layout.from_json(meta[b"sglora.layout"])
            self.lora = LoraSpec.from_dict(json.loads(meta[b"sglora.lora"]))
            self.backbone = resolve_backbone(meta[b"sglora.backbone"].decode(), self.path)

    def experts(self) -> "ExpertTable":
        """The per-expert table (μ, σ², embeddings) as numpy arrays."""
        path = self.path / "experts.parquet"
        with reading(path, EXPERTS_TABLE):
            t = pq.read_table(path, page_checksum_verification=True)
            dim = self.layout.dim
            mu = _matrix(t.column("mu"), dim)
            if mu.shape[1] != dim:
                raise SGLoraError(f"{path}: vectors have {mu.shape[1]} values; the layout expects {dim}")
            table = ExpertTable(
                tasks=t.column("task").to_pylist(), names=t.column("task_name").to_pylist(),
                descriptions=t.column("description").to_pylist(),
                text_embedding=_matrix(t.column("text_embedding")), visual_embedding=_matrix(t.column("visual_embedding")),
                mu=mu, var=_matrix(t.column("var"), dim), path=path)
        for name in ("mu", "var", "text_embedding", "visual_embedding"):
            if not np.isfinite(getattr(table, name)).all():
                raise SGLoraError(f"{path}: column {name!r} holds non-finite (NaN/inf) values")
        return table

    def expert(self, task: str) -> np.ndarray:
        """One expert's snapshots (M x D), reading only its rows."""
        with reading(self.path / "snapshots.parquet", SNAPSHOTS_TABLE):
            t = pq.read_table(self.path / "snapshots.parquet", filters=[("task", "=", task)], columns=["snapshot", "vector"],
                              page_checksum_verification=True)
        if t.num_rows == 0:
            raise SGLoraError(f"{self.path}: no expert {task!r}")
        order = np.argsort(t.column("snapshot").to_numpy())
        return _matrix(t.column("vector"), self.layout.dim)[order]

    def iter_snapshots(self, batch_rows: int = 1024):
        """Yield ``(tasks, vectors)`` batches over every snapshot (streamed)."""
        path = self.path / "snapshots.parquet"
        with reading(path, SNAPSHOTS_TABLE):
            f = pq.ParquetFile(path, page_checksum_verification=True)
            batches = f.iter_batches(batch_size=batch_rows, columns=["task", "vector"])
        while True:
            with reading(path, SNAPSHOTS_TABLE):
                batch = next(batches, None)
                if batch is None:
                    return
                out = batch.column(0).to_pylist(), _matrix(batch.column(1), self.layout.dim)
            yield out


@dataclass
class ExpertTable:
    """The repository's experts: names, descriptions, embeddings and the mean and variance of their snapshots."""

    tasks: list[str]
    names: list[str]
    descriptions: list[str]
    text_embedding: np.ndarray
    visual_embedding: np.ndarray
    mu: np.ndarray
    var: np.ndarray
    path: Path | None = None  #: the ``experts.parquet`` it was read from

    @cached_property
    def norm_bound(self) -> float:
        """:data:`NORM_FACTOR` times the largest expert norm: an expert's root-mean-square
        snapshot norm is sqrt(||mu||^2 + sum(var))."""
        return norm_bound(self.mu, self.var)

    @cached_property
    def checksum(self) -> str:
        """SHA-256 of what a CVAE learns its conditions from (tasks, embeddings, mu, var):
        a CVAE records it, and sampling refuses a CVAE of another repository."""
        h = hashlib.sha256("\0".join(self.tasks).encode())
        for name in ("text_embedding", "visual_embedding", "mu", "var"):
            h.update(np.ascontiguousarray(getattr(self, name), dtype="<f4").tobytes())
        return h.hexdigest()

    def embedding(self, modality: str) -> np.ndarray:
        """The experts' embeddings of a modality (textual or visual)."""
        if modality not in ("textual", "visual"):
            raise SGLoraError(f"prior.modality: {modality!r} is not 'textual' or 'visual'")
        return self.text_embedding if modality == "textual" else self.visual_embedding


def norm_bound(mu: np.ndarray, var: np.ndarray) -> float:
    """:data:`NORM_FACTOR` times the largest root-mean-square norm of the snapshots of the
    experts whose per-coordinate mean and variance are the rows of ``mu`` and ``var``."""
    mu, var = np.atleast_2d(mu).astype(np.float64), np.atleast_2d(var).astype(np.float64)
    return float(NORM_FACTOR * np.sqrt(((mu**2).sum(1) + var.sum(1)).max()))


def _matrix(col, dim: int | None = None) -> np.ndarray:
    """A fixed-size-list column as a 2-D float32 array without a Python loop."""
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    width = col.type.list_size if pa.types.is_fixed_size_list(col.type) else None
    values = col.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
    width = width or (dim if dim else (len(values) // max(len(col), 1)))
    return values.reshape(len(col), width)
