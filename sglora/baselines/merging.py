"""The merging baselines. All three average LoRA *factors* (A and B separately, as the
paper represents LoRAs), exactly like SG-LoRA's prior mean, so every method lives in the
same parameter space:

- Model Soups: the uniform average of all experts' mean snapshots mu_k;
- AdapterSoup: the top-K experts most similar to the task, equal weights;
- Top-K LoRA Weighted: the top-K experts weighted by alpha_k, i.e. mu* itself;
- Nearest expert: the description-nearest expert's LoRA mu_k alone (Top-K with K = 1,
  fixed: nothing is selected), the comparison SG-LoRA must win whatever the selection picks;
- Expert mean: the uniform average of all experts' *final* snapshots (the last epoch's
  factors, i.e. each expert's adapter), one LoRA for every task: no description is used.
"""

from __future__ import annotations

import numpy as np

from ..io import SGLoraError
from ..methods import methods_where
from ..generator.prior import semantic_prior
from ..experts.repository import ExpertTable, Repository

MERGING = tuple(methods_where(kind="merging"))
#: the merging methods that read each expert's final snapshot from the repository (not mu_k)
FINAL_SNAPSHOT = ("expert_mean",)


def merge(method: str, experts: ExpertTable, query: np.ndarray, modality: str, k: int, tau: float,
          exclude_task: str | None = None) -> tuple[np.ndarray, dict]:
    """One merged LoRA vector for a task whose embedding is ``query``."""
    keys = experts.embedding(modality)
    exclude = experts.tasks.index(exclude_task) if exclude_task in experts.tasks else None
    if method == "model_soups":
        keep = [i for i in range(len(experts.tasks)) if i != exclude]
        return experts.mu[keep].astype(np.float64).mean(0).astype(np.float32), {"experts": [experts.tasks[i] for i in keep]}
    if method == "nearest_expert":
        k = 1
    prior = semantic_prior(query, keys, experts.mu, experts.var, k=k, tau=tau, exclude=exclude)
    info = {"experts": [experts.tasks[i] for i in prior.experts], "alpha": prior.alpha.tolist(),
            "similarity": prior.similarity.tolist()}
    if method == "adaptersoup":
        return experts.mu[prior.experts].astype(np.float64).mean(0).astype(np.float32), info
    if method in ("topk_weighted", "nearest_expert"):
        return prior.mu, info
    if method in FINAL_SNAPSHOT:
        raise SGLoraError(f"{method}: averages the experts' final snapshots, which the expert table lacks; "
                          "use expert_mean(repository, ...)")
    raise SGLoraError(f"unknown merging method {method!r}; expected one of {MERGING}")


def final_snapshots(repository: Repository) -> tuple[list[str], np.ndarray]:
    """Every expert's final snapshot (the factors after its last epoch; the snapshot its
    adapter holds), in the expert table's order: ``(tasks, N x D)``."""
    tasks = repository.experts().tasks
    return tasks, np.stack([repository.expert(t)[-1] for t in tasks])


def expert_mean(repository: Repository, tasks: list[str], seen: bool = False) -> tuple[dict[str, np.ndarray], dict]:
    """The mean of every expert's final snapshot, the same LoRA for each of ``tasks``:
    ``({task: 1 x D}, info)``. With ``seen`` a task's own expert is left out of its mean."""
    experts, final = final_snapshots(repository)
    vecs, info = {}, {}
    for t in tasks:
        keep = [i for i, e in enumerate(experts) if not (seen and e == t)]
        vecs[t] = final[keep].astype(np.float64).mean(0).astype(np.float32)[None]
        info[t] = {"experts": [experts[i] for i in keep], "snapshot": "final"}
    return vecs, info
