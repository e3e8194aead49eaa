"""MoLE: Mixture of LoRA Experts (Wu, Huang, Wei, ICLR 2024), the learned-gate baseline.

Every LoRA-targeted Linear of the backbone (q/k/v of every block of the towers in the
layout) becomes a :class:`MoLELinear` holding the N expert LoRAs (each expert's mean
snapshot mu_k, cut into A_i, B_i by the layout) and one gate:

    E_i(x)  = s * B_i A_i x                                   expert outputs (s = alpha / rank)
    eps(x)  = W_g Flatten(LayerNorm(Concat(E_1(x), ..., E_N(x)))) + b_g      N logits
    g(x)    = softmax(eps(x) / tau)                           token-wise gate
    y       = W x + sum_i g_i(x) E_i(x)

Only the gates (LayerNorm affine + the linear map, per module) train; the backbone and
the expert LoRAs are frozen. The objective is the symmetric contrastive loss plus MoLE's
gating-balance loss ``-log prod_i q_i`` where q_i is expert i's gate value averaged over
every gate (module) and every (non-padding) token of the step.

The gate makes the update input-dependent, so a trained MoLE *cannot be merged* into the
weights the way every other method's LoRA is: it is evaluated with the gated modules in
place (:func:`evaluate_mole`), writing the same per-task JSON as
:func:`sglora.evaluation.scoring.evaluate_method`.

Cost: E_i(x) = B_i (A_i x) has rank r, so LayerNorm statistics and the gate logits are
computed from the r-dimensional codes h_i = s A_i x (sums via column sums and the Gram
matrices B_i^T B_i) without materialising the N x d_out concatenation; the result is
exactly the formula above (the tests check it against the naive computation).

Modules: :mod:`.config` (``MoLESpec``), :mod:`.layer` (the gated module, attaching it,
the losses), :mod:`.model` (the gate files, the backbone with the gates in place),
:mod:`.train` (``train_mole``), :mod:`.evaluate` (``evaluate_mole``).
"""

from .config import MoLESpec
from .evaluate import evaluate_mole
from .layer import MoLELinear, attach_mole, balance_loss, detach_mole, expert_factors, mole_loss
from .model import load_mole, mole_model, save_mole
from .train import train_mole

__all__ = ["MoLESpec", "MoLELinear", "attach_mole", "detach_mole", "balance_loss", "mole_loss", "train_mole",
           "save_mole", "load_mole", "mole_model", "evaluate_mole", "expert_factors"]
