"""SG-LoRA's generator variants: condition augmentation, the description
embedding in the condition, the mean of the samples, and the ablation table. Each is off
by default, and off is the paper's generator: its code path, and no variant key in its files."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from sglora.cli import main
from sglora.generator.cvae import CVAE, load_cvae, save_cvae, train_cvae
from sglora.generator.settings import CVAESpec
from sglora.generator.prior import AUGMENT_TAU_FACTORS, augmented_conditions

SPEC = dict(latent=3, hidden=16, cond_dim=8, epochs=4, lr=3e-3, batch_size=8, seed=0, device="cpu")


def _toy(seed=0, experts=5, m=6, dim=10, embed=7):
    rng = np.random.default_rng(seed)
    mu = rng.normal(0, 2, size=(experts, dim)).astype(np.float32)
    var = rng.uniform(0.01, 0.1, size=(experts, dim)).astype(np.float32)
    x = np.concatenate([mu[e] + rng.normal(0, 0.2, (m, dim)) for e in range(experts)]).astype(np.float32)
    return x, np.repeat(np.arange(experts), m), mu, var, rng.normal(size=(experts, embed))


# --- condition augmentation ---------------------------------------------------------------

def _reference_pools(keys, mu, var, k, tau, count, seed):
    """A plain loop: replay the documented draws, aggregate by hand (cosine, top-K, softmax,
    Eq. 13-14)."""
    rng = np.random.default_rng(seed)
    n_exp = len(keys)
    out_mu, out_var, used = np.zeros((n_exp, count, mu.shape[1])), np.zeros((n_exp, count, mu.shape[1])), []
    for n in range(n_exp):
        others = np.array([e for e in range(n_exp) if e != n])
        for a in range(count):
            subset = np.sort(rng.choice(others, size=int(rng.integers(1, n_exp)), replace=False))
            k_a = int(rng.integers(1, k + 1))
            t = tau * AUGMENT_TAU_FACTORS[int(rng.integers(len(AUGMENT_TAU_FACTORS)))]
            sims = [(float(keys[n] @ keys[j] / (np.linalg.norm(keys[n]) * np.linalg.norm(keys[j]))), j) for j in subset]
            top = sorted(sims, key=lambda s: (-s[0], s[1]))[:k_a]
            w = np.array([np.exp(s / t) for s, _ in top])
            w /= w.sum()
            m = sum(wi * mu[j] for wi, (_, j) in zip(w, top))
            v = sum(wi * (var[j] + (mu[j] - m) ** 2) for wi, (_, j) in zip(w, top))
            out_mu[n, a], out_var[n, a] = m, v
            used.append((n, [j for _, j in top]))
    return out_mu, out_var, used


def test_augmented_conditions_equal_a_plain_loop_and_leave_the_expert_out():
    rng = np.random.default_rng(3)
    keys, mu, var = rng.normal(size=(6, 5)), rng.normal(size=(6, 4)), rng.uniform(0.1, 1, size=(6, 4))
    got_mu, got_var = augmented_conditions(keys, mu, var, k=3, tau=0.1, count=9, seed=11)
    ref_mu, ref_var, used = _reference_pools(keys, mu, var, 3, 0.1, 9, 11)
    np.testing.assert_allclose(got_mu, ref_mu, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got_var, ref_var, rtol=1e-5, atol=1e-6)
    assert all(n not in experts for n, experts in used)  # every condition is leave-one-out
    assert len({tuple(np.round(c, 5)) for c in got_mu.reshape(-1, 4)}) > 3 * len(keys)  # many conditions, not 6
    again = augmented_conditions(keys, mu, var, k=3, tau=0.1, count=9, seed=11)
    np.testing.assert_array_equal(again[0], got_mu)  # drawn from the seed alone


def _reference_default_training(x, idx, cm, cv, spec):
    """The paper's training loop, written out: the default (no variant) must train exactly so."""
    from sglora.backbone.contrastive import optimizer_step, seed_everything

    seed_everything(spec.seed, 1)
    x, cm, cv = (torch.as_tensor(a, dtype=torch.float32) for a in (x, cm, cv))
    idx = torch.as_tensor(idx, dtype=torch.long)
    model = CVAE(x.shape[1], spec)
    model.fit_normalization(x)
    opt = torch.optim.Adam(model.parameters(), lr=spec.lr, fused=True)  # cvae_optimizer: Adam, fused
    gen = torch.Generator().manual_seed(spec.seed)
    for epoch in range(spec.epochs):
        model.train()
        order = torch.randperm(len(x), generator=gen)
        for i in range(0, len(order), spec.batch_size):
            b = order[i : i + spec.batch_size]
            loss, _, _ = model.loss(x[b], cm[idx[b]], cv[idx[b]])
            optimizer_step(opt, loss, "cvae", epoch, [])
    return model.eval()


