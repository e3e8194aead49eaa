"""P-diff's model (parameter autoencoder + latent DDPM, conditional for COND P-Diff),
its files, and the task conditions of COND P-Diff."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from ...io import SGLoraError, atomic_path, save_safetensors, write_json
from .config import PDiffSpec
from .layer import Denoiser, Diffusion, ParamAutoencoder


def fit_scale(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-coordinate mean and std (std floored at 1e-3 of its median, as the CVAE does)."""
    std = x.double().std(0, unbiased=False)
    floor = max(float(std[std > 0].median()) * 1e-3, 1e-8) if (std > 0).any() else 1.0
    return x.double().mean(0).float(), std.clamp_min(floor).float()


class PDiff(nn.Module):
    """Parameter autoencoder + latent DDPM (conditional when ``cond_dim`` > 0)."""

    def __init__(self, dim: int, spec: PDiffSpec, cond_dim: int = 0):
        super().__init__()
        self.dim, self.spec, self.cond_dim = dim, spec, cond_dim
        self.ae = ParamAutoencoder(dim, spec)
        self.denoiser = Denoiser(spec.latent, spec.denoiser_hidden, spec.denoiser_blocks, spec.time_dim, cond_dim)
        self.diffusion = Diffusion(spec.T, spec.beta_start, spec.beta_end)
        self.register_buffer("shift", torch.zeros(dim))
        self.register_buffer("scale", torch.ones(dim))
        self.register_buffer("zshift", torch.zeros(spec.latent))
        self.register_buffer("zscale", torch.ones(spec.latent))
        self.register_buffer("cshift", torch.zeros(max(cond_dim, 1)))
        self.register_buffer("cscale", torch.ones(max(cond_dim, 1)))

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """Parameter vectors in the model's normalised space."""
        return (x - self.shift) / self.scale

    def denormalize(self, x_n: torch.Tensor) -> torch.Tensor:
        """Normalised vectors back in parameter space."""
        return x_n * self.scale + self.shift

    @torch.no_grad()
    def latents(self, x: torch.Tensor) -> torch.Tensor:
        """Standardised noise-free latents of raw vectors (what the DDPM models)."""
        was = self.ae.training
        self.ae.eval()
        z = self.ae.encode(self.normalize(x))
        self.ae.train(was)
        return (z - self.zshift) / self.zscale

    @torch.no_grad()
    def decode_latents(self, z: torch.Tensor) -> torch.Tensor:
        """Diffusion latents -> parameter vectors."""
        return self.denormalize(self.ae.decode(z * self.zscale + self.zshift))

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Raw vectors through the autoencoder (no noise)."""
        return self.decode_latents(self.latents(x))

    def eps(self, z, t, cond=None, keep=None):
        """The denoiser; ``cond`` is a raw condition vector, standardised here."""
        return self.denoiser(z, t, None if cond is None else (cond - self.cshift) / self.cscale, keep)

    @torch.no_grad()
    def sample(self, n: int, cond: torch.Tensor | None = None, generator: torch.Generator | None = None,
               guidance: float | None = None) -> torch.Tensor:
        """``n`` raw LoRA vectors (on the CPU); ``cond`` the (scaled) condition for COND P-Diff."""
        self.eval()
        dev = self.shift.device
        w = self.spec.guidance if guidance is None else guidance
        if self.cond_dim and cond is None:
            raise SGLoraError("COND P-Diff: sampling needs a task condition")
        c = None if cond is None else torch.as_tensor(cond, dtype=torch.float32, device=dev).reshape(1, -1)

        def eps_model(z, t):
            if not self.cond_dim:
                return self.eps(z, t)
            e_c = self.eps(z, t, c)
            if w == 1.0:
                return e_c
            e_u = self.eps(z, t, c, keep=torch.zeros(len(z), device=dev))
            return e_u + w * (e_c - e_u)

        z = self.diffusion.sample(eps_model, (n, self.spec.latent), generator=generator, device=dev)
        return self.decode_latents(z).cpu()


def condition_vector(embedding: np.ndarray) -> np.ndarray:
    """A task embedding as COND P-Diff's condition: L2-normalised. (The model then
    standardises it per coordinate with the seen tasks' statistics: description embeddings
    of one dataset are close to each other, cosine 0.9 and more, and standardising makes
    their differences visible to the denoiser.)"""
    e = np.asarray(embedding, dtype=np.float32)
    return (e / (np.linalg.norm(e) + 1e-12)).astype(np.float32)


def task_conditions(tasks: list[str], repo_experts, embeddings: dict | None) -> dict[str, np.ndarray]:
    """COND P-Diff's condition of each task: its text embedding from ``embeddings``, else
    the repository's, as :func:`condition_vector`."""
    out = {}
    for t in tasks:
        if embeddings is not None and t in embeddings:
            out[t] = condition_vector(embeddings[t]["text_embedding"])
        elif t in repo_experts.tasks:
            out[t] = condition_vector(repo_experts.text_embedding[repo_experts.tasks.index(t)])
        else:
            raise SGLoraError(f"COND P-Diff: no text embedding for task {t!r} (not in the embeddings table nor the repository)")
    return out


def save_pdiff(out_dir: str | Path, models: dict[str, PDiff], config: dict) -> Path:
    """Write a trained P-diff folder: one safetensors file per model, config.json."""
    with atomic_path(out_dir, directory=True) as tmp:
        for name, m in models.items():
            save_safetensors(tmp / f"{name}.safetensors", m.state_dict())
        write_json(tmp / "config.json", config)
    return Path(out_dir)


def load_pdiff(model_dir: str | Path) -> tuple[dict[str, PDiff], dict]:
    """``({name: PDiff}, config)`` of a folder written by :func:`train_pdiff`."""
    from safetensors.torch import load_file

    model_dir = Path(model_dir)
    cfg_path = model_dir / "config.json"
    if not cfg_path.exists():
        raise SGLoraError(f"{model_dir}: not a trained P-diff (config.json not found)")
    cfg = json.loads(cfg_path.read_text())
    spec = PDiffSpec.from_dict(cfg["pdiff"])
    models = {}
    for name in cfg["models"]:
        path = model_dir / f"{name}.safetensors"
        if not path.exists():
            raise SGLoraError(f"{path}: model weights not found")
        m = PDiff(cfg["dim"], spec, cfg["cond_dim"])
        m.load_state_dict(load_file(str(path)))
        models[name] = m.eval()
    return models, cfg
