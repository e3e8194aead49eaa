"""How the MoLE gates are trained (config section ``mole``)."""

from __future__ import annotations

from dataclasses import dataclass

from ...io import SGLoraError, from_section


@dataclass
class MoLESpec:
    """How the MoLE gates are trained."""

    epochs: int = 10  #: passes over the union of the seen tasks' training pairs
    lr: float = 1e-3  #: Adam learning rate of the gates
    batch_size: int = 32  #: image-caption pairs per step; every batch comes from one task
    temperature: float = 1.0  #: tau of the gate softmax
    balance_weight: float = 0.1  #: weight of the gating-balance loss -log prod_i q_i
    pairs_per_task: int = 0  #: cap on training pairs per task (seeded subset); 0 = all
    probe_pairs: int = 64  #: images per task on which the loss (with each of their captions) is measured before and after training
    seed: int = 0  #: data order, caption choice, pair subsets
    device: str = "auto"  #: "auto" = cuda if available else cpu
    bf16: bool = True  #: autocast the backbone to bfloat16 on a GPU (gates stay float32)

    @classmethod
    def from_dict(cls, d: dict | None) -> "MoLESpec":
        spec = from_section(cls, d, "mole")
        if spec.epochs < 1 or spec.batch_size < 1:
            raise SGLoraError(f"mole: epochs and batch_size must be >= 1, got {spec.epochs}, {spec.batch_size}")
        if spec.temperature <= 0 or spec.balance_weight < 0 or spec.lr <= 0:
            raise SGLoraError(f"mole: need temperature > 0, balance_weight >= 0, lr > 0; got {spec}")
        if spec.pairs_per_task < 0 or spec.probe_pairs < 0:
            raise SGLoraError("mole: pairs_per_task and probe_pairs must be >= 0")
        return spec
