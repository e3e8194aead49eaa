"""MoLE's gated module (:class:`MoLELinear`), attaching it to a backbone, and the
training losses (contrastive + gating balance)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn

from ...io import SGLoraError
from ...experts.lora import Layout
from ...backbone.contrastive import clip_loss


LN_EPS = 1e-5  #: LayerNorm epsilon (torch's default)


class MoLELinear(nn.Module):
    """A frozen Linear plus N frozen LoRA experts mixed by a trainable token-wise gate."""

    def __init__(self, base: nn.Linear, a: torch.Tensor, b: torch.Tensor, scaling: float, temperature: float = 1.0):
        super().__init__()
        n, r, d_in = a.shape
        d_out = b.shape[1]
        if b.shape != (n, d_out, r) or d_in != base.in_features or d_out != base.out_features:
            raise SGLoraError(f"MoLE: expert factors A {tuple(a.shape)}, B {tuple(b.shape)} do not fit "
                              f"Linear({base.in_features}, {base.out_features})")
        self.base = base
        self.n, self.rank, self.d_out = n, r, d_out
        self.scaling, self.temperature = float(scaling), float(temperature)
        self.register_buffer("lora_a", a.detach().float().clone())  # N x r x d_in
        self.register_buffer("lora_b", b.detach().float().clone())  # N x d_out x r
        # the gate: LayerNorm over the N*d_out concatenation, then a linear map to N logits;
        # the linear map starts at zero, so an untrained MoLE mixes the experts uniformly
        self.ln_weight = nn.Parameter(torch.ones(n * d_out))
        self.ln_bias = nn.Parameter(torch.zeros(n * d_out))
        self.proj_weight = nn.Parameter(torch.zeros(n, n * d_out))
        self.proj_bias = nn.Parameter(torch.zeros(n))
        self.token_mask: torch.Tensor | None = None  #: (batch, tokens) mask for the next forward (text padding)
        self.track = False  #: keep each forward's mean gate (with grad) for the balance loss
        self.record = False  #: accumulate gate sums (no grad) for reports
        self.tracked: list[torch.Tensor] = []
        self.gate_sum = torch.zeros(n, dtype=torch.float64)
        self.gate_count = 0.0

    def gate_parameters(self) -> list[nn.Parameter]:
        """The gate's trainable parameters (layer norm and projection)."""
        return [self.ln_weight, self.ln_bias, self.proj_weight, self.proj_bias]

    def codes(self, x: torch.Tensor) -> torch.Tensor:
        """h_i = s A_i x for every expert: (..., N, r); E_i(x) = B_i h_i."""
        return self.scaling * torch.einsum("...i,nri->...nr", x.float(), self.lora_a)

    def expert_outputs(self, x: torch.Tensor) -> torch.Tensor:
        """E_i(x) = s B_i A_i x, materialised: (..., N, d_out). For checks and small models."""
        return torch.einsum("...nr,nor->...no", self.codes(x), self.lora_b)

    def logits_from_codes(self, h: torch.Tensor) -> torch.Tensor:
        """W_g LayerNorm(Concat_i B_i h_i) + b_g, without materialising the concatenation."""
        k = self.n * self.d_out
        b = self.lora_b
        mean = torch.einsum("...nr,nr->...", h, b.sum(1)) / k
        sq = torch.einsum("...nr,nrs,...ns->...", h, b.transpose(1, 2) @ b, h) / k
        inv = torch.rsqrt((sq - mean * mean).clamp_min(0) + LN_EPS)
        wg = (self.proj_weight * self.ln_weight).view(self.n, self.n, self.d_out)  # logit x expert x out
        proj = torch.einsum("jno,nor->jnr", wg, b)
        lin = torch.einsum("...nr,jnr->...j", h, proj)
        return (lin - mean[..., None] * wg.sum((1, 2))) * inv[..., None] + self.proj_weight @ self.ln_bias + self.proj_bias

    def gates(self, x: torch.Tensor) -> torch.Tensor:
        """g(x): (..., N), each token's expert weights (sum to 1)."""
        return torch.softmax(self.logits_from_codes(self.codes(x)) / self.temperature, -1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The frozen layer's output plus the gated mix of the experts' LoRA updates."""
        y = self.base(x)
        with torch.autocast(x.device.type, enabled=False):
            h = self.codes(x)
            g = torch.softmax(self.logits_from_codes(h) / self.temperature, -1)
            self._observe(g)
            mix = torch.einsum("...nr,nor->...o", g[..., None] * h, self.lora_b)
        return y + mix.to(y.dtype)

    def _observe(self, g: torch.Tensor) -> None:
        if not (self.track or self.record):
            return
        flat = g.reshape(-1, self.n)
        mask = self.token_mask
        if mask is not None and mask.numel() == flat.shape[0]:
            w = mask.reshape(-1, 1).to(flat.dtype)
            total, count = (flat * w).sum(0), w.sum()
        else:
            total, count = flat.sum(0), torch.tensor(float(flat.shape[0]), device=flat.device)
        if self.track:
            self.tracked.append(total / count.clamp_min(1))
        if self.record:
            self.gate_sum += total.detach().double().cpu()
            self.gate_count += float(count)


def expert_factors(vectors: np.ndarray, layout: Layout) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """``{module: (A, B)}``, each module's factors stacked over N expert vectors:
    A (N, r, in), B (N, out, r)."""
    states = [layout.to_state(v) for v in np.atleast_2d(vectors)]
    return {m: (torch.stack([s[f"base_model.model.{m}.lora_A.weight"] for s in states]),
                torch.stack([s[f"base_model.model.{m}.lora_B.weight"] for s in states])) for m in layout.modules()}


def attach_mole(model, vectors: np.ndarray, layout: Layout, scaling: float,
                temperature: float = 1.0) -> dict[str, MoLELinear]:
    """Replace every layout module of a bare CLIPModel by a :class:`MoLELinear` over the
    expert vectors (N x D); returns ``{module name: MoLELinear}`` in layout order."""
    factors = expert_factors(vectors, layout)
    modules = {}
    for name in layout.modules():
        parent_name, _, child = name.rpartition(".")
        try:
            parent = model.get_submodule(parent_name)
            base = getattr(parent, child)
        except AttributeError as err:
            raise SGLoraError(f"MoLE: module {name!r} of the LoRA layout is not in the backbone") from err
        if isinstance(base, MoLELinear):
            raise SGLoraError(f"MoLE: module {name!r} is already gated")
        if not isinstance(base, nn.Linear):
            raise SGLoraError(f"MoLE: module {name!r} is a {type(base).__name__}, not a Linear")
        a, b = factors[name]
        dev = base.weight.device
        mod = MoLELinear(base, a.to(dev), b.to(dev), scaling, temperature).to(dev)
        setattr(parent, child, mod)
        modules[name] = mod
    return modules


def detach_mole(model, modules: dict[str, MoLELinear]) -> None:
    """Put the plain Linears back."""
    for name, mod in modules.items():
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child, mod.base)


def balance_loss(modules: dict[str, MoLELinear]) -> torch.Tensor:
    """MoLE's gating-balance loss -log prod_i q_i = -sum_i log q_i, q_i the gate value of
    expert i averaged over every tracked forward of every module; clears the tracks."""
    means = [m for mod in modules.values() for m in mod.tracked]
    for mod in modules.values():
        mod.tracked = []
    if not means:
        raise SGLoraError("MoLE: no gate was tracked in this step")
    q = torch.stack(means).mean(0)
    return -torch.log(q.clamp_min(1e-12)).sum()


def gate_state(modules: dict[str, MoLELinear]) -> dict[str, torch.Tensor]:
    """The gates' weights of every MoLE layer, as a flat tensor dict for safetensors."""
    keys = ("ln_weight", "ln_bias", "proj_weight", "proj_bias")
    return {f"{name}.{k}": getattr(mod, k).detach().float().cpu().contiguous() for name, mod in modules.items() for k in keys}


def load_gate_state(modules: dict[str, MoLELinear], state: dict[str, torch.Tensor], where: str = "") -> None:
    """Load :func:`gate_state` weights into the MoLE layers; a missing key is an error naming ``where``."""
    with torch.no_grad():
        for name, mod in modules.items():
            for k in ("ln_weight", "ln_bias", "proj_weight", "proj_bias"):
                key = f"{name}.{k}"
                if key not in state:
                    raise SGLoraError(f"{where}: gate weights lack {key!r}")
                p = getattr(mod, k)
                if tuple(state[key].shape) != tuple(p.shape):
                    raise SGLoraError(f"{where}: gate {key!r} has shape {tuple(state[key].shape)}; expected {tuple(p.shape)}")
                p.copy_(state[key].to(p.device))


def _set_token_masks(modules: dict[str, MoLELinear], text_mask: torch.Tensor | None) -> None:
    for name, mod in modules.items():
        mod.token_mask = text_mask if name.startswith("text_model.") else None


def mole_loss(model, modules, pixels, input_ids, attention_mask, targets, balance_weight: float):
    """(total, contrastive, balance) of one batch with the gated model."""
    for mod in modules.values():
        mod.track = True
    _set_token_masks(modules, attention_mask)
    try:
        contrastive = clip_loss(model, pixels, input_ids, attention_mask, targets)
        balance = balance_loss(modules)
    finally:
        _set_token_masks(modules, None)
        for mod in modules.values():
            mod.track, mod.tracked = False, []
    return contrastive + balance_weight * balance, contrastive, balance
