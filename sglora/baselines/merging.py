"""The merging baselines. All three average LoRA *factors* (A and B separately, as the
paper represents LoRAs), exactly like SG-LoRA's prior mean, so every method lives in the
same parameter space:

- Model Soups: the uniform average of all experts' mean snapshots mu_k;
- AdapterSoup: the top-K experts most similar to the task, equal weights;
- Top-K LoRA Weighted: the top-K experts weighted by alpha_k, i.e. mu* itself;
- Nearest expert: the description-nearest expert's LoRA mu_k alone (Top-K with K = 1,
  fixed: nothing is selected), the comparison SG-LoRA must win whatever the selection picks.
"""

from __future__ import annotations

import numpy as np

from ..io import SGLoraError
from ..methods import methods_where
from ..prior import semantic_prior
from ..repository import ExpertTable

MERGING = tuple(methods_where(kind="merging"))


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
    raise SGLoraError(f"unknown merging method {method!r}; expected one of {MERGING}")
