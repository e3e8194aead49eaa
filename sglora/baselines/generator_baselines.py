"""Two baselines for what a weight generator adds (after Zeng et al., arXiv 2506.07998,
who found generated weights that replicate or interpolate training checkpoints and do
not beat noise-added baselines):

- ``prior_sampling``: N draws from the semantic prior N(mu*, sigma*^2) of Eq. 13-14 itself,
  x = mu* + sigma* ⊙ eps, eps ~ N(0, I): SG-LoRA without its CVAE. The prior (k, tau) is
  SG-LoRA's (its settings chosen on the validation tasks).
- ``noisy_expert``: the description-nearest expert's LoRA (its mean snapshot mu_1) plus
  Gaussian noise whose spread matches SG-LoRA's samples for the same task:
  ``diagonal`` (default): per coordinate the standard deviation of SG-LoRA's samples of the
  task; ``isotropic``: one scale, the RMS distance of SG-LoRA's samples to their mean
  divided by sqrt(D). Either way the noisy draws' expected RMS distance to their own mean is
  that of SG-LoRA's samples of the task (unbiased estimates, divisor N - 1).

Both draw as many samples as SG-LoRA, labelled with the same runs (run r: seed
``task_seed(sampling.seed + r, "<method>/<task>")``), so their intervals resample runs like
SG-LoRA's and are comparable.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np

from ..io import SGLoraError, Settings, setting

GENERATORS = ("prior_sampling", "noisy_expert")
SPREADS = ("diagonal", "isotropic")


@dataclass
class NoisySpec(Settings):
    """How the noisy nearest expert matches SG-LoRA's spread (config section ``noisy_expert``)."""

    section: ClassVar[str] = "noisy_expert"

    spread: str = setting("diagonal", '"diagonal" (per-coordinate SD of SG-LoRA\'s samples) or "isotropic" (their RMS '
                          "distance)", choices=SPREADS)


def _rng(seed: int, run: int, method: str, task: str) -> np.random.Generator:
    from ..generator.sampling import task_seed

    return np.random.default_rng(task_seed(seed + run, f"{method}/{task}"))


def prior_samples(mu: np.ndarray, var: np.ndarray, samples: int, runs: int, seed: int, task: str) -> tuple[np.ndarray, list[int]]:
    """``(runs * samples) x D`` draws of N(mu, var) and their run labels."""
    mu, sd = np.asarray(mu, np.float64), np.sqrt(np.clip(np.asarray(var, np.float64), 0, None))
    parts, labels = [], []
    for r in range(runs):
        eps = _rng(seed, r, "prior_sampling", task).standard_normal((samples, mu.size))
        parts.append(mu + sd * eps)
        labels += [r] * samples
    return np.concatenate(parts).astype(np.float32), labels


def sample_spread(samples: np.ndarray, spread: str = "diagonal") -> np.ndarray:
    """The noise SD per coordinate that gives SG-LoRA's spread: ``diagonal`` the samples'
    per-coordinate SD; ``isotropic`` their RMS distance to their mean / sqrt(D), everywhere."""
    x = np.asarray(samples, np.float64)
    dev, dof = x - x.mean(0), max(len(x) - 1, 1)  # unbiased: the draws' own spread then matches in expectation
    if spread == "diagonal":
        return np.sqrt((dev**2).sum(0) / dof)
    if spread == "isotropic":
        return np.full(x.shape[1], np.sqrt((dev**2).sum() / dof / x.shape[1]))
    raise SGLoraError(f"noisy_expert.spread: {spread!r} is not one of {SPREADS}")


def noisy_samples(center: np.ndarray, sd: np.ndarray, runs: list[int], seed: int, task: str) -> np.ndarray:
    """One draw of center + sd ⊙ eps per entry of ``runs`` (the run labels of SG-LoRA's
    samples), each run from its own seed."""
    center, sd = np.asarray(center, np.float64), np.asarray(sd, np.float64)
    runs = np.asarray(runs)
    out = np.empty((len(runs), center.size))
    for r in sorted(set(runs.tolist())):
        at = np.flatnonzero(runs == r)
        out[at] = center + sd * _rng(seed, int(r), "noisy_expert", task).standard_normal((len(at), center.size))
    return out.astype(np.float32)


