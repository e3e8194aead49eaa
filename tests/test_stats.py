"""Bootstrap intervals (sglora.evaluation.stats) against a plain loop written here on the same draws, and
their coverage on simulated groups whose true mean is known (with and without families)."""

import numpy as np
import pytest

from sglora.io import SGLoraError
from sglora.evaluation.stats import bootstrap, group_stats, run_draws, run_hits, task_query_draws


def reference(hits: dict[str, list[np.ndarray]], n_boot: int, seed: int, chunk: int,
              families=None) -> dict[str, np.ndarray]:
    """One replicate at a time: draw slot by slot, query by query, run by run (loops only);
    the replicate is the mean over the slots that count; then each replicate's deviation from
    the replicates' mean is scaled by sqrt(U / (U - 1)), U the families (or tasks) there are."""
    n_q = [h.shape[1] for h in next(iter(hits.values()))]
    chunks = list(task_query_draws(n_q, n_boot, seed, chunk, families))
    tasks = np.concatenate([c[0] for c in chunks])
    queries = np.concatenate([c[1] for c in chunks])
    valid = np.concatenate([np.ones(c[0].shape, bool) if c[2] is None else c[2] for c in chunks])
    out = {}
    for m, per_task in hits.items():
        n_runs = per_task[0].shape[0]
        runs = np.concatenate(list(run_draws(m, n_runs, n_boot, seed, chunk)))
        reps = []
        for b in range(n_boot):
            total, slots = 0.0, 0
            for j in range(tasks.shape[1]):
                if not valid[b, j]:
                    continue
                t = tasks[b, j]
                s = 0.0
                for i in range(n_q[t]):
                    q = queries[b, j, i]
                    s += sum(per_task[t][r, q] for r in runs[b]) / len(runs[b])
                total += s / n_q[t]
                slots += 1
            reps.append(100.0 * total / slots)
        units = len(n_q) if families is None else len(set(families))
        centre = sum(reps) / len(reps)
        out[m] = np.array([centre + (units / (units - 1)) ** 0.5 * (r - centre) for r in reps])
    return out


def fake_result(rng, n_samples, n_images, captions=3, runs=None, kind="retrieval"):
    if kind == "classification":
        return {"correct": rng.integers(0, 2, (n_samples, n_images)).tolist(), "runs": runs or [0] * n_samples}
    return {"ranks": {"i2t": rng.integers(1, 12, (n_samples, n_images)).tolist(),
                      "t2i": rng.integers(1, 12, (n_samples, n_images * captions)).tolist()},
            "runs": runs or [0] * n_samples}


@pytest.mark.parametrize("families", [None, ["a", "a", "b", "b"], ["a", "b", "a", "a"]],
                         ids=["tasks", "equal-families", "unequal-families"])
@pytest.mark.parametrize("equal_queries", [True, False])
def test_bootstrap_matches_loop_reference(equal_queries, families):
    rng = np.random.default_rng(1)
    n_images = [9, 9, 9, 9] if equal_queries else [9, 5, 12, 7]
    results = {
        "sglora": {f"t{t}": fake_result(rng, 6, n, runs=[0, 0, 1, 1, 2, 2]) for t, n in enumerate(n_images)},
        "topk_weighted": {f"t{t}": fake_result(rng, 1, n) for t, n in enumerate(n_images)},
        "pdiff": {f"t{t}": fake_result(rng, 4, n, runs=[5, 7, 7, 5]) for t, n in enumerate(n_images)},
    }
    for metric in ("i2t_r1", "t2i_r5"):
        hits = {m: run_hits(r, metric, m) for m, r in results.items()}
        got = bootstrap(hits, n_boot=60, seed=3, chunk=16, families=families)  # several chunks, the last one short
        want = reference(hits, n_boot=60, seed=3, chunk=16, families=families)
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

    from sglora.backbone.clip import load_clip
    from sglora.generator.candidates import save_candidates
    from sglora.evaluation.scoring import evaluate_method
    from peft import get_peft_model_state_dict

    from sglora.experts.lora import Layout, LoraSpec, add_lora
    from sglora.evaluation.metrics import recall_from_ranks

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


