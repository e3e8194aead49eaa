"""What every training loop of the project shares: seeding, the CLIP contrastive loss and
its soft targets, and one optimizer step that refuses a non-finite loss.

Used by the expert LoRAs (:mod:`sglora.experts.training`), the CVAE (:mod:`sglora.generator.cvae`), the
baselines (:mod:`sglora.baselines.mole`, :mod:`sglora.baselines.pdiff`) and the embedded
backbone's pretraining (:mod:`sglora.backbone.pretrain`).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .clip import pooled_features
from ..io import SGLoraError


def seed_everything(seed: int, threads: int | None = None) -> None:
    """Seed torch and numpy and make CPU kernels deterministic."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    torch.use_deterministic_algorithms(True, warn_only=True)
    if threads:
        torch.set_num_threads(threads)


def clip_loss(model, pixels, input_ids, attention_mask, targets: torch.Tensor | None = None,
              targets_t2i: torch.Tensor | None = None) -> torch.Tensor:
    """Symmetric InfoNCE loss. ``targets`` (B x B, rows summing to 1) handles several
    positives per row (two images with the same caption); by default the diagonal.
    ``targets_t2i`` (captions x images) where the positives are not symmetric; by default
    ``targets.T``."""
    img = F.normalize(pooled_features(model.get_image_features(pixel_values=pixels)), dim=-1)
    txt = F.normalize(pooled_features(model.get_text_features(input_ids=input_ids, attention_mask=attention_mask)), dim=-1)
    logits = model.logit_scale.exp() * img @ txt.T
    if targets is None:
        targets = torch.eye(len(img), device=img.device)
    return 0.5 * (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets.T if targets_t2i is None else targets_t2i))


def same_text_targets(texts: list[str]) -> torch.Tensor:
    """Soft targets for a batch where equal texts are all positives of each other."""
    ids = {t: i for i, t in enumerate(dict.fromkeys(texts))}
    k = torch.tensor([ids[t] for t in texts])
    eq = (k[:, None] == k[None, :]).float()
    return eq / eq.sum(1, keepdim=True)


def positive_targets(positive: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(image -> text, text -> image) targets from a boolean images x captions matrix of
    which caption truthfully describes which image: each row spreads its mass evenly over
    its positives."""
    pos = positive.float()
    return pos / pos.sum(1, keepdim=True), pos.T / pos.T.sum(1, keepdim=True)


def optimizer_step(opt, loss: torch.Tensor, where: str, epoch: int, history: list, unit: str = "epoch",
                   clip_norm: float | None = None) -> None:
    """One backward + update, refusing a non-finite loss: the error names the step
    (``where``), the epoch (0-based here, printed 1-based; ``unit`` names what it counts) and
    the last finite loss recorded (the last entry of ``history``: a number, or a dict with a
    ``loss`` key). ``clip_norm``: clip the gradients' global norm to this first."""
    if not torch.isfinite(loss):
        last = history[-1] if history else "none"
        last = last["loss"] if isinstance(last, dict) else last
        raise SGLoraError(f"{where}: loss is {loss.item()} at {unit} {epoch + 1}; last finite {unit} loss {last}")
    opt.zero_grad()
    loss.backward()
    if clip_norm is not None:
        torch.nn.utils.clip_grad_norm_([p for g in opt.param_groups for p in g["params"]], clip_norm)
    opt.step()
