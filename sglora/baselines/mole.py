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
:func:`sglora.evaluate.evaluate_method`.

Cost: E_i(x) = B_i (A_i x) has rank r, so LayerNorm statistics and the gate logits are
computed from the r-dimensional codes h_i = s A_i x (sums via column sums and the Gram
matrices B_i^T B_i) without materialising the N x d_out concatenation; the result is
exactly the formula above (the tests check it against the naive computation).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
import torch.nn as nn

from ..io import SGLoraError, Settings, atomic_path, save_safetensors, setting, write_json
from ..lora import Layout

LN_EPS = 1e-5  #: LayerNorm epsilon (torch's default)


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
    keys = ("ln_weight", "ln_bias", "proj_weight", "proj_bias")
    return {f"{name}.{k}": getattr(mod, k).detach().float().cpu().contiguous() for name, mod in modules.items() for k in keys}


def load_gate_state(modules: dict[str, MoLELinear], state: dict[str, torch.Tensor], where: str = "") -> None:
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
    from ..backbone import clip_loss

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


# --- training -----------------------------------------------------------------------


def _task_data(manifest, tasks, processor, limit: int, rng: np.random.Generator) -> dict:
    from ..backbone import tokenize
    from ..expert import task_pairs

    data, first = {}, 0
    for task in tasks:
        paths, captions = task_pairs(manifest, task, "train")
        if limit and len(paths) > limit:
            keep = np.sort(rng.choice(len(paths), size=limit, replace=False))
            paths, captions = [paths[i] for i in keep], [captions[i] for i in keep]
        flat = [c for caps in captions for c in caps]
        data[task] = {"paths": paths, "flat": flat, "start": np.cumsum([0] + [len(c) for c in captions[:-1]]),
                      "count": np.array([len(c) for c in captions]), "enc": tokenize(processor, flat),
                      "first": first}  # index of the task's first image among all tasks' images
        first += len(paths)
    return data


class _Stream:
    """Every task's training images in one DataLoader; :meth:`run` yields each planned
    batch with its pixels normalised on the device."""

    def __init__(self, data: dict, processor, cache, workers: int, device):
        from ..images import ImageCache, Normalize, Schedule, TaskImages, loader

        paths = [p for d in data.values() for p in d["paths"]]
        images = TaskImages(paths, processor, ImageCache.open(cache, processor) if cache else None)
        self.normalize, self.schedule, self.device = Normalize(processor), Schedule(), device
        self.loader = loader(images, self.schedule, workers, pin_memory=device.type == "cuda")

    def run(self, plan: list[tuple[str, list[int]]], data: dict):
        self.schedule.batches = [[data[task]["first"] + i for i in idx] for task, idx in plan]
        for (task, idx), raw in zip(plan, self.loader):
            yield task, idx, self.normalize(raw, self.device)


def _batch(d: dict, idx: list[int], caption: list[int], pixels: torch.Tensor, device):
    from ..backbone import same_text_targets

    cap = [int(d["start"][i] + caption[k] % d["count"][i]) for k, i in enumerate(idx)]
    targets = same_text_targets([d["flat"][c] for c in cap]).to(device)
    return pixels, d["enc"]["input_ids"][cap].to(device), d["enc"]["attention_mask"][cap].to(device), targets