def _same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        torch.testing.assert_close(sa[key], sb[key], rtol=0, atol=0, msg=key)


def test_default_training_is_the_plain_loop_and_writes_no_variant_keys(tmp_path):
    x, idx, mu, var, _ = _toy()
    spec = CVAESpec.from_dict(SPEC)
    model, _ = train_cvae(x, idx, mu, var, spec, threads=1, progress=False)
    _same_weights(model, _reference_default_training(x, idx, mu, var, spec))
    save_cvae(tmp_path / "cvae", model, {})
    cfg = json.loads((tmp_path / "cvae" / "config.json").read_text())
    assert "augment" not in cfg["cvae"] and "describe" not in cfg["cvae"] and "embed_dim" not in cfg


def test_augmentation_draws_from_its_own_generator():
    """Pools that repeat the training condition change nothing: the slot draws touch no
    other RNG, so the weights equal the default's; real pools change them."""
    x, idx, mu, var, keys = _toy()
    base, _ = train_cvae(x, idx, mu, var, CVAESpec.from_dict(SPEC), threads=1, progress=False)
    same = (np.repeat(mu[:, None], 3, 1), np.repeat(var[:, None], 3, 1))
    aug, _ = train_cvae(x, idx, mu, var, CVAESpec.from_dict(SPEC | {"augment": 3}), threads=1, progress=False,
                        pools=same)
    _same_weights(base, aug)
    pools = augmented_conditions(keys, mu, var, 2, 0.1, 3, seed=0)
    real, _ = train_cvae(x, idx, mu, var, CVAESpec.from_dict(SPEC | {"augment": 3}), threads=1, progress=False,
                         pools=pools)
    assert not torch.equal(real.decoder[0].weight, base.decoder[0].weight)
    from sglora.io import SGLoraError

    with pytest.raises(SGLoraError, match="cvae.augment=3"):
        train_cvae(x, idx, mu, var, CVAESpec.from_dict(SPEC | {"augment": 3}), threads=1, progress=False)


# --- the description in the condition -----------------------------------------------------

def test_describe_widens_the_condition_and_sampling_reads_the_embedding(tmp_path):
    x, idx, mu, var, keys = _toy()
    spec = CVAESpec.from_dict(SPEC | {"describe": True})
    model, _ = train_cvae(x, idx, mu, var, spec, threads=1, progress=False, embeddings=keys)
    assert model.condition[0].in_features == 2 * x.shape[1] + keys.shape[1]
    assert CVAE(x.shape[1], CVAESpec.from_dict(SPEC)).condition[0].in_features == 2 * x.shape[1]
    draw = lambda m, e: m.sample(mu[0], var[0], 4, generator=torch.Generator().manual_seed(1), embedding=e)  # noqa: E731
    assert not torch.equal(draw(model, keys[0]), draw(model, keys[1]))  # same (mu*, var*), other d
    from sglora.io import SGLoraError

    with pytest.raises(SGLoraError, match="description embedding"):
        draw(model, None)
    save_cvae(tmp_path / "cvae", model, {})
    again, cfg = load_cvae(tmp_path / "cvae")
    assert cfg["embed_dim"] == keys.shape[1] and cfg["cvae"]["describe"] is True
    torch.testing.assert_close(draw(model, keys[2]), draw(again, keys[2]), rtol=0, atol=0)


CLI_CVAE = {"latent": 4, "hidden": 16, "cond_dim": 8, "epochs": 2, "batch_size": 4, "seed": 0, "device": "cpu"}
CLI_PRIOR = {"k": 2, "tau": 0.1, "modality": "textual"}


@pytest.fixture(scope="module")
def variant_cvaes(tmp_path_factory, tiny_repo):
    root = tmp_path_factory.mktemp("cvae_variants")
    out = {}
    for name, extra in {"plain": {}, "augment": {"augment": 3}, "describe": {"describe": True}}.items():
        assert main(["train-cvae", "--repository", str(tiny_repo), "--cvae", json.dumps(CLI_CVAE | extra),
                     "--prior", json.dumps(CLI_PRIOR), "--out", str(root / name), "--threads", "1"]) == 0
        out[name] = root / name
    return out


