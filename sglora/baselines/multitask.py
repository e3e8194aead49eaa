"""The multi-task LoRA: one LoRA trained on the union of every expert's training pairs.

The baseline of the field that SG-LoRA's repository of experts must beat: the same data,
rank, target modules and trainer (config ``lora``, ``training``), but one LoRA for every
task instead of one per task. Its length is chosen on the validation tasks: one training
of ``max(epochs)`` epochs keeps the factors after each epoch of ``epochs``, each is scored
on every validation task's test split (the criterion of ``selection.select_settings``), and
the best (ties: the fewest epochs) is the multi-task LoRA. It reads no validation task's
training images and no test task at all.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import ClassVar

import numpy as np

from ..io import SGLoraError, Settings, setting


@dataclass
class MultitaskSpec(Settings):
    """How long the multi-task LoRA trains (config section ``multitask``)."""

    section: ClassVar[str] = "multitask"

    epochs: list[int] = setting(None, "epochs after which the factors are scored on the validation tasks (one "
                                      "training of the largest); the best is the multi-task LoRA",
                                factory=lambda: [2, 5, 10])

    def check(self) -> None:
        if not self.epochs or any(isinstance(e, bool) or not isinstance(e, int) or e < 1 for e in self.epochs):
            raise SGLoraError(f"multitask.epochs: {self.epochs!r}; expected a non-empty list of integers >= 1")
        if len(set(self.epochs)) != len(self.epochs):
            raise SGLoraError(f"multitask.epochs: {self.epochs!r} lists an epoch twice")


def train_multitask(backbone: str, manifest: str | Path, tasks: list[str], validation_manifest: str | Path,
                    validation: list[str], out_dir: str | Path, lora, train, spec: MultitaskSpec,
                    threads: int | None = None, device: str = "auto", cache: str | Path | None = None,
                    validation_cache: str | Path | None = None, gallery: int = 0, progress: bool = True) -> dict:
    """Train the multi-task LoRA on ``tasks``' training pairs (``train``: the experts'
    trainer, its ``epochs`` and ``snapshots`` replaced by ``spec``), choose its epochs on the
    ``validation`` tasks, and write it as a trained LoRA folder (``expert.write_lora``: the
    chosen snapshot alone) whose ``training.json`` records the tasks and every epoch's score
    (its ``training`` the run as trained: ``max(epochs)`` epochs)."""
    from ..backbone.clip import load_clip
    from ..devices import pick_device
    from ..evaluation.scoring import load_task
    from ..experts.training import fit_lora, write_lora
    from ..evaluation.trainer_selection import best_row, score_vector

    if not tasks or not validation:
        raise SGLoraError("train_multitask: needs the experts' tasks and the validation tasks")
    clash = sorted(set(tasks) & set(validation)) if Path(manifest) == Path(validation_manifest) else []
    if clash:
        raise SGLoraError(f"train_multitask: {clash} are both training and validation tasks")
    epochs = sorted(spec.epochs)
    run = replace(train, epochs=epochs[-1], snapshots=len(epochs))
    fit = fit_lora(backbone, manifest, list(tasks), lora, run, threads=threads, progress=progress, cache=cache,
                   keep=epochs)
    model, processor = load_clip(backbone, device=pick_device(device))
    data = {t: load_task(validation_manifest, t, processor, cache=validation_cache, workers=threads or 0,
                         gallery=gallery) for t in validation}
    rows = []
    for e, vector in zip(epochs, fit.snapshots):
        per_task = score_vector(model, processor, data, vector, fit.layout, lora.scaling)
        rows.append({"epochs": e, "score": float(np.mean(list(per_task.values()))), "per_task": per_task})
    best = best_row(rows)
    chosen = replace(fit, snapshots=fit.snapshots[best : best + 1])
    selection = {"chosen": {"epochs": epochs[best]}, "scores": rows, "tasks": list(validation),
                 "criterion": "mean over validation tasks of (I2T R@1 + T2I R@1) / 2, or accuracy"}
    return write_lora(out_dir, chosen, lora, run, backbone, "multitask", {"tasks": list(tasks), "selection": selection})


def multitask_candidates(loras: list[str | Path], tasks: list[str]) -> tuple[dict[str, np.ndarray], object, dict, float]:
    """The multi-task LoRA (``loras``: its one folder, :func:`train_multitask`) as every
    task's candidate: ``({task: 1 x D}, layout, info, scaling)``."""
    from ..experts.training import read_lora_spec, read_snapshots
    from ..io import read_json

    if len(loras) != 1:
        raise SGLoraError(f"multitask: --loras takes the multi-task LoRA's one folder, got {len(loras)}")
    folder = loras[0]
    snaps, layout = read_snapshots(folder)
    trained = read_json(Path(folder) / "training.json")
    chosen = trained.get("selection", {}).get("chosen", {})
    info = {t: {"kind": "trained on the union of the experts' data", "experts": trained.get("tasks"),
                "settings": chosen} for t in tasks}
    return {t: snaps[-1:] for t in tasks}, layout, info, read_lora_spec(folder).scaling
