"""Evaluating LoRAs on a task's test split: the LoRA is merged into the backbone's weights
(W += s * B @ A) before encoding, so a LoRA costs nothing at inference.

Retrieval tasks (one class per task) give I2T / T2I Recall@1/5/10 within the task's test
pairs; classification tasks (several fine classes per task, CIFAR-100 superclasses) give
accuracy with the prompts "a photo of a <class>" as the classifier.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .backbone import encode_images, encode_texts, load_clip, pick_device
from .images import Batches, task_batches
from .io import SGLoraError, write_json
from .lora import Layout, merged
from .manifest import read_manifest
from .metrics import accuracy, retrieval_recall


@dataclass
class TaskData:
    task: str
    kind: str  #: "retrieval" or "classification"
    pixels: Batches  #: the test images, streamed from the image cache and normalised on the device
    texts: list[str]  #: captions (retrieval) or class prompts (classification)
    targets: np.ndarray  #: caption -> image (retrieval) or image -> class (classification)


def load_task(manifest: str | Path, task: str, processor, split: str = "test",
              class_prompt: str = "a photo of a {}", cache: str | Path | None = None, workers: int = 0) -> TaskData:
    """A task's split; its images stream from the image cache ``cache`` (decoded on the
    fly without one) with ``workers`` DataLoader workers, never all in memory."""
    rows = [r for r in read_manifest(manifest, [task]).to_pylist() if r["split"] == split]
    if not rows:
        raise SGLoraError(f"{manifest}: task {task!r} has no {split} images")
    pixels = task_batches([r["image_path"] for r in rows], processor, cache, workers=workers)
    classes = sorted({r["class_name"] for r in rows})
    if len(classes) > 1:
        texts = [class_prompt.format(c) for c in classes]
        targets = np.array([classes.index(r["class_name"]) for r in rows])
        return TaskData(task, "classification", pixels, texts, targets)
    texts, owner = [], []
    for i, r in enumerate(rows):
        if not r["captions"]:
            raise SGLoraError(f"{manifest}: image {r['image_path']} of task {task!r} has no captions")
        texts += list(r["captions"])
        owner += [i] * len(r["captions"])
    return TaskData(task, "retrieval", pixels, texts, np.array(owner))


def score(model, processor, data: TaskData) -> dict[str, float]:
    img = encode_images(model, data.pixels)
    txt = encode_texts(model, processor, data.texts)
    sim = (img @ txt.T).numpy()
    if data.kind == "classification":
        return {"accuracy": accuracy(sim, data.targets)}
    return retrieval_recall(sim, data.targets)


def evaluate_vectors(model, processor, data: TaskData, vectors: np.ndarray | None, layout: Layout | None,
                     scaling: float) -> list[dict[str, float]]:
    """Metrics of each LoRA vector (rows of ``vectors``); ``None`` = the bare backbone."""
    if vectors is None:
        return [score(model, processor, data)]
    out = []
    for v in vectors:
        with merged(model, v, layout, scaling):
            out.append(score(model, processor, data))
    return out


def summarize(per_sample: list[dict[str, float]]) -> dict:
    """Mean and spread over samples, and the best of N (labelled: it peeks at test data)."""
    keys = list(per_sample[0])
    arr = np.array([[m[k] for k in keys] for m in per_sample])
    primary = "accuracy" if "accuracy" in keys else None
    if primary is None:
        best_i = int(np.argmax(arr[:, keys.index("i2t_r1")] + arr[:, keys.index("t2i_r1")]))
    else:
        best_i = int(np.argmax(arr[:, keys.index(primary)]))
    return {
        "n": len(per_sample),
        "mean": dict(zip(keys, arr.mean(0).tolist())),
        "std": dict(zip(keys, arr.std(0).tolist())),
        "best_of_n": dict(zip(keys, arr[best_i].tolist())),
        "per_sample": per_sample,
    }


def evaluate_method(backbone: str, manifest: str | Path, tasks: list[str], method: str, out_dir: str | Path,
                    candidates: str | Path | None = None, scaling: float | None = None, group: str = "",
                    threads: int | None = None, device: str = "auto", cache: str | Path | None = None) -> dict:
    """Write ``out_dir/<task>.json`` for each task: the metrics of the method's LoRA(s).
    ``device``: "auto" = CUDA when available; ``cache``: the dataset's image cache."""
    from tqdm import tqdm

    from .candidates import load_candidates

    if threads:
        torch.set_num_threads(threads)
    model, processor = load_clip(backbone, device=pick_device(device))
    vectors, layout, info = ({}, None, {"info": {}}) if candidates is None else load_candidates(candidates)
    if candidates is not None and scaling is None:
        raise SGLoraError("evaluate: a LoRA scaling (alpha / rank) is needed with candidates")
    results = {}
    for task in tqdm(tasks, desc=f"evaluate[{group}/{method}]"):
        data = load_task(manifest, task, processor, cache=cache, workers=threads or 0)
        if candidates is not None and task not in vectors:
            raise SGLoraError(f"{candidates}: no candidate LoRA for task {task!r}")
        per = evaluate_vectors(model, processor, data, vectors.get(task) if candidates else None, layout, scaling or 1.0)
        res = {"method": method, "group": group, "task": task, "kind": data.kind, **summarize(per),
               "info": info["info"].get(task, {})}
        write_json(Path(out_dir) / f"{task}.json", res)
        results[task] = res["mean"]
    return results
