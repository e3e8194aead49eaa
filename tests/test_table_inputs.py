"""The tables read only metric files that hold what 'sglora evaluate' writes: a damaged file
is an error naming the file and the field, and the table set is written as a whole (a bad
file in any group leaves every table as it was)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from sglora.evaluation.scoring import summarize
from sglora.io import SGLoraError, write_json
from sglora.analyses.tables import write_tables

TASKS = ["t0", "t1", "t2"]
GROUPS = {
    "first": {"dataset": "world", "tasks": TASKS, "methods": ["zero_shot", "sglora"]},
    "second": {"dataset": "world", "tasks": TASKS, "methods": ["zero_shot", "topk_weighted"]},
}


def write_metrics(root: Path) -> dict[str, Path]:
    """Every group's metric folders in the real format; ``"<group>/<method>"`` -> folder."""
    rng = np.random.default_rng(0)
    folders = {}
    for group, spec in GROUPS.items():
        for method in spec["methods"]:
            n = 4 if method == "sglora" else 1
            for t in TASKS:
                per = [{"i2t": rng.integers(1, 6, 10), "t2i": rng.integers(1, 6, 20)} for _ in range(n)]
                res = {"method": method, "group": group, "task": t, "kind": "retrieval",
                       **summarize(per, [0, 0, 1, 1][:n]), "info": {}}
                write_json(root / group / method / f"{t}.json", res, flat_int_lists=True)
            folders[f"{group}/{method}"] = root / group / method
    return folders


@pytest.fixture
def written(tmp_path) -> tuple[dict[str, Path], Path, dict[str, bytes]]:
    """Metric folders, a tables folder written from them, and the bytes of every table."""
    folders = write_metrics(tmp_path / "metrics")
    out = tmp_path / "tables"
    write_tables(folders, out, GROUPS, n_boot=50)
    return folders, out, {p.name: p.read_bytes() for p in out.iterdir()}


def unchanged(out: Path, before: dict[str, bytes]) -> bool:
    return {p.name: p.read_bytes() for p in out.iterdir()} == before


def edit(path: Path, change) -> None:
    res = json.loads(path.read_text())
    change(res)
    path.write_text(json.dumps(res))


DAMAGES = {
    "no mean": (lambda r: r.pop("mean"), r"lacks the field\(s\) \['mean'\]"),
    "NaN mean": (lambda r: r["mean"].update(i2t_r1=math.nan), r"field 'mean.i2t_r1' is nan; expected a finite number"),
    "rank 0": (lambda r: r["ranks"]["i2t"][0].__setitem__(3, 0), r"field 'ranks.i2t' holds 0; expected ranks >= 1"),
    "negative rank": (lambda r: r["ranks"]["t2i"][0].__setitem__(0, -2), r"field 'ranks.t2i' holds -2; expected ranks >= 1"),
    "NaN rank": (lambda r: r["ranks"]["t2i"][0].__setitem__(0, math.nan), r"field 'ranks.t2i' must hold n = 1 lists of one integer"),
    "fewer queries": (lambda r: [r["ranks"][d][0].pop() for d in ("i2t", "t2i")],
                      r"9 i2t / 19 t2i test queries, but .*/second/zero_shot/t2.json of the same task has 10 i2t / 20 t2i"),
    "wrong task": (lambda r: r.update(task="t0"), r"field 'task' is 't0'; expected 't2'"),
    "wrong method": (lambda r: r.update(method="oracle"), r"field 'method' is 'oracle'; expected 'topk_weighted'"),
    "wrong group": (lambda r: r.update(group="first"), r"field 'group' is 'first'; expected 'second'"),
    "n above the samples": (lambda r: r.update(n=2), r"field 'per_sample' has 1 entries; expected n = 2"),
    "runs missing a sample": (lambda r: r.update(runs=[]), r"field 'runs' is \[\]; expected n = 1 run labels"),
}


@pytest.mark.parametrize("damage", sorted(DAMAGES))
def test_a_damaged_metrics_file_is_named_and_no_table_changes(written, damage):
    folders, out, before = written
    path = folders["second/topk_weighted"] / "t2.json"
    change, message = DAMAGES[damage]
    edit(path, change)
    with pytest.raises(SGLoraError, match=f"^{path}: {message}"):
        write_tables(folders, out, GROUPS, n_boot=50)
    assert unchanged(out, before)


def test_samples_of_different_lengths_are_named(written):
    folders, out, before = written
    path = folders["first/sglora"] / "t0.json"
    edit(path, lambda r: r["ranks"]["i2t"][2].pop())
    with pytest.raises(SGLoraError, match=f"^{path}: field 'ranks.i2t' must hold n = 4 lists of one integer per test "
                                          "query, all of one length"):
        write_tables(folders, out, GROUPS, n_boot=50)
    assert unchanged(out, before)


def test_a_truncated_metrics_file_is_named(written):
    folders, out, before = written
    path = folders["second/zero_shot"] / "t1.json"
    path.write_text(path.read_text()[:200])
    with pytest.raises(SGLoraError, match=f"^{path}: not valid JSON"):
        write_tables(folders, out, GROUPS, n_boot=50)
    assert unchanged(out, before)


def test_the_table_set_is_written_as_a_whole(tmp_path):
    """A file of the set that cannot be written leaves every other file as it was, and no temporary."""
    from sglora.analyses.tables import write_all

    (tmp_path / "a.md").write_text("old")
    (tmp_path / "blocked").write_text("a file, not a folder")
    with pytest.raises(OSError):
        write_all(tmp_path, {"a.md": "new", "b.md": "new", "blocked/c.md": "new"})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.md", "blocked"]
    assert (tmp_path / "a.md").read_text() == "old"
    write_all(tmp_path, {"a.md": "new", "b.md": "new"})
    assert (tmp_path / "a.md").read_text() == (tmp_path / "b.md").read_text() == "new"
