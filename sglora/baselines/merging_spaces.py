"""The space in which LoRAs are averaged: factors (the paper's) or products ΔW = s·B·A.

Averaging the factors A and B of K experts separately is not averaging their updates:
(Σ w_k B_k)(Σ w_k A_k) ≠ Σ w_k B_k A_k. The merging baselines can average in three spaces:

- ``factors``: the paper's flat [A, B] vector, averaged coordinate-wise (what
  ``sglora.baselines.merging`` does: the paper-faithful row);
- ``product``: the exact weighted average of the updates, as one adapter of rank K·r:
  Σ_k w_k B_k A_k = [w_1 B_1 … w_K B_K] · [A_1; …; A_K]. With the same scaling s = alpha / r
  of the run (a PEFT config of rank K·r and alpha K·alpha), s·B'A' = Σ w_k s·B_k A_k;
- ``product_svd``: the same average re-factorised to the run's rank r by truncated SVD
  (the best rank-r approximation of Σ w_k B_k A_k in Frobenius norm), so it has the
  experts' layout and size.

Each expert enters with its mean snapshot mu_k (its LoRA in the repository), as in the
factor space. Nothing here retrains anything.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from ..io import SGLoraError
from ..experts.lora import Layout, LoraSpec

SPACES = ("factors", "product", "product_svd")
#: the merging methods a space applies to (their weights over experts differ, nothing else)
MERGING = ("model_soups", "adaptersoup", "topk_weighted")


def factor_pairs(layout: Layout) -> list[tuple[str, int, int]]:
    """``(module, index of lora_A key, index of lora_B key)`` per target module, in layout order."""
    index = {k: i for i, k in enumerate(layout.keys)}
    out = []
    for mod in layout.modules():
        a, b = f"base_model.model.{mod}.lora_A.weight", f"base_model.model.{mod}.lora_B.weight"
        if a not in index or b not in index:
            raise SGLoraError(f"LoRA layout lacks the A or B factor of module {mod}")
        out.append((mod, index[a], index[b]))
    return out


def layout_rank(layout: Layout) -> int:
    """The rank of a layout's LoRA (rows of its A factors; one rank for every module)."""
    ranks = {layout.shapes[a][0] for _, a, _ in factor_pairs(layout)}
    if len(ranks) != 1:
        raise SGLoraError(f"LoRA layout has modules of different ranks {sorted(ranks)}")
    return ranks.pop()


def with_rank(layout: Layout, rank: int) -> Layout:
    """The same modules with factors of rank ``rank``: A (r, in) -> (rank, in), B (out, r) -> (out, rank)."""
    shapes = list(layout.shapes)
    for _, a, b in factor_pairs(layout):
        shapes[a] = (rank, shapes[a][1])
        shapes[b] = (shapes[b][0], rank)
    return Layout(list(layout.keys), shapes)


def adapter_spec(spec: LoraSpec, layout: Layout) -> LoraSpec:
    """The PEFT spec of an adapter with ``layout``'s rank and the run's scaling alpha / r
    (rank K·r: alpha K·alpha), so ``save_adapter`` writes a folder PEFT loads with the
    same update."""
    rank = layout_rank(layout)
    return replace(spec, rank=rank, alpha=spec.scaling * rank)


def _factors(vector: np.ndarray, layout: Layout) -> list[tuple[np.ndarray, np.ndarray]]:
    """``[(A, B)]`` per module of one vector, float64."""
    v = np.asarray(vector, np.float64)
    out = []
    for _, a, b in factor_pairs(layout):
        oa, ob = layout.offsets[a], layout.offsets[b]
        out.append((v[oa : oa + layout.sizes[a]].reshape(layout.shapes[a]),
                    v[ob : ob + layout.sizes[b]].reshape(layout.shapes[b])))
    return out


def _vector(factors: list[tuple[np.ndarray, np.ndarray]], layout: Layout) -> np.ndarray:
    out = np.zeros(layout.dim, np.float64)
    for (A, B), (_, a, b) in zip(factors, factor_pairs(layout)):
        out[layout.offsets[a] : layout.offsets[a] + A.size] = A.reshape(-1)
        out[layout.offsets[b] : layout.offsets[b] + B.size] = B.reshape(-1)
    return out.astype(np.float32)


def product_merge(vectors: np.ndarray, weights: np.ndarray, layout: Layout) -> tuple[np.ndarray, Layout]:
    """The exact weighted average of K LoRAs' updates as one LoRA of rank K·r:
    B' = [w_1 B_1 … w_K B_K], A' = [A_1; …; A_K]. Returns ``(vector, layout of rank K·r)``;
    its update at the run's scaling is Σ w_k s·B_k A_k."""
    vectors, weights = np.atleast_2d(vectors), np.asarray(weights, np.float64)
    if len(vectors) != len(weights) or len(weights) == 0:
        raise SGLoraError(f"product merge: {len(vectors)} LoRAs and {len(weights)} weights")
    per = [_factors(v, layout) for v in vectors]
    merged = []
    for m in range(len(per[0])):
        A = np.concatenate([p[m][0] for p in per], 0)
        B = np.concatenate([w * p[m][1] for w, p in zip(weights, per)], 1)
        merged.append((A, B))
    out_layout = with_rank(layout, layout_rank(layout) * len(weights))
    return _vector(merged, out_layout), out_layout


