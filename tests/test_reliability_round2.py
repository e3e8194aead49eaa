"""Issue 16, reliability round two: no lost files, no false scores, one line naming the file.

Each test here failed on the code before the fix it names."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml

from sglora.cli import main
from sglora.io import SGLoraError

from conftest import ROOT

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


# --- 1. generate never loses files ----------------------------------------------------------

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


# --- 6 and 7. bad arguments and inputs of generate ---------------------------------------------

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
    from sglora.cvae import load_cvae
    from sglora.generate import sample_loras
    from sglora.prior import PriorSpec
    from sglora.repository import Repository

    experts = Repository(tiny_repo).experts()
    cvae, _ = load_cvae(tiny_cvae)
    caplog.clear()
    sample_loras(cvae, experts, experts.text_embedding[0], PriorSpec(k=50), 1, 0)
    assert any("prior.k=50" in r.getMessage() and "4 experts" in r.getMessage() for r in caplog.records)


def test_cvae_of_another_repository_is_named(capsys, tiny_repo, tmp_path):
    from sglora.cvae import CVAE, CVAESpec, save_cvae

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


# --- 6 and 7. assemble -------------------------------------------------------------------------

def _assemble(capsys, loras, embeddings, out):
    return run(capsys, "assemble", "--loras", *loras, "--embeddings", embeddings, "--dataset", "world", "--out", out)


def _copy_experts(tiny_experts, tmp_path) -> list[Path]:
    out = []
    for task, d in tiny_experts.items():
        shutil.copytree(d, tmp_path / "loras" / task)
        out.append(tmp_path / "loras" / task)
    return out


def test_assemble_truncated_snapshots_is_named(capsys, tiny_experts, tiny_embeddings, tmp_path):
    loras = _copy_experts(tiny_experts, tmp_path)
    _truncate(loras[1] / "snapshots.safetensors", 100)
    rc, _, err = _assemble(capsys, loras, tiny_embeddings, tmp_path / "repo")
    assert rc == 2
    one_error_line(err, loras[1] / "snapshots.safetensors")
    assert not (tmp_path / "repo").exists()


def test_assemble_refuses_nan_snapshots_naming_the_expert(capsys, tiny_experts, tiny_embeddings, tmp_path):
    from sglora.expert import read_snapshots
    from sglora.io import save_safetensors

    loras = _copy_experts(tiny_experts, tmp_path)
    snaps, layout = read_snapshots(loras[2])
    snaps[0, 3] = np.nan
    save_safetensors(loras[2] / "snapshots.safetensors", {"snapshots": snaps}, {"layout": layout.to_json()})
    rc, _, err = _assemble(capsys, loras, tiny_embeddings, tmp_path / "repo")
    assert rc == 2
    one_error_line(err, loras[2].name, "non-finite")
    assert not (tmp_path / "repo").exists()


def test_assemble_refuses_a_lora_folder_without_adapter_config(capsys, tiny_experts, tiny_embeddings, tmp_path):
    loras = _copy_experts(tiny_experts, tmp_path)
    (loras[0] / "adapter" / "adapter_config.json").unlink()
    rc, _, err = _assemble(capsys, loras, tiny_embeddings, tmp_path / "repo")
    assert rc == 2
    one_error_line(err, loras[0] / "adapter" / "adapter_config.json")
    assert not (tmp_path / "repo").exists()


# --- 8. provenance: the repository works from any folder -----------------------------------------

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


# --- 2. a broken LoRA never scores ----------------------------------------------------------------

def test_metrics_refuse_nan():
    from sglora.metrics import accuracy, retrieval_recall

    with pytest.raises((ValueError, SGLoraError), match="non-finite"):
        retrieval_recall(np.full((3, 6), np.nan), np.repeat(np.arange(3), 2))
    with pytest.raises((ValueError, SGLoraError), match="non-finite"):
        accuracy(np.full((4, 3), np.nan), np.array([0, 1, 2, 0]))
    sim = np.eye(3)
    sim[1, 1] = np.inf
    with pytest.raises((ValueError, SGLoraError), match="non-finite"):
        retrieval_recall(sim, np.arange(3))


def test_evaluate_refuses_nan_candidates_naming_method_and_task(capsys, tiny_world, tiny_clip, tiny_experts, tmp_path):
    from sglora.candidates import save_candidates
    from sglora.expert import read_snapshots

    snaps, layout = read_snapshots(tiny_experts["tiger_lily"])
    vec = np.full_like(snaps[-1:], np.nan)
    save_candidates(tmp_path / "c.safetensors", {"tiger_lily": vec}, layout, "sglora")
    rc, _, err = run(capsys, "evaluate", "--backbone", tiny_clip, "--manifest", tiny_world / "manifest.parquet",
                     "--tasks", "tiger_lily", "--method", "sglora", "--candidates", tmp_path / "c.safetensors",
                     "--lora", "{}", "--out", tmp_path / "m", "--threads", "1")
    assert rc == 2
    one_error_line(err, "'sglora'", "'tiger_lily'", "non-finite")
    assert not (tmp_path / "m").exists()


# --- 4. outputs respect the umask -------------------------------------------------------------------

def test_outputs_respect_the_umask(tmp_path):
    from sglora.io import atomic_path, save_safetensors, write_json

    old = os.umask(0o022)
    try:
        write_json(tmp_path / "a.json", {"x": 1})
        save_safetensors(tmp_path / "b.safetensors", {"t": np.zeros(2, np.float32)})
        with atomic_path(tmp_path / "folder", directory=True) as tmp:
            (tmp / "inner.txt").write_text("x")
        os.umask(0o077)
        write_json(tmp_path / "private.json", {"x": 1})
    finally:
        os.umask(old)
    mode = lambda p: stat.S_IMODE(p.stat().st_mode)  # noqa: E731
    assert mode(tmp_path / "a.json") == 0o644
    assert mode(tmp_path / "b.safetensors") == 0o644
    assert mode(tmp_path / "folder") == 0o755
    assert mode(tmp_path / "private.json") == 0o600


# --- 6 and 9. real-world dataset copies ------------------------------------------------------------

def test_pets_list_that_is_not_utf8_is_named(tmp_path):
    from test_datasets import write_pets

    from sglora.datasets import build_manifest

    root = write_pets(tmp_path / "pets")
    path = root / "annotations" / "list.txt"
    path.write_bytes(path.read_bytes() + b"Caf\xe9_1 2 1 2\n")
    with pytest.raises(SGLoraError, match=r"list.txt: line \d+ is not UTF-8 text"):
        build_manifest("pets", root)


def test_coco_copy_with_only_val2017(tmp_path, caplog):
    from test_datasets import write_coco

    from sglora.datasets import build_manifest

    root = write_coco(tmp_path / "coco")
    for name in ("captions_train2017.json", "instances_train2017.json"):
        (root / "annotations" / name).unlink()
    table = build_manifest("coco", root)
    assert set(table.column("split").to_pylist()) == {"test"}
    assert sorted(set(table.column("task").to_pylist())) == ["cat", "dog"]
    assert any("train2017" in r.getMessage() and "not found" in r.getMessage() for r in caplog.records)
    (root / "annotations" / "captions_val2017.json").unlink()
    (root / "annotations" / "instances_val2017.json").unlink()
    with pytest.raises(SGLoraError, match="captions_train2017.json: file not found"):
        build_manifest("coco", root)


def test_cifar_pickles_rewritten_by_python3(tmp_path):
    import pickle

    from test_datasets import write_cifar

    from sglora.datasets import build_manifest

    root = write_cifar(tmp_path / "cifar")
    for name in ("meta", "train", "test"):
        path = root / "cifar-100-python" / name
        data = pickle.loads(path.read_bytes())
        path.write_bytes(pickle.dumps(data, protocol=2))  # bytes become _codecs.encode(str, "latin1")
    assert b"_codecs" in (root / "cifar-100-python" / "meta").read_bytes()
    table = build_manifest("cifar100", root, image_dir=str(tmp_path / "png"))
    assert table.num_rows == 16
    # any other codec stays refused
    evil = pickle.dumps({b"x": b"y"}, protocol=2).replace(b"latin1", b"utf_16")
    (root / "cifar-100-python" / "meta").write_bytes(evil)
    with pytest.raises(SGLoraError, match="not a readable CIFAR pickle"):
        build_manifest("cifar100", root, image_dir=str(tmp_path / "png2"))


def test_cifar_read_that_fails_leaves_no_png(tmp_path):
    from test_datasets import write_cifar

    from sglora.datasets import build_manifest

    root = write_cifar(tmp_path / "cifar")
    test = root / "cifar-100-python" / "test"
    test.write_bytes(test.read_bytes()[:200])  # train reads fine, test is truncated
    with pytest.raises(SGLoraError, match="test: not a readable CIFAR pickle"):
        build_manifest("cifar100", root, image_dir=str(tmp_path / "png"))
    assert not list((tmp_path / "png").rglob("*.png"))


# --- 11. leftovers ----------------------------------------------------------------------------------

def test_presets_data_placeholder_is_git_ignored():
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    roots = set()
    for preset in (ROOT / "config").glob("*.yaml"):
        for d in (yaml.safe_load(preset.read_text()).get("datasets") or {}).values():
            if "root" in d and not os.path.isabs(d["root"]):
                roots.add(d["root"])
    assert roots, "the presets name no relative dataset root"
    for root in sorted(roots):
        proc = subprocess.run(["git", "check-ignore", "-q", f"{root}/annotations/list.txt"], cwd=ROOT)
        assert proc.returncode == 0, f"{root} is not git-ignored"
