"""The latent DDPM (forward process, loss, ancestral sampling) and the networks of
P-diff: the parameter autoencoder and the MLP denoiser."""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from ...io import SGLoraError
from .config import PDiffSpec


# --- DDPM -----------------------------------------------------------------------------


class Diffusion:
    """The DDPM forward process q(x_t | x_0) and ancestral sampling, t = 0 .. T-1."""

    def __init__(self, T: int, beta_start: float, beta_end: float):
        self.T = T
        betas = torch.linspace(beta_start, beta_end, T, dtype=torch.float64)
        alphas = 1 - betas
        abar = torch.cumprod(alphas, 0)
        abar_prev = torch.cat([torch.ones(1, dtype=torch.float64), abar[:-1]])
        self.betas, self.alphas, self.alphas_cumprod, self.alphas_cumprod_prev = betas, alphas, abar, abar_prev
        self.posterior_variance = betas * (1 - abar_prev) / (1 - abar)  # beta~_t; 0 at t = 0

    def _at(self, arr: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return arr.to(like.device)[t].to(like.dtype).view(-1, *([1] * (like.ndim - 1)))

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps."""
        ab = self._at(self.alphas_cumprod, t, x0)
        return ab.sqrt() * x0 + (1 - ab).sqrt() * noise

    def loss(self, eps_model, x0: torch.Tensor, generator: torch.Generator | None = None, **kwargs) -> torch.Tensor:
        """Simple DDPM loss E ||eps - eps_theta(x_t, t)||^2, t uniform."""
        t = torch.randint(0, self.T, (len(x0),), generator=generator).to(x0.device)
        noise = torch.randn(x0.shape, generator=generator).to(x0.device)
        return F.mse_loss(eps_model(self.q_sample(x0, t, noise), t, **kwargs), noise)

    @torch.no_grad()
    def sample(self, eps_model, shape: tuple[int, ...], generator: torch.Generator | None = None,
               device: torch.device | str = "cpu") -> torch.Tensor:
        """Ancestral sampling from x_T ~ N(0, I) down to x_0 (all T steps); noise is drawn on
        the CPU from ``generator`` so a seed gives the same samples on any device."""
        x = torch.randn(shape, generator=generator).to(device)
        for t in reversed(range(self.T)):
            tt = torch.full((shape[0],), t, dtype=torch.long, device=device)
            eps = eps_model(x, tt)
            beta, alpha, abar = (float(a[t]) for a in (self.betas, self.alphas, self.alphas_cumprod))
            x = (x - beta / math.sqrt(1 - abar) * eps) / math.sqrt(alpha)
            if t > 0:
                x = x + math.sqrt(float(self.posterior_variance[t])) * torch.randn(shape, generator=generator).to(device)
        return x


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of integer timesteps (Transformer / DDPM style): (len(t), dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], -1)


# --- networks -------------------------------------------------------------------------


class ParamAutoencoder(nn.Module):
    """Standardised LoRA vector (D) <-> latent (``spec.latent``)."""

    def __init__(self, dim: int, spec: PDiffSpec):
        super().__init__()
        self.dim, self.kind = dim, spec.autoencoder
        L = spec.latent
        if self.kind == "mlp":
            h = spec.ae_hidden
            self.encoder = nn.Sequential(nn.Linear(dim, h), nn.LeakyReLU(), nn.Linear(h, h), nn.LeakyReLU(), nn.Linear(h, L))
            self.decoder = nn.Sequential(nn.Linear(L, h), nn.LeakyReLU(), nn.Linear(h, h), nn.LeakyReLU(), nn.Linear(h, dim))
            return
        ch, k = list(spec.channels), spec.kernel_size
        fold = 2 ** len(ch)
        self.padded = -(-dim // fold) * fold
        self.last = self.padded // fold
        enc, prev = [], 1
        for c in ch:  # each layer halves the length
            enc += [nn.Conv1d(prev, c, k, 2, k // 2), nn.InstanceNorm1d(c), nn.LeakyReLU()]
            prev = c
        self.encoder = nn.Sequential(*enc, nn.Flatten(), nn.Linear(ch[-1] * self.last, L))
        dec = []
        rev = ch[::-1] + [ch[0]]
        for a, b in zip(rev[:-1], rev[1:]):  # each layer doubles the length
            dec += [nn.ConvTranspose1d(a, b, k, 2, k // 2, output_padding=1), nn.InstanceNorm1d(b), nn.LeakyReLU()]
        self.to_map = nn.Linear(L, ch[-1] * self.last)
        self.decoder = nn.Sequential(*dec, nn.Conv1d(ch[0], 1, k, 1, k // 2))
        self.channels = ch

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Parameter vectors -> latents."""
        if self.kind == "mlp":
            return self.encoder(x)
        return self.encoder(F.pad(x, (0, self.padded - self.dim))[:, None])

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Latents -> parameter vectors of the original size."""
        if self.kind == "mlp":
            return self.decoder(z)
        h = self.to_map(z).view(len(z), self.channels[-1], self.last)
        return self.decoder(h)[:, 0, : self.dim]


class Denoiser(nn.Module):
    """eps_theta(z_t, t[, c]): an MLP with residual blocks; the timestep embedding (and the
    condition's, for COND P-Diff) is added to the input of every block."""

    def __init__(self, latent: int, hidden: int, blocks: int, time_dim: int, cond_dim: int = 0):
        super().__init__()
        self.time_dim, self.cond_dim = time_dim, cond_dim
        self.time = nn.Sequential(nn.Linear(time_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.cond = nn.Sequential(nn.Linear(cond_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden)) if cond_dim else None
        self.inp = nn.Linear(latent, hidden)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.LayerNorm(hidden), nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
            for _ in range(blocks))
        self.out = nn.Sequential(nn.LayerNorm(hidden), nn.SiLU(), nn.Linear(hidden, latent))

    def forward(self, z: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None,
                keep: torch.Tensor | None = None) -> torch.Tensor:
        """``keep`` (0/1 per row) drops the condition (the CFG null condition is a zero embedding)."""
        e = self.time(timestep_embedding(t, self.time_dim))
        if self.cond is not None:
            if cond is None:
                raise SGLoraError("COND P-Diff: the denoiser needs a condition")
            c = self.cond(cond.expand(len(z), -1))
            e = e + (c if keep is None else c * keep[:, None])
        h = self.inp(z)
        for block in self.blocks:
            h = h + block(h + e)
        return self.out(h)
