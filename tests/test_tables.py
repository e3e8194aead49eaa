"""Tables from metric files in the real format (written by sglora.evaluation.scoring.summarize):
intervals in every cell, bold only where the paired interval against the runner-up excludes
zero, the paired and diagnostic tables (with the minimum detectable difference), the
selection and paper footnotes, and what the bootstrap resampled (families or tasks)."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest

from sglora.cli import main
from sglora.evaluation.scoring import summarize
from sglora.io import SGLoraError, write_json
from sglora.evaluation.stats import DETECTABLE, group_stats, units_for
from sglora.analyses.tables import group_families, load_group, write_tables

TASKS = ["t0", "t1", "t2", "t3", "t4", "t5"]
N_IMG, N_CAP = 30, 2


def ranks(rng, skill: float, n: int) -> np.ndarray:
    """Rank 1 with probability ``skill``, else 2..20."""
    return np.where(rng.random(n) < skill, 1, rng.integers(2, 21, n))


def write_method(root: Path, group: str, method: str, skill, n_samples: int = 1, runs=None, seed: int = 0):
    """One metrics folder; ``skill``: float, or a callable (task index, sample) -> float."""
    rng = np.random.default_rng(seed)
    for i, t in enumerate(TASKS):
        per = []
        for s in range(n_samples):
            p = skill(i, s) if callable(skill) else skill
            per.append({"i2t": ranks(rng, p, N_IMG), "t2i": ranks(rng, p, N_IMG * N_CAP)})
        res = {"method": method, "group": group, "task": t, "kind": "retrieval", **summarize(per, runs), "info": {}}
        write_json(root / group / method / f"{t}.json", res, flat_int_lists=True)


@pytest.fixture(scope="module")
def metrics(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("metrics")
    # clear: Top-K far ahead of everything but the Oracle
    write_method(root, "clear", "zero_shot", 0.2, seed=1)
    write_method(root, "clear", "oracle", 0.95, seed=2)
    write_method(root, "clear", "topk_weighted", 0.8, seed=3)
    write_method(root, "clear", "sglora", lambda i, s: 0.3 + 0.02 * s, n_samples=6, runs=[0, 0, 1, 1, 2, 2], seed=4)
    # tie: Model Soups and AdapterSoup have the very same ranks (same seed); SG-LoRA far behind
    write_method(root, "tie", "model_soups", 0.6, seed=5)
    write_method(root, "tie", "adaptersoup", 0.6, seed=5)
    write_method(root, "tie", "sglora", 0.2, n_samples=2, seed=6)
    write_method(root, "nosg", "zero_shot", 0.3, seed=7)
    write_method(root, "nosg", "pdiff", 0.4, n_samples=3, seed=8)
    return root


def folders(root: Path) -> dict[str, Path]:
    """``"<group>/<method>"`` -> metric folder, as the tables rule passes them."""
    return {f"{g.name}/{m.name}": m for g in root.iterdir() if g.is_dir() for m in g.iterdir() if m.is_dir()}


def metrics_flag(root: Path) -> list[str]:
    return ["--metrics", *(f"{k}={v}" for k, v in folders(root).items())]


GROUPS = {
    "clear": {"title": "Clear winner", "dataset": "world", "tasks": TASKS,
              "methods": ["zero_shot", "oracle", "topk_weighted", "sglora"], "paper": "coco_in_dataset"},
    "tie": {"title": "Tie", "dataset": "world", "tasks": TASKS, "methods": ["model_soups", "adaptersoup", "sglora"],
            "paper": "coco_to_pets", "paper_note": "The paper trains 120 epochs; we train 3."},
    "nosg": {"title": "No SG-LoRA", "dataset": "world", "tasks": TASKS, "methods": ["zero_shot", "pdiff"]},
}
SELECTION = {"sglora": {"condition": "loo", "temperature": 0.5}, "topk_weighted": {"k": 4, "tau": 0.05},
             "mole": {"epochs": 3}}
CELL = r"-?\d+\.\d\d \[-?\d+\.\d\d, -?\d+\.\d\d\]"


@pytest.fixture(scope="module")
def tables(metrics, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tables")
    sel = out / "selection.json"
    sel.write_text(json.dumps({"chosen": SELECTION, "scores": {}}))
    assert main(["tables", *metrics_flag(metrics), "--groups", json.dumps(GROUPS), "--out", str(out),
                 "--selection", str(sel), "--bootstrap", "400"]) == 0
    return out


def md_row(md: str, label: str) -> list[str]:
    line = next(ln for ln in md.splitlines() if ln.startswith(f"| {label} |"))
    return [c.strip() for c in line.strip("|").split("|")[1:]]


def test_every_mean_has_its_interval_in_markdown_and_csv(tables):
    md = (tables / "clear.md").read_text()
    for label in ("Zero-Shot CLIP", "Oracle", "Top-K LoRA Weighted", "SG-LoRA (3 runs x 2 samples)"):
        cells = md_row(md, label)
        assert len(cells) == 6 and all(re.search(CELL, c) for c in cells), cells
    rows = list(csv.DictReader(open(tables / "clear.csv")))
    for r in rows:
        if r["kind"] != "paper":
            for c in ("i2t_r1", "t2i_r10"):
                assert float(r[f"{c}_lo"]) <= float(r[c]) <= float(r[f"{c}_hi"]) and float(r[f"{c}_se"]) > 0
    sg = next(r for r in rows if r["method"] == "sglora")
    assert sg["runs"] == "3" and sg["n"] == "6" and sg["i2t_r1_std"] != ""
    assert "Standard error of the mean I2T R@1 / T2I R@1 (bootstrap SD)" in md


def test_bold_only_where_the_lead_is_resolved_else_tie_marked(tables, metrics):
    md = (tables / "clear.md").read_text()
    assert all(c.startswith("**") for c in md_row(md, "Top-K LoRA Weighted"))  # far ahead: resolved
    assert not any("**" in c or "†" in c for c in md_row(md, "Oracle"))  # better still, but not ranked
    assert "†" not in md
    tie = (tables / "tie.md").read_text()
    for label in ("Model Soups", "AdapterSoup"):
        assert all(c.endswith("†") and "**" not in c for c in md_row(tie, label))
    assert not any("†" in c for c in md_row(tie, "SG-LoRA (mean of 2)"))
    assert "†: tied for best: interval of the difference includes 0" in tie
    assert "\\dagger" in (tables / "tie.tex").read_text() and "\\textbf{" in (tables / "clear.tex").read_text()


def test_paired_table_is_sglora_minus_each_method(tables, metrics):
    md = (tables / "clear.paired.md").read_text()
    stats = group_stats(load_group(folders(metrics), "clear", GROUPS["clear"]["methods"], TASKS), "i2t_r1", n_boot=400)
    d = stats.difference("sglora", "topk_weighted")
    cell = md_row(md, "SG-LoRA − Top-K LoRA Weighted")[0]
    assert cell == f"{d.estimate:+.2f} [{d.lo:+.2f}, {d.hi:+.2f}]* (MDD {d.detectable:.2f})" and d.hi < 0
    assert len([ln for ln in md.splitlines() if ln.startswith("| SG-LoRA −")]) == 3  # Oracle included
    rows = list(csv.DictReader(open(tables / "clear.paired.csv")))
    assert [r["method"] for r in rows] == ["zero_shot", "oracle", "topk_weighted"]
    assert float(rows[2]["i2t_r1"]) == pytest.approx(d.estimate, abs=1e-4)
    assert float(rows[2]["i2t_r1_se"]) == pytest.approx(d.se, abs=1e-4)
    assert float(rows[2]["i2t_r1_mdd"]) == pytest.approx(DETECTABLE * d.se, abs=1e-4)
    assert "MDD: the minimum detectable difference, 2.80 x the paired SE" in md
    assert not (tables / "nosg.paired.md").exists()


def test_test_selected_rows_only_in_the_diagnostic_table(tables):
    for group in ("clear", "tie", "nosg"):
        assert "best of" not in (tables / f"{group}.md").read_text()
        assert "best of" not in (tables / f"{group}.csv").read_text()
    diag = (tables / "clear.diagnostic.md").read_text()
    assert "| SG-LoRA (best of 6), test-selected (diagnostic only) |" in diag
    assert "P-diff (best of 3), test-selected (diagnostic only)" in (tables / "nosg.diagnostic.md").read_text()


def test_selection_and_paper_footnotes(tables):
    clear = (tables / "clear.md").read_text()
    assert ("Settings chosen on the validation tasks: Top-K LoRA Weighted: k=4, tau=0.05; "
            "SG-LoRA: condition=loo, temperature=0.5.") in clear
    assert "MoLE" not in clear  # only the group's own methods
    for name in ("clear.paired.md", "clear.diagnostic.md", "clear.per_task.md"):
        assert "Settings chosen on the validation tasks" in (tables / name).read_text(), name
    assert "Settings chosen on the validation tasks" in (tables / "clear.tex").read_text()
    assert "our run, not a reproduction: 6 tasks of dataset 'world' (t0, t1, t2, t3, t4, t5)" in clear
    tie = (tables / "tie.md").read_text()
    assert "not a reproduction" in tie and "The paper trains 120 epochs; we train 3." in tie
    assert "reproduction" not in (tables / "nosg.md").read_text()  # no paper rows, no note


def test_selection_file_without_chosen_is_named(metrics, tmp_path, capsys):
    bad = tmp_path / "selection.json"
    bad.write_text(json.dumps({"scores": {}}))
    assert main(["tables", *metrics_flag(metrics), "--groups", json.dumps({"nosg": GROUPS["nosg"]}),
                 "--out", str(tmp_path), "--selection", str(bad)]) == 2
    assert f"{bad}: expected a JSON object with key 'chosen'" in capsys.readouterr().err


def test_metrics_without_per_query_results_are_named(metrics, tmp_path):
    import shutil

    old = tmp_path / "old"
    shutil.copytree(metrics / "nosg", old / "nosg")
    path = old / "nosg" / "zero_shot" / "t3.json"
    res = json.loads(path.read_text())
    del res["ranks"]
    path.write_text(json.dumps(res))
    with pytest.raises(SGLoraError, match=f"{path}: no per-query results .* --forcerun evaluate"):
        write_tables(folders(old), tmp_path / "out", {"nosg": GROUPS["nosg"]}, n_boot=50)


def test_tables_are_deterministic(metrics, tmp_path):
    for d in ("a", "b"):
        write_tables(folders(metrics), tmp_path / d, {"tie": GROUPS["tie"]}, n_boot=200)
    for name in ("tie.md", "tie.csv", "tie.tex", "tie.paired.md", "tie.paired.csv"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_r1_bars_show_the_intervals_and_titles_do_not_overlap(metrics):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from sglora.analyses.figures import r1_bars_figure

    long = {g: {**spec, "title": "Embedded benchmark, cross-dataset (studio experts -> unseen sketch classes)"}
            for g, spec in GROUPS.items()}
    fig = r1_bars_figure(folders(metrics), long, n_boot=400)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    boxes = [ax.title.get_window_extent(renderer) for ax in fig.axes]
    for left, right in zip(boxes, boxes[1:]):
        assert left.x1 < right.x0, "neighbouring panel titles overlap"
    # error bars: the I2T R@1 interval of each method of the first group
    stats = group_stats(load_group(folders(metrics), "clear", GROUPS["clear"]["methods"], TASKS), "i2t_r1", n_boot=400)
    from matplotlib.container import BarContainer

    i2t = next(c for c in fig.axes[0].containers if isinstance(c, BarContainer))  # first bars: I2T R@1
    segments = i2t.errorbar.lines[2][0].get_segments()
    for m, seg in zip(GROUPS["clear"]["methods"], segments):
        iv = stats.interval(m)
        assert (seg[0][1], seg[1][1]) == pytest.approx((iv.lo, iv.hi))
    plt.close(fig)


FAMILIES = {"t0": "a", "t1": "a", "t2": "b", "t3": "b", "t4": "c", "t5": "c"}


def test_group_families_come_from_the_group_the_world_or_each_task():
    world = {"dataset": "world", "tasks": ["tiger_lily", "calla_lily", "house_sparrow"]}
    assert group_families(world, ["world"], "g") == {"tiger_lily": "lily", "calla_lily": "lily", "house_sparrow": "sparrow"}
    assert group_families(world, [], "g") == {t: t for t in world["tasks"]}  # not embedded: no families
    given = {**world, "families": {"tiger_lily": "x", "calla_lily": "y", "house_sparrow": "x"}}
    assert group_families(given, ["world"], "g") == given["families"]  # the config's families come first
    with pytest.raises(SGLoraError, match=r"groups.g.families: .*missing \['house_sparrow'\]"):
        group_families({**world, "families": {"tiger_lily": "x", "calla_lily": "y"}}, [], "g")
    with pytest.raises(SGLoraError, match="groups.g.tasks: 't0' is not a class of the embedded world"):
        group_families({"dataset": "world", "tasks": ["t0"]}, ["world"], "g")


def test_tables_resample_families_and_say_so(metrics, tmp_path):
    """A group with families: every table with intervals names what was resampled, the cells
    and the paired differences are the family bootstrap's, the power line counts families;
    with bootstrap unit "task" the same group gets the task bootstrap."""
    group = {"clear": {**GROUPS["clear"], "families": FAMILIES}}
    loaded = load_group(folders(metrics), "clear", GROUPS["clear"]["methods"], TASKS)
    assert main(["tables", *metrics_flag(metrics), "--groups", json.dumps(group), "--out", str(tmp_path / "f"),
                 "--bootstrap", "400"]) == 0
    fam = group_stats(loaded, "i2t_r1", n_boot=400, families=FAMILIES)
    said = "resampled: the 3 families, the tasks of each drawn family, test queries and runs"
    for name in ("clear.md", "clear.paired.md", "clear.diagnostic.md"):
        assert said in (tmp_path / "f" / name).read_text(), name
    assert said in (tmp_path / "f" / "clear.tex").read_text()
    md = (tmp_path / "f" / "clear.md").read_text()
    iv = fam.interval("topk_weighted")
    assert md_row(md, "Top-K LoRA Weighted")[0].strip("*") == f"{iv.estimate:.2f} [{iv.lo:.2f}, {iv.hi:.2f}]"
    d = fam.difference("sglora", "zero_shot")
    assert md_row((tmp_path / "f" / "clear.paired.md").read_text(), "SG-LoRA − Zero-Shot CLIP")[0] == \
        f"{d.estimate:+.2f} [{d.lo:+.2f}, {d.hi:+.2f}]" + "*" * d.excludes_zero() + f" (MDD {d.detectable:.2f})"
    rows = list(csv.DictReader(open(tmp_path / "f" / "clear.csv")))
    largest = max(float(r[f"{c}_se"]) for r in rows if r["kind"] != "paper" for c in ("i2t_r1", "t2i_r1"))
    assert largest > 1.0
    assert (f"this group needs about {units_for(largest, 3, 1.0)} families (of 2 tasks each, like its own); it has 3 "
            "families of its 6 tasks") in md
    assert "% is between families" in md

    assert main(["tables", *metrics_flag(metrics), "--groups", json.dumps(group), "--out", str(tmp_path / "t"),
                 "--bootstrap", "400", "--bootstrap-unit", "task"]) == 0
    task = group_stats(loaded, "i2t_r1", n_boot=400)
    md = (tmp_path / "t" / "clear.md").read_text()
    assert "resampled: the 6 tasks, test queries and runs]" in md and "families" not in md
    iv = task.interval("topk_weighted")
    assert md_row(md, "Top-K LoRA Weighted")[0].strip("*") == f"{iv.estimate:.2f} [{iv.lo:.2f}, {iv.hi:.2f}]"
    assert fam.interval("topk_weighted").se != iv.se


def test_embedded_groups_need_world_classes(metrics, tmp_path, capsys):
    assert main(["tables", *metrics_flag(metrics), "--groups", json.dumps({"nosg": GROUPS["nosg"]}), "--out",
                 str(tmp_path), "--bootstrap", "50", "--embedded", "world"]) == 2
    assert "groups.nosg.tasks: 't0' is not a class of the embedded world" in capsys.readouterr().err


# --- per-task verdicts: SG-LoRA minus the nearest expert on each task -------------------------

VERDICT_GROUP = {"verdicts": {"title": "Verdicts", "dataset": "world", "tasks": TASKS,
                              "methods": ["zero_shot", "nearest_expert", "sglora"]}}


def sglora_by_task(i, s):
    """Far ahead of the nearest expert (0.5) on t0, t1; level on t2, t3; far behind on t4, t5."""
    return (0.97, 0.97, 0.5, 0.5, 0.03, 0.03)[i]


def write_verdict_group(root: Path, sglora=sglora_by_task) -> dict[str, Path]:
    write_method(root, "verdicts", "zero_shot", 0.2, seed=11)
    write_method(root, "verdicts", "nearest_expert", 0.5, seed=12)
    write_method(root, "verdicts", "sglora", sglora, n_samples=4, runs=[0, 0, 1, 1], seed=13)
    return folders(root)


def test_verdicts_judge_each_task_on_its_own_interval_and_the_paired_table_counts_them(tmp_path):
    from sglora.evaluation.stats import task_differences

    metrics = write_verdict_group(tmp_path / "metrics")
    write_tables(metrics, tmp_path / "out", VERDICT_GROUP, n_boot=400)
    md = (tmp_path / "out" / "verdicts.verdicts.md").read_text()
    verdicts = {t: [c.split()[-1] for c in md_row(md, t)] for t in TASKS}
    assert verdicts["t0"] == verdicts["t1"] == ["win", "win"]
    assert verdicts["t4"] == verdicts["t5"] == ["loss", "loss"]
    wins = {c: sum(v[i] == "win" for v in verdicts.values()) for i, c in enumerate(("i2t", "t2i"))}
    losses = {c: sum(v[i] == "loss" for v in verdicts.values()) for i, c in enumerate(("i2t", "t2i"))}
    ties = {c: 6 - wins[c] - losses[c] for c in wins}
    assert md_row(md, "Wins / ties / losses") == [f"{wins[c]} / {ties[c]} / {losses[c]}" for c in ("i2t", "t2i")]
    # each cell is the task's own paired difference (its queries and runs), as sglora.evaluation.stats computes it
    results = load_group(metrics, "verdicts", ["nearest_expert", "sglora"], TASKS)
    d = task_differences(results["sglora"], results["nearest_expert"], "t2i_r1", 400, 0, ("sglora", "nearest_expert"))
    assert md_row(md, "t2")[1].startswith(f"{d['t2'].estimate:+.2f} [{d['t2'].lo:+.2f}, {d['t2'].hi:+.2f}]")
    rows = list(csv.DictReader(open(tmp_path / "out" / "verdicts.verdicts.csv")))
    assert [r["task"] for r in rows] == TASKS and [r["i2t_r1_verdict"] for r in rows] == [v[0] for v in verdicts.values()]
    paired = (tmp_path / "out" / "verdicts.paired.md").read_text()
    plural = {"win": "wins", "tie": "ties", "loss": "losses"}
    said = lambda n, v: f"{n} {v if n == 1 else plural[v]}"  # noqa: E731
    assert (f"Per task, SG-LoRA − Nearest expert (6 tasks; verdicts.verdicts.md): I2T R@1 {said(wins['i2t'], 'win')}, "
            f"{said(ties['i2t'], 'tie')}, {said(losses['i2t'], 'loss')}; T2I R@1 {said(wins['t2i'], 'win')}") in paired
    # groups without the nearest expert get no verdicts
    write_tables(metrics, tmp_path / "other", {"verdicts": VERDICT_GROUP["verdicts"] | {"methods": ["zero_shot", "sglora"]}},
                 n_boot=50)
    assert not (tmp_path / "other" / "verdicts.verdicts.md").exists()
    assert "Per task" not in (tmp_path / "other" / "verdicts.paired.md").read_text()


def test_a_tasks_verdict_resamples_only_its_own_queries_and_runs(tmp_path):
    """Another task's numbers leave a task's interval as it was; a task whose runs differ but whose
    queries do not has a spread from its runs alone; a single-run difference has the SE of a paired
    mean over its queries (computed here: sqrt(var(d) / Q))."""
    from sglora.evaluation.stats import task_differences, verdict

    before = load_group(write_verdict_group(tmp_path / "a"), "verdicts", ["nearest_expert", "sglora"], TASKS)
    after = load_group(write_verdict_group(tmp_path / "b", lambda i, s: sglora_by_task(i, s) if i == 0 else 0.9),
                       "verdicts", ["nearest_expert", "sglora"], TASKS)
    assert before["sglora"]["t0"] == after["sglora"]["t0"] and before["sglora"]["t3"] != after["sglora"]["t3"]
    d0 = {k: task_differences(r["sglora"], r["nearest_expert"], "i2t_r1", 300, 0, ("sglora", "nearest_expert"))["t0"]
          for k, r in (("before", before), ("after", after))}
    assert d0["before"] == d0["after"]

    q = 400
    rng = np.random.default_rng(0)
    a, b = (rng.random(q) < 0.6).astype(int), (rng.random(q) < 0.4).astype(int)
    one = lambda hits, runs=None: {"t": {"correct": [list(h) for h in hits], "runs": runs}}  # noqa: E731
    d = task_differences(one([a]), one([b]), "accuracy", 2000, 0)["t"]
    assert d.estimate == pytest.approx(100 * (a.mean() - b.mean()))
    assert d.se == pytest.approx(100 * np.std(a - b, ddof=1) / np.sqrt(q), rel=0.08)
    assert verdict(d) == "win"
    # runs: run 0 hits every query, run 1 none; query draws alone could not move the mean
    runs = task_differences(one([np.ones(q, int), np.zeros(q, int)], [0, 1]), one([np.full(q, 1)]), "accuracy", 500,
                            0)["t"]
    assert runs.estimate == pytest.approx(-50.0) and runs.hi - runs.lo > 40 and verdict(runs) == "tie"


def test_a_group_with_its_own_validation_tasks_footnotes_their_settings(metrics, tmp_path):
    """A group with groups.<g>.validation footnotes the settings chosen on its own validation
    tasks (--group-selections); the other groups keep the config's (--selection)."""
    sel, own = tmp_path / "selection.json", tmp_path / "own.json"
    sel.write_text(json.dumps({"chosen": SELECTION}))
    own.write_text(json.dumps({"chosen": {"sglora": {"condition": "all", "temperature": 0.0}}}))
    groups = {"clear": GROUPS["clear"] | {"validation": {"dataset": "world", "tasks": ["v0", "v1"]}},
              "tie": GROUPS["tie"]}
    assert main(["tables", *metrics_flag(metrics), "--groups", json.dumps(groups), "--out", str(tmp_path / "t"),
                 "--selection", str(sel), "--group-selections", f"clear={own}", "--bootstrap", "50"]) == 0
    for name in ("clear.md", "clear.paired.md"):
        text = (tmp_path / "t" / name).read_text()
        assert ("Settings chosen on the group's own validation tasks (v0, v1): SG-LoRA: condition=all, "
                "temperature=0.0.") in text and "condition=loo" not in text, name
    assert "Settings chosen on the validation tasks: SG-LoRA: condition=loo" in (tmp_path / "t" / "tie.md").read_text()


