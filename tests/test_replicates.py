"""Training replicates: a replicate's config differs from the run's in its training seeds (and
where it writes) only, in the DAG as in the config; the tables pool the replicates (drawn first
by the bootstrap) and list each replicate's verdict."""

from __future__ import annotations

import csv
import re

import numpy as np
import pytest
import yaml

from conftest import ROOT
from sglora.cli import main
from sglora.evaluation.replicates import (REPLICATE_STRIDE, pretrain_seed, replicate_config, replicate_results,
                                          training_seed_keys)
from sglora.evaluation.stats import (bootstrap, group_stats, pooled_bootstrap, pooled_group_stats, run_hits, units_for,
                                    verdict)
from sglora.analyses.tables import load_group, write_tables
from sglora.io import SGLoraError
from test_tables import TASKS, folders, write_method


def test_a_replicate_moves_every_training_seed_and_nothing_else():
    cfg = yaml.safe_load((ROOT / "config.yaml").read_text())
    for k in (1, 2):
        rep = replicate_config(cfg, k)
        assert rep["replicate"] == k and rep["results"] == f"{cfg['results']}/replicates/{k}"
        assert rep["results"] == replicate_results(cfg["results"], k) and rep["results_page"]["path"] is None
        assert rep["seed"] == cfg["seed"]  # the world's seed
        assert pretrain_seed(rep) == pretrain_seed(cfg) + k * REPLICATE_STRIDE
        for section, key in training_seed_keys():
            assert rep[section][key] == cfg.get(section, {}).get(key, 0) + k * REPLICATE_STRIDE, (section, key)
        rest = {s: ({kk: v for kk, v in part.items() if (s, kk) not in training_seed_keys()} if isinstance(part, dict)
                    else part) for s, part in rep.items() if s not in ("replicate", "results", "results_page")}
        orig = {s: ({kk: v for kk, v in part.items() if (s, kk) not in training_seed_keys()} if isinstance(part, dict)
                    else part) for s, part in cfg.items() if s not in ("results", "results_page")}
        assert {s: v for s, v in rest.items() if v != {}} == {s: v for s, v in orig.items() if v != {}}
    # the CVAE runs of replicates never share a seed (runs use cvae.seed + r)
    runs = cfg["sampling"]["runs"]
    seeds = [replicate_config(cfg, k)["cvae"]["seed"] + r for k in (1, 2) for r in range(runs)]
    assert len(set(seeds + [cfg["cvae"]["seed"] + r for r in range(runs)])) == 3 * runs
    with pytest.raises(ValueError, match="replicates 1, 2"):
        replicate_config(cfg, 0)


def _normalised(command: str, results: str, world: str) -> str:
    """A job's command with its results folder (and the run's world folder ``world``, which a
    replicate reads) replaced and the seeds a replicate moves left out (a replicate writes the
    seed of a section the run leaves to its default)."""
    command = re.sub(rf"{re.escape(world)}/data/([^/ ]+)/world\b", r"<W>/data/\1/world", command)
    command = command.replace(results, "<R>")
    command = re.sub(r'"(?:init_)?seed": \d+(, )?', "", command).replace(", }", "}")
    return re.sub(r"--seed (\d+)", lambda m: f"--seed {int(m.group(1)) % REPLICATE_STRIDE}", command)


