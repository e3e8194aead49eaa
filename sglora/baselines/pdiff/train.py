"""Training P-diff / COND P-Diff: the autoencoder first, then the latent DDPM."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ...devices import pick_device
from ...io import SGLoraError
from ...backbone.contrastive import optimizer_step, seed_everything
from .config import PDiffSpec
from .model import PDiff, fit_scale, save_pdiff, task_conditions


def _batches(n: int, size: int, gen: torch.Generator):
    order = torch.randperm(n, generator=gen)
    return [order[i : i + size] for i in range(0, n, size)]


def fit_pdiff(snapshots: np.ndarray, spec: PDiffSpec, conditions: np.ndarray | None = None,
              threads: int | None = None, progress: bool = True, desc: str = "pdiff") -> tuple[PDiff, dict]:
    """Train the autoencoder, then the latent DDPM, on ``snapshots`` (S x D). With
    ``conditions`` (S x C, one row per snapshot) the model is COND P-Diff."""
    from tqdm import tqdm


    seed_everything(spec.seed, threads)
    device = pick_device(spec.device)
    x = torch.as_tensor(np.asarray(snapshots), dtype=torch.float32)
    if x.ndim != 2 or len(x) < 2:
        raise SGLoraError(f"pdiff: need at least 2 training snapshots (S x D), got shape {tuple(x.shape)}")
    cond = None if conditions is None else torch.as_tensor(np.asarray(conditions), dtype=torch.float32)
    if cond is not None and len(cond) != len(x):
        raise SGLoraError(f"pdiff: {len(cond)} conditions for {len(x)} snapshots")
    model = PDiff(x.shape[1], spec, 0 if cond is None else cond.shape[1])
    shift, scale = fit_scale(x)
    model.shift.copy_(shift)
    model.scale.copy_(scale)
    if cond is not None:
        cshift, cscale = fit_scale(cond)
        model.cshift.copy_(cshift)
        model.cscale.copy_(cscale)
    model.to(device)
    x = x.to(device)
    xn = model.normalize(x)
    gen = torch.Generator().manual_seed(spec.seed)
    history = {"autoencoder": [], "diffusion": []}

    # 1. the parameter autoencoder, with p-diff's input and latent noise augmentation
    opt = torch.optim.Adam(model.ae.parameters(), lr=spec.ae_lr)
    model.ae.train()
    for epoch in tqdm(range(spec.ae_epochs), desc=f"{desc} autoencoder", disable=not progress):
        tot = 0.0
        for b in _batches(len(x), spec.batch_size, gen):
            xb = xn[b.to(device)]
            z = model.ae.encode(xb + spec.input_noise * torch.randn(xb.shape, generator=gen).to(device))
            z = z + spec.latent_noise * torch.randn(z.shape, generator=gen).to(device)
            loss = F.mse_loss(model.ae.decode(z), xb)
            optimizer_step(opt, loss, f"{desc} autoencoder", epoch, history["autoencoder"])
            tot += loss.item() * len(b)
        history["autoencoder"].append(tot / len(x))
    model.ae.eval()
    with torch.no_grad():
        z0 = model.ae.encode(xn)
        zshift, zscale = fit_scale(z0)
        model.zshift.copy_(zshift.to(device))
        model.zscale.copy_(zscale.to(device))
        z0 = (z0 - model.zshift) / model.zscale
        history["reconstruction_mse"] = F.mse_loss(model.ae.decode(z0 * model.zscale + model.zshift), xn).item()

    # 2. the latent DDPM (epsilon prediction); CFG drops the condition with cfg_dropout
    c = None if cond is None else cond.to(device)
    opt = torch.optim.Adam(model.denoiser.parameters(), lr=spec.lr)
    model.denoiser.train()
    for epoch in tqdm(range(spec.diffusion_epochs), desc=f"{desc} diffusion", disable=not progress):
        tot = 0.0
        for b in _batches(len(x), spec.batch_size, gen):
            b = b.to(device)
            kwargs = {}
            if c is not None:
                keep = (torch.rand(len(b), generator=gen) >= spec.cfg_dropout).float().to(device)
                kwargs = {"cond": c[b], "keep": keep}
            loss = model.diffusion.loss(model.eps, z0[b], generator=gen, **kwargs)
            optimizer_step(opt, loss, f"{desc} diffusion", epoch, history["diffusion"])
            tot += loss.item() * len(b)
        history["diffusion"].append(tot / len(x))
    return model.eval().cpu(), history


def train_pdiff(repository: str | Path, tasks: list[str], out_dir: str | Path, spec: PDiffSpec, conditional: bool,
                embeddings: dict | None = None, threads: int | None = None, progress: bool = True) -> dict:
    """Train P-diff (one model per task in ``tasks``) or COND P-Diff (one model on all
    ``tasks``, conditioned on their text embeddings) from the repository's snapshots.

    Writes ``out_dir`` atomically: ``<name>.safetensors`` per model (name = the task for
    P-diff, ``cond_pdiff`` for COND P-Diff) and ``config.json`` (spec, tasks, histories)."""
    from ...experts.repository import Repository

    if not tasks:
        raise SGLoraError("train-pdiff: the list of tasks is empty")
    repo = Repository(repository)
    experts = repo.experts()
    missing = [t for t in tasks if t not in experts.tasks]
    if missing:
        raise SGLoraError(f"{repository}: no expert snapshots for task(s) {missing}; P-diff models seen tasks only")
    snaps = {t: repo.expert(t) for t in tasks}
    models, info = {}, {}
    if conditional:
        cond = task_conditions(tasks, experts, embeddings)
        x = np.concatenate([snaps[t] for t in tasks])
        c = np.concatenate([np.repeat(cond[t][None], len(snaps[t]), 0) for t in tasks])
        models["cond_pdiff"], hist = fit_pdiff(x, spec, c, threads=threads, progress=progress, desc="cond_pdiff")
        info["cond_pdiff"] = {"tasks": list(tasks), "snapshots": len(x), "history": hist}
    else:
        for t in tasks:
            models[t], hist = fit_pdiff(snaps[t], spec, threads=threads, progress=progress, desc=f"pdiff[{t}]")
            info[t] = {"tasks": [t], "snapshots": len(snaps[t]), "history": hist}
    config = {"method": "cond_pdiff" if conditional else "pdiff", "conditional": conditional, "dim": repo.layout.dim,
              "cond_dim": next(iter(models.values())).cond_dim, "pdiff": asdict(spec), "tasks": list(tasks),
              "repository": str(repository), "models": info}
    save_pdiff(out_dir, models, config)
    return {"method": config["method"], "models": len(models),
            "final": {k: {"autoencoder": v["history"]["autoencoder"][-1], "diffusion": v["history"]["diffusion"][-1],
                          "reconstruction_mse": v["history"]["reconstruction_mse"]} for k, v in info.items()}}
