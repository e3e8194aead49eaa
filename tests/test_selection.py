"""Seen-task conditions built as in training, and settings chosen on validation tasks only."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from sglora.cli import main

CVAE = {"latent": 4, "hidden": 32, "cond_dim": 8, "epochs": 3, "batch_size": 4, "seed": 0, "device": "cpu"}
PRIOR = {"k": 2, "tau": 0.1, "modality": "textual"}


@pytest.fixture(scope="module")
def cvaes(tmp_path_factory, tiny_repo):
    """One tiny CVAE per training-condition mode, trained through the CLI."""
    root = tmp_path_factory.mktemp("cvae")
    out = {}
    for mode in ("loo", "all", "self"):
        assert main(["train-cvae", "--repository", str(tiny_repo), "--cvae", json.dumps(CVAE | {"condition": mode}),
                     "--prior", json.dumps(PRIOR), "--out", str(root / mode), "--threads", "1"]) == 0
        out[mode] = root / mode
    return out


@pytest.mark.parametrize("mode", ["loo", "all", "self"])
def test_seen_task_is_sampled_with_its_training_condition(tmp_path, mode, cvaes, tiny_repo, tiny_embeddings):
    """A seen task's samples come from exactly the condition its snapshots were trained with:
    under ``loo`` the task is not among its own experts."""
    from sglora.generator.candidates import load_candidates
    from sglora.generator.cvae import load_cvae
    from sglora.generator.sampling import task_seed
    from sglora.generator.prior import training_conditions
    from sglora.experts.repository import Repository

    out = tmp_path / "seen.safetensors"
    task = "scottish_terrier"
    assert main(["candidates", "--method", "sglora", "--seen", "--tasks", task, "--repository", str(tiny_repo),
                 "--embeddings", str(tiny_embeddings), "--cvae", str(cvaes[mode]), "--prior", json.dumps(PRIOR),
                 "--sampling", json.dumps({"samples": 3, "seed": 5}), "--out", str(out)]) == 0
    vecs, _, meta = load_candidates(out)
    experts = Repository(tiny_repo).experts()
    n = experts.tasks.index(task)
    cm, cv = training_conditions(experts.text_embedding, experts.mu, experts.var, PRIOR["k"], PRIOR["tau"], mode)
    model, _ = load_cvae(cvaes[mode])
    expected = model.sample(cm[n], cv[n], 3, generator=torch.Generator().manual_seed(task_seed(5, task))).numpy()
    np.testing.assert_array_equal(vecs[task], expected)
    used = [e["task"] for e in meta["info"][task]["experts"]]
    if mode == "loo":
        assert task not in used
    elif mode == "all":
        assert used[0] == task
    else:
        assert used == [task]


def test_unseen_task_condition_is_the_aggregator_over_all_experts(tmp_path, cvaes, tiny_repo, tiny_embeddings):
    from sglora.generator.candidates import load_candidates
    from sglora.backbone.embed import read_embeddings
    from sglora.generator.prior import semantic_prior
    from sglora.experts.repository import Repository

    out = tmp_path / "unseen.safetensors"
    assert main(["candidates", "--method", "sglora", "--tasks", "calla_lily", "--repository", str(tiny_repo),
                 "--embeddings", str(tiny_embeddings), "--cvae", str(cvaes["loo"]), "--prior", json.dumps(PRIOR),
                 "--sampling", json.dumps({"samples": 2, "seed": 0, "temperature": 0.0}), "--out", str(out)]) == 0
    vecs, _, meta = load_candidates(out)
    experts = Repository(tiny_repo).experts()
    p = semantic_prior(read_embeddings(tiny_embeddings)["calla_lily"]["text_embedding"], experts.text_embedding,
                       experts.mu, experts.var, PRIOR["k"], PRIOR["tau"])
    assert [e["task"] for e in meta["info"]["calla_lily"]["experts"]] == [experts.tasks[i] for i in p.experts]
    # temperature 0: the decoded mean of p(z | c), the same for every sample
    np.testing.assert_array_equal(vecs["calla_lily"][0], vecs["calla_lily"][1])


def _select(tmp_path, tiny_clip, manifest, tiny_repo, tiny_embeddings, cvaes, name):
    out = tmp_path / f"{name}.json"
    grid = {"sglora": {"condition": ["loo", "all"], "k": [2], "tau": [0.1], "temperature": [0.0, 1.0]},
            "topk_weighted": {"k": [1, 2], "tau": [0.1]}, "adaptersoup": {"k": [1, 2]}}
    assert main(["select", "--backbone", tiny_clip, "--manifest", str(manifest), "--tasks", "yorkshire_terrier",
                 "--grid", json.dumps(grid), "--repository", str(tiny_repo), "--embeddings", str(tiny_embeddings),
                 "--cvae", str(cvaes["loo"]), str(cvaes["all"]), "--prior", json.dumps(PRIOR),
                 "--sampling", json.dumps({"samples": 2, "seed": 0}), "--lora", "{}", "--out", str(out)]) == 0
    return json.loads(out.read_text())


def _with_captions(src, dst, task, change):
    """A copy of a manifest whose ``task`` rows get ``change(list of caption lists)``."""
    from sglora.data.manifest import make_manifest, write_manifest

    rows = pq.read_table(src).to_pylist()
    mine = [r for r in rows if r["task"] == task]
    for r, caps in zip(mine, change([list(r["captions"]) for r in mine])):
        r["captions"] = caps
    write_manifest(dst, make_manifest(rows))
    return dst


def test_selection_does_not_look_at_test_tasks(tmp_path, tiny_world, tiny_clip, tiny_repo, tiny_embeddings, cvaes,
                                               monkeypatch):
    """Selection reads the validation task's rows only; changing a test task's captions
    changes nothing in selection.json; the scores are the validation task's own metrics."""
    import sglora.evaluation.scoring as ev
    from sglora.backbone.clip import load_clip
    from sglora.generator.settings import SamplingSpec
    from sglora.generator.settings import PriorSpec
    from sglora.experts.repository import Repository
    from sglora.evaluation.method_selection import method_candidates

    manifest = tiny_world / "manifest.parquet"
    asked = []
    real = ev.read_manifest
    monkeypatch.setattr(ev, "read_manifest", lambda path, tasks=None: asked.append(tasks) or real(path, tasks))
    base = _select(tmp_path, tiny_clip, manifest, tiny_repo, tiny_embeddings, cvaes, "base")
    assert asked and all(t == ["yorkshire_terrier"] for t in asked), asked
    assert set(base["chosen"]) == {"sglora", "topk_weighted", "adaptersoup"}
    assert len(base["scores"]["sglora"]) == 4 and base["tasks"] == ["yorkshire_terrier"]
    for s in base["scores"]["sglora"]:
        assert set(s["per_task"]) == {"yorkshire_terrier"}
    test_changed = _with_captions(manifest, tmp_path / "test_changed.parquet", "calla_lily",
                                  lambda rows: [["a completely different caption"] * len(c) for c in rows])
    _select(tmp_path, tiny_clip, test_changed, tiny_repo, tiny_embeddings, cvaes, "test_changed")
    assert (tmp_path / "test_changed.json").read_bytes() == (tmp_path / "base.json").read_bytes()
    # a grid point's score is its candidates' metrics on the validation task, computed directly
    repo = Repository(tiny_repo)
    from sglora.backbone.embed import read_embeddings

    settings = base["scores"]["topk_weighted"][1]["settings"]
    vecs, _ = method_candidates("topk_weighted", settings, ["yorkshire_terrier"], repo.experts(),
                                read_embeddings(tiny_embeddings), PriorSpec.from_dict(PRIOR), SamplingSpec())
    model, processor = load_clip(tiny_clip)
    m = ev.evaluate_vectors(model, processor, ev.load_task(manifest, "yorkshire_terrier", processor),
                            vecs["yorkshire_terrier"], repo.layout, repo.lora.scaling)[0]
    assert base["scores"]["topk_weighted"][1]["score"] == pytest.approx((m["i2t_r1"] + m["t2i_r1"]) / 2)


