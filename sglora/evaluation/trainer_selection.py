"""Choosing the LoRA trainer's settings (e.g. the learning rate of the ``frozen_a`` space) on
the validation tasks.

Each grid point trains one LoRA per validation task on that task's own training pairs,
exactly as an expert or an Oracle is trained (``expert.train_lora``), and scores its final
snapshot on the task's test split (the mean of I2T and T2I R@1, or accuracy; the
criterion of ``selection.select_settings``). The best point (ties: the first in grid order)
then trains every expert and Oracle of the run. Only validation tasks are read.
"""

from __future__ import annotations

import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np

from ..io import SGLoraError

#: trainer settings a grid may vary
TRAINER_SETTINGS = ("lr", "epochs", "weight_decay")


def select_training(backbone: str, manifest: str | Path, tasks: list[str], lora, train, grid: dict[str, list],
                    threads: int | None = None, device: str = "auto", cache: str | Path | None = None,
                    gallery: int = 0) -> dict:
    """Score every point of ``grid`` (over ``TRAINER_SETTINGS``) on the validation ``tasks``.

    Returns ``{"chosen": {"training": settings}, "scores": {"training": [{"settings", "score",
    "per_task"}]}, "tasks", "criterion"}``."""
    from ..backbone.clip import load_clip
    from ..devices import pick_device
    from .scoring import load_task
    from ..experts.training import read_snapshots, train_lora
    from .method_selection import grid_points

    bad = sorted(set(grid) - set(TRAINER_SETTINGS))
    if bad or not grid:
        raise SGLoraError(f"trainer_selection: {bad or 'an empty grid'}; settings a grid may vary: {TRAINER_SETTINGS}")
    model, processor = load_clip(backbone, device=pick_device(device))
    data = {t: load_task(manifest, t, processor, cache=cache, workers=threads or 0, gallery=gallery) for t in tasks}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, settings in enumerate(grid_points(grid)):
            spec = replace(train, **settings)
            per_task = {}
            for t in tasks:
                out = Path(tmp) / f"{i}" / t
                train_lora(backbone, manifest, t, out, lora, spec, threads=threads, progress=False, cache=cache)
                snaps, layout = read_snapshots(out)
                per_task |= score_vector(model, processor, {t: data[t]}, snaps[-1], layout, lora.scaling)
            rows.append({"settings": settings, "score": float(np.mean(list(per_task.values()))), "per_task": per_task})
    best = best_row(rows)
    return {"chosen": {"training": rows[best]["settings"]}, "scores": {"training": rows}, "tasks": list(tasks),
            "criterion": "mean over validation tasks of the final snapshot's (I2T R@1 + T2I R@1) / 2, or accuracy, "
                         "each LoRA trained on its validation task's own training pairs"}


def score_vector(model, processor, data: dict, vector: np.ndarray, layout, scaling: float) -> dict[str, float]:
    """One LoRA's score on each task of ``data`` (task -> ``evaluate.load_task``): accuracy, or
    the mean of I2T and T2I R@1 (``selection.primary_score``)."""
    from .scoring import evaluate_vectors
    from .method_selection import primary_score

    return {t: float(primary_score(evaluate_vectors(model, processor, d, vector[None], layout, scaling)[0]))
            for t, d in data.items()}


def best_row(rows: list[dict]) -> int:
    """The index of the best-scoring row (ties: the first)."""
    return max(range(len(rows)), key=lambda i: (rows[i]["score"], -i))
