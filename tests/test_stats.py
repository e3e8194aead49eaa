"""Bootstrap intervals (sglora.stats) against a plain loop written here on the same draws, and
their coverage on simulated groups whose true mean is known."""

import numpy as np
import pytest

from sglora.io import SGLoraError
from sglora.stats import bootstrap, group_stats, run_draws, run_hits, task_query_draws


def reference(hits: dict[str, list[np.ndarray]], n_boot: int, seed: int, chunk: int) -> dict[str, np.ndarray]:
    """One replicate at a time: draw slot by slot, query by query, run by run (loops only)."""
    n_q = [h.shape[1] for h in next(iter(hits.values()))]
    chunks = list(task_query_draws(n_q, n_boot, seed, chunk))
    tasks = np.concatenate([c[0] for c in chunks])
    queries = np.concatenate([c[1] for c in chunks])
    out = {}
    for m, per_task in hits.items():
        n_runs = per_task[0].shape[0]
        runs = np.concatenate(list(run_draws(m, n_runs, n_boot, seed, chunk)))
        reps = []
        for b in range(n_boot):
            total = 0.0
            for j in range(len(n_q)):
                t = tasks[b, j]
                s = 0.0
                for i in range(n_q[t]):
                    q = queries[b, j, i]
                    s += sum(per_task[t][r, q] for r in runs[b]) / len(runs[b])
                total += s / n_q[t]
            reps.append(100.0 * total / len(n_q))
        out[m] = np.array(reps)
    return out


def fake_result(rng, n_samples, n_images, captions=3, runs=None, kind="retrieval"):
    if kind == "classification":
        return {"correct": rng.integers(0, 2, (n_samples, n_images)).tolist(), "runs": runs or [0] * n_samples}
    return {"ranks": {"i2t": rng.integers(1, 12, (n_samples, n_images)).tolist(),
                      "t2i": rng.integers(1, 12, (n_samples, n_images * captions)).tolist()},
            "runs": runs or [0] * n_samples}


@pytest.mark.parametrize("equal_queries", [True, False])
def test_bootstrap_matches_loop_reference(equal_queries):
    rng = np.random.default_rng(1)
    n_images = [9, 9, 9, 9] if equal_queries else [9, 5, 12, 7]
    results = {
        "sglora": {f"t{t}": fake_result(rng, 6, n, runs=[0, 0, 1, 1, 2, 2]) for t, n in enumerate(n_images)},
        "topk_weighted": {f"t{t}": fake_result(rng, 1, n) for t, n in enumerate(n_images)},
        "pdiff": {f"t{t}": fake_result(rng, 4, n, runs=[5, 7, 7, 5]) for t, n in enumerate(n_images)},
    }
    for metric in ("i2t_r1", "t2i_r5"):
        hits = {m: run_hits(r, metric, m) for m, r in results.items()}
        got = bootstrap(hits, n_boot=60, seed=3, chunk=16)  # several chunks, the last one short
        want = reference(hits, n_boot=60, seed=3, chunk=16)
        for m in results:
            np.testing.assert_allclose(got[m], want[m], rtol=0, atol=1e-9)


def test_run_hits_average_samples_within_runs():
    res = {"ranks": {"i2t": [[1, 2], [3, 1], [1, 1]], "t2i": [[1], [1], [1]]}, "runs": [4, 9, 4]}
    (h,) = run_hits({"t": res}, "i2t_r1")
    np.testing.assert_array_equal(h, [[1.0, 0.5], [0.0, 1.0]])  # run 4: samples 0 and 2; run 9: sample 1
    (h,) = run_hits({"t": {"correct": [[1, 0, 1]], "runs": [0]}}, "accuracy")
    np.testing.assert_array_equal(h, [[1.0, 0.0, 1.0]])


