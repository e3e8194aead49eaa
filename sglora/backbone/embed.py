"""Task embeddings d = f(T): the frozen CLIP text encoder on the task description, and the
visual alternative of supplementary Table 9 (mean CLIP image embedding of the task's
training images)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from .clip import encode_images, encode_texts, load_clip
from ..devices import pick_device
from ..data.images import task_batches
from ..io import SGLoraError, reading, write_table
from ..data.manifest import describe, read_manifest


def describe_tasks(manifest: pa.Table, template: str | None) -> dict[str, dict]:
    """``{task: {task_name, description}}``; ``template`` (if given) replaces the
    manifest's descriptions (``<classes>`` lists a task's fine classes)."""
    out: dict[str, dict] = {}
    classes: dict[str, list[str]] = {}
    for r in manifest.select(["task", "task_name", "class_name", "description"]).to_pylist():
        out.setdefault(r["task"], {"task_name": r["task_name"], "description": r["description"]})
        if r["class_name"] not in classes.setdefault(r["task"], []):
            classes[r["task"]].append(r["class_name"])
    if template:
        for task, row in out.items():
            row["description"] = describe(row["task_name"], template, sorted(classes[task]))
    return out


def embed_tasks(backbone: str, manifests: dict[str, str | Path], out: str | Path, template: str | None = None,
                visual_images: int = 64, device: str = "auto", caches: dict[str, str | Path] | None = None,
                workers: int = 0) -> dict:
    """Write ``out`` (Parquet): ``dataset, task, task_name, description, text_embedding,
    visual_embedding`` for every task of every manifest. ``caches``: ``{dataset: image
    cache}`` (images stream from it; decoded on the fly for a dataset without one);
    ``device``: "auto" = CUDA when available."""
    caches = caches or {}
    model, processor = load_clip(backbone, device=pick_device(device))
    rows = []
    for dataset, path in sorted(manifests.items()):
        table = read_manifest(path)
        tasks = describe_tasks(table, template)
        names = sorted(tasks)
        text = encode_texts(model, processor, [tasks[t]["description"] for t in names]).numpy()
        by_task: dict[str, list[str]] = {}
        for r in table.select(["task", "split", "image_path"]).to_pylist():
            if r["split"] == "train":
                by_task.setdefault(r["task"], []).append(r["image_path"])
        for i, task in enumerate(names):
            imgs = sorted(by_task.get(task, []))[:visual_images]
            if not imgs:
                raise SGLoraError(f"{path}: task {task!r} has no training images")
            vis = encode_images(model, task_batches(imgs, processor, caches.get(dataset), workers=workers)).numpy().mean(0)
            vis /= np.linalg.norm(vis) + 1e-12
            rows.append({"dataset": dataset, "task": task, **tasks[task],
                         "text_embedding": text[i].astype(np.float32), "visual_embedding": vis.astype(np.float32)})
    dim_t, dim_v = len(rows[0]["text_embedding"]), len(rows[0]["visual_embedding"])
    schema = pa.schema([("dataset", pa.string()), ("task", pa.string()), ("task_name", pa.string()),
                        ("description", pa.string()), ("text_embedding", pa.list_(pa.float32(), dim_t)),
                        ("visual_embedding", pa.list_(pa.float32(), dim_v))])
    write_table(out, pa.Table.from_pylist([{**r, "text_embedding": r["text_embedding"].tolist(),
                                            "visual_embedding": r["visual_embedding"].tolist()} for r in rows], schema=schema))
    return {"tasks": len(rows)}


def read_embeddings(path: str | Path, dataset: str | None = None) -> dict[str, dict]:
    """``{task: row}`` (optionally one dataset's tasks), embeddings as numpy arrays."""
    import pyarrow.parquet as pq

    path = Path(path)
    if not path.exists():
        raise SGLoraError(f"{path}: task embeddings not found")
    out = {}
    with reading(path, "task embedding table (Parquet written by 'sglora embed')"):
        for r in pq.read_table(path).to_pylist():
            if dataset is None or r["dataset"] == dataset:
                r["text_embedding"] = np.asarray(r["text_embedding"], np.float32)
                r["visual_embedding"] = np.asarray(r["visual_embedding"], np.float32)
                out[r["task"]] = r
    return out
