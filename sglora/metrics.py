"""Retrieval and classification metrics.

Retrieval inside a task's test pairs, several captions per image:

- image-to-text (I2T) Recall@K: an image counts as retrieved if *any* of its captions
  ranks in the top K captions;
- text-to-image (T2I) Recall@K: a caption counts if its image ranks in the top K images.

Ties are broken against the query (pessimistic): a candidate that scores *equal* to the
best correct one ranks above it. So a constant similarity matrix scores 0, never 100,
and the result does not depend on the order of the candidates.
"""

from __future__ import annotations

import numpy as np

from .io import SGLoraError

KS = (1, 5, 10)


def _finite(sim: np.ndarray, what: str) -> np.ndarray:
    """A NaN compares false with everything, so it would rank first; refuse it."""
    sim = np.asarray(sim, dtype=np.float64)
    bad = int(sim.size - np.isfinite(sim).sum())
    if bad:
        raise SGLoraError(f"{what}: the similarity matrix has {bad} non-finite (NaN/inf) value(s) of {sim.size}")
    return sim


def retrieval_recall(sim: np.ndarray, caption_image: np.ndarray, ks=KS) -> dict[str, float]:
    """``sim``: images x captions similarity; ``caption_image[j]`` is caption j's image.

    Returns ``{"i2t_r1": ..., "t2i_r1": ..., ...}`` in percent.
    """
    sim = _finite(sim, "retrieval_recall")
    caption_image = np.asarray(caption_image)
    n_img, n_cap = sim.shape
    if caption_image.shape != (n_cap,):
        raise ValueError(f"caption_image has shape {caption_image.shape}; expected ({n_cap},)")
    positive = caption_image[None, :] == np.arange(n_img)[:, None]  # images x captions
    # I2T: best positive score per image, then count negatives scoring >= it
    best = np.where(positive, sim, -np.inf).max(axis=1)
    i2t_rank = np.where(~positive, sim >= best[:, None], False).sum(axis=1)
    # T2I: the caption's own image score; count other images scoring >= it
    own = sim[caption_image, np.arange(n_cap)]
    t2i_rank = np.where(~positive, sim >= own[None, :], False).sum(axis=0)
    out = {}
    for k in ks:
        out[f"i2t_r{k}"] = float(100.0 * np.mean(i2t_rank < k))
        out[f"t2i_r{k}"] = float(100.0 * np.mean(t2i_rank < k))
    return out


def accuracy(sim: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 accuracy (percent) of images x classes scores; ties count as wrong."""
    sim = _finite(sim, "accuracy")
    labels = np.asarray(labels)
    own = sim[np.arange(len(labels)), labels]
    others = sim.copy()
    others[np.arange(len(labels)), labels] = -np.inf
    return float(100.0 * np.mean(own > others.max(axis=1)))
