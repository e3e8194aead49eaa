"""The CVAE: its KL goes to the learned conditional prior, the prior is used, sampling is
seeded."""

import numpy as np
import pytest
import torch

from sglora.generator.cvae import CVAE, gaussian_kl, load_cvae, save_cvae, train_cvae
from sglora.generator.settings import CVAESpec


def _toy(seed=0, experts=4, m=16, dim=24):
    """Experts whose snapshots cluster around well separated means; their conditions are
    their own (mu, var)."""
    rng = np.random.default_rng(seed)
    mu = rng.normal(0, 3, size=(experts, dim)).astype(np.float32)
    var = np.full((experts, dim), 0.05, np.float32)
    x = np.concatenate([mu[e] + rng.normal(0, 0.2, (m, dim)) for e in range(experts)]).astype(np.float32)
    idx = np.repeat(np.arange(experts), m)
    return x, idx, mu, var


SPEC = dict(latent=4, hidden=64, cond_dim=16, epochs=150, lr=3e-3, batch_size=32, residual=False, seed=0, device="cpu")


def test_gaussian_kl_closed_form():
    torch.manual_seed(0)
    mq, lq, mp, lp = (torch.randn(5, 3) for _ in range(4))
    got = gaussian_kl(mq, lq, mp, lp)
    q = torch.distributions.Normal(mq, (0.5 * lq).exp())
    p = torch.distributions.Normal(mp, (0.5 * lp).exp())
    torch.testing.assert_close(got, torch.distributions.kl_divergence(q, p).sum(-1))


def test_kl_term_is_against_the_conditional_prior():
    x, idx, mu, var = _toy()
    model = CVAE(x.shape[1], CVAESpec.from_dict(SPEC))
    model.fit_normalization(torch.tensor(x))
    torch.manual_seed(0)
    _, _, kl = model.loss(torch.tensor(x[:8]), torch.tensor(mu[idx[:8]]), torch.tensor(var[idx[:8]]))
    # recompute by hand: KL(q(z|x,c) || p(z|c)), not KL(q || N(0, I))
    h, _ = model.cond(torch.tensor(mu[idx[:8]]), torch.tensor(var[idx[:8]]))
    x_n = (torch.tensor(x[:8]) - model.shift) / model.scale
    qm, qlv = model.posterior(x_n, h)
    pm, plv = model.condition_prior_params(h)
    torch.testing.assert_close(kl, gaussian_kl(qm, qlv, pm, plv).mean())
    standard = gaussian_kl(qm, qlv, torch.zeros_like(pm), torch.zeros_like(plv)).mean()
    assert not torch.isclose(kl, standard)


def test_learned_prior_is_used_and_samples_follow_the_condition():
    x, idx, mu, var = _toy()
    model, history = train_cvae(x, idx, mu, var, CVAESpec.from_dict(SPEC), threads=1, progress=False)
    assert history[-1]["loss"] < history[0]["loss"]
    # the learned prior differs between conditions (it is not N(0, I) for all)
    h0, _ = model.cond(torch.tensor(mu[:1]), torch.tensor(var[:1]))
    h1, _ = model.cond(torch.tensor(mu[1:2]), torch.tensor(var[1:2]))
    assert not torch.allclose(model.condition_prior_params(h0)[0], model.condition_prior_params(h1)[0], atol=1e-3)
    # samples for two conditions differ and land near their own expert
    g = torch.Generator().manual_seed(0)
    s0 = model.sample(mu[0], var[0], 20, generator=g).numpy()
    s1 = model.sample(mu[1], var[1], 20, generator=g).numpy()
    assert np.linalg.norm(s0.mean(0) - mu[0]) < 0.5 * np.linalg.norm(mu[0] - mu[1])
    assert np.linalg.norm(s1.mean(0) - mu[1]) < 0.5 * np.linalg.norm(mu[0] - mu[1])


def test_sampling_is_seeded_and_checkpoint_roundtrips(tmp_path):
    x, idx, mu, var = _toy()
    spec = dict(SPEC, epochs=5)
    model, _ = train_cvae(x, idx, mu, var, CVAESpec.from_dict(spec), threads=1, progress=False)
    save_cvae(tmp_path / "cvae", model, {"note": "test"})
    again, cfg = load_cvae(tmp_path / "cvae")
    a = model.sample(mu[0], var[0], 3, generator=torch.Generator().manual_seed(7))
    b = again.sample(mu[0], var[0], 3, generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert cfg["note"] == "test"
    # training twice with one seed: byte-identical checkpoints
    model2, _ = train_cvae(x, idx, mu, var, CVAESpec.from_dict(spec), threads=1, progress=False)
    save_cvae(tmp_path / "cvae2", model2, {"note": "test"})
    assert (tmp_path / "cvae" / "model.safetensors").read_bytes() == (tmp_path / "cvae2" / "model.safetensors").read_bytes()


def test_bad_spec_is_an_error():
    from sglora.io import SGLoraError

    with pytest.raises(SGLoraError, match="cvae.normalization"):
        CVAESpec.from_dict({"normalization": "minmax"})
    with pytest.raises(SGLoraError, match="unknown key"):
        CVAESpec.from_dict({"latnet": 3})


def test_checkpoint_stores_the_condition_prior_under_prior(tmp_path):
    """model.safetensors stores the condition prior under ``prior.*`` (the checkpoint format
    of sglora.generator.cvae), whatever the module's attribute is called, so every checkpoint of the format loads."""
    from safetensors.torch import load_file

    from sglora.io import save_safetensors

    model = CVAE(6, CVAESpec(latent=2, hidden=4, cond_dim=3))
    save_cvae(tmp_path / "cvae", model, {})
    stored = load_file(str(tmp_path / "cvae" / "model.safetensors"))
    assert {"prior.0.weight", "prior.2.bias"} <= set(stored) and not any(k.startswith("condition_prior") for k in stored)
    # the format's names, from the module's: condition_prior.* -> prior.*
    named = {k.replace("condition_prior.", "prior.", 1): v for k, v in model.state_dict().items()}
    assert set(named) == set(stored)
    save_safetensors(tmp_path / "cvae" / "model.safetensors", {k: v + 1 for k, v in named.items()})
    again, _ = load_cvae(tmp_path / "cvae")
    torch.testing.assert_close(again.condition_prior[0].weight, model.condition_prior[0].weight + 1)
