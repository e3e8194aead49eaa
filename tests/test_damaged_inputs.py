"""Damaged inputs are refused with one line naming the file, the expert or the task, and
leave no output: snapshots and adapters given to `sglora assemble`, non-finite similarities
in the metrics and non-finite candidates in `sglora evaluate`, and real-dataset copies in the
forms found in the wild (a non-UTF-8 list, COCO with only val2017, CIFAR pickles rewritten
by Python 3, a truncated CIFAR file)."""

from __future__ import annotations

import numpy as np
import pytest

from sglora.io import SGLoraError

from test_generate_command import _assemble, _copy_experts, _truncate, one_error_line, run

# --- sglora assemble ------------------------------------------------------------------------------

def test_assemble_truncated_snapshots_is_named(capsys, tiny_experts, tiny_embeddings, tmp_path):
    loras = _copy_experts(tiny_experts, tmp_path)
    _truncate(loras[1] / "snapshots.safetensors", 100)
    rc, _, err = _assemble(capsys, loras, tiny_embeddings, tmp_path / "repo")
    assert rc == 2
    one_error_line(err, loras[1] / "snapshots.safetensors")
    assert not (tmp_path / "repo").exists()


def test_assemble_refuses_nan_snapshots_naming_the_expert(capsys, tiny_experts, tiny_embeddings, tmp_path):
    from sglora.experts.training import read_snapshots
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


# --- a broken LoRA never scores ------------------------------------------------------------------

def test_metrics_refuse_nan():
    from sglora.evaluation.metrics import accuracy, retrieval_recall

    with pytest.raises((ValueError, SGLoraError), match="non-finite"):
        retrieval_recall(np.full((3, 6), np.nan), np.repeat(np.arange(3), 2))
    with pytest.raises((ValueError, SGLoraError), match="non-finite"):
        accuracy(np.full((4, 3), np.nan), np.array([0, 1, 2, 0]))
    sim = np.eye(3)
    sim[1, 1] = np.inf
    with pytest.raises((ValueError, SGLoraError), match="non-finite"):
        retrieval_recall(sim, np.arange(3))


def test_evaluate_refuses_nan_candidates_naming_method_and_task(capsys, tiny_world, tiny_clip, tiny_experts, tmp_path):
    from sglora.generator.candidates import save_candidates
    from sglora.experts.training import read_snapshots

    snaps, layout = read_snapshots(tiny_experts["tiger_lily"])
    vec = np.full_like(snaps[-1:], np.nan)
    save_candidates(tmp_path / "c.safetensors", {"tiger_lily": vec}, layout, "sglora")
    rc, _, err = run(capsys, "evaluate", "--backbone", tiny_clip, "--manifest", tiny_world / "manifest.parquet",
                     "--tasks", "tiger_lily", "--method", "sglora", "--candidates", tmp_path / "c.safetensors",
                     "--lora", "{}", "--out", tmp_path / "m", "--threads", "1")
    assert rc == 2
    one_error_line(err, "'sglora'", "'tiger_lily'", "non-finite")
    assert not (tmp_path / "m").exists()


# --- real-world dataset copies --------------------------------------------------------------------

def test_pets_list_that_is_not_utf8_is_named(tmp_path):
    from test_datasets import write_pets

    from sglora.data.datasets import build_manifest

    root = write_pets(tmp_path / "pets")
    path = root / "annotations" / "list.txt"
    path.write_bytes(path.read_bytes() + b"Caf\xe9_1 2 1 2\n")
    with pytest.raises(SGLoraError, match=r"list.txt: line \d+ is not UTF-8 text"):
        build_manifest("pets", root)


def test_coco_copy_with_only_val2017(tmp_path, caplog):
    from test_datasets import write_coco

    from sglora.data.datasets import build_manifest

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

    from sglora.data.datasets import build_manifest

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

    from sglora.data.datasets import build_manifest

    root = write_cifar(tmp_path / "cifar")
    test = root / "cifar-100-python" / "test"
    test.write_bytes(test.read_bytes()[:200])  # train reads fine, test is truncated
    with pytest.raises(SGLoraError, match="test: not a readable CIFAR pickle"):
        build_manifest("cifar100", root, image_dir=str(tmp_path / "png"))
    assert not list((tmp_path / "png").rglob("*.png"))
