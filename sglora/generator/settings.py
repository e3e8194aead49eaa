"""The settings of SG-LoRA's generator, one dataclass per config section: ``prior`` (how the
semantic prior aggregates experts), ``cvae`` (the CVAE's sizes and training) and ``sampling``
(how LoRAs are drawn). Plain dataclasses without torch, so a step that only reads them stays
light."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import ClassVar

from ..io import Settings, setting


@dataclass
class PriorSpec(Settings):
    """How the semantic prior aggregates experts (config section ``prior``)."""

    section: ClassVar[str] = "prior"

    k: int = setting(4, "top-K experts (paper: 4)", min=1)
    tau: float = setting(0.05, "softmax temperature on cosine similarities", above=0)
    modality: str = setting("textual", '"textual" (description) or "visual" (mean image embedding), supp. Table 9',
                            choices=("textual", "visual"))


@dataclass
class CVAESpec(Settings):
    """Sizes and training settings of the CVAE (config section ``cvae``)."""

    section: ClassVar[str] = "cvae"

    latent: int = setting(32, "size of z", min=1)
    hidden: int = setting(512, "width of the hidden layers", min=1)
    cond_dim: int = setting(256, "size of the condition embedding of (mu*, sigma*)", min=1)
    kl_weight: float = setting(1.0, "lambda in Eq. 8 (paper: 1)", min=0)
    residual: bool = setting(True, "decoder predicts X - mu* (True) or X (False)")
    normalization: str = setting("standardize", '"standardize" per coordinate, or "none"',
                                 choices=("standardize", "none"))
    condition: str = setting("loo", 'a training snapshot\'s condition: "loo" (aggregator over the other experts), '
                             '"all", "self"', choices=("loo", "all", "self"))
    epochs: int = setting(300, "passes over all snapshots", min=1)
    lr: float = setting(1e-3, "Adam learning rate", above=0)
    batch_size: int = setting(64, "snapshots per step", min=1)
    augment: int = setting(0, "extra conditions per expert from random subsets of the other experts and random "
                           "K, tau (0 = the paper's one condition per expert)", min=0)
    describe: bool = setting(False, "the description embedding d is part of the condition (c = (mu*, sigma*, d))")
    seed: int = setting(0, "initialisation and data order")
    device: str = setting("auto", '"auto" = cuda if available else cpu')


@dataclass
class SamplingSpec(Settings):
    """How SG-LoRA draws its LoRAs for a task (config section ``sampling``)."""

    section: ClassVar[str] = "sampling"

    samples: int = setting(10, "N samples per task and run (Figure 10 shows 50)", min=1)
    seed: int = setting(0, "base sampling seed (a task's seed derives from it and the task id)")
    temperature: float = setting(1.0, "scale of the latent noise; 0 = the decoded mean of p(z | c)", min=0)
    average: bool = setting(False, "a task's candidate is the mean of the N decoded samples (one LoRA per run)")
    runs: int = setting(1, "independent CVAE trainings (seeds cvae.seed, cvae.seed + 1, ...), each sampled", min=1)


__all__ = ["PriorSpec", "CVAESpec", "SamplingSpec"]


def default(cls, name: str):
    """The default of the setting ``name`` of the settings dataclass ``cls``."""
    return next(f.default for f in fields(cls) if f.name == name)


#: SG-LoRA's generator variants: setting -> (its config section, its "off" value). The
#: paper's generator has every one off; a variant is a grid axis only when it is on or varied.
VARIANTS = {
    "augment": ("cvae", default(CVAESpec, "augment")),
    "describe": ("cvae", default(CVAESpec, "describe")),
    "average": ("sampling", default(SamplingSpec, "average")),
}
#: the variants that need a CVAE of their own, and their "off" values (a CVAE's config.json omits them when off)
CVAE_VARIANT_OFF = {key: off for key, (section, off) in VARIANTS.items() if section == CVAESpec.section}
