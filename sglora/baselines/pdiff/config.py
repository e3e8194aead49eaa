"""Sizes and training settings of P-diff / COND P-Diff (config section ``pdiff``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from ...io import SGLoraError, from_section


@dataclass
class PDiffSpec:
    """Sizes and training settings of P-diff / COND P-Diff."""

    autoencoder: str = "mlp"  #: "mlp", or "conv" (p-diff's 1-D conv encoder/decoder; slower to fit LoRA vectors, see docs)
    latent: int = 64  #: size of the latent the diffusion runs in
    channels: list[int] = field(default_factory=lambda: [16, 32, 32, 8])  #: conv AE: channels of the stride-2 conv layers
    kernel_size: int = 7  #: conv AE: kernel width (odd)
    ae_hidden: int = 512  #: mlp AE: hidden width
    input_noise: float = 0.001  #: std of the noise added to the (standardised) encoder input (p-diff: 0.001)
    latent_noise: float = 0.1  #: std of the noise added to the latent before decoding (p-diff: 0.1)
    ae_epochs: int = 1000  #: autoencoder passes over the training snapshots
    ae_lr: float = 1e-3  #: autoencoder Adam learning rate
    denoiser_hidden: int = 512  #: width of the MLP denoiser
    denoiser_blocks: int = 3  #: residual blocks of the MLP denoiser
    time_dim: int = 128  #: size of the sinusoidal timestep embedding
    diffusion_epochs: int = 2000  #: denoiser passes over the training latents
    lr: float = 1e-3  #: denoiser Adam learning rate
    batch_size: int = 64  #: snapshots (latents) per step
    T: int = 1000  #: diffusion steps, for training and for (full ancestral) sampling
    beta_start: float = 1e-4  #: linear beta schedule start (DDPM / p-diff)
    beta_end: float = 2e-2  #: linear beta schedule end
    cfg_dropout: float = 0.0  #: COND P-Diff: probability of dropping the condition in training (0 = no CFG)
    guidance: float = 1.0  #: COND P-Diff: CFG scale w, eps = eps_u + w (eps_c - eps_u); 1 = plain conditional
    samples: int = 10  #: N LoRAs sampled per task
    seed: int = 0  #: initialisation, data order, noise; sampling seeds derive from it per task
    device: str = "auto"  #: "auto" = cuda if available else cpu

    @classmethod
    def from_dict(cls, d: dict | None) -> "PDiffSpec":
        spec = from_section(cls, d, "pdiff")
        if spec.autoencoder not in ("conv", "mlp"):
            raise SGLoraError(f"pdiff.autoencoder: {spec.autoencoder!r} is not 'conv' or 'mlp'")
        for key in ("latent", "ae_hidden", "ae_epochs", "denoiser_hidden", "diffusion_epochs", "batch_size", "T",
                    "samples", "time_dim"):
            if getattr(spec, key) < 1:
                raise SGLoraError(f"pdiff.{key} must be >= 1, got {getattr(spec, key)}")
        if spec.time_dim % 2:
            raise SGLoraError(f"pdiff.time_dim must be even, got {spec.time_dim}")
        if spec.autoencoder == "conv" and (not spec.channels or spec.kernel_size % 2 == 0 or min(spec.channels) < 1):
            raise SGLoraError(f"pdiff: the conv autoencoder needs channels >= 1 and an odd kernel_size; got "
                              f"{spec.channels}, {spec.kernel_size}")
        if not 0 < spec.beta_start < spec.beta_end < 1:
            raise SGLoraError(f"pdiff: need 0 < beta_start < beta_end < 1, got {spec.beta_start}, {spec.beta_end}")
        if not 0 <= spec.cfg_dropout < 1:
            raise SGLoraError(f"pdiff.cfg_dropout must be in [0, 1), got {spec.cfg_dropout}")
        if spec.guidance != 1.0 and spec.cfg_dropout == 0:
            raise SGLoraError("pdiff.guidance != 1 needs an unconditional model: set cfg_dropout > 0")
        return spec
