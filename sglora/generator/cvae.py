"""The conditional VAE of SG-LoRA (Eq. 8 of the paper).

    encoder          q(z | X, c)   2-layer ReLU MLP -> (mean, log-variance)
    condition_prior  p(z | c)      2-layer ReLU MLP -> (mean, log-variance)   (learned, not N(0, I))
    decoder          p(X | z, c)   3-layer ReLU MLP
    loss             ||X - X_hat||^2 + lambda * KL(q(z | X, c) || p(z | c))

Design choices (each a config key, see ``CVAESpec``):

- *Normalisation*: LoRA coordinates differ in scale by orders of magnitude (A is near its
  initialisation, B starts at zero), so X and the condition are standardised per
  coordinate with the training snapshots' mean and standard deviation.
- *Condition embedding*: c = (mu*, sigma*) has twice the LoRA's size; one linear layer
  maps it to ``cond_dim`` features shared by encoder, condition prior and decoder, so the network
  grows linearly with D (a ViT-B/16 LoRA, D ~ 150k, gives ~80M weights at the defaults).
- *Residual decoder*: the decoder predicts the deviation from mu*, X_hat = mu* + g(z, c);
  with ``residual: false`` it predicts X directly.

Generator variants (off by default, each chosen on the validation tasks):

- ``augment``: A extra conditions per expert (:func:`sglora.generator.prior.augmented_conditions`);
  each snapshot of a batch takes its expert's training condition or one of its A, uniformly.
- ``describe``: the task's description embedding d (L2-normalised, scaled by sqrt(E) so its
  coordinates are O(1) like the standardised (mu*, sigma*)) is part of the condition
  network's input: c = (mu*, sigma*, d). Training uses each expert's own d_n, sampling the
  task's. The condition layer then reads 2D + E values (``embed_dim`` in ``config.json``).

The network p(z | c) is the *condition prior*, named so apart from the semantic prior
(:mod:`sglora.generator.prior`), which builds the condition c itself.

Checkpoint format (``model.safetensors`` of :func:`save_cvae`): the state dict of
:class:`CVAE` with the condition prior's tensors under ``prior.*``, a fixed
name, so every checkpoint of this format loads and a new one has the same bytes (:data:`CHECKPOINT_NAMES` maps the names both ways).
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from ..io import SGLoraError, atomic_path, reading, save_safetensors, write_json
from .settings import CVAE_VARIANT_OFF, CVAESpec


def gaussian_kl(mu_q, logvar_q, mu_p, logvar_p) -> torch.Tensor:
    """KL(N(mu_q, e^logvar_q) || N(mu_p, e^logvar_p)), summed over the last axis."""
    return 0.5 * (logvar_p - logvar_q + (logvar_q.exp() + (mu_q - mu_p) ** 2) / logvar_p.exp() - 1).sum(-1)


def _mlp(sizes: list[int]) -> nn.Sequential:
    layers = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def describe_features(embedding: torch.Tensor) -> torch.Tensor:
    """A description embedding as condition input: unit norm, scaled by sqrt(E)."""
    e = embedding.float()
    return e / (e.norm(dim=-1, keepdim=True) + 1e-12) * e.shape[-1] ** 0.5


class CVAE(nn.Module):
    """The conditional VAE: encoder q(z | X, c) and decoder p(X | z, c) over flat LoRA vectors."""

    def __init__(self, dim: int, spec: CVAESpec, embed_dim: int = 0):
        super().__init__()
        if spec.describe and embed_dim < 1:
            raise SGLoraError("cvae.describe: the CVAE needs the size of the description embeddings (embed_dim)")
        self.dim, self.spec = dim, spec
        self.embed_dim = embed_dim if spec.describe else 0
        h, L, cd = spec.hidden, spec.latent, spec.cond_dim
        self.condition = nn.Sequential(nn.Linear(2 * dim + self.embed_dim, cd), nn.ReLU())
        self.encoder = _mlp([dim + cd, h, 2 * L])  # 2 layers
        self.condition_prior = _mlp([cd, h, 2 * L])  # 2 layers
        self.decoder = _mlp([L + cd, h, h, dim])  # 3 layers
        self.register_buffer("shift", torch.zeros(dim))
        self.register_buffer("scale", torch.ones(dim))

    # normalisation -------------------------------------------------------------
    def fit_normalization(self, x: torch.Tensor) -> None:
        """Set the per-coordinate shift and scale of the snapshots (``spec.normalization``)."""
        if self.spec.normalization == "standardize":
            std = x.double().std(0, unbiased=False)
            floor = max(float(std[std > 0].median()) * 1e-3, 1e-8) if (std > 0).any() else 1.0
            self.shift.copy_(x.double().mean(0).float())
            self.scale.copy_(std.clamp_min(floor).float())

    def cond(self, mu: torch.Tensor, var: torch.Tensor,
             embedding: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(condition embedding, normalised mu*); ``embedding``: the task's d (``describe`` only)."""
        mu_n = (mu - self.shift) / self.scale
        sd_n = var.clamp_min(0).sqrt() / self.scale
        parts = [mu_n, sd_n]
        if self.embed_dim:
            if embedding is None or embedding.shape[-1] != self.embed_dim:
                got = None if embedding is None else embedding.shape[-1]
                raise SGLoraError(f"cvae.describe: the condition needs a description embedding of {self.embed_dim} "
                                  f"values, got {got}")
            parts.append(describe_features(embedding).expand(mu_n.shape[0], -1))
        return self.condition(torch.cat(parts, -1)), mu_n

    # the three networks ----------------------------------------------------------
    def posterior(self, x_n, h):
        """Mean and log-variance of q(z | X, c)."""
        m, lv = self.encoder(torch.cat([x_n, h], -1)).chunk(2, -1)
        return m, lv.clamp(-12, 8)

    def condition_prior_params(self, h):
        """Mean and log-variance of the condition prior p(z | c)."""
        m, lv = self.condition_prior(h).chunk(2, -1)
        return m, lv.clamp(-12, 8)

    def decode(self, z, h, mu_n):
        """X (normalised) from z and the condition; residual to mu* when ``spec.residual``."""
        out = self.decoder(torch.cat([z, h], -1))
        return mu_n + out if self.spec.residual else out

    def loss(self, x, mu, var, embedding=None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(total, reconstruction, KL) averaged over the batch; reconstruction is the
        squared error summed over coordinates, in normalised units."""
        h, mu_n = self.cond(mu, var, embedding)
        x_n = (x - self.shift) / self.scale
        qm, qlv = self.posterior(x_n, h)
        z = qm + torch.randn_like(qm) * (0.5 * qlv).exp()
        rec = ((self.decode(z, h, mu_n) - x_n) ** 2).sum(-1).mean()
        pm, plv = self.condition_prior_params(h)
        kl = gaussian_kl(qm, qlv, pm, plv).mean()
        return rec + self.spec.kl_weight * kl, rec, kl

    @torch.no_grad()
    def sample(self, mu, var, n: int, generator: torch.Generator | None = None,
               temperature: float = 1.0, embedding=None) -> torch.Tensor:
        """``n`` LoRA vectors for one condition (mu*, var*): z ~ p(z | c), X = decode.
        ``embedding``: the task's description embedding d (read only with ``describe``)."""
        mu = torch.tensor(np.asarray(mu), dtype=torch.float32, device=self.shift.device)[None]
        var = torch.tensor(np.asarray(var), dtype=torch.float32, device=self.shift.device)[None]
        emb = None
        if self.embed_dim and embedding is not None:
            emb = torch.tensor(np.asarray(embedding), dtype=torch.float32, device=self.shift.device)[None]
        h, mu_n = self.cond(mu, var, emb)
        pm, plv = self.condition_prior_params(h)
        eps = torch.randn((n, pm.shape[-1]), generator=generator, device="cpu").to(pm.device)
        z = pm + temperature * eps * (0.5 * plv).exp()
        x_n = self.decode(z, h.expand(n, -1), mu_n.expand(n, -1))
        return (x_n * self.scale + self.shift).cpu()


def cvae_optimizer(model: torch.nn.Module, lr: float, fused: bool = True) -> torch.optim.Adam:
    """The CVAE's optimiser: Adam, fused by default (one pass over each parameter per step
    instead of seven elementwise ops: the D x hidden layers make the plain Adam about a quarter
    of a CPU step; the same update up to rounding). ``benchmarks/bench_cvae.py`` times both."""
    return torch.optim.Adam(model.parameters(), lr=lr, fused=fused)


def train_cvae(snapshots: np.ndarray, expert_index: np.ndarray, cond_mu: np.ndarray, cond_var: np.ndarray,
               spec: CVAESpec, threads: int | None = None, progress: bool = True,
               pools: tuple[np.ndarray, np.ndarray] | None = None,
               embeddings: np.ndarray | None = None) -> tuple[CVAE, list[dict]]:
    """Train on all snapshots; snapshot i belongs to expert ``expert_index[i]`` whose
    condition is ``(cond_mu, cond_var)[expert_index[i]]``.

    ``pools`` (``spec.augment``): ``(N, A, D)`` extra conditions per expert; each snapshot of
    a batch then takes, uniformly, its expert's condition or one of its A (drawn from a
    generator of its own, so the rest of training draws as without pools).
    ``embeddings`` (``spec.describe``): ``(N, E)`` the experts' description embeddings."""
    from tqdm import tqdm

    from ..devices import pick_device
    from ..backbone.contrastive import optimizer_step, seed_everything

    seed_everything(spec.seed, threads)
    device = pick_device(spec.device)
    x = torch.as_tensor(snapshots, dtype=torch.float32)
    cm = torch.as_tensor(cond_mu, dtype=torch.float32)
    cv = torch.as_tensor(cond_var, dtype=torch.float32)
    idx = torch.as_tensor(expert_index, dtype=torch.long)
    if spec.describe and embeddings is None:
        raise SGLoraError("cvae.describe: training needs the experts' description embeddings")
    emb = torch.tensor(np.array(embeddings, dtype=np.float32)).to(device) if spec.describe else None
    model = CVAE(x.shape[1], spec, embed_dim=emb.shape[1] if spec.describe else 0)
    model.fit_normalization(x)
    model.to(device)
    x, cm, cv, idx = x.to(device), cm.to(device), cv.to(device), idx.to(device)
    pick = None
    if spec.augment:
        if pools is None or pools[0].shape[:2] != (len(cm), spec.augment):
            raise SGLoraError(f"cvae.augment={spec.augment}: training needs {spec.augment} extra conditions per expert")
        # slot 0: the expert's training condition, slots 1..A: its pool
        cm = torch.cat([cm[:, None], torch.as_tensor(pools[0], dtype=torch.float32).to(device)], 1)
        cv = torch.cat([cv[:, None], torch.as_tensor(pools[1], dtype=torch.float32).to(device)], 1)
        pick = torch.Generator().manual_seed(spec.seed + 1_000_003)
    opt = cvae_optimizer(model, spec.lr)
    gen = torch.Generator().manual_seed(spec.seed)
    history = []
    bar = tqdm(range(spec.epochs), desc="cvae", disable=not progress)
    for epoch in bar:
        model.train()
        order = torch.randperm(len(x), generator=gen).to(device)
        tot = rec_s = kl_s = 0.0
        n = 0
        for i in range(0, len(order), spec.batch_size):
            b = order[i : i + spec.batch_size]
            if pick is None:
                c_mu, c_var = cm[idx[b]], cv[idx[b]]
            else:
                slot = torch.randint(0, spec.augment + 1, (len(b),), generator=pick).to(device)
                c_mu, c_var = cm[idx[b], slot], cv[idx[b], slot]
            loss, rec, kl = model.loss(x[b], c_mu, c_var, emb[idx[b]] if emb is not None else None)
            optimizer_step(opt, loss, "cvae", epoch, history)
            tot, rec_s, kl_s, n = tot + loss.item() * len(b), rec_s + rec.item() * len(b), kl_s + kl.item() * len(b), n + len(b)
        history.append({"epoch": epoch + 1, "loss": tot / n, "reconstruction": rec_s / n, "kl": kl_s / n})
        bar.set_postfix(loss=f"{tot / n:.3g}", kl=f"{kl_s / n:.3g}")
    return model.eval().cpu(), history


#: module-name prefix in :class:`CVAE` -> prefix in ``model.safetensors`` (the checkpoint format)
CHECKPOINT_NAMES = {"condition_prior.": "prior."}


def _renamed(state: dict, names: dict[str, str]) -> dict:
    out = {}
    for key, value in state.items():
        for old, new in names.items():
            if key.startswith(old):
                key = new + key[len(old):]
                break
        out[key] = value
    return out


def save_cvae(out_dir: str | Path, model: CVAE, extra: dict) -> None:
    """``model.safetensors`` (weights and normalisation, in the checkpoint format of the
    module docstring) + ``config.json``, atomically. The variant keys (``augment``,
    ``describe``, and ``embed_dim``) are written only when on: a paper-faithful CVAE's
    ``config.json`` holds only the keys every CVAE has, and one without them reads as off."""
    spec = asdict(model.spec)
    for key, off in CVAE_VARIANT_OFF.items():
        if spec[key] == off:
            del spec[key]
    sizes = {"embed_dim": model.embed_dim} if model.embed_dim else {}
    with atomic_path(out_dir, directory=True) as tmp:
        save_safetensors(tmp / "model.safetensors", _renamed(model.state_dict(), CHECKPOINT_NAMES))
        write_json(tmp / "config.json", {"dim": model.dim, **sizes, "cvae": spec, **extra})


def load_cvae(model_dir: str | Path) -> tuple[CVAE, dict]:
    """Load a trained CVAE folder (config.json, model.safetensors): ``(model, config)``."""
    from safetensors.torch import load_file

    model_dir = Path(model_dir)
    cfg_path, weights = model_dir / "config.json", model_dir / "model.safetensors"
    if not cfg_path.exists() or not weights.exists():
        raise SGLoraError(f"{model_dir}: not a trained CVAE (needs config.json and model.safetensors)")
    with reading(cfg_path, "CVAE config (JSON with 'dim' and 'cvae')"):
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
        model = CVAE(int(cfg["dim"]), CVAESpec.from_dict(cfg["cvae"]), int(cfg.get("embed_dim", 0)))
        _check_config(cfg, model.spec)
    with reading(weights, "CVAE weights file (safetensors matching config.json)"):
        state = load_file(str(weights))
        for name, tensor in sorted(state.items()):
            if not torch.isfinite(tensor).all():
                raise SGLoraError(f"{weights}: tensor {name!r} holds non-finite (NaN/inf) values")
        model.load_state_dict(_renamed(state, {v: k for k, v in CHECKPOINT_NAMES.items()}))
    model.source = weights  # named when what it decodes is refused
    model.trained_on = cfg.get("repository_checksum")  # checked against the repository it samples with
    return model.eval(), cfg


def _check_config(cfg: dict, spec: CVAESpec) -> None:
    """The keys of ``config.json`` that sampling reads besides ``cvae`` and ``sampling``:
    ``condition`` (a copy of ``cvae.condition``), ``prior`` and ``repository_checksum``."""
    from .settings import PriorSpec

    if "condition" in cfg and cfg["condition"] != spec.condition:
        raise SGLoraError(f"field 'condition' is {cfg['condition']!r}; expected cvae.condition, {spec.condition!r}")
    PriorSpec.from_dict(cfg.get("prior"))
    checksum = cfg.get("repository_checksum")
    if checksum is not None and not (isinstance(checksum, str) and len(checksum) == 64):
        raise SGLoraError(f"field 'repository_checksum' is {checksum!r}; expected the repository's SHA-256 (64 hex digits)")


def cvae_parameters(dim: int, spec: CVAESpec, embed_dim: int = 0) -> int:
    """Number of weights of a CVAE for a LoRA of ``dim`` values (for planning GPU memory)."""
    h, L, cd = spec.hidden, spec.latent, spec.cond_dim
    lin = lambda a, b: a * b + b  # noqa: E731
    return (lin(2 * dim + (embed_dim if spec.describe else 0), cd) + lin(dim + cd, h) + lin(h, 2 * L) + lin(cd, h) + lin(h, 2 * L)
            + lin(L + cd, h) + lin(h, h) + lin(h, dim))


def fit_cvae(repository: str | Path, out: str | Path, spec: CVAESpec, prior, threads: int | None = None) -> dict:
    """Train the CVAE on every snapshot of an expert repository, each conditioned as the
    prior of ``prior`` builds it (optionally augmented), and save it with its provenance;
    returns the last epoch's losses."""
    from .prior import augmented_conditions, training_conditions
    from ..experts.repository import Repository

    repo = Repository(repository)
    experts = repo.experts()
    tasks, vecs = [], []
    for t, v in repo.iter_snapshots():
        tasks += t
        vecs.append(v)
    index = np.array([experts.tasks.index(t) for t in tasks])
    keys = experts.embedding(prior.modality)
    cm, cv = training_conditions(keys, experts.mu, experts.var, prior.k, prior.tau, spec.condition)
    pools = (augmented_conditions(keys, experts.mu, experts.var, prior.k, prior.tau, spec.augment, seed=spec.seed)
             if spec.augment else None)
    model, history = train_cvae(np.concatenate(vecs), index, cm, cv, spec, threads=threads, pools=pools,
                                 embeddings=keys if spec.describe else None)
    save_cvae(out, model, {"prior": asdict(prior), "condition": spec.condition, "history": history,
                           "repository": str(repository), "repository_checksum": experts.checksum})
    return history[-1]


__all__ = ["CVAE", "CHECKPOINT_NAMES", "describe_features", "gaussian_kl", "train_cvae", "save_cvae", "load_cvae",
           "cvae_parameters", "fit_cvae"]