def test_family_draws_draw_families_then_their_own_tasks():
    """Each replicate: F family blocks, each holding only one family's tasks, as many counted
    slots as the family has tasks; families and tasks within them uniform."""
    fams = ["x", "y", "x", "z", "x", "y"]  # x: tasks 0, 2, 4; y: 1, 5; z: 3
    size = {"x": 3, "y": 2, "z": 1}
    ((tasks, queries, valid),) = task_query_draws([5, 5, 5, 5, 5, 5], n_boot=3000, seed=1, chunk=3000, families=fams)
    assert tasks.shape == (3000, 9) and queries.shape == (3000, 9, 5) and valid.shape == (3000, 9)
    firsts = []
    for b in range(3000):
        for f in range(3):
            block, ok = tasks[b, 3 * f : 3 * f + 3], valid[b, 3 * f : 3 * f + 3]
            fam = fams[block[0]]
            assert {fams[t] for t in block} == {fam}
            assert ok.sum() == size[fam] and ok[: size[fam]].all()
            firsts.append(fam)
    share = {f: firsts.count(f) / len(firsts) for f in size}
    assert all(abs(v - 1 / 3) < 0.02 for v in share.values()), share
    x_tasks = tasks[:, 0:3][valid[:, 0:3] & np.isin(tasks[:, 0:3], [0, 2, 4])]
    assert all(abs(np.mean(x_tasks == t) - 1 / 3) < 0.02 for t in (0, 2, 4))


def test_tasks_each_their_own_family_are_the_task_bootstrap():
    rng = np.random.default_rng(7)
    res = {f"t{t}": fake_result(rng, 4, n, runs=[0, 0, 1, 1]) for t, n in enumerate([8, 8, 11, 6])}
    a = group_stats({"m": res}, "i2t_r1", n_boot=300)
    b = group_stats({"m": res}, "i2t_r1", n_boot=300, families={t: t for t in res})
    np.testing.assert_array_equal(a.replicates["m"], b.replicates["m"])
    assert a.resampled == "the 4 tasks, test queries and runs"
    assert b.resampled == "the 4 tasks (each its own family), test queries and runs"
    fams = {"t0": "p", "t1": "p", "t2": "q", "t3": "q"}
    assert group_stats({"m": res}, "i2t_r1", n_boot=50, families=fams).resampled == \
        "the 2 families, the tasks of each drawn family, test queries and runs"
    with pytest.raises(SGLoraError, match=r"no family given for tasks \['t3'\]"):
        group_stats({"m": res}, "i2t_r1", n_boot=50, families={"t0": "p", "t1": "p", "t2": "q"})


def test_bootstrap_variance_is_the_two_stage_closed_form():
    """One run: a replicate draws a family (variance of family means, sB2), a task in it (the
    within-family variance of task means over m, sW2), queries (their variance over m Q);
    its mean over F families has variance (sB2 + sW2 / m + sQ2 / (m Q)) / F (variances with
    1/n: the bootstrap's own population), and the small-sample widening multiplies it by
    F / (F - 1) (the task bootstrap's by T / (T - 1))."""
    rng = np.random.default_rng(8)
    F, m, Q = 5, 3, 12
    p = np.repeat(rng.uniform(0.1, 0.9, F), m) + rng.normal(0, 0.08, F * m)
    hits = [(rng.random((1, Q)) < pt).astype(float) for pt in p]
    fams = [f for f in range(F) for _ in range(m)]
    x = 100 * np.stack([h[0] for h in hits])  # tasks x queries
    task_means = x.mean(1)
    fam_means = task_means.reshape(F, m).mean(1)
    sB2 = fam_means.var()
    sW2 = np.mean([task_means.reshape(F, m)[f].var() for f in range(F)])
    sQ2 = x.var(1).mean()
    closed = (sB2 + sW2 / m + sQ2 / (m * Q)) / F * F / (F - 1)
    got = bootstrap({"m": hits}, n_boot=8000, seed=9, families=fams)["m"].var(ddof=1)
    assert got == pytest.approx(closed, rel=0.08)
    # the task bootstrap: T tasks drawn independently, (var of task means + sQ2 / Q) / T
    closed_tasks = (task_means.var() + sQ2 / Q) / (F * m) * (F * m) / (F * m - 1)
    got_tasks = bootstrap({"m": hits}, n_boot=8000, seed=9)["m"].var(ddof=1)
    assert got_tasks == pytest.approx(closed_tasks, rel=0.08)