def generator_candidates(method: str, tasks: list[str], experts, embeddings: dict[str, dict], prior, sampling,
                         sglora: dict[str, np.ndarray] | None = None, sglora_info: dict[str, dict] | None = None,
                         noisy: NoisySpec | None = None, seen: bool = False) -> tuple[dict[str, np.ndarray], dict[str, dict]]:
    """Candidates of ``prior_sampling`` or ``noisy_expert`` for each task: ``({task: n x D}, info)``.

    ``prior``: SG-LoRA's prior (k, tau, modality); ``sampling``: SG-LoRA's samples, runs and
    seed; ``sglora``/``sglora_info``: SG-LoRA's candidates of the same tasks (noisy_expert's
    spread and run labels). With ``seen`` the task's own expert is left out (as a seen task's
    merging baselines do)."""
    from ..generator.prior import expert_weights, semantic_prior

    if method not in GENERATORS:
        raise SGLoraError(f"unknown generator baseline {method!r}; expected one of {GENERATORS}")
    key = "text_embedding" if prior.modality == "textual" else "visual_embedding"
    keys = experts.embedding(prior.modality)
    vecs, info = {}, {}
    for t in tasks:
        if t not in embeddings:
            raise SGLoraError(f"no task embedding for {t!r} (is it in the task embedding table's dataset?)")
        exclude = experts.tasks.index(t) if seen and t in experts.tasks else None
        q = embeddings[t][key]
        if method == "prior_sampling":
            p = semantic_prior(q, keys, experts.mu, experts.var, k=prior.k, tau=prior.tau, exclude=exclude)
            vecs[t], runs = prior_samples(p.mu, p.var, sampling.samples, sampling.runs, sampling.seed, t)
            info[t] = {"experts": [experts.tasks[i] for i in p.experts], "alpha": p.alpha.tolist(), "runs": runs,
                       "k": prior.k, "tau": prior.tau}
            continue
        if sglora is None or t not in sglora:
            raise SGLoraError(f"noisy_expert: no SG-LoRA samples for task {t!r} (its noise scale comes from them)")
        noisy = noisy or NoisySpec()
        runs = (sglora_info or {}).get(t, {}).get("runs") or [0] * len(sglora[t])
        if len(sglora[t]) < 2:  # e.g. sampling.average with runs 1: one candidate has no spread to match
            raise SGLoraError(f"noisy_expert: SG-LoRA has {len(sglora[t])} candidate for task {t!r}, so its spread "
                              "(the noise scale) is undefined; with sampling.average, set sampling.runs >= 2")
        idx, sim, _ = expert_weights(q, keys, 1, prior.tau, exclude)
        sd = sample_spread(sglora[t], noisy.spread)
        vecs[t] = noisy_samples(experts.mu[idx[0]], sd, runs, sampling.seed, t)
        info[t] = {"experts": [experts.tasks[idx[0]]], "similarity": sim.tolist(), "runs": list(runs),
                   "spread": noisy.spread, "rms_spread": float(np.sqrt((sd**2).sum()))}
    return vecs, info


def sglora_samples(path: str | Path, layout) -> tuple[dict[str, np.ndarray], dict[str, dict]]:
    """SG-LoRA's candidates of the tasks (noisy_expert's spread) and their info, checked to
    be in the repository's ``layout``."""
    from ..generator.candidates import load_candidates

    samples, theirs, meta = load_candidates(path)
    if theirs.dim != layout.dim:
        raise SGLoraError(f"{path}: SG-LoRA's candidates are not in the repository's layout")
    return samples, meta["info"]
