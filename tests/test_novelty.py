"""Novelty (sglora/analyses/novelty.py) and the generator baselines (sglora/baselines/generator_baselines.py) against
plain reference implementations written here."""

from __future__ import annotations

import numpy as np
import pytest

from sglora.experts.lora import delta_weights
from sglora.analyses.novelty import (agreement, delta_distances, group_novelty, normalised_distances, spearman,
                            within_between)
from test_spaces import toy_layout


def test_delta_distances_match_materialised_updates():
    rng = np.random.default_rng(0)
    layout = toy_layout()
    x, y = rng.normal(size=(3, layout.dim)), rng.normal(size=(4, layout.dim))
    got = delta_distances(x, y, layout, 2.0)
    for i in range(3):
        for j in range(4):
            dx, dy = delta_weights(x[i], layout, 2.0), delta_weights(y[j], layout, 2.0)
            ref = np.sqrt(sum(float(((dx[m].double() - dy[m].double()) ** 2).sum()) for m in dx))
            assert got[i, j] == pytest.approx(ref, rel=1e-4, abs=1e-5)


def test_normalised_distances_and_within_between_match_loops():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(6, 5))
    shift, scale = rng.normal(size=5), rng.uniform(0.5, 2, size=5)
    d = normalised_distances(x, x, shift, scale)
    for i in range(6):
        for j in range(6):
            assert d[i, j] == pytest.approx(np.linalg.norm((x[i] - shift) / scale - (x[j] - shift) / scale), abs=1e-6)
    owner = np.array([0, 0, 0, 1, 1, 2])
    wb = within_between(d, owner)
    for i in range(6):
        same = [d[i, j] for j in range(6) if j != i and owner[j] == owner[i]]
        other = [d[i, j] for j in range(6) if owner[j] != owner[i]]
        assert (np.isnan(wb["within"][i]) if not same else wb["within"][i] == pytest.approx(min(same)))
        assert wb["between"][i] == pytest.approx(min(other))


def _ranks(v):
    """Average ranks (1-based) with a plain loop."""
    v = list(v)
    out = []
    for x in v:
        less, equal = sum(y < x for y in v), sum(y == x for y in v)
        out.append(less + (equal + 1) / 2)
    return np.array(out)


def test_spearman_and_agreement_match_a_plain_reference():
    a, b = np.array([1, 3, 2, 2, 5, 1]), np.array([2, 3, 1, 4, 5, 1])
    ra, rb = _ranks(a), _ranks(b)
    ref = np.sum((ra - ra.mean()) * (rb - rb.mean())) / np.sqrt(np.sum((ra - ra.mean()) ** 2) * np.sum((rb - rb.mean()) ** 2))
    assert spearman(a, b) == pytest.approx(ref)
    ag = agreement({"i2t": a, "t2i": a}, {"i2t": b, "t2i": a})
    hits = [int(x <= 1) == int(y <= 1) for x, y in zip(a, b)] + [True] * len(a)
    assert ag["r1_agreement"] == pytest.approx(np.mean(hits))
    assert ag["spearman"] == pytest.approx((ref + 1.0) / 2)
    assert agreement({"correct": [1, 0, 1]}, {"correct": [1, 1, 1]})["r1_agreement"] == pytest.approx(2 / 3)


def test_a_copied_snapshot_is_not_novel():
    rng = np.random.default_rng(2)
    layout = toy_layout()
    snaps = rng.normal(size=(6, layout.dim))
    owner = np.array([0, 0, 0, 1, 1, 1])
    queries = {j: {"i2t": rng.integers(1, 5, 8).tolist(), "t2i": rng.integers(1, 5, 8).tolist()} for j in range(6)}
    samples = {"copy": {"t": snaps[[1, 4]]}, "far": {"t": snaps[[1]] + 100.0}}
    results = {"copy": {"t": {"ranks": {d: [queries[1][d], queries[4][d]] for d in ("i2t", "t2i")}}},
               "far": {"t": {"ranks": {d: [queries[1][d]] for d in ("i2t", "t2i")}}}}
    res = group_novelty(samples, snaps, owner, ["e0", "e1"], {"t": "e0"}, layout, 1.0, np.zeros(layout.dim),
                        np.ones(layout.dim), results, lambda t, j: queries[j], n_boot=200)
    copy = res["methods"]["copy"]
    assert copy["summary"]["distance_normalised"]["estimate"] == pytest.approx(0, abs=1e-6)
    assert copy["summary"]["distance_delta"]["estimate"] == pytest.approx(0, abs=1e-4)
    assert copy["per_task"]["t"]["nearest_snapshot"] == [1, 4] and copy["summary"]["r1_agreement"]["estimate"] == 1.0
    assert copy["per_task"]["t"]["same_as_description_nearest"] == 0.5
    assert res["methods"]["far"]["summary"]["ratio_normalised"]["estimate"] > 10


def test_prior_samples_follow_the_prior_and_noisy_expert_matches_the_spread():
    from sglora.baselines.generator_baselines import noisy_samples, prior_samples, sample_spread

    mu, var = np.array([1.0, -2.0, 0.0]), np.array([0.25, 4.0, 0.0])
    x, runs = prior_samples(mu, var, 4000, 2, 0, "task")
    assert runs == [0] * 4000 + [1] * 4000
    np.testing.assert_allclose(x.mean(0), mu, atol=0.1)
    np.testing.assert_allclose(x.std(0), np.sqrt(var), atol=0.1)
    again, _ = prior_samples(mu, var, 4000, 2, 0, "task")
    assert again.tobytes() == x.tobytes()
    rng = np.random.default_rng(3)
    sg = rng.normal(size=(15, 50)) * np.linspace(0.1, 3, 50) + 5
    for spread in ("diagonal", "isotropic"):
        sd = sample_spread(sg, spread)
        rms = np.sqrt(((sg - sg.mean(0)) ** 2).sum(1).mean() * 15 / 14)
        assert np.sqrt((sd**2).sum()) == pytest.approx(rms)
        noisy = noisy_samples(np.zeros(50), sd, [0] * 2000, 0, "t")
        assert np.sqrt(((noisy - noisy.mean(0)) ** 2).sum(1).mean()) == pytest.approx(rms, rel=0.05)
    np.testing.assert_allclose(sample_spread(sg, "diagonal"), sg.std(0, ddof=1))
