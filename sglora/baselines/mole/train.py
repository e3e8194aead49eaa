"""Training MoLE's gates on the seen tasks' image-caption pairs, the backbone and the
expert LoRAs frozen."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from ...devices import pick_device
from ...io import SGLoraError
from ...backbone.contrastive import optimizer_step, same_text_targets, seed_everything
from .config import MoLESpec
from .layer import attach_mole, mole_loss
from .model import save_mole


def _task_data(manifest, tasks, processor, limit: int, rng: np.random.Generator) -> dict:
    from ...backbone.clip import tokenize
    from ...experts.training import task_pairs

    data, first = {}, 0
    for task in tasks:
        paths, captions = task_pairs(manifest, task, "train")
        if limit and len(paths) > limit:
            keep = np.sort(rng.choice(len(paths), size=limit, replace=False))
            paths, captions = [paths[i] for i in keep], [captions[i] for i in keep]
        flat = [c for caps in captions for c in caps]
        data[task] = {"paths": paths, "flat": flat, "start": np.cumsum([0] + [len(c) for c in captions[:-1]]),
                      "count": np.array([len(c) for c in captions]), "enc": tokenize(processor, flat),
                      "first": first}  # index of the task's first image among all tasks' images
        first += len(paths)
    return data


class _Stream:
    """Every task's training images in one DataLoader; :meth:`run` yields each planned
    batch with its pixels normalised on the device."""

    def __init__(self, data: dict, processor, cache, workers: int, device):
        from ...data.images import ImageCache, Normalize, Schedule, TaskImages, loader

        paths = [p for d in data.values() for p in d["paths"]]
        images = TaskImages(paths, processor, ImageCache.open(cache, processor) if cache else None)
        self.normalize, self.schedule, self.device = Normalize(processor), Schedule(), device
        self.loader = loader(images, self.schedule, workers, pin_memory=device.type == "cuda")

    def run(self, plan: list[tuple[str, list[int]]], data: dict):
        self.schedule.batches = [[data[task]["first"] + i for i in idx] for task, idx in plan]
        for (task, idx), raw in zip(plan, self.loader):
            yield task, idx, self.normalize(raw, self.device)


def _batch(d: dict, idx: list[int], caption: list[int], pixels: torch.Tensor, device):
    cap = [int(d["start"][i] + caption[k] % d["count"][i]) for k, i in enumerate(idx)]
    targets = same_text_targets([d["flat"][c] for c in cap]).to(device)
    return pixels, d["enc"]["input_ids"][cap].to(device), d["enc"]["attention_mask"][cap].to(device), targets


@torch.no_grad()
def _probe(model, modules, data, stream: _Stream, spec: MoLESpec, device, autocast: bool) -> dict:
    """Mean losses over fixed batches: the first probe_pairs images of each task, each
    with its k-th caption, for every k (the expectation over the caption choice)."""
    tot = con = bal = 0.0
    n = 0
    plan, ks = [], []
    for task, d in data.items():
        m = min(len(d["paths"]), spec.probe_pairs)
        for k in range(int(d["count"][:m].max())):
            for i in range(0, m, spec.batch_size):
                plan.append((task, list(range(i, min(i + spec.batch_size, m)))))
                ks.append(k)
    for k, (task, idx, pixels) in zip(ks, stream.run(plan, data)):
        batch = _batch(data[task], idx, [k] * len(idx), pixels, device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            t, c, b = mole_loss(model, modules, *batch, spec.balance_weight)
        tot, con, bal = tot + t.item() * len(idx), con + c.item() * len(idx), bal + b.item() * len(idx)
        n += len(idx)
    n = max(n, 1)
    return {"loss": tot / n, "contrastive": con / n, "balance": bal / n}


def train_mole(backbone: str, manifest: str | Path, tasks: list[str], repository: str | Path, out_dir: str | Path,
               spec: MoLESpec, threads: int | None = None, progress: bool = True, cache: str | Path | None = None) -> dict:
    """Train MoLE's gates over all experts of ``repository`` on the union of ``tasks``'
    training pairs (the seen tasks), batches drawn within one task, and save them.

    Writes ``out_dir`` atomically: ``gates.safetensors`` (the gate weights),
    ``experts.safetensors`` (tensor ``experts``: the N x D expert vectors mu_k in the order of
    ``config.json``'s ``experts``, layout in the metadata) and ``config.json`` (spec, experts,
    scaling, backbone, loss history). Images stream from the image cache ``cache``
    (decoded on the fly without one) through a DataLoader with ``threads`` workers."""
    from tqdm import tqdm

    from ...backbone.clip import load_clip
    from ...experts.repository import Repository

    if not tasks:
        raise SGLoraError("train-mole: the list of training tasks is empty")
    seed_everything(spec.seed, threads)
    device = pick_device(spec.device)
    repo = Repository(repository)
    experts = repo.experts()
    model, processor = load_clip(backbone, device="cpu")
    model.requires_grad_(False)
    modules = attach_mole(model, experts.mu, repo.layout, repo.lora.scaling, spec.temperature)
    model.to(device).eval()  # eval: no dropout in the frozen backbone
    params = [p for mod in modules.values() for p in mod.gate_parameters()]
    rng = np.random.default_rng(spec.seed)
    data = _task_data(manifest, tasks, processor, spec.pairs_per_task, rng)
    autocast = device.type == "cuda" and spec.bf16
    stream = _Stream(data, processor, cache, threads or 0, device)
    before = _probe(model, modules, data, stream, spec, device, autocast) if spec.probe_pairs else None
    opt = torch.optim.Adam(params, lr=spec.lr)
    history = []
    bar = tqdm(range(spec.epochs), desc="mole", disable=not progress)
    for epoch in bar:
        batches = []
        for task, d in data.items():
            order = rng.permutation(len(d["paths"]))
            batches += [(task, order[i : i + spec.batch_size].tolist()) for i in range(0, len(order), spec.batch_size)]
        sums = np.zeros(3)
        n = 0
        plan = [batches[j] for j in rng.permutation(len(batches))]
        for task, idx, pixels in stream.run(plan, data):
            d = data[task]
            caption = rng.integers(0, 1 << 30, len(idx)).tolist()
            batch = _batch(d, idx, caption, pixels, device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
                total, con, bal = mole_loss(model, modules, *batch, spec.balance_weight)
            optimizer_step(opt, total, "mole", epoch, history)
            sums += [total.item() * len(idx), con.item() * len(idx), bal.item() * len(idx)]
            n += len(idx)
        history.append({"epoch": epoch + 1, "loss": float(sums[0] / n), "contrastive": float(sums[1] / n),
                        "balance": float(sums[2] / n)})
        bar.set_postfix(loss=f"{history[-1]['loss']:.3f}")
    after = _probe(model, modules, data, stream, spec, device, autocast) if spec.probe_pairs else None
    info = {"experts": experts.tasks, "tasks": list(tasks), "pairs": {t: len(d["paths"]) for t, d in data.items()},
            "scaling": repo.lora.scaling, "lora": asdict(repo.lora), "backbone": backbone, "repository": str(repository),
            "modules": list(modules), "mole": asdict(spec), "history": history, "probe_before": before,
            "probe_after": after}
    save_mole(out_dir, modules, experts.mu, repo.layout, info)
    return info