def test_the_dag_of_a_replicate_differs_in_its_training_seeds_only(tmp_path):
    """config/tiny.yaml with replicates: 2: replicate 1's jobs are replicate 0's, rule for rule,
    in <results>/replicates/1, with the training seeds moved (and nothing else) and the world
    read from replicate 0 (not generated again); the pooled tables read both replicates'
    metrics and the results page reads them."""
    from test_presets import dry_run_jobs

    cfg = yaml.safe_load((ROOT / "config/tiny.yaml").read_text())
    results = str(tmp_path / "results")
    cfg["results"], cfg["replicates"] = results, 2
    jobs = dry_run_jobs(cfg, tmp_path)
    mine = {}
    for j in jobs:
        if not j["shell"]:
            continue
        theirs = j["rule"].startswith("replicate_1_")
        root = f"{results}/replicates/1" if theirs else results
        mine.setdefault(theirs, {}).setdefault(j["rule"].removeprefix("replicate_1_"), []).append(j["shell"])
    run, rep = mine[False], mine[True]
    assert set(rep) == set(run) - {"tables_pooled", "all", "world"}  # one world, replicate 0's
    for rule in set(rep) - {"results_page"}:  # replicate 0's page also shows the pooled tables
        a = sorted(_normalised(c, results, results) for c in run[rule])
        b = sorted(_normalised(c, f"{results}/replicates/1", results) for c in rep[rule])
        assert a == b, rule
    made = [re.search(r"--out (\S+) ", j["shell"]).group(1) for j in jobs if j["rule"] == "world"]
    assert made and all(w.startswith(f"{results}/data/") for w in made)  # replicate 0's folder only
    reads = {f for j in jobs if j["rule"].startswith("replicate_1_") for f in j["input"]}
    assert {f"{w}/manifest.raw.parquet" for w in made} <= reads
    assert not any(re.search(r"/replicates/1/data/[^/]+/world/", f) for f in reads)
    moved = [c for rule in ("pretrain_backbone", "train_cvae") for c in rep[rule]]
    assert all(re.search(r'(seed": |--seed )1\d\d\d\b', c) for c in moved)  # 1000 + the CVAE's run
    assert all(re.search(r'"init_seed": 1000', c) for r, cs in rep.items() if r.startswith("train_lora") for c in cs)
    (pooled,) = run["tables_pooled"]
    assert f"{results}/replicates/1/metrics/in_dataset/sglora" in pooled and f"{results}/metrics/in_dataset/sglora" in pooled
    (page,) = [j for j in jobs if j["rule"] == "results_page"]
    assert f"{results}/tables/pooled/in_dataset.md" in page["input"] and f"--pooled {results}/tables/pooled" in page["shell"]
    assert f"--replicate-benchmarks {results}/replicates/1/benchmarks" in page["shell"]
    assert f"{results}/replicates/1/tables/in_dataset.md" in page["input"]  # every replicate done first
    (theirs,) = rep["results_page"]
    assert "--pooled" not in theirs and "--replicate-benchmarks" not in theirs and "'Results: replicate 1'" in theirs


def _results(root, shift: float = 0.0, seed: int = 0):
    """One replicate's metrics of a group: the nearest expert at 0.5, SG-LoRA at 0.5 + shift."""
    write_method(root, "g", "nearest_expert", 0.5, seed=seed + 1)
    write_method(root, "g", "sglora", 0.5 + shift, n_samples=2, runs=[0, 1], seed=seed + 2)
    return folders(root)


GROUP = {"g": {"title": "G", "dataset": "world", "tasks": TASKS, "methods": ["nearest_expert", "sglora"]}}


def test_one_replicate_pools_to_itself(tmp_path):
    res = load_group(_results(tmp_path / "r0"), "g", GROUP["g"]["methods"], TASKS)
    one, alone = group_stats(res, "i2t_r1", 300, 0), pooled_group_stats([res], "i2t_r1", 300, 0)
    assert one.estimates == alone.estimates and not alone.trainings
    assert all(np.array_equal(one.replicates[m], alone.replicates[m]) for m in one.replicates)


def test_pooling_draws_the_replicates_first_and_keeps_each_ones_verdict(tmp_path):
    """Replicate 0: SG-LoRA far above the nearest expert; replicate 1: far below. Pooled, the
    estimate is the mean of theirs, the interval spans both, each keeps its own verdict."""
    r0 = load_group(_results(tmp_path / "r0", +0.35, seed=0), "g", GROUP["g"]["methods"], TASKS)
    r1 = load_group(_results(tmp_path / "r1", -0.35, seed=10), "g", GROUP["g"]["methods"], TASKS)
    st = pooled_group_stats([r0, r1], "i2t_r1", 400, 0)
    own = [group_stats(r, "i2t_r1", 400, 0) for r in (r0, r1)]
    d = st.difference("sglora", "nearest_expert")
    each = [o.difference("sglora", "nearest_expert") for o in own]
    assert d.estimate == pytest.approx(np.mean([e.estimate for e in each]))
    assert d.lo < min(e.estimate for e in each) and d.hi > max(e.estimate for e in each)
    assert [verdict(t.difference("sglora", "nearest_expert")) for t in st.trainings] == ["win", "loss"]
    assert verdict(d) == "tie" and "the 2 training replicates, then" in st.resampled
    # replicate 0 is drawn with the run's own streams; the others with their own runs' streams
    hits = [{m: run_hits(per, "i2t_r1", m) for m, per in r.items()} for r in (r0, r1)]
    pooled, parts = pooled_bootstrap(hits, 400, 0)
    assert all(np.array_equal(parts[0][m], bootstrap(hits[0], 400, 0)[m]) for m in hits[0])
    assert not np.array_equal(parts[1]["sglora"], bootstrap(hits[1], 400, 0)["sglora"])