def test_estimate_is_the_table_mean_and_identical_one_run_methods_differ_by_exactly_zero():
    rng = np.random.default_rng(2)
    res = {f"t{t}": fake_result(rng, 4, 10, runs=[0, 0, 1, 1]) for t in range(5)}
    g = group_stats({"a": res, "b": res}, "t2i_r1", n_boot=200)
    table_mean = np.mean([np.mean(np.asarray(r["ranks"]["t2i"]) <= 1) * 100 for r in res.values()])
    assert g.estimates["a"] == pytest.approx(table_mean)
    iv = g.interval("a")
    assert iv.lo <= iv.estimate <= iv.hi and iv.se > 0
    # each method's runs are drawn on its own, so only one-run methods pair exactly
    one = {t: {"ranks": r["ranks"], "runs": [0] * 4} for t, r in res.items()}
    d = group_stats({"a": one, "b": one}, "t2i_r1", n_boot=200).difference("a", "b")
    assert (d.estimate, d.lo, d.hi) == (0.0, 0.0, 0.0) and not d.excludes_zero()


def test_identical_runs_give_the_same_interval_as_one_run():
    """Run resampling only matters when runs differ: three copies of one run = that run."""
    rng = np.random.default_rng(3)
    one = {f"t{t}": fake_result(rng, 2, 10) for t in range(4)}
    three = {t: {"ranks": {d: r["ranks"][d] * 3 for d in ("i2t", "t2i")}, "runs": [0, 0, 1, 1, 2, 2]}
             for t, r in one.items()}
    a = group_stats({"m": one}, "i2t_r5", n_boot=300).replicates["m"]
    b = group_stats({"m": three}, "i2t_r5", n_boot=300).replicates["m"]
    np.testing.assert_allclose(a, b, atol=1e-9)


def test_differing_runs_widen_the_interval():
    rng = np.random.default_rng(4)
    base = rng.integers(0, 2, (8, 3, 40)).astype(float)  # tasks x runs x queries
    base[:, 1] = 1.0  # run 1 is perfect, run 2 is all wrong: a large between-run spread
    base[:, 2] = 0.0
    same = [np.repeat(b[:1], 3, axis=0) for b in base]
    spread = [b for b in base]
    w_same = np.ptp(np.percentile(bootstrap({"m": same}, 500)["m"], [2.5, 97.5]))
    w_spread = np.ptp(np.percentile(bootstrap({"m": spread}, 500)["m"], [2.5, 97.5]))
    assert w_spread > 2 * w_same


@pytest.mark.parametrize("n_tasks,n_queries", [(1, 60), (12, 40)])
def test_interval_covers_the_true_mean(n_tasks, n_queries):
    """Simulated groups: task difficulty p_t ~ Beta(4, 6) (true group mean 40%), queries
    Bernoulli(p_t). With one task only query resampling acts (true mean p_t); with 12, the
    tasks carry most of the spread. ~95% of the intervals must cover the truth."""
    rng = np.random.default_rng(5)
    covered, sims = 0, 150
    for s in range(sims):
        p = rng.beta(4, 6, n_tasks)
        truth = 100 * (p[0] if n_tasks == 1 else 0.4)
        hits = [(rng.random((1, n_queries)) < pt).astype(float) for pt in p]
        reps = bootstrap({"m": hits}, n_boot=400, seed=s)["m"]
        lo, hi = np.percentile(reps, [2.5, 97.5])
        covered += lo <= truth <= hi
    assert 0.88 <= covered / sims <= 0.99, covered / sims


def test_mismatched_queries_or_runs_are_named():
    rng = np.random.default_rng(6)
    with pytest.raises(SGLoraError, match="same test queries"):
        group_stats({"a": {"t": fake_result(rng, 1, 5)}, "b": {"t": fake_result(rng, 1, 6)}}, "i2t_r1")
    with pytest.raises(SGLoraError, match="same runs"):
        run_hits({"t0": fake_result(rng, 2, 5, runs=[0, 1]), "t1": fake_result(rng, 2, 5, runs=[0, 2])}, "i2t_r1", "x")
    with pytest.raises(SGLoraError, match="no per-query results"):
        run_hits({"t0": {"mean": {"i2t_r1": 3.0}}}, "i2t_r1", "x")


