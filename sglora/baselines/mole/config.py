"""How the MoLE gates are trained (config section ``mole``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ...io import SGLoraError, Settings, setting


@dataclass
class MoLESpec(Settings):
    """How the MoLE gates are trained (config section ``mole``)."""

    section: ClassVar[str] = "mole"

    epochs: int = setting(10, "passes over the union of the seen tasks' training pairs", min=1)
    lr: float = setting(1e-3, "Adam learning rate of the gates", above=0)
    batch_size: int = setting(32, "image-caption pairs per step; every batch comes from one task", min=1)
    temperature: float = setting(1.0, "tau of the gate softmax", above=0)
    balance_weight: float = setting(0.1, "weight of the gating-balance loss -log prod_i q_i", min=0)
    pairs_per_task: int = setting(0, "cap on training pairs per task (seeded subset); 0 = all", min=0)
    probe_pairs: int = setting(64, "images per task on which the loss (with each of their captions) is measured "
                               "before and after training", min=0)
    seed: int = setting(0, "data order, caption choice, pair subsets")
    device: str = setting("auto", '"auto" = cuda if available else cpu')
    bf16: bool = setting(True, "autocast the backbone to bfloat16 on a GPU (gates stay float32)")