def test_pooled_tables_and_the_cli(tmp_path):
    m0 = _results(tmp_path / "r0", +0.35, seed=0)
    m1 = _results(tmp_path / "r1", -0.35, seed=10)
    write_tables(m0, tmp_path / "pooled", GROUP, n_boot=300, unit="task", pool=[m1])
    out = tmp_path / "pooled"
    assert sorted(p.name for p in out.iterdir()) == ["g.csv", "g.md", "g.paired.csv", "g.paired.md", "g.tex"]
    paired = (out / "g.paired.md").read_text()
    assert "G, pooled over 2 training replicates" in paired and "each replicate: win, loss" in paired
    assert "resampled: the 2 training replicates, then, shared by them, the 6 tasks" in paired
    # the SE note: the replicates' share (70 points apart: nearly all of it) is what more tasks cannot shrink
    assert re.search(r"the training replicates add (9\d|100) %, (alone more than an SE of 1.0 allows: it takes more "
                     r"training replicates|which more units leave as it is)", (out / "g.md").read_text())
    row = list(csv.DictReader(open(out / "g.paired.csv")))[0]
    assert row["i2t_r1_replicate_verdicts"] == "win loss"
    # the same through the command line, replicates keyed K/GROUP/METHOD
    pool = [f"1/{k}={v}" for k, v in m1.items()]
    args = ["tables", "--metrics", *(f"{k}={v}" for k, v in m0.items()), "--groups", __import__("json").dumps(GROUP),
            "--bootstrap", "300", "--bootstrap-unit", "task", "--out", str(tmp_path / "cli")]
    assert main(args + ["--pool", *pool]) == 0
    assert (tmp_path / "cli" / "g.paired.md").read_text() == paired
    assert main(args + ["--pool", *[p.replace("1/", "2/", 1) for p in pool]]) == 2  # replicate 1 missing


def test_the_results_page_shows_the_pooled_tables(tmp_path):
    from sglora.analyses.results_page import write_results_page

    m0 = _results(tmp_path / "r0", +0.35, seed=0)
    m1 = _results(tmp_path / "r1", -0.35, seed=10)
    write_tables(m0, tmp_path / "tables", GROUP, n_boot=100, unit="task")
    write_tables(m0, tmp_path / "pooled", GROUP, n_boot=100, unit="task", pool=[m1])
    write_results_page(tmp_path / "page.md", "T", tmp_path / "tables", ["g"], ["g"], None, None, 1,
                       pooled=tmp_path / "pooled")
    page = (tmp_path / "page.md").read_text()
    assert "## Pooled over the training replicates" in page and "each replicate: win, loss" in page
    # time per rule: replicate 0's table, then every replicate's CPU per rule kind
    head = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"
    for k, (lora, cvae) in enumerate([(120.0, 30.0), (90.0, 60.0)]):
        bench = tmp_path / f"rep{k}" / "benchmarks"
        for rule, cpu in (("train_lora/world/a.tsv", lora), ("train_cvae.tsv", cvae)):
            (bench / rule).parent.mkdir(parents=True, exist_ok=True)
            (bench / rule).write_text(head + f"{cpu + 5}\t0:00:00\t100\t1\t1\t1\t0\t0\t90\t{cpu}\n")
    write_results_page(tmp_path / "page3.md", "T", tmp_path / "tables", ["g"], ["g"], None, tmp_path / "rep0/benchmarks",
                       1, pooled=tmp_path / "pooled", replicates=2, replicate_benchmarks=[tmp_path / "rep1/benchmarks"])
    page = (tmp_path / "page3.md").read_text()
    assert "| rule | replicate 0 CPU (min) | replicate 1 CPU (min) |" in page
    assert "| train_lora | 2.0 | 1.5 |" in page and "| train_cvae | 0.5 | 1.0 |" in page and "| **all** | 2.5 | 2.5 |" in page
    with pytest.raises(SGLoraError, match="pooled table of group g"):
        write_results_page(tmp_path / "page2.md", "T", tmp_path / "tables", ["g"], ["g"], None, None, 1,
                           pooled=tmp_path / "nothing")


