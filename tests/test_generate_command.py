"""`sglora generate`: it never loses or hides a file in its output folder, refuses bad
arguments and damaged inputs (CVAE, expert table) with one line naming the file, and works
from any folder on a repository whose backbone was recorded relative to the pipeline's."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from sglora.cli import main

CVAE_SPEC = {"latent": 2, "hidden": 8, "cond_dim": 4, "epochs": 2, "batch_size": 4, "device": "cpu"}


def run(capsys, *argv) -> tuple[int, str, str]:
    """Run one `sglora` step in this process; (exit status, stdout, stderr)."""
    capsys.readouterr()
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def one_error_line(err: str, *names) -> None:
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1 and "Traceback" not in err, err
    for name in names:
        assert str(name) in lines[0], (name, lines[0])


@pytest.fixture(scope="module")
def tiny_cvae(tmp_path_factory, tiny_repo) -> Path:
    out = tmp_path_factory.mktemp("cvae") / "cvae"
    assert main(["train-cvae", "--repository", str(tiny_repo), "--cvae", json.dumps(CVAE_SPEC),
                 "--prior", json.dumps({"k": 2}), "--out", str(out), "--threads", "1"]) == 0
    return out


def generate(capsys, repo, cvae, *args):
    return run(capsys, "generate", *args, "--repository", repo, "--cvae", cvae)


# --- the output folder ----------------------------------------------------------------------------

def test_generate_refuses_a_non_empty_out_folder(capsys, tiny_repo, tiny_cvae, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.tex").write_text("precious")
    rc, _, err = generate(capsys, tiny_repo, tiny_cvae, "a photo of a terrier", "--out", out)
    assert rc == 2
    one_error_line(err, out, "--overwrite")
    assert sorted(p.name for p in out.iterdir()) == ["thesis.tex"]


def test_generate_overwrite_keeps_what_it_did_not_write(capsys, tiny_repo, tiny_cvae, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.tex").write_text("precious")
    rc, _, _ = generate(capsys, tiny_repo, tiny_cvae, "a photo of a terrier", "--out", out, "--overwrite")
    assert rc == 0
    assert (out / "thesis.tex").read_text() == "precious"
    assert {"adapter_config.json", "adapter_model.safetensors"} <= {p.name for p in out.iterdir()}
    assert not [p for p in out.iterdir() if p.name.startswith(".")]
    rc, _, _ = generate(capsys, tiny_repo, tiny_cvae, "a photo of a terrier", "--out", out, "--overwrite",
                        "--samples", 2)
    assert rc == 0 and (out / "thesis.tex").exists() and (out / "sample_001" / "adapter_config.json").exists()


def test_generate_overwrite_never_replaces_a_file_by_a_folder(capsys, tiny_repo, tiny_cvae, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "sample_001").write_text("not an adapter")
    rc, _, err = generate(capsys, tiny_repo, tiny_cvae, "a dog", "--out", out, "--overwrite", "--samples", 2)
    assert rc == 2
    one_error_line(err, "sample_001", "exists there as a file")
    assert sorted(p.name for p in out.iterdir()) == ["sample_001"]  # nothing written, nothing hidden
    assert (out / "sample_001").read_text() == "not an adapter"


def test_generate_out_dot_refuses_the_working_folder(capsys, tiny_repo, tiny_cvae, tmp_path, monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    (work / "notes.txt").write_text("keep")
    monkeypatch.chdir(work)
    for out in (".", str(work)):
        rc, _, err = generate(capsys, tiny_repo, tiny_cvae, "a photo of a terrier", "--out", out)
        assert rc == 2
        one_error_line(err, work)
    assert sorted(p.name for p in work.iterdir()) == ["notes.txt"]


def test_generate_out_naming_a_file_is_refused(capsys, tiny_repo, tiny_cvae, tmp_path):
    target = tmp_path / "results.csv"
    target.write_text("a,b\n")
    for extra in ((), ("--overwrite",)):
        rc, _, err = generate(capsys, tiny_repo, tiny_cvae, "a photo of a terrier", "--out", target, *extra)
        assert rc == 2
        one_error_line(err, target, "is an existing file")
    assert target.read_text() == "a,b\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.csv"]


def test_generate_into_a_new_or_empty_folder(capsys, tiny_repo, tiny_cvae, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    for out in (empty, tmp_path / "new" / "adapter"):
        rc, stdout, _ = generate(capsys, tiny_repo, tiny_cvae, "a photo of a terrier", "--out", out)
        assert rc == 0 and f"wrote {out}" in stdout
        assert sorted(p.name for p in out.iterdir()) == ["README.md", "adapter_config.json",
                                                         "adapter_model.safetensors", "generate.json"]


# --- bad arguments and damaged inputs ---------------------------------------------------------------

@pytest.mark.parametrize("args,message", [(("", "--out", "x"), "description is empty"),
                                          (("   ", "--out", "x"), "description is empty"),
                                          (("a dog", "--out", "x", "--samples", "-2"), "--samples must be >= 1"),
                                          (("a dog", "--out", "x", "--samples", "0"), "--samples must be >= 1")])
def test_generate_bad_arguments(capsys, tiny_repo, tiny_cvae, tmp_path, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    rc, _, err = generate(capsys, tiny_repo, tiny_cvae, *args)
    assert rc == 2
    one_error_line(err, message)
    assert list(tmp_path.iterdir()) == []


def test_long_description_and_large_k_warn(capsys, tiny_repo, tiny_cvae, tmp_path, caplog):
    rc, _, _ = generate(capsys, tiny_repo, tiny_cvae, " ".join(["terrier"] * 200), "--out", tmp_path / "a")
    assert rc == 0
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any("tokens; the text encoder reads only the first" in w for w in warned), warned
    from sglora.generator.cvae import load_cvae
    from sglora.generator.sampling import sample_loras
    from sglora.generator.settings import PriorSpec
    from sglora.experts.repository import Repository

    experts = Repository(tiny_repo).experts()
    cvae, _ = load_cvae(tiny_cvae)
    caplog.clear()
    sample_loras(cvae, experts, experts.text_embedding[0], PriorSpec(k=50), 1, 0)
    assert any("prior.k=50" in r.getMessage() and "4 experts" in r.getMessage() for r in caplog.records)


def test_cvae_of_another_repository_is_named(capsys, tiny_repo, tmp_path):
    from sglora.generator.cvae import CVAE, save_cvae
    from sglora.generator.settings import CVAESpec

    other = tmp_path / "cvae"
    save_cvae(other, CVAE(7, CVAESpec.from_dict(CVAE_SPEC)), {"prior": {"k": 2}})
    rc, _, err = generate(capsys, tiny_repo, other, "a dog", "--out", tmp_path / "a")
    assert rc == 2
    one_error_line(err, other, "another repository")
    assert not (tmp_path / "a").exists()


def _truncate(path: Path, keep: int = 40) -> None:
    path.write_bytes(path.read_bytes()[:keep])


@pytest.mark.parametrize("damage", ["truncate_weights", "random_weights", "broken_config", "config_not_object"])
def test_broken_cvae_is_named(capsys, tiny_repo, tiny_cvae, tmp_path, damage):
    cvae = tmp_path / "cvae"
    shutil.copytree(tiny_cvae, cvae)
    if damage == "truncate_weights":
        _truncate(cvae / "model.safetensors")
        bad = cvae / "model.safetensors"
    elif damage == "random_weights":
        (cvae / "model.safetensors").write_bytes(os.urandom(300))
        bad = cvae / "model.safetensors"
    elif damage == "broken_config":
        (cvae / "config.json").write_text('{"dim": 12, "cvae": {')
        bad = cvae / "config.json"
    else:
        (cvae / "config.json").write_text("[1, 2]")
        bad = cvae / "config.json"
    rc, _, err = generate(capsys, tiny_repo, cvae, "a dog", "--out", tmp_path / "a")
    assert rc == 2
    one_error_line(err, bad)


@pytest.mark.parametrize("damage", ["truncate", "random"])
def test_broken_expert_table_is_named(capsys, tiny_repo, tiny_cvae, tmp_path, damage):
    repo = tmp_path / "repo"
    shutil.copytree(tiny_repo, repo)
    path = repo / "experts.parquet"
    if damage == "truncate":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    else:
        path.write_bytes(os.urandom(2000))
    rc, _, err = generate(capsys, repo, tiny_cvae, "a dog", "--out", tmp_path / "a")
    assert rc == 2
    one_error_line(err, path)


# --- the expert repository the commands read ---------------------------------------------------

def _assemble(capsys, loras, embeddings, out):
    return run(capsys, "assemble", "--loras", *loras, "--embeddings", embeddings, "--dataset", "world", "--out", out)


def _copy_experts(tiny_experts, tmp_path) -> list[Path]:
    out = []
    for task, d in tiny_experts.items():
        shutil.copytree(d, tmp_path / "loras" / task)
        out.append(tmp_path / "loras" / task)
    return out


# --- provenance: the repository works from any folder ----------------------------------------------

def test_relative_backbone_is_resolved_from_any_folder(capsys, tiny_clip, tiny_experts, tiny_embeddings, tiny_cvae,
                                                       tmp_path, monkeypatch):
    run_dir = tmp_path / "project"
    shutil.copytree(tiny_clip, run_dir / "results" / "backbone")
    loras = _copy_experts(tiny_experts, run_dir)
    for d in loras:  # as the pipeline records it: relative to where snakemake runs
        info = json.loads((d / "training.json").read_text())
        info["backbone"] = "results/backbone"
        (d / "training.json").write_text(json.dumps(info))
    monkeypatch.chdir(run_dir)
    rc, _, err = _assemble(capsys, [d.relative_to(run_dir) for d in loras], tiny_embeddings, "results/repository")
    assert rc == 0, err
    meta = pq.read_schema(run_dir / "results/repository/experts.parquet").metadata
    assert meta[b"sglora.backbone"] == b"../backbone"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    rc, stdout, err = generate(capsys, run_dir / "results/repository", tiny_cvae, "a dog", "--out", "adapter")
    assert rc == 0, err
    config = json.loads((elsewhere / "adapter" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(run_dir / "results" / "backbone")