def test_sampling_passes_the_task_embedding_to_a_describe_cvae(variant_cvaes, tiny_repo, tiny_embeddings):
    from sglora.backbone.embed import read_embeddings
    from sglora.generator.sampling import sample_loras
    from sglora.generator.settings import PriorSpec
    from sglora.generator.prior import task_condition
    from sglora.experts.repository import Repository

    experts = Repository(tiny_repo).experts()
    emb = read_embeddings(tiny_embeddings)
    task = next(t for t in emb if t not in experts.tasks)
    query = emb[task]["text_embedding"]
    cvae, _ = load_cvae(variant_cvaes["describe"])
    prior = PriorSpec.from_dict(CLI_PRIOR)
    got, _ = sample_loras(cvae, experts, query, prior, 3, seed=5)
    mu, var, _ = task_condition(query, experts.text_embedding, experts.mu, experts.var, 2, 0.1, "loo")
    gen = lambda: torch.Generator().manual_seed(5)  # noqa: E731
    np.testing.assert_array_equal(got, cvae.sample(mu, var, 3, generator=gen(), embedding=query).numpy())
    other = experts.text_embedding[0]
    assert not np.array_equal(got, cvae.sample(mu, var, 3, generator=gen(), embedding=other).numpy())


def test_variants_are_told_apart_by_their_settings(variant_cvaes):
    from sglora.evaluation.method_selection import TrainedCVAEs

    store = TrainedCVAEs(list(variant_cvaes.values()))
    find = lambda **v: [d for _, d in store.variant("loo", 2, 0.1, **v)]  # noqa: E731
    assert find() == [str(variant_cvaes["plain"])]
    assert find(augment=3) == [str(variant_cvaes["augment"])]
    assert find(describe=True) == [str(variant_cvaes["describe"])]
    assert find(augment=3, describe=True) == []


# --- the mean of the samples --------------------------------------------------------------

def test_average_is_the_mean_of_the_samples_one_per_run(variant_cvaes, tiny_repo, tiny_embeddings):
    from sglora.generator.candidates import sglora_candidates
    from sglora.backbone.embed import read_embeddings
    from sglora.generator.settings import SamplingSpec
    from sglora.generator.settings import PriorSpec
    from sglora.experts.repository import Repository

    experts = Repository(tiny_repo).experts()
    emb = read_embeddings(tiny_embeddings)
    tasks = [t for t in emb if t not in experts.tasks][:2]
    models = [load_cvae(variant_cvaes["plain"])[0], load_cvae(variant_cvaes["augment"])[0]]  # two "runs"
    prior = PriorSpec.from_dict(CLI_PRIOR)
    each, _ = sglora_candidates(models, tasks, experts, emb, prior, SamplingSpec(samples=4))
    mean, info = sglora_candidates(models, tasks, experts, emb, prior, SamplingSpec(samples=4, average=True))
    for t in tasks:
        assert each[t].shape[0] == 8 and mean[t].shape[0] == 2 and info[t]["runs"] == [0, 1]
        np.testing.assert_allclose(mean[t], each[t].reshape(2, 4, -1).mean(1), rtol=1e-6, atol=1e-7)


# --- the ablation table -------------------------------------------------------------------

def _selection():
    rows, tasks = [], ["a", "b", "c"]
    for i, (aug, temp) in enumerate([(0, 0.0), (0, 1.0), (4, 0.0), (4, 1.0)]):
        settings = {"condition": "loo", "k": 2, "tau": 0.05, "augment": aug, "temperature": temp}
        per_task = {t: 10.0 * i + j for j, t in enumerate(tasks)}
        rows.append({"settings": settings, "score": float(np.mean(list(per_task.values()))), "per_task": per_task})
    return {"chosen": {"sglora": rows[3]["settings"]}, "scores": {"sglora": rows}, "tasks": tasks, "criterion": "x"}


