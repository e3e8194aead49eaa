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
file is written with :func:`sglora.generator.candidates.save_candidates` like every other method's.

Modules: :mod:`.config` (``PDiffSpec``), :mod:`.layer` (the DDPM and the networks),
:mod:`.model` (the model, its files and COND P-Diff's conditions), :mod:`.train`
(``fit_pdiff``, ``train_pdiff``), :mod:`.sample` (``sample_pdiff``).
"""

from .config import PDiffSpec
from .layer import Denoiser, Diffusion, ParamAutoencoder, timestep_embedding
from .model import PDiff, condition_vector, load_pdiff, save_pdiff
from .sample import sample_pdiff
from .train import fit_pdiff, train_pdiff

__all__ = ["PDiffSpec", "Diffusion", "timestep_embedding", "ParamAutoencoder", "Denoiser", "PDiff", "condition_vector",
           "fit_pdiff", "train_pdiff", "save_pdiff", "load_pdiff", "sample_pdiff"]