@pytest.mark.parametrize("F,m", [(6, 2), (6, 1), (12, 2)], ids=["6x2", "6x1", "12x2"])
def test_family_bootstrap_covers_where_the_task_bootstrap_does_not(F, m):
    """Simulated groups of F families x m tasks (the embedded default's groups: 6 x 2, 6 x 1): a
    family's hit rate mu_f ~ Beta(4, 6) (true group mean 40%), each member's p ~ Beta(50 mu_f,
    50 (1 - mu_f)) (close to its family's), 20 Bernoulli(p) test queries per task (about
    30% of a task mean's variance). 1000 groups: a coverage is known to +-0.7 points (one
    SE), so 95 +- 2.5 is a band of about 3.5 SE. The family bootstrap (with its small-sample
    widening) covers; with 2 tasks per family the task bootstrap treats them as independent
    and under-covers; with 1 the two are the same bootstrap. 50 groups share one call's
    draws, as a group's methods do (each batch its own seed)."""
    rng = np.random.default_rng(10)
    sims, Q, batch = 1000, 20, 50
    fams = [f for f in range(F) for _ in range(m)]
    mu = np.repeat(rng.beta(4, 6, (sims, F)), m, axis=1)  # sims x tasks
    p = rng.beta(50 * mu, 50 * (1 - mu))
    data = (rng.random((sims, F * m, Q)) < p[..., None]).astype(float)
    covered = {"task": 0, "family": 0}
    for b in range(0, sims, batch):
        hits = {str(s): [data[s, t][None] for t in range(F * m)] for s in range(b, b + batch)}
        reps = {unit: bootstrap(hits, n_boot=400, seed=b, families=f) for unit, f in (("task", None), ("family", fams))}
        if m == 1:
            assert all(np.array_equal(reps["task"][s], reps["family"][s]) for s in hits)
        for unit, r in reps.items():
            lo, hi = np.percentile(np.stack(list(r.values())), [2.5, 97.5], axis=1)
            covered[unit] += int(((lo <= 40.0) & (40.0 <= hi)).sum())
    coverage = {u: 100 * c / sims for u, c in covered.items()}
    print(f"coverage of 95% intervals, {sims} groups of {F} families x {m} tasks: task bootstrap "
          f"{coverage['task']:.1f}%, family bootstrap {coverage['family']:.1f}%")
    assert 92.5 <= coverage["family"] <= 97.5, coverage
    if m > 1:
        assert coverage["task"] < 92.5, coverage


def _power_loop(hits):
    """The split of sglora.evaluation.stats.power, written out with plain loops."""
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


def _power_families_loop(hits, families):
    """Family means and their query variance, with plain loops: a family's mean is the mean of
    its tasks' means, its query variance the sum of theirs over n_f squared."""
    by = {}
    for t, f in enumerate(families):
        by.setdefault(f, []).append(t)
    means, within = [], []
    for tasks in by.values():
        ms, ws = [], []
        for t in tasks:
            h = hits[t]
            q = [100.0 * sum(h[r][i] for r in range(len(h))) / len(h) for i in range(len(h[0]))]
            mt = sum(q) / len(q)
            ms.append(mt)
            ws.append(sum((x - mt) ** 2 for x in q) / (len(q) - 1) / len(q))
        means.append(sum(ms) / len(ms))
        within.append(sum(ws) / len(ws) ** 2)
    mm = sum(means) / len(means)
    total = sum((x - mm) ** 2 for x in means) / (len(means) - 1)
    w = sum(within) / len(within)
    return len(means), max(total - w, 0.0), w


