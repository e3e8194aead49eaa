"""Steps of workflow/rules/loras.smk: training LoRAs (experts or Oracles; one or a batch per process), assembling the repository."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING
from typing import Annotated as A

from .registry import Backbone, Cache, Manifest, Threads, step

if TYPE_CHECKING:
    from ..experts.lora import LoraSpec
    from ..experts.training import TrainSpec


@step("train-lora", device="training")
def train_lora(backbone: Backbone, manifest: Manifest, task: A[str, "task id"],
               out: A[Path, "output folder: snapshots.safetensors, adapter/, training.json"],
               lora: LoraSpec, training: TrainSpec, image_cache: Cache = None, threads: Threads = None) -> dict:
    """Train one task's LoRA (an expert for a seen task, the Oracle for an unseen one)."""
    from ..experts.training import train_lora as train

    return _lora_summary(train(backbone, manifest, task, out, lora, training, threads=threads, cache=image_cache))


def _lora_summary(info: dict) -> dict:
    """What train-lora prints of a trained LoRA's training.json."""
    return {k: info[k] for k in ("task", "pairs", "dim", "snapshots")} | {"final_loss": info["losses"][-1]}


@step("train-loras", device="training")
def train_loras(backbone: Backbone, manifest: Manifest,
                loras: A[dict[str, Path], "each task and its output folder (train-lora's --task and --out)",
                         {"metavar": "TASK=DIR"}],
                lora: LoraSpec, training: TrainSpec, image_cache: Cache = None, threads: Threads = None) -> list[dict]:
    """Train several tasks' LoRAs of one dataset in one process, one after the other: each
    folder is byte-identical to train-lora's for that task, the imports are paid once."""
    from ..experts.training import train_loras as train

    return [_lora_summary(info) for info in train(backbone, manifest, loras, lora, training, threads=threads,
                                                   cache=image_cache)]


@step("assemble")
def assemble(loras: A[list[Path], "trained LoRA folders (folder name = task id)"],
             embeddings: A[Path, "task embedding table"], out: A[Path, "repository folder"],
             dataset: A[str | None, "dataset of the experts (to pick their embeddings)"] = None) -> dict:
    """Stream expert LoRAs into the Parquet expert repository."""
    from ..backbone.embed import read_embeddings
    from ..experts.repository import assemble as build

    experts = [{"task": Path(d).name, "lora_dir": str(d)} for d in loras]
    return build(out, experts, read_embeddings(embeddings, dataset))