def svd_merge(vectors: np.ndarray, weights: np.ndarray, layout: Layout, rank: int | None = None) -> np.ndarray:
    """The weighted average of the updates Σ w_k B_k A_k, truncated to ``rank`` (default:
    the layout's r) by SVD and split evenly, B = U √S, A = √S Vᵀ; in ``layout`` (when rank = r)."""
    vectors, weights = np.atleast_2d(vectors), np.asarray(weights, np.float64)
    rank = rank or layout_rank(layout)
    per = [_factors(v, layout) for v in vectors]
    merged = []
    for m in range(len(per[0])):
        delta = sum(w * (p[m][1] @ p[m][0]) for w, p in zip(weights, per))
        U, S, Vt = np.linalg.svd(delta, full_matrices=False)
        root = np.sqrt(S[:rank])
        merged.append(((root[:, None] * Vt[:rank]), U[:, :rank] * root[None, :]))
    return _vector(merged, with_rank(layout, rank))


def pad_rank(vector: np.ndarray, layout: Layout, rank: int) -> tuple[np.ndarray, Layout]:
    """The same LoRA in a layout of a larger ``rank`` (zero rows of A, zero columns of B:
    the update is unchanged), so LoRAs of several ranks share one candidates file."""
    r = layout_rank(layout)
    if rank < r:
        raise SGLoraError(f"cannot pad a rank-{r} LoRA to rank {rank}")
    padded = []
    for A, B in _factors(vector, layout):
        A2, B2 = np.zeros((rank, A.shape[1])), np.zeros((B.shape[0], rank))
        A2[:r], B2[:, :r] = A, B
        padded.append((A2, B2))
    out_layout = with_rank(layout, rank)
    return _vector(padded, out_layout), out_layout


def merge_weights(method: str, experts, query: np.ndarray, modality: str, k: int, tau: float,
                  exclude_task: str | None = None) -> tuple[np.ndarray, np.ndarray, dict]:
    """The experts a merging method averages and their weights: ``(indices, weights, info)``.
    Model Soups: every expert, uniform; AdapterSoup: the top-K, uniform; Top-K LoRA
    Weighted: the top-K, alpha_k (the same choice of experts as ``baselines.merging.merge``)."""
    from ..generator.prior import expert_weights

    exclude = experts.tasks.index(exclude_task) if exclude_task in experts.tasks else None
    if method == "model_soups":
        keep = np.array([i for i in range(len(experts.tasks)) if i != exclude])
        return keep, np.full(len(keep), 1.0 / len(keep)), {"experts": [experts.tasks[i] for i in keep]}
    idx, sim, alpha = expert_weights(query, experts.embedding(modality), k, tau, exclude)
    info = {"experts": [experts.tasks[i] for i in idx], "alpha": alpha.tolist(), "similarity": sim.tolist()}
    if method == "adaptersoup":
        return idx, np.full(len(idx), 1.0 / len(idx)), info
    if method == "topk_weighted":
        return idx, alpha, info
    raise SGLoraError(f"unknown merging method {method!r}; expected one of {MERGING}")


def merge_in_space(method: str, space: str, experts, layout: Layout, query: np.ndarray, modality: str, k: int,
                   tau: float, exclude_task: str | None = None) -> tuple[np.ndarray, Layout, dict]:
    """One merged LoRA of a merging method in ``space``: ``(vector, its layout, info)``.
    ``factors`` is exactly ``baselines.merging.merge``."""
    if space not in SPACES:
        raise SGLoraError(f"space {space!r} is not one of {SPACES}")
    if space == "factors":
        from .merging import merge

        v, info = merge(method, experts, query, modality, k, tau, exclude_task=exclude_task)
        return v, layout, info | {"space": space}
    idx, w, info = merge_weights(method, experts, query, modality, k, tau, exclude_task)
    info["space"] = space
    if space == "product":
        v, lay = product_merge(experts.mu[idx], w, layout)
        return v, lay, info
    return svd_merge(experts.mu[idx], w, layout), layout, info


def space_candidates(method: str, space: str, tasks: list[str], experts, layout: Layout, embeddings: dict[str, dict],
                     prior, seen: bool = False) -> tuple[dict[str, np.ndarray], Layout, dict[str, dict]]:
    """A merging method's LoRA for each task in ``space``: ``({task: 1 x D'}, layout, info)``;
    LoRAs of different ranks (product space) are zero-padded to the largest."""
    key = "text_embedding" if prior.modality == "textual" else "visual_embedding"
    out, layouts, info = {}, {}, {}
    for t in tasks:
        if t not in embeddings:
            raise SGLoraError(f"no task embedding for {t!r} (is it in the task embedding table's dataset?)")
        v, lay, i = merge_in_space(method, space, experts, layout, embeddings[t][key], prior.modality, prior.k,
                                   prior.tau, exclude_task=t if seen else None)
        out[t], layouts[t], info[t] = v, lay, i
    rank = max(layout_rank(lay) for lay in layouts.values())
    final = with_rank(layout, rank)
    for t in tasks:
        if layout_rank(layouts[t]) != rank:
            out[t], _ = pad_rank(out[t], layouts[t], rank)
        out[t] = out[t][None]
    return out, final, info
