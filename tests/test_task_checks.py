"""`sglora check-tasks` on real manifests of the tiny world: a task whose test images are
its train images, or with blank captions, is refused, naming the task and the count."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from sglora.cli import main
from sglora.data.manifest import make_manifest, write_manifest


def edited_manifest(tiny_world, tmp_path, edit) -> str:
    rows = pq.read_table(tiny_world / "manifest.parquet").to_pylist()
    path = tmp_path / "manifest.parquet"
    write_manifest(path, make_manifest(edit(rows)))
    return str(path)


def check(path: str, tmp_path, task: str = "tiger_lily") -> int:
    return main(["check-tasks", "--manifest", f"world={path}", "--wanted",
                 json.dumps({"groups.seen.tasks": {"world": [task]}}), "--out", str(tmp_path / "check.json")])


def test_test_images_that_are_train_images_are_refused(tiny_world, tmp_path, capsys):
    def leak(rows):
        train = [r for r in rows if r["task"] == "tiger_lily" and r["split"] == "train"]
        kept = [r for r in rows if not (r["task"] == "tiger_lily" and r["split"] == "test")]
        return kept + [{**r, "split": "test"} for r in train[:3]]

    path = edited_manifest(tiny_world, tmp_path, leak)
    assert check(path, tmp_path) == 2
    assert (f"config groups.seen.tasks: task 'tiger_lily' of dataset 'world' has 3 test image(s) that are also "
            f"its train images in {path}") in capsys.readouterr().err
    assert not (tmp_path / "check.json").exists()
    assert check(path, tmp_path, "water_lily") == 0  # another task of the same manifest is not held back


@pytest.mark.parametrize("caption", ["", "   "])
def test_blank_captions_are_refused(tiny_world, tmp_path, capsys, caption):
    def blank(rows):
        lily = [i for i, r in enumerate(rows) if r["task"] == "tiger_lily"][:2]
        for i in lily:
            rows[i] = {**rows[i], "captions": [caption, *rows[i]["captions"][1:]]}
        return rows

    path = edited_manifest(tiny_world, tmp_path, blank)
    assert check(path, tmp_path) == 2
    assert (f"config groups.seen.tasks: task 'tiger_lily' of dataset 'world' has 2 image(s) with a blank caption "
            f"in {path}") in capsys.readouterr().err
    assert not (tmp_path / "check.json").exists()


def test_a_clean_manifest_passes(tiny_world, tmp_path):
    assert check(str(tiny_world / "manifest.parquet"), tmp_path) == 0
    assert json.loads((tmp_path / "check.json").read_text()) == {"world": {"tiger_lily": {"train": 8, "test": 4}}}