def test_evaluate_keeps_per_query_ranks_and_runs(tmp_path, tiny_world, tiny_clip):
    """evaluate_method stores each sample's ranks, consistent with its metrics, and the run of
    each sample from the candidates' info (absent: one run); a wrong count is named."""
    import json

    from sglora.backbone import load_clip
    from sglora.candidates import save_candidates
    from sglora.evaluate import evaluate_method
    from peft import get_peft_model_state_dict

    from sglora.lora import Layout, LoraSpec, add_lora
    from sglora.metrics import recall_from_ranks

    model, _ = load_clip(tiny_clip)
    peft_model = add_lora(model, LoraSpec(rank=2, target_modules=["q_proj"]))  # the shared initialisation
    layout = Layout.of(peft_model)
    v = layout.to_vector(get_peft_model_state_dict(peft_model))
    rng = np.random.default_rng(0)
    vectors = {"calla_lily": v[None] + 0.05 * rng.normal(size=(3, layout.dim))}
    cands = tmp_path / "c.safetensors"
    save_candidates(cands, vectors, layout, "sglora", {"calla_lily": {"runs": [0, 1, 1]}})
    evaluate_method(tiny_clip, tiny_world / "manifest.parquet", ["calla_lily"], "sglora", tmp_path / "m", cands, scaling=1.0)
    text = (tmp_path / "m" / "calla_lily.json").read_text()
    res = json.loads(text)
    assert res["runs"] == [0, 1, 1] and len(res["ranks"]["i2t"]) == 3
    for ranks, metrics in zip(zip(res["ranks"]["i2t"], res["ranks"]["t2i"]), res["per_sample"]):
        assert recall_from_ranks({"i2t": np.array(ranks[0]), "t2i": np.array(ranks[1])}) == metrics
    assert len(res["ranks"]["i2t"][0]) == 4 and "[" + ", ".join(map(str, res["ranks"]["i2t"][0])) + "]" in text
    evaluate_method(tiny_clip, tiny_world / "manifest.parquet", ["calla_lily"], "zero_shot", tmp_path / "z")
    assert json.loads((tmp_path / "z" / "calla_lily.json").read_text())["runs"] == [0]
    save_candidates(cands, vectors, layout, "sglora", {"calla_lily": {"runs": [0, 1]}})
    with pytest.raises(SGLoraError, match="2 run labels for 3 samples"):
        evaluate_method(tiny_clip, tiny_world / "manifest.parquet", ["calla_lily"], "sglora", tmp_path / "m", cands,
                        scaling=1.0)


def _power_loop(hits):
    """The split of sglora.stats.power, written out with plain loops."""
    means, within = [], []
    for h in hits:
        q = [100.0 * sum(h[r][i] for r in range(len(h))) / len(h) for i in range(len(h[0]))]
        m = sum(q) / len(q)
        means.append(m)
        within.append(sum((x - m) ** 2 for x in q) / (len(q) - 1) / len(q))
    mm = sum(means) / len(means)
    total = sum((x - mm) ** 2 for x in means) / (len(means) - 1)
    w = sum(within) / len(within)
    return max(total - w, 0.0), w


def test_power_splits_the_variance_like_a_plain_loop():
    from sglora.stats import power, tasks_for

    rng = np.random.default_rng(4)
    # 40 tasks whose true hit rates spread (between-task SD 8 points), 2 runs x 60 queries each
    p = np.clip(rng.normal(0.3, 0.08, size=40), 0.02, 0.98)
    hits = [(rng.random((2, 60)) < pt).astype(float) for pt in p]
    split = power(hits)
    between, within = _power_loop(hits)
    assert split.tasks == 40
    assert split.between == pytest.approx(between) and split.within == pytest.approx(within)
    assert split.between_share == pytest.approx(between / (between + within))
    assert 30 < split.between < 100 and 10 < split.within < 30  # ~64 and ~0.3*0.7/120*1e4 = 17.5
    # identical tasks: nothing between them
    same = power([hits[0]] * 5)
    assert same.between == 0.0 and same.between_share == 0.0
    # tasks needed for a target SE: the squared SE falls as 1 / tasks
    assert tasks_for(2.0, 12, 1.0) == 48 and tasks_for(1.5, 12, 1.0) == 27 and tasks_for(0.5, 12, 1.0) == 3
    assert tasks_for(0.1, 12, 1.0) == 1
