"""The semantic prior (Eq. 2, 4-6 of the paper; Eq. 13-14 of the supplementary).

From a task embedding d* and the experts' embeddings d_k:

    sim_k   = cos(d*, d_k)
    top-K experts by sim
    alpha_k = exp(sim_k / tau) / sum_{k' in top-K} exp(sim_k' / tau)
    mu*     = sum_k alpha_k mu_k                                        (Eq. 13)
    var*    = sum_k alpha_k var_k + sum_k alpha_k (mu_k - mu*)^2         (Eq. 14)

The condition of the CVAE is c = (mu*, var*). :class:`~sglora.generator.settings.PriorSpec` holds K, tau and the
modality of the embeddings (config section ``prior``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..io import SGLoraError


@dataclass
class Prior:
    """The aggregation for one task: which experts, their weights, and (mu*, var*)."""

    experts: np.ndarray  #: indices of the top-K experts, most similar first
    similarity: np.ndarray  #: their cosine similarities
    alpha: np.ndarray  #: their weights (sum to 1)
    mu: np.ndarray  #: mu*, (D,)
    var: np.ndarray  #: var*, (D,)


def expert_weights(query: np.ndarray, keys: np.ndarray, k: int, tau: float,
                   exclude: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Top-K experts of ``query`` among ``keys`` (cosine) and their softmax weights.

    ``exclude`` leaves one expert out (the leave-one-out condition of a training expert).
    Ties in similarity go to the lower index, so the choice is deterministic.
    """
    if tau <= 0:
        raise SGLoraError(f"prior.tau must be > 0, got {tau}")
    q = np.asarray(query, np.float64)
    keys = np.asarray(keys, np.float64)
    sim = keys @ q / (np.linalg.norm(keys, axis=1) * np.linalg.norm(q) + 1e-12)
    candidates = np.arange(len(keys))
    if exclude is not None:
        candidates = candidates[candidates != exclude]
    if len(candidates) == 0:
        raise SGLoraError("prior: no expert left to aggregate")
    k = min(k, len(candidates))
    order = candidates[np.lexsort((candidates, -sim[candidates]))][:k]
    logits = sim[order] / tau
    alpha = np.exp(logits - logits.max())
    alpha /= alpha.sum()
    return order, sim[order], alpha


def mixture(alpha: np.ndarray, mu: np.ndarray, var: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and variance of the alpha-weighted mixture (Eq. 13-14), element-wise.

    ``mu``, ``var``: (K, D) for the selected experts. Computed in float64.
    """
    alpha = np.asarray(alpha, np.float64)[:, None]
    mu = np.asarray(mu, np.float64)
    mean = (alpha * mu).sum(0)
    total = (alpha * np.asarray(var, np.float64)).sum(0) + (alpha * (mu - mean) ** 2).sum(0)
    return mean.astype(np.float32), total.astype(np.float32)


def semantic_prior(query: np.ndarray, keys: np.ndarray, mu: np.ndarray, var: np.ndarray,
                   k: int = 4, tau: float = 0.05, exclude: int | None = None) -> Prior:
    """The semantic prior of one task (see the module docstring)."""
    idx, sim, alpha = expert_weights(query, keys, k, tau, exclude)
    m, v = mixture(alpha, mu[idx], var[idx])
    return Prior(experts=idx, similarity=sim, alpha=alpha, mu=m, var=v)


CONDITION_MODES = ("loo", "all", "self")


def task_condition(query: np.ndarray, keys: np.ndarray, mu: np.ndarray, var: np.ndarray, k: int, tau: float,
                   mode: str = "loo", expert: int | None = None) -> tuple[np.ndarray, np.ndarray, Prior]:
    """The CVAE condition (mu*, var*) of one task and the prior behind it.

    ``expert`` is the task's index in the repository when the task is a *seen* task (an
    expert), ``None`` for an unseen one. The CVAE was trained with conditions built by
    ``mode``, and a seen task must get the same condition at sampling time as in training:

    - ``loo``: the aggregator on d_n over the *other* experts (what happens at test time,
      where the task is not in the repository) - our default;
    - ``all``: over all experts, the expert itself included (it gets the largest weight);
    - ``self``: the expert's own (mu_n, var_n).

    For an unseen task every mode is the aggregator over all experts.
    """
    if mode not in CONDITION_MODES:
        raise SGLoraError(f"cvae.condition: {mode!r} is not one of {CONDITION_MODES}")
    p = semantic_prior(query, keys, mu, var, k, tau, exclude=expert if mode == "loo" else None)
    if mode == "self" and expert is not None:
        own = Prior(experts=np.array([expert]), similarity=np.ones(1), alpha=np.ones(1),
                    mu=np.asarray(mu[expert], np.float32), var=np.asarray(var[expert], np.float32))
        return own.mu, own.var, own
    return p.mu, p.var, p


def training_conditions(keys: np.ndarray, mu: np.ndarray, var: np.ndarray, k: int, tau: float,
                        mode: str = "loo") -> tuple[np.ndarray, np.ndarray]:
    """The condition (mu*, var*) of each training expert, by ``mode`` (see ``task_condition``)."""
    conds = [task_condition(keys[n], keys, mu, var, k, tau, mode, expert=n)[:2] for n in range(len(keys))]
    return np.stack([c[0] for c in conds]), np.stack([c[1] for c in conds])


#: the temperatures of augmented conditions, as multiples of prior.tau
AUGMENT_TAU_FACTORS = (0.5, 1.0, 2.0)


def augmented_conditions(keys: np.ndarray, mu: np.ndarray, var: np.ndarray, k: int, tau: float, count: int,
                         seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``count`` extra conditions per expert (``cvae.augment``): ``(N, count, D)`` arrays of
    (mu*, var*).

    Condition a of expert n is the semantic prior of d_n over a random subset of the *other*
    experts (size uniform in 1..N-1), with K' uniform in 1..``k`` and tau' drawn from
    ``tau`` x :data:`AUGMENT_TAU_FACTORS`: the CVAE then sees thousands of conditions, each
    one a leave-one-out aggregate as at test time, instead of N. Drawn from a NumPy
    generator of ``seed`` alone (no torch RNG is touched), in the order expert, condition."""
    n_exp = len(keys)
    if n_exp < 2:
        raise SGLoraError("cvae.augment needs at least 2 experts (a condition aggregates the other experts)")
    rng = np.random.default_rng(seed)
    out_mu = np.empty((n_exp, count, mu.shape[1]), np.float32)
    out_var = np.empty_like(out_mu)
    for n in range(n_exp):
        others = np.array([e for e in range(n_exp) if e != n])
        for a in range(count):
            size = int(rng.integers(1, n_exp))  # 1 .. N-1
            subset = np.sort(rng.choice(others, size=size, replace=False))
            k_a = int(rng.integers(1, k + 1))
            tau_a = tau * AUGMENT_TAU_FACTORS[int(rng.integers(len(AUGMENT_TAU_FACTORS)))]
            p = semantic_prior(keys[n], keys[subset], mu[subset], var[subset], k_a, tau_a)
            out_mu[n, a], out_var[n, a] = p.mu, p.var
    return out_mu, out_var