def test_power_counts_families_under_the_family_bootstrap():
    from sglora.evaluation.stats import DETECTABLE, power, units_for

    rng = np.random.default_rng(11)
    fam_p = rng.uniform(0.2, 0.6, 10)
    families = [f"f{f}" for f in range(10) for _ in range(2)] + ["f3"]  # f3 has three tasks
    p = np.clip(np.array([fam_p[int(f[1:])] for f in families]) + rng.normal(0, 0.03, len(families)), 0.02, 0.98)
    hits = [(rng.random((2, 30)) < pt).astype(float) for pt in p]
    split = power(hits, families)
    units, between, within = _power_families_loop(hits, families)
    assert (split.units, split.unit) == (units, "family") == (10, "family")
    assert split.between == pytest.approx(between) and split.within == pytest.approx(within)
    alone = power(hits, [str(t) for t in range(len(hits))])  # every task its own family: per task
    assert (alone.units, alone.unit) == (len(hits), "task")
    assert (alone.between, alone.within) == pytest.approx(_power_loop(hits))
    # units needed for a target SE: the least n with se^2 * units / n <= target^2, by a plain loop
    for se, have in ((2.0, 6), (1.5, 6), (1.01, 12), (0.5, 6), (2.3, 7)):
        n = 1
        while se**2 * have / n > 1.0 + 1e-12:
            n += 1
        assert units_for(se, have, 1.0) == n
    # the minimum detectable difference: a true difference of DETECTABLE SEs is resolved
    # (|estimate| / SE > z(0.975)) with probability 0.80
    from statistics import NormalDist

    z = NormalDist().inv_cdf(0.975)
    assert DETECTABLE == pytest.approx(2.80, abs=0.005)
    assert NormalDist().cdf(DETECTABLE - z) + NormalDist().cdf(-DETECTABLE - z) == pytest.approx(0.80, abs=1e-4)


def test_power_splits_the_variance_like_a_plain_loop():
    from sglora.evaluation.stats import power, units_for

    rng = np.random.default_rng(4)
    # 40 tasks whose true hit rates spread (between-task SD 8 points), 2 runs x 60 queries each
    p = np.clip(rng.normal(0.3, 0.08, size=40), 0.02, 0.98)
    hits = [(rng.random((2, 60)) < pt).astype(float) for pt in p]
    split = power(hits)
    between, within = _power_loop(hits)
    assert split.units == 40 and split.unit == "task"
    assert split.between == pytest.approx(between) and split.within == pytest.approx(within)
    assert split.between_share == pytest.approx(between / (between + within))
    assert 30 < split.between < 100 and 10 < split.within < 30  # ~64 and ~0.3*0.7/120*1e4 = 17.5
    # identical tasks: nothing between them
    same = power([hits[0]] * 5)
    assert same.between == 0.0 and same.between_share == 0.0
    # tasks needed for a target SE (no families): the squared SE falls as 1 / tasks
    assert units_for(2.0, 12, 1.0) == 48 and units_for(1.5, 12, 1.0) == 27 and units_for(0.5, 12, 1.0) == 3
    assert units_for(0.1, 12, 1.0) == 1
    # a part more units leave as it is (the training replicates'): counted out, None when it alone is too wide
    assert units_for(1.0, 12, 0.8, fixed=0.25) == 24 and units_for(2.0, 12, 1.0, fixed=0.5) is None
    assert units_for(2.0, 12, 1.0, fixed=0.0) == units_for(2.0, 12, 1.0) == 48