def test_the_paired_table_says_whether_the_target_half_width_is_met(tmp_path):
    """With evaluation.target_half_width the paired table states the half-width of SG-LoRA minus
    the nearest expert (that of its own paired interval) and, where it is wider, the units a
    group would need (it shrinks as 1 / sqrt(units)); without the setting it says nothing."""
    from sglora.evaluation.stats import GroupStats

    metrics = write_verdict_group(tmp_path / "metrics")
    results = load_group(metrics, "verdicts", VERDICT_GROUP["verdicts"]["methods"], TASKS)
    stats = {c: group_stats(results, c, 400, 0) for c in ("i2t_r1", "t2i_r1")}
    halves = [(stats[c].difference("sglora", "nearest_expert").hi - stats[c].difference("sglora", "nearest_expert").lo) / 2
              for c in ("i2t_r1", "t2i_r1")]
    for target, met in ((max(halves) + 0.01, True), (min(halves) / 3, False)):
        write_tables(metrics, tmp_path / str(target), VERDICT_GROUP, n_boot=400, unit="task", target=target)
        paired = (tmp_path / str(target) / "verdicts.paired.md").read_text()
        said = re.search(r"no wider than ±(\d+\.\d\d) on I2T R@1 / T2I R@1\. Here ±(\d+\.\d\d) / ±(\d+\.\d\d): (.*)", paired)
        assert said, paired
        assert [said.group(i) for i in (2, 3)] == [f"{h:.2f}" for h in halves]
        if met:
            assert said.group(4) == "met."
        else:
            need = units_for(max(halves), 6, target)
            assert said.group(4) == f"missed; about {need} tasks like these would meet it (the group has 6)."
            assert need > 6 * 8  # a third of the half-width takes about nine times the units
    write_tables(metrics, tmp_path / "none", VERDICT_GROUP, n_boot=400, unit="task")
    assert "Target" not in (tmp_path / "none" / "verdicts.paired.md").read_text()
    # families: counted as families
    fams = GroupStats("i2t_r1", {"sglora": 1.0, "nearest_expert": 0.0},
                      {"sglora": np.linspace(-2, 4, 401), "nearest_expert": np.zeros(401)}, 4, ["a", "a", "b", "b"])
    from sglora.analyses.tables import target_note

    note = target_note({"i2t_r1": fams}, ["i2t_r1"], 1.0)
    assert note.endswith(f"missed; about {units_for((fams.difference('sglora', 'nearest_expert').hi - fams.difference('sglora', 'nearest_expert').lo) / 2, 2, 1.0)} families like these would meet it (the group has 2).")