def _simulated(rng, replicates: int, training_noise: float, families: int = 6, queries: int = 30):
    """Hits of two methods on 6 families x 2 tasks, with a family effect both share, and per
    training replicate a shift of each method (its training seed) of SD ``training_noise``: the
    true difference, over trainings, is 0."""
    fam = np.repeat(np.arange(families), 2)
    base = 0.5 + rng.normal(0, 0.08, families)[fam] + rng.normal(0, 0.04, 2 * families)
    out = []
    for _ in range(replicates):
        p = {m: np.clip(base + rng.normal(0, training_noise) + rng.normal(0, 0.02, len(base)), 0.02, 0.98) for m in "ab"}
        out.append({m: [(rng.random((1, queries)) < q).astype(float) for q in p[m]] for m in "ab"})
    return out, list(fam)


def _coverage(replicates: int, training_noise: float, n: int = 150, n_boot: int = 200) -> tuple[float, float]:
    """How often replicate 0's own interval and the pooled interval of a - b contain 0."""
    from sglora.evaluation.stats import estimate, interval

    rng = np.random.default_rng(1)
    alone = pooled = 0
    for i in range(n):
        reps, fam = _simulated(rng, replicates, training_noise)
        own = bootstrap(reps[0], n_boot, i, families=fam)
        iv = interval(estimate(reps[0]["a"]) - estimate(reps[0]["b"]), own["a"] - own["b"])
        alone += iv.lo <= 0 <= iv.hi
        both, _ = pooled_bootstrap(reps, n_boot, i, families=fam)
        iv = interval(np.mean([estimate(r["a"]) - estimate(r["b"]) for r in reps]), both["a"] - both["b"])
        pooled += iv.lo <= 0 <= iv.hi
    return alone / n, pooled / n


@pytest.mark.parametrize("replicates", [2, 4])
def test_pooling_puts_training_noise_into_the_interval(replicates):
    """Simulated: where each training seed shifts the methods (SD 5 R@1 points), one training's
    interval misses the difference over trainings (0) about one time in six; the interval pooled
    over the replicates covers it at least 95 % of the time. (The family bootstrap under them is
    conservative where query noise dominates the task means: docs of stats.widening.)"""
    alone, pooled = _coverage(replicates, 0.05)
    print(f"coverage of 0 with {replicates} training replicates: one training {alone:.3f}, pooled {pooled:.3f}")
    assert alone < 0.9 and pooled >= 0.95


def test_replicate_set_by_hand_is_refused(tmp_path):
    from sglora.evaluation.replicates import check_replicate

    cfg = yaml.safe_load((ROOT / "config/tiny.yaml").read_text())
    check_replicate(cfg)
    check_replicate(replicate_config(cfg, 2))
    with pytest.raises(ValueError, match="set replicates: 2 instead"):
        check_replicate(cfg | {"replicate": 1})


