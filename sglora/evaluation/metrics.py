"""Retrieval and classification metrics, from per-query results.

Retrieval inside a task's test pairs, several captions per image:

- image-to-text (I2T): an image's rank is the rank of its *best* caption among all
  captions; Recall@K = share of images with rank <= K;
- text-to-image (T2I): a caption's rank is the rank of its own image among all images;
  Recall@K = share of captions with rank <= K.

Ranks start at 1. Ties are broken against the query (pessimistic): a candidate that scores
*equal* to the best correct one ranks above it. So a constant similarity matrix scores 0,
never 100, and the result does not depend on the order of the candidates. The recalls are
computed from the ranks, so per-query results (kept for the bootstrap intervals of
``sglora.evaluation.stats``) and the metrics never disagree.
"""

from __future__ import annotations

import numpy as np

from ..io import SGLoraError

KS = (1, 5, 10)


def _finite(sim: np.ndarray, what: str) -> np.ndarray:
    """A NaN compares false with everything, so it would rank first; refuse it."""
    sim = np.asarray(sim, dtype=np.float64)
    bad = int(sim.size - np.isfinite(sim).sum())
    if bad:
        raise SGLoraError(f"{what}: the similarity matrix has {bad} non-finite (NaN/inf) value(s) of {sim.size}")
    return sim


def retrieval_ranks(sim: np.ndarray, caption_image: np.ndarray) -> dict[str, np.ndarray]:
    """``sim``: images x captions similarity; ``caption_image[j]`` is caption j's image.

    Returns ``{"i2t": rank per image, "t2i": rank per caption}`` (ints, 1 = first).
    """
    sim = _finite(sim, "retrieval")
    caption_image = np.asarray(caption_image)
    n_img, n_cap = sim.shape
    if caption_image.shape != (n_cap,):
        raise ValueError(f"caption_image has shape {caption_image.shape}; expected ({n_cap},)")
    positive = caption_image[None, :] == np.arange(n_img)[:, None]  # images x captions
    # I2T: best positive score per image, then count negatives scoring >= it
    best = np.where(positive, sim, -np.inf).max(axis=1)
    i2t = 1 + np.where(~positive, sim >= best[:, None], False).sum(axis=1)
    # T2I: the caption's own image score; count other images scoring >= it
    own = sim[caption_image, np.arange(n_cap)]
    t2i = 1 + np.where(~positive, sim >= own[None, :], False).sum(axis=0)
    return {"i2t": i2t.astype(np.int64), "t2i": t2i.astype(np.int64)}


def recall_from_ranks(ranks: dict[str, np.ndarray], ks=KS) -> dict[str, float]:
    """``{"i2t_r1": ..., "t2i_r1": ..., ...}`` in percent from :func:`retrieval_ranks`."""
    return {f"{d}_r{k}": float(100.0 * np.mean(np.asarray(ranks[d]) <= k)) for k in ks for d in ("i2t", "t2i")}


def retrieval_recall(sim: np.ndarray, caption_image: np.ndarray, ks=KS) -> dict[str, float]:
    """``sim``: images x captions similarity; ``caption_image[j]`` is caption j's image.

    Returns ``{"i2t_r1": ..., "t2i_r1": ..., ...}`` in percent.
    """
    return recall_from_ranks(retrieval_ranks(sim, caption_image), ks)


def correct(sim: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per image: is its own class scored strictly above every other class (ties count as wrong)?"""
    sim = _finite(sim, "accuracy")
    labels = np.asarray(labels)
    own = sim[np.arange(len(labels)), labels]
    others = sim.copy()
    others[np.arange(len(labels)), labels] = -np.inf
    return own > others.max(axis=1)


def accuracy(sim: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 accuracy (percent) of images x classes scores; ties count as wrong."""
    return float(100.0 * np.mean(correct(sim, labels)))
