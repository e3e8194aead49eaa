"""Retrieval metrics against a plain reference implementation written here (loops, no
vectorisation), on random similarity matrices with several captions per image and ties."""

import numpy as np
import pytest

from sglora.evaluation.metrics import accuracy, correct, retrieval_ranks, retrieval_recall


def reference(sim, caption_image, k):
    n_img, n_cap = sim.shape
    i2t = 0
    for i in range(n_img):
        mine = [j for j in range(n_cap) if caption_image[j] == i]
        best = max(sim[i, j] for j in mine)
        above = sum(1 for j in range(n_cap) if caption_image[j] != i and sim[i, j] >= best)
        i2t += above < k
    t2i = 0
    for j in range(n_cap):
        own = sim[caption_image[j], j]
        above = sum(1 for i in range(n_img) if i != caption_image[j] and sim[i, j] >= own)
        t2i += above < k
    return 100.0 * i2t / n_img, 100.0 * t2i / n_cap


@pytest.mark.parametrize("seed", range(8))
def test_recall_matches_reference_with_ties(seed):
    rng = np.random.default_rng(seed)
    n_img = int(rng.integers(3, 15))
    caps = rng.integers(1, 6, n_img)
    caption_image = np.repeat(np.arange(n_img), caps)
    rng.shuffle(caption_image)
    sim = rng.integers(0, 4, (n_img, len(caption_image))).astype(float)  # few values: many ties
    got = retrieval_recall(sim, caption_image)
    for k in (1, 5, 10):
        i2t, t2i = reference(sim, caption_image, k)
        assert got[f"i2t_r{k}"] == pytest.approx(i2t)
        assert got[f"t2i_r{k}"] == pytest.approx(t2i)


def test_recall_continuous_scores_and_perfect_case():
    rng = np.random.default_rng(0)
    caption_image = np.repeat(np.arange(10), 4)
    sim = rng.normal(size=(10, 40))
    got = retrieval_recall(sim, caption_image)
    for k in (1, 5, 10):
        assert got[f"i2t_r{k}"] == pytest.approx(reference(sim, caption_image, k)[0])
    perfect = np.where(caption_image[None, :] == np.arange(10)[:, None], 1.0, 0.0)
    assert retrieval_recall(perfect, caption_image)["i2t_r1"] == 100.0
    assert retrieval_recall(perfect, caption_image)["t2i_r1"] == 100.0
    # a constant matrix ties everything: pessimistic ties give 0, not 100
    assert retrieval_recall(np.zeros((10, 40)), caption_image)["i2t_r1"] == 0.0


def test_accuracy():
    sim = np.array([[0.9, 0.1], [0.2, 0.8], [0.5, 0.5]])
    assert accuracy(sim, np.array([0, 1, 0])) == pytest.approx(200 / 3)


@pytest.mark.parametrize("seed", range(4))
def test_ranks_match_reference_and_give_the_recalls(seed):
    """Per-query ranks: 1 + wrong candidates scoring >= the best right one (pessimistic ties);
    the recalls are the share of ranks <= K, so the two never disagree."""
    rng = np.random.default_rng(seed)
    caption_image = np.repeat(np.arange(6), rng.integers(1, 4, 6))
    sim = rng.integers(0, 3, (6, len(caption_image))).astype(float)
    ranks = retrieval_ranks(sim, caption_image)
    for i in range(6):
        best = max(sim[i, j] for j in range(len(caption_image)) if caption_image[j] == i)
        assert ranks["i2t"][i] == 1 + sum(sim[i, j] >= best for j in range(len(caption_image)) if caption_image[j] != i)
    for j, own_image in enumerate(caption_image):
        assert ranks["t2i"][j] == 1 + sum(sim[i, j] >= sim[own_image, j] for i in range(6) if i != own_image)
    got = retrieval_recall(sim, caption_image)
    for k in (1, 5, 10):
        assert got[f"i2t_r{k}"] == pytest.approx(100 * np.mean(ranks["i2t"] <= k))
        assert got[f"t2i_r{k}"] == pytest.approx(100 * np.mean(ranks["t2i"] <= k))


def test_correct_per_image():
    sim = np.array([[0.9, 0.1], [0.2, 0.8], [0.5, 0.5]])
    assert correct(sim, np.array([0, 0, 0])).tolist() == [True, False, False]


def test_gallery_ranks_equal_retrieval_within_each_gallery():
    """Galleries (MS-COCO 5 x 1K style): every query is ranked only against its own gallery,
    checked against slicing each gallery out by hand."""
    from sglora.evaluation.scoring import gallery_ranks
    from sglora.evaluation.metrics import retrieval_ranks

    rng = np.random.default_rng(3)
    n_img, per = 11, 3
    owner = np.repeat(np.arange(n_img), per)
    sim = rng.normal(size=(n_img, n_img * per)).round(1)  # rounding makes ties
    got = gallery_ranks(sim, owner, 4)
    for start in range(0, n_img, 4):
        imgs = np.arange(start, min(start + 4, n_img))
        caps = np.flatnonzero(np.isin(owner, imgs))
        ref = retrieval_ranks(sim[np.ix_(imgs, caps)], owner[caps] - start)
        np.testing.assert_array_equal(got["i2t"][imgs], ref["i2t"])
        np.testing.assert_array_equal(got["t2i"][caps], ref["t2i"])
    assert got["i2t"].max() <= 4 * per and got["t2i"].max() <= 4
    whole = gallery_ranks(sim, owner, 0)
    np.testing.assert_array_equal(whole["i2t"], retrieval_ranks(sim, owner)["i2t"])
