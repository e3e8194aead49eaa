"""Steps of workflow/rules/baselines.smk: the learned baselines (multi-task LoRA, MoLE, P-diff)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING
from typing import Annotated as A

from .registry import SPLIT, Backbone, Cache, Dataset, Device, Gallery, Tasks, Threads, step

if TYPE_CHECKING:
    from ..baselines.mole.config import MoLESpec
    from ..baselines.multitask import MultitaskSpec
    from ..baselines.pdiff.config import PDiffSpec
    from ..experts.lora import LoraSpec
    from ..experts.training import TrainSpec


@step("train-multitask", device="training")
def train_multitask(backbone: Backbone, manifest: A[Path, "task manifest with the experts' training pairs"],
                    tasks: A[list[str], "the experts' task ids (comma-separated): the training data", SPLIT],
                    validation: A[list[str], "validation task ids (comma-separated): its epochs are chosen on them",
                                  SPLIT],
                    out: A[Path, "output folder: snapshots.safetensors, adapter/, training.json"],
                    lora: LoraSpec, training: TrainSpec, multitask: MultitaskSpec,
                    validation_manifest: A[Path | None, "task manifest of the validation tasks (default: "
                                                        "--manifest)"] = None,
                    image_cache: Cache = None,
                    validation_cache: A[Path | None, "the validation dataset's image cache"] = None,
                    gallery: Gallery = 0, threads: Threads = None, device: Device = "auto") -> dict:
    """Multi-task LoRA baseline: one LoRA trained on the union of the experts' training
    pairs (the experts' rank, targets and trainer), its epochs chosen on the validation tasks."""
    from ..baselines.multitask import train_multitask as run

    info = run(backbone, manifest, list(tasks), validation_manifest or manifest, list(validation), out, lora, training,
               multitask, threads=threads, device=device, cache=image_cache, validation_cache=validation_cache,
               gallery=gallery)
    return {"pairs": info["pairs"], "tasks": len(info["tasks"])} | info["selection"]["chosen"]


@step("train-mole", device="mole")
def train_mole(backbone: A[str, "model id or local folder (the repository's backbone)"],
               manifest: A[Path, "task manifest with the seen tasks' training pairs"],
               tasks: A[list[str], "seen task ids to train the gates on (comma-separated)", SPLIT],
               repository: A[Path, "expert repository folder (the N expert LoRAs)"], out: A[Path, "output folder"],
               mole: MoLESpec, image_cache: Cache = None, threads: Threads = None) -> dict:
    """MoLE baseline: train the per-layer gates that mix the repository's expert LoRAs (their
    mean snapshots), on the union of the seen tasks' training pairs (contrastive loss +
    gating-balance loss; backbone and experts frozen). Writes gates.safetensors,
    experts.safetensors, config.json."""
    from ..baselines.mole import train_mole as train

    info = train(backbone, manifest, list(tasks), repository, out, mole, threads=threads, cache=image_cache)
    return {"experts": len(info["experts"]), "tasks": len(info["tasks"]), "final": info["history"][-1],
            "probe_before": info["probe_before"], "probe_after": info["probe_after"]}


def _embeddings(path: Path | None, dataset: str | None):
    if not path:
        return None
    from ..backbone.embed import read_embeddings

    return read_embeddings(path, dataset)


@step("train-pdiff", device="pdiff")
def train_pdiff(repository: A[Path, "expert repository folder (the snapshots)"], tasks: A[list[str], "seen task ids (comma-separated)", SPLIT],
                out: A[Path, "output folder (<model>.safetensors, config.json)"], pdiff: PDiffSpec,
                conditional: A[bool, "COND P-Diff (one text-conditioned model) instead of P-diff (one model per "
                                     "task)"] = False,
                embeddings: A[Path | None, "task embedding table (COND P-Diff conditions; defaults to the "
                                           "repository's embeddings)"] = None,
                dataset: Dataset = None, threads: A[int | None, "CPU threads"] = None) -> dict:
    """P-diff / COND P-Diff baselines: train a parameter autoencoder + latent DDPM on the
    repository's snapshots; one unconditional model per task (P-diff, --no-conditional)
    or one model for all tasks conditioned on their text embeddings (COND P-Diff,
    --conditional). Seen-task baselines (supp. Table 13). --pdiff takes the config section
    pdiff or cond_pdiff."""
    from ..baselines.pdiff import train_pdiff as train

    return train(repository, list(tasks), out, pdiff, conditional, embeddings=_embeddings(embeddings, dataset),
                 threads=threads)


@step("sample-pdiff")
def sample_pdiff(model: A[Path, "trained P-diff folder (train-pdiff)"],
                 repository: A[Path, "expert repository (the LoRA layout)"], tasks: Tasks,
                 out: A[Path, "candidates file (.safetensors)"],
                 embeddings: A[Path | None, "task embedding table (COND P-Diff conditions)"] = None,
                 dataset: Dataset = None,
                 samples: A[int | None, "N samples per task (default: the spec's samples)"] = None,
                 seed: A[int | None, "sampling seed (default: the spec's seed)"] = None) -> dict:
    """P-diff / COND P-Diff baselines: sample N LoRAs per task (seeded per task) from a
    trained model and write a candidates file (method pdiff or cond_pdiff) for 'sglora evaluate'."""
    from ..baselines.pdiff import sample_pdiff as run

    return run(model, repository, list(tasks), out, embeddings=_embeddings(embeddings, dataset), samples=samples,
               seed=seed)
