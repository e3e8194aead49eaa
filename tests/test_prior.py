"""The semantic prior: alpha against its definition, Eq. 13-14 against the mixture's
mean and variance computed directly from its components (E[X^2] - E[X]^2)."""

import numpy as np
import pytest

from sglora.generator.prior import expert_weights, mixture, semantic_prior, training_conditions


@pytest.mark.parametrize("seed", range(5))
def test_alpha_is_softmax_over_topk_cosine(seed):
    rng = np.random.default_rng(seed)
    keys = rng.normal(size=(9, 7))
    q = rng.normal(size=7)
    k, tau = 4, 0.3
    idx, sim, alpha = expert_weights(q, keys, k, tau)
    cos = np.array([q @ x / np.linalg.norm(q) / np.linalg.norm(x) for x in keys])
    expected_idx = list(np.argsort(-cos)[:k])
    assert list(idx) == expected_idx
    e = np.exp(cos[expected_idx] / tau)
    np.testing.assert_allclose(alpha, e / e.sum(), rtol=1e-10)
    np.testing.assert_allclose(sim, cos[expected_idx], rtol=1e-10)


@pytest.mark.parametrize("seed", range(5))
def test_mixture_moments_match_direct_computation(seed):
    rng = np.random.default_rng(seed)
    K, D = 4, 11
    alpha = rng.dirichlet(np.ones(K))
    mu = rng.normal(size=(K, D))
    var = rng.uniform(0.1, 2.0, size=(K, D))
    m, v = mixture(alpha, mu, var)
    # direct: mixture of K components; E[X] = sum a mu; E[X^2] = sum a (var + mu^2)
    ex = sum(alpha[k] * mu[k] for k in range(K))
    ex2 = sum(alpha[k] * (var[k] + mu[k] ** 2) for k in range(K))
    np.testing.assert_allclose(m, ex, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(v, ex2 - ex**2, rtol=1e-5, atol=1e-6)


def test_mixture_matches_monte_carlo():
    rng = np.random.default_rng(1)
    alpha = np.array([0.5, 0.3, 0.2])
    mu = rng.normal(size=(3, 4)) * 3
    var = rng.uniform(0.2, 1.0, size=(3, 4))
    comp = rng.choice(3, size=400_000, p=alpha)
    x = mu[comp] + rng.normal(size=(400_000, 4)) * np.sqrt(var[comp])
    m, v = mixture(alpha, mu, var)
    np.testing.assert_allclose(m, x.mean(0), atol=0.03)
    np.testing.assert_allclose(v, x.var(0), rtol=0.02)


def test_leave_one_out_condition_excludes_the_expert():
    rng = np.random.default_rng(2)
    keys = rng.normal(size=(5, 6))
    mu, var = rng.normal(size=(5, 3)), rng.uniform(0.1, 1, size=(5, 3))
    p = semantic_prior(keys[2], keys, mu, var, k=3, tau=0.1, exclude=2)
    assert 2 not in p.experts
    cm, cv = training_conditions(keys, mu, var, 3, 0.1, "loo")
    np.testing.assert_allclose(cm[2], p.mu)
    # "all": the expert is its own nearest neighbour
    assert semantic_prior(keys[2], keys, mu, var, k=3, tau=0.1).experts[0] == 2
    cm_self, _ = training_conditions(keys, mu, var, 3, 0.1, "self")
    np.testing.assert_allclose(cm_self, mu.astype(np.float32))
