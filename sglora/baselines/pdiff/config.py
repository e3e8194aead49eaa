"""Sizes and training settings of P-diff / COND P-Diff (config section ``pdiff``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ...io import SGLoraError, Settings, setting


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