def test_ablation_lists_every_point_with_the_chosen_and_the_paper_rows(tmp_path):
    sel = tmp_path / "sglora.json"
    sel.write_text(json.dumps(_selection()))
    paper = {"condition": "loo", "k": 2, "tau": 0.05, "temperature": 1.0, "augment": 0, "describe": False,
             "average": False}
    md, csv = tmp_path / "ablation.md", tmp_path / "ablation.csv"
    assert main(["ablation", "--selection", str(sel), "--paper", json.dumps(paper), "--markdown", str(md),
                 "--csv", str(csv), "--bootstrap", "200"]) == 0
    lines = [line for line in md.read_text().splitlines() if line.startswith("| loo")]
    assert len(lines) == 4
    assert "chosen on validation" in lines[3] and "**31.00**" in lines[3]
    assert "paper-faithful" in lines[1] and "chosen" not in lines[1]
    assert "+20.00" in lines[3]  # paired difference to the paper-faithful point
    rows = csv.read_text().splitlines()
    assert len(rows) == 5 and rows[0].endswith("chosen,paper")
    assert [r.split(",")[-2:] for r in rows[1:]] == [["0", "0"], ["0", "1"], ["0", "0"], ["1", "0"]]
    # a grid without the paper's point says so
    assert main(["ablation", "--selection", str(sel), "--paper", json.dumps(paper | {"k": 4}), "--markdown", str(md),
                 "--csv", str(csv), "--bootstrap", "200"]) == 0
    assert "not a point of this grid" in md.read_text()


# --- the paper-faithful row beside the selected one --------------------------------------

def test_sglora_paper_samples_at_its_fixed_point_whatever_was_selected(variant_cvaes, tiny_repo, tiny_embeddings,
                                                                         tmp_path):
    from sglora.generator.candidates import load_candidates
    from sglora.backbone.embed import read_embeddings
    from sglora.experts.repository import Repository

    experts = Repository(tiny_repo).experts()
    task = next(t for t in read_embeddings(tiny_embeddings) if t not in experts.tasks)
    selection = tmp_path / "selection.json"  # the selection chose a variant: augment 3, temperature 0
    selection.write_text(json.dumps({"chosen": {"sglora": {"condition": "loo", "augment": 3, "temperature": 0.0}}}))
    paper = {"condition": "loo", "k": 2, "tau": 0.1, "temperature": 1.0, "augment": 0, "describe": False,
             "average": False}
    common = ["--tasks", task, "--repository", str(tiny_repo), "--embeddings", str(tiny_embeddings),
              "--cvae", *map(str, variant_cvaes.values()), "--prior", json.dumps(CLI_PRIOR),
              "--sampling", json.dumps({"samples": 3, "runs": 1})]
    out = {}
    for name, extra in {"sglora": ["--selection", str(selection)], "sglora_paper": ["--settings", json.dumps(paper)],
                        "plain": ["--selection", str(tmp_path / "paper.json")]}.items():
        if name == "plain":  # the paper point through the selection path: the same draws
            (tmp_path / "paper.json").write_text(json.dumps({"chosen": {"sglora": paper}}))
        method = "sglora" if name == "plain" else name
        assert main(["candidates", "--method", method, *common, *extra, "--out", str(tmp_path / f"{name}.safetensors")]) == 0
        out[name] = load_candidates(tmp_path / f"{name}.safetensors")
    vec_paper, meta = out["sglora_paper"][0][task], out["sglora_paper"][2]
    assert meta["method"] == "sglora_paper" and meta["info"][task]["settings"] == paper
    np.testing.assert_array_equal(vec_paper, out["plain"][0][task])
    assert not np.array_equal(vec_paper, out["sglora"][0][task])  # the selected variant differs
    assert main(["candidates", "--method", "sglora_paper", *common, "--out", str(tmp_path / "x.safetensors")]) != 0


def test_tables_footnote_the_paper_rows_fixed_settings():
    from sglora.analyses.tables import selection_note

    note = selection_note({"sglora": {"condition": "all"}}, ["sglora", "sglora_paper"], {"condition": "loo", "k": 4})
    assert "SG-LoRA: condition=all" in note and "SG-LoRA (paper-faithful): fixed at the paper's settings" in note
    assert "condition=loo, k=4" in note
    assert "paper-faithful" not in selection_note({"sglora": {"condition": "all"}}, ["sglora"], {"condition": "loo"})


def test_noisy_expert_refuses_a_single_sglora_candidate(tiny_repo, tiny_embeddings):
    from sglora.backbone.embed import read_embeddings
    from sglora.generator.settings import SamplingSpec
    from sglora.baselines.generator_baselines import generator_candidates
    from sglora.io import SGLoraError
    from sglora.generator.settings import PriorSpec
    from sglora.experts.repository import Repository

    experts = Repository(tiny_repo).experts()
    emb = read_embeddings(tiny_embeddings)
    task = next(t for t in emb if t not in experts.tasks)
    one = {task: experts.mu[:1].astype(np.float32)}
    with pytest.raises(SGLoraError, match="sampling.runs >= 2"):
        generator_candidates("noisy_expert", [task], experts, emb, PriorSpec.from_dict(CLI_PRIOR),
                             SamplingSpec(samples=1, runs=1), sglora=one)