def test_selection_picks_the_best_validation_score_and_candidates_use_it(tmp_path, tiny_world, tiny_clip, tiny_repo,
                                                                        tiny_embeddings, cvaes):
    from sglora.generator.candidates import load_candidates

    sel = _select(tmp_path, tiny_clip, tiny_world / "manifest.parquet", tiny_repo, tiny_embeddings, cvaes, "sel")
    for method, rows in sel["scores"].items():
        best = max(rows, key=lambda r: r["score"])
        assert sel["chosen"][method] == best["settings"] or rows[[r["settings"] for r in rows].index(sel["chosen"][method])]["score"] == best["score"]
    out = tmp_path / "topk.safetensors"
    assert main(["candidates", "--method", "topk_weighted", "--tasks", "calla_lily", "--repository", str(tiny_repo),
                 "--embeddings", str(tiny_embeddings), "--prior", json.dumps(PRIOR), "--selection",
                 str(tmp_path / "sel.json"), "--out", str(out)]) == 0
    _, _, meta = load_candidates(out)
    assert meta["info"]["calla_lily"]["settings"] == sel["chosen"]["topk_weighted"]
    assert len(meta["info"]["calla_lily"]["experts"]) == sel["chosen"]["topk_weighted"]["k"]


def test_grid_refuses_unknown_settings():
    from sglora.io import SGLoraError
    from sglora.evaluation.method_selection import check_grid

    with pytest.raises(SGLoraError, match="selection.topk_weighted.temperature"):
        check_grid({"topk_weighted": {"temperature": [1.0]}})
    with pytest.raises(SGLoraError, match="selection.mole"):
        check_grid({"mole": {"k": [1]}})


