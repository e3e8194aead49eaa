"""Which SG-LoRA and which descriptions `sglora generate` takes: a run's results folder or an
explicit repository and CVAE (never a default path), one description or a file of them."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from test_generate_command import generate, one_error_line, run, tiny_cvae  # noqa: F401 (a fixture)


def finished_run(results: Path, repo: Path, cvae: Path) -> Path:
    """A results folder laid out as the workflow leaves a finished run (the repository a
    link: it finds its backbone relative to itself)."""
    results.mkdir(parents=True, exist_ok=True)
    (results / "repository").symlink_to(repo, target_is_directory=True)
    shutil.copytree(cvae, results / "cvae" / "selected")
    return results


def files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != "generate.json"}


def test_results_finds_the_run_s_repository_and_cvae(capsys, tiny_repo, tiny_cvae, tmp_path):
    results = finished_run(tmp_path / "results", tiny_repo, tiny_cvae)
    rc, _, err = run(capsys, "generate", "a photo of a terrier", "--out", tmp_path / "a", "--results", results)
    assert rc == 0, err
    record = json.loads((tmp_path / "a" / "generate.json").read_text())
    assert record["repository"] == str((results / "repository").resolve())
    assert record["cvae"] == str((results / "cvae" / "selected").resolve())
    assert generate(capsys, tiny_repo, tiny_cvae, "a photo of a terrier", "--out", tmp_path / "b")[0] == 0
    assert files(tmp_path / "a") == files(tmp_path / "b")


@pytest.mark.parametrize("missing", ["cvae/selected", "repository", "results"])
def test_results_that_is_not_a_finished_run_names_what_it_lacks(capsys, tiny_repo, tiny_cvae, tmp_path, missing):
    results = finished_run(tmp_path / "results", tiny_repo, tiny_cvae)
    gone = tmp_path / "results" if missing == "results" else results / missing
    gone.unlink() if gone.is_symlink() else shutil.rmtree(gone)
    rc, _, err = run(capsys, "generate", "a dog", "--out", tmp_path / "a", "--results", results)
    assert rc == 2
    one_error_line(err, f"--results {results}", "not a folder" if missing == "results" else f"{missing}/")
    assert not (tmp_path / "a").exists()


@pytest.mark.parametrize("flags,message", [((), "give --results DIR"), (("--repository", "r"), "without --cvae"),
                                           (("--cvae", "c"), "without --repository"),
                                           (("--results", "results", "--cvae", "c"), "not both")])
def test_no_default_sg_lora(capsys, tiny_repo, tiny_cvae, tmp_path, monkeypatch, flags, message):
    # finished runs in the usual results folders: generate must still ask which one
    finished_run(tmp_path / "results" / "embedded", tiny_repo, tiny_cvae)
    finished_run(tmp_path / "results", tiny_repo, tiny_cvae)
    monkeypatch.chdir(tmp_path)
    rc, _, err = run(capsys, "generate", "a dog", "--out", "a", *flags)
    assert rc == 2
    one_error_line(err, message)
    assert not (tmp_path / "a").exists()


def test_descriptions_write_one_folder_each_in_one_process_with_the_bytes_of_separate_calls(
        capsys, tiny_repo, tiny_cvae, tmp_path, monkeypatch):
    import sglora.backbone.clip

    lines = ["# pets", "a photo of a terrier", "", "  A photo of a Lily!  ", "# flowers", "黒い猫"]
    (tmp_path / "tasks.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    loads, load_clip = [], sglora.backbone.clip.load_clip
    monkeypatch.setattr(sglora.backbone.clip, "load_clip", lambda *a, **k: loads.append(a) or load_clip(*a, **k))
    rc, stdout, err = run(capsys, "generate", "--descriptions", tmp_path / "tasks.txt", "--out", tmp_path / "all",
                          "--repository", tiny_repo, "--cvae", tiny_cvae, "--seed", 7, "--samples", 2)
    assert rc == 0, err
    assert len(loads) == 1  # the backbone (and with it the repository and CVAE) loaded once
    folders = {"a_photo_of_a_terrier": "a photo of a terrier", "a_photo_of_a_lily": "A photo of a Lily!"}
    import hashlib
    folders[f"description_{hashlib.sha256('黒い猫'.encode()).hexdigest()[:12]}"] = "黒い猫"
    assert sorted(p.name for p in (tmp_path / "all").iterdir()) == sorted([*folders, "generate.json"])
    record = json.loads((tmp_path / "all" / "generate.json").read_text())
    assert [(d["folder"], d["description"]) for d in record["descriptions"]] == list(folders.items())
    assert record["files"] == sorted(f"{d}/{f}" for d in folders for f in files(tmp_path / "all" / d))
    for folder, description in folders.items():
        assert f"wrote {tmp_path / 'all' / folder / 'sample_001'}" in stdout
        rc, _, err = generate(capsys, tiny_repo, tiny_cvae, description, "--out", tmp_path / folder, "--seed", 7,
                              "--samples", 2)
        assert rc == 0, err
        assert files(tmp_path / "all" / folder) == files(tmp_path / folder)
        assert len(files(tmp_path / folder)) == 6  # two adapters, each with its card


@pytest.mark.parametrize("content,line,message", [(b"a dog\n\n# c\na \xff cat\n", "line 4", "not valid UTF-8"),
                                                  (b"# only a comment\n\n  \n", "", "holds no description"),
                                                  (b"a dog\nA dog!\n", "line 2", "line 1"),
                                                  (b"a dog\na dog\n", "line 2", "repeats line 1")])
def test_a_bad_descriptions_file_is_named_with_its_line(capsys, tiny_repo, tiny_cvae, tmp_path, content, line,
                                                        message):
    (tmp_path / "tasks.txt").write_bytes(content)
    rc, _, err = generate(capsys, tiny_repo, tiny_cvae, "--descriptions", tmp_path / "tasks.txt",
                          "--out", tmp_path / "a")
    assert rc == 2
    one_error_line(err, f"{tmp_path / 'tasks.txt'} {line}".strip(), message)
    assert not (tmp_path / "a").exists()


def test_a_description_and_a_descriptions_file_are_one_too_many(capsys, tiny_repo, tiny_cvae, tmp_path):
    (tmp_path / "tasks.txt").write_text("a dog\n")
    rc, _, err = generate(capsys, tiny_repo, tiny_cvae, "a cat", "--descriptions", tmp_path / "tasks.txt",
                          "--out", tmp_path / "a")
    assert rc == 2
    one_error_line(err, "--descriptions", "not both")
    rc, _, err = generate(capsys, tiny_repo, tiny_cvae, "--out", tmp_path / "a")
    assert rc == 2
    one_error_line(err, "--descriptions")
