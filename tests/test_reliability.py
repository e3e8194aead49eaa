"""Bad inputs meet one clear error naming the file or key, and leave no partial output."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml

from sglora.io import SGLoraError

from conftest import ROOT, TINY_TRAIN

BIN = Path(sys.executable).parent


def _leftovers(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.name.endswith(".tmp") or p.name.endswith(".old")]


def test_missing_dataset_path_names_it(tmp_path):
    out = tmp_path / "m.parquet"
    proc = subprocess.run([str(BIN / "sglora"), "manifest", "--dataset", "pets", "--root", str(tmp_path / "nope"),
                           "--out", str(out)], capture_output=True, text=True)
    assert proc.returncode != 0
    assert str(tmp_path / "nope") in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not out.exists() and not _leftovers(tmp_path)


def test_corrupt_image_stops_training_naming_the_file(tiny_world, tiny_clip, tmp_path):
    import shutil

    from sglora.experts.training import TrainSpec, train_lora
    from sglora.experts.lora import LoraSpec
    from sglora.data.manifest import make_manifest, write_manifest

    rows = pq.read_table(tiny_world / "manifest.parquet").to_pylist()
    bad = tmp_path / "broken.png"
    shutil.copy(rows[0]["image_path"], bad)
    bad.write_bytes(bad.read_bytes()[:40])  # truncated PNG
    target = next(r for r in rows if r["task"] == "scottish_terrier" and r["split"] == "train")
    target["image_path"] = str(bad)
    write_manifest(tmp_path / "manifest.parquet", make_manifest(rows))
    with pytest.raises(SGLoraError, match="broken.png"):
        train_lora(tiny_clip, tmp_path / "manifest.parquet", "scottish_terrier", tmp_path / "out", LoraSpec(),
                   TrainSpec.from_dict(TINY_TRAIN), progress=False)
    assert not (tmp_path / "out").exists() and not _leftovers(tmp_path)


def test_nan_loss_stops_with_epoch_and_last_finite_loss(tiny_world, tiny_clip, tmp_path):
    from sglora.experts.training import TrainSpec, train_lora
    from sglora.experts.lora import LoraSpec

    spec = TrainSpec.from_dict(dict(TINY_TRAIN, lr=1e30, epochs=3))
    with pytest.raises(SGLoraError, match=r"loss is (nan|inf).*epoch \d+; last finite"):
        train_lora(tiny_clip, tiny_world / "manifest.parquet", "tiger_lily", tmp_path / "out", LoraSpec(), spec,
                   progress=False)
    assert not (tmp_path / "out").exists() and not _leftovers(tmp_path)


def test_cvae_nan_loss_is_reported():
    from sglora.generator.settings import CVAESpec
    from sglora.generator.cvae import train_cvae

    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 8)).astype(np.float32)
    with pytest.raises(SGLoraError, match="cvae: loss is .* at epoch"):
        train_cvae(x, np.zeros(16, int), x[:1], np.ones((1, 8), np.float32),
                   CVAESpec.from_dict(dict(latent=2, hidden=8, cond_dim=4, epochs=50, lr=1e30, device="cpu")),
                   progress=False)


def test_task_missing_from_dataset_and_empty_class(tiny_world, tmp_path):
    from sglora.data.manifest import check_tasks, make_manifest, write_manifest

    man = {"world": tiny_world / "manifest.parquet"}
    with pytest.raises(SGLoraError, match=r"experts.tasks: task\(s\) \['zebra'\] are not in dataset 'world'"):
        check_tasks(man, {"experts.tasks": {"world": ["scottish_terrier", "zebra"]}})
    rows = [r for r in pq.read_table(man["world"]).to_pylist() if not (r["task"] == "tiger_lily" and r["split"] == "test")]
    write_manifest(tmp_path / "m.parquet", make_manifest(rows))
    with pytest.raises(SGLoraError, match="tiger_lily.*no captioned test images"):
        check_tasks({"world": tmp_path / "m.parquet"}, {"groups.seen.tasks": {"world": ["tiger_lily"]}})
    counts = check_tasks(man, {"experts.tasks": {"world": ["scottish_terrier"]}})
    assert counts["world"]["scottish_terrier"] == {"train": 8, "test": 4}


def test_duplicate_task_ids_in_a_manifest_are_an_error():
    from sglora.data.manifest import make_manifest

    row = dict(dataset="d", task="desert_rose", task_name="Desert-Rose", class_name="Desert-Rose", description="x",
               image_path="a.png", captions=["c"], split="train")
    with pytest.raises(SGLoraError, match="desert_rose.*two names"):
        make_manifest([row, dict(row, task_name="desert rose", class_name="desert rose", image_path="b.png")])


def test_template_without_class_name():
    from sglora.data.manifest import describe

    with pytest.raises(SGLoraError, match="must contain '<class name>'"):
        describe("pug", "a photo of a dog")


def test_repository_with_wrong_vector_length(tiny_repo, tmp_path):
    import shutil


    from sglora.experts.repository import Repository

    broken = tmp_path / "repo"
    shutil.copytree(tiny_repo, broken)
    table = pq.read_table(broken / "experts.parquet")
    meta = dict(table.schema.metadata)
    layout = json.loads(meta[b"sglora.layout"])
    layout["shapes"][0] = [layout["shapes"][0][0] + 1, layout["shapes"][0][1]]
    meta[b"sglora.layout"] = json.dumps(layout).encode()
    pq.write_table(table.replace_schema_metadata(meta), broken / "experts.parquet")
    with pytest.raises(SGLoraError, match="experts.parquet: vectors have \\d+ values; the layout expects"):
        Repository(broken).experts()


def _dry(cfg: dict, tmp_path: Path):
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return subprocess.run([str(BIN / "snakemake"), "-n", "--configfile", str(p)], cwd=ROOT, capture_output=True,
                          text=True)


@pytest.mark.parametrize("section,key,value", [("training", "lr", -1.0), ("prior", "k", 0), ("cvae", "kl_weight", -1),
                                               ("sampling", "samples", 0), ("lora", "towers", ["audio"])])
def test_out_of_range_config_values_fail_before_any_job(tmp_path, section, key, value):
    cfg = yaml.safe_load((ROOT / "config.yaml").read_text())
    cfg[section][key] = value
    cfg["results"] = str(tmp_path / "results")
    proc = _dry(cfg, tmp_path)
    assert proc.returncode != 0
    assert key in proc.stdout + proc.stderr
    assert not (tmp_path / "results").exists()


def test_task_ids_cannot_leave_results(tmp_path):
    cfg = yaml.safe_load((ROOT / "config.yaml").read_text())
    cfg["experts"]["tasks"][0] = "../../etc"
    proc = _dry(cfg, tmp_path)
    assert proc.returncode != 0 and "../../etc" in proc.stdout + proc.stderr