def test_a_replicates_light_rules_are_local_and_its_heavy_ones_are_not(tmp_path):
    """On a cluster a light rule runs where Snakemake runs: a module's `localrules:` names its
    rules unprefixed, so the Snakefile declares replicate k's light rules itself. Snakemake
    keeps the declared names in ``Workflow._localrules`` (dry runs do not print them)."""
    from pathlib import Path

    from snakemake.api import SnakemakeApi
    from snakemake.settings.types import ConfigSettings, OutputSettings, ResourceSettings
    from test_presets import HEAVY, LIGHT, rule_kind

    cfg = yaml.safe_load((ROOT / "config/tiny.yaml").read_text())
    cfg["results"], cfg["replicates"] = str(tmp_path / "results"), 2
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    with SnakemakeApi(OutputSettings(quiet={"all"})) as api:
        wf = api.workflow(resource_settings=ResourceSettings(cores=1), snakefile=ROOT / "Snakefile", workdir=ROOT,
                          config_settings=ConfigSettings(configfiles=[Path(tmp_path / "c.yaml")],
                                                         replace_workflow_config=True))
        workflow = wf._workflow
        names, local = {r.name for r in workflow.rules}, set(workflow._localrules)
    theirs = {n.removeprefix("replicate_1_") for n in names if n.startswith("replicate_1_")}
    assert theirs and "world" not in theirs  # the world is replicate 0's
    assert {n for n in theirs if f"replicate_1_{n}" in local} == theirs & local
    assert (LIGHT - {"world", "manifest"}) & theirs <= {n for n in theirs if f"replicate_1_{n}" in local}
    assert not any(rule_kind(n) in HEAVY | {"pretrain_backbone", "caption"} for n in theirs if f"replicate_1_{n}" in local)


def test_the_replicates_share_of_the_variance_is_what_more_families_cannot_shrink(tmp_path):
    """Pooled over replicates, a half-width has a part the families, tasks and queries make
    (more of them shrink it) and a part the training replicates add (they do not): the
    target's unit count leaves the second out, and says when it alone misses the target."""
    from sglora.analyses.tables import target_note

    same = [load_group(_results(tmp_path / f"s{k}", 0.1, seed=0), "g", GROUP["g"]["methods"], TASKS) for k in (0, 1)]
    apart = [load_group(_results(tmp_path / f"a{k}", s, seed=10 * k), "g", GROUP["g"]["methods"], TASKS)
             for k, s in enumerate((+0.35, -0.35))]
    twin = pooled_group_stats(same, "i2t_r1", 400, 0)  # two identical trainings: nothing between them
    assert twin.training_share("nearest_expert") == 0.0  # but a generator's runs, drawn per replicate:
    assert 0.0 < twin.training_share("sglora", "nearest_expert") < 0.25
    assert group_stats(same[0], "i2t_r1", 400, 0).training_share("sglora", "nearest_expert") == 0.0  # no replicates
    far = pooled_group_stats(apart, "i2t_r1", 400, 0)
    assert far.training_share("sglora", "nearest_expert") > 0.9  # 70 points apart: nearly all between trainings
    d = far.difference("sglora", "nearest_expert")
    note = target_note({"i2t_r1": far}, ["i2t_r1"], 1.5)
    assert f"±{(d.hi - d.lo) / 2:.2f}: missed." in note and "it takes more training replicates" in note
    # a half-width made mostly by the tasks: more of them would do, fewer than if all of it shrank
    half = (twin.difference("sglora", "nearest_expert").hi - twin.difference("sglora", "nearest_expert").lo) / 2
    share = twin.training_share("sglora", "nearest_expert")
    note = target_note({"i2t_r1": twin}, ["i2t_r1"], half / 2)
    need = units_for(half, 6, half / 2, fixed=share)
    assert f"about {need} tasks like these, with 2 replicates, would meet it" in note
    assert need > units_for(half, 6, half / 2) and f"The training replicates add {100 * share:.0f} % of the" in note


def test_pretraining_threads_are_a_setting(tmp_path):
    """backbone.threads sets the pretraining job's threads (its bytes depend on them); unset,
    max(threads, 2) as before. With 1, two replicates pretrain side by side on 2 cores."""
    from test_presets import dry_run_jobs

    cfg = yaml.safe_load((ROOT / "config/tiny.yaml").read_text())
    cfg["results"] = str(tmp_path / "results")

    def pretraining(c):
        return [j["shell"] for j in dry_run_jobs(c, tmp_path, "--cores", "4") if j["rule"].endswith("pretrain_backbone")]

    assert [re.search(r"--threads (\d+)", s).group(1) for s in pretraining(cfg)] == [str(max(cfg.get("threads", 1), 2))]
    cfg["backbone"]["threads"], cfg["replicates"] = 1, 2
    assert [re.search(r"--threads (\d+)", s).group(1) for s in pretraining(cfg)] == ["1", "1"]
