"""P-diff (Wang et al. 2024, "Neural Network Diffusion") and COND P-Diff (Jin et al. 2024,
"Conditional LoRA Parameter Generation"): the seen-task generation baselines of
supplementary Table 13.

Both are a latent diffusion model over LoRA factor vectors:

1. *Parameter autoencoder.* Vectors are standardised per coordinate (mean and std of the
   training snapshots); an encoder (an MLP by default, or p-diff's 1-D convolutions) maps
   them to a small latent, a decoder maps back. As in p-diff, the encoder input is augmented with
   Gaussian noise (``input_noise``, 0.001) and the latent with more (``latent_noise``,
   0.1) during training, so the decoder is robust to the imperfect latents diffusion
   produces.
2. *Latent DDPM.* The training latents (noise-free encodings, standardised per
   coordinate) are modelled by a DDPM (Ho et al. 2020): linear beta schedule, T steps,
   epsilon-prediction with an MLP denoiser and a sinusoidal timestep embedding, full
   ancestral sampling with the posterior variance.

- **P-diff** (unconditional): one model per seen task, trained on that task's M snapshots.
- **COND P-Diff**: one model for all seen tasks; the denoiser is conditioned on the task's
  text embedding d_n (the same frozen-CLIP embedding SG-LoRA uses; L2-normalised, then
  standardised per coordinate over the seen tasks), added to the timestep embedding of
  every denoiser block. Classifier-free
  guidance is available (``cfg_dropout`` > 0 at training, ``guidance`` != 1 at sampling)
  and off by default.

Sampling draws N latents per task with a per-task seed and decodes them: the candidates
file is written with :func:`sglora.candidates.save_candidates` like every other method's.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..io import SGLoraError, Settings, atomic_path, save_safetensors, setting, write_json


@dataclass
class PDiffSpec(Settings):
    """Sizes and training settings of P-diff / COND P-Diff (config sections ``pdiff``, ``cond_pdiff``)."""

    section: ClassVar[str] = "pdiff"

    autoencoder: str = setting("mlp", '"mlp", or "conv" (p-diff\'s 1-D conv encoder/decoder; slower to fit LoRA vectors, '
                               "see docs)", choices=("conv", "mlp"))
    latent: int = setting(64, "size of the latent the diffusion runs in", min=1)
    channels: list[int] = setting(factory=lambda: [16, 32, 32, 8], help="conv AE: channels of the stride-2 conv layers")
    kernel_size: int = setting(7, "conv AE: kernel width (odd)")
    ae_hidden: int = setting(512, "mlp AE: hidden width", min=1)
    input_noise: float = setting(0.001, "std of the noise added to the (standardised) encoder input (p-diff: 0.001)")
    latent_noise: float = setting(0.1, "std of the noise added to the latent before decoding (p-diff: 0.1)")
    ae_epochs: int = setting(1000, "autoencoder passes over the training snapshots", min=1)
    ae_lr: float = setting(1e-3, "autoencoder Adam learning rate")
    denoiser_hidden: int = setting(512, "width of the MLP denoiser", min=1)
    denoiser_blocks: int = setting(3, "residual blocks of the MLP denoiser")
    time_dim: int = setting(128, "size of the sinusoidal timestep embedding (even)", min=1)
    diffusion_epochs: int = setting(2000, "denoiser passes over the training latents", min=1)
    lr: float = setting(1e-3, "denoiser Adam learning rate")
    batch_size: int = setting(64, "snapshots (latents) per step", min=1)
    T: int = setting(1000, "diffusion steps, for training and for (full ancestral) sampling", min=1)
    beta_start: float = setting(1e-4, "linear beta schedule start (DDPM / p-diff)")
    beta_end: float = setting(2e-2, "linear beta schedule end")
    cfg_dropout: float = setting(0.0, "COND P-Diff: probability of dropping the condition in training (0 = no CFG)")
    guidance: float = setting(1.0, "COND P-Diff: CFG scale w, eps = eps_u + w (eps_c - eps_u); 1 = plain conditional")
    samples: int = setting(10, "N LoRAs sampled per task", min=1)
    seed: int = setting(0, "initialisation, data order, noise; sampling seeds derive from it per task")
    device: str = setting("auto", '"auto" = cuda if available else cpu')

    def check(self) -> None:
        if self.time_dim % 2:
            raise SGLoraError(f"pdiff.time_dim must be even, got {self.time_dim}")
        if self.autoencoder == "conv" and (not self.channels or self.kernel_size % 2 == 0 or min(self.channels) < 1):
            raise SGLoraError(f"pdiff: the conv autoencoder needs channels >= 1 and an odd kernel_size; got "
                              f"{self.channels}, {self.kernel_size}")
        if not 0 < self.beta_start < self.beta_end < 1:
            raise SGLoraError(f"pdiff: need 0 < beta_start < beta_end < 1, got {self.beta_start}, {self.beta_end}")
        if not 0 <= self.cfg_dropout < 1:
            raise SGLoraError(f"pdiff.cfg_dropout must be in [0, 1), got {self.cfg_dropout}")
        if self.guidance != 1.0 and self.cfg_dropout == 0:
            raise SGLoraError("pdiff.guidance != 1 needs an unconditional model: set cfg_dropout > 0")


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
        if self.kind == "mlp":
            return self.encoder(x)
        return self.encoder(F.pad(x, (0, self.padded - self.dim))[:, None])

    def decode(self, z: torch.Tensor) -> torch.Tensor:
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


def _fit_scale(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
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
        return (x - self.shift) / self.scale

    def denormalize(self, x_n: torch.Tensor) -> torch.Tensor:
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


# --- training -------------------------------------------------------------------------


def _batches(n: int, size: int, gen: torch.Generator):
    order = torch.randperm(n, generator=gen)
    return [order[i : i + size] for i in range(0, n, size)]


def fit_pdiff(snapshots: np.ndarray, spec: PDiffSpec, conditions: np.ndarray | None = None,
              threads: int | None = None, progress: bool = True, desc: str = "pdiff") -> tuple[PDiff, dict]:
    """Train the autoencoder, then the latent DDPM, on ``snapshots`` (S x D). With
    ``conditions`` (S x C, one row per snapshot) the model is COND P-Diff."""
    from tqdm import tqdm

    from ..backbone import pick_device, seed_everything

    seed_everything(spec.seed, threads)
    device = pick_device(spec.device)
    x = torch.as_tensor(np.asarray(snapshots), dtype=torch.float32)
    if x.ndim != 2 or len(x) < 2:
        raise SGLoraError(f"pdiff: need at least 2 training snapshots (S x D), got shape {tuple(x.shape)}")
    cond = None if conditions is None else torch.as_tensor(np.asarray(conditions), dtype=torch.float32)
    if cond is not None and len(cond) != len(x):
        raise SGLoraError(f"pdiff: {len(cond)} conditions for {len(x)} snapshots")
    model = PDiff(x.shape[1], spec, 0 if cond is None else cond.shape[1])
    shift, scale = _fit_scale(x)
    model.shift.copy_(shift)
    model.scale.copy_(scale)
    if cond is not None:
        cshift, cscale = _fit_scale(cond)
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
            opt.zero_grad()
            loss.backward()
            opt.step()
            tot += loss.item() * len(b)
        history["autoencoder"].append(tot / len(x))
        if not math.isfinite(history["autoencoder"][-1]):
            raise SGLoraError(f"{desc}: autoencoder loss is not finite at epoch {epoch + 1}")
    model.ae.eval()
    with torch.no_grad():
        z0 = model.ae.encode(xn)
        zshift, zscale = _fit_scale(z0)
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
            opt.zero_grad()
            loss.backward()
            opt.step()
            tot += loss.item() * len(b)
        history["diffusion"].append(tot / len(x))
        if not math.isfinite(history["diffusion"][-1]):
            raise SGLoraError(f"{desc}: diffusion loss is not finite at epoch {epoch + 1}")
    return model.eval().cpu(), history


def _conditions(tasks: list[str], repo_experts, embeddings: dict | None) -> dict[str, np.ndarray]:
    out = {}
    for t in tasks:
        if embeddings is not None and t in embeddings:
            out[t] = condition_vector(embeddings[t]["text_embedding"])
        elif t in repo_experts.tasks:
            out[t] = condition_vector(repo_experts.text_embedding[repo_experts.tasks.index(t)])
        else:
            raise SGLoraError(f"COND P-Diff: no text embedding for task {t!r} (not in the embeddings table nor the repository)")
    return out


def train_pdiff(repository: str | Path, tasks: list[str], out_dir: str | Path, spec: PDiffSpec, conditional: bool,
                embeddings: dict | None = None, threads: int | None = None, progress: bool = True) -> dict:
    """Train P-diff (one model per task in ``tasks``) or COND P-Diff (one model on all
    ``tasks``, conditioned on their text embeddings) from the repository's snapshots.

    Writes ``out_dir`` atomically: ``<name>.safetensors`` per model (name = the task for
    P-diff, ``cond_pdiff`` for COND P-Diff) and ``config.json`` (spec, tasks, histories)."""
    from ..repository import Repository

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
        cond = _conditions(tasks, experts, embeddings)
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


def save_pdiff(out_dir: str | Path, models: dict[str, PDiff], config: dict) -> Path:
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


def sample_pdiff(model_dir: str | Path, repository: str | Path, tasks: list[str], out: str | Path,
                 embeddings: dict | None = None, samples: int | None = None, seed: int | None = None) -> dict:
    """Sample N LoRAs per task (seeded per task) and write a candidates file (method
    ``pdiff`` or ``cond_pdiff``). P-diff needs a model trained on the task; COND P-Diff
    samples any task with a text embedding (the paper evaluates seen tasks)."""
    from ..candidates import save_candidates
    from ..generate import task_seed
    from ..repository import Repository

    models, cfg = load_pdiff(model_dir)
    repo = Repository(repository)
    if repo.layout.dim != cfg["dim"]:
        raise SGLoraError(f"{model_dir}: models generate {cfg['dim']} values; the repository's layout has {repo.layout.dim}")
    spec = PDiffSpec.from_dict(cfg["pdiff"])
    n = samples or spec.samples
    base_seed = spec.seed if seed is None else seed
    method = cfg["method"]
    conds = _conditions(tasks, repo.experts(), embeddings) if cfg["conditional"] else {}
    vectors, info = {}, {}
    for t in tasks:
        s = task_seed(base_seed, t)
        gen = torch.Generator().manual_seed(s)
        if cfg["conditional"]:
            vectors[t] = models["cond_pdiff"].sample(n, torch.from_numpy(conds[t]), generator=gen).numpy()
            info[t] = {"seed": s, "seen": t in cfg["tasks"], "guidance": spec.guidance}
        else:
            if t not in models:
                raise SGLoraError(f"{model_dir}: P-diff has no model for task {t!r} (trained: {sorted(models)})")
            vectors[t] = models[t].sample(n, generator=gen).numpy()
            info[t] = {"seed": s, "seen": True}
    save_candidates(out, vectors, repo.layout, method, info)
    return {"method": method, "tasks": len(vectors), "samples": n}


__all__ = ["PDiffSpec", "Diffusion", "timestep_embedding", "ParamAutoencoder", "Denoiser", "PDiff", "condition_vector",
           "fit_pdiff", "train_pdiff", "save_pdiff", "load_pdiff", "sample_pdiff"]
