"""Description controls (sglora/analyses/description_controls.py): the five conditions of a task, and the table of
each control minus the task's own description with its paired interval."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import numpy as np
import pytest

from sglora.evaluation import stats
from sglora.analyses.description_controls import (BELOW, COMPUTED, CONTROLS, control_descriptions, controls_rows, derangement,
                             paraphrase_template, random_description, semantics_verdict, world_words,
                             write_controls_table)
from sglora.evaluation.scoring import summarize
from sglora.io import SGLoraError, slugify, write_json
from sglora.data.manifest import DEFAULT_TEMPLATE, describe
from sglora.data.world import COARSE_LEADS, class_names, family_of, world_families


def _group(rng, families: int, members: int):
    """A random unseen group of a world of ``families`` x ``members``: no family holds more
    than half of its tasks."""
    names = class_names(families, members)
    while True:
        picked = list(rng.choice(names, size=int(rng.integers(2, min(len(names), 40) + 1)), replace=False))
        fams = {slugify(n): family_of(n) for n in picked}
        counts = np.unique(list(fams.values()), return_counts=True)[1]
        if 2 * counts.max() <= len(picked):
            return [slugify(n) for n in picked], fams


@pytest.mark.parametrize("families,members", [(2, 1), (6, 6), (13, 4), (56, 12)])
def test_other_family_control_is_a_derangement_across_families(families, members):
    rng = np.random.default_rng(families * 100 + members)
    for _ in range(25):
        tasks, fams = _group(rng, families, members)
        donors = derangement(tasks, fams)
        assert sorted(donors) == sorted(tasks) and sorted(donors.values()) == sorted(tasks)  # a permutation
        assert all(donors[t] != t for t in tasks)  # no fixed point
        assert all(fams[donors[t]] != fams[t] for t in tasks)  # never the same family
        assert derangement(tasks, fams) == donors  # fixed


def test_other_family_control_refuses_a_family_holding_most_of_the_group():
    tasks = ["scottish_terrier", "fox_terrier", "tiger_lily"]
    with pytest.raises(SGLoraError, match="groups.g: .* 2 of its 3 task.* of family 'terrier'"):
        derangement(tasks, {t: t.split("_")[1] for t in tasks}, "groups.g")
    with pytest.raises(SGLoraError, match="1 of its 1 task"):
        derangement(["tiger_lily"], {"tiger_lily": "lily"})
    with pytest.raises(SGLoraError, match="no family for tasks \\['tiger_lily'\\]"):
        derangement(tasks, {"scottish_terrier": "terrier", "fox_terrier": "terrier"})


@pytest.mark.parametrize("families,members", [(6, 6), (20, 3)])
def test_random_words_are_the_worlds_words_and_as_many_as_the_description(families, members):
    words = world_words(class_names(families, members), DEFAULT_TEMPLATE)
    table = world_families(families, members)
    allowed = set(table) | {p for _, prefixes in table.values() for p in prefixes} | {"a", "photo", "of"}
    assert set(words) == allowed
    for task in ("yorkshire_terrier", "calla_lily", "pin_oak"):
        for length in (1, 6, 11):
            text = random_description(task, length, words, seed=3)
            assert len(text.split()) == length and set(text.split()) <= allowed
            assert random_description(task, length, words, seed=3) == text  # seeded
    assert random_description("a", 30, words) != random_description("b", 30, words)


def _embeddings(tasks):
    return {t: {"task_name": t.replace("_", " "), "description": describe(t.replace("_", " ")),
                "text_embedding": np.full(4, i, np.float32)} for i, t in enumerate(tasks)}


def test_every_control_description():
    tasks = ["yorkshire_terrier", "bull_terrier", "calla_lily", "pin_oak"]
    fams = {t: t.split("_")[1] for t in tasks}
    texts = control_descriptions(tasks, _embeddings(tasks), fams, class_names(), DEFAULT_TEMPLATE, seed=0)
    assert list(texts) == list(CONTROLS)
    assert texts["own"]["yorkshire_terrier"] == "a photo of a yorkshire terrier"
    donors = derangement(tasks, fams)
    assert all(texts["other_family"][t] == texts["own"][donors[t]] for t in tasks)
    for t in tasks:
        assert len(texts["random_words"][t].split()) == len(texts["own"][t].split())
    # (d): the template without its class; (e): another template naming the same class
    assert set(texts["bare_template"].values()) == {"a photo of a"}
    assert texts["paraphrase"]["yorkshire_terrier"] == "an image of a yorkshire terrier"
    for t in tasks:
        para = texts["paraphrase"][t]
        assert para.endswith(" " + t.replace("_", " ")) and para != texts["own"][t]
        assert para[: -len(t) - 1] in COARSE_LEADS
    # a template that already starts with the second lead gets another one
    assert paraphrase_template("an image of a <class name>") == "a photo of a <class name>"
    assert paraphrase_template("a photo of a <class name>, a kind of animal") == "an image of a <class name>"


def _metrics(method, task, ranks, runs, group="g"):
    """A ``<task>.json`` as 'sglora evaluate' writes it, from per-sample I2T/T2I ranks."""
    per = [{"i2t": np.asarray(i2t), "t2i": np.asarray(t2i)} for i2t, t2i in ranks]
    return {"method": method, "group": group, "task": task, "kind": "retrieval", **summarize(per, runs), "info": {}}


def _synthetic(rng, tasks, methods=("sglora", "topk_weighted")):
    """(a) and each control: random ranks of 2 runs x 2 samples (SG-LoRA) or one LoRA."""
    out = {}
    for key in ("own",) + COMPUTED:
        out[key] = {}
        for m in methods:
            runs = [0, 0, 1, 1] if m == "sglora" else [0]
            out[key][m] = {t: _metrics(m, t, [(rng.integers(1, 4, 5), rng.integers(1, 4, 7)) for _ in runs], runs)
                           for t in tasks}
    return out


def _hand_r1(per_task: dict, direction: str) -> float:
    """Mean over tasks of the mean over runs of the share of queries with rank 1, in percent."""
    task_means = []
    for res in per_task.values():
        ranks, runs = np.asarray(res["ranks"][direction]), np.asarray(res["runs"])
        task_means.append(np.mean([(ranks[runs == r] == 1).mean() for r in sorted(set(runs))]))
    return 100.0 * float(np.mean(task_means))


def test_paired_difference_equals_a_hand_computation():
    rng = np.random.default_rng(0)
    tasks = ["yorkshire_terrier", "bull_terrier", "calla_lily", "peace_lily"]
    fams = {t: t.split("_")[1] for t in tasks}
    data = _synthetic(rng, tasks)
    rows, cols = controls_rows(data["own"], {c: data[c] for c in COMPUTED}, fams, n_boot=500)
    assert [(r["method"], r["control"]) for r in rows] == [(m, c) for m in ("sglora", "topk_weighted") for c in CONTROLS]
    labels = list(fams[t] for t in tasks)
    for r in rows:
        for col, direction in (("i2t_r1", "i2t"), ("t2i_r1", "t2i")):
            score = _hand_r1(data[r["control"]][r["method"]], direction)
            assert r[col] == pytest.approx(score)
            if r["control"] == "own":
                assert f"{col}_diff" not in r
                continue
            own = _hand_r1(data["own"][r["method"]], direction)
            assert r[f"{col}_diff"] == pytest.approx(score - own)
            # the interval: both bootstrapped on the same family, task, query and run draws
            # (the method's run stream), replicate by replicate subtracted
            hits = {k: stats.run_hits(data[k][r["method"]], col, r["method"]) for k in ("own", r["control"])}
            reps = {k: stats.bootstrap({r["method"]: h}, 500, 0, families=labels)[r["method"]] for k, h in hits.items()}
            lo, hi = np.percentile(reps[r["control"]] - reps["own"], [2.5, 97.5])
            assert (r[f"{col}_diff_lo"], r[f"{col}_diff_hi"]) == pytest.approx((lo, hi))
            assert r[f"{col}_diff_mdd"] == pytest.approx(stats.DETECTABLE * np.std(reps[r["control"]] - reps["own"],
                                                                                   ddof=1))
            if r["method"] == "topk_weighted":  # one run: exactly the paired tables' difference
                both = {"own": data["own"]["topk_weighted"], "ctrl": data[r["control"]]["topk_weighted"]}
                d = stats.group_stats(both, col, 500, 0, fams).difference("ctrl", "own")
                assert (r[f"{col}_diff_lo"], r[f"{col}_diff_hi"]) == pytest.approx((d.lo, d.hi))


def test_controls_table_files(tmp_path):
    rng = np.random.default_rng(1)
    tasks = ["yorkshire_terrier", "calla_lily", "pin_oak"]
    data = _synthetic(rng, tasks)
    own = {}
    for m, per_task in data["own"].items():
        own[m] = tmp_path / "metrics" / "g" / m
        for t, res in per_task.items():
            write_json(own[m] / f"{t}.json", res)
    folder = tmp_path / "controls" / "g"
    for c in COMPUTED:
        for m, per_task in data[c].items():
            for t, res in per_task.items():
                write_json(folder / "metrics" / c / m / f"{t}.json", res)
    texts = control_descriptions(tasks, _embeddings(tasks), {t: t.split("_")[1] for t in tasks}, class_names(),
                                 DEFAULT_TEMPLATE)
    write_json(folder / "descriptions.json", {"tasks": tasks, "descriptions": texts})
    md, csv_path = tmp_path / "tables" / "g.controls.md", tmp_path / "tables" / "g.controls.csv"
    rows = write_controls_table(own, folder, "g", tasks, {t: t.split("_")[1] for t in tasks}, "G", md, csv_path,
                                n_boot=200)
    table = list(csv.DictReader(csv_path.open()))
    assert len(table) == 10
    diff = next(r for r in table if r["method"] == "sglora" and r["control"] == "bare_template")
    hand = _hand_r1(data["bare_template"]["sglora"], "i2t") - _hand_r1(data["own"]["sglora"], "i2t")
    assert float(diff["i2t_r1_diff"]) == pytest.approx(hand, abs=1e-4)
    text = md.read_text()
    assert "(b)-(d)" not in text and "(b) another family's description" in text
    assert "Semantics drive a method where" in text and "SG-LoRA: (d) bare template − (a)" in text
    assert 'a photo of a yorkshire terrier' in text and '"a photo of a"' in text
    assert text.count("MDD") >= 8 and [r["control"] for r in rows[:5]] == list(CONTROLS)


def test_semantics_verdict_reads_the_criterion():
    def row(control, hi):
        return {"method": "sglora", "control": control, "i2t_r1_diff_hi": hi}

    rows = [row(c, -1.0) for c in BELOW] + [row("paraphrase", 0.5)]
    assert semantics_verdict(rows, "sglora", "i2t_r1").endswith(": shown.")
    rows[-1] = row("paraphrase", -0.1)  # the paraphrase falls too: not the meaning
    assert semantics_verdict(rows, "sglora", "i2t_r1").endswith(": not shown.")
    rows = [row(c, 0.2 if c == "random_words" else -1.0) for c in BELOW] + [row("paraphrase", 0.5)]
    assert "(c) not below" in semantics_verdict(rows, "sglora", "i2t_r1")


@pytest.mark.heavy
def test_the_default_dag_plans_the_controls_and_refuses_a_group_without_another_family(tmp_path):
    """config.yaml plans one controls job and one table per unseen group (in_dataset, between); a group whose tasks
    are all of one family stops the dry run before any job, naming the group."""
    import subprocess
    import sys

    import yaml

    from conftest import ROOT

    def dry_run(cfg):
        path = tmp_path / "config.yaml"
        path.write_text(yaml.safe_dump(cfg))
        return subprocess.run([str(Path(sys.executable).parent / "snakemake"), "-n", "--quiet", "rules",
                               "--configfile", str(path)], cwd=ROOT, capture_output=True, text=True)

    cfg = yaml.safe_load((ROOT / "config.yaml").read_text())
    cfg["results"] = str(tmp_path / "results")
    proc = dry_run(cfg)
    assert proc.returncode == 0, proc.stderr[-2000:]
    counts = dict(re.findall(r"^(controls|controls_table)\s+(\d+)$", proc.stdout + proc.stderr, re.M))
    unseen = [g for g, spec in cfg["groups"].items() if spec.get("unseen", True)]  # not `seen`
    assert counts == {"controls": str(len(unseen)), "controls_table": str(len(unseen))}
    cfg["groups"]["in_dataset"]["tasks"] = ["yorkshire_terrier", "bull_terrier", "calla_lily"]
    proc = dry_run(cfg)
    assert proc.returncode != 0
    assert "groups.in_dataset.tasks: the other-family control needs tasks of two families or more" in proc.stdout + proc.stderr
