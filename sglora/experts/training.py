"""Training a LoRA on one task's image-caption pairs: the experts and the Oracles.

One code path for both: an *expert* is this run on a seen task, an *Oracle* the same run
on an unseen task's own training data. The factors of the last ``snapshots`` epochs are
kept (the paper's M snapshots per expert).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch

from ..backbone.clip import load_clip, tokenize
from ..devices import pick_device
from ..backbone.contrastive import clip_loss, optimizer_step, same_text_targets, seed_everything
from ..data.images import ImageCache, Normalize, Schedule, TaskImages, loader
from ..io import SGLoraError, Settings, atomic_path, reading, save_safetensors, setting, write_json
from .lora import Layout, LoraSpec, add_lora, save_adapter
from ..data.manifest import read_manifest, task_rows


@dataclass
class TrainSpec(Settings):
    """How one task's LoRA is trained (config section ``training``)."""

    section: ClassVar[str] = "training"

    epochs: int = setting(30, "total epochs", min=1)
    snapshots: int = setting(20, "M: the factors after each of the last M epochs are kept (paper: 100)", min=1)
    lr: float = setting(5e-3, "Adam learning rate", above=0)
    batch_size: int = setting(32, "image-caption pairs per step", min=2)
    weight_decay: float = setting(0.0, "Adam(W) weight decay on the LoRA factors", min=0)
    seed: int = setting(0, "data order and caption choice (the LoRA init comes from lora.init_seed)")
    device: str = setting("auto", '"auto" = cuda if available else cpu')
    bf16: bool = setting(True, "autocast to bfloat16 on a GPU (ignored on the CPU)")
    freeze_a: bool = setting(False, "train only B; every A stays at the shared initialisation (the frozen_a LoRA space)")

    def check(self) -> None:
        if not 1 <= self.snapshots <= self.epochs:
            raise SGLoraError(f"training.snapshots={self.snapshots} must be between 1 and training.epochs={self.epochs}")


def task_pairs(manifest: str | Path, task: str | list[str], split: str) -> tuple[list[str], list[list[str]]]:
    """Image paths and their caption lists for one task and split; for a list of tasks, the
    union of theirs, task by task in the list's order."""
    tasks = [task] if isinstance(task, str) else list(task)
    table = read_manifest(manifest, tasks)
    paths, captions = [], []
    for t in tasks:
        rows = [r for r in task_rows(table, t, split) if r["captions"]]
        if not rows:
            raise SGLoraError(f"{manifest}: task {t!r} has no {split} images with captions")
        paths += [r["image_path"] for r in rows]
        captions += [list(r["captions"]) for r in rows]
    return paths, captions


@dataclass
class Fit:
    """What :func:`fit_lora` trained: the kept snapshots (M x D), their layout, the mean
    loss of each epoch and the number of training pairs."""

    snapshots: np.ndarray
    layout: Layout
    losses: list[float]
    pairs: int


def train_lora(
    backbone: str,
    manifest: str | Path,
    task: str,
    out_dir: str | Path,
    lora: LoraSpec,
    train: TrainSpec,
    threads: int | None = None,
    progress: bool = True,
    cache: str | Path | None = None,
) -> dict:
    """Fine-tune CLIP with LoRA on ``task``'s training pairs (symmetric contrastive loss).

    Images stream from the dataset's image cache ``cache`` (:mod:`sglora.data.images`; decoded
    on the fly without one) through a DataLoader with ``threads`` workers, and are
    normalised on the training device; bf16 autocast on a GPU when ``train.bf16``.

    Writes into ``out_dir`` (atomically, as one folder):

    - ``snapshots.safetensors``: tensor ``snapshots`` (M x D float32), layout in metadata
    - ``adapter/``: the final LoRA as a PEFT adapter folder
    - ``training.json``: loss per epoch, settings, layout size
    """
    fit = fit_lora(backbone, manifest, task, lora, train, threads=threads, progress=progress, cache=cache)
    return write_lora(out_dir, fit, lora, train, backbone, task)


def train_loras(
    backbone: str,
    manifest: str | Path,
    outs: dict[str, str | Path],
    lora: LoraSpec,
    train: TrainSpec,
    threads: int | None = None,
    progress: bool = True,
    cache: str | Path | None = None,
) -> list[dict]:
    """:func:`train_lora` for each ``task -> out_dir`` of ``outs``, one after the other in one
    process: torch, transformers and the step's own imports load once for all of them.

    Each LoRA's folder is byte-identical to the one a process of its own writes:
    :func:`fit_lora` seeds torch and numpy from ``train.seed``, sets the threads and loads
    the backbone afresh for every task, so no state of one training reaches the next.
    A failing task stops the loop; the folders written before it are complete."""
    return [train_lora(backbone, manifest, task, out, lora, train, threads=threads, progress=progress, cache=cache)
            for task, out in outs.items()]