@torch.no_grad()
def _probe(model, modules, data, stream: _Stream, spec: MoLESpec, device, autocast: bool) -> dict:
    """Mean losses over fixed batches: the first probe_pairs images of each task, each
    with its k-th caption, for every k (the expectation over the caption choice)."""
    tot = con = bal = 0.0
    n = 0
    plan, ks = [], []
    for task, d in data.items():
        m = min(len(d["paths"]), spec.probe_pairs)
        for k in range(int(d["count"][:m].max())):
            for i in range(0, m, spec.batch_size):
                plan.append((task, list(range(i, min(i + spec.batch_size, m)))))
                ks.append(k)
    for k, (task, idx, pixels) in zip(ks, stream.run(plan, data)):
        batch = _batch(data[task], idx, [k] * len(idx), pixels, device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            t, c, b = mole_loss(model, modules, *batch, spec.balance_weight)
        tot, con, bal = tot + t.item() * len(idx), con + c.item() * len(idx), bal + b.item() * len(idx)
        n += len(idx)
    n = max(n, 1)
    return {"loss": tot / n, "contrastive": con / n, "balance": bal / n}


def train_mole(backbone: str, manifest: str | Path, tasks: list[str], repository: str | Path, out_dir: str | Path,
               spec: MoLESpec, threads: int | None = None, progress: bool = True, cache: str | Path | None = None) -> dict:
    """Train MoLE's gates over all experts of ``repository`` on the union of ``tasks``'
    training pairs (the seen tasks), batches drawn within one task, and save them.

    Writes ``out_dir`` atomically: ``gates.safetensors`` (the gate weights),
    ``experts.safetensors`` (tensor ``experts``: the N x D expert vectors mu_k in the order of
    ``config.json``'s ``experts``, layout in the metadata) and ``config.json`` (spec, experts,
    scaling, backbone, loss history). Images stream from the image cache ``cache``
    (decoded on the fly without one) through a DataLoader with ``threads`` workers."""
    from tqdm import tqdm

    from ..backbone import load_clip, optimizer_step, pick_device, seed_everything
    from ..repository import Repository

    if not tasks:
        raise SGLoraError("train-mole: the list of training tasks is empty")
    seed_everything(spec.seed, threads)
    device = pick_device(spec.device)
    repo = Repository(repository)
    experts = repo.experts()
    model, processor = load_clip(backbone, device="cpu")
    model.requires_grad_(False)
    modules = attach_mole(model, experts.mu, repo.layout, repo.lora.scaling, spec.temperature)
    model.to(device).eval()  # eval: no dropout in the frozen backbone
    params = [p for mod in modules.values() for p in mod.gate_parameters()]
    rng = np.random.default_rng(spec.seed)
    data = _task_data(manifest, tasks, processor, spec.pairs_per_task, rng)
    autocast = device.type == "cuda" and spec.bf16
    stream = _Stream(data, processor, cache, threads or 0, device)
    before = _probe(model, modules, data, stream, spec, device, autocast) if spec.probe_pairs else None
    opt = torch.optim.Adam(params, lr=spec.lr)
    history = []
    bar = tqdm(range(spec.epochs), desc="mole", disable=not progress)
    for epoch in bar:
        batches = []
        for task, d in data.items():
            order = rng.permutation(len(d["paths"]))
            batches += [(task, order[i : i + spec.batch_size].tolist()) for i in range(0, len(order), spec.batch_size)]
        sums = np.zeros(3)
        n = 0
        plan = [batches[j] for j in rng.permutation(len(batches))]
        for task, idx, pixels in stream.run(plan, data):
            d = data[task]
            caption = rng.integers(0, 1 << 30, len(idx)).tolist()
            batch = _batch(d, idx, caption, pixels, device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
                total, con, bal = mole_loss(model, modules, *batch, spec.balance_weight)
            optimizer_step(opt, total, "mole", epoch, history)
            sums += [total.item() * len(idx), con.item() * len(idx), bal.item() * len(idx)]
            n += len(idx)
        history.append({"epoch": epoch + 1, "loss": float(sums[0] / n), "contrastive": float(sums[1] / n),
                        "balance": float(sums[2] / n)})
        bar.set_postfix(loss=f"{history[-1]['loss']:.3f}")
    after = _probe(model, modules, data, stream, spec, device, autocast) if spec.probe_pairs else None
    info = {"experts": experts.tasks, "tasks": list(tasks), "pairs": {t: len(d["paths"]) for t, d in data.items()},
            "scaling": repo.lora.scaling, "lora": asdict(repo.lora), "backbone": backbone, "repository": str(repository),
            "modules": list(modules), "mole": asdict(spec), "history": history, "probe_before": before,
            "probe_after": after}
    save_mole(out_dir, modules, experts.mu, repo.layout, info)
    return info


def save_mole(out_dir: str | Path, modules: dict[str, MoLELinear], vectors: np.ndarray, layout: Layout,
              info: dict) -> Path:
    with atomic_path(out_dir, directory=True) as tmp:
        save_safetensors(tmp / "gates.safetensors", gate_state(modules))
        save_safetensors(tmp / "experts.safetensors", {"experts": np.asarray(vectors, dtype=np.float32)},
                         {"layout": layout.to_json(), "experts": json.dumps(info["experts"])})
        write_json(tmp / "config.json", info)
    return Path(out_dir)


def load_mole(mole_dir: str | Path) -> tuple[dict[str, torch.Tensor], np.ndarray, Layout, dict]:
    """``(gate state, expert vectors N x D, layout, config)`` of a trained MoLE folder."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    mole_dir = Path(mole_dir)
    paths = [mole_dir / n for n in ("config.json", "gates.safetensors", "experts.safetensors")]
    missing = [p.name for p in paths if not p.exists()]
    if missing:
        raise SGLoraError(f"{mole_dir}: not a trained MoLE (missing {missing})")
    cfg = json.loads(paths[0].read_text())
    with safe_open(str(paths[2]), "np") as f:
        vectors, layout = f.get_tensor("experts"), Layout.from_json(f.metadata()["layout"])
    return load_file(str(paths[1])), vectors, layout, cfg


def mole_model(backbone: str, mole_dir: str | Path, device: str = "cpu"):
    """``(model, processor, modules, config)``: the backbone with the trained gated modules."""
    from ..backbone import load_clip

    state, vectors, layout, cfg = load_mole(mole_dir)
    model, processor = load_clip(backbone, device="cpu")
    model.requires_grad_(False)
    modules = attach_mole(model, vectors, layout, cfg["scaling"], cfg["mole"]["temperature"])
    load_gate_state(modules, state, str(Path(mole_dir) / "gates.safetensors"))
    return model.to(device).eval(), processor, modules, cfg


def evaluate_mole(backbone: str, manifest: str | Path, tasks: list[str], mole_dir: str | Path, out_dir: str | Path,
                  group: str = "", threads: int | None = None, device: str = "auto",
                  cache: str | Path | None = None, gallery: int = 0) -> dict:
    """Write ``out_dir/<task>.json`` for each task, as :func:`sglora.evaluate.evaluate_method`
    does (method ``mole``, n = 1), with the gated modules in place (a MoLE is not mergeable).
    ``info`` holds the experts and the mean gate of each over the task's image tokens.
    ``device``: "auto" = CUDA when available; ``cache``: the dataset's image cache."""
    from tqdm import tqdm

    from ..evaluate import load_task, score_queries, summarize

    if threads:
        torch.set_num_threads(threads)
    from ..backbone import pick_device

    model, processor, modules, cfg = mole_model(backbone, mole_dir, pick_device(device))
    vision = [m for n, m in modules.items() if n.startswith("vision_model.")]
    results = {}
    for task in tqdm(tasks, desc=f"evaluate[{group}/mole]"):
        data = load_task(manifest, task, processor, cache=cache, workers=threads or 0, gallery=gallery)
        for m in vision:
            m.record, m.gate_sum, m.gate_count = True, torch.zeros(m.n, dtype=torch.float64), 0.0
        try:
            queries = score_queries(model, processor, data)
        finally:
            for m in vision:
                m.record = False
        info = {"experts": cfg["experts"], "trained_on": cfg["tasks"], "kind": "gated mixture of expert LoRAs (not merged)"}
        if vision:
            gate = sum(m.gate_sum for m in vision) / max(sum(m.gate_count for m in vision), 1.0)
            info["mean_gate_image"] = dict(zip(cfg["experts"], [round(float(x), 6) for x in gate]))
        res = {"method": "mole", "group": group, "task": task, "kind": data.kind, **summarize([queries]), "info": info}
        write_json(Path(out_dir) / f"{task}.json", res, flat_int_lists=True)
        results[task] = res["mean"]
    return results


__all__ = ["MoLESpec", "MoLELinear", "attach_mole", "detach_mole", "balance_loss", "mole_loss", "train_mole",
           "save_mole", "load_mole", "mole_model", "evaluate_mole", "expert_factors"]