def test_identical_candidates_are_evaluated_once_with_the_same_results(tiny_world, tiny_clip, tiny_repo, monkeypatch):
    """Temperature-0 samples are identical rows: each distinct LoRA is evaluated once and
    every row still gets its own (identical) per-query results."""
    import sglora.evaluation.scoring as ev
    from sglora.backbone.clip import load_clip
    from sglora.experts.repository import Repository

    repo = Repository(tiny_repo)
    model, processor = load_clip(tiny_clip)
    data = ev.load_task(tiny_world / "manifest.parquet", "calla_lily", processor)
    mu = repo.experts().mu
    rows = np.stack([mu[1], mu[0], mu[1], mu[1], mu[2]])
    calls = []
    real = ev.score_queries
    monkeypatch.setattr(ev, "score_queries", lambda *a: calls.append(1) or real(*a))
    got = ev.evaluate_queries(model, processor, data, rows, repo.layout, repo.lora.scaling)
    assert len(calls) == 3 and len(got) == 5
    one = [ev.evaluate_queries(model, processor, data, r[None], repo.layout, repo.lora.scaling)[0] for r in rows]
    for a, b in zip(got, one):
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])


def test_a_tasks_texts_are_tokenized_once_and_score_as_before(tiny_world, tiny_clip, tiny_repo, monkeypatch):
    """Scoring several LoRAs on a task tokenizes its captions once (in load_task), and the
    cached tokens give exactly the embeddings and ranks of tokenizing on every call."""
    import sglora.backbone.clip as bb
    import sglora.evaluation.scoring as ev
    from sglora.experts.repository import Repository

    repo = Repository(tiny_repo)
    model, processor = bb.load_clip(tiny_clip)
    calls = []
    real = bb.tokenize
    monkeypatch.setattr(bb, "tokenize", lambda *a, **k: calls.append(1) or real(*a, **k))
    data = ev.load_task(tiny_world / "manifest.parquet", "calla_lily", processor)
    after_load = len(calls)
    assert after_load >= 1
    mu = repo.experts().mu
    got = ev.evaluate_queries(model, processor, data, mu[:3], repo.layout, repo.lora.scaling)
    assert len(calls) == after_load  # three LoRAs scored, no tokenizing
    uncached = ev.TaskData(data.task, data.kind, data.pixels, data.texts, data.targets, data.gallery)
    want = ev.evaluate_queries(model, processor, uncached, mu[:3], repo.layout, repo.lora.scaling)
    assert len(calls) == after_load + 3 * after_load
    for a, b in zip(got, want):
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])
    small = bb.encode_texts(model, processor, data.texts, batch=2)  # other batching: same embeddings
    torch.testing.assert_close(small, bb.encode_texts(model, processor, data.texts, tokens=data.tokens),
                               atol=1e-5, rtol=0)