def fit_lora(backbone: str, manifest: str | Path, task: str | list[str], lora: LoraSpec, train: TrainSpec,
             threads: int | None = None, progress: bool = True, cache: str | Path | None = None,
             keep: list[int] | None = None) -> Fit:
    """The training of :func:`train_lora`, nothing written. ``task`` a list: on the union of
    those tasks' training pairs (the multi-task LoRA). ``keep``: the epochs (1-based) whose
    factors are the snapshots, in place of the last ``train.snapshots`` ones."""
    from peft import get_peft_model_state_dict
    from tqdm import tqdm

    seed_everything(train.seed, threads)
    device = pick_device(train.device)
    model, processor = load_clip(backbone, device="cpu")
    model.requires_grad_(False)
    peft_model = add_lora(model, lora, base=backbone).to(device)
    layout = Layout.of(peft_model)
    paths, captions = task_pairs(manifest, task, "train")
    images = TaskImages(paths, processor, ImageCache.open(cache, processor) if cache else None)
    normalize, schedule = Normalize(processor), Schedule()
    batches = loader(images, schedule, workers=threads or 0, pin_memory=device.type == "cuda")
    flat = [c for caps in captions for c in caps]
    enc = tokenize(processor, flat)
    start = np.cumsum([0] + [len(c) for c in captions[:-1]])
    if train.freeze_a:  # the frozen_a space: A is the shared init, so averaging B averages ΔW = s·B·A
        for name, p in peft_model.named_parameters():
            if "lora_A" in name:
                p.requires_grad_(False)
    params = [p for p in peft_model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=train.lr, weight_decay=train.weight_decay)
    gen = torch.Generator().manual_seed(train.seed)
    autocast = device.type == "cuda" and train.bf16
    losses, snaps = [], []
    keep = set(keep) if keep is not None else set(range(train.epochs - train.snapshots + 1, train.epochs + 1))
    name = task if isinstance(task, str) else f"{len(task)} tasks"
    bar = tqdm(range(train.epochs), desc=f"lora[{name}]", disable=not progress)
    steps = math.ceil(len(paths) / train.batch_size)
    for epoch in bar:
        peft_model.train()
        order = torch.randperm(len(paths), generator=gen)
        pick = torch.randint(0, 1 << 30, (len(paths),), generator=gen)
        total = 0.0
        schedule.batches = [order[i : i + train.batch_size].tolist() for i in range(0, len(order), train.batch_size)]
        for idx, raw in zip(schedule.batches, batches):
            cap = torch.tensor([start[j] + pick[j] % len(captions[j]) for j in idx])
            targets = same_text_targets([flat[c] for c in cap.tolist()]).to(device)
            pixels = normalize(raw, device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
                loss = clip_loss(peft_model, pixels, enc["input_ids"][cap].to(device),
                                 enc["attention_mask"][cap].to(device), targets)
            optimizer_step(opt, loss, f"task {name}", epoch, losses)
            total += loss.item()
        losses.append(total / steps)
        bar.set_postfix(loss=f"{losses[-1]:.3f}")
        if epoch + 1 in keep:
            snaps.append(layout.to_vector(get_peft_model_state_dict(peft_model)))
    if not snaps:
        raise SGLoraError(f"fit_lora: keep={sorted(keep)} names no epoch of 1..{train.epochs}")
    return Fit(np.stack(snaps), layout, losses, len(paths))


def write_lora(out_dir: str | Path, fit: Fit, lora: LoraSpec, train: TrainSpec, backbone: str, task: str,
               extra: dict | None = None) -> dict:
    """Write a trained LoRA folder (:func:`train_lora`'s); ``extra``: more keys of training.json."""
    snaps, layout = fit.snapshots, fit.layout
    training = asdict(train)
    if not train.freeze_a:  # written only when set: a factors-space run's training.json stays as it was
        training.pop("freeze_a")
    info = {"task": task, "losses": fit.losses, "pairs": fit.pairs, "dim": layout.dim, "snapshots": len(snaps),
            "lora": asdict(lora), "training": training, "backbone": backbone} | (extra or {})
    with atomic_path(out_dir, directory=True) as tmp:
        save_safetensors(tmp / "snapshots.safetensors", {"snapshots": snaps.astype(np.float32)},
                         {"layout": layout.to_json(), "task": task, "lora": json.dumps(asdict(lora), sort_keys=True)})
        save_adapter(tmp / "adapter", snaps[-1], layout, lora, backbone, {"task": task, "kind": "trained"})
        write_json(tmp / "training.json", info)
    return info


def read_snapshots(lora_dir: str | Path) -> tuple[np.ndarray, Layout]:
    """The M x D snapshot matrix and its layout from a trained LoRA folder."""
    from safetensors import safe_open

    path = Path(lora_dir) / "snapshots.safetensors"
    if not path.exists():
        raise SGLoraError(f"{path}: snapshots not found")
    with reading(path, "snapshots file (safetensors with tensor 'snapshots' and a 'layout' in its metadata)"):
        with safe_open(str(path), "np") as f:
            snaps, layout = f.get_tensor("snapshots"), Layout.from_json(f.metadata()["layout"])
        if snaps.ndim != 2 or snaps.shape[1] != layout.dim:
            raise ValueError(f"tensor 'snapshots' has shape {snaps.shape}; the layout expects M x {layout.dim}")
    return snaps, layout


def read_lora_spec(lora_dir: str | Path) -> LoraSpec:
    """The :class:`LoraSpec` a trained LoRA folder was trained with (its snapshots' metadata)."""
    from safetensors import safe_open

    path = Path(lora_dir) / "snapshots.safetensors"
    with reading(path, "snapshots file (safetensors with a 'lora' in its metadata)"):
        with safe_open(str(path), "np") as f:
            return LoraSpec.from_dict(json.loads(f.metadata()["lora"]))
