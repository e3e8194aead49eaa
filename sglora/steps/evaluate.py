"""Steps of workflow/rules/evaluate.smk: scoring a method's LoRAs (and MoLE's gated model) on test tasks."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING
from typing import Annotated as A

from .registry import DEFAULT, Backbone, Cache, Device, Gallery, Manifest, Tasks, Threads, step

if TYPE_CHECKING:
    from ..experts.lora import LoraSpec


@step("evaluate", device="device")
def evaluate(backbone: Backbone, manifest: Manifest, tasks: Tasks, method: A[str, "method id (written into the JSON)"],
             out: A[Path, "folder for <task>.json"], group: A[str, "evaluation group name written into the JSON"] = "",
             candidates: A[Path | None, "candidates file; omit for zero-shot CLIP"] = None, lora: LoraSpec = DEFAULT,
             image_cache: Cache = None, gallery: Gallery = 0, threads: Threads = None, device: Device = "auto") -> dict:
    """Evaluate a method's LoRA(s) (merged into the weights) on each task's test split."""
    from ..evaluation.scoring import evaluate_method

    return evaluate_method(backbone, manifest, list(tasks), method, out, candidates, lora=lora,
                           group=group, threads=threads, device=device, cache=image_cache, gallery=gallery)


@step("evaluate-mole", device="device")
def evaluate_mole(backbone: Backbone, manifest: A[Path, "task manifest with the tasks' test pairs"], tasks: Tasks,
                  mole: A[Path, "trained MoLE folder (train-mole)"], out: A[Path, "folder for <task>.json"],
                  group: A[str, "evaluation group name written into the JSON"] = "", image_cache: Cache = None,
                  gallery: Gallery = 0, threads: Threads = None, device: Device = "auto") -> dict:
    """MoLE baseline: evaluate the gated model on each task's test split (the gate depends on
    the input, so it is not merged into the weights) and write <out>/<task>.json like
    'sglora evaluate'."""
    from ..baselines.mole import evaluate_mole as run

    return run(backbone, manifest, list(tasks), mole, out, group=group, threads=threads, device=device,
               cache=image_cache, gallery=gallery)
